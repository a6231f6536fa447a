//! The daemon's side of the status socket. Closed to anyone but root (mode
//! 0600, and the peer's credentials are checked), or root and `ctl_group`
//! (0660). A malformed or oversized request gets an error reply; a client
//! that stalls is dropped after a timeout; neither affects other clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::protocol::{MAX_LINE, Request, Response, VERSION};
use crate::fs::ChironFs;

/// Binds the socket (replacing a stale one) and serves it on a thread.
pub fn start(fs: Arc<ChironFs>, path: &Path, group: Option<u32>) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        // Explicit mode: the daemon runs with umask 0.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("status socket {}: {e}", dir.display()))?;
    }
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if !md.file_type().is_socket() {
            return Err(format!(
                "status socket {}: exists and is not a socket",
                path.display()
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "status socket {}: another daemon is listening",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener =
        UnixListener::bind(path).map_err(|e| format!("status socket {}: {e}", path.display()))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("status socket {}: {e}", path.display()))?;
    if let Some(g) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(g)))
            .map_err(|e| format!("status socket {}: {e}", path.display()))?;
    }
    let path: PathBuf = path.to_path_buf();
    std::thread::Builder::new()
        .name("ctl".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let fs = fs.clone();
                let _ = std::thread::Builder::new()
                    .name("ctl-client".into())
                    .spawn(move || serve(&fs, conn, group));
            }
            tracing::warn!("status socket {} closed", path.display());
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn allowed(conn: &UnixStream, group: Option<u32>) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(conn, PeerCredentials) {
        Ok(c) => c.uid() == 0 || group.is_some_and(|g| c.gid() == g || in_group(c.pid(), g)),
        Err(_) => false,
    }
}

/// Whether process `pid` has `gid` among its supplementary groups.
fn in_group(pid: i32, gid: u32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}

fn serve(fs: &ChironFs, conn: UnixStream, group: Option<u32>) {
    if !allowed(&conn, group) {
        return;
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = Vec::new();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let too_long = line.len() > MAX_LINE;
        let resp = if too_long {
            Response::error(format!("request longer than {MAX_LINE} bytes"))
        } else {
            handle(fs, &line)
        };
        let mut text = serde_json::to_string(&resp).unwrap_or_else(|_| {
            r#"{"version":1,"ok":false,"error":"cannot encode the reply"}"#.to_string()
        });
        text.push('\n');
        if out.write_all(text.as_bytes()).is_err() || too_long {
            return;
        }
    }
}

fn handle(fs: &ChironFs, line: &[u8]) -> Response {
    let req: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return Response::error(format!("malformed request: {e}")),
    };
    if req.version != VERSION {
        return Response::error(format!(
            "protocol version {} not supported (this daemon speaks {VERSION})",
            req.version
        ));
    }
    let replica = || -> Result<usize, String> {
        let name = req
            .replica
            .as_deref()
            .ok_or("this command needs a replica")?;
        let st = fs.status();
        st.replicas
            .iter()
            .find(|r| r.path == name || r.id == name || r.index.to_string() == name)
            .map(|r| r.index)
            .ok_or_else(|| format!("no replica '{name}'"))
    };
    let done = |r: Result<(), String>| match r {
        Ok(()) => Response::ok(None),
        Err(e) => Response::error(e),
    };
    match req.command.as_str() {
        "status" => Response::ok(Some(fs.status())),
        "disable" => done(replica().and_then(|i| fs.disable(i))),
        "enable" => done(replica().and_then(|i| fs.enable(i))),
        "resync" => done(replica().and_then(|i| fs.request_resync(i, req.full, req.verify))),
        "trust" if !req.confirm => Response::error(
            "trust declares a replica in sync without copying anything; it needs \"confirm\": true",
        ),
        "trust" => done(replica().and_then(|i| fs.trust(i))),
        "log-level" => done(
            req.level
                .as_deref()
                .ok_or_else(|| "log-level needs a level".to_string())
                .and_then(crate::daemon::log::set_level),
        ),
        other => Response::error(format!("unknown command '{other}'")),
    }
}
