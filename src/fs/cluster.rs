//! The filesystem among several hosts that mount the same replicas and
//! share a metadata ring (DESIGN.md section 7): what the other hosts see
//! decides which replicas this host reads, one host resyncs at a time
//! (a lease), and a path that two hosts changed on disjoint replicas is a
//! conflict, resolved by `conflict_policy` without losing either version.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::ChironFs;
use crate::config::ConflictPolicy;
use crate::errno::{Errno, Result};
use crate::meta::{ConflictRecord, PathWrite, ReplicaId, SharedStore};
use crate::replica::{RelPath, Replica, ops};
use crate::resync::{CopyControl, SyncMode, sync_path};

/// How long a resync lease lasts without renewal (a host that dies
/// holding it blocks others this long at most).
pub const LEASE: Duration = Duration::from_secs(30);

impl ChironFs {
    /// Joins the hosts sharing these replicas: publishes this host's view
    /// of every replica and follows theirs.
    pub fn join_cluster(self: &Arc<Self>, shared: Arc<SharedStore>) {
        let weak = Arc::downgrade(self);
        shared.set_on_change(Arc::new(move || {
            if let Some(fs) = weak.upgrade() {
                // Called from the ring's request handlers too: the drain in
                // `apply_views` may wait for fan-outs, off the runtime's
                // worker so that the ring keeps serving meanwhile.
                let multi = tokio::runtime::Handle::try_current().is_ok_and(|h| {
                    h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                });
                if multi {
                    tokio::task::block_in_place(|| fs.apply_views());
                } else {
                    fs.apply_views();
                }
            }
        }));
        if self.cluster.set(shared.clone()).is_err() {
            return;
        }
        // Fences this host wrote before a restart: lifted once their hosts
        // are back and every replica is in sync and unmarked.
        shared.recall_fences();
        let all: std::collections::BTreeSet<usize> = (0..self.replicas.len()).collect();
        for h in shared.fenced_by_me() {
            self.took_over.lock().insert(h, all.clone());
        }
        for r in self.replicas.iter() {
            if let Ok(Some(rec)) = crate::meta::MetaStore::get_replica(shared.as_ref(), &r.id) {
                shared.publish(&rec);
            }
        }
        self.renew_read_lease(&shared);
    }

    /// One round of the read lease: a grant from a majority, then every
    /// other host's view read (and applied) after it; only then is the
    /// lease extended (DESIGN.md section 7, "Read leases").
    fn renew_read_lease(self: &Arc<Self>, shared: &SharedStore) {
        let expiry = shared.renew_read_lease();
        if expiry.is_none() {
            // Known now: reads need not wait for this round to end.
            shared.settle_lease(None, false);
        }
        let complete = shared.refresh(&self.replica_ids());
        self.apply_views();
        let mut complete = complete;
        if complete {
            // Before the lease is extended: writes that miss a replica
            // republished here wait for it. One being changed right now
            // (its record is being published) is left to that change, but
            // the lease waits for the next round.
            for id in shared.take_mismatched() {
                complete &= self.republish_unless_busy(shared, &id);
            }
        }
        if expiry.is_some() {
            shared.settle_lease(expiry, complete);
        }
        if complete {
            self.settle_views();
        }
    }

    /// A ticket for a call made under this host's read lease (waiting a
    /// little for a renewal under way): `None` if the lease is not held.
    /// `lease_kept` then says whether it was held without a break until
    /// now: a call that outlasts one term is fine as long as renewals
    /// kept it (DESIGN.md section 7, "Read leases").
    pub fn lease_ticket(&self) -> Option<u64> {
        match self.cluster.get() {
            None => Some(0),
            Some(s) => s.read_lease_until(true).map(|_| s.read_lease().lapses()),
        }
    }

    /// Whether the lease of `ticket` has been held ever since.
    pub fn lease_kept(&self, ticket: u64) -> bool {
        match self.cluster.get() {
            None => true,
            Some(s) => s.read_lease().current() && s.read_lease().lapses() == ticket,
        }
    }

    /// Whether this host holds its read lease now (always, without a
    /// ring): a change is sent to the replicas only then.
    pub(super) fn lease_held(&self) -> bool {
        self.cluster.get().is_none_or(|s| s.read_lease().current())
    }

    pub fn cluster(&self) -> Option<&Arc<SharedStore>> {
        self.cluster.get()
    }

    fn replica_ids(&self) -> Vec<ReplicaId> {
        self.replicas.iter().map(|r| r.id).collect()
    }

    /// Follows the other hosts' views and renews the read lease, every
    /// `interval` (at most a third of the lease), forever.
    pub fn watch_cluster(self: Arc<Self>, interval: Duration) {
        let Some(shared) = self.cluster.get().cloned() else {
            return;
        };
        let every = interval.min(shared.lease_term() / 3);
        loop {
            std::thread::sleep(every);
            self.renew_read_lease(&shared);
        }
    }

    /// `fanout::run`, except that with a ring the replicas another host
    /// copies into are sent the change only after the others answered: a
    /// change then reaches such a replica after it reached the copy's
    /// source, and the copy, which reads each chunk's source again after
    /// writing it (`CopyControl::recheck_source`), never leaves old bytes
    /// over it (DESIGN.md section 7, "Writes beside another host's
    /// resync").
    pub(super) fn fan_out<T, F>(
        &self,
        targets: &[usize],
        spread: crate::fs::fanout::Spread,
        f: F,
    ) -> Vec<(usize, Result<T>)>
    where
        T: Send + 'static,
        F: Fn(&Replica) -> Result<T> + Send + Sync + 'static,
    {
        use crate::fs::fanout;
        let timeout = self.opts.replica_timeout;
        if self.cluster.get().is_none() {
            return fanout::run(&self.replicas, targets, timeout, spread, f);
        }
        // Fair: a drain waiting in `apply_views` holds new fan-outs back.
        let _gate = self.fanout_gate.read();
        let (first, last): (Vec<usize>, Vec<usize>) = targets
            .iter()
            .partition(|&&i| !self.replicas[i].copied_elsewhere.load(Ordering::Acquire));
        if first.is_empty() || last.is_empty() {
            return fanout::run(&self.replicas, targets, timeout, spread, f);
        }
        let f = Arc::new(f);
        let g = f.clone();
        let mut out = fanout::run(&self.replicas, &first, timeout, spread, move |r| g(r));
        // A replica failure (a timeout: the call may still land) in the
        // first round: the others are not sent the change; they follow,
        // answering EAGAIN, so they are marked and the change is not
        // acknowledged through them alone (the copy's source may lack it).
        if out
            .iter()
            .any(|(_, r)| r.as_ref().err().is_some_and(|e| e.is_replica_failure()))
        {
            out.extend(last.iter().map(|&i| (i, Err(Errno(libc::EAGAIN)))));
        } else {
            out.extend(fanout::run(
                &self.replicas,
                &last,
                timeout,
                spread,
                move |r| f(r),
            ));
        }
        out.sort_by_key(|(i, _)| *i);
        out
    }

    /// Excludes from reads every replica another host sees out of sync,
    /// and orders changes to those another host copies into (`fan_out`).
    fn apply_views(&self) {
        let Some(shared) = self.cluster.get() else {
            return;
        };
        let mut newly_copied = false;
        for r in self.replicas.iter() {
            let stale = shared.stale_elsewhere(&r.id);
            let copied = stale
                .iter()
                .any(|(_, v)| v.state == crate::meta::ReplicaState::Resyncing.to_string());
            let was_copied = r.copied_elsewhere.swap(copied, Ordering::AcqRel);
            newly_copied |= copied && !was_copied;
            let was = r.stale_elsewhere.swap(!stale.is_empty(), Ordering::AcqRel);
            if !stale.is_empty() && !was {
                let (host, view) = &stale[0];
                tracing::warn!(
                    "replica {} is {} for host {host} ({}): not read here until it is resynced",
                    r.spec.path.display(),
                    view.state,
                    view.cause
                );
            } else if stale.is_empty() && was {
                tracing::info!(
                    "replica {} is in sync for every host again",
                    r.spec.path.display()
                );
            }
        }
        if newly_copied {
            // Changes sent in parallel before this host knew: done before
            // this returns (and the nudge that told it is confirmed).
            drop(self.fanout_gate.write());
        }
    }

    /// Marks replica `i` as leaving service until the returned guard is
    /// dropped (taken before its state changes, dropped once the change is
    /// published to the ring and the other hosts' read leases on it are
    /// revoked). `None` without a ring.
    pub(super) fn leaving(&self, i: usize) -> Option<Leaving<'_>> {
        self.cluster.get()?;
        self.replicas[i].leaving.fetch_add(1, Ordering::SeqCst);
        Some(Leaving { fs: self, i })
    }

    /// Before a change that missed the replicas `missed` is acknowledged:
    /// waits until no other host may read any of them (their leaving is
    /// published and every other host's read lease on them revoked or run
    /// out, DESIGN.md section 7, "Read leases"). EIO if that cannot be
    /// made sure of (this host is cut off from the majority of the ring):
    /// the change reached the other replicas but is not acknowledged, as
    /// another host may read the replica that missed it.
    pub(super) fn await_left(&self, missed: &[usize]) -> Result<()> {
        let Some(c) = self.cluster.get() else {
            return Ok(());
        };
        // Its ledger is written to the replicas in the same change. One
        // bound for the whole wait, however many replicas it missed.
        let deadline = std::time::Instant::now() + c.revoke_bound() + self.opts.replica_timeout * 2;
        for &i in missed {
            let r = &self.replicas[i];
            if r.leaving.load(Ordering::SeqCst) > 0 {
                let mut g = self.left.0.lock();
                while r.leaving.load(Ordering::SeqCst) > 0 {
                    if self.left.1.wait_until(&mut g, deadline).timed_out() {
                        tracing::warn!(
                            "replica {}: its failure is still being published to the other hosts; a write that missed it answers EIO",
                            r.spec.path.display()
                        );
                        return Err(Errno::EIO);
                    }
                }
            }
            if !c.is_settled(&r.id) {
                return Err(Errno::EIO);
            }
        }
        Ok(())
    }

    /// Publishes again, on a thread of its own (revoking the others'
    /// leases may take a term, and this host's own renewals must go on),
    /// the views taking a replica out of service that could not be
    /// settled (this host was cut off): once they are, writes that miss
    /// those replicas are acknowledged again.
    fn settle_views(self: &Arc<Self>) {
        let Some(shared) = self.cluster.get().cloned() else {
            return;
        };
        if shared.unsettled().is_empty() || self.settling_views.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("settle-views".into())
            .spawn(move || {
                for id in shared.unsettled() {
                    let _ = me.republish_unless_busy(&shared, &id);
                }
                me.settling_views.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.settling_views.store(false, Ordering::Release);
        }
    }

    /// Publishes replica `id`'s record again (`republish`) unless a state
    /// change of it is being recorded now (which publishes it anyway).
    /// This host's own view of a replica is published again when the ring
    /// does not hold what this host has: one another host wrote in its
    /// name (`vouch_for`, while it was taken for dead) that says otherwise
    /// than its own state, or an unsettled one.
    fn republish_unless_busy(&self, shared: &SharedStore, id: &ReplicaId) -> bool {
        let Some(r) = self.replicas.iter().find(|r| r.id == *id) else {
            return true;
        };
        let Some(_recording) = r.recording.try_lock() else {
            return false;
        };
        self.publish_record(shared, r.index);
        true
    }

    /// Tells the other hosts that replica `i`, in sync here, now misses
    /// paths this host will copy (its first missed mark): published as
    /// resyncing until they are copied (`SharedStore::set_behind`), so that
    /// no host reads it meanwhile (a mark is local to this host).
    pub(super) fn mark_behind(&self, i: usize) {
        let Some(shared) = self.cluster.get() else {
            return;
        };
        let r = &self.replicas[i];
        if shared.set_behind(&r.id, true) {
            self.republish(shared, i);
        }
    }

    /// Replica `i`'s missed paths are copied: published in sync again
    /// (checked again under its `recording` lock, which a new first mark's
    /// `mark_behind` waits for: it then publishes it behind again).
    pub(super) fn clear_behind(&self, i: usize) {
        let Some(shared) = self.cluster.get() else {
            return;
        };
        let r = &self.replicas[i];
        if !shared.is_behind(&r.id) {
            return;
        }
        let _recording = r.recording.lock();
        if self.marks.has_stale(i) || !shared.set_behind(&r.id, false) {
            return;
        }
        self.publish_record(shared, i);
    }

    /// Whether the resync may copy into replica `i` now: with a ring, once
    /// the other hosts know it is copied into (its resyncing or behind view
    /// is settled), so that their changes reach it after its source.
    pub(super) fn may_copy_into(&self, i: usize) -> bool {
        let Some(shared) = self.cluster.get() else {
            return true;
        };
        let r = &self.replicas[i];
        // A state change being published: wait for it.
        drop(r.recording.lock());
        if r.state() == crate::replica::State::InSync && !shared.is_behind(&r.id) {
            // Marks found at start, or made before a ring: say so first.
            self.mark_behind(i);
            return false;
        }
        r.leaving.load(Ordering::SeqCst) == 0 && shared.is_settled(&r.id)
    }

    /// Publishes replica `i`'s record again, under its `recording` lock
    /// (as `fail` does), waited for by the writes that miss it meanwhile.
    fn republish(&self, shared: &SharedStore, i: usize) {
        let _recording = self.replicas[i].recording.lock();
        self.publish_record(shared, i);
    }

    /// Publishes replica `i`'s record as this host's store has it now;
    /// the caller holds its `recording` lock. Writes that miss it wait
    /// meanwhile (`Leaving`).
    fn publish_record(&self, shared: &SharedStore, i: usize) {
        let _leaving = self.leaving(i);
        if let Ok(Some(rec)) = crate::meta::MetaStore::get_replica(shared, &self.replicas[i].id) {
            shared.publish(&rec);
        }
    }

    /// Tells the other hosts that this host changed `paths`, missing the
    /// replicas `missed`, and whether it acknowledged the change.
    pub(super) fn record_write(&self, paths: &[RelPath], missed: &[usize], acked: bool) {
        let Some(shared) = self.cluster.get() else {
            return;
        };
        let ids: Vec<ReplicaId> = missed.iter().map(|&i| self.replicas[i].id).collect();
        for p in paths {
            shared.record_write(p.as_bytes(), &ids, acked);
        }
    }

    /// Takes or renews the resync lease; true if this host may resync.
    pub(super) fn resync_lease(&self) -> bool {
        match self.cluster.get() {
            None => true,
            Some(s) => s.take_lease(LEASE),
        }
    }

    /// Renews the lease every third of its term while the returned guard
    /// lives (a full compare or one big file can outlast a term); if a
    /// renewal fails, cancels the copies of `ctl`, so this host stops
    /// before another takes over.
    pub(super) fn renew_lease_while(&self, ctl: &Arc<CopyControl>) -> Option<LeaseRenewer> {
        let shared = self.cluster.get()?.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, ctl) = (stop.clone(), ctl.clone());
        let handle = std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                let step = Duration::from_millis(100);
                let mut waited = Duration::ZERO;
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(step);
                    waited += step;
                    // Over by this host's own clock (a renewal slow to
                    // return): the copies stop before another host may
                    // begin.
                    if !shared.resync_lease_current() {
                        tracing::warn!("ring: the resync lease ran out; stopping the resync");
                        ctl.cancel();
                        return;
                    }
                    if waited < LEASE / 3 {
                        continue;
                    }
                    waited = Duration::ZERO;
                    if !shared.take_lease(LEASE) {
                        tracing::warn!("ring: cannot renew the resync lease; stopping the resync");
                        ctl.cancel();
                        return;
                    }
                }
            })
            .ok()?;
        Some(LeaseRenewer {
            stop,
            handle: Some(handle),
        })
    }

    pub(super) fn end_resync_lease(&self) {
        if let Some(s) = self.cluster.get() {
            s.release_lease();
        }
    }

    /// Replicas in sync here that another host, now gone, left out of sync:
    /// this host resyncs them for it (a full compare: that host's marks are
    /// its own).
    pub(super) fn orphaned_by_dead_hosts(&self) -> Vec<(usize, Vec<String>)> {
        let Some(shared) = self.cluster.get() else {
            return Vec::new();
        };
        let stale: Vec<(usize, Vec<String>)> = self
            .replicas
            .iter()
            .filter(|r| r.state() == crate::replica::State::InSync)
            .map(|r| {
                // A replica another host's operator disabled is not
                // declared in sync in that host's name.
                let hosts = shared
                    .stale_elsewhere(&r.id)
                    .into_iter()
                    .filter(|(_, v)| v.state != crate::meta::ReplicaState::Disabled.to_string())
                    .map(|(h, _)| h)
                    .collect();
                (r.index, hosts)
            })
            .filter(|(_, hosts): &(usize, Vec<String>)| !hosts.is_empty())
            .collect();
        if stale.is_empty() {
            return Vec::new();
        }
        let dead = shared.dead_hosts();
        stale
            .into_iter()
            // Only with another replica to copy from that no host doubts.
            .filter(|(i, hosts)| {
                hosts.iter().all(|h| dead.contains(h)) && self.readers().iter().any(|&s| s != *i)
            })
            .collect()
    }

    /// Resyncs replica `i` for the `hosts` that left it out of sync and are
    /// gone, then vouches for it in their name.
    pub(super) fn adopt(
        &self,
        i: usize,
        hosts: &[String],
        throttle: &Arc<crate::resync::Throttle>,
    ) {
        let r = &self.replicas[i];
        let Some(shared) = self.cluster.get() else {
            return;
        };
        for h in hosts {
            if !shared.fence(h) {
                return;
            }
            self.took_over
                .lock()
                .entry(h.clone())
                .or_default()
                .insert(i);
        }
        tracing::info!(
            "replica {} was left out of sync by {hosts:?}, which are gone; resyncing it for them",
            r.spec.path.display()
        );
        r.needs_full.store(true, Ordering::Relaxed);
        use crate::replica::State;
        self.change_state(
            i,
            &[State::InSync, State::Failed],
            State::Resyncing,
            format!("resyncing for {hosts:?}"),
        );
        // The replica itself is the one excluded: read from the others.
        r.stale_elsewhere.store(true, Ordering::Release);
        self.resync(i, throttle);
        if r.state() == crate::replica::State::InSync
            && let Some(s) = self.cluster.get()
        {
            for h in hosts {
                s.vouch_for(&r.id, h);
            }
            s.refresh(&self.replica_ids());
            self.apply_views();
        }
    }

    /// Lifts this host's fence on each host it took for dead once that
    /// host answers again and the replicas changed in its name are in
    /// sync and unmarked (DESIGN.md section 7, "Dead hosts").
    pub(super) fn lift_fences(&self) {
        let Some(shared) = self.cluster.get() else {
            return;
        };
        use crate::replica::State;
        for h in shared.fenced_by_me() {
            let touched = self.took_over.lock().get(&h).cloned();
            let done = touched.is_none_or(|t| {
                t.iter().all(|&i| {
                    let r = &self.replicas[i];
                    r.state() == State::InSync && !self.marks.has_stale(i)
                        || r.state() == State::Failed
                        || r.state() == State::Disabled
                })
            });
            if done && shared.lift_fence(&h) {
                self.took_over.lock().remove(&h);
            }
        }
    }

    /// Paths a host that died was changing (its published intent marks)
    /// may differ between replicas: every replica but the first serving one
    /// gets them as missed marks, and the resync heals them.
    pub(super) fn heal_pending_of_dead_hosts(&self) {
        let Some(shared) = self.cluster.get() else {
            return;
        };
        for h in shared.dead_hosts() {
            let Ok(p) = shared.pending_of(&h) else {
                continue;
            };
            if p.paths.is_empty() && !p.overflow {
                continue;
            }
            if !self.resync_lease() {
                return;
            }
            if !shared.fence(&h) {
                self.end_resync_lease();
                continue;
            }
            let Some(&first) = self.readers().first() else {
                self.end_resync_lease();
                return;
            };
            tracing::warn!(
                "host {h} died while changing {} paths; healing them",
                if p.overflow {
                    "too many to list".to_string()
                } else {
                    p.paths.len().to_string()
                }
            );
            for r in self
                .replicas
                .iter()
                .filter(|r| r.index != first && r.is_writable())
            {
                if p.overflow {
                    r.needs_full.store(true, Ordering::Relaxed);
                } else {
                    for path in &p.paths {
                        if let Err(e) = self.marks.store.mark_missed(path, &r.id) {
                            tracing::error!("metadata store: {e}");
                            r.needs_full.store(true, Ordering::Relaxed);
                        }
                    }
                }
                self.took_over
                    .lock()
                    .entry(h.clone())
                    .or_default()
                    .insert(r.index);
                self.change_state(
                    r.index,
                    &[crate::replica::State::InSync],
                    crate::replica::State::Resyncing,
                    format!("healing paths host {h} was changing when it died"),
                );
            }
            shared.healed_pending_of(&h);
            self.end_resync_lease();
        }
    }

    /// Before the resync copies `p` from `src` to `dst`: if two hosts
    /// changed `p` while each reached a disjoint set of replicas, resolve
    /// the conflict. Returns true if `p` was settled here (the caller skips
    /// its own copy).
    pub(super) fn settle_conflict(
        &self,
        p: &RelPath,
        src: &Replica,
        dst: &Replica,
        ctl: &CopyControl,
    ) -> Result<bool> {
        let Some(shared) = self.cluster.get() else {
            return Ok(false);
        };
        let writes = shared.path_writes(p.as_bytes());
        if writes.is_empty() {
            return Ok(false);
        }
        let ids = self.replica_ids();
        if disjoint_pair(&writes, &ids).is_none() {
            shared.path_settled(p.as_bytes());
            return Ok(false);
        }
        // Every recorded version, where it is and how new: a version its
        // host may have acknowledged wins over one it answered EIO for (it
        // was cut off from the ring); then the newest (equal times: the
        // larger host name). Every version none of whose replicas the
        // winner reached is kept as a copy (with three hosts on three
        // disjoint replicas, two copies).
        // Each host's latest record says whether its version on disk was
        // acknowledged.
        let mut latest: std::collections::BTreeMap<&str, &PathWrite> = Default::default();
        for w in &writes {
            let e = latest.entry(w.host.as_str()).or_insert(w);
            if w.n > e.n {
                *e = w;
            }
        }
        let acked: BTreeSet<&str> = latest
            .values()
            .filter(|w| w.acked)
            .map(|w| w.host.as_str())
            .collect();
        let writes: Vec<PathWrite> = latest.values().map(|w| (*w).clone()).collect();
        let mut versions: Vec<(bool, i128, String, usize, BTreeSet<String>)> = Vec::new();
        for w in &writes {
            let Some(at) = self.holder(w) else {
                // A replica of that version is out of reach: not yet.
                return Err(Errno::EIO);
            };
            versions.push((
                acked.contains(w.host.as_str()),
                mtime(&self.replicas[at], p),
                w.host.clone(),
                at,
                reached(w, &ids),
            ));
        }
        versions.sort();
        let Some((_, win_time, win_host, win, win_reached)) = versions.last().cloned() else {
            return Ok(false);
        };
        let policy = self.opts.conflict_policy;
        let hosts: BTreeSet<&str> = versions.iter().map(|v| v.2.as_str()).collect();
        tracing::warn!(
            "conflict on {p}: hosts {hosts:?} changed it on different replicas; policy {policy:?}"
        );
        let mut copies: Vec<(usize, String, i128)> = versions
            .iter()
            .filter(|(_, _, host, _, r)| *host != win_host && r.is_disjoint(&win_reached))
            .map(|(_, time, host, at, _)| (*at, host.clone(), *time))
            .collect();
        copies.dedup_by(|x, y| x.1 == y.1 && x.2 == y.2);
        if policy != ConflictPolicy::Newest {
            copies.push((win, win_host.clone(), win_time));
        }
        for (from, host, time) in &copies {
            // A copy of the version on `from`, then on every replica. A
            // retry (after a crash or an error halfway) finds its own copy
            // and takes it; another file of that name is left alone.
            let mut copy = None;
            for attempt in 0..10 {
                let name = conflict_name(p, host, *time, attempt)?;
                match self.copy_within(&self.replicas[*from], p, &name) {
                    Ok(true) => {
                        copy = Some(name);
                        break;
                    }
                    Ok(false) => break,
                    Err(Errno::EEXIST) if same_file_content(&self.replicas[*from], p, &name) => {
                        copy = Some(name);
                        break;
                    }
                    Err(Errno::EEXIST) => continue,
                    Err(e) => return Err(e),
                }
            }
            let Some(copy) = copy else {
                tracing::warn!(
                    "conflict on {p}: {host}'s version is not a regular file; not copied"
                );
                continue;
            };
            for r in self
                .replicas
                .iter()
                .filter(|r| r.index != *from && r.is_writable())
            {
                sync_path(&self.replicas[*from], r, &copy, SyncMode::Entries, ctl)?;
            }
            shared.record_conflict(ConflictRecord {
                path: p.to_string(),
                copy: copy.to_string(),
                host: host.clone(),
                policy: format!("{policy:?}").to_lowercase(),
                at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            });
            tracing::warn!("conflict on {p}: {host}'s version kept as {copy}");
        }
        // What stays on the path: the newer version (the source's under
        // `manual`, for the operator to compare with the copies).
        let keep = if policy == ConflictPolicy::Manual {
            src.index
        } else {
            win
        };
        for r in self
            .replicas
            .iter()
            .filter(|r| r.index != keep && r.is_writable())
        {
            sync_path(&self.replicas[keep], r, p, SyncMode::Entries, ctl)?;
        }
        let _ = dst;
        shared.path_settled(p.as_bytes());
        Ok(true)
    }

    /// The first replica that `w` reached and this host can write.
    fn holder(&self, w: &PathWrite) -> Option<usize> {
        self.replicas
            .iter()
            .find(|r| !w.missed.contains(&r.id.to_string()) && r.is_writable())
            .map(|r| r.index)
    }

    /// Copies `p` to `copy` inside one replica: a regular file's bytes and
    /// attributes; other kinds of entry are hard-linked under the new name.
    /// Copies `p` to `copy` inside one replica (a regular file's bytes and
    /// attributes); false for other kinds of entry, which are not copied
    /// (a directory's entries are paths of their own).
    fn copy_within(&self, r: &Replica, p: &RelPath, copy: &RelPath) -> Result<bool> {
        let (parent, name) = p.split().ok_or(Errno::EINVAL)?;
        let (_, copy_name) = copy.split().ok_or(Errno::EINVAL)?;
        let dir = r.dir(&parent)?;
        let st = ops::stat_at(ops::fd_of(&dir), name.as_c())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(false);
        }
        let from = ops::openat(ops::fd_of(&dir), name.as_c(), libc::O_RDONLY, 0)?;
        let to = ops::openat(
            ops::fd_of(&dir),
            copy_name.as_c(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )?;
        let mut left = st.st_size as u64;
        let mut off = 0u64;
        while left > 0 {
            let chunk = ops::pread_full(ops::fd_of(&from), left.min(1 << 20) as usize, off)?;
            if chunk.is_empty() {
                break;
            }
            ops::pwrite_all(ops::fd_of(&to), &chunk, off)?;
            off += chunk.len() as u64;
            left = left.saturating_sub(chunk.len() as u64);
        }
        // Owner, mode, xattrs (ACLs) and times, as a resync copies them.
        crate::resync::attrs::copy_attrs(
            ops::At::Fd(ops::fd_of(&from)),
            &st,
            ops::At::Fd(ops::fd_of(&to)),
        )?;
        Ok(true)
    }

    /// Every conflict copy any host sharing these replicas made.
    pub fn conflicts(&self) -> std::result::Result<Vec<ConflictRecord>, String> {
        match self.cluster.get() {
            Some(s) => s.conflicts(),
            None => Err("this mount has no [ring]: conflicts need several hosts".into()),
        }
    }
}

/// A state change of a replica that takes it out of service, under way
/// (`ChironFs::leaving`); wakes the writes waiting for it when dropped.
pub(super) struct Leaving<'a> {
    fs: &'a ChironFs,
    i: usize,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.fs.replicas[self.i]
            .leaving
            .fetch_sub(1, Ordering::SeqCst);
        let _g = self.fs.left.0.lock();
        self.fs.left.1.notify_all();
    }
}

/// Stops the lease renewal when dropped.
pub(super) struct LeaseRenewer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LeaseRenewer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The replicas a recorded write reached.
fn reached(w: &PathWrite, all: &[ReplicaId]) -> BTreeSet<String> {
    all.iter()
        .map(ToString::to_string)
        .filter(|id| !w.missed.contains(id))
        .collect()
}

/// Two recorded writes by different hosts whose written replica sets are
/// disjoint (each missed everything the other reached).
fn disjoint_pair(writes: &[PathWrite], all: &[ReplicaId]) -> Option<(PathWrite, PathWrite)> {
    for (i, a) in writes.iter().enumerate() {
        for b in &writes[i + 1..] {
            if a.host != b.host && reached(a, all).is_disjoint(&reached(b, all)) {
                return Some((a.clone(), b.clone()));
            }
        }
    }
    None
}

/// Whether `a` and `b` in replica `r` are regular files with the same bytes.
fn same_file_content(r: &Replica, a: &RelPath, b: &RelPath) -> bool {
    let open = |p: &RelPath| -> Result<(std::os::fd::OwnedFd, ops::Stat)> {
        let (parent, name) = p.split().ok_or(Errno::EINVAL)?;
        let dir = r.dir(&parent)?;
        let fd = ops::openat(ops::fd_of(&dir), name.as_c(), libc::O_RDONLY, 0)?;
        let st = ops::fstat(ops::fd_of(&fd))?;
        Ok((fd, st))
    };
    let (Ok((fa, sa)), Ok((fb, sb))) = (open(a), open(b)) else {
        return false;
    };
    if sa.st_mode & libc::S_IFMT != libc::S_IFREG || sa.st_size != sb.st_size {
        return false;
    }
    let mut off = 0u64;
    while off < sa.st_size as u64 {
        let want = (sa.st_size as u64 - off).min(1 << 20) as usize;
        match (
            ops::pread_full(ops::fd_of(&fa), want, off),
            ops::pread_full(ops::fd_of(&fb), want, off),
        ) {
            (Ok(x), Ok(y)) if x == y && !x.is_empty() => off += x.len() as u64,
            _ => return false,
        }
    }
    true
}

fn mtime(r: &Replica, p: &RelPath) -> i128 {
    let Some((parent, name)) = p.split() else {
        return 0;
    };
    r.dir(&parent)
        .and_then(|d| ops::stat_at(ops::fd_of(&d), name.as_c()))
        .map_or(0, |st| {
            st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128
        })
}

/// `NAME.chironfs-conflict-HOST-YYYYMMDDTHHMMSSZ` beside `p`.
fn conflict_name(p: &RelPath, host: &str, mtime_ns: i128, attempt: u32) -> Result<RelPath> {
    let (parent, name) = p.split().ok_or(Errno::EINVAL)?;
    let secs = (mtime_ns / 1_000_000_000) as i64;
    let stamp = utc_stamp(secs);
    let mut n = name.as_os().to_os_string();
    n.push(format!(".chironfs-conflict-{host}-{stamp}"));
    if attempt > 0 {
        n.push(format!("-{attempt}"));
    }
    Ok(parent.join(&crate::replica::Name::new(&n)?))
}

/// Seconds since the epoch as `YYYYMMDDTHHMMSSZ` (UTC).
fn utc_stamp(secs: i64) -> String {
    let (y, m, d, hh, mm, ss) = crate::clock::utc(secs);
    format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_798_329_600), "20261227T000000Z");
        assert_eq!(utc_stamp(951_782_400 + 3661), "20000229T010101Z");
    }

    #[test]
    fn only_disjoint_writes_by_two_hosts_conflict() {
        let (r1, r2) = (ReplicaId::random(), ReplicaId::random());
        let all = [r1, r2];
        let w = |h: &str, missed: &ReplicaId| PathWrite {
            host: h.into(),
            missed: vec![missed.to_string()],
            acked: true,
            n: 0,
        };
        assert!(disjoint_pair(&[w("a", &r2), w("b", &r1)], &all).is_some());
        assert!(disjoint_pair(&[w("a", &r2), w("b", &r2)], &all).is_none());
        assert!(disjoint_pair(&[w("a", &r2), w("a", &r1)], &all).is_none());
    }
}
