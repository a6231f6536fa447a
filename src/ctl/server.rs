//! The daemon's side of the status socket. Closed to anyone but root (mode
//! 0600, and the peer's credentials are checked), or root and `ctl_group`
//! (0660). A malformed or oversized request gets an error reply; a client
//! that stalls is dropped after a timeout; neither affects other clients.
//!
//! One server for both daemons: a mount (its filesystem, and its ring
//! member if it has a `[ring]` section) and `chironfs ring-node` (a ring
//! member only). Each answers what it lacks with an error saying so.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::protocol::{MAX_LINE, Request, Response, VERSION};
use super::ring::RingHandle;
use crate::fs::ChironFs;
use crate::ring::service::RingService;

/// What a status socket serves. Cheap to clone.
#[derive(Clone)]
pub struct Target {
    fs: Option<Arc<ChironFs>>,
    ring: Option<RingHandle>,
}

impl Target {
    /// A mount, with its ring member if it has a `[ring]` section.
    pub fn mount(fs: Arc<ChironFs>, ring: Option<&RingService>) -> Target {
        Target {
            fs: Some(fs),
            ring: ring.map(RingHandle::new),
        }
    }

    /// A ring member without a filesystem (`chironfs ring-node`).
    pub fn ring_node(ring: &RingService) -> Target {
        Target {
            fs: None,
            ring: Some(RingHandle::new(ring)),
        }
    }
}

/// Binds the socket (replacing a stale one) and serves it on a thread.
pub fn start(target: Target, path: &Path, group: Option<u32>) -> Result<(), String> {
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
                let target = target.clone();
                let _ = std::thread::Builder::new()
                    .name("ctl-client".into())
                    .spawn(move || serve(&target, conn, group));
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

fn serve(target: &Target, conn: UnixStream, group: Option<u32>) {
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
            handle(target, &line)
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

fn handle(target: &Target, line: &[u8]) -> Response {
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
    match req.command.as_str() {
        "log-level" => match req
            .level
            .as_deref()
            .ok_or_else(|| "log-level needs a level".to_string())
            .and_then(crate::daemon::log::set_level)
        {
            Ok(()) => Response::ok(None),
            Err(e) => Response::error(e),
        },
        c if c.starts_with("ring-") => match &target.ring {
            Some(ring) => ring.handle(&req),
            None => Response::error(format!(
                "{c}: this mount has no [ring] section (see chironfs.toml(5))"
            )),
        },
        c => match &target.fs {
            Some(fs) => handle_fs(fs, &req),
            None if !FS_COMMANDS.contains(&c) => Response::error(format!("unknown command '{c}'")),
            None => Response::error(format!(
                "{c}: this is a ring node, without a filesystem; it answers only ring commands \
                 (chironctl ring status|join|leave|apply|get|put) and log-level"
            )),
        },
    }
}

/// The commands only a mount answers.
const FS_COMMANDS: &[&str] = &[
    "status",
    "disable",
    "enable",
    "resync",
    "trust",
    "conflicts",
];

/// The filesystem's commands.
fn handle_fs(fs: &ChironFs, req: &Request) -> Response {
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
        "conflicts" => match fs.conflicts() {
            Ok(c) => Response {
                conflicts: Some(c),
                ..Response::ok(None)
            },
            Err(e) => Response::error(e),
        },
        other => Response::error(format!("unknown command '{other}'")),
    }
}
