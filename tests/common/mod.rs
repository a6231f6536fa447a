//! Shared helpers for the integration tests that mount real FUSE.
//!
//! Guards against: tests that leave a mount behind (or hang the whole run) when
//! the daemon misbehaves, and replica comparisons that miss a divergence.
//!
//! API (keep it small):
//! - [`TestRoot`]: a fresh temporary directory (mode 0755, so other users can
//!   reach mountpoints below it), removed on drop unless something is still
//!   mounted below it.
//! - [`Mount`] / [`MountBuilder`]: spawn `chironfs -f` on fresh or given
//!   replica directories, wait until `fuse.chironfs` shows in mountinfo, and on
//!   drop always unmount (`umount`, then lazy) and kill/reap the daemon, even
//!   when the test panics. A watchdog lazily unmounts and kills the daemon
//!   after a generous limit so a hung filesystem fails the test instead of
//!   hanging it. The daemon's stderr goes to a log file ([`Mount::log`]),
//!   printed when the test panics.
//! - [`Tmpfs`]: a size-limited tmpfs (for ENOSPC tests), unmounted on drop.
//! - [`assert_replicas_identical`]: compares replica trees (skipping
//!   `.chironfs` at each root) path by path and panics with every difference.
//! - Small utilities: [`run_chironfs`] (run the binary to completion, with a
//!   timeout), [`mount_fstype`], [`ensure_unmounted`], [`run_as`].
//!
//! Notes for users of this module:
//! - Tests run in parallel threads: everything lives under a unique
//!   [`TestRoot`]; nothing depends on the current directory.
//! - The daemon gets SIGTERM if the thread that spawned it dies (PDEATHSIG), so
//!   a killed test run does not leave live daemons behind: create and drop a
//!   `Mount` on the same thread.
#![allow(dead_code)]

pub mod faultfs;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};

/// The daemon under test.
pub const CHIRONFS: &str = env!("CARGO_BIN_EXE_chironfs");

/// Name of the per-replica internal directory (never visible through the mount).
pub const INTERNAL_DIR: &str = ".chironfs";

/// How long a mount may take to appear in mountinfo.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default watchdog limit for one `Mount`; override per mount with
/// [`MountBuilder::watchdog`] or globally with `CHIRONFS_TEST_WATCHDOG_SECS`.
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(900);

// ---------------------------------------------------------------------------
// Test root
// ---------------------------------------------------------------------------

/// A unique temporary directory for one test, mode 0755.
///
/// On drop it is removed, unless a mount is still present below it (then it is
/// leaked and reported, never recursed into).
pub struct TestRoot {
    dir: Option<tempfile::TempDir>,
}

impl TestRoot {
    pub fn new() -> TestRoot {
        let dir = tempfile::Builder::new()
            .prefix("chironfs-test-")
            .tempdir()
            .expect("create test root");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod test root");
        TestRoot { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// Creates (mode 0755) and returns `root/name`.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.path().join(name);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }
}

impl Default for TestRoot {
    fn default() -> Self {
        TestRoot::new()
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let dir = self.dir.take().unwrap();
        let busy = mounts_below(dir.path());
        if busy.is_empty() {
            drop(dir);
        } else {
            let kept = dir.keep();
            eprintln!(
                "TestRoot: mounts still present below {}: {:?}; leaving it in place",
                kept.display(),
                busy
            );
        }
    }
}

// ---------------------------------------------------------------------------
// mountinfo
// ---------------------------------------------------------------------------

/// One line of /proc/self/mountinfo (the fields tests care about).
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

fn unescape_mountinfo(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &s[i + 1..i + 4];
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsStr::from_bytes(&out).to_owned()
}

/// All mounts of this mount namespace.
pub fn mountinfo() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let mut v = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        v.push(MountInfo {
            mount_point: PathBuf::from(unescape_mountinfo(pre[4])),
            fstype: post[0].to_string(),
            source: unescape_mountinfo(post[1]).to_string_lossy().into_owned(),
            options: post[2].to_string(),
        });
    }
    v
}

fn canonical(p: &Path) -> PathBuf {
    // Only canonicalize the parent: the mountpoint itself may be a dead FUSE
    // mount (ENOTCONN), which canonicalize() would fail on.
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => fs::canonicalize(parent)
            .map(|c| c.join(name))
            .unwrap_or_else(|_| p.to_path_buf()),
        _ => p.to_path_buf(),
    }
}

/// The topmost mount at `path`, if any.
pub fn mount_at(path: &Path) -> Option<MountInfo> {
    let p = canonical(path);
    mountinfo().into_iter().rev().find(|m| m.mount_point == p)
}

/// fstype of the topmost mount at `path` (e.g. `fuse.chironfs`), if any.
pub fn mount_fstype(path: &Path) -> Option<String> {
    mount_at(path).map(|m| m.fstype)
}

fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let d = canonical(dir);
    mountinfo()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(&d))
        .collect()
}

/// Unmounts everything mounted at `path` (plain umount, then lazy); returns
/// true if something had been mounted there.
pub fn ensure_unmounted(path: &Path) -> bool {
    let mut had = false;
    for _ in 0..20 {
        if mount_at(path).is_none() {
            return had;
        }
        had = true;
        let mut ok = false;
        for _ in 0..10 {
            if nix::mount::umount2(path, MntFlags::empty()).is_ok() {
                ok = true;
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        if !ok {
            let _ = nix::mount::umount2(path, MntFlags::MNT_DETACH);
        }
    }
    had
}

// ---------------------------------------------------------------------------
// Running the binary to completion
// ---------------------------------------------------------------------------

/// Runs `chironfs ARGS...` to completion (killed after `timeout`), capturing
/// stdout and stderr. Use for startup tests (no `-f`).
pub fn run_chironfs<I, S>(args: I, timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(CHIRONFS);
    cmd.args(args);
    run_with_timeout(cmd, timeout)
}

/// Marker appended to the captured stderr by [`run_with_timeout`] when a
/// descendant (e.g. a daemon that did not detach its stdio) keeps the output
/// pipes open after the command exited.
pub const PIPES_HELD_OPEN: &str = "[run_with_timeout: output pipes still held open]";

/// Runs `cmd` to completion with stdout/stderr captured, killing it after
/// `timeout` (the output then holds what it printed so far and a failed
/// status). Never waits more than 5 s past the command's exit for its output
/// pipes to close (see [`PIPES_HELD_OPEN`]).
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        rx
    };
    let out_rx = drain(Box::new(child.stdout.take().unwrap()));
    let err_rx = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            eprintln!("run_with_timeout: killing {cmd:?} after {timeout:?}");
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let pipes_deadline = Instant::now() + Duration::from_secs(5);
    let mut held = false;
    let mut collect = |rx: mpsc::Receiver<Vec<u8>>| {
        let mut v = Vec::new();
        loop {
            let left = pipes_deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => v.extend_from_slice(&chunk),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    held = true;
                    break;
                }
            }
        }
        v
    };
    let stdout = collect(out_rx);
    let mut stderr = collect(err_rx);
    if held {
        stderr.extend_from_slice(PIPES_HELD_OPEN.as_bytes());
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs `program args...` as `uid`/`gid` (no supplementary groups) via
/// setpriv, with a timeout of 120 s.
pub fn run_as(uid: u32, gid: u32, program: &str, args: &[&OsStr]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program)
        .args(args)
        .current_dir("/");
    run_with_timeout(cmd, Duration::from_secs(120))
}

// ---------------------------------------------------------------------------
// Mount
// ---------------------------------------------------------------------------

enum ReplicaSpec {
    Fresh,
    Given(PathBuf),
}

/// Builds a [`Mount`]. Replicas are passed as `r0=r1=...` in the order added.
pub struct MountBuilder {
    /// A command the daemon runs under (e.g. `nsenter --net=...`).
    prefix: Vec<OsString>,
    replicas: Vec<(ReplicaSpec, bool)>,
    options: Vec<String>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    watchdog: Duration,
    root: Option<TestRoot>,
}

impl MountBuilder {
    /// Adds `n` fresh replica directories `root/r<i>`.
    pub fn fresh(mut self, n: usize) -> Self {
        for _ in 0..n {
            self.replicas.push((ReplicaSpec::Fresh, false));
        }
        self
    }

    /// Adds an existing directory as a replica (not removed on drop).
    pub fn replica(mut self, path: impl Into<PathBuf>) -> Self {
        self.replicas.push((ReplicaSpec::Given(path.into()), false));
        self
    }

    /// Marks replica `index` (in order added) low priority (`:` prefix).
    pub fn low_priority(mut self, index: usize) -> Self {
        self.replicas[index].1 = true;
        self
    }

    /// Adds `-o opt` (e.g. `"allow_other"`, `"write_quorum=all"`).
    pub fn option(mut self, opt: &str) -> Self {
        self.options.push(opt.to_string());
        self
    }

    /// Adds a raw argument before the replica spec (e.g. `--config`, path).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Runs the daemon under `prefix` (a command that execs the rest of
    /// its arguments, such as `nsenter --net=/run/netns/x`).
    pub fn under(mut self, prefix: &[&str]) -> Self {
        self.prefix = prefix.iter().map(OsString::from).collect();
        self
    }

    /// An environment variable for the daemon.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Watchdog limit: after it, the mount is lazily unmounted and the daemon
    /// killed (blocked syscalls then fail with ENOTCONN).
    pub fn watchdog(mut self, limit: Duration) -> Self {
        self.watchdog = limit;
        self
    }

    /// Uses `root` (instead of a fresh one) for replicas, mountpoint and log.
    pub fn root(mut self, root: TestRoot) -> Self {
        self.root = Some(root);
        self
    }

    /// Spawns the daemon and waits for the mount; panics (with the daemon's
    /// log) if it exits early or does not mount within [`MOUNT_TIMEOUT`].
    pub fn mount(self) -> Mount {
        match self.try_mount() {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`MountBuilder::mount`] but returns the failure (with the log).
    pub fn try_mount(self) -> Result<Mount, String> {
        let root = self.root.unwrap_or_default();
        let mut replicas = Vec::new();
        let mut spec = OsString::new();
        for (i, (r, low)) in self.replicas.iter().enumerate() {
            let path = match r {
                ReplicaSpec::Fresh => root.mkdir(&format!("r{i}")),
                ReplicaSpec::Given(p) => p.clone(),
            };
            if i > 0 {
                spec.push("=");
            }
            if *low {
                spec.push(":");
            }
            spec.push(&path);
            replicas.push(path);
        }
        let mountpoint = root.mkdir("mnt");
        let log_path = root.path().join("daemon.log");
        let log = File::create(&log_path).expect("create daemon log");

        let mut cmd = match self.prefix.split_first() {
            None => Command::new(CHIRONFS),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(CHIRONFS);
                c
            }
        };
        cmd.arg("-f");
        // Each mount keeps its metadata store inside its own test root,
        // unless the test names one.
        if !self.options.iter().any(|o| o.contains("state_dir=")) {
            cmd.arg("-o")
                .arg(format!("state_dir={}", root.path().join("state").display()));
        }
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        cmd.args(&self.args);
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd.arg(&spec).arg(&mountpoint);
        cmd.current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // Safe because prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches
        // no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let command_line = format!("{cmd:?}");
        let mut child = cmd.spawn().map_err(|e| format!("spawn {CHIRONFS}: {e}"))?;

        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if mount_fstype(&mountpoint).as_deref() == Some("fuse.chironfs") {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let _ = ensure_unmounted(&mountpoint);
                return Err(format!(
                    "chironfs exited early ({status}) before mounting\ncommand: {command_line}\n--- log ---\n{}",
                    read_lossy(&log_path)
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = ensure_unmounted(&mountpoint);
                return Err(format!(
                    "chironfs did not mount {} within {MOUNT_TIMEOUT:?} (mountinfo: {:?})\ncommand: {command_line}\n--- log ---\n{}",
                    mountpoint.display(),
                    mount_at(&mountpoint),
                    read_lossy(&log_path)
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }

        let watchdog =
            Watchdog::start(self.watchdog, mountpoint.clone(), child.id() as libc::pid_t);
        Ok(Mount {
            mountpoint,
            replicas,
            log_path,
            child: Some(child),
            watchdog: Some(watchdog),
            root: Some(root),
        })
    }
}

struct Watchdog {
    cancel: mpsc::Sender<()>,
    handle: JoinHandle<()>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(limit: Duration, mountpoint: PathBuf, pid: libc::pid_t) -> Watchdog {
        let (cancel, rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let fired2 = fired.clone();
        let handle = thread::spawn(move || {
            if rx.recv_timeout(limit) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            fired2.store(true, Ordering::SeqCst);
            eprintln!(
                "WATCHDOG: mount {} still up after {limit:?}: lazily unmounting and killing chironfs (pid {pid})",
                mountpoint.display()
            );
            let _ = nix::mount::umount2(&mountpoint, MntFlags::MNT_DETACH);
            // Safe because the Mount owning this child does not reap it before
            // it has joined this thread, so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        Watchdog {
            cancel,
            handle,
            fired,
        }
    }

    /// Stops the watchdog; returns true if it had fired.
    fn stop(self) -> bool {
        let _ = self.cancel.send(());
        let _ = self.handle.join();
        self.fired.load(Ordering::SeqCst)
    }
}

/// A live chironfs mount. Dropping it always unmounts and reaps the daemon.
pub struct Mount {
    /// The FUSE mountpoint.
    pub mountpoint: PathBuf,
    /// Replica directories, in command-line order.
    pub replicas: Vec<PathBuf>,
    log_path: PathBuf,
    child: Option<Child>,
    watchdog: Option<Watchdog>,
    root: Option<TestRoot>,
}

impl Mount {
    /// Starts a builder; add replicas with `fresh`/`replica`.
    pub fn builder() -> MountBuilder {
        let watchdog = std::env::var("CHIRONFS_TEST_WATCHDOG_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_WATCHDOG);
        MountBuilder {
            prefix: Vec::new(),
            replicas: Vec::new(),
            options: Vec::new(),
            args: Vec::new(),
            envs: Vec::new(),
            watchdog,
            root: None,
        }
    }

    /// `n` fresh replicas, no options.
    pub fn new(n: usize) -> Mount {
        Mount::builder().fresh(n).mount()
    }

    /// `mountpoint/rel`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// `replicas[i]/rel`.
    pub fn replica_path(&self, i: usize, rel: impl AsRef<Path>) -> PathBuf {
        self.replicas[i].join(rel)
    }

    /// The test root holding replicas (if fresh), mountpoint and log.
    pub fn root(&self) -> &Path {
        self.root.as_ref().unwrap().path()
    }

    /// The daemon's stderr/stdout so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Polls the log until it contains `needle` (true) or `timeout` passes.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the daemon with SIGKILL (a crash), clears the dead mount and
    /// returns the test root, to mount the same replicas and state again.
    pub fn crash(mut self) -> TestRoot {
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        let mut child = self.child.take().expect("daemon child");
        let _ = child.kill();
        let _ = child.wait();
        ensure_unmounted(&self.mountpoint);
        self.root.take().expect("test root")
    }

    /// Is the daemon process still running? (Without needing `&mut`.)
    pub fn daemon_alive_check(&self) -> bool {
        self.child
            .as_ref()
            .is_some_and(|c| std::path::Path::new(&format!("/proc/{}", c.id())).exists())
            && mount_fstype(&self.mountpoint).is_some()
    }

    /// Is the daemon process still running?
    pub fn daemon_alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Compares all replicas of this mount (see [`assert_replicas_identical`]).
    pub fn assert_replicas_identical(&self) {
        assert_replicas_identical(&self.replicas);
    }

    /// Unmounts with `umount` and waits (up to 30 s) for the daemon to exit on
    /// its own; returns its exit status and the mount's test root (still
    /// holding fresh replicas and the log: drop it to remove them, or keep it
    /// to mount the same replicas again). Panics if the daemon has to be
    /// killed or if the watchdog fired.
    pub fn unmount(mut self) -> (ExitStatus, TestRoot) {
        let fired = self.watchdog.take().map(Watchdog::stop).unwrap_or(false);
        assert!(!fired, "watchdog fired for {}", self.mountpoint.display());
        ensure_unmounted(&self.mountpoint);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return (status, self.root.take().unwrap());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chironfs did not exit within 30 s after umount\n--- log ---\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let fired = self.watchdog.take().map(Watchdog::stop).unwrap_or(false);
        if self.child.is_none() {
            return; // unmount() already did the work
        }
        ensure_unmounted(&self.mountpoint);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let exited = loop {
            match child.try_wait() {
                Ok(Some(_)) => break true,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => break false,
            }
        };
        if !exited {
            let _ = child.kill();
        }
        let _ = child.wait();
        if thread::panicking() || fired {
            eprintln!(
                "--- chironfs log ({}) ---\n{}--- end of log ---",
                self.mountpoint.display(),
                tail(&self.log(), 64 * 1024)
            );
        }
        if fired && !thread::panicking() {
            panic!(
                "watchdog fired: mount {} was still busy after its time limit",
                self.mountpoint.display()
            );
        }
    }
}

pub fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

// ---------------------------------------------------------------------------
// tmpfs
// ---------------------------------------------------------------------------

/// A size-limited tmpfs on a fresh directory; unmounted (lazily if busy) and
/// removed on drop.
pub struct Tmpfs {
    path: PathBuf,
    _root: TestRoot,
}

impl Tmpfs {
    /// `size` as tmpfs understands it: `"8m"`, `"512k"`, ...
    pub fn new(size: &str) -> Tmpfs {
        let root = TestRoot::new();
        let path = root.mkdir("tmpfs");
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0755").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", path.display()));
        Tmpfs { path, _root: root }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes the size limit (a full disk that got room again).
    pub fn resize(&self, size: &str) {
        nix::mount::mount(
            None::<&str>,
            &self.path,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={size}").as_str()),
        )
        .unwrap_or_else(|e| panic!("remount tmpfs {}: {e}", self.path.display()));
    }

    /// Lazily unmounts now (simulates a replica vanishing).
    pub fn lazy_unmount(&self) {
        nix::mount::umount2(&self.path, MntFlags::MNT_DETACH)
            .unwrap_or_else(|e| panic!("umount -l {}: {e}", self.path.display()));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        ensure_unmounted(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Replica comparison
// ---------------------------------------------------------------------------

/// What is compared for one path of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    nlink: u64,
    rdev: u64,
    ino: u64,
    symlink: Option<OsString>,
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

fn kind_of(ft: &fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_file() {
        "regular file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "char device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "unknown"
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// All xattrs of `p` (not following symlinks), names and values.
pub fn list_xattrs(p: &Path) -> io::Result<BTreeMap<OsString, Vec<u8>>> {
    let c = cpath(p);
    let mut out = BTreeMap::new();
    // Safe because a null buffer with size 0 only queries the size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut names = vec![0u8; n as usize + 256];
    // Safe because the buffer is valid for names.len() bytes.
    let n = unsafe {
        libc::llistxattr(
            c.as_ptr(),
            names.as_mut_ptr() as *mut libc::c_char,
            names.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(n as usize);
    for name in names.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let cname = CString::new(name).unwrap();
        let value = get_xattr(p, &cname)?;
        out.insert(OsStr::from_bytes(name).to_owned(), value);
    }
    Ok(out)
}

fn get_xattr(p: &Path, name: &CString) -> io::Result<Vec<u8>> {
    let c = cpath(p);
    loop {
        // Safe because a null buffer with size 0 only queries the size.
        let n = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; n as usize];
        // Safe because the buffer is valid for buf.len() bytes.
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if m < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue; // grew in between
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        return Ok(buf);
    }
}

/// Walks `root` (not following symlinks), skipping `.chironfs` at the root.
/// Keys are paths relative to the root; "" is the root itself.
fn scan(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let md =
            fs::symlink_metadata(&abs).unwrap_or_else(|e| panic!("lstat {}: {e}", abs.display()));
        let ft = md.file_type();
        let symlink = if ft.is_symlink() {
            Some(
                fs::read_link(&abs)
                    .unwrap_or_else(|e| panic!("readlink {}: {e}", abs.display()))
                    .into_os_string(),
            )
        } else {
            None
        };
        let xattrs =
            list_xattrs(&abs).unwrap_or_else(|e| panic!("listxattr {}: {e}", abs.display()));
        out.insert(
            rel.clone(),
            Node {
                kind: kind_of(&ft),
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                size: md.size(),
                mtime: (md.mtime(), md.mtime_nsec()),
                nlink: md.nlink(),
                rdev: md.rdev(),
                ino: md.ino(),
                symlink,
                xattrs,
            },
        );
        if ft.is_dir() {
            let rd =
                fs::read_dir(&abs).unwrap_or_else(|e| panic!("readdir {}: {e}", abs.display()));
            for ent in rd {
                let ent = ent.unwrap_or_else(|e| panic!("readdir {}: {e}", abs.display()));
                let name = ent.file_name();
                if rel.as_os_str().is_empty() && name == INTERNAL_DIR {
                    continue;
                }
                stack.push(rel.join(name));
            }
        }
    }
    out
}

fn show_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().all(|c| !c.is_control() || c == '\n') => format!("{s:?}"),
        _ => {
            let hex: String = b.iter().take(64).map(|x| format!("{x:02x}")).collect();
            if b.len() > 64 {
                format!("0x{hex}... ({} bytes)", b.len())
            } else {
                format!("0x{hex}")
            }
        }
    }
}

/// Returns a description of the first difference between the regular files
/// `a` and `b`, or None if their contents are identical.
fn compare_content(a: &Path, b: &Path) -> Option<String> {
    let open = |p: &Path| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
            .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
    };
    let (mut fa, mut fb) = (open(a), open(b));
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off: u64 = 0;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        let n = na.min(nb);
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            let end = (i + 16).min(n);
            return Some(format!(
                "content differs at offset {}: {} vs {}",
                off + i as u64,
                show_bytes(&ba[i..end]),
                show_bytes(&bb[i..end])
            ));
        }
        if na != nb {
            return Some(format!(
                "content length differs: one ends at offset {}",
                off + n as u64
            ));
        }
        if na == 0 {
            return None;
        }
        off += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

/// The set of paths sharing `rel`'s inode in `tree` (hard-link group).
fn link_groups(tree: &BTreeMap<PathBuf, Node>) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut by_ino: BTreeMap<u64, BTreeSet<PathBuf>> = BTreeMap::new();
    for (p, n) in tree {
        if n.kind != "directory" {
            by_ino.entry(n.ino).or_default().insert(p.clone());
        }
    }
    let mut out = BTreeMap::new();
    for group in by_ino.values() {
        for p in group {
            out.insert(p.clone(), group.clone());
        }
    }
    out
}

/// Compares replica trees path by path and panics listing every difference.
///
/// Compared for every path (`.chironfs` at each root skipped): presence, file
/// type, full st_mode, uid, gid, mtime with nanoseconds, all xattrs (names and
/// values: user.*, trusted.*, security.*, system.posix_acl_*), and for
/// non-directories size and st_nlink; content byte for byte (regular files),
/// symlink targets, st_rdev (device nodes), and the hard-link structure (which
/// paths share an inode). Not compared: atime/ctime (cannot be set), st_blocks,
/// directory sizes (filesystem- and insertion-order-dependent), and the root
/// directory's mtime (the replicas are created outside the mount and the
/// daemon's own `.chironfs` entry changes it).
pub fn assert_replicas_identical<P: AsRef<Path>>(replicas: &[P]) {
    let roots: Vec<&Path> = replicas.iter().map(|p| p.as_ref()).collect();
    assert!(roots.len() >= 2, "need at least two replicas to compare");
    let trees: Vec<BTreeMap<PathBuf, Node>> = roots.iter().map(|r| scan(r)).collect();
    let groups: Vec<_> = trees.iter().map(link_groups).collect();
    let mut diffs: Vec<String> = Vec::new();
    let label = |i: usize| format!("replica {i} ({})", roots[i].display());
    let show_path = |p: &Path| {
        if p.as_os_str().is_empty() {
            "/ (root)".to_string()
        } else {
            format!("/{}", p.display())
        }
    };

    let all_paths: BTreeSet<&PathBuf> = trees.iter().flat_map(|t| t.keys()).collect();
    for rel in all_paths {
        let nodes: Vec<Option<&Node>> = trees.iter().map(|t| t.get(rel)).collect();
        if nodes.iter().any(|n| n.is_none()) {
            let mut s = format!("{}: present only on some replicas:", show_path(rel));
            for (i, n) in nodes.iter().enumerate() {
                let _ = write!(
                    s,
                    " {}={}",
                    label(i),
                    n.map(|n| n.kind).unwrap_or("missing")
                );
            }
            diffs.push(s);
            continue;
        }
        let nodes: Vec<&Node> = nodes.into_iter().map(Option::unwrap).collect();
        let mut attr = |name: &str, f: &dyn Fn(&Node) -> String| {
            let vals: Vec<String> = nodes.iter().map(|n| f(n)).collect();
            if vals.iter().any(|v| *v != vals[0]) {
                let mut s = format!("{}: {name} differs:", show_path(rel));
                for (i, v) in vals.iter().enumerate() {
                    let _ = write!(s, "\n      {}: {v}", label(i));
                }
                diffs.push(s);
            }
        };
        attr("file type", &|n| n.kind.to_string());
        if nodes.iter().any(|n| n.kind != nodes[0].kind) {
            continue;
        }
        let kind = nodes[0].kind;
        attr("mode", &|n| format!("{:o}", n.mode));
        attr("uid", &|n| n.uid.to_string());
        attr("gid", &|n| n.gid.to_string());
        if !rel.as_os_str().is_empty() {
            attr("mtime", &|n| format!("{}.{:09}", n.mtime.0, n.mtime.1));
        }
        if kind != "directory" {
            attr("size", &|n| n.size.to_string());
            attr("nlink", &|n| n.nlink.to_string());
        }
        let names: BTreeSet<&OsString> = nodes.iter().flat_map(|n| n.xattrs.keys()).collect();
        for name in names {
            attr(&format!("xattr {}", name.to_string_lossy()), &|n| {
                n.xattrs
                    .get(name)
                    .map(|v| show_bytes(v))
                    .unwrap_or_else(|| "(absent)".to_string())
            });
        }
        if kind == "symlink" {
            attr("symlink target", &|n| {
                format!("{:?}", n.symlink.as_ref().unwrap())
            });
        }
        if kind == "char device" || kind == "block device" {
            attr("rdev", &|n| {
                format!(
                    "{}:{}",
                    libc::major(n.rdev as libc::dev_t),
                    libc::minor(n.rdev as libc::dev_t)
                )
            });
        }
        if kind != "directory" {
            let gs: Vec<Vec<String>> = groups
                .iter()
                .map(|g| g[rel].iter().map(|p| show_path(p)).collect())
                .collect();
            if gs.iter().any(|g| *g != gs[0]) {
                let mut s = format!(
                    "{}: hard links (paths sharing the inode) differ:",
                    show_path(rel)
                );
                for (i, g) in gs.iter().enumerate() {
                    let _ = write!(s, "\n      {}: {:?}", label(i), g);
                }
                diffs.push(s);
            }
        }
        if kind == "regular file" && nodes.iter().all(|n| n.size == nodes[0].size) {
            for i in 1..roots.len() {
                if let Some(d) = compare_content(&roots[0].join(rel), &roots[i].join(rel)) {
                    diffs.push(format!(
                        "{}: {d} ({} vs {})",
                        show_path(rel),
                        label(0),
                        label(i)
                    ));
                }
            }
        }
    }
    if !diffs.is_empty() {
        let n = diffs.len();
        diffs.truncate(100);
        panic!(
            "replicas differ ({n} differences{}):\n  {}",
            if n > 100 { ", first 100 shown" } else { "" },
            diffs.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------
// Thin syscall wrappers the tests use (paths, not fds; errors as io::Error)
// ---------------------------------------------------------------------------

/// Thin wrappers over syscalls std does not offer.
pub mod sys {
    use super::cpath;
    use std::io;
    use std::path::Path;

    fn check(r: libc::c_int) -> io::Result<()> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The errno of a failed result (None on success).
    pub fn errno<T>(r: &io::Result<T>) -> Option<i32> {
        r.as_ref().err().map(|e| e.raw_os_error().unwrap_or(-1))
    }

    /// lsetxattr(path, name, value, flags).
    pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
        let (c, n) = (cpath(p), std::ffi::CString::new(name).unwrap());
        // Safe because all pointers are valid for the given lengths.
        check(unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr() as *const libc::c_void,
                value.len(),
                flags,
            )
        })
    }

    /// lgetxattr(path, name).
    pub fn getxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
        super::get_xattr(p, &std::ffi::CString::new(name).unwrap())
    }

    /// lremovexattr(path, name).
    pub fn removexattr(p: &Path, name: &str) -> io::Result<()> {
        let (c, n) = (cpath(p), std::ffi::CString::new(name).unwrap());
        // Safe because both strings are NUL-terminated.
        check(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
    }

    /// renameat2(AT_FDCWD, from, AT_FDCWD, to, flags).
    pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
        let (a, b) = (cpath(from), cpath(to));
        // Safe because both strings are NUL-terminated.
        check(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                flags,
            )
        })
    }

    /// utimensat(AT_FDCWD, path, [atime, mtime], flags); use libc::UTIME_NOW /
    /// libc::UTIME_OMIT in tv_nsec.
    pub fn utimensat(p: &Path, atime: (i64, i64), mtime: (i64, i64), flags: i32) -> io::Result<()> {
        let c = cpath(p);
        let ts = [
            libc::timespec {
                tv_sec: atime.0 as libc::time_t,
                tv_nsec: atime.1 as libc::c_long,
            },
            libc::timespec {
                tv_sec: mtime.0 as libc::time_t,
                tv_nsec: mtime.1 as libc::c_long,
            },
        ];
        // Safe because ts holds two timespecs as utimensat requires.
        check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), flags) })
    }

    /// mknod(path, mode (type | permissions), makedev(major, minor)).
    pub fn mknod(p: &Path, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let c = cpath(p);
        // Safe because the path is NUL-terminated.
        check(unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) })
    }

    /// fallocate(fd, mode, offset, len).
    pub fn fallocate(f: &std::fs::File, mode: i32, offset: i64, len: i64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // Safe because the fd is valid for the lifetime of `f`.
        check(unsafe { libc::fallocate(f.as_raw_fd(), mode, offset, len) })
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Panics naming the first differing offset when `got` is not `expected`.
pub fn assert_same(what: &str, got: &[u8], expected: &[u8]) {
    if got != expected {
        let first = got
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        panic!(
            "{what}: got {} bytes, expected {}; first difference at offset {first}",
            got.len(),
            expected.len()
        );
    }
}

/// Drops the cached pages of `f`'s file: its next read comes from the
/// daemon (or its passthrough backing file).
pub fn drop_cached(f: &File) {
    use std::os::fd::AsRawFd;
    // Safe because the fd is valid while `f` lives.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Reads `p` through a fresh open, after dropping its cached pages so the
/// bytes come from the daemon (or its passthrough backing file).
pub fn read_uncached(p: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(p)?;
    drop_cached(&f);
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}
