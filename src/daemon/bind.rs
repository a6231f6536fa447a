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
use crate::replica::ledger::{self, Ledger};

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

/// How long a fresh store waits for the markers of a set another host is
/// creating (see `bind`).
const MARKER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Binds each (canonical path, root fd), reconciles the store with the
/// ledgers found on the replicas (`replica::ledger`), writes the outcome
/// to the store and a new ledger generation to the replicas in service.
/// Returns the bindings and that generation.
pub fn bind(
    store: &dyn MetaStore,
    replicas: &[(PathBuf, &OwnedFd)],
    add: &[PathBuf],
    previous: PreviousShutdown,
    writer: &str,
) -> Result<(Vec<Bound>, u64), String> {
    let known = store
        .list_replicas()
        .map_err(|e| format!("metadata store: {e}"))?;
    // A new store, and no replica carries a marker: a set never mounted.
    // A new store beside replicas with markers (a fresh state_dir) binds
    // them by their markers and asks their ledgers who is behind; a
    // directory without a marker among them is refused (an NFS mount that
    // did not come up), unless it is named by add_replica.
    let fresh = known.is_empty();
    let marked = |root: &OwnedFd| matches!(identity::read(root.as_fd()), Ok(Some(_)));
    let markers_seen = replicas.iter().any(|(_, root)| marked(root));
    if fresh && markers_seen {
        // Some markers but not all: another host may be giving this fresh
        // set its identities right now (two hosts mounting it at once).
        // Wait a little for the rest before taking a directory without
        // one for a mount that did not come up.
        let deadline = std::time::Instant::now() + MARKER_WAIT;
        while replicas
            .iter()
            .any(|(p, root)| !add.contains(p) && !marked(root))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let new_set = fresh && !markers_seen;
    let mut out: Vec<Bound> = Vec::new();
    let mut records: Vec<ReplicaRecord> = Vec::new();
    // Replicas whose marker is theirs (refused ones are neither read nor written).
    let mut own: Vec<bool> = Vec::new();
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
            Ok(Some(id)) if !taken(&id) && fresh => (
                Bound {
                    id,
                    state: ReplicaState::InSync,
                    needs_full: false,
                },
                String::new(),
            ),
            Ok(None) if new_set || add.contains(path) => {
                // Another host mounting the same fresh set at this moment
                // may give it its identity first: then that one is kept.
                let id = identity::create(root.as_fd(), &ReplicaId::random()).map_err(|e| {
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
                // back once the right directory (marker) is there; its ledger
                // was not read, so it is compared in full then.
                let id = by_path.map_or_else(ReplicaId::random, |r| r.id);
                (
                    Bound {
                        id,
                        state: ReplicaState::Failed,
                        needs_full: true,
                    },
                    format!("refused: {why}"),
                )
            }
        };
        own.push(!cause.starts_with("refused: "));
        records.push(record(bound.id, path, bound.state, &cause));
        out.push(bound);
    }
    // An in-sync replica with missed marks (recorded while it was in sync,
    // which only the last session's memory kept from its reads) is behind.
    for (k, (b, rec)) in out.iter_mut().zip(records.iter_mut()).enumerate() {
        if own[k]
            && b.state == ReplicaState::InSync
            && store.missed(&b.id, None, 1).map_or(true, |m| !m.is_empty())
        {
            b.state = ReplicaState::Resyncing;
            rec.state = ReplicaState::Resyncing;
            rec.cause = "missed changes while in sync".into();
        }
    }
    let generation = reconcile_ledgers(replicas, &own, fresh, &mut out, &mut records)?;
    // Marks cannot vouch for the replicas after a machine crash: everything
    // but the first in-sync replica is compared. (A new store has no marks
    // to distrust: the replicas given at first use are taken as they are.)
    // Every replica but the first in sync is compared, whatever its state:
    // the marks of a failed or resyncing one may be incomplete too.
    // (A new store has no marks to distrust: the ledgers spoke above.)
    if previous == PreviousShutdown::Unknown && !fresh && out.len() > 1 {
        let first = out.iter().position(|b| b.state == ReplicaState::InSync);
        for (k, (b, rec)) in out.iter_mut().zip(records.iter_mut()).enumerate() {
            if Some(k) == first || !own[k] {
                continue;
            }
            b.needs_full = true;
            if b.state == ReplicaState::InSync {
                b.state = ReplicaState::Resyncing;
                rec.state = ReplicaState::Resyncing;
                rec.cause = "verification after an unclean shutdown".into();
            }
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
    // The ledger goes first: a replica that cannot take it is failed (its
    // older ledger, or none, makes the next mount compare it).
    let generation = generation + 1;
    let ledger = Ledger {
        generation,
        behind: out
            .iter()
            .filter(|b| b.state != ReplicaState::InSync)
            .map(|b| b.id)
            .collect(),
    };
    for (k, ((path, root), (b, rec))) in replicas
        .iter()
        .zip(out.iter_mut().zip(records.iter_mut()))
        .enumerate()
    {
        if own[k]
            && matches!(b.state, ReplicaState::InSync | ReplicaState::Resyncing)
            && let Err(e) = ledger::write(root.as_fd(), writer, &ledger)
        {
            tracing::error!(
                "replica {} failed: cannot write its ledger: {e}",
                path.display()
            );
            b.state = ReplicaState::Failed;
            b.needs_full = true;
            rec.state = ReplicaState::Failed;
            rec.cause = format!("cannot write its ledger: {e}");
        }
    }
    for rec in &records {
        store
            .put_replica(rec)
            .map_err(|e| format!("metadata store: {e}"))?;
    }
    store.sync().map_err(|e| format!("metadata store: {e}"))?;
    Ok((out, generation))
}

/// Takes as behind every replica the ledgers on the replicas name as
/// behind (the store may be new, or another mount's): it is compared in
/// full before it serves. With no ledger anywhere and a new store, the
/// replicas were never mounted together by this version: the first serves
/// and the others are compared, unless all are empty. Returns the highest
/// ledger generation found.
fn reconcile_ledgers(
    replicas: &[(PathBuf, &OwnedFd)],
    own: &[bool],
    new_set: bool,
    out: &mut [Bound],
    records: &mut [ReplicaRecord],
) -> Result<u64, String> {
    let found: Vec<_> = replicas
        .iter()
        .zip(out.iter())
        .zip(own)
        .filter(|(_, own)| **own)
        .map(|(((_, root), b), _)| (b.id, ledger::read(root.as_fd()).ok()))
        .collect();
    let verdict = ledger::judge(&found);
    let behind = |k: usize, b: &Bound| -> bool {
        if !own[k] {
            return false;
        }
        if verdict.any {
            verdict.behind.contains(&b.id)
        } else {
            new_set && !all_empty(replicas, own)
        }
    };
    let first_current = out
        .iter()
        .enumerate()
        .position(|(k, b)| own[k] && b.state == ReplicaState::InSync && !behind(k, b));
    // No replica is current by both the store and the ledgers: the ledgers
    // are the replicas' own word (this store may be an older one), so the
    // first replica they name current serves; failing that, the first the
    // store has in sync. The others are compared with it.
    let keep = first_current
        .or_else(|| {
            verdict.any.then(|| {
                out.iter()
                    .enumerate()
                    .position(|(k, b)| own[k] && !verdict.behind.contains(&b.id))
            })?
        })
        .or_else(|| {
            out.iter()
                .enumerate()
                .position(|(k, b)| own[k] && b.state == ReplicaState::InSync)
        });
    if first_current.is_none()
        && let Some(k) = keep
    {
        tracing::warn!(
            "no replica is in sync by both the metadata store and the ledgers; {} serves",
            replicas[k].0.display()
        );
        if out[k].state != ReplicaState::InSync {
            out[k].state = ReplicaState::InSync;
            out[k].needs_full = false;
            records[k].state = ReplicaState::InSync;
            records[k].cause = "current by the replicas' ledgers".into();
        }
    }
    for (k, (b, rec)) in out.iter_mut().zip(records.iter_mut()).enumerate() {
        if Some(k) == keep || !behind(k, b) {
            continue;
        }
        b.needs_full = true;
        if b.state == ReplicaState::InSync {
            b.state = ReplicaState::Resyncing;
            rec.state = ReplicaState::Resyncing;
            rec.cause = if verdict.any {
                "behind, by the replicas' ledgers".into()
            } else {
                "first mount of existing directories: compared before it serves".into()
            };
        }
    }
    Ok(verdict.generation)
}

/// Whether every usable replica holds nothing but its internal entry.
fn all_empty(replicas: &[(PathBuf, &OwnedFd)], own: &[bool]) -> bool {
    replicas
        .iter()
        .zip(own)
        .filter(|(_, o)| **o)
        .all(|((_, root), _)| {
            crate::replica::ops::openat(root.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .and_then(crate::replica::ops::read_dir)
                .is_ok_and(|entries| {
                    entries
                        .iter()
                        .all(|e| e.name.as_bytes() == crate::replica::INTERNAL_NAME.as_bytes())
                })
        })
}
