//! Guards the parts of the POSIX surface the suites touch only lightly:
//! POSIX ACLs enforced by the kernel, statfs of the fullest replica,
//! SEEK_DATA/SEEK_HOLE, local flock/POSIX locks, and ioctls the filesystem
//! does not support (ENOTTY, and no log line per request).

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Mount, Tmpfs, run_as};

const NOBODY: u32 = 65534;

fn can_read_as_nobody(p: &std::path::Path) -> bool {
    run_as(NOBODY, NOBODY, "cat", &[p.as_os_str()])
        .status
        .success()
}

fn setfacl(args: &[&str], p: &std::path::Path) {
    let out = Command::new("setfacl").args(args).arg(p).output().unwrap();
    assert!(out.status.success(), "setfacl {args:?}: {out:?}");
}

#[test]
fn posix_acls_are_enforced() {
    let m = Mount::builder().fresh(2).option("allow_other").mount();
    fs::set_permissions(&m.mountpoint, fs::Permissions::from_mode(0o755)).unwrap();
    let f = m.path("secret");
    fs::write(&f, b"for root and whoever the ACL names").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(!can_read_as_nobody(&f), "mode 0600 let nobody read");
    setfacl(&["-m", "u:nobody:r"], &f);
    assert!(
        can_read_as_nobody(&f),
        "an ACL entry granting read was not honoured"
    );
    setfacl(&["-x", "u:nobody"], &f);
    assert!(
        !can_read_as_nobody(&f),
        "a removed ACL entry still granted read"
    );
    // An ACL can also deny what the mode bits would allow.
    let open = m.path("open");
    fs::write(&open, b"world readable").unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(can_read_as_nobody(&open));
    setfacl(&["-m", "u:nobody:-"], &open);
    assert!(
        !can_read_as_nobody(&open),
        "an ACL entry denying read was not honoured"
    );
    m.assert_replicas_identical();
}

#[test]
fn statfs_reports_the_fullest_replica() {
    let small = Tmpfs::new("16m");
    let m = Mount::builder().fresh(1).replica(small.path()).mount();
    let mnt = nix::sys::statvfs::statvfs(&m.mountpoint).unwrap();
    let tmp = nix::sys::statvfs::statvfs(small.path()).unwrap();
    let avail = |s: &nix::sys::statvfs::Statvfs| s.blocks_available() * s.fragment_size();
    let total = |s: &nix::sys::statvfs::Statvfs| s.blocks() * s.fragment_size();
    assert_eq!(
        total(&mnt),
        total(&tmp),
        "statfs is not the small replica's"
    );
    assert!(
        avail(&mnt) <= avail(&tmp) + (1 << 20),
        "more space reported than the small replica has"
    );
}

#[test]
fn seek_data_and_seek_hole() {
    let m = Mount::new(2);
    let p = m.path("sparse");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all(&[7u8; 4096]).unwrap();
    f.seek(SeekFrom::Start(8 << 20)).unwrap();
    f.write_all(&[9u8; 4096]).unwrap();
    f.sync_all().unwrap();
    let fd = f.as_raw_fd();
    // Safe: plain lseek calls on an fd we own.
    let hole = unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) };
    let data = unsafe { libc::lseek(fd, 4096, libc::SEEK_DATA) };
    assert!(
        (4096..8 << 20).contains(&hole),
        "SEEK_HOLE from 0 gave {hole}"
    );
    assert_eq!(data, 8 << 20, "SEEK_DATA after the hole");
    drop(f);
    m.assert_replicas_identical();
}

#[test]
fn flock_and_posix_locks_work_between_processes() {
    let m = Mount::new(2);
    let p = m.path("locked");
    fs::write(&p, b"x").unwrap();
    let f = fs::File::open(&p).unwrap();
    // Safe: flock on an fd we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    let other = Command::new("flock")
        .arg("-n")
        .arg(&p)
        .arg("true")
        .status()
        .unwrap();
    assert!(
        !other.success(),
        "a second flock got an exclusive lock that is held"
    );
    // Safe: as above.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) }, 0);
    let other = Command::new("flock")
        .arg("-n")
        .arg(&p)
        .arg("true")
        .status()
        .unwrap();
    assert!(other.success(), "flock failed after the lock was released");

    // POSIX (fcntl) locks: hold one in this process, probe from another.
    let w = fs::OpenOptions::new().write(true).open(&p).unwrap();
    let lock = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // Safe: F_SETLK with a valid struct on an fd we own.
    assert_eq!(
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETLK, &lock) },
        0
    );
    let probe = format!(
        "import fcntl,sys\nf=open({:?},'r+')\ntry:\n fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept OSError:\n sys.exit(3)\n",
        p.display().to_string()
    );
    let st = Command::new("python3")
        .arg("-c")
        .arg(&probe)
        .status()
        .unwrap();
    assert_eq!(
        st.code(),
        Some(3),
        "a POSIX lock held by another process was granted"
    );
    drop(w);
    let st = Command::new("python3")
        .arg("-c")
        .arg(&probe)
        .status()
        .unwrap();
    assert_eq!(
        st.code(),
        Some(0),
        "the POSIX lock was not released with its fd"
    );
}

/// Python's open() asks isatty (ioctl TCGETS) of every file it opens: each
/// such ioctl must get ENOTTY and leave nothing in the log (it used to log
/// a fuser "[Not Implemented]" warning per call, flooding syslog).
#[test]
fn unsupported_ioctls_get_enotty_quietly() {
    let m = Mount::new(2);
    let p = m.path("file");
    fs::write(&p, b"data").unwrap();
    let f = fs::File::open(&p).unwrap();
    for _ in 0..50 {
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // Safe: TCGETS writes at most one termios into the buffer given.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS, termios.as_mut_ptr()) };
        let e = std::io::Error::last_os_error();
        assert_eq!(rc, -1, "TCGETS on a regular file succeeded");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "TCGETS: {e}");
    }
    drop(f);
    let script = format!(
        "import sys\nfor _ in range(50):\n    f=open({:?})\n    assert f.read()=='data'\n    assert not f.isatty()\n    f.close()\n",
        p.display().to_string()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(out.status.success(), "python3: {out:?}");
    let log = m.log();
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Not Implemented") || l.contains("ioctl"))
        .collect();
    assert!(noisy.is_empty(), "per-request log lines: {noisy:#?}");
}

/// Listings carry their entries' lookups (READDIRPLUS), each counted as
/// the LOOKUP it replaces and forgotten by the kernel later; an entry a
/// full reply buffer leaves out is forgotten at once. Over many listings,
/// cache drops and renames, every name stays reachable with its own
/// attributes: an entry forgotten once too often would answer ENOENT or
/// another file's attributes, one counted too often would never leave.
#[test]
fn long_listings_and_cache_drops_keep_every_entry_reachable() {
    let m = Mount::new(2);
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    let n = 1500;
    for i in 0..n {
        fs::write(
            d.join(format!("file-with-a-longish-name-{i:05}")),
            format!("{i}"),
        )
        .unwrap();
    }
    for round in 0..3 {
        // ls -l: a listing with attributes, in many reply buffers.
        let out = Command::new("ls").arg("-l").arg(&d).output().unwrap();
        assert!(out.status.success(), "ls -l: {out:?}");
        let lines = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("file-with-a-longish-name-"))
            .count();
        assert_eq!(lines, n, "round {round}: ls -l lists {lines} of {n} files");
        for i in (0..n).step_by(7) {
            let p = d.join(format!("file-with-a-longish-name-{i:05}"));
            let meta = fs::metadata(&p)
                .unwrap_or_else(|e| panic!("round {round}: stat {}: {e}", p.display()));
            assert_eq!(
                meta.len(),
                format!("{i}").len() as u64,
                "round {round}: {}",
                p.display()
            );
            assert_eq!(fs::read_to_string(&p).unwrap(), format!("{i}"));
        }
        // Renames between listings: names move, inodes stay.
        for i in (round..n).step_by(50) {
            let from = d.join(format!("file-with-a-longish-name-{i:05}"));
            let to = d.join(format!("file-with-a-longish-name-{i:05}.tmp"));
            fs::rename(&from, &to).unwrap();
            fs::rename(&to, &from).unwrap();
        }
        // The kernel forgets every entry it can (FORGET for each lookup).
        fs::write("/proc/sys/vm/drop_caches", b"2").expect("drop_caches");
    }
    let out = Command::new("find").arg(&d).arg("-ls").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), n + 1);
    m.assert_replicas_identical();
}
