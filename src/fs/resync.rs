//! The background worker that brings failed replicas back: it probes them,
//! and resyncs a replica that is back from the missed marks (after a full
//! compare when its marks cannot be trusted) while applications keep
//! writing. A replica serves reads again only when nothing is left for it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::ChironFs;
use crate::errno::Errno;
use crate::meta::ReplicaState;
use crate::replica::{RelPath, Replica, State};
use crate::resync::{CopyControl, SyncMode, Throttle, diff_tree, sync_path};

/// Marks fetched from the store per round.
const BATCH: usize = 256;

impl ChironFs {
    /// Runs forever on its own thread: probe, resync, sleep.
    pub fn resync_loop(self: Arc<Self>, probe_interval: Duration, bandwidth: u64) {
        let throttle = Arc::new(Throttle::new(bandwidth));
        // A replica that keeps failing right after it comes back (a disk
        // still full) is probed less and less often, up to once a minute.
        let mut backoff: Vec<Backoff> = (0..self.replicas.len())
            .map(|_| Backoff::new(probe_interval))
            .collect();
        loop {
            for (i, b) in backoff.iter_mut().enumerate() {
                match self.replicas[i].state() {
                    State::Failed if b.due() => {
                        self.probe(i);
                        match self.replicas[i].state() {
                            State::Failed => b.reset(),
                            // Back: start at once rather than a round later.
                            State::Resyncing => {
                                self.resync(i, &throttle);
                                if self.replicas[i].state() == State::Failed {
                                    b.failed_again();
                                }
                            }
                            _ => {}
                        }
                    }
                    // Paths it missed while in sync (it serves the rest).
                    State::InSync if self.marks.has_stale(i) => self.resync(i, &throttle),
                    // Nothing left to copy: the other hosts learn it.
                    State::InSync => self.clear_behind(i),
                    State::Resyncing => {
                        self.resync(i, &throttle);
                        match self.replicas[i].state() {
                            State::Failed => b.failed_again(),
                            State::InSync => b.reset(),
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            self.heal_pending_of_dead_hosts();
            for (i, hosts) in self.orphaned_by_dead_hosts() {
                if self.resync_lease() {
                    self.adopt(i, &hosts, &throttle);
                    self.end_resync_lease();
                }
            }
            self.lift_fences();
            std::thread::sleep(probe_interval);
        }
    }

    /// A failed replica is back when it is the directory it claims to be
    /// (marker), still where it was, and writable.
    fn probe(&self, i: usize) {
        let r = &self.replicas[i];
        // A directory that came back under the path (an NFS mount that came
        // up late) is taken if it carries this replica's marker.
        // Not if it hangs: the reattach would wait for it on this thread.
        let healthy = self.check_health(i).or_else(|e| {
            if e == Errno::ETIMEDOUT {
                return Err(e);
            }
            match r.reattach() {
                Ok(true) => r.check_health(),
                _ => Err(e),
            }
        });
        // A request that timed out may still be running on the replica's
        // pool: it could land after the resync copied its path. The replica
        // comes back only once none is left.
        let idle = if r.queued.load(Ordering::SeqCst) == 0 {
            Ok(())
        } else {
            Err(Errno(libc::EBUSY))
        };
        let ok = healthy.and(idle).and_then(|_| writable(r));
        if ok.is_ok()
            && self.change_state(
                i,
                &[State::Failed],
                State::Resyncing,
                "back after a failure".into(),
            )
        {
            tracing::info!("replica {} is back; resyncing it", r.spec.path.display());
        }
    }

    pub(super) fn resync(&self, i: usize, throttle: &Arc<Throttle>) {
        let r = &self.replicas[i];
        // With a ring, not before the other hosts know that this host
        // copies into it (DESIGN.md section 7, "Writes beside another
        // host's resync"); next round otherwise.
        if !self.may_copy_into(i) {
            return;
        }
        // The source of a full compare: a replica no host sees out of sync
        // (it copies everything). An incremental resync picks a source per
        // path (`source_for`).
        let full = r.needs_full.load(Ordering::Relaxed);
        let src = if full {
            self.readers().into_iter().find(|&s| s != i)
        } else {
            self.source_for(i, None)
        };
        let Some(src) = src else {
            return;
        };
        // Among hosts sharing these replicas, one resyncs at a time.
        if !self.resync_lease() {
            tracing::debug!(
                "replica {}: another host holds the resync lease",
                r.spec.path.display()
            );
            return;
        }
        let _lease = Lease(self);
        let src = &self.replicas[src];
        // Only a destination that may hang (not on a local filesystem,
        // whose syscalls end) can be found stuck under a lock (`locks`).
        let me = self.lock_fn(r.inline, (!r.inline).then_some(i));
        let ctl = Arc::new(
            CopyControl::with_throttle(throttle.clone())
                .with_chunk_guard(me)
                .with_link_hint(self.link_hint())
                .with_displace(self.displace_fn())
                .with_replaced(self.replaced_fn())
                .with_made(self.made_fn())
                .rechecking_source(self.cluster().is_some()),
        );
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        *self.running[i].lock() = Some((Instant::now(), ctl.clone(), total.clone()));
        let _done = Finished(&self.running[i], &self.replicas[i]);
        // Declared after `_lease`, so dropped (stopped) before the lease is
        // given back.
        let _renewer = self.renew_lease_while(&ctl);
        let store = &self.marks.store;
        if r.needs_full.load(Ordering::Relaxed) {
            tracing::info!(
                "replica {}: full compare with {}",
                r.spec.path.display(),
                src.spec.path.display()
            );
            let mut marks = Vec::new();
            let verify =
                r.verify_content.swap(false, Ordering::Relaxed) || self.opts.verify_content;
            let res = diff_tree(src, r, &RelPath::root(), verify, &mut |p| marks.push(p));
            if let Err(e) = res {
                return self.resync_failed(i, "compare", &RelPath::root(), e);
            }
            // As any missed mark: an in-sync replica stops serving each
            // path found different until it is copied (the copy rewrites it
            // in place, chunk by chunk).
            for p in &marks {
                self.record_missed(p, i);
            }
            r.needs_full.store(false, Ordering::Relaxed);
        }
        total.store(self.bytes_to_copy(src, r), Ordering::Relaxed);
        // One pass over the marks, page by page; then again from the start
        // for marks that came meanwhile, until none is left.
        let mut after: Option<Vec<u8>> = None;
        // A mark that cannot be cleared yet (a handle stays open, no source
        // holds the path, the copy did not finish): the pass ends without
        // declaring the replica in sync, and the next round tries again.
        let mut held = false;
        // A pass that cleared nothing is not repeated at once.
        let mut cleared = false;
        // An in-sync replica is resynced only for the paths it missed while
        // in sync; it stays in sync (and serves everything else) meanwhile.
        let copying = || matches!(r.state(), State::Resyncing | State::InSync);
        loop {
            if !copying() {
                return;
            }
            let batch = match store.missed(&r.id, after.as_deref(), BATCH) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("metadata store: {e}");
                    return;
                }
            };
            if batch.is_empty() {
                if after.is_none() {
                    break;
                }
                if held || !cleared {
                    // Back next round.
                    return;
                }
                after = None;
                cleared = false;
                continue;
            }
            after = batch.last().cloned();
            if let Some(c) = self.cluster() {
                // Paths other hosts wrote meanwhile, for the conflict checks.
                c.gather();
            }
            if !self.resync_lease() {
                tracing::warn!(
                    "replica {}: lost the resync lease; resuming later",
                    r.spec.path.display()
                );
                return;
            }
            for raw in batch {
                if !copying() {
                    return;
                }
                let Some(p) = RelPath::from_bytes(&raw) else {
                    let _ = store.clear_missed(&raw, &r.id);
                    continue;
                };
                let generation = self.marks.generation(&p, i);
                let Some(src) = self.source_for(i, Some(&p)).map(|s| &self.replicas[s]) else {
                    // Every other replica lacks a change of it too: nothing
                    // to copy from; the mark stays and status shows it.
                    held = true;
                    continue;
                };
                let settled = match self.settle_conflict(&p, src, r, &ctl) {
                    Ok(done) => done,
                    Err(e) => {
                        tracing::warn!("conflict on {p}: cannot settle it yet: {e}");
                        return;
                    }
                };
                let copied = if settled {
                    Ok(Default::default())
                } else {
                    sync_path(src, r, &p, SyncMode::Entries, &ctl)
                };
                tracing::trace!(
                    target: super::AUDIT,
                    "copy {p} r{} -> r{i} (generation {generation}): {:?}",
                    src.index,
                    copied.as_ref().map(|_| ())
                );
                match copied {
                    // Failed meanwhile (a change found the copy hung and
                    // took its lock over, then changed the path without
                    // it): the copy may have finished after that change,
                    // so nothing it did clears a mark.
                    Ok(_) if ctl.is_cancelled() || !copying() => return,
                    Ok(_) => {}
                    // An errno does not say which side failed: the source is
                    // blamed only if it is visibly unhealthy.
                    Err(e)
                        if self.is_failure(src.index, e)
                            && self.check_health(src.index).is_err() =>
                    {
                        self.fail(src.index, "resync source", &p, e);
                        return;
                    }
                    Err(e) if self.is_failure(i, e) => {
                        return self.resync_failed(i, "resync", &p, e);
                    }
                    // Not a replica failure (a racing change, an attribute
                    // the destination refuses): the mark stays, the next
                    // round tries again.
                    Err(e) => {
                        tracing::debug!("resync {p}: {e}");
                        held = true;
                        continue;
                    }
                }
                // Handles opened while the replica was out get an fd on it
                // now, under the path's lock, so their next writes reach it.
                let held_back = {
                    let _g = self.lock_for_change("resync", std::slice::from_ref(&p), false);
                    self.join_handles(&p, i, src.index)
                };
                if held_back {
                    held = true;
                    continue;
                }
                match self.clear_covered(&raw, &p, i, generation) {
                    Ok(done) => cleared |= done,
                    Err(e) => {
                        tracing::error!("metadata store: {e}");
                        return;
                    }
                }
            }
        }
        if self.links_left_split(i, &ctl) {
            // Back next round, for a full compare.
            return;
        }
        // Open files unlinked while it was out follow it too.
        match self.join_unlinked(i) {
            Ok(()) => {}
            Err(e) if self.is_failure(i, e) => {
                return self.resync_failed(i, "resync", &RelPath::root(), e);
            }
            Err(e) => {
                tracing::debug!("resync of open unlinked files: {e}");
                return;
            }
        }
        // What was copied is on disk before the replica is trusted again.
        if let Err(e) = nix::unistd::syncfs(&*r.root()) {
            return self.resync_failed(i, "syncfs", &RelPath::root(), e.into());
        }
        // In sync only if no mark came between the last look and the change
        // of state (`record_missed` writes the mark, then bumps the
        // generation, then moves an in-sync replica back).
        if r.state() == State::InSync {
            tracing::info!(
                "replica {}: the paths it missed while in sync are copied",
                r.spec.path.display()
            );
            if !self.marks.has_stale(i) {
                self.clear_behind(i);
            }
            return;
        }
        let generation = r.mark_generation.load(Ordering::SeqCst);
        if store.missed_count(&r.id).ok().is_none_or(|n| n > 0) {
            return;
        }
        {
            let _recording = r.recording.lock();
            if !r.transition(&[State::Resyncing], State::InSync) {
                // Failed or disabled meanwhile: that change stands.
                return;
            }
            if r.mark_generation.load(Ordering::SeqCst) != generation {
                // A mark came during the last check: not in sync after all
                // (nothing was recorded, and reads of it never began).
                r.transition(&[State::InSync], State::Resyncing);
                return;
            }
            r.needs_full.store(false, Ordering::SeqCst);
            if let Some(c) = self.cluster() {
                c.set_behind(&r.id, false);
            }
            self.persist_state(i, ReplicaState::InSync, String::new());
            self.record_ledger();
        }
        let files = ctl.files_done.load(Ordering::Relaxed);
        let bytes = ctl.bytes_done.load(Ordering::Relaxed);
        tracing::info!(
            "replica {} is in sync again ({files} entries, {bytes} bytes copied)",
            r.spec.path.display()
        );
    }

    /// Whether a file with several links that this resync copied to
    /// replica `i` has fewer links there than on its source: its other
    /// names on `i` are separate files the pass never met (in other
    /// directories, unknown to the inode table, and not marked: a heal
    /// after `kill -9` in the middle of a `link` across directories, or a
    /// rename of one name while the kernel had forgotten the others). The
    /// replica then gets a full compare, which relinks every name: the
    /// first copy is marked again (so a restart finds it too), and an
    /// in-sync replica stops serving until the compare ends if another
    /// replica is in sync (its separate names miss what is written through
    /// the file's other names). src/DESIGN.md section 5, "Hard links".
    fn links_left_split(&self, i: usize, ctl: &CopyControl) -> bool {
        let r = &self.replicas[i];
        // A full compare needs a serving replica besides `i` to copy from
        // (without one, `needs_full` would stall both replicas).
        if !self.readers().iter().any(|&o| o != i) {
            return false;
        }
        let mut split = false;
        for (s, p) in ctl.first_copies() {
            // Only against a source that holds every change of the path:
            // one behind may count a name it has not lost yet.
            if self.replicas[s].state() != State::InSync || self.marked_at_or_above(s, &p) {
                continue;
            }
            let Some((pp, nm)) = p.split() else {
                continue;
            };
            let stat = |rep: &Replica| {
                rep.dir(&pp)
                    .and_then(|d| {
                        crate::replica::ops::stat_at(crate::replica::ops::fd_of(&d), nm.as_c())
                    })
                    .ok()
                    .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
            };
            let (Some(a), Some(b)) = (stat(&self.replicas[s]), stat(r)) else {
                continue;
            };
            if b.st_nlink < a.st_nlink {
                tracing::warn!(
                    "replica {}: {p} has {} links there, {} on {}: its other names are relinked by a full compare",
                    r.spec.path.display(),
                    b.st_nlink,
                    a.st_nlink,
                    self.replicas[s].spec.path.display()
                );
                self.record_missed(&p, i);
                split = true;
            }
        }
        if split {
            r.needs_full.store(true, Ordering::SeqCst);
            let other_in_sync = self
                .replicas
                .iter()
                .any(|o| o.index != i && o.state() == State::InSync);
            if other_in_sync {
                self.change_state(
                    i,
                    &[State::InSync],
                    State::Resyncing,
                    "hard links to relink (full compare)".into(),
                );
            }
        }
        split
    }

    /// The replica replica `i` copies `p` from: an in-sync replica for this
    /// host, else a resyncing one whose marks are complete, preferring one
    /// not marked for `p` (it holds every change of `p`). With `p` = None:
    /// the first such replica.
    fn source_for(&self, i: usize, p: Option<&RelPath>) -> Option<usize> {
        // With a ring, first a replica no host has out of sync (one may
        // lack another host's changes, and another host's changes reach it
        // in the same round as the destination's), then one some host has
        // out of sync (two hosts that each took out what the other wrote
        // have no other: `settle_conflict` compares their versions), never
        // one being copied into.
        let ring = self.cluster().is_some();
        let elsewhere = |s: &Replica| ring && s.stale_elsewhere.load(Ordering::Acquire);
        let in_sync = self
            .replicas
            .iter()
            .filter(|s| s.index != i && s.state() == State::InSync);
        let in_sync_here = in_sync.clone().filter(|s| !elsewhere(s));
        let in_sync_stale_elsewhere = in_sync.filter(|s| elsewhere(s));
        let catching_up = self.replicas.iter().filter(|s| {
            s.index != i
                && !ring
                && s.state() == State::Resyncing
                && !s.needs_full.load(Ordering::Relaxed)
        });
        let mut candidates = in_sync_here
            .chain(in_sync_stale_elsewhere)
            .chain(catching_up)
            .map(|s| s.index);
        let Some(p) = p else {
            return candidates.next();
        };
        candidates.find(|&s| !self.marked_at_or_above(s, p))
    }

    /// Whether replica `s` is marked for `p` or a directory above it (it
    /// may lack a change of `p`, or `p` itself).
    pub(super) fn marked_at_or_above(&self, s: usize, p: &RelPath) -> bool {
        let id = &self.replicas[s].id;
        let mut cur = Some(p.clone());
        while let Some(q) = cur {
            if self.marks.store.is_missed(q.as_bytes(), id).unwrap_or(true) {
                return true;
            }
            cur = q.split().map(|(parent, _)| parent);
        }
        false
    }

    /// An estimate of the bytes a resync will copy: the sizes, on the
    /// source, of the regular files marked missed (a marked directory
    /// counts only for itself).
    fn bytes_to_copy(&self, src: &Replica, r: &Replica) -> u64 {
        let mut total = 0u64;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let Ok(batch) = self.marks.store.missed(&r.id, after.as_deref(), 1024) else {
                return total;
            };
            let Some(last) = batch.last().cloned() else {
                return total;
            };
            for raw in &batch {
                let Some((parent, name)) = RelPath::from_bytes(raw).and_then(|p| p.split()) else {
                    continue;
                };
                if let Ok(dir) = src.dir(&parent)
                    && let Ok(st) =
                        crate::replica::ops::stat_at(crate::replica::ops::fd_of(&dir), name.as_c())
                    && st.st_mode & libc::S_IFMT == libc::S_IFREG
                {
                    total += st.st_size as u64;
                }
            }
            after = Some(last);
        }
    }

    fn resync_failed(&self, i: usize, op: &str, p: &RelPath, e: Errno) {
        self.fail(i, op, p, e);
    }
}

/// Gives the resync lease back however `resync` returns.
struct Lease<'a>(&'a ChironFs);

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.0.end_resync_lease();
    }
}

/// Clears a replica's running-resync slot however `resync` returns.
/// Ends a resync's entry in `running`, moving its counts into the
/// replica's totals under the same lock (so the metrics never go back).
struct Finished<'a>(
    &'a parking_lot::Mutex<Option<super::status::Running>>,
    &'a crate::replica::Replica,
);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        let mut running = self.0.lock();
        if let Some((_, ctl, _)) = running.take() {
            use std::sync::atomic::Ordering::Relaxed;
            let r = self.1;
            r.resync_bytes
                .fetch_add(ctl.bytes_done.load(Relaxed), Relaxed);
            r.resync_entries
                .fetch_add(ctl.files_done.load(Relaxed), Relaxed);
        }
    }
}

/// When to probe a failed replica next.
struct Backoff {
    base: Duration,
    delay: Duration,
    next: Instant,
}

impl Backoff {
    const MAX: Duration = Duration::from_secs(60);

    fn new(base: Duration) -> Backoff {
        Backoff {
            base,
            delay: base,
            next: Instant::now(),
        }
    }

    fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// It came back and failed again: wait twice as long before the next try.
    fn failed_again(&mut self) {
        self.delay = (self.delay * 2).min(Self::MAX);
        self.next = Instant::now() + self.delay;
    }

    /// Probing normally (still down, or healthy again).
    fn reset(&mut self) {
        if self.due() {
            self.delay = self.base;
        }
    }
}

/// Creates and removes a file in the replica's internal directory.
fn writable(r: &Replica) -> crate::errno::Result<()> {
    use crate::replica::ops;
    let dir = r.dir(&RelPath::root())?;
    let internal = std::ffi::CString::new(crate::replica::INTERNAL_NAME).map_err(|_| Errno::EIO)?;
    let d = ops::openat(
        ops::fd_of(&dir),
        &internal,
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )?;
    let probe = c"probe";
    let f = ops::openat(
        ops::fd_of(&d),
        probe,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        0o600,
    )?;
    ops::pwrite_all(ops::fd_of(&f), b"chironfs probe\n", 0)?;
    drop(f);
    ops::unlinkat(ops::fd_of(&d), probe, 0)
}
