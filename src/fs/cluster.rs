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
use crate::meta::{ConflictRecord, PathWrite, ReplicaId, ReplicaState, SharedStore};
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
                fs.apply_views();
            }
        }));
        if self.cluster.set(shared.clone()).is_err() {
            return;
        }
        for r in self.replicas.iter() {
            if let Ok(Some(rec)) = crate::meta::MetaStore::get_replica(shared.as_ref(), &r.id) {
                shared.publish(&rec);
            }
        }
        shared.refresh(&self.replica_ids());
    }

    pub fn cluster(&self) -> Option<&Arc<SharedStore>> {
        self.cluster.get()
    }

    fn replica_ids(&self) -> Vec<ReplicaId> {
        self.replicas.iter().map(|r| r.id).collect()
    }

    /// Follows the other hosts' views, every `interval`, forever.
    pub fn watch_cluster(self: Arc<Self>, interval: Duration) {
        let Some(shared) = self.cluster.get().cloned() else {
            return;
        };
        let ids = self.replica_ids();
        loop {
            std::thread::sleep(interval);
            shared.refresh(&ids);
            self.apply_views();
        }
    }

    /// Excludes from reads every replica another host sees out of sync.
    fn apply_views(&self) {
        let Some(shared) = self.cluster.get() else {
            return;
        };
        for r in self.replicas.iter() {
            let stale = shared.stale_elsewhere(&r.id);
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
    }

    /// Takes or renews the resync lease; true if this host may resync.
    pub(super) fn resync_lease(&self) -> bool {
        match self.cluster.get() {
            None => true,
            Some(s) => s.take_lease(LEASE),
        }
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
                let hosts = shared
                    .stale_elsewhere(&r.id)
                    .into_iter()
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
        tracing::info!(
            "replica {} was left out of sync by {hosts:?}, which are gone; resyncing it for them",
            r.spec.path.display()
        );
        r.needs_full.store(true, Ordering::Relaxed);
        r.set_state(crate::replica::State::Resyncing);
        self.persist_state(
            i,
            ReplicaState::Resyncing,
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
                if r.state() == crate::replica::State::InSync {
                    r.set_state(crate::replica::State::Resyncing);
                    self.persist_state(
                        r.index,
                        ReplicaState::Resyncing,
                        format!("healing paths host {h} was changing when it died"),
                    );
                }
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
        let Some((a, b)) = disjoint_pair(&writes, &self.replica_ids()) else {
            shared.path_settled(p.as_bytes());
            return Ok(false);
        };
        let (ra, rb) = (self.holder(&a), self.holder(&b));
        let (Some(ra), Some(rb)) = (ra, rb) else {
            return Ok(false);
        };
        let (ma, mb) = (mtime(&self.replicas[ra], p), mtime(&self.replicas[rb], p));
        // The newer version wins; equal times go to the larger host name.
        let a_wins = (ma, &a.host) >= (mb, &b.host);
        let (win, lose, lose_host, lose_time) = if a_wins {
            (ra, rb, b.host.clone(), mb)
        } else {
            (rb, ra, a.host.clone(), ma)
        };
        let policy = self.opts.conflict_policy;
        tracing::warn!(
            "conflict on {p}: hosts {} and {} changed it on different replicas; policy {policy:?}",
            a.host,
            b.host
        );
        let mut copies = vec![(lose, lose_host.clone(), lose_time)];
        if policy != ConflictPolicy::Newest {
            let (win_host, win_time) = if a_wins {
                (a.host.clone(), ma)
            } else {
                (b.host.clone(), mb)
            };
            copies.push((win, win_host, win_time));
        }
        for (from, host, time) in &copies {
            let copy = conflict_name(p, host, *time)?;
            // A copy of the version on `from`, then on every replica.
            self.copy_within(&self.replicas[*from], p, &copy, ctl)?;
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
    fn copy_within(
        &self,
        r: &Replica,
        p: &RelPath,
        copy: &RelPath,
        _ctl: &CopyControl,
    ) -> Result<()> {
        let (parent, name) = p.split().ok_or(Errno::EINVAL)?;
        let (_, copy_name) = copy.split().ok_or(Errno::EINVAL)?;
        let dir = r.dir(&parent)?;
        let st = ops::stat_at(ops::fd_of(&dir), name.as_c())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return ops::linkat(
                ops::fd_of(&dir),
                name.as_c(),
                ops::fd_of(&dir),
                copy_name.as_c(),
            );
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
        )
    }

    /// Every conflict copy any host sharing these replicas made.
    pub fn conflicts(&self) -> std::result::Result<Vec<ConflictRecord>, String> {
        match self.cluster.get() {
            Some(s) => s.conflicts(),
            None => Err("this mount has no [ring]: conflicts need several hosts".into()),
        }
    }
}

/// Two recorded writes by different hosts whose written replica sets are
/// disjoint (each missed everything the other reached).
fn disjoint_pair(writes: &[PathWrite], all: &[ReplicaId]) -> Option<(PathWrite, PathWrite)> {
    let reached = |w: &PathWrite| -> BTreeSet<String> {
        all.iter()
            .map(ToString::to_string)
            .filter(|id| !w.missed.contains(id))
            .collect()
    };
    for (i, a) in writes.iter().enumerate() {
        for b in &writes[i + 1..] {
            if a.host != b.host && reached(a).is_disjoint(&reached(b)) {
                return Some((a.clone(), b.clone()));
            }
        }
    }
    None
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
fn conflict_name(p: &RelPath, host: &str, mtime_ns: i128) -> Result<RelPath> {
    let (parent, name) = p.split().ok_or(Errno::EINVAL)?;
    let secs = (mtime_ns / 1_000_000_000) as i64;
    let stamp = utc_stamp(secs);
    let mut n = name.as_os().to_os_string();
    n.push(format!(".chironfs-conflict-{host}-{stamp}"));
    Ok(parent.join(&crate::replica::Name::new(&n)?))
}

/// Seconds since the epoch as `YYYYMMDDTHHMMSSZ` (UTC), without a clock
/// library: days to civil date (Howard Hinnant's algorithm).
fn utc_stamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
        };
        assert!(disjoint_pair(&[w("a", &r2), w("b", &r1)], &all).is_some());
        assert!(disjoint_pair(&[w("a", &r2), w("b", &r2)], &all).is_none());
        assert!(disjoint_pair(&[w("a", &r2), w("a", &r1)], &all).is_none());
    }
}
