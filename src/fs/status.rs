//! What the status socket reports, as plain data.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::ChironFs;
use crate::replica::State;
use crate::resync::CopyControl;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResyncProgress {
    pub files_done: u64,
    pub bytes_done: u64,
    /// Paths still marked missed for this replica.
    pub files_left: u64,
    /// Estimated: the sizes of the files still to copy.
    pub bytes_left: u64,
    pub bytes_per_sec: f64,
    pub eta_seconds: Option<f64>,
}

/// How long the requests to a replica took: `counts[i]` requests took at
/// most `bounds_s[i]` seconds (and more than the bound before); the last
/// count, one more than the bounds, is for longer ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencyHistogram {
    pub bounds_s: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub index: usize,
    pub path: String,
    pub id: String,
    pub low_priority: bool,
    pub state: String,
    /// Seconds since the epoch of the last state change the store knows.
    pub since: Option<u64>,
    pub cause: String,
    pub reads: u64,
    pub writes: u64,
    pub in_flight: u64,
    /// Mean time a request to this replica took, in microseconds.
    pub latency_us: f64,
    /// The same requests by how long they took.
    #[serde(default)]
    pub latency: LatencyHistogram,
    /// Bytes and entries copied onto the replica by resyncs since the mount.
    #[serde(default)]
    pub resync_bytes_total: u64,
    #[serde(default)]
    pub resync_entries_total: u64,
    pub open_handles: u64,
    /// Open files whose reads (and mmaps) the kernel sends straight to this
    /// replica (FUSE passthrough). The kernel cannot take such an open
    /// away: if the replica stops serving, they keep reading it until they
    /// are closed (chironfs(8), "Passthrough").
    #[serde(default)]
    pub kernel_opens: u64,
    pub missed: u64,
    pub resync: Option<ResyncProgress>,
    /// Other hosts sharing the replica (through the metadata ring) that do
    /// not see it in sync, as `host: state (cause)`: it serves no reads here.
    #[serde(default)]
    pub stale_for: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FsStatus {
    pub write_quorum: usize,
    /// Paths with a mutation possibly in flight (intent marks).
    pub pending: u64,
    pub replicas: Vec<ReplicaStatus>,
    /// With a ring and a layout: this host's read lease (DESIGN.md section
    /// 7), `held, N.Ns left` or `lost: ...` (reads answer EIO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_lease: Option<String>,
}

/// A resync in progress: when it started and its live counters.
/// (started, live counters, bytes to copy as estimated at the start).
pub type Running = (Instant, Arc<CopyControl>, Arc<std::sync::atomic::AtomicU64>);

impl ChironFs {
    pub fn status(&self) -> FsStatus {
        let store = &self.marks.store;
        let replicas = self
            .replicas
            .iter()
            .map(|r| {
                let rec = store.get_replica(&r.id).ok().flatten();
                let missed = store.missed_count(&r.id).unwrap_or(0);
                // Under the lock that the end of a resync takes to move its
                // counts into the replica's: the totals never go back.
                let running = self.running[r.index].lock();
                let (mut resync_bytes_total, mut resync_entries_total) = (
                    r.resync_bytes.load(Ordering::Relaxed),
                    r.resync_entries.load(Ordering::Relaxed),
                );
                if let Some((_, ctl, _)) = running.as_ref() {
                    resync_bytes_total += ctl.bytes_done.load(Ordering::Relaxed);
                    resync_entries_total += ctl.files_done.load(Ordering::Relaxed);
                }
                let resync = running.as_ref().map(|(start, ctl, total)| {
                    let secs = start.elapsed().as_secs_f64().max(0.001);
                    let files = ctl.files_done.load(Ordering::Relaxed);
                    let bytes = ctl.bytes_done.load(Ordering::Relaxed);
                    let files_rate = files as f64 / secs;
                    ResyncProgress {
                        files_done: files,
                        bytes_done: bytes,
                        files_left: missed,
                        bytes_left: total.load(Ordering::Relaxed).saturating_sub(bytes),
                        bytes_per_sec: bytes as f64 / secs,
                        eta_seconds: (files_rate > 0.0).then(|| missed as f64 / files_rate),
                    }
                });
                drop(running);
                let latency = LatencyHistogram {
                    bounds_s: crate::replica::LATENCY_BOUNDS_NS
                        .iter()
                        .map(|&b| b as f64 / 1e9)
                        .collect(),
                    counts: r
                        .latency_buckets
                        .iter()
                        .map(|c| c.load(Ordering::Relaxed))
                        .collect(),
                    sum_s: r.busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
                };
                ReplicaStatus {
                    index: r.index,
                    path: r.spec.path.display().to_string(),
                    id: r.id.to_string(),
                    low_priority: r.spec.low_priority,
                    state: r.state().to_string(),
                    since: rec
                        .as_ref()
                        .and_then(|x| x.since.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    cause: rec.map(|x| x.cause).unwrap_or_default(),
                    reads: r.reads.load(Ordering::Relaxed),
                    writes: r.writes.load(Ordering::Relaxed),
                    in_flight: r.in_flight.load(Ordering::Relaxed),
                    latency_us: {
                        let calls = r.calls.load(Ordering::Relaxed);
                        let ns = r.busy_ns.load(Ordering::Relaxed);
                        if calls == 0 {
                            0.0
                        } else {
                            ns as f64 / calls as f64 / 1000.0
                        }
                    },
                    latency,
                    resync_bytes_total,
                    resync_entries_total,
                    open_handles: r.bound_handles.load(Ordering::Relaxed),
                    kernel_opens: self.kernel_opens(r.index),
                    missed,
                    resync,
                    stale_for: self
                        .cluster()
                        .map(|c| {
                            c.stale_elsewhere(&r.id)
                                .into_iter()
                                .map(|(h, v)| format!("{h}: {} ({})", v.state, v.cause))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        FsStatus {
            write_quorum: self.opts.needed,
            pending: store.pending().map_or(0, |p| p.len() as u64),
            replicas,
            read_lease: self.cluster().and_then(|c| c.read_lease_state()),
        }
    }

    /// Takes replica `i` out of service until enabled (operator's act).
    pub fn disable(&self, i: usize) -> Result<(), String> {
        let r = self.replicas.get(i).ok_or("no such replica")?;
        let from = [State::InSync, State::Resyncing, State::Failed];
        if !self.change_state(i, &from, State::Disabled, "disabled by the operator".into()) {
            return Err(format!(
                "replica {} is disabled already",
                r.spec.path.display()
            ));
        }
        tracing::warn!("replica {} disabled by the operator", r.spec.path.display());
        Ok(())
    }

    /// Puts a disabled replica back: it is probed and resynced.
    pub fn enable(&self, i: usize) -> Result<(), String> {
        let r = self.replicas.get(i).ok_or("no such replica")?;
        if r.state() != State::Disabled {
            return Err(format!(
                "replica {} is {}, not disabled",
                r.spec.path.display(),
                r.state()
            ));
        }
        // Back in service at once if it is reachable and no request that
        // timed out on it still runs; else the probe retries.
        let state = if self.check_health(i).is_ok() && r.queued.load(Ordering::SeqCst) == 0 {
            State::Resyncing
        } else {
            State::Failed
        };
        if !self.change_state(
            i,
            &[State::Disabled],
            state,
            "enabled by the operator".into(),
        ) {
            return Err(format!("replica {} is not disabled", r.spec.path.display()));
        }
        tracing::info!("replica {} enabled by the operator", r.spec.path.display());
        Ok(())
    }

    /// Declares replica `i` in sync without copying anything: its missed
    /// marks are dropped. Only for an operator who knows the copy is good.
    pub fn trust(&self, i: usize) -> Result<(), String> {
        let r = self.replicas.get(i).ok_or("no such replica")?;
        self.check_health(i)
            .map_err(|e| format!("replica {} is not usable: {e}", r.spec.path.display()))?;
        let store = &self.marks.store;
        loop {
            let batch = store.missed(&r.id, None, 1024).map_err(|e| e.to_string())?;
            if batch.is_empty() {
                break;
            }
            for p in batch {
                store.clear_missed(&p, &r.id).map_err(|e| e.to_string())?;
            }
        }
        r.needs_full.store(false, Ordering::Relaxed);
        self.marks.clear_stale(i);
        let from = [State::Failed, State::Resyncing, State::Disabled];
        self.change_state(i, &from, State::InSync, "trusted by the operator".into());
        tracing::warn!(
            "replica {} declared in sync by the operator, without copying",
            r.spec.path.display()
        );
        Ok(())
    }

    /// Asks for a resync of replica `i`; `full` compares the whole tree,
    /// `verify` compares file contents too (and implies `full`).
    pub fn request_resync(&self, i: usize, full: bool, verify: bool) -> Result<(), String> {
        let full = full || verify;
        let r = self.replicas.get(i).ok_or("no such replica")?;
        if verify {
            r.verify_content.store(true, Ordering::Relaxed);
        }
        match r.state() {
            State::Disabled => return Err("replica is disabled; enable it first".into()),
            State::Failed => {
                self.check_health(i).map_err(|e| {
                    format!(
                        "replica {} is failed and not usable: {e}",
                        r.spec.path.display()
                    )
                })?;
                if r.queued.load(Ordering::SeqCst) != 0 {
                    return Err(format!(
                        "replica {} still has requests that timed out running; the probe brings it back once they end",
                        r.spec.path.display()
                    ));
                }
                self.change_state(
                    i,
                    &[State::Failed],
                    State::Resyncing,
                    "resync requested by the operator".into(),
                );
            }
            State::InSync | State::Resyncing => {
                if full {
                    r.needs_full.store(true, Ordering::Relaxed);
                }
                if r.state() == State::InSync && !self.readers().iter().any(|&j| j != i) {
                    return Err("it is the only in-sync replica: nothing to resync from".into());
                }
                self.change_state(
                    i,
                    &[State::InSync],
                    State::Resyncing,
                    "resync requested by the operator".into(),
                );
            }
        }
        if full {
            r.needs_full.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}
