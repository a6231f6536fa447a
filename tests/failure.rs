//! Replica failure through real FUSE: guards against a full or vanished
//! replica failing the application's writes (with write_quorum=1), against a
//! failed replica being read from again (stale or corrupt data served), and
//! against write_quorum=all silently accepting a write one replica lost.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const MIB: usize = 1 << 20;

/// Writes `data` in 1 MiB writes, fsyncs and closes, reporting the first
/// error of write, fsync or close (close errors are lost by `File`'s drop).
fn write_file(p: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(p)?;
    let mut result = Ok(());
    for chunk in data.chunks(MIB) {
        if let Err(e) = f.write_all(chunk) {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        result = f.sync_all();
    }
    let fd = f.into_raw_fd();
    // Safe because we own fd (taken from the File) and close it exactly once.
    let rc = unsafe { libc::close(fd) };
    if rc != 0 && result.is_ok() {
        result = Err(io::Error::last_os_error());
    }
    result
}

/// Reads `p` through a fresh open, after dropping its cached pages so the
/// bytes come from the daemon (or its passthrough backing file), not from
/// the kernel's page cache of an earlier open.
fn read_uncached(p: &Path) -> Vec<u8> {
    let mut f = File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    // Safe because the fd is valid while `f` lives.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut v = Vec::new();
    f.read_to_end(&mut v)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    v
}

/// The contract's log line prefix for a failed replica.
fn failed_line(replica: &Path) -> String {
    format!("replica {} failed", replica.display())
}

/// 8 files of 4 MiB.
fn dataset() -> Vec<(String, Vec<u8>)> {
    (0..8)
        .map(|i| (format!("f{i}"), pattern(i as u64 + 1, 4 * MIB)))
        .collect()
}

/// Overwrites every byte of `p` (on a replica, directly) with other bytes of
/// the same length, in place (no new blocks needed on a full tmpfs).
fn corrupt_in_place(p: &Path) {
    let len = fs::metadata(p).unwrap().len() as usize;
    let f = OpenOptions::new().write(true).open(p).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&vec![0xEE; len], 0).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn full_replica_is_failed_and_the_workload_completes_on_the_other() {
    let small = Tmpfs::new("8m");
    let m = Mount::builder().replica(small.path()).fresh(1).mount();
    let data = dataset();
    for (name, bytes) in &data {
        write_file(&m.path(name), bytes).unwrap_or_else(|e| {
            panic!(
                "write of {name} failed with write_quorum=1: {e}\n--- log ---\n{}",
                m.log()
            )
        });
    }
    // The tmpfs replica ran out of space: marked failed, logged once.
    let line = failed_line(small.path());
    assert!(
        m.wait_for_log(&line, Duration::from_secs(10)),
        "no '{line}' in the daemon log:\n{}",
        m.log()
    );
    let log = m.log();
    assert_eq!(
        log.matches(&line).count(),
        1,
        "failure must be logged once:\n{log}"
    );
    // Everything readable through the mount and complete on the large replica.
    for (name, bytes) in &data {
        assert_same(
            &format!("{name} through the mount"),
            &read_uncached(&m.path(name)),
            bytes,
        );
        assert_same(
            &format!("{name} on the large replica"),
            &fs::read(m.replica_path(1, name)).unwrap(),
            bytes,
        );
    }
    let listed: Vec<_> = fs::read_dir(&m.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        listed.len(),
        data.len(),
        "entries through the mount: {listed:?}"
    );

    // f0 fitted on the tmpfs before it filled up. Corrupt it there: the
    // failed replica must never serve it again.
    let on_failed = small.path().join("f0");
    assert!(
        on_failed.exists(),
        "f0 should have reached the tmpfs replica"
    );
    corrupt_in_place(&on_failed);
    assert_ne!(fs::read(&on_failed).unwrap(), data[0].1);
    for i in 0..20 {
        assert_same(
            &format!(
                "f0 through the mount, fresh open #{i}, after corrupting it on the failed replica"
            ),
            &read_uncached(&m.path("f0")),
            &data[0].1,
        );
    }
    // The mount keeps working for new writes.
    write_file(&m.path("after"), b"after the failure").unwrap();
    assert_eq!(
        fs::read(m.replica_path(1, "after")).unwrap(),
        b"after the failure"
    );
    let (status, _) = m.unmount();
    assert!(status.success(), "daemon exit status {status}");
}

#[test]
fn failed_replica_is_not_read_even_with_priority_policy() {
    // The failed replica is listed first, so `priority` would prefer it.
    let small = Tmpfs::new("4m");
    let m = Mount::builder()
        .replica(small.path())
        .fresh(1)
        .option("read_policy=priority")
        .mount();
    let first = pattern(50, 2 * MIB);
    write_file(&m.path("first"), &first).unwrap();
    let second = pattern(51, 6 * MIB);
    write_file(&m.path("second"), &second).unwrap();
    let line = failed_line(small.path());
    assert!(
        m.wait_for_log(&line, Duration::from_secs(10)),
        "no '{line}' in the daemon log:\n{}",
        m.log()
    );
    corrupt_in_place(&small.path().join("first"));
    for i in 0..5 {
        assert_same(
            &format!("first, open #{i}"),
            &read_uncached(&m.path("first")),
            &first,
        );
        assert_same(
            &format!("second, open #{i}"),
            &read_uncached(&m.path("second")),
            &second,
        );
    }
    // Metadata comes from the good replica too.
    assert_eq!(
        fs::metadata(m.path("second")).unwrap().len(),
        second.len() as u64
    );
}

#[test]
fn write_quorum_all_reports_the_lost_write_to_the_application() {
    let small = Tmpfs::new("8m");
    let m = Mount::builder()
        .replica(small.path())
        .fresh(1)
        .option("write_quorum=all")
        .mount();
    let data = dataset();
    let mut error = None;
    let mut written = Vec::new();
    for (name, bytes) in &data {
        match write_file(&m.path(name), bytes) {
            Ok(()) => written.push((name, bytes)),
            Err(e) => {
                error = Some((name.clone(), e));
                break;
            }
        }
    }
    let (name, e) = error.unwrap_or_else(|| {
        panic!(
            "32 MiB written with write_quorum=all onto an 8 MiB replica without any error\n--- log ---\n{}",
            m.log()
        )
    });
    let errno = e.raw_os_error();
    assert!(
        errno == Some(libc::EIO) || errno == Some(libc::ENOSPC),
        "write of {name} failed with {e} (expected EIO or ENOSPC)"
    );
    assert!(
        !written.is_empty(),
        "even the first 4 MiB failed on an 8 MiB tmpfs ({name}: {e})\n--- log ---\n{}",
        m.log()
    );
    // What was acknowledged is intact.
    for (name, bytes) in written {
        assert_same(
            &format!("{name} through the mount"),
            &read_uncached(&m.path(name)),
            bytes,
        );
        assert_same(
            &format!("{name} on the large replica"),
            &fs::read(m.replica_path(1, name)).unwrap(),
            bytes,
        );
    }
}

fn exercise_mount(m: &Mount, tag: &str) {
    let p = |rel: &str| m.path(format!("{tag}-{rel}"));
    let data = pattern(tag.len() as u64, 3 * MIB + 5);
    write_file(&p("file"), &data).unwrap_or_else(|e| panic!("{tag}: write: {e}\n{}", m.log()));
    assert_same(&format!("{tag}-file"), &read_uncached(&p("file")), &data);
    fs::create_dir(p("dir")).unwrap_or_else(|e| panic!("{tag}: mkdir: {e}"));
    fs::write(p("dir").join("inner"), b"inner").unwrap_or_else(|e| panic!("{tag}: create: {e}"));
    fs::rename(p("file"), p("renamed")).unwrap_or_else(|e| panic!("{tag}: rename: {e}"));
    std::os::unix::fs::symlink(format!("{tag}-renamed"), p("link"))
        .unwrap_or_else(|e| panic!("{tag}: symlink: {e}"));
    fs::set_permissions(
        p("renamed"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap_or_else(|e| panic!("{tag}: chmod: {e}"));
    fs::remove_file(p("dir").join("inner")).unwrap_or_else(|e| panic!("{tag}: unlink: {e}"));
    fs::remove_dir(p("dir")).unwrap_or_else(|e| panic!("{tag}: rmdir: {e}"));
    assert_same(
        &format!("{tag}-renamed"),
        &read_uncached(&p("renamed")),
        &data,
    );
    assert_same(&format!("{tag}-link"), &read_uncached(&p("link")), &data);
    let names: Vec<String> = fs::read_dir(&m.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{tag}-")))
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        [format!("{tag}-link"), format!("{tag}-renamed")],
        "{tag}: readdir"
    );
}

fn file_names(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn replica_directory_deleted_while_mounted() {
    let m = Mount::new(2);
    exercise_mount(&m, "before");
    let gone = m.replicas[0].clone();
    fs::remove_dir_all(&gone).unwrap();
    assert!(!gone.exists());
    exercise_mount(&m, "after");
    // The surviving replica holds everything.
    for n in ["before-renamed", "after-renamed"] {
        assert!(
            m.replica_path(1, n).exists(),
            "{n} missing on the surviving replica"
        );
    }
    // The daemon did not recreate the deleted directory by path.
    assert!(
        !gone.exists(),
        "the deleted replica directory was recreated"
    );
    assert!(
        m.wait_for_log(&failed_line(&gone), Duration::from_secs(10)),
        "the deleted replica was not reported failed:\n{}",
        m.log()
    );
}

#[test]
fn replica_filesystem_unmounted_while_mounted() {
    let tmp = Tmpfs::new("64m");
    let m = Mount::builder().replica(tmp.path()).fresh(1).mount();
    exercise_mount(&m, "before");
    tmp.lazy_unmount();
    // The directory underneath is what the replica path shows now.
    let underlying_before = file_names(tmp.path());
    exercise_mount(&m, "after");
    assert!(m.replica_path(1, "after-renamed").exists());
    // Whatever the daemon does with the detached filesystem, it must not start
    // writing into the (markerless) directory that the path now shows.
    assert_eq!(
        file_names(tmp.path()),
        underlying_before,
        "the daemon wrote into the directory under the vanished replica"
    );
}
