//! systemd's readiness protocol (sd_notify(3)), for a `Type=notify` unit:
//! `READY=1` once the mount answers, `STOPPING=1` when it goes. A datagram
//! to the unix socket named by `$NOTIFY_SOCKET` (an abstract one if the
//! name starts with '@'); without the variable, nothing is sent.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

const VAR: &str = "NOTIFY_SOCKET";

fn socket() -> Option<OsString> {
    std::env::var_os(VAR).filter(|s| !s.is_empty())
}

/// Sends `state` (newline-separated `KEY=VALUE` lines) to `to`.
fn send(to: &OsString, state: &str) -> io::Result<()> {
    let addr = match to.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(Path::new(to))?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// Tells systemd `state`, if it listens; a failure is logged, not fatal
/// (systemd then times the unit out, which says more than we could).
fn notify(state: &str) {
    let Some(to) = socket() else { return };
    if let Err(e) = send(&to, state) {
        tracing::error!("{VAR}={}: cannot notify: {e}", to.to_string_lossy());
    }
}

/// Sends `READY=1` once `mountpoint` answers: from a thread of its own,
/// which stats the mountpoint through the kernel (so the FUSE session is
/// serving requests, not only mounted) and then notifies. `MAINPID` names
/// this process, which is not the one systemd started when the daemon
/// forked to the background.
pub fn ready_when_answering(mountpoint: PathBuf) {
    if socket().is_none() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("sd-notify".into())
        .spawn(move || match std::fs::metadata(&mountpoint) {
            Ok(_) => notify(&format!(
                "READY=1\nSTATUS=serving {}\nMAINPID={}",
                mountpoint.display(),
                std::process::id()
            )),
            Err(e) => tracing::error!(
                "{} does not answer ({e}); systemd is not told it is ready",
                mountpoint.display()
            ),
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the readiness thread: {e}");
    }
}

static STOPPING: AtomicBool = AtomicBool::new(false);

/// Sends `STOPPING=1` (once, whoever calls first: a signal or the end of
/// the session).
pub fn stopping() {
    if !STOPPING.swap(true, Ordering::SeqCst) {
        notify("STOPPING=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(&path.clone().into_os_string(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("chironfs-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(&OsString::from(format!("@{name}")), "STOPPING=1").unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
