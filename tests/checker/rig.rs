//! The checker's replicas and the faults the operator makes of them.
//!
//! Each replica the daemon sees is `stor/r<i>`: a bind mount of its data
//! directory, which lives on its own size-limited tmpfs (so the operator
//! can fill the disk with a ballast file beside the data) and, for one
//! replica of even seeds, behind tests/faultfs (so it can return EIO or
//! hang). Faults:
//!
//! - `full`: the replica's tmpfs is filled (ENOSPC); cleared by deleting the
//!   ballast;
//! - `vanish`: the bind mount is lazily unmounted, so `stor/r<i>` shows an
//!   empty directory; cleared by binding the data again;
//! - `eio`, `hang`: faultfs fails or blocks every request; cleared by mode
//!   `ok` (blocked requests then proceed, late);
//! - a crash: `kill -9` of the daemon, then a mount of the same replicas
//!   with the same or a fresh `state_dir`, sometimes adding a new, empty
//!   replica (`add_replica`).
//!
//! The data directories are what the checker compares with the model: they
//! hold the replica's content whatever fault hides it from the daemon.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};

use crate::common::faultfs::FaultFs;
use crate::common::{Mount, TestRoot, Tmpfs, ensure_unmounted};

/// Size of each replica's tmpfs: the clients' files (12 slots of at most
/// 1 MiB per client), files held open after unlink, and resync's copies.
const TMPFS_SIZE: &str = "192m";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Full,
    Vanish,
    Eio,
    Hang,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Full => "full",
            Fault::Vanish => "vanish",
            Fault::Eio => "eio",
            Fault::Hang => "hang",
        }
    }
}

struct Rep {
    /// What the daemon is given: a bind mount point (or a plain directory
    /// for a replica added with `add_replica`).
    path: PathBuf,
    /// The replica's content, bypassing the bind and faultfs.
    data: PathBuf,
    /// What is bound onto `path`: `data`, or faultfs's mountpoint.
    source: Option<PathBuf>,
    bound: bool,
    ballast: Option<PathBuf>,
    faultfs: Option<FaultFs>,
    tmpfs: Option<Tmpfs>,
    fault: Option<Fault>,
}

/// The mount, its replicas and their faults. Dropping it unmounts
/// everything, the mount first.
pub struct Rig {
    mount: Option<Mount>,
    reps: Vec<Rep>,
    /// Options every mount of this seed gets (ctl, probe interval, ...).
    opts: Vec<String>,
    watchdog: Duration,
    state_gen: u32,
    /// Logs of the daemons before the current one, oldest first.
    old_logs: String,
    stor: TestRoot,
}

impl Rig {
    /// `n` replicas; replica `faulty` (if any) behind faultfs.
    pub fn new(n: usize, faulty: Option<usize>, opts: Vec<String>, watchdog: Duration) -> Rig {
        let stor = TestRoot::new();
        let mut reps = Vec::new();
        for i in 0..n {
            let tmpfs = Tmpfs::new(TMPFS_SIZE);
            let data = tmpfs.path().join("data");
            fs::create_dir(&data).expect("create a replica's data directory");
            let faultfs = (faulty == Some(i)).then(|| {
                let root = TestRoot::new();
                FaultFs::over(root, data.clone())
            });
            let source = faultfs
                .as_ref()
                .map_or_else(|| data.clone(), |f| f.mountpoint.clone());
            let path = stor.mkdir(&format!("r{i}"));
            bind(&source, &path).expect("bind a replica's data directory");
            reps.push(Rep {
                path,
                data,
                source: Some(source),
                bound: true,
                ballast: None,
                faultfs,
                tmpfs: Some(tmpfs),
                fault: None,
            });
        }
        let mut rig = Rig {
            mount: None,
            reps,
            opts,
            watchdog,
            state_gen: 0,
            old_logs: String::new(),
            stor,
        };
        let root = TestRoot::new();
        let m = rig.mount_with(root, None).unwrap_or_else(|e| panic!("{e}"));
        rig.mount = Some(m);
        rig
    }

    fn mount_with(&mut self, root: TestRoot, add: Option<&Path>) -> Result<Mount, String> {
        let state = self.stor.path().join(format!("state{}", self.state_gen));
        let mut b = Mount::builder()
            .root(root)
            .watchdog(self.watchdog)
            .option(&format!("state_dir={}", state.display()));
        for r in &self.reps {
            b = b.replica(&r.path);
        }
        for o in &self.opts {
            b = b.option(o);
        }
        if let Some(p) = add {
            b = b.option(&format!("add_replica={}", p.display()));
        }
        b.try_mount()
    }

    pub fn mount(&self) -> &Mount {
        self.mount.as_ref().expect("the rig's mount")
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mount().mountpoint
    }

    pub fn len(&self) -> usize {
        self.reps.len()
    }

    /// The directories the daemon is given, in order.
    pub fn replica_paths(&self) -> Vec<PathBuf> {
        self.reps.iter().map(|r| r.path.clone()).collect()
    }

    /// Where replica `i`'s content is, whatever fault hides it.
    pub fn data(&self, i: usize) -> &Path {
        &self.reps[i].data
    }

    pub fn fault(&self, i: usize) -> Option<Fault> {
        self.reps[i].fault
    }

    /// The faults replica `i` can be given.
    pub fn faults_for(&self, i: usize) -> Vec<Fault> {
        let r = &self.reps[i];
        let mut v = Vec::new();
        if r.tmpfs.is_some() {
            v.push(Fault::Full);
        }
        if r.source.is_some() {
            v.push(Fault::Vanish);
        }
        if r.faultfs.is_some() {
            v.extend([Fault::Eio, Fault::Hang]);
        }
        v
    }

    /// The daemons' logs, this one's last.
    pub fn log(&self) -> String {
        let cur = self.mount.as_ref().map(Mount::log).unwrap_or_default();
        format!("{}{cur}", self.old_logs)
    }

    pub fn inject(&mut self, i: usize, f: Fault) -> Result<(), String> {
        let r = &mut self.reps[i];
        match f {
            Fault::Full => {
                let tmpfs = r.tmpfs.as_ref().ok_or("no tmpfs")?;
                let ballast = tmpfs.path().join("ballast");
                fill(&ballast).map_err(|e| format!("fill {}: {e}", ballast.display()))?;
                r.ballast = Some(ballast);
            }
            Fault::Vanish => {
                nix::mount::umount2(&r.path, MntFlags::MNT_DETACH)
                    .map_err(|e| format!("umount -l {}: {e}", r.path.display()))?;
                r.bound = false;
            }
            Fault::Eio => r.faultfs.as_ref().ok_or("no faultfs")?.set_mode("eio"),
            Fault::Hang => r.faultfs.as_ref().ok_or("no faultfs")?.set_mode("hang"),
        }
        r.fault = Some(f);
        Ok(())
    }

    pub fn clear(&mut self, i: usize) -> Result<(), String> {
        let r = &mut self.reps[i];
        match r.fault.take() {
            None => {}
            Some(Fault::Full) => {
                if let Some(b) = r.ballast.take() {
                    fs::remove_file(&b).map_err(|e| format!("rm {}: {e}", b.display()))?;
                }
            }
            Some(Fault::Vanish) => {
                let src = r.source.as_ref().ok_or("nothing to bind")?;
                bind(src, &r.path)?;
                r.bound = true;
            }
            Some(Fault::Eio | Fault::Hang) => {
                r.faultfs.as_ref().ok_or("no faultfs")?.set_mode("ok")
            }
        }
        Ok(())
    }

    /// `kill -9` of the daemon, then a new one on the same replicas (every
    /// fault cleared first), with a fresh `state_dir` if `fresh_state`, and
    /// a new, empty replica if `add`. Returns what was done.
    pub fn crash(&mut self, fresh_state: bool, add: bool) -> Result<String, String> {
        for i in 0..self.reps.len() {
            self.clear(i)?;
        }
        // A request faultfs held is still applied after the daemon that
        // sent it died, behind the back of the next daemon's compare; a
        // real crash beside a hung server can do the same, but the model
        // cannot follow it. Let them land first.
        for r in &self.reps {
            if let Some(f) = &r.faultfs {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while f.waiting().is_some_and(|n| n > 0) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let m = self.mount.take().ok_or("no mount")?;
        let log = m.log();
        let root = m.crash();
        self.old_logs
            .push_str(&format!("{log}--- kill -9; the next daemon's log ---\n"));
        if fresh_state {
            self.state_gen += 1;
        }
        let added = if add {
            let path = self.stor.mkdir(&format!("r{}", self.reps.len()));
            self.reps.push(Rep {
                path: path.clone(),
                data: path.clone(),
                source: None,
                bound: false,
                ballast: None,
                faultfs: None,
                tmpfs: None,
                fault: None,
            });
            Some(path)
        } else {
            None
        };
        let m = self.mount_with(root, added.as_deref())?;
        self.mount = Some(m);
        Ok(format!(
            "kill -9 and mount again with {} state_dir{}",
            if fresh_state { "a fresh" } else { "the same" },
            added.map_or(String::new(), |p| format!(", adding {}", p.display()))
        ))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for r in &mut self.reps {
            if let Some(f) = &r.faultfs {
                f.set_mode("ok");
            }
        }
        // The mount's own drop panics when its watchdog fired: the replicas'
        // mounts (faultfs, tmpfs, binds) are still taken down, then the
        // panic goes on (a stale mount would break the next run).
        let mount = self.mount.take();
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(mount)));
        for r in &mut self.reps {
            if r.source.is_some() {
                ensure_unmounted(&r.path);
            }
            drop(r.faultfs.take());
            drop(r.tmpfs.take());
        }
        if let Err(panic) = dropped {
            std::panic::resume_unwind(panic);
        }
    }
}

fn bind(src: &Path, dst: &Path) -> Result<(), String> {
    nix::mount::mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| format!("mount --bind {} {}: {e}", src.display(), dst.display()))
}

/// Fills the filesystem holding `path` with `path` until ENOSPC.
fn fill(path: &Path) -> io::Result<()> {
    let mut f = File::create(path)?;
    for size in [1 << 20, 4096] {
        let chunk = vec![1u8; size];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
