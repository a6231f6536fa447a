//! Per-path locks between the write path and a resync: a file is copied to
//! a resyncing replica chunk by chunk under its lock, and a mutation holds
//! the lock of every path it marks while a replica is resyncing, so a
//! writer waits for at most one chunk and its update is never lost. While
//! every replica is in sync nobody takes them.
//!
//! A copy names the replica it writes to when it takes a lock. A mutation
//! that has waited `deadline` (`replica_timeout`) for a lock a copy holds
//! takes it over and reports that replica as stuck: its caller fails it
//! (and so cancels the copy) before it changes anything, so a hung
//! destination holds up no write for longer than the deadline
//! (src/DESIGN.md section 3, step 5). The copy's own guard is then
//! stale: dropping it frees nothing, and whatever the copy still writes
//! lands on a failed replica whose marks stay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::replica::RelPath;

const STRIPES: usize = 64;

/// One stripe: who holds it, if anyone.
pub struct Stripe {
    held: Mutex<Holder>,
    freed: Condvar,
}

#[derive(Default)]
struct Holder {
    /// The holding guard's number; 0 when free.
    id: u64,
    /// The last number handed out.
    last: u64,
    /// The replica a copy holding it writes to.
    copy_to: Option<usize>,
    /// When the holder took it.
    since: Option<Instant>,
}

/// A held stripe; dropping it frees the stripe, unless a mutation took it
/// over meanwhile.
pub struct PathGuard {
    stripe: Arc<Stripe>,
    id: u64,
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        let mut h = self.stripe.held.lock();
        if h.id == self.id {
            h.id = 0;
            h.copy_to = None;
            h.since = None;
            drop(h);
            self.stripe.freed.notify_all();
        }
    }
}

impl Stripe {
    fn new() -> Arc<Stripe> {
        Arc::new(Stripe {
            held: Mutex::new(Holder::default()),
            freed: Condvar::new(),
        })
    }

    /// Waits for the stripe and takes it. `copy_to`: the caller is a copy
    /// to that replica. `deadline`: the caller is a mutation that takes
    /// the stripe over from a copy that has held it that long (pushing the
    /// copy's replica on `stuck`); `None` waits as long as it takes.
    fn take(
        self: &Arc<Self>,
        copy_to: Option<usize>,
        deadline: Option<Duration>,
        stuck: &mut Vec<usize>,
    ) -> PathGuard {
        let mut h = self.held.lock();
        while h.id != 0 {
            match (h.copy_to, h.since, deadline) {
                (Some(r), Some(since), Some(d)) => {
                    let end = since + d;
                    let now = Instant::now();
                    if now >= end {
                        if !stuck.contains(&r) {
                            stuck.push(r);
                        }
                        break;
                    }
                    self.freed.wait_for(&mut h, end - now);
                }
                _ => self.freed.wait(&mut h),
            }
        }
        h.last += 1;
        h.id = h.last;
        h.copy_to = copy_to;
        h.since = Some(Instant::now());
        PathGuard {
            stripe: self.clone(),
            id: h.id,
        }
    }
}

/// A mutation's locks, and the replicas whose copies it took locks over
/// from (hung: the caller fails them before it changes anything).
pub struct Locked {
    pub guards: Vec<PathGuard>,
    pub stuck: Vec<usize>,
}

pub struct PathLocks {
    stripes: Vec<Arc<Stripe>>,
    deadline: Duration,
}

/// FNV-1a: stable, cheap, good enough to spread paths over the stripes.
fn stripe(p: &RelPath) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in p.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % STRIPES as u64) as usize
}

/// The stripes of `paths`, each once, in order (no deadlock between two
/// takers of several).
fn indexes(paths: &[RelPath]) -> Vec<usize> {
    let mut idx: Vec<usize> = paths.iter().map(stripe).collect();
    idx.sort_unstable();
    idx.dedup();
    idx
}

impl PathLocks {
    /// `deadline`: how long a mutation waits for a copy's lock before it
    /// takes it over.
    pub fn new(deadline: Duration) -> PathLocks {
        PathLocks {
            stripes: (0..STRIPES).map(|_| Stripe::new()).collect(),
            deadline,
        }
    }

    /// Locks every path of one mutation, in stripe order (no deadlock with
    /// another mutation, and the resync engine holds one lock at a time).
    pub fn lock_all(&self, paths: &[RelPath]) -> Locked {
        self.take(indexes(paths))
    }

    /// Every stripe, in order: no other mutation or copy runs meanwhile.
    pub fn lock_every(&self) -> Locked {
        self.take((0..STRIPES).collect())
    }

    fn take(&self, idx: Vec<usize>) -> Locked {
        let mut stuck = Vec::new();
        let guards = idx
            .into_iter()
            .map(|i| self.stripes[i].take(None, Some(self.deadline), &mut stuck))
            .collect();
        Locked { guards, stuck }
    }

    /// The stripes, for a closure that outlives a borrow of `self`.
    pub fn shared(&self) -> Vec<Arc<Stripe>> {
        self.stripes.clone()
    }
}

impl PathGuard {
    /// From now on the holder is a copy to `copy_to`: a change may take
    /// the stripe over `deadline` from now.
    fn stamp(&self, copy_to: Option<usize>) {
        let mut h = self.stripe.held.lock();
        if h.id == self.id {
            h.copy_to = copy_to;
            h.since = Some(Instant::now());
        }
    }
}

/// Takes several stripes for a copy: as a plain holder while it waits for
/// the later ones (a copy waiting for a lock is not stuck on its replica),
/// then stamped as the copy's once it holds them all.
fn take_for_copy<'a>(
    stripes: impl Iterator<Item = &'a Arc<Stripe>>,
    copy_to: Option<usize>,
) -> Vec<PathGuard> {
    let guards: Vec<PathGuard> = stripes
        .map(|s| s.take(None, None, &mut Vec::new()))
        .collect();
    if copy_to.is_some() {
        for g in &guards {
            g.stamp(copy_to);
        }
    }
    guards
}

/// Every stripe, in order, for a copy to replica `copy_to` (see
/// `ChironFs::lock_fn`).
pub fn lock_every(stripes: &[Arc<Stripe>], copy_to: Option<usize>) -> Vec<PathGuard> {
    take_for_copy(stripes.iter(), copy_to)
}

/// The stripes of several paths, in stripe order, for a copy (of a file
/// with several links: a write through any of its names changes the inode).
pub fn lock_paths_in(
    stripes: &[Arc<Stripe>],
    paths: &[RelPath],
    copy_to: Option<usize>,
) -> Vec<PathGuard> {
    take_for_copy(indexes(paths).into_iter().map(|i| &stripes[i]), copy_to)
}

/// One path's stripe, for a copy.
pub fn lock_in(stripes: &[Arc<Stripe>], p: &RelPath, copy_to: Option<usize>) -> PathGuard {
    stripes[stripe(p)].take(copy_to, None, &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::from_bytes(s.as_bytes()).expect("a path")
    }

    #[test]
    fn a_mutation_takes_over_from_a_copy_past_the_deadline() {
        let locks = PathLocks::new(Duration::from_millis(100));
        let copy = lock_in(&locks.shared(), &p("a"), Some(3));
        let start = Instant::now();
        let m = locks.lock_all(&[p("a")]);
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(m.stuck, vec![3]);
        // The copy's late drop frees nothing: the mutation still holds it.
        drop(copy);
        let shared = locks.shared();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _g = lock_in(&shared, &p("a"), Some(3));
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(m);
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
        let _ = t.join();
    }

    #[test]
    fn a_mutation_waits_for_another_mutation_past_the_deadline() {
        let locks = Arc::new(PathLocks::new(Duration::from_millis(50)));
        let first = locks.lock_all(&[p("a")]);
        let l = locks.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let m = l.lock_all(&[p("a")]);
            let _ = tx.send(m.stuck.clone());
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(first);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).ok(), Some(vec![]));
        let _ = t.join();
    }

    #[test]
    fn a_copy_freed_in_time_is_not_stuck() {
        let locks = Arc::new(PathLocks::new(Duration::from_secs(5)));
        let copy = lock_in(&locks.shared(), &p("a"), Some(1));
        let l = locks.clone();
        let t = std::thread::spawn(move || l.lock_all(&[p("a")]).stuck);
        std::thread::sleep(Duration::from_millis(50));
        drop(copy);
        assert_eq!(t.join().ok(), Some(vec![]));
    }
}
