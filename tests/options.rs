//! Guards that each mount option the daemon accepts takes effect: every
//! test here fails if its option is parsed and then ignored. `ro`,
//! `noexec`, `nosuid`, `nodev` (the mount's flags, and what the kernel
//! then refuses), `allow_root` (root in, others out), `read_policy`
//! (`priority`, `least-busy`: which replica an open reads, seen by making
//! one replica's copy of a file differ behind the daemon's back) and
//! `replica_io=pooled` (a local replica whose syscall blocks does not block
//! the application).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::statvfs::{FsFlags, statvfs};

use common::*;

const NOBODY: u32 = 65534;

fn errno<T>(r: &io::Result<T>) -> Option<i32> {
    r.as_ref().err().and_then(io::Error::raw_os_error)
}

fn flags(m: &Mount) -> FsFlags {
    statvfs(&m.mountpoint)
        .expect("statvfs of the mount")
        .flags()
}

// ---------------------------------------------------------------------------
// ro, noexec, nosuid, nodev
// ---------------------------------------------------------------------------

#[test]
fn ro_refuses_writes_with_erofs() {
    let root = TestRoot::new();
    for r in ["r0", "r1"] {
        fs::write(root.mkdir(r).join("old"), b"kept").unwrap();
    }
    let m = Mount::builder().root(root).fresh(2).option("ro").mount();
    assert!(flags(&m).contains(FsFlags::ST_RDONLY), "not mounted ro");
    assert_eq!(fs::read(m.path("old")).unwrap(), b"kept");
    let r = fs::write(m.path("new"), b"x");
    assert_eq!(errno(&r), Some(libc::EROFS), "create on ro: {r:?}");
    let r = OpenOptions::new().write(true).open(m.path("old"));
    assert_eq!(errno(&r), Some(libc::EROFS), "open for write on ro: {r:?}");
    let r = fs::create_dir(m.path("d"));
    assert_eq!(errno(&r), Some(libc::EROFS), "mkdir on ro: {r:?}");
    assert!(!m.replica_path(0, "new").exists() && !m.replica_path(1, "new").exists());
}

#[test]
fn noexec_refuses_to_run_programs() {
    let m = Mount::builder().fresh(2).option("noexec").mount();
    assert!(flags(&m).contains(FsFlags::ST_NOEXEC), "not mounted noexec");
    let script = m.path("script");
    fs::write(&script, b"#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let r = Command::new(&script).status();
    assert_eq!(errno(&r), Some(libc::EACCES), "exec on noexec: {r:?}");
}

/// A copy of id(1), setuid root, in the mount; run by nobody, it prints
/// its effective uid.
fn setuid_id_euid(m: &Mount) -> String {
    let id = m.path("id");
    fs::copy("/usr/bin/id", &id).unwrap();
    fs::set_permissions(&id, fs::Permissions::from_mode(0o4755)).unwrap();
    let out = run_as(NOBODY, NOBODY, id.to_str().unwrap(), &["-u".as_ref()]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn nosuid_keeps_a_setuid_program_from_gaining_root() {
    let m = Mount::builder()
        .fresh(2)
        .option("nosuid,allow_other")
        .mount();
    assert!(flags(&m).contains(FsFlags::ST_NOSUID), "not mounted nosuid");
    assert_eq!(setuid_id_euid(&m), NOBODY.to_string());
    // The same program on a mount without nosuid does gain root: the test
    // above shows the option, not a setup that never worked.
    let m = Mount::builder().fresh(2).option("allow_other").mount();
    assert!(!flags(&m).contains(FsFlags::ST_NOSUID));
    assert_eq!(setuid_id_euid(&m), "0");
}

/// Opens a device node like /dev/null (1, 3) made in the mount.
fn open_device_node(m: &Mount) -> io::Result<File> {
    let p = m.path("null");
    sys::mknod(&p, libc::S_IFCHR | 0o666, 1, 3).unwrap();
    OpenOptions::new().read(true).write(true).open(&p)
}

#[test]
fn nodev_refuses_to_open_device_nodes() {
    let m = Mount::builder().fresh(2).option("nodev").mount();
    assert!(flags(&m).contains(FsFlags::ST_NODEV), "not mounted nodev");
    let r = open_device_node(&m);
    assert_eq!(errno(&r), Some(libc::EACCES), "device open on nodev: {r:?}");
    // Without nodev the same node opens (and reads as /dev/null).
    let m = Mount::builder().fresh(2).mount();
    let mut f = open_device_node(&m).expect("device open without nodev");
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------------------
// allow_root
// ---------------------------------------------------------------------------

/// The daemon runs as root, so root is the mount's owner either way: what
/// allow_root changes is that the kernel lets every user's requests through
/// (`allow_other` in the superblock options) and the daemon answers only
/// root's and the owner's.
#[test]
fn allow_root_lets_root_in_and_keeps_others_out() {
    let m = Mount::builder().fresh(2).option("allow_root").mount();
    let info = mount_at(&m.mountpoint).expect("mounted");
    assert!(
        info.options.split(',').any(|o| o == "allow_other"),
        "allow_root: the kernel still refuses other users before the daemon sees them: {info:?}"
    );
    fs::write(m.path("f"), b"root's").unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"root's");
    fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_as(NOBODY, NOBODY, "cat", &[m.path("f").as_os_str()]);
    assert!(
        !out.status.success(),
        "nobody read a file of an allow_root mount: {out:?}"
    );
    // (Not stat: the kernel may answer it from attributes it cached for
    // root, without asking the daemon. A listing always asks.)
    let out = run_as(NOBODY, NOBODY, "ls", &[m.mountpoint.as_os_str()]);
    assert!(!out.status.success(), "nobody listed the mount: {out:?}");
}

// ---------------------------------------------------------------------------
// read_policy
// ---------------------------------------------------------------------------

const LEN: usize = 4096;

/// Writes `f` through the mount, then changes replica 1's copy to other
/// bytes of the same size and mtime, behind the daemon's back: a read
/// then shows which replica served it ('A' from replica 0, 'B' from 1).
fn two_versions(m: &Mount) -> PathBuf {
    let p = m.path("f");
    fs::write(&p, vec![b'A'; LEN]).unwrap();
    let backing = m.replica_path(1, "f");
    let mtime = fs::metadata(&backing).unwrap().modified().unwrap();
    fs::write(&backing, vec![b'B'; LEN]).unwrap();
    File::options()
        .write(true)
        .open(&backing)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    p
}

/// Which replica a read of the open file `f` came from (its cached pages
/// dropped first, so the bytes come from the daemon).
fn served_by(f: &mut File) -> usize {
    // Safe because the fd is valid while `f` lives.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    assert_eq!(v.len(), LEN);
    match v[0] {
        b'A' if v.iter().all(|&b| b == b'A') => 0,
        b'B' if v.iter().all(|&b| b == b'B') => 1,
        _ => panic!("a read mixed both replicas' bytes"),
    }
}

#[test]
fn read_policy_priority_reads_from_the_first_replica() {
    let m = Mount::builder()
        .fresh(2)
        .option("read_policy=priority")
        .mount();
    let p = two_versions(&m);
    let from: Vec<usize> = (0..12)
        .map(|_| served_by(&mut File::open(&p).unwrap()))
        .collect();
    assert!(
        from.iter().all(|&i| i == 0),
        "priority: opens read from replicas {from:?}"
    );
}

/// Open handles per replica, from `chironctl status --json`.
fn open_handles(sock: &Path) -> Vec<u64> {
    let o = Command::new(CHIRONFS)
        .args(["ctl", "status", "--json"])
        .arg(sock)
        .output()
        .unwrap();
    assert!(o.status.success(), "chironctl status: {o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["open_handles"].as_u64().unwrap())
        .collect()
}

/// With one file held open on one replica, every other open goes to the
/// other, less busy, replica (round-robin would alternate, priority would
/// stay on the first).
#[test]
fn read_policy_least_busy_reads_from_the_less_loaded_replica() {
    let root = TestRoot::new();
    let sock = root.path().join("ctl.sock");
    let m = Mount::builder()
        .root(root)
        .fresh(2)
        .option("read_policy=least-busy")
        .option(&format!("ctl={}", sock.display()))
        .mount();
    let p = two_versions(&m);
    let mut held = File::open(&p).unwrap();
    let busy = served_by(&mut held);
    for round in 0..8 {
        // The previous open's release reaches the daemon after close()
        // returns: wait until only the held open counts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while open_handles(&sock).iter().sum::<u64>() != 1 {
            assert!(Instant::now() < deadline, "handles not released");
            std::thread::sleep(Duration::from_millis(20));
        }
        let other = served_by(&mut File::open(&p).unwrap());
        assert_ne!(
            other, busy,
            "round {round}: an open read from replica {busy}, which holds an open, not from the idle one"
        );
    }
}

// ---------------------------------------------------------------------------
// replica_io=pooled
// ---------------------------------------------------------------------------

/// A process holding a read lease on `p`: an open of `p` for writing by
/// anyone else blocks until the lease is given up (the holder ignores the
/// break) or /proc/sys/fs/lease-break-time (45 s by default) passes: a
/// syscall on a local filesystem that blocks. Killed on drop.
struct Lease(Child);

impl Lease {
    fn take(p: &Path) -> Lease {
        // F_SETLEASE = 1024, F_RDLCK = 0. The lease is refused while any
        // writable fd of the file is open (the daemon's may linger a moment
        // after close): retry.
        let script = "import fcntl, os, signal, sys, time\n\
             signal.signal(signal.SIGIO, signal.SIG_IGN)\n\
             fd = os.open(sys.argv[1], os.O_RDONLY)\n\
             end = time.time() + 10\n\
             while True:\n\
             \x20   try:\n\
             \x20       fcntl.fcntl(fd, 1024, 0); break\n\
             \x20   except OSError:\n\
             \x20       if time.time() > end: raise\n\
             \x20       time.sleep(0.05)\n\
             print('leased', flush=True)\n\
             time.sleep(300)\n";
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(p)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "leased", "the lease holder failed");
        Lease(child)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With `replica_io=auto` the first replica on a local filesystem runs on
/// the calling thread, without a deadline; `pooled` puts it on its own
/// workers under `replica_timeout` like any other. A writable open whose
/// syscall blocks on that replica must then come back after the deadline,
/// the replica failed, not after the lease breaks.
#[test]
fn replica_io_pooled_puts_a_blocked_local_replica_under_the_deadline() {
    let m = Mount::builder()
        .fresh(2)
        .option("replica_io=pooled,replica_timeout=1,probe_interval=3600")
        .mount();
    let p = m.path("f");
    fs::write(&p, b"before").unwrap();
    let lease = Lease::take(&m.replica_path(0, "f"));
    let t = Instant::now();
    let opened = OpenOptions::new().write(true).open(&p);
    let took = t.elapsed();
    drop(lease);
    assert!(opened.is_ok(), "writable open: {opened:?}");
    assert!(
        took < Duration::from_secs(20),
        "a writable open waited {took:?} for a blocked local replica (lease-break-time is 45 s)"
    );
    let needle = format!("replica {} failed", m.replicas[0].display());
    assert!(
        m.wait_for_log(&needle, Duration::from_secs(5)),
        "the blocked replica was not failed:\n{}",
        m.log()
    );
}
