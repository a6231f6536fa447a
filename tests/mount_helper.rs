//! mount(8) and fstab (issue "Install and mount"): guards against a
//! `mount.chironfs` helper that returns before the mount is live (or 0 when it
//! failed), loses the reason of a failure, passes mount(8)'s `-f` (fake) on as
//! chironfs's foreground flag (mount would then never return), leaves a daemon
//! behind after `umount`, or breaks the fstab forms (`chironfs`,
//! `fuse.chironfs` through mount.fuse3, `config=` sources).
//!
//! mount(8) only looks for helpers in /sbin, and mount.fuse3 finds `chironfs`
//! through /bin/sh's default PATH (mount(8) clears PATH), so the tests put
//! symlinks to the binary under test at `/sbin/mount.chironfs` and
//! `/usr/local/sbin/chironfs` for their duration (removed afterwards, even on
//! panic). A real file already there is left alone: it is used if it points at
//! the binary under test, otherwise the test is skipped with a message. The
//! tests take one lock so they never race on those links.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

static LOCK: Mutex<()> = Mutex::new(());

/// A symlink created for the test, removed on drop (unless it was there
/// before).
struct Link {
    path: PathBuf,
    created: bool,
    /// An installed helper moved aside for the test, put back on drop.
    saved: Option<PathBuf>,
}

impl Link {
    /// Makes `path` a symlink to the binary under test. An installed
    /// symlink (scripts/install) is moved aside and restored afterwards; a
    /// regular file in the way is an error.
    fn to_chironfs(path: &str) -> Result<Link, String> {
        let path = PathBuf::from(path);
        let ours = fs::canonicalize(CHIRONFS).expect("canonicalize the binary");
        let mut saved = None;
        if let Ok(md) = fs::symlink_metadata(&path) {
            if fs::canonicalize(&path).ok().as_deref() == Some(ours.as_path()) {
                return Ok(Link {
                    path,
                    created: false,
                    saved: None,
                });
            }
            if !md.file_type().is_symlink() {
                return Err(format!(
                    "{} exists and is not a symlink; leaving it alone",
                    path.display()
                ));
            }
            let aside = path.with_extension("chironfs-test-saved");
            fs::rename(&path, &aside)
                .map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
            saved = Some(aside);
        }
        symlink(&ours, &path).unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
        Ok(Link {
            path,
            created: true,
            saved,
        })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if self.created {
            let _ = fs::remove_file(&self.path);
        }
        if let Some(aside) = &self.saved {
            let _ = fs::rename(aside, &self.path);
        }
    }
}

/// The helper links plus the lock that serializes the tests.
struct Helpers {
    _links: Vec<Link>,
    _lock: MutexGuard<'static, ()>,
}

/// Installs `/sbin/mount.chironfs` (and, for mount.fuse3, `chironfs` on the
/// default PATH); panics (never skips) if a foreign one is in the way.
fn helpers(for_fuse3: bool) -> Option<Helpers> {
    let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut paths = vec!["/sbin/mount.chironfs"];
    if for_fuse3 {
        if Path::new("/sbin/mount.fuse.chironfs").exists() {
            panic!(
                "/sbin/mount.fuse.chironfs exists: mount would not use mount.fuse3; remove it to run this test"
            );
        }
        paths.push("/usr/local/sbin/chironfs");
    }
    let mut links = Vec::new();
    for p in paths {
        match Link::to_chironfs(p) {
            Ok(l) => links.push(l),
            // Never a silent skip: a foreign helper in the way is a failure
            // that says what to remove (scripts/install --uninstall).
            Err(e) => panic!("{e} (scripts/install --uninstall removes an installed one)"),
        }
    }
    Some(Helpers {
        _links: links,
        _lock: lock,
    })
}

/// PIDs of processes (other than this one) with `mnt` as an argument: the
/// daemon keeps its original command line after forking.
fn daemon_pids(mnt: &Path) -> Vec<i32> {
    let want = [
        mnt.to_string_lossy().into_owned(),
        fs::canonicalize(mnt)
            .unwrap_or_else(|_| mnt.to_path_buf())
            .to_string_lossy()
            .into_owned(),
    ];
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd
            .split(|b| *b == 0)
            .any(|a| want.iter().any(|w| a == w.as_bytes()))
        {
            pids.push(pid);
        }
    }
    pids
}

/// Waits up to `limit` for every daemon serving `mnt` to exit; returns the
/// ones still alive.
fn wait_daemons_gone(mnt: &Path, limit: Duration) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let pids = daemon_pids(mnt);
        if pids.is_empty() || Instant::now() > deadline {
            return pids;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Unmounts `mnt` and ends its daemon on drop, whatever the test did.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        ensure_unmounted(&self.0);
        for pid in wait_daemons_gone(&self.0, Duration::from_secs(10)) {
            eprintln!("killing leftover daemon {pid} for {}", self.0.display());
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// One test's directories: replicas r0 and r1, mountpoint, state dir.
struct Setup {
    root: TestRoot,
    r0: PathBuf,
    r1: PathBuf,
    mnt: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let root = TestRoot::new();
        let (r0, r1, mnt) = (root.mkdir("r0"), root.mkdir("r1"), root.mkdir("mnt"));
        Setup { root, r0, r1, mnt }
    }

    fn src(&self) -> String {
        format!("{}={}", self.r0.display(), self.r1.display())
    }

    fn state_opt(&self) -> String {
        format!("state_dir={}", self.root.path().join("state").display())
    }

    fn mnt(&self) -> String {
        self.mnt.display().to_string()
    }

    fn guard(&self) -> Unmount {
        Unmount(self.mnt.clone())
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir("/");
    run_with_timeout(cmd, RUN_TIMEOUT)
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}\nstatus {:?}\nstdout {:?}\nstderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts `mount ARGS` succeeded, left no pipe open, and the mount is live.
fn assert_mounted(s: &Setup, args: &[&str]) {
    let out = run("mount", args);
    let ctx = describe(&format!("mount {args:?}"), &out);
    assert!(out.status.success(), "{ctx}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(PIPES_HELD_OPEN),
        "the daemon kept mount's output open\n{ctx}"
    );
    // Live when mount returns: no waiting here.
    assert_eq!(
        mount_fstype(&s.mnt).as_deref(),
        Some("fuse.chironfs"),
        "not mounted when mount returned\n{ctx}"
    );
    assert!(
        !daemon_pids(&s.mnt).is_empty(),
        "no daemon process for {}",
        s.mnt.display()
    );
}

/// Writes through the mount, checks both replicas, then `umount` and checks
/// the daemon is gone.
fn use_and_umount(s: &Setup, dir: &str) {
    let data = pattern(7, 100_000);
    let file = Path::new(dir).join("file");
    fs::create_dir(s.mnt.join(dir)).unwrap();
    fs::write(s.mnt.join(&file), &data).unwrap();
    assert_eq!(fs::read(s.mnt.join(&file)).unwrap(), data);
    for r in [&s.r0, &s.r1] {
        assert_eq!(
            fs::read(r.join(&file)).unwrap(),
            data,
            "replica {}",
            r.display()
        );
    }
    assert_replicas_identical(&[&s.r0, &s.r1]);
    let out = run("umount", &[&s.mnt()]);
    assert!(out.status.success(), "{}", describe("umount", &out));
    assert_eq!(mount_fstype(&s.mnt), None, "still mounted after umount");
    let left = wait_daemons_gone(&s.mnt, Duration::from_secs(10));
    assert!(
        left.is_empty(),
        "daemon still running after umount: {left:?}"
    );
}

/// Asserts `mount ARGS` failed with `needle` in stderr and mounted nothing.
fn assert_mount_fails(s: &Setup, args: &[&str], needle: &str) {
    let out = run("mount", args);
    let was_mounted = ensure_unmounted(&s.mnt);
    let ctx = describe(&format!("mount {args:?}"), &out);
    assert!(!out.status.success(), "mount succeeded\n{ctx}");
    assert!(!was_mounted, "failed mount left a mount behind\n{ctx}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(needle),
        "stderr does not say {needle:?}\n{ctx}"
    );
    let left = wait_daemons_gone(&s.mnt, Duration::from_secs(5));
    assert!(
        left.is_empty(),
        "daemon left after a failed mount: {left:?}"
    );
}

fn write_fstab(s: &Setup, line: &str) -> String {
    let p = s.root.path().join("fstab");
    fs::write(&p, format!("# test fstab\n{line}\n")).unwrap();
    p.display().to_string()
}

#[test]
fn mount_t_chironfs_is_live_replicates_and_umount_ends_daemon() {
    let Some(_h) = helpers(false) else { return };
    let s = Setup::new();
    let _g = s.guard();
    let opts = format!("allow_other,{}", s.state_opt());
    assert_mounted(&s, &["-t", "chironfs", &s.src(), &s.mnt(), "-o", &opts]);
    use_and_umount(&s, "dir");
}

#[test]
fn mount_verbose_and_sloppy_flags_are_dropped() {
    // `mount -v` passes -v on; `-s` passes -s; neither may keep mount waiting.
    let Some(_h) = helpers(false) else { return };
    let s = Setup::new();
    let _g = s.guard();
    let opts = s.state_opt();
    assert_mounted(
        &s,
        &[
            "-v",
            "-s",
            "-t",
            "chironfs",
            &s.src(),
            &s.mnt(),
            "-o",
            &opts,
        ],
    );
    use_and_umount(&s, "dir");
}

#[test]
fn fstab_chironfs_line() {
    let Some(_h) = helpers(false) else { return };
    let s = Setup::new();
    let _g = s.guard();
    let fstab = write_fstab(
        &s,
        &format!(
            "{} {} chironfs defaults,allow_other,nofail,_netdev,x-systemd.requires-mounts-for=/,{} 0 0",
            s.src(),
            s.mnt(),
            s.state_opt()
        ),
    );
    assert_mounted(&s, &["-T", &fstab, &s.mnt()]);
    use_and_umount(&s, "dir");
}

#[test]
fn fstab_fuse_chironfs_line_through_mount_fuse3() {
    if !Path::new("/sbin/mount.fuse3").exists() && !Path::new("/sbin/mount.fuse").exists() {
        panic!("no mount.fuse3 (package fuse3): run scripts/setup");
    }
    let Some(_h) = helpers(true) else { return };
    let s = Setup::new();
    let _g = s.guard();
    let fstab = write_fstab(
        &s,
        &format!(
            "{} {} fuse.chironfs defaults,allow_other,nofail,_netdev,{} 0 0",
            s.src(),
            s.mnt(),
            s.state_opt()
        ),
    );
    assert_mounted(&s, &["-T", &fstab, &s.mnt()]);
    use_and_umount(&s, "dir");
}

#[test]
fn mount_t_fuse_with_chironfs_hash_source() {
    // The old FUSE form: `mount -t fuse chironfs#SRC MNT`.
    if !Path::new("/sbin/mount.fuse").exists() {
        panic!("no /sbin/mount.fuse: run scripts/setup");
    }
    let Some(_h) = helpers(true) else { return };
    let s = Setup::new();
    let _g = s.guard();
    let src = format!("chironfs#{}", s.src());
    let opts = s.state_opt();
    assert_mounted(&s, &["-t", "fuse", &src, &s.mnt(), "-o", &opts]);
    use_and_umount(&s, "dir");
}

#[test]
fn config_source() {
    let Some(_h) = helpers(false) else { return };
    let s = Setup::new();
    let _g = s.guard();
    let cfg = s.root.path().join("data.toml");
    fs::write(
        &cfg,
        format!(
            "replicas = [{:?}, {:?}]\nallow_other = true\nstate_dir = {:?}\n",
            s.r0.display().to_string(),
            s.r1.display().to_string(),
            s.root.path().join("state").display().to_string()
        ),
    )
    .unwrap();
    let src = format!("config={}", cfg.display());
    assert_mounted(&s, &["-t", "chironfs", &src, &s.mnt()]);
    use_and_umount(&s, "dir");

    // The same from an fstab line.
    let fstab = write_fstab(&s, &format!("{src} {} chironfs defaults 0 0", s.mnt()));
    assert_mounted(&s, &["-T", &fstab, &s.mnt()]);
    use_and_umount(&s, "dir2");
}

#[test]
fn missing_replica_fails_with_reason() {
    let Some(_h) = helpers(false) else { return };
    let s = Setup::new();
    let _g = s.guard();
    let src = format!(
        "{}={}",
        s.r0.display(),
        s.root.path().join("nope").display()
    );
    let opts = s.state_opt();
    assert_mount_fails(
        &s,
        &["-t", "chironfs", &src, &s.mnt(), "-o", &opts],
        "does not exist",
    );
}

#[test]
fn unknown_option_fails_naming_it() {
    let Some(_h) = helpers(false) else { return };
    let s = Setup::new();
    let _g = s.guard();
    let opts = format!("{},no_such_option=3", s.state_opt());
    assert_mount_fails(
        &s,
        &["-t", "chironfs", &s.src(), &s.mnt(), "-o", &opts],
        "no_such_option",
    );
}

#[test]
fn bad_source_fails_with_reason() {
    let Some(_h) = helpers(false) else { return };
    let s = Setup::new();
    let _g = s.guard();
    let opts = s.state_opt();
    assert_mount_fails(
        &s,
        &["-t", "chironfs", "config=", &s.mnt(), "-o", &opts],
        "bad source",
    );
    let missing = s.root.path().join("missing.toml");
    let src = format!("config={}", missing.display());
    assert_mount_fails(
        &s,
        &["-t", "chironfs", &src, &s.mnt(), "-o", &opts],
        "missing.toml",
    );
}
