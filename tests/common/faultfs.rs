//! faultfs (tests/faultfs): a passthrough FUSE filesystem that hangs or
//! returns EIO on demand, mounted over a directory to make it a replica
//! that fails when a test says so.
//!
//! Needs the faultfs binary next to the daemon (`target/<profile>/examples/
//! faultfs`): plain `cargo test` builds it; with a target filter, build it
//! first with `cargo build --release --example faultfs`.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{CHIRONFS, MOUNT_TIMEOUT, TestRoot, ensure_unmounted, mount_fstype};

/// The faultfs binary, built as an example next to the daemon.
pub fn faultfs_bin() -> PathBuf {
    let dir = Path::new(CHIRONFS)
        .parent()
        .expect("daemon binary directory");
    let bin = dir.join("examples").join("faultfs");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faultfs/faultfs.rs");
    let hint = "build it with `cargo build --release --example faultfs` (plain `cargo test` \
                builds it; a target filter such as `--test hang` does not)";
    let built = fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("faultfs binary {}: {e}; {hint}", bin.display()));
    if let Ok(changed) = fs::metadata(&src).and_then(|m| m.modified()) {
        assert!(
            built >= changed,
            "faultfs binary {} is older than {}; {hint}",
            bin.display(),
            src.display()
        );
    }
    bin
}

/// Mounts the FUSE control filesystem if it is not (it counts a
/// connection's unanswered requests, and can abort one).
fn ensure_fusectl() {
    let dir = Path::new("/sys/fs/fuse/connections");
    let mounted = fs::read_to_string("/proc/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(2) == Some("fusectl")));
    if !mounted && dir.is_dir() {
        let _ = nix::mount::mount(
            Some("fusectl"),
            dir,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
}

/// A running faultfs mount over its own temporary backing directory.
///
/// On drop (also when the test panics): mode `ok` (so every blocked request
/// proceeds), unmount (plain, then lazy), wait for the daemon to exit; if it
/// does not, abort the FUSE connection and kill it.
pub struct FaultFs {
    pub mountpoint: PathBuf,
    pub backing: PathBuf,
    control: PathBuf,
    log_path: PathBuf,
    /// The mount's device number, naming /sys/fs/fuse/connections/<dev>.
    conn: u64,
    child: Option<Child>,
    root: Option<TestRoot>,
}

impl FaultFs {
    pub fn start() -> FaultFs {
        let root = TestRoot::new();
        let backing = root.mkdir("backing");
        FaultFs::over(root, backing)
    }

    /// A faultfs mount showing `backing` (an existing directory), with its
    /// mountpoint and control file in `root`.
    pub fn over(root: TestRoot, backing: PathBuf) -> FaultFs {
        ensure_fusectl();
        let bin = faultfs_bin();
        let mountpoint = root.mkdir("mnt");
        let control = root.path().join("control");
        let log_path = root.path().join("faultfs.log");
        let log = File::create(&log_path).expect("create faultfs log");
        let mut cmd = Command::new(&bin);
        cmd.arg(&backing)
            .arg(&mountpoint)
            .arg(&control)
            .current_dir("/")
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
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut f = FaultFs {
            mountpoint,
            backing,
            control,
            log_path,
            conn: 0,
            child: Some(child),
            root: Some(root),
        };
        f.set_mode("ok");
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        while mount_fstype(&f.mountpoint).as_deref() != Some("fuse.faultfs") {
            let exited = f.child.as_mut().map(|c| c.try_wait());
            if let Some(Ok(Some(status))) = exited {
                panic!("faultfs exited early ({status}):\n{}", f.log());
            }
            assert!(
                Instant::now() < deadline,
                "faultfs did not mount within {MOUNT_TIMEOUT:?}:\n{}",
                f.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        let dev = fs::metadata(&f.mountpoint)
            .unwrap_or_else(|e| panic!("stat faultfs mount: {e}"))
            .dev();
        f.conn = (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev));
        f
    }

    /// Sets the mode (`ok`, `eio`, `hang`) atomically: faultfs never sees a
    /// half-written control file.
    pub fn set_mode(&self, mode: &str) {
        let tmp = self.control.with_extension("tmp");
        fs::write(&tmp, mode).expect("write faultfs control file");
        fs::rename(&tmp, &self.control).expect("rename faultfs control file");
    }

    /// Requests the kernel has sent to faultfs that are not answered yet
    /// (None if the connection's counter cannot be read).
    #[allow(dead_code)]
    pub fn waiting(&self) -> Option<u64> {
        let p = format!("/sys/fs/fuse/connections/{}/waiting", self.conn);
        fs::read_to_string(p).ok()?.trim().parse().ok()
    }

    /// `backing/rel`: the replica's files, bypassing faultfs.
    pub fn backing_path(&self, rel: &str) -> PathBuf {
        self.backing.join(rel)
    }

    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        self.set_mode("ok");
        ensure_unmounted(&self.mountpoint);
        let Some(mut child) = self.child.take() else {
            return;
        };
        let wait_exit = |child: &mut Child, limit: Duration| {
            let deadline = Instant::now() + limit;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => return true,
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(20))
                    }
                    _ => return false,
                }
            }
        };
        if !wait_exit(&mut child, Duration::from_secs(5)) {
            eprintln!("faultfs did not exit after unmount: aborting its connection");
            let abort = format!("/sys/fs/fuse/connections/{}/abort", self.conn);
            let _ = fs::write(abort, "1");
            let _ = child.kill();
        }
        let _ = child.wait();
        if thread::panicking() {
            eprintln!("--- faultfs log ---\n{}--- end ---", self.log());
        }
        // The root (backing dir, mountpoint) goes last, once nothing is mounted.
        drop(self.root.take());
    }
}
