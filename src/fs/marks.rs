//! What the metadata store learns from the write path: intent marks before
//! a mutation, missed marks for replicas that did not get it, and replica
//! state changes (DESIGN.md section 5).
//!
//! Intent marks are counted in memory per path, so the store sees one mark
//! per path however many operations or open-for-write sessions overlap:
//! `begin` writes it on the first, `end` clears it after the last.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::ChironFs;
use crate::errno::Errno;
use crate::meta::{MetaStore, ReplicaRecord, ReplicaState};
use crate::replica::RelPath;

pub struct Marks {
    pub store: Arc<dyn MetaStore>,
    pending: Mutex<HashMap<RelPath, u32>>,
}

impl Marks {
    pub fn new(store: Arc<dyn MetaStore>) -> Marks {
        Marks {
            store,
            pending: Mutex::new(HashMap::new()),
        }
    }
}

/// Namespace operations change their parent directory's entries, which is
/// what a resync of the parent reconciles.
fn is_namespace_op(op: &str) -> bool {
    matches!(
        op,
        "create" | "mkdir" | "mknod" | "symlink" | "link" | "unlink" | "rmdir" | "rename"
    )
}

/// The paths an operation on `path` must mark.
pub(super) fn marked_paths(op: &str, path: &RelPath) -> Vec<RelPath> {
    if is_namespace_op(op) {
        vec![path.parent(), path.clone()]
    } else {
        vec![path.clone()]
    }
}

impl ChironFs {
    /// Records intent for `paths` before a mutation is issued, and a missed
    /// mark for every replica that will not receive it. An error here
    /// fails the operation (EIO): a mutation the store cannot vouch for is
    /// not issued.
    pub(super) fn begin(&self, op: &str, paths: &[RelPath]) -> crate::errno::Result<()> {
        for p in paths {
            let first = {
                let mut pending = self.marks.pending.lock();
                let n = pending.entry(p.clone()).or_insert(0);
                *n += 1;
                *n == 1
            };
            if first && let Err(e) = self.marks.store.mark_pending(p.as_bytes()) {
                tracing::error!("metadata store: cannot record intent for {op} {p}: {e}");
                self.end(std::slice::from_ref(p), &[]);
                return Err(Errno::EIO);
            }
        }
        for r in self.replicas.iter().filter(|r| !r.is_writable()) {
            for p in paths {
                self.record_missed(p, r.index);
            }
        }
        Ok(())
    }

    /// The mutation is done: replicas in `failed` missed it; the intent for
    /// `paths` is cleared once no other operation holds it.
    pub(super) fn end(&self, paths: &[RelPath], failed: &[usize]) {
        for p in paths {
            for &i in failed {
                self.record_missed(p, i);
            }
            let last = {
                let mut pending = self.marks.pending.lock();
                match pending.get_mut(p) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    Some(_) => {
                        pending.remove(p);
                        true
                    }
                    None => false,
                }
            };
            if last && let Err(e) = self.marks.store.clear_pending(p.as_bytes()) {
                tracing::warn!("metadata store: cannot clear intent for {p}: {e}");
            }
        }
    }

    fn record_missed(&self, p: &RelPath, replica: usize) {
        let id = self.replicas[replica].id;
        if let Err(e) = self.marks.store.mark_missed(p.as_bytes(), &id) {
            // The replica cannot be trusted to be complete any more.
            tracing::error!("metadata store: cannot record that replica {id} missed {p}: {e}");
            self.replicas[replica]
                .needs_full
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Takes replica `i` out of service (logged once) and records why.
    pub(super) fn fail(&self, i: usize, op: &str, path: &RelPath, err: Errno) {
        let r = &self.replicas[i];
        if r.mark_failed(op, path, err) {
            self.persist_state(i, ReplicaState::Failed, format!("{op} {path}: {err}"));
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

    /// Makes every mark written so far durable (the application fsynced).
    pub(super) fn sync_marks(&self) -> crate::errno::Result<()> {
        self.marks.store.sync().map_err(|e| {
            tracing::error!("metadata store: sync failed: {e}");
            Errno::EIO
        })
    }
}
