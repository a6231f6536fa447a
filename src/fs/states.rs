//! Replica state changes (src/DESIGN.md section 2): every change is a
//! compare-and-swap on the replica's state, is written to the metadata
//! store, and, when a replica leaves or rejoins the in-sync set, to the
//! ledger on the replicas themselves (`replica::ledger`), before whatever
//! caused it is acknowledged.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::time::SystemTime;

use super::{ChironFs, fanout};
use crate::errno::{Errno, Result};
use crate::meta::{ReplicaRecord, ReplicaState};
use crate::replica::ledger::{self, Ledger};
use crate::replica::{RelPath, State};

impl ChironFs {
    /// Moves replica `i` from one of `from` to `to` (compare and swap: a
    /// change that came meanwhile is never overwritten), records it, and
    /// returns whether it moved.
    pub(super) fn change_state(&self, i: usize, from: &[State], to: State, cause: String) -> bool {
        let _recording = self.replicas[i].recording.lock();
        // Before the transition: a write that misses the replica from now
        // on waits until the other hosts stop reading it.
        let _leaving = (to != State::InSync).then(|| self.leaving(i));
        if !self.replicas[i].transition(from, to) {
            return false;
        }
        if !matches!(to, State::InSync | State::Resyncing) {
            self.forget_fds(i);
        }
        self.persist_state(i, to, cause);
        self.record_ledger();
        true
    }

    /// Whether `err`, returned by replica `i`, means the replica is
    /// unhealthy. ENOENT and ENOTDIR are normal answers, unless the replica
    /// itself has gone (a deleted or unmounted backing directory). The
    /// health check that ENOENT and ENOTDIR
    /// call for runs on a pooled replica's own threads, under
    /// `replica_timeout` (a hung one counts as failed): callers are FUSE
    /// threads, some holding a handle's gate or a path's lock.
    pub(super) fn is_failure(&self, i: usize, err: Errno) -> bool {
        err.is_replica_failure()
            || (matches!(err.0, libc::ENOENT | libc::ENOTDIR) && self.check_health(i).is_err())
    }

    /// `Replica::check_health` of replica `i`, on its own threads under
    /// `replica_timeout` when it is pooled (ETIMEDOUT if it hangs).
    pub(crate) fn check_health(&self, i: usize) -> Result<()> {
        if self.replicas[i].inline {
            return self.replicas[i].check_health();
        }
        self.on_replica(i, |r| r.check_health())
    }

    /// Takes replica `i` out of service (logged once) and records why.
    /// Returns once the failure is durable, whoever recorded it. An I/O
    /// error from a local filesystem may have cost the replica data it had
    /// acknowledged (a dying disk drops dirty pages; no mark says which):
    /// it is compared in full when it is back.
    pub(super) fn fail(&self, i: usize, op: &str, path: &RelPath, err: Errno) {
        let r = &self.replicas[i];
        let _recording = r.recording.lock();
        let _leaving = self.leaving(i);
        if !matches!(err.0, libc::ENOSPC | libc::EDQUOT | libc::ETIMEDOUT) && r.local_fs {
            r.needs_full
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if r.mark_failed(op, path, err) {
            // A copy to it stops at its next step (it may be the one hung).
            if let Some((_, ctl, _)) = self.running[i].lock().as_ref() {
                ctl.cancel();
            }
            self.forget_fds(i);
            self.persist_state(i, ReplicaState::Failed, format!("{op} {path}: {err}"));
            self.record_ledger();
        }
    }

    /// Writes replica `i`'s record with `state` to the store.
    pub fn persist_state(&self, i: usize, state: ReplicaState, cause: String) {
        let r = &self.replicas[i];
        let rec = ReplicaRecord {
            id: r.id,
            path: r.spec.path.clone(),
            state,
            since: SystemTime::now(),
            cause,
        };
        if let Err(e) = self
            .marks
            .store
            .put_replica(&rec)
            .and_then(|_| self.marks.store.sync())
        {
            tracing::error!(
                "metadata store: cannot record replica {} as {state}: {e}",
                r.id
            );
        }
    }

    /// Writes, durably, on every replica in service, which replicas are
    /// not in sync, with the next ledger generation. A replica that cannot
    /// take the write is failed, and the ledger is written again without it.
    pub(super) fn record_ledger(&self) {
        let mut generation = self.marks.ledger.lock();
        loop {
            *generation += 1;
            let record = std::sync::Arc::new(Ledger {
                generation: *generation,
                behind: self
                    .replicas
                    .iter()
                    .filter(|r| r.state() != State::InSync || self.marks.has_stale(r.index))
                    .map(|r| r.id)
                    .collect::<BTreeSet<_>>(),
            });
            let writer = self.opts.ledger_writer.clone();
            let targets = self.writers();
            let results = fanout::run(
                &self.replicas,
                &targets,
                self.opts.replica_timeout,
                fanout::Spread::Heavy,
                move |rep| ledger::write(rep.root().as_fd(), &writer, &record),
            );
            let mut again = false;
            for (i, res) in results {
                if let Err(e) = &res
                    && matches!(e.0, libc::ENOSPC | libc::EDQUOT)
                {
                    // A full disk is no reason to take a replica out: its
                    // older ledger still names fewer replicas current, and
                    // a mount reading it compares them.
                    tracing::warn!(
                        "replica {}: cannot write its ledger: {e}",
                        self.replicas[i].spec.path.display()
                    );
                    continue;
                }
                // Before the transition, as in `fail`: a change that misses
                // it from now on waits until the other hosts stop reading it.
                let _leaving = res.is_err().then(|| self.leaving(i));
                if let Err(e) = res
                    && self.replicas[i].mark_failed("ledger", &RelPath::root(), e)
                {
                    // As `fail` does (whose lock may be held here): a copy
                    // to it stops, opens let go of their fds on it.
                    if let Some((_, ctl, _)) = self.running[i].lock().as_ref() {
                        ctl.cancel();
                    }
                    self.forget_fds(i);
                    self.persist_state(i, ReplicaState::Failed, format!("ledger: {e}"));
                    again = true;
                }
            }
            if !again {
                return;
            }
        }
    }
}
