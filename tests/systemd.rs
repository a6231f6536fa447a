//! Guards the systemd readiness protocol (a `Type=notify` unit, tested
//! here without systemd): the daemon sends `READY=1` to `$NOTIFY_SOCKET`
//! only once the mount answers, and `STOPPING=1` when it is unmounted; a
//! daemon in the background works from "/", relative paths on its command
//! line included.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Waits (up to `limit`) for a datagram on `sock`; None on timeout.
fn recv(sock: &UnixDatagram, limit: Duration) -> Option<String> {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(_) => None,
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

/// Unmounts on drop, whatever the test did.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        ensure_unmounted(&self.0);
    }
}

/// What a mount shows at the moment READY=1 arrives: it is a chironfs
/// mount and it lists what the replicas hold.
fn assert_answers(mnt: &Path, msg: &str) {
    assert_eq!(
        mount_fstype(mnt).as_deref(),
        Some("fuse.chironfs"),
        "READY=1 ({msg:?}) came before the mount"
    );
    let names: Vec<_> = std::fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["seed"], "READY=1 came before the mount answered");
}

#[test]
fn background_daemon_notifies_ready_once_the_mount_answers_and_stopping_on_sigterm() {
    let root = TestRoot::new();
    let (a, b, mnt) = (root.mkdir("a"), root.mkdir("b"), root.mkdir("mnt"));
    std::fs::write(a.join("seed"), b"x").unwrap();
    std::fs::write(b.join("seed"), b"x").unwrap();
    let notify_path = root.path().join("notify");
    let listener = UnixDatagram::bind(&notify_path).unwrap();
    let _guard = Unmount(mnt.clone());

    // Started from the test root, with paths relative to it: the daemon
    // must leave it, and still find its mountpoint, store and log.
    let mut cmd = Command::new(CHIRONFS);
    cmd.args(["-o", "state_dir=state,log=daemon.log", "a=b", "mnt"])
        .env("NOTIFY_SOCKET", &notify_path)
        .current_dir(root.path());
    let mut child = cmd.spawn().unwrap();

    let msg = recv(&listener, MOUNT_TIMEOUT).expect("no notification from the daemon");
    assert!(has_line(&msg, "READY=1"), "first notification: {msg:?}");
    assert_answers(&mnt, &msg);
    assert!(
        child.wait().unwrap().success(),
        "chironfs (the parent) failed"
    );

    // MAINPID names the daemon, which works from "/".
    let pid: u32 = msg
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no MAINPID in {msg:?}"));
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(cwd, Path::new("/"), "the daemon kept its working directory");

    // SIGTERM (systemctl stop): STOPPING=1, then the daemon unmounts by
    // its absolute path and exits.
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).unwrap();
    let msg = recv(&listener, Duration::from_secs(30)).expect("no STOPPING=1");
    assert!(has_line(&msg, "STOPPING=1"), "{msg:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(mount_fstype(&mnt).is_none(), "SIGTERM left the mount");
    let log = read_lossy(&root.path().join("daemon.log"));
    assert!(log.contains("unmounted"), "{log}");
    assert!(
        root.path().join("state").is_dir(),
        "no store in the test root"
    );
}

#[test]
fn foreground_daemon_notifies_ready_and_stopping() {
    let root = TestRoot::new();
    for r in ["r0", "r1"] {
        std::fs::write(root.mkdir(r).join("seed"), b"x").unwrap();
    }
    let notify_path = root.path().join("notify");
    let listener = UnixDatagram::bind(&notify_path).unwrap();
    let m = Mount::builder()
        .root(root)
        .fresh(2)
        .env("NOTIFY_SOCKET", &notify_path)
        .mount();
    let msg = recv(&listener, MOUNT_TIMEOUT).expect("no notification from the daemon");
    assert!(has_line(&msg, "READY=1"), "first notification: {msg:?}");
    assert_answers(&m.mountpoint, &msg);
    let (status, _root) = m.unmount();
    assert!(status.success(), "{status}");
    let msg = recv(&listener, Duration::from_secs(5)).expect("no STOPPING=1");
    assert!(has_line(&msg, "STOPPING=1"), "{msg:?}");
}
