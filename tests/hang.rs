//! Hung and failing replicas through real FUSE, with faultfs (a passthrough
//! FUSE filesystem that hangs or returns EIO on demand, tests/faultfs) as one
//! replica and a plain directory as the other.
//!
//! Guards against: an application blocked forever (or for much longer than
//! `replica_timeout`) by one hung replica; a hung replica tying up the FUSE
//! threads or the healthy replica's workers so that other files stall; reads
//! and stats waiting on a hung primary instead of answering from the other
//! replica; and a replica that returned EIO being read from again.
//!
//! Needs the faultfs binary next to the daemon (`target/<profile>/examples/
//! faultfs`): plain `cargo test` builds it; with a target filter such as
//! `cargo test --release --test hang`, build it first with
//! `cargo build --release --example faultfs`.

mod common;

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::faultfs::FaultFs;
use common::*;

/// `replica_timeout` given to the daemon.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(2);
/// "Within about the deadline": the deadline plus generous slack for a busy
/// machine. A bound, not a benchmark.
const BOUND: Duration = Duration::from_secs(8);
/// "Promptly": well under the deadline, so an operation that waited for the
/// hung replica even once (a full `replica_timeout`) exceeds it.
const PROMPT: Duration = Duration::from_millis(1500);

/// A chironfs mount over [faultfs, plain directory] (or the reverse).
///
/// Dropping it first sets faultfs back to `ok`, so that nothing stuck on the
/// hung replica keeps chironfs from unmounting, then unmounts chironfs, then
/// faultfs (fields drop in declaration order).
struct Rig {
    mount: Mount,
    fault: FaultFs,
    /// Index of the faultfs replica in `mount.replicas`.
    fi: usize,
    /// Index of the healthy replica.
    hi: usize,
}

impl Rig {
    /// `fault_first`: faultfs is the first-listed (primary) replica.
    fn new(fault_first: bool) -> Rig {
        // These tests check what happens while a replica is out; the probe
        // must not bring it back (and resync it) mid-test.
        Rig::with_probe(fault_first, "3600")
    }

    /// Like `new`, probing failed replicas every `probe` seconds.
    fn with_probe(fault_first: bool, probe: &str) -> Rig {
        Rig::with_options(fault_first, probe, &[])
    }

    /// Like `with_probe`, with more mount options.
    fn with_options(fault_first: bool, probe: &str, extra: &[&str]) -> Rig {
        let fault = FaultFs::start();
        let mut b = Mount::builder();
        if fault_first {
            b = b.replica(&fault.mountpoint).fresh(1);
        } else {
            b = b.fresh(1).replica(&fault.mountpoint);
        }
        // No kernel caching on the chironfs side either: every operation the
        // test times reaches the daemon.
        b = b
            .option(&format!("replica_timeout={}", REPLICA_TIMEOUT.as_secs()))
            .option("attr_timeout=0")
            .option("entry_timeout=0")
            .option(&format!("probe_interval={probe}"));
        for o in extra {
            b = b.option(o);
        }
        let mount = b.watchdog(Duration::from_secs(300)).mount();
        let (fi, hi) = if fault_first { (0, 1) } else { (1, 0) };
        Rig {
            mount,
            fault,
            fi,
            hi,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mount.path(rel)
    }

    fn healthy(&self, rel: &str) -> PathBuf {
        self.mount.replica_path(self.hi, rel)
    }

    /// The log line chironfs writes when it fails the faultfs replica.
    fn failed_line(&self) -> String {
        format!("replica {} failed", self.mount.replicas[self.fi].display())
    }

    fn assert_fault_failed(&self) {
        let needle = self.failed_line();
        assert!(
            self.mount.wait_for_log(&needle, Duration::from_secs(5)),
            "the log does not say `{needle}`:\n{}",
            self.mount.log()
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.fault.set_mode("ok");
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Runs `f` on its own thread and returns its result, panicking if it has
/// not finished within `limit`. A thread still blocked in a syscall on the
/// mount is left behind: it finishes once the rig is dropped (faultfs back to
/// `ok`, daemons unmounted or killed).
fn timed<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    thread::spawn(move || {
        let r = f();
        let _ = tx.send((r, start.elapsed()));
    });
    match rx.recv_timeout(limit) {
        Ok((r, took)) => {
            eprintln!("{what}: {took:?}");
            r
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: still blocked after {limit:?} (replica_timeout is {REPLICA_TIMEOUT:?})")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

/// Creates `p`, writes `data`, fsyncs and closes, reporting the first error
/// of any step (close errors included).
fn write_file(p: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(p)?;
    let mut result = f.write_all(data);
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

fn list(dir: &Path) -> io::Result<Vec<String>> {
    let mut v = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

fn ok<T>(what: &str, r: io::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Operations on the mount that must each complete promptly (`limit`) once
/// the faultfs replica is out: other files, mkdir, reads, readdir, stat,
/// metadata changes. `expect` maps names already written to their content.
fn prompt_operations(rig: &Rig, expect: &[(&str, &[u8])], limit: Duration) {
    let other = pattern(100, 200_000);
    let p = rig.path("other");
    let d = other.clone();
    ok(
        "write other",
        timed("write other", limit, move || write_file(&p, &d)),
    );
    let p = rig.path("dir");
    ok(
        "mkdir dir",
        timed("mkdir dir", limit, move || fs::create_dir(&p)),
    );
    let p = rig.path("dir/inner");
    let d = pattern(101, 5000);
    ok(
        "write dir/inner",
        timed("write dir/inner", limit, move || write_file(&p, &d)),
    );
    for (name, content) in expect.iter().chain([&("other", other.as_slice())]) {
        let p = rig.path(name);
        let got = ok(
            &format!("read {name}"),
            timed(&format!("read {name}"), limit, move || read_uncached(&p)),
        );
        assert_same(&format!("{name} read through the mount"), &got, content);
        let p = rig.path(name);
        let md = ok(
            &format!("stat {name}"),
            timed(&format!("stat {name}"), limit, move || fs::metadata(&p)),
        );
        assert_eq!(md.len(), content.len() as u64, "size of {name}");
    }
    let p = rig.mount.mountpoint.clone();
    let names = ok("readdir /", timed("readdir /", limit, move || list(&p)));
    for name in expect.iter().map(|e| e.0).chain(["other", "dir"]) {
        assert!(
            names.iter().any(|n| n == name),
            "readdir / lacks {name}: {names:?}"
        );
    }
    let p = rig.path("dir");
    let names = ok(
        "readdir /dir",
        timed("readdir /dir", limit, move || list(&p)),
    );
    assert_eq!(names, ["inner"], "readdir /dir");
    let (a, b) = (rig.path("other"), rig.path("dir/renamed"));
    ok(
        "rename other",
        timed("rename other", limit, move || fs::rename(&a, &b)),
    );
    let p = rig.path("dir/renamed");
    ok(
        "chmod",
        timed("chmod", limit, move || {
            fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        }),
    );
    let p = rig.path("dir/inner");
    ok(
        "unlink",
        timed("unlink", limit, move || fs::remove_file(&p)),
    );
    assert_same(
        "dir/renamed on the healthy replica",
        &ok("read healthy replica", fs::read(rig.healthy("dir/renamed"))),
        &other,
    );
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// A write while one replica hangs completes within about the deadline, the
/// hung replica is failed (logged), the data is on the healthy replica, and
/// everything after that is prompt.
fn hung_replica_write(fault_first: bool) {
    let rig = Rig::new(fault_first);
    let before = pattern(1, 300_000);
    ok(
        "write before (healthy)",
        write_file(&rig.path("before"), &before),
    );
    rig.fault.set_mode("hang");

    let data = pattern(2, 1 << 20);
    let (p, d) = (rig.path("a"), data.clone());
    ok(
        "write a while hung",
        timed("write a while hung", BOUND, move || write_file(&p, &d)),
    );
    rig.assert_fault_failed();
    assert_same(
        "a on the healthy replica",
        &ok("read healthy a", fs::read(rig.healthy("a"))),
        &data,
    );
    // faultfs is still hung: nothing below may need it.
    prompt_operations(&rig, &[("before", &before), ("a", &data)], PROMPT);
}

#[test]
fn hung_primary_replica_write_completes_within_deadline() {
    hung_replica_write(true);
}

#[test]
fn hung_secondary_replica_write_completes_within_deadline() {
    hung_replica_write(false);
}

/// 20 concurrent writers on different files while the primary replica hangs
/// (before anything has failed it): none blocks beyond the bound, so threads
/// stuck on the hung replica do not starve the healthy one, and all data
/// lands on the healthy replica.
#[test]
fn hung_replica_concurrent_writers_are_not_starved() {
    const WRITERS: usize = 20;
    let rig = Rig::new(true);
    rig.fault.set_mode("hang");
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    for i in 0..WRITERS {
        let (tx, p) = (tx.clone(), rig.path(&format!("w{i}")));
        thread::spawn(move || {
            let t = Instant::now();
            let r = write_file(&p, &pattern(1000 + i as u64, 100_000 + i * 1000));
            let _ = tx.send((i, r.map_err(|e| e.to_string()), t.elapsed()));
        });
    }
    drop(tx);
    let mut done = Vec::new();
    while done.len() < WRITERS {
        let left = (start + BOUND).saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(x) => done.push(x),
            Err(_) => break,
        }
    }
    let finished: Vec<usize> = done.iter().map(|d| d.0).collect();
    let blocked: Vec<usize> = (0..WRITERS).filter(|i| !finished.contains(i)).collect();
    eprintln!(
        "writers finished: {:?}",
        done.iter().map(|d| (d.0, d.2)).collect::<Vec<_>>()
    );
    assert!(
        blocked.is_empty(),
        "{} of {WRITERS} writers still blocked after {BOUND:?}: {blocked:?}",
        blocked.len()
    );
    for (i, r, _) in &done {
        if let Err(e) = r {
            panic!("writer w{i}: {e}");
        }
    }
    rig.assert_fault_failed();
    for i in 0..WRITERS {
        let name = format!("w{i}");
        assert_same(
            &format!("{name} on the healthy replica"),
            &ok(&name, fs::read(rig.healthy(&name))),
            &pattern(1000 + i as u64, 100_000 + i * 1000),
        );
    }
    let p = rig.mount.mountpoint.clone();
    let names = ok("readdir /", timed("readdir /", PROMPT, move || list(&p)));
    assert_eq!(names.len(), WRITERS, "readdir /: {names:?}");
}

/// A replica answering EIO: operations succeed on the other replica, the
/// replica is failed (logged), and it is never read from again, even once it
/// answers normally and holds different content.
#[test]
fn eio_replica_is_failed_and_never_read_again() {
    let rig = Rig::new(true);
    let old = pattern(10, 200_000);
    let old2 = pattern(11, 50_000);
    ok("write old (healthy)", write_file(&rig.path("old"), &old));
    ok("write old2 (healthy)", write_file(&rig.path("old2"), &old2));

    rig.fault.set_mode("eio");
    let new = pattern(12, 300_000);
    let (p, d) = (rig.path("new"), new.clone());
    ok(
        "write new with an EIO replica",
        timed("write new (eio)", BOUND, move || write_file(&p, &d)),
    );
    let p = rig.path("newdir");
    ok(
        "mkdir with an EIO replica",
        timed("mkdir newdir (eio)", BOUND, move || fs::create_dir(&p)),
    );
    rig.assert_fault_failed();

    // faultfs answers again, now with other content than the healthy copy.
    rig.fault.set_mode("ok");
    let wrong = |len: usize| vec![0xEEu8; len];
    ok(
        "overwrite faultfs backing old",
        fs::write(rig.fault.backing_path("old"), wrong(old.len())),
    );
    ok(
        "overwrite faultfs backing old2",
        fs::write(rig.fault.backing_path("old2"), wrong(old2.len() * 3)),
    );
    ok(
        "write faultfs backing new",
        fs::write(rig.fault.backing_path("new"), wrong(new.len())),
    );
    ok(
        "write faultfs backing ghost",
        fs::write(rig.fault.backing_path("ghost"), b"ghost"),
    );

    // Several fresh opens, so a round-robin read policy would have come back
    // to the first replica at least once.
    for round in 0..4 {
        for (name, content) in [("old", &old), ("old2", &old2), ("new", &new)] {
            let p = rig.path(name);
            let got = ok(
                &format!("read {name}"),
                timed(&format!("read {name} #{round}"), BOUND, move || {
                    read_uncached(&p)
                }),
            );
            assert_same(
                &format!("{name} read through the mount (round {round})"),
                &got,
                content,
            );
            let md = ok(&format!("stat {name}"), fs::metadata(rig.path(name)));
            assert_eq!(md.len(), content.len() as u64, "size of {name}");
        }
        let ghost = fs::symlink_metadata(rig.path("ghost"));
        assert_eq!(
            sys::errno(&ghost),
            Some(libc::ENOENT),
            "ghost (only on the failed replica) is visible: {ghost:?}"
        );
        let names = ok("readdir /", list(&rig.mount.mountpoint));
        assert_eq!(names, ["new", "newdir", "old", "old2"], "readdir /");
    }
    assert_same(
        "new on the healthy replica",
        &ok("read healthy new", fs::read(rig.healthy("new"))),
        &new,
    );
    // Operations keep working on the healthy replica alone.
    prompt_operations(&rig, &[("old", &old), ("new", &new)], BOUND);
}

/// Reads and stats while the primary (first-listed) replica hangs answer
/// within the bound from the other replica; once the primary has been
/// failed, nothing waits for it again.
#[test]
fn reads_while_primary_hangs_answer_from_other_replica() {
    let rig = Rig::new(true);
    let data = pattern(20, 500_000);
    let inner = pattern(21, 3000);
    ok("write f (healthy)", write_file(&rig.path("f"), &data));
    ok("mkdir d (healthy)", fs::create_dir(rig.path("d")));
    ok("write d/g (healthy)", write_file(&rig.path("d/g"), &inner));
    rig.fault.set_mode("hang");

    let p = rig.path("f");
    let md = ok(
        "stat f",
        timed("stat f (primary hung)", BOUND, move || fs::metadata(&p)),
    );
    assert_eq!(md.len(), data.len() as u64, "size of f");
    let p = rig.path("f");
    let got = ok(
        "read f",
        timed("read f (primary hung)", BOUND, move || read_uncached(&p)),
    );
    assert_same("f read through the mount", &got, &data);
    let p = rig.mount.mountpoint.clone();
    let names = ok(
        "readdir /",
        timed("readdir / (primary hung)", BOUND, move || list(&p)),
    );
    assert_eq!(names, ["d", "f"], "readdir /");
    rig.assert_fault_failed();

    // The primary is failed now: every further read is prompt.
    for round in 0..3 {
        let p = rig.path("d/g");
        let md = ok(
            "stat d/g",
            timed(&format!("stat d/g #{round}"), PROMPT, move || {
                fs::metadata(&p)
            }),
        );
        assert_eq!(md.len(), inner.len() as u64, "size of d/g");
        let p = rig.path("d/g");
        let got = ok(
            "read d/g",
            timed(&format!("read d/g #{round}"), PROMPT, move || {
                read_uncached(&p)
            }),
        );
        assert_same("d/g read through the mount", &got, &inner);
        let p = rig.path("f");
        let got = ok(
            "read f",
            timed(&format!("read f #{round}"), PROMPT, move || {
                read_uncached(&p)
            }),
        );
        assert_same("f read through the mount", &got, &data);
        let p = rig.path("d");
        let names = ok(
            "readdir /d",
            timed(&format!("readdir /d #{round}"), PROMPT, move || list(&p)),
        );
        assert_eq!(names, ["g"], "readdir /d");
    }
}

/// A replica that hung (or returned EIO) and recovers is resynced: the
/// replicas end byte-identical and nothing acknowledged is lost.
fn failed_then_recovered(mode: &str) {
    let rig = Rig::with_probe(false, "0.2");
    fs::create_dir(rig.path("d")).unwrap();
    for i in 0..5 {
        ok(
            "write",
            write_file(&rig.path(&format!("d/f{i}")), &pattern(i, 300_000)),
        );
    }
    rig.fault.set_mode(mode);
    ok(
        "write while failing",
        write_file(&rig.path("d/new"), &pattern(50, 1 << 20)),
    );
    rig.assert_fault_failed();
    ok(
        "rename",
        fs::rename(rig.path("d/f1"), rig.path("d/f1-renamed")),
    );
    ok("unlink", fs::remove_file(rig.path("d/f2")));
    ok("mkdir", fs::create_dir(rig.path("d/sub")));
    ok(
        "write",
        write_file(&rig.path("d/sub/g"), &pattern(60, 70_000)),
    );
    rig.fault.set_mode("ok");
    assert!(
        rig.mount
            .wait_for_log("in sync again", Duration::from_secs(60)),
        "the recovered replica was not resynced:\n{}",
        rig.mount.log()
    );
    rig.mount.assert_replicas_identical();
    assert_same(
        "d/new",
        &ok("read", read_uncached(&rig.path("d/new"))),
        &pattern(50, 1 << 20),
    );
}

#[test]
fn hung_replica_that_recovers_is_resynced_identical() {
    failed_then_recovered("hang");
}

#[test]
fn eio_replica_that_recovers_is_resynced_identical() {
    failed_then_recovered("eio");
}

/// A replica that hangs in the middle of its resync, while the copy of a
/// file to it holds that file's lock: writes to the file, and a hard link
/// (which takes every path lock), complete within about the deadline, the
/// hung replica is failed, and once it recovers it is resynced identical.
/// (Checker seeds 4 and 16: clients stalled for as long as the hang.)
#[test]
fn a_replica_hanging_mid_resync_holds_up_no_write() {
    let rig = Rig::with_options(false, "0.2", &["resync_bandwidth=8"]);
    let mount = &rig.mount;
    // 24 MiB at 8 MiB/s: the copy runs for about 3 s, one 1 MiB chunk at
    // a time, each written under the file's lock.
    let big = pattern(7, 24 << 20);
    ok("write big", write_file(&rig.path("big"), &big));
    ok("write small", write_file(&rig.path("small"), b"small"));
    rig.fault.set_mode("eio");
    let mut changed = big.clone();
    changed[..5].copy_from_slice(b"first");
    ok(
        "change big with the replica failing",
        write_file(&rig.path("big"), &changed),
    );
    rig.assert_fault_failed();
    rig.fault.set_mode("ok");
    assert!(
        mount.wait_for_log("is back; resyncing it", Duration::from_secs(30)),
        "the replica did not come back:\n{}",
        mount.log()
    );
    thread::sleep(Duration::from_millis(700));
    rig.fault.set_mode("hang");
    // The copy's next chunk write hangs, holding big's lock.
    thread::sleep(Duration::from_millis(500));
    let p = rig.path("big");
    ok(
        "write big while its copy hangs",
        timed("write big while its copy hangs", BOUND, move || {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new().write(true).open(&p)?;
            f.write_all_at(b"second", 0)
        }),
    );
    changed[..6].copy_from_slice(b"second");
    let (a, b) = (rig.path("small"), rig.path("small-link"));
    ok(
        "link while the copy hangs",
        timed("link while the copy hangs", BOUND, move || {
            fs::hard_link(&a, &b)
        }),
    );
    rig.fault.set_mode("ok");
    assert!(
        mount.wait_for_log("is in sync again", Duration::from_secs(60)),
        "the recovered replica was not resynced:\n{}",
        mount.log()
    );
    mount.assert_replicas_identical();
    assert_same(
        "big",
        &ok("read big", read_uncached(&rig.path("big"))),
        &changed,
    );
}

/// A replica whose directory was on a local filesystem at mount (its NFS
/// mount not up yet, say) and that comes back as a FUSE filesystem carrying
/// its marker is not served: its syscalls would run on FUSE threads with no
/// deadline. It stays failed, and the log says why and what to do.
#[test]
fn a_replica_local_at_mount_that_returns_on_fuse_is_not_served() {
    let froot = TestRoot::new();
    // Replica b's path: a plain directory now, faultfs's mountpoint later.
    let path = froot.mkdir("mnt");
    let backing = froot.mkdir("backing");
    let mroot = TestRoot::new();
    let sock = mroot.path().join("ctl.sock");
    let mount = Mount::builder()
        .root(mroot)
        .fresh(1)
        .replica(&path)
        .option(&format!("ctl={}", sock.display()))
        .option("probe_interval=0.2")
        .option(&format!("replica_timeout={}", REPLICA_TIMEOUT.as_secs()))
        .watchdog(Duration::from_secs(120))
        .mount();
    ok("write f", write_file(&mount.path("f"), b"one"));
    // What faultfs will show there: the replica, marker included.
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", path.display()))
        .arg(&backing)
        .status()
        .unwrap();
    assert!(cp.success());
    let fault = FaultFs::over(froot, backing);
    assert_eq!(fault.mountpoint, path);
    let ctl = |args: &[&str]| {
        std::process::Command::new(CHIRONFS)
            .arg("ctl")
            .args(args)
            .arg(&sock)
            .output()
            .unwrap()
    };
    // Cycled by the operator: `enable` looks at it through its path.
    let b = path.display().to_string();
    assert!(ctl(&["disable", &b]).status.success());
    assert!(ctl(&["enable", &b]).status.success());
    assert!(
        mount.wait_for_log(
            "is back on a network or FUSE filesystem",
            Duration::from_secs(20)
        ),
        "no refusal in the log:\n{}",
        mount.log()
    );
    let st = ctl(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(
        st["replicas"][1]["state"], "failed",
        "the replica back on faultfs is served: {st}"
    );
    ok("write g", write_file(&mount.path("g"), b"two"));
    drop(mount);
    drop(fault);
}
