//! Binding the replicas named on the command line to the identities and
//! states the metadata store remembers (DESIGN.md sections 2 and 5).
//!
//! A replica is recognised by the UUID in its marker, never by its path. A
//! directory without a marker (an NFS mount that did not come up) or with
//! a foreign one is refused: it is never written or read, and the probe
//! only brings it back if the expected marker appears.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::SystemTime;

use crate::meta::{MetaStore, PreviousShutdown, ReplicaId, ReplicaRecord, ReplicaState};
use crate::replica::identity;

/// What one replica is bound to.
#[derive(Debug, Clone)]
pub struct Bound {
    pub id: ReplicaId,
    pub state: ReplicaState,
    /// Its marks cannot be trusted: compare it fully before trusting it.
    pub needs_full: bool,
}

fn record(
    id: ReplicaId,
    path: &std::path::Path,
    state: ReplicaState,
    cause: &str,
) -> ReplicaRecord {
    ReplicaRecord {
        id,
        path: path.to_path_buf(),
        state,
        since: SystemTime::now(),
        cause: cause.to_string(),
    }
}

/// Binds each (canonical path, root fd) and writes the outcome to the store.
pub fn bind(
    store: &dyn MetaStore,
    replicas: &[(PathBuf, &OwnedFd)],
    add: &[PathBuf],
    previous: PreviousShutdown,
) -> Result<Vec<Bound>, String> {
    let known = store
        .list_replicas()
        .map_err(|e| format!("metadata store: {e}"))?;
    let new_set = known.is_empty();
    let mut out: Vec<Bound> = Vec::new();
    let mut records: Vec<ReplicaRecord> = Vec::new();
    for (path, root) in replicas {
        let shown = path.display();
        let by_path = known.iter().find(|r| &r.path == path);
        let marker = identity::read(root.as_fd());
        let taken = |id: &ReplicaId| out.iter().any(|b| &b.id == id);
        let (bound, cause) = match marker {
            Ok(Some(id)) if !taken(&id) && known.iter().any(|r| r.id == id) => {
                let rec = known.iter().find(|r| r.id == id).cloned();
                let state = rec.as_ref().map_or(ReplicaState::Failed, |r| r.state);
                let cause = rec.map(|r| r.cause).unwrap_or_default();
                (
                    Bound {
                        id,
                        state,
                        needs_full: false,
                    },
                    cause,
                )
            }
            Ok(Some(id)) if !taken(&id) && new_set => (
                Bound {
                    id,
                    state: ReplicaState::InSync,
                    needs_full: false,
                },
                String::new(),
            ),
            Ok(None) if new_set || add.contains(path) => {
                let id = ReplicaId::random();
                identity::write(root.as_fd(), &id).map_err(|e| {
                    format!("replica '{shown}': cannot write its identity marker: {e}")
                })?;
                let state = if new_set {
                    ReplicaState::InSync
                } else {
                    ReplicaState::Resyncing
                };
                if !new_set {
                    tracing::info!("replica {shown} added as {id}: a full resync will fill it");
                }
                (
                    Bound {
                        id,
                        state,
                        needs_full: !new_set,
                    },
                    String::new(),
                )
            }
            other => {
                let why = match other {
                    Ok(None) => {
                        "has no identity marker (not mounted? use add_replica to add a new one)"
                            .to_string()
                    }
                    Ok(Some(id)) => format!(
                        "carries identity {id}, which is not one of this filesystem's replicas"
                    ),
                    Err(e) => format!("identity marker unreadable: {e}"),
                };
                tracing::error!(
                    "replica {shown} refused: it {why}; it is neither read nor written"
                );
                // Keep the identity it should have, so a probe can bring it
                // back once the right directory (marker) is there.
                let id = by_path.map_or_else(ReplicaId::random, |r| r.id);
                (
                    Bound {
                        id,
                        state: ReplicaState::Failed,
                        needs_full: false,
                    },
                    format!("refused: {why}"),
                )
            }
        };
        records.push(record(bound.id, path, bound.state, &cause));
        out.push(bound);
    }
    // Marks cannot vouch for the replicas after a machine crash: everything
    // but the first in-sync replica is compared. (A new store has no marks
    // to distrust: the replicas given at first use are taken as they are.)
    if previous == PreviousShutdown::Unknown && !new_set && out.len() > 1 {
        let mut first = true;
        for (b, rec) in out.iter_mut().zip(records.iter_mut()) {
            if b.state != ReplicaState::InSync {
                continue;
            }
            if first {
                first = false;
                continue;
            }
            b.state = ReplicaState::Resyncing;
            b.needs_full = true;
            rec.state = ReplicaState::Resyncing;
            rec.cause = "verification after an unclean shutdown".into();
        }
    }
    // After a daemon crash, paths with an intent mark may differ: every
    // replica but the first in-sync one missed them until healed.
    if previous == PreviousShutdown::DaemonCrash {
        let pending = store
            .pending()
            .map_err(|e| format!("metadata store: {e}"))?;
        if !pending.is_empty() {
            tracing::warn!(
                "{} paths were being changed when the daemon died; healing them",
                pending.len()
            );
            let mut first = true;
            for (b, rec) in out.iter_mut().zip(records.iter_mut()) {
                if first && b.state == ReplicaState::InSync {
                    first = false;
                    continue;
                }
                for p in &pending {
                    store
                        .mark_missed(p, &b.id)
                        .map_err(|e| format!("metadata store: {e}"))?;
                }
                if b.state == ReplicaState::InSync {
                    b.state = ReplicaState::Resyncing;
                    rec.state = ReplicaState::Resyncing;
                    rec.cause = "healing paths in flight when the daemon died".into();
                }
            }
            for p in &pending {
                store
                    .clear_pending(p)
                    .map_err(|e| format!("metadata store: {e}"))?;
            }
        }
    }
    for rec in &records {
        store
            .put_replica(rec)
            .map_err(|e| format!("metadata store: {e}"))?;
    }
    store.sync().map_err(|e| format!("metadata store: {e}"))?;
    Ok(out)
}
