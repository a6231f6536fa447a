//! The replicated filesystem: inode table, handles, fan-out, aggregation and
//! read policy. Every operation returns a value (`Result<T, Errno>`); the
//! FUSE adapter in `crate::fuse` only decodes requests and encodes replies.

mod attr;
mod cluster;
mod fanout;
mod file;
mod handles;
mod inodes;
mod locks;
mod marks;
mod namespace;
mod policy;
mod resync;
mod states;
pub mod status;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use fanout::Spread;
use parking_lot::RwLock;

use crate::config::ReadPolicy;
use crate::errno::{Errno, Result};
use crate::meta::MetaStore;
use crate::replica::ops::Stat;
use crate::replica::{INTERNAL_NAME, Name, RelPath, Replica};
pub use attr::{SetAttr, SetTime};
pub use file::{IoMode, Opened};
use inodes::InodeTable;

/// The tracing target of the consistency audit trail: at `trace` level
/// (`-o log_level=trace`), every mark, copy decision and fan-out with the
/// backing inodes it reached, to line up with a checker history
/// (tests/checker.rs) when a seed fails.
pub(crate) const AUDIT: &str = "chironfs::audit";

/// `(replica, st_ino)` of each fd, for the audit trail; empty unless it is
/// on. Only local replicas are asked (a pooled one may hang); 0 for others.
pub(crate) fn audit_inos(
    replicas: &[Replica],
    fds: &[Option<Arc<crate::replica::Fd>>],
) -> Vec<(usize, u64)> {
    if !tracing::enabled!(target: AUDIT, tracing::Level::TRACE) {
        return Vec::new();
    }
    fds.iter()
        .enumerate()
        .filter_map(|(i, fd)| {
            let fd = fd.as_ref()?;
            if !replicas.get(i).is_some_and(|r| r.inline) {
                return Some((i, 0));
            }
            let st = crate::replica::ops::fstat(std::os::fd::AsFd::as_fd(&**fd)).ok()?;
            Some((i, st.st_ino))
        })
        .collect()
}
pub use inodes::ROOT;
pub use namespace::Owner;
pub use status::{FsStatus, ReplicaStatus};

/// How the filesystem behaves; derived from the config at mount time.
#[derive(Debug, Clone)]
pub struct FsOptions {
    pub read_policy: ReadPolicy,
    /// Successes a mutation needs (write_quorum resolved against the replica count).
    pub needed: usize,
    /// How long a replica may take to answer before it is failed.
    pub replica_timeout: Duration,
    /// Use FUSE passthrough for read-only opens.
    pub passthrough: bool,
    /// Full resyncs compare file contents too (`verify=content`).
    pub verify_content: bool,
    /// What a conflict between hosts leaves on the path.
    pub conflict_policy: crate::config::ConflictPolicy,
    /// This mount's name in the replicas' ledgers (`replica::ledger`), and
    /// the highest ledger generation found on them at mount time.
    pub ledger_writer: String,
    pub ledger_generation: u64,
}

/// What one mutation comes to: the answer, the replicas to fail, and the
/// replicas to mark for the path without failing them.
struct Outcome {
    answer: Result<()>,
    failed: Vec<(usize, Errno)>,
    behind: Vec<usize>,
}

/// A looked-up or created inode: our inode number and the backing attributes.
#[derive(Clone, Copy)]
pub struct Entry {
    pub ino: u64,
    pub attr: Stat,
}

pub struct ChironFs {
    replicas: Arc<[Replica]>,
    inodes: Arc<RwLock<InodeTable>>,
    files: Arc<handles::Table<file::FileHandle>>,
    dirs: handles::Table<handles::DirHandle>,
    iomodes: handles::IoModes,
    marks: marks::Marks,
    locks: locks::PathLocks,
    /// Per replica: the resync in progress, for status.
    running: Vec<parking_lot::Mutex<Option<status::Running>>>,
    opts: FsOptions,
    round_robin: AtomicUsize,
    passthrough_enabled: AtomicBool,
    /// Open writable handles (the resync looks at them only if there are any).
    writable_handles: AtomicUsize,
    /// The other hosts sharing these replicas, through the metadata ring.
    cluster: std::sync::OnceLock<Arc<crate::meta::SharedStore>>,
    /// Striped by inode: one mtime settle of a file at a time, so an older
    /// one never lands after a newer (`settle_mtime`).
    settling: Box<[parking_lot::Mutex<()>]>,
    /// Signalled whenever a replica's `leaving` count drops: writes that
    /// missed it wait here before they are acknowledged (`await_left`).
    left: (parking_lot::Mutex<()>, parking_lot::Condvar),
    /// Held shared by every fan-out of a change while a ring is in use;
    /// taken exclusively, for an instant, when another host starts copying
    /// into a replica, so that no change sent before this host knew it is
    /// still in flight (`fan_out`, `apply_views`).
    fanout_gate: parking_lot::RwLock<()>,
    /// Hosts taken for dead that this host fenced, and the replicas it
    /// changed in their name (their fence is lifted once those are in
    /// sync and unmarked: `fs::cluster`, `lift_fences`).
    took_over:
        parking_lot::Mutex<std::collections::BTreeMap<String, std::collections::BTreeSet<usize>>>,
    /// A `settle-views` thread runs (`fs::cluster`, `settle_views`).
    settling_views: AtomicBool,
}

impl ChironFs {
    pub fn new(replicas: Vec<Replica>, store: Arc<dyn MetaStore>, opts: FsOptions) -> ChironFs {
        ChironFs {
            marks: marks::Marks::new(store, replicas.len(), opts.ledger_generation),
            locks: locks::PathLocks::new(opts.replica_timeout),
            running: (0..replicas.len())
                .map(|_| parking_lot::Mutex::new(None))
                .collect(),
            replicas: replicas.into(),
            inodes: Arc::new(RwLock::new(InodeTable::new())),
            files: Arc::new(handles::Table::new()),
            dirs: handles::Table::new(),
            iomodes: handles::IoModes::default(),
            passthrough_enabled: AtomicBool::new(opts.passthrough),
            writable_handles: AtomicUsize::new(0),
            opts,
            round_robin: AtomicUsize::new(0),
            cluster: std::sync::OnceLock::new(),
            settling: (0..64).map(|_| parking_lot::Mutex::new(())).collect(),
            left: (parking_lot::Mutex::new(()), parking_lot::Condvar::new()),
            fanout_gate: parking_lot::RwLock::new(()),
            took_over: parking_lot::Mutex::new(std::collections::BTreeMap::new()),
            settling_views: AtomicBool::new(false),
        }
    }

    /// Called by the adapter once the kernel said whether it can do passthrough.
    pub fn set_passthrough_available(&self, available: bool) {
        if !available && self.opts.passthrough {
            tracing::info!("kernel has no FUSE passthrough; reads go through the daemon");
        }
        self.passthrough_enabled
            .store(available && self.opts.passthrough, Ordering::Relaxed);
    }

    fn passthrough(&self) -> bool {
        self.passthrough_enabled.load(Ordering::Relaxed)
    }

    /// The lock function the resync engine takes around each chunk.
    /// With `linked` (a file with several links), it also excludes
    /// mutations through its other names: through every path when the
    /// destination is `local` (its syscalls already run on FUSE threads,
    /// so holding every lock during one adds no new way to hang), else
    /// through the names the inode table knows (a hung remote destination
    /// must not stop every write; a name the table does not know is not
    /// covered then).
    /// `copy_to`: the one replica the copy writes to, if it is one (a
    /// mutation that waits `replica_timeout` for a lock such a copy holds
    /// fails that replica and takes the lock over: `locks`).
    fn lock_fn(
        &self,
        local: bool,
        copy_to: Option<usize>,
    ) -> impl Fn(&RelPath, bool) -> crate::resync::ChunkGuard + Send + Sync + 'static {
        let stripes = self.locks.shared();
        let inodes = self.inodes.clone();
        move |p: &RelPath, linked: bool| -> crate::resync::ChunkGuard {
            if linked && local {
                Box::new(locks::lock_every(&stripes, copy_to))
            } else if linked {
                let mut names = inodes.read().names_of(p);
                names.push(p.clone());
                Box::new(locks::lock_paths_in(&stripes, &names, copy_to))
            } else {
                Box::new(locks::lock_in(&stripes, p, copy_to))
            }
        }
    }

    /// Locks `paths` for a change (see `locks`); a replica whose copy held
    /// one of them past `replica_timeout` is failed first (it is hung in
    /// the middle of its resync). Returns the guards and those replicas.
    fn lock_for_change(&self, op: &str, paths: &[RelPath], every: bool) -> locks::Locked {
        let locked = if every {
            self.locks.lock_every()
        } else {
            self.locks.lock_all(paths)
        };
        if !locked.stuck.is_empty() {
            let shown = paths.first().cloned().unwrap_or_else(RelPath::root);
            for &r in &locked.stuck {
                self.fail(r, op, &shown, Errno::ETIMEDOUT);
            }
        }
        locked
    }

    /// For the copy engine ([`crate::resync::CopyControl::with_displace`]):
    /// whether destination inode `d` on replica `dst` is held by an open
    /// whose file on replica `src` is not `s`. Writable opens holding it
    /// let go of their fd there: it holds a file the source no longer has
    /// at that path, with what `dst` had (it was behind); they get a
    /// current one from `join_handles` or `join_unlinked` once `dst` has
    /// their file (DESIGN.md section 5, "Opens across a resync"). Read-only
    /// opens keep theirs (they are only ever on a replica that served the
    /// file): the copy makes a new inode instead of writing into it.
    fn displace_fn(&self) -> impl Fn(usize, usize, &Stat, &Stat) -> bool + Send + Sync + 'static {
        let files = self.files.clone();
        move |src: usize, dst: usize, s: &Stat, d: &Stat| {
            let key = |st: &Stat| (st.st_dev, st.st_ino);
            let is = |fd: &Option<Arc<crate::replica::Fd>>, want: (u64, u64)| {
                fd.as_ref().is_some_and(|fd| {
                    crate::replica::ops::fstat(std::os::fd::AsFd::as_fd(&**fd))
                        .is_ok_and(|st| key(&st) == want)
                })
            };
            // The table's lock is not held across the fstats (a hung
            // replica would stop every open and release with it).
            let holders: Vec<_> = files
                .all(|h| h.fd(dst).is_some())
                .into_iter()
                .filter(|h| is(&h.fd(dst), key(d)))
                .collect();
            // Only an open seen holding another inode on the source counts
            // (one with no fd there says nothing about its file).
            let other = |h: &&Arc<file::FileHandle>| h.fd(src).is_some() && !is(&h.fd(src), key(s));
            if !holders.iter().any(|h| other(&h)) {
                return false;
            }
            // Every writable open holding the destination inode, its own
            // file or not, lets go of it: the copy rewrites or replaces it.
            tracing::trace!(
                target: AUDIT,
                "displace r{dst} inode {} (nlink {}): source r{src} inode {}",
                d.st_ino,
                d.st_nlink,
                s.st_ino
            );
            for h in holders.iter().filter(|h| h.is_writable()) {
                if let Some(fd) = h.drop_fd(dst) {
                    drop(fd);
                }
            }
            // Made anew only if it has no other name there: replacing a
            // linked inode would split its names (those not copied in this
            // pass would stay on the old one). Written in place, a
            // read-only open of another file holding it sees the copy.
            d.st_nlink <= 1
        }
    }

    /// Other names of a file, as the inode table knows them (for the resync
    /// to keep hard links).
    fn link_hint(&self) -> impl Fn(&RelPath) -> Vec<RelPath> + Send + Sync + 'static {
        let inodes = self.inodes.clone();
        move |p: &RelPath| inodes.read().names_of(p)
    }

    /// For the copy engine ([`crate::resync::CopyControl::with_replaced`]):
    /// every open holding destination inode `d` on replica `dst` lets go
    /// of its fd there (closed on the replica's threads). A writable one
    /// gets the new copy from `join_handles`, or leaves its changes
    /// marked; a read-only one reopens the file by its name on a serving
    /// replica when it next reads (`fail_over_reader`).
    fn replaced_fn(&self) -> impl Fn(usize, &Stat) + Send + Sync + 'static {
        let files = self.files.clone();
        move |dst: usize, d: &Stat| {
            let want = (d.st_dev, d.st_ino);
            // The table's lock is not held across the fstats.
            for h in files.all(|h| h.fd(dst).is_some()) {
                let holds = h.fd(dst).is_some_and(|fd| {
                    crate::replica::ops::fstat(std::os::fd::AsFd::as_fd(&*fd))
                        .is_ok_and(|st| (st.st_dev, st.st_ino) == want)
                });
                if holds && let Some(fd) = h.drop_fd(dst) {
                    tracing::trace!(
                        target: AUDIT,
                        "replaced r{dst} inode {}: ino {} lets go of it",
                        d.st_ino,
                        h.ino
                    );
                    drop(fd);
                }
            }
        }
    }

    /// Tells the inode table what a copy put anew at a path
    /// ([`crate::resync::CopyControl::with_made`]).
    fn made_fn(&self) -> impl Fn(usize, &RelPath, &Stat) + Send + Sync + 'static {
        let inodes = self.inodes.clone();
        move |i: usize, p: &RelPath, st: &Stat| {
            inodes
                .write()
                .remade(p, st.st_mode & libc::S_IFMT, (i, st.st_dev, st.st_ino))
        }
    }

    /// Replicas that receive mutations (in sync or resyncing), in index order.
    fn writers(&self) -> Vec<usize> {
        self.replicas
            .iter()
            .filter(|r| r.is_writable())
            .map(|r| r.index)
            .collect()
    }

    /// Whether replica `i` may serve a read of `path`: it is serving, and
    /// neither `path` nor a directory above it is marked for it.
    fn serves(&self, i: usize, path: &RelPath) -> bool {
        self.replicas[i].is_serving() && !self.marks.is_stale(i, path)
    }

    /// Replicas that may serve reads, best first: high priority in the
    /// order given, then low priority ones.
    fn readers(&self) -> Vec<usize> {
        let serving = self.replicas.iter().filter(|r| r.is_serving());
        let (mut high, low): (Vec<_>, Vec<_>) = serving.partition(|r| !r.spec.low_priority);
        high.extend(low);
        high.into_iter().map(|r| r.index).collect()
    }

    /// Validates a name the kernel gave us. The internal entry at the root
    /// does not exist as far as the mount is concerned.
    fn name(&self, parent: u64, name: &OsStr) -> Result<Name> {
        if parent == ROOT && name.as_bytes() == INTERNAL_NAME.as_bytes() {
            return Err(Errno::ENOENT);
        }
        Name::new(name)
    }

    /// Like [`name`](Self::name), for a name about to be created or changed:
    /// the internal entry is refused with EPERM.
    fn new_name(&self, parent: u64, name: &OsStr) -> Result<Name> {
        if parent == ROOT && name.as_bytes() == INTERNAL_NAME.as_bytes() {
            return Err(Errno::EPERM);
        }
        Name::new(name)
    }

    fn path(&self, ino: u64) -> Result<RelPath> {
        self.inodes.read().path(ino).ok_or(Errno::ENOENT)
    }

    /// Where `ino` is: `None` for the root, else (parent path, name).
    fn locate(&self, ino: u64) -> Result<Option<(RelPath, Name)>> {
        Ok(self.path(ino)?.split())
    }

    /// Runs `f` on replica `i`'s own workers and waits at most the replica
    /// deadline: a hung replica never blocks the calling FUSE thread for
    /// longer than that (it gets ETIMEDOUT).
    fn on_replica<T, F>(&self, i: usize, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Replica) -> Result<T> + Send + Sync + 'static,
    {
        fanout::run(
            &self.replicas,
            &[i],
            self.opts.replica_timeout,
            fanout::Spread::Light,
            f,
        )
        .pop()
        .map_or(Err(Errno::EIO), |(_, r)| r)
    }

    /// Runs a read-only `f` on the best reader, failing over to the next one
    /// when a replica fails (and marking it).
    fn read_meta<T, F>(&self, op: &str, path: &RelPath, f: F) -> Result<(usize, T)>
    where
        T: Send + 'static,
        F: Fn(&Replica) -> Result<T> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        for i in self.readers() {
            if self.marks.is_stale(i, path) {
                continue;
            }
            let r = &self.replicas[i];
            r.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let g = f.clone();
            match self.on_replica(i, move |rep| g(rep)) {
                Ok(v) => return Ok((i, v)),
                Err(e) if self.is_failure(i, e) => self.fail(i, op, path, e),
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EIO)
    }

    /// Applies a mutation to every serving replica in parallel, aggregates
    /// (see `fanout`), fails the replicas that disagreed, and returns the
    /// successful replicas' values in index order.
    fn mutate<T, F>(&self, op: &'static str, path: &RelPath, f: F) -> Result<Vec<(usize, T)>>
    where
        T: Send + 'static,
        F: Fn(&Replica) -> Result<T> + Send + Sync + 'static,
    {
        // Syncs run in parallel: each waits for its disk.
        let spread = if marks::is_change(op) {
            Spread::Light
        } else {
            Spread::Heavy
        };
        self.mutate_on(op, path, None, &self.writers(), self.opts.needed, spread, f)
    }

    #[allow(clippy::too_many_arguments)]
    fn mutate_on<T, F>(
        &self,
        op: &'static str,
        path: &RelPath,
        also: Option<&RelPath>,
        targets: &[usize],
        needed: usize,
        spread: Spread,
        f: F,
    ) -> Result<Vec<(usize, T)>>
    where
        T: Send + 'static,
        F: Fn(&Replica) -> Result<T> + Send + Sync + 'static,
    {
        // write_quorum is checked before anything is applied.
        if targets.is_empty() || targets.len() < needed {
            return Err(Errno::EIO);
        }
        let mut marked = marks::marked_paths(op, path);
        if let Some(a) = also {
            marked.extend(marks::marked_paths(op, a));
        }
        self.begin(op, &marked, targets)?;
        // A change and a copy of the same path never interleave (the copy
        // engine takes the same locks). Always taken: a replica may start
        // resyncing while this change is in flight.
        // A new hard link takes every lock: from then on writes through
        // either name change one inode, and a copy of the file in progress
        // (which sees the new link count at its next chunk) must not
        // overlap it.
        let locked = self.lock_for_change(op, &marked, op == "link");
        // A replica found hung under a copy's lock, or failed by another
        // change meanwhile, is not a target any more, so it is marked
        // (`missed`) below: a change that reached it after its failure
        // would leave it unmarked, and its resync trusts its marks.
        let kept: Vec<usize>;
        let gone = |i: &usize| locked.stuck.contains(i) || !self.replicas[*i].is_writable();
        let targets = if !targets.iter().any(gone) {
            targets
        } else {
            kept = targets.iter().copied().filter(|i| !gone(i)).collect();
            if kept.is_empty() || kept.len() < needed {
                // Nothing applied: nothing more to mark.
                drop(locked);
                self.end(&marked, &[]);
                return Err(Errno::EIO);
            }
            &kept
        };
        // With a ring, sent only under the lease, checked after the waits
        // above (a lock, the ledger of `begin`): a host taken for dead is
        // fenced once its lease is over (DESIGN.md section 7, "Dead hosts").
        if !self.lease_held() {
            drop(locked);
            self.end(&marked, &[]);
            return Err(Errno::EIO);
        }
        let guards = locked.guards;
        // An in-sync replica marked for the path may lack it (it is copied
        // later): like a resyncing one, it follows rather than votes. And a
        // replica votes only if it was in sync when the change was sent to
        // it: one that a resync declared in sync meanwhile answered as the
        // replica behind that it was then (checker seed 18: its ENOENT for
        // a file not copied yet failed it as divergent).
        let stale: Vec<usize> = targets
            .iter()
            .copied()
            .filter(|&i| {
                self.replicas[i].state() != crate::replica::State::InSync
                    || self.marks.is_stale(i, path)
                    || also.is_some_and(|a| self.marks.is_stale(i, a))
                    // Another host has it out of sync: it may lack what
                    // that host's marks say (with a ring only).
                    || self.replicas[i].stale_elsewhere.load(std::sync::atomic::Ordering::Acquire)
            })
            .collect();
        for &i in targets {
            self.replicas[i]
                .writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let results = self.fan_out(targets, spread, f);
        drop(guards);
        let summary: Vec<(usize, Option<Errno>)> = results
            .iter()
            .map(|(i, r)| (*i, r.as_ref().err().copied()))
            .collect();
        let outcome = self.judge(op, &summary, needed, &stale);
        tracing::trace!(
            target: AUDIT,
            "{op} {path} also={also:?} targets={targets:?} stale={stale:?} results={summary:?}"
        );
        for &(i, e) in &outcome.failed {
            self.fail(i, op, path, e);
        }
        let mut missed: Vec<usize> = (0..self.replicas.len())
            .filter(|i| marks::is_change(op) && !targets.contains(i))
            .collect();
        missed.extend(outcome.failed.iter().map(|f| f.0));
        missed.extend(outcome.behind.iter().copied());
        self.end(&marked, &missed);
        // A change that missed a replica is not acknowledged while another
        // host may still read that replica (DESIGN.md section 7, "Read
        // leases"), nor once this host's lease ran out: a no-op without a
        // ring. The other hosts learn whether it was (conflicts).
        let left = self.await_left(&missed).and_then(|()| {
            if self.lease_held() {
                Ok(())
            } else {
                Err(Errno::EIO)
            }
        });
        if !missed.is_empty() && marks::is_change(op) {
            self.record_write(&marked, &missed, left.is_ok() && outcome.answer.is_ok());
        }
        left?;
        outcome.answer?;
        Ok(results
            .into_iter()
            .filter(|(i, _)| !missed.contains(i))
            .filter_map(|(i, r)| r.ok().map(|v| (i, v)))
            .collect())
    }

    /// Turns one mutation's results into an answer (see `fanout::decide`).
    /// Only in-sync replicas vote when there are any: a resyncing replica,
    /// or an in-sync one in `stale` (marked for the path), that answers
    /// differently (it lacks a path not copied yet) is marked for the path,
    /// not failed, unless its error is a replica failure. A
    /// data change that failed everywhere may have left different partial
    /// effects: every replica but the first is marked for the path.
    fn judge(
        &self,
        op: &str,
        summary: &[(usize, Option<Errno>)],
        needed: usize,
        stale: &[usize],
    ) -> Outcome {
        let in_sync = |i: usize| {
            self.replicas[i].state() == crate::replica::State::InSync && !stale.contains(&i)
        };
        let (voters, followers): (Vec<_>, Vec<_>) = if summary.iter().any(|&(i, _)| in_sync(i)) {
            summary.iter().partition(|&&(i, _)| in_sync(i))
        } else {
            (summary.iter().collect(), Vec::new())
        };
        let mut voters: Vec<(usize, Option<Errno>)> = voters.into_iter().copied().collect();
        let mut followers = followers;
        let mut decision = fanout::decide(&voters, 0);
        // The in-sync replicas failed (an I/O error, not an answer about
        // the path) where a resyncing one succeeded: they are the ones to
        // fail, so everyone votes.
        if decision
            .answer
            .is_err_and(|e| e.is_replica_failure() && decision.failed.is_empty())
            && followers.iter().any(|f| f.1.is_none())
        {
            voters = summary.to_vec();
            followers.clear();
            decision = fanout::decide(&voters, 0);
        }
        let winner = decision.answer.err();
        let mut failed = decision.failed;
        let mut behind = Vec::new();
        for &&(i, r) in &followers {
            match r {
                _ if r == winner => {}
                Some(e) if self.is_failure(i, e) => failed.push((i, e)),
                _ => behind.push(i),
            }
        }
        let agreeing = summary
            .iter()
            .filter(|(i, r)| {
                r.is_none() && !failed.iter().any(|f| f.0 == *i) && !behind.contains(i)
            })
            .count();
        let answer = match winner {
            None if agreeing >= needed.max(1) => Ok(()),
            None => Err(Errno::EIO),
            Some(e) => {
                if e.is_replica_failure() && marks::is_change(op) {
                    behind.extend(voters.iter().skip(1).map(|v| v.0));
                    behind.extend(followers.iter().map(|v| v.0));
                }
                Err(e)
            }
        };
        Outcome {
            answer,
            failed,
            behind,
        }
    }

    /// Of a mutation's results, the one to answer with: from a replica
    /// that serves `path` (a resyncing one may still hold an old size),
    /// else the first.
    fn answer_of<'a, T>(&self, done: &'a [(usize, T)], path: &RelPath) -> &'a (usize, T) {
        done.iter()
            .find(|(i, _)| self.serves(*i, path))
            .unwrap_or(&done[0])
    }

    fn key(replica: usize, st: &Stat) -> inodes::BackingKey {
        (replica, st.st_dev, st.st_ino)
    }

    /// Registers a name the kernel will now hold a reference to.
    fn remember(&self, parent: u64, name: &Name, replica: usize, st: &Stat) -> Entry {
        self.remember_as(parent, name, &[Self::key(replica, st)], None, st)
    }

    /// `remember` with the backing identities `keys` and the node `join`
    /// checked to be the same file ([`inodes::InodeTable::lookup`]).
    fn remember_as(
        &self,
        parent: u64,
        name: &Name,
        keys: &[inodes::BackingKey],
        join: Option<u64>,
        st: &Stat,
    ) -> Entry {
        let mut inodes = self.inodes.write();
        let ino = inodes.lookup(parent, name, st.st_mode & libc::S_IFMT, keys, join);
        inodes.set_nlink(ino, st.st_nlink);
        drop(inodes);
        Entry { ino, attr: *st }
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.write().forget(ino, n);
    }
}
