//! Guards against forgetting what a failed replica missed: replica states
//! and identities survive remounts, a replica that is not what it claims is
//! never used, a replica that comes back is resynced to be byte-identical,
//! and a daemon killed with SIGKILL loses nothing that was fsynced.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mount, TestRoot, Tmpfs, pattern};

const RESYNC_WAIT: Duration = Duration::from_secs(60);

fn write_file(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// A mount of a fresh directory and a tmpfs of `size` (the replica made to
/// fill up), probing failed replicas every 0.2 s, with `opts` added.
fn mount_with_small_replica(size: &str, opts: &[&str]) -> (Tmpfs, Mount) {
    let tmp = Tmpfs::new(size);
    let mut b = Mount::builder()
        .fresh(1)
        .replica(tmp.path())
        .option("probe_interval=0.2");
    for o in opts {
        b = b.option(o);
    }
    (tmp, b.mount())
}

/// Mounts the replicas of `root` again, with the same state directory.
fn remount(root: TestRoot, replicas: &[&Path], opts: &[&str]) -> Mount {
    let mut b = Mount::builder().root(root);
    for r in replicas {
        b = b.replica(*r);
    }
    for o in opts {
        b = b.option(o);
    }
    b.mount()
}

#[test]
fn failed_replica_stays_failed_across_remount() {
    let (tmp, m) = mount_with_small_replica("4m", &[]);
    let r0 = m.replicas[0].clone();
    for i in 0..4 {
        write_file(&m.path(format!("f{i}")), &pattern(i, 2 << 20));
    }
    assert!(
        m.wait_for_log("failed", Duration::from_secs(10)),
        "the full replica was not failed:\n{}",
        m.log()
    );
    let (status, root) = m.unmount();
    assert!(status.success());
    // The failed replica still holds a stale f0 (or none); corrupt what it
    // has so a read from it would show.
    let stale = tmp.path().join("f0");
    if stale.exists() {
        write_file(&stale, b"stale bytes from the failed replica");
    }
    let m = remount(root, &[&r0, tmp.path()], &["probe_interval=0.2"]);
    for _ in 0..5 {
        let got = fs::read(m.path("f0")).unwrap();
        assert!(
            got == pattern(0, 2 << 20),
            "read served by the failed replica after a remount"
        );
    }
    assert!(
        !tmp.path().join("f3").exists(),
        "the failed replica was written to after the remount"
    );
}

#[test]
fn replica_without_marker_is_refused_and_never_written() {
    let m = Mount::new(2);
    write_file(&m.path("before"), b"written while both replicas were there");
    let replicas = m.replicas.clone();
    let (_, root) = m.unmount();
    // What an NFS mount that did not come up looks like: an empty directory.
    fs::remove_dir_all(&replicas[1]).unwrap();
    fs::create_dir(&replicas[1]).unwrap();
    let m = remount(root, &[&replicas[0], &replicas[1]], &[]);
    assert!(
        m.wait_for_log("refused", Duration::from_secs(5)),
        "a replica without its marker was not refused:\n{}",
        m.log()
    );
    write_file(&m.path("after"), b"x");
    assert_eq!(
        fs::read(m.path("before")).unwrap(),
        b"written while both replicas were there"
    );
    let names: Vec<_> = fs::read_dir(&replicas[1]).unwrap().collect();
    assert!(
        names.is_empty(),
        "the refused replica was written: {names:?}"
    );
}

#[test]
fn foreign_replica_is_refused() {
    let other = Mount::new(1);
    let foreign = other.replicas[0].clone();
    let (_, other_root) = other.unmount();
    let m = Mount::new(2);
    let replicas = m.replicas.clone();
    let (_, root) = m.unmount();
    // Swap in a directory that belongs to another chironfs.
    fs::remove_dir_all(&replicas[1]).unwrap();
    fs::rename(&foreign, &replicas[1]).unwrap();
    let m = remount(root, &[&replicas[0], &replicas[1]], &[]);
    assert!(
        m.wait_for_log(
            "not one of this filesystem's replicas",
            Duration::from_secs(5)
        ),
        "a foreign replica was accepted:\n{}",
        m.log()
    );
    write_file(&m.path("new"), b"y");
    assert!(
        !replicas[1].join("new").exists(),
        "the foreign replica was written"
    );
    drop(other_root);
}

#[test]
fn full_replica_is_resynced_when_it_has_room_again() {
    let (tmp, m) = mount_with_small_replica("4m", &[]);
    fs::create_dir(m.path("dir")).unwrap();
    write_file(&m.path("dir/keep"), b"kept");
    write_file(&m.path("dir/gone"), b"deleted while the replica was away");
    for i in 0..4 {
        write_file(&m.path(format!("big{i}")), &pattern(i, 2 << 20));
    }
    assert!(
        m.wait_for_log("failed", Duration::from_secs(10)),
        "{}",
        m.log()
    );
    // Everything kinds of change while the replica is out.
    fs::remove_file(m.path("dir/gone")).unwrap();
    fs::rename(m.path("dir/keep"), m.path("dir/renamed")).unwrap();
    fs::create_dir_all(m.path("new/deeper")).unwrap();
    write_file(&m.path("new/deeper/file"), &pattern(9, 100_000));
    std::os::unix::fs::symlink("../dir/renamed", m.path("new/link")).unwrap();
    fs::hard_link(m.path("new/deeper/file"), m.path("new/hard")).unwrap();
    fs::set_permissions(m.path("big1"), fs::Permissions::from_mode(0o600)).unwrap();
    common::sys::setxattr(&m.path("big2"), "user.note", b"while away", 0).unwrap();
    fs::remove_file(m.path("big3")).unwrap();
    // Room again: the probe brings it back and the resync fills it.
    tmp.resize("64m");
    assert!(
        m.wait_for_log("in sync again", RESYNC_WAIT),
        "the replica was not resynced:\n{}",
        m.log()
    );
    m.assert_replicas_identical();
    // And it serves reads again: both replicas are used by round-robin opens.
    assert_eq!(fs::read(m.path("big0")).unwrap(), pattern(0, 2 << 20));
}

#[test]
fn writes_during_a_resync_are_not_lost() {
    let (tmp, m) = mount_with_small_replica("4m", &["resync_bandwidth=8"]);
    for i in 0..6 {
        write_file(&m.path(format!("f{i}")), &pattern(i, 1 << 20));
    }
    assert!(
        m.wait_for_log("failed", Duration::from_secs(10)),
        "{}",
        m.log()
    );
    for i in 6..30 {
        write_file(&m.path(format!("f{i}")), &pattern(i, 1 << 20));
    }
    tmp.resize("128m");
    assert!(
        m.wait_for_log("is back", Duration::from_secs(10)),
        "{}",
        m.log()
    );
    // Keep rewriting files while the (throttled) resync runs.
    let start = Instant::now();
    let mut round = 100;
    while start.elapsed() < Duration::from_secs(3) {
        for i in (0..30).step_by(3) {
            write_file(&m.path(format!("f{i}")), &pattern(round + i, 1 << 20));
        }
        round += 100;
    }
    let last = round - 100;
    assert!(m.wait_for_log("in sync again", RESYNC_WAIT), "{}", m.log());
    m.assert_replicas_identical();
    for i in (0..30).step_by(3) {
        assert!(
            fs::read(m.path(format!("f{i}"))).unwrap() == pattern(last + i, 1 << 20),
            "f{i}: the last write was lost"
        );
    }
}

#[test]
fn kill_9_then_remount_heals_and_keeps_fsynced_data() {
    for round in 0..3u64 {
        let m = Mount::builder().fresh(2).mount();
        let replicas = m.replicas.clone();
        let mnt = m.mountpoint.clone();
        // A writer that fsyncs every other file; it runs until the daemon dies.
        let writer = std::thread::spawn(move || {
            let mut synced = Vec::new();
            for i in 0..10_000u64 {
                let p = mnt.join(format!("w{i}"));
                let data = pattern(round * 100_000 + i, 64 * 1024 + (i as usize % 7) * 4096);
                let Ok(mut f) = fs::File::create(&p) else {
                    break;
                };
                if f.write_all(&data).is_err() {
                    break;
                }
                if i % 2 == 0 {
                    if f.sync_all().is_err() {
                        break;
                    }
                    synced.push((i, data));
                }
            }
            synced
        });
        // A pseudo-random kill point between 50 and 450 ms.
        std::thread::sleep(Duration::from_millis(50 + (round * 137 + 91) % 400));
        let root = m.crash();
        let synced = writer.join().unwrap();
        let m = remount(root, &[&replicas[0], &replicas[1]], &["probe_interval=0.2"]);
        if m.log().contains("healing") {
            assert!(
                m.wait_for_log("in sync again", RESYNC_WAIT),
                "round {round}: replicas not healed after the crash:\n{}",
                m.log()
            );
        }
        m.assert_replicas_identical();
        for (i, data) in &synced {
            let got = fs::read(m.path(format!("w{i}")))
                .unwrap_or_else(|e| panic!("round {round}: fsynced w{i} lost: {e}"));
            assert!(&got == data, "round {round}: fsynced w{i} differs");
        }
        let (_, _root) = m.unmount();
    }
}

#[test]
fn added_empty_replica_is_filled_by_a_full_resync() {
    let m = Mount::builder().fresh(2).mount();
    fs::create_dir_all(m.path("a/b")).unwrap();
    write_file(&m.path("a/b/f"), &pattern(1, 300_000));
    std::os::unix::fs::symlink("b/f", m.path("a/l")).unwrap();
    fs::hard_link(m.path("a/b/f"), m.path("a/h")).unwrap();
    let replicas = m.replicas.clone();
    let (_, root) = m.unmount();
    let third = root.mkdir("r-new");
    // Without add_replica an empty directory is refused...
    let m = remount(root, &[&replicas[0], &replicas[1], &third], &[]);
    assert!(
        m.wait_for_log("refused", Duration::from_secs(5)),
        "{}",
        m.log()
    );
    let (_, root) = m.unmount();
    assert!(
        fs::read_dir(&third).unwrap().next().is_none(),
        "refused replica was written"
    );
    // ...and with it, it is given an identity and filled while mounted.
    let add = format!("add_replica={}", third.display());
    let m = remount(
        root,
        &[&replicas[0], &replicas[1], &third],
        &[&add, "probe_interval=0.2"],
    );
    write_file(&m.path("written-while-filling"), b"new");
    assert!(m.wait_for_log("in sync again", RESYNC_WAIT), "{}", m.log());
    m.assert_replicas_identical();
}

#[test]
fn replica_whose_mount_vanishes_and_comes_back_is_resynced() {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let root = TestRoot::new();
    let store = root.mkdir("store");
    let point = root.mkdir("point");
    mount(
        Some(&store),
        &point,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    struct Unbind(std::path::PathBuf);
    impl Drop for Unbind {
        fn drop(&mut self) {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
    let _unbind = Unbind(point.clone());
    let m = Mount::builder()
        .fresh(1)
        .replica(&point)
        .option("probe_interval=0.2")
        .mount();
    write_file(&m.path("before"), b"both");
    // The mount under the replica path goes away (an NFS server restart).
    umount2(&point, MntFlags::MNT_DETACH).unwrap();
    write_file(&m.path("during"), &pattern(5, 200_000));
    fs::remove_file(m.path("before")).unwrap();
    // The daemon keeps using the replica through its root fd (the data goes
    // where the replica really is) or fails it; either way it never writes
    // into what the path now shows.
    assert!(
        fs::read_dir(&point).unwrap().next().is_none(),
        "the daemon wrote into the directory under the vanished mount"
    );
    // It comes back.
    mount(
        Some(&store),
        &point,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    if m.log().contains("failed") {
        assert!(m.wait_for_log("in sync again", RESYNC_WAIT), "{}", m.log());
    }
    m.assert_replicas_identical();
}

fn fsx_binary() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("FSX") {
        return p.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let cargo = Path::new(&home).join(".cargo/bin/fsx");
    if cargo.exists() {
        return cargo;
    }
    "fsx".into()
}

#[test]
fn fsx_during_a_resync_is_a_ok_and_replicas_end_identical() {
    let (tmp, m) = mount_with_small_replica("8m", &["resync_bandwidth=10"]);
    for i in 0..6 {
        write_file(&m.path(format!("pre{i}")), &pattern(i, 2 << 20));
    }
    assert!(
        m.wait_for_log("failed", Duration::from_secs(10)),
        "{}",
        m.log()
    );
    // Enough missed data that the throttled resync outlasts fsx's start.
    for i in 0..20 {
        write_file(&m.path(format!("missed{i}")), &pattern(100 + i, 2 << 20));
    }
    write_file(&m.path("fsxfile"), &pattern(7, 1 << 20));
    tmp.resize("256m");
    assert!(
        m.wait_for_log("is back", Duration::from_secs(10)),
        "{}",
        m.log()
    );
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fsx.toml");
    let artifacts = m.root().join("fsx-artifacts");
    fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new(fsx_binary())
        .arg("-N")
        .arg("20000")
        .arg("-S")
        .arg("4242")
        .arg("-f")
        .arg(&config)
        .arg("-P")
        .arg(&artifacts)
        .arg(m.path("fsxfile"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run fsx ({e}); run scripts/setup"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("All operations completed A-OK!"),
        "fsx during a resync failed: {}\n{}\n{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(m.wait_for_log("in sync again", RESYNC_WAIT), "{}", m.log());
    m.assert_replicas_identical();
}

#[test]
fn reads_during_a_resync_never_come_from_the_replica_behind() {
    let (tmp, m) =
        mount_with_small_replica("6m", &["resync_bandwidth=4", "read_policy=round-robin"]);
    // Old versions land on both replicas...
    for i in 0..8 {
        write_file(&m.path(format!("f{i}")), &pattern(i, 512 * 1024));
    }
    // ...then a big file fills the small one, which is failed...
    let _ = fs::write(m.path("filler"), pattern(99, 8 << 20));
    assert!(
        m.wait_for_log("failed", Duration::from_secs(10)),
        "{}",
        m.log()
    );
    // ...and every file gets a new version it misses.
    for i in 0..8 {
        write_file(&m.path(format!("f{i}")), &pattern(1000 + i, 512 * 1024));
    }
    tmp.resize("256m");
    assert!(
        m.wait_for_log("is back", Duration::from_secs(10)),
        "{}",
        m.log()
    );
    // While the (throttled) resync runs, round-robin opens must still only
    // ever see the new versions, every byte of them.
    let mut rounds = 0;
    while !m.log().contains("in sync again") && rounds < 200 {
        for i in 0..8 {
            let got = fs::read(m.path(format!("f{i}"))).unwrap();
            assert!(
                got == pattern(1000 + i, 512 * 1024),
                "f{i}: a read during the resync returned an old version"
            );
        }
        rounds += 1;
    }
    assert!(
        rounds > 0,
        "the resync ended before any read ran (test too fast)"
    );
    assert!(m.wait_for_log("in sync again", RESYNC_WAIT), "{}", m.log());
    m.assert_replicas_identical();
}

/// After the machine went down (a new boot id and a session never closed)
/// the marks cannot vouch for the replicas: every replica but the first is
/// compared with it before it serves reads.
#[test]
fn unclean_machine_shutdown_triggers_a_verification_pass() {
    let root = TestRoot::new();
    let boot = root.path().join("boot_id");
    fs::write(&boot, "boot-A\n").unwrap();
    let m = Mount::builder()
        .root(root)
        .fresh(2)
        .env("CHIRONFS_BOOT_ID_FILE", &boot)
        .mount();
    for i in 0..10 {
        write_file(&m.path(format!("f{i}")), &pattern(i, 20_000));
    }
    let replicas = m.replicas.clone();
    let root = m.crash();
    // What a machine crash can leave: a replica whose last writes never
    // reached its disk (here: one file gone, one with older content).
    fs::remove_file(replicas[1].join("f3")).unwrap();
    fs::write(replicas[1].join("f4"), b"short, old").unwrap();
    fs::write(&boot, "boot-B\n").unwrap();
    let m = Mount::builder()
        .root(root)
        .replica(&replicas[0])
        .replica(&replicas[1])
        .option("probe_interval=0.2")
        .env("CHIRONFS_BOOT_ID_FILE", &boot)
        .mount();
    assert!(
        m.wait_for_log("full compare", Duration::from_secs(20)),
        "{}",
        m.log()
    );
    assert!(m.wait_for_log("in sync again", RESYNC_WAIT), "{}", m.log());
    m.assert_replicas_identical();
    assert_eq!(fs::read(m.path("f4")).unwrap(), pattern(4, 20_000));
}

/// The fault-matrix case "a remount with a replica missing its marker" ends
/// like the others: once the real replica is back, it is resynced identical.
#[test]
fn replica_missing_its_marker_is_resynced_once_it_is_back() {
    let m = Mount::new(2);
    write_file(&m.path("before"), b"both");
    let replicas = m.replicas.clone();
    let (_, root) = m.unmount();
    // The real directory goes missing (an NFS mount that did not come up).
    let real = replicas[1].with_extension("real");
    fs::rename(&replicas[1], &real).unwrap();
    fs::create_dir(&replicas[1]).unwrap();
    let m = remount(root, &[&replicas[0], &replicas[1]], &["probe_interval=0.2"]);
    assert!(
        m.wait_for_log("refused", Duration::from_secs(5)),
        "{}",
        m.log()
    );
    write_file(&m.path("while-away"), &pattern(8, 100_000));
    fs::remove_file(m.path("before")).unwrap();
    // It comes back (the mount appears where the empty directory was).
    fs::remove_dir(&replicas[1]).unwrap();
    fs::rename(&real, &replicas[1]).unwrap();
    assert!(m.wait_for_log("in sync again", RESYNC_WAIT), "{}", m.log());
    m.assert_replicas_identical();
}
