//! One backing directory: where it is, whether it is healthy, and the only
//! door to its files (safe path resolution, syscalls, a worker pool).

mod fd;
pub mod identity;
pub mod ledger;
pub mod ops;
pub mod path;
mod pool;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use crate::errno::{Errno, Result};
pub use crate::meta::{ReplicaId, ReplicaState as State};
pub use fd::Fd;
pub use path::{Name, RelPath};
use pool::Pool;

/// The name of the internal entry at the root of every replica. It is never
/// shown through the mount and cannot be created, removed or renamed there.
pub const INTERNAL_NAME: &str = ".chironfs";

/// How a replica is named on the command line or in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSpec {
    pub path: PathBuf,
    /// Read from only when no high-priority in-sync replica can serve.
    pub low_priority: bool,
}

impl ReplicaSpec {
    /// Parses one `[:]PATH` element of the ChironFS replica syntax.
    pub fn parse(s: &str) -> ReplicaSpec {
        match s.strip_prefix(':') {
            Some(rest) => ReplicaSpec {
                path: PathBuf::from(rest),
                low_priority: true,
            },
            None => ReplicaSpec {
                path: PathBuf::from(s),
                low_priority: false,
            },
        }
    }
}

fn state_code(s: State) -> u8 {
    match s {
        State::InSync => 0,
        State::Failed => 1,
        State::Resyncing => 2,
        State::Disabled => 3,
    }
}

fn state_of(code: u8) -> State {
    match code {
        0 => State::InSync,
        2 => State::Resyncing,
        3 => State::Disabled,
        _ => State::Failed,
    }
}

/// Upper bounds of the latency histogram's buckets, in nanoseconds
/// (100 µs to 10 s).
pub const LATENCY_BOUNDS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

pub struct Replica {
    pub index: usize,
    pub spec: ReplicaSpec,
    /// The identity this replica must carry in its marker.
    pub id: ReplicaId,
    /// Its marks cannot be trusted: a full compare must precede resync.
    pub needs_full: AtomicBool,
    /// Held while a state change of this replica is recorded (store and
    /// ledger): whoever loses the race to change it waits here, so nothing
    /// is acknowledged before the change is durable.
    pub recording: parking_lot::Mutex<()>,
    /// Bumped after every missed mark recorded for this replica: a resync
    /// declares it in sync only if no mark came during its last check.
    pub mark_generation: AtomicU64,
    /// Another host sharing this replica (through the metadata ring) sees
    /// it out of sync: it missed writes made there, so it serves no reads.
    pub stale_elsewhere: AtomicBool,
    /// State changes under way that take it out of service and that the
    /// other hosts sharing it may not know of yet (`fs::cluster`,
    /// `Leaving`): a write that missed it waits for them before it is
    /// acknowledged.
    pub leaving: std::sync::atomic::AtomicU32,
    /// Another host sharing it resyncs it (copies into it): changes reach
    /// it only after the other replicas took them (`fs::cluster`,
    /// `ChironFs::fan_out`).
    pub copied_elsewhere: AtomicBool,
    /// That full compare also compares file contents (`resync --verify`).
    pub verify_content: AtomicBool,
    /// Its syscalls run on the calling thread instead of its pool (see
    /// `fs::fanout::run`): a local filesystem, and `replica_io` allows it.
    pub inline: bool,
    /// Whether its filesystem was a local one at mount (`is_local_fs`),
    /// kept so that nothing asks a replica that may hang.
    pub local_fs: bool,
    /// The replica's root directory; replaced only by `reattach`.
    root: parking_lot::RwLock<std::sync::Arc<OwnedFd>>,
    state: AtomicU8,
    /// Requests issued to this replica and not yet answered.
    pub in_flight: AtomicU64,
    /// Jobs handed to its pool and not finished (queued or running; a
    /// timed-out one stays here until it ends).
    pub queued: std::sync::Arc<AtomicU64>,
    /// Requests answered, and the time they took in all (for the latency).
    pub calls: AtomicU64,
    pub busy_ns: AtomicU64,
    /// Requests answered, by how long they took: `LATENCY_BOUNDS_NS`, then
    /// one more for longer (the latency histogram).
    pub latency_buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    /// Bytes and entries copied onto it by resyncs that ended (one running
    /// adds its own counts in `status`).
    pub resync_bytes: AtomicU64,
    pub resync_entries: AtomicU64,
    /// Read-side and mutating operations sent to this replica.
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    /// Open file handles whose reads this replica serves.
    pub bound_handles: AtomicU64,
    pool: Pool,
}

impl Replica {
    /// `root` must be an fd of the replica directory opened O_RDONLY|O_DIRECTORY.
    pub fn new(
        index: usize,
        spec: ReplicaSpec,
        root: OwnedFd,
        threads: usize,
        id: ReplicaId,
        state: State,
        inline: bool,
    ) -> std::io::Result<Replica> {
        Ok(Replica {
            index,
            id,
            inline,
            needs_full: AtomicBool::new(false),
            mark_generation: AtomicU64::new(0),
            recording: parking_lot::Mutex::new(()),
            stale_elsewhere: AtomicBool::new(false),
            leaving: std::sync::atomic::AtomicU32::new(0),
            copied_elsewhere: AtomicBool::new(false),
            verify_content: AtomicBool::new(false),
            pool: Pool::new(&format!("replica{index}"), threads)?,
            local_fs: false,
            spec,
            root: parking_lot::RwLock::new(std::sync::Arc::new(root)),
            state: AtomicU8::new(state_code(state)),
            in_flight: AtomicU64::new(0),
            queued: std::sync::Arc::new(AtomicU64::new(0)),
            calls: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            resync_bytes: AtomicU64::new(0),
            resync_entries: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            bound_handles: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> std::sync::Arc<OwnedFd> {
        self.root.read().clone()
    }

    /// Opens directory `rel` of this replica (see [`path::open_dir_beneath`]).
    pub fn dir(&self, rel: &RelPath) -> Result<OwnedFd> {
        path::open_dir_beneath(&self.root(), rel)
    }

    pub fn state(&self) -> State {
        state_of(self.state.load(Ordering::Acquire))
    }

    /// Moves the replica to `to` if it is in one of `from` (compare and
    /// swap: a transition never overwrites one that came meanwhile).
    /// Returns whether it moved.
    pub fn transition(&self, from: &[State], to: State) -> bool {
        let new = state_code(to);
        from.iter().any(|&f| {
            self.state
                .compare_exchange(state_code(f), new, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    /// Whether this replica serves reads (only when in sync, for this host
    /// and every other host sharing it).
    pub fn is_serving(&self) -> bool {
        self.state() == State::InSync && !self.stale_elsewhere.load(Ordering::Acquire)
    }

    /// Whether this replica receives mutations (in sync, or catching up).
    pub fn is_writable(&self) -> bool {
        matches!(self.state(), State::InSync | State::Resyncing)
    }

    /// Takes the replica out of service. Returns true (and logs) only for
    /// the call that made the transition, so each failure is logged once.
    pub fn mark_failed(&self, op: &str, path: &RelPath, err: crate::errno::Errno) -> bool {
        if !self.transition(&[State::InSync, State::Resyncing], State::Failed) {
            return false;
        }
        log_failure(&self.spec.path, op, path, err);
        true
    }

    /// Whether this replica is still the directory it was at mount time:
    /// its root not deleted, its path still leading to it (not to what an
    /// unmount left underneath), its internal entry present.
    pub fn check_health(&self) -> Result<()> {
        let fd = self.root();
        let root = ops::fstat(fd.as_fd())?;
        if root.st_nlink == 0 {
            return Err(Errno(libc::ENODEV));
        }
        let now = std::fs::metadata(&self.spec.path).map_err(Errno::from)?;
        use std::os::unix::fs::MetadataExt;
        if now.dev() != root.st_dev || now.ino() != root.st_ino {
            return Err(Errno(libc::ENODEV));
        }
        match identity::read(fd.as_fd())? {
            Some(id) if id == self.id => Ok(()),
            _ => Err(Errno(libc::ENODEV)),
        }
    }

    /// The directory at the replica's path is a new one (an NFS mount that
    /// came up after the daemon started, a disk remounted): if it carries
    /// this replica's marker, use it from now on. Returns whether it did.
    pub fn reattach(&self) -> Result<bool> {
        let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
            self.spec.path.as_os_str(),
        ))
        .map_err(|_| Errno::EINVAL)?;
        use nix::fcntl::OFlag;
        let fresh = nix::fcntl::open(
            path.as_c_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        if identity::read(fresh.as_fd())? != Some(self.id) {
            return Ok(false);
        }
        // Its syscalls run on the calling thread, without a deadline, if it
        // was on a local filesystem at mount: a network or FUSE one now
        // (its mount was not up then) must not be served that way.
        if self.inline && !is_local(fresh.as_fd()) {
            tracing::error!(
                "replica {} is back on a network or FUSE filesystem, but it was on a local one when chironfs started (its mount was not up): not served; unmount and mount chironfs again to serve it",
                self.spec.path.display()
            );
            return Ok(false);
        }
        *self.root.write() = std::sync::Arc::new(fresh);
        // What it holds is whatever survived where it was: compare it all.
        self.needs_full.store(true, Ordering::SeqCst);
        tracing::info!(
            "replica {} reattached: its directory is back",
            self.spec.path.display()
        );
        Ok(true)
    }

    /// Whether the filesystem under this replica is local (its syscalls
    /// end, with an error if need be), as opposed to a network or FUSE
    /// filesystem that can hang forever.
    pub fn is_local_fs(&self) -> bool {
        is_local(self.root().as_fd())
    }

    /// Runs `job` on this replica's worker pool.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        self.pool.submit(job);
    }

    /// Holds `fd`, an fd of a file on this replica, so that it is closed
    /// where a close cannot hold up the caller (see [`Fd`]).
    pub fn hold(&self, fd: OwnedFd) -> Fd {
        let closer = (!self.inline).then(|| fd::Closer {
            pool: self.pool.clone(),
            queued: self.queued.clone(),
        });
        Fd::new(fd, closer)
    }

    /// Counts a request as in flight for the duration of `f`.
    pub fn track<T>(&self, f: impl FnOnce() -> T) -> T {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let start = std::time::Instant::now();
        let r = f();
        let ns = start.elapsed().as_nanos() as u64;
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
        let bucket = LATENCY_BOUNDS_NS.partition_point(|&b| b < ns);
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        r
    }
}

/// The one log line of a replica failure: at error severity (syslog
/// `LOG_ERR`, `journalctl -p err`), with the replica, the operation, the
/// path and the errno as fields (journald: `REPLICA`, `OP`, `PATH`, `ERRNO`).
/// Whether the filesystem `fd` is on is a local one (see
/// `Replica::is_local_fs`).
fn is_local(fd: std::os::fd::BorrowedFd) -> bool {
    let Ok(st) = nix::sys::statfs::fstatfs(fd) else {
        return false;
    };
    let t = st.filesystem_type().0;
    const LOCAL: &[i64] = &[
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0xF2F5_2010, // f2fs
        0x2FC1_2FC1, // zfs
        0x5346_544E, // ntfs3
    ];
    LOCAL.contains(&t)
}

pub fn log_failure(replica: &std::path::Path, op: &str, path: &RelPath, err: Errno) {
    tracing::error!(
        replica = %replica.display(),
        op,
        path = %path,
        errno = err.0,
        "replica {} failed: {op} {path}: {err}",
        replica.display()
    );
}
