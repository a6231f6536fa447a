//! Fan-out of one operation to several replicas, and the one place where
//! their results are turned into an answer.
//!
//! Rules (DESIGN.md section 3):
//! - an outcome every replica agrees on is the answer, errors included;
//! - otherwise the outcome most replicas agree on wins, counting only
//!   results about the path (success, ENOENT, EEXIST, ...), never replica
//!   failures (EIO, ENOSPC, timeouts, ...); on a tie success wins;
//! - every replica whose result differs from the winning outcome is failed;
//! - a winning success needs `needed` successes, else the answer is EIO;
//! - if every replica failed, differently, nothing is marked (there is no
//!   healthy outcome to compare with) and the first error is returned.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::errno::{Errno, Result};
use crate::replica::Replica;

/// The answer to give and the replicas that disagreed with it.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub answer: std::result::Result<(), Errno>,
    pub failed: Vec<(usize, Errno)>,
}

/// Decides on results given as (replica index, Ok or errno), in priority order.
pub fn decide(results: &[(usize, Option<Errno>)], needed: usize) -> Decision {
    let Some(&(_, first)) = results.first() else {
        return Decision {
            answer: Err(Errno::EIO),
            failed: Vec::new(),
        };
    };
    if results.iter().all(|&(_, r)| r == first) {
        let answer = match first {
            None if results.len() >= needed => Ok(()),
            None => Err(Errno::EIO),
            Some(e) => Err(e),
        };
        return Decision {
            answer,
            failed: Vec::new(),
        };
    }
    // Vote among outcomes that are about the path, not the replica.
    let mut votes: Vec<(Option<Errno>, usize)> = Vec::new();
    for &(_, r) in results {
        if r.is_some_and(|e| e.is_replica_failure()) {
            continue;
        }
        match votes.iter_mut().find(|(o, _)| *o == r) {
            Some(v) => v.1 += 1,
            None => votes.push((r, 1)),
        }
    }
    let Some(max) = votes.iter().map(|v| v.1).max() else {
        // Every replica failed, in different ways: nothing to compare with.
        return Decision {
            answer: Err(first.unwrap_or(Errno::EIO)),
            failed: Vec::new(),
        };
    };
    let winner = if votes.iter().any(|v| v.0.is_none() && v.1 == max) {
        None
    } else {
        votes.iter().find(|v| v.1 == max).and_then(|v| v.0)
    };
    let failed: Vec<(usize, Errno)> = results
        .iter()
        .filter(|&&(_, r)| r != winner)
        .map(|&(i, r)| (i, r.unwrap_or(Errno::EIO)))
        .collect();
    let answer = match winner {
        None => {
            let ok = results.iter().filter(|(_, r)| r.is_none()).count();
            if ok >= needed {
                Ok(())
            } else {
                Err(Errno::EIO)
            }
        }
        Some(e) => Err(e),
    };
    Decision { answer, failed }
}

/// Results of one fan-out as they arrive: a mutex and a condvar, no
/// spinning (see `replica::pool`).
struct Gather<T> {
    results: Mutex<Vec<(usize, Result<T>)>>,
    arrived: Condvar,
}

/// How the replicas on local filesystems (`Replica::inline`) share one
/// operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// Each on the calling thread, one after the other: for an operation
    /// of a few microseconds (metadata, a small write) a thread handoff
    /// and its wake-up cost more than the syscall (an untar through the
    /// mount took 6.2-6.6 s with one handoff per operation, 4.7-4.9 s
    /// without: README, issue 11).
    Light,
    /// The first on the calling thread, the others on their pools at the
    /// same time: for large writes and syncs, which run for longer than a
    /// handoff costs.
    Heavy,
    /// Every target on its pool, local ones too, under the deadline: for a
    /// call that also reads a replica that may hang (a copy from a pooled
    /// replica's file).
    Pooled,
}

/// Writes at least this large are spread as [`Spread::Heavy`].
pub const HEAVY_WRITE: usize = 64 << 10;

/// Runs `f` on every replica in `targets` and waits at most `deadline` for
/// all of them. Replicas that may hang (network and FUSE filesystems) run
/// in parallel on their own pools: one that did not answer in time gets
/// ETIMEDOUT, its job keeps running on its own pool and its late result is
/// dropped. Replicas on a local filesystem (`Replica::inline`) run on the
/// calling thread, by `spread`, in parallel with the pooled ones: their
/// errors come back from the kernel (block-layer timeouts end in EIO).
pub fn run<T, F>(
    replicas: &Arc<[Replica]>,
    targets: &[usize],
    deadline: Duration,
    spread: Spread,
    f: F,
) -> Vec<(usize, Result<T>)>
where
    T: Send + 'static,
    F: Fn(&Replica) -> Result<T> + Send + Sync + 'static,
{
    let local = targets.iter().copied().filter(|&i| replicas[i].inline);
    let inline: Vec<usize> = match spread {
        Spread::Light => local.collect(),
        Spread::Heavy => local.take(1).collect(),
        Spread::Pooled => Vec::new(),
    };
    let pooled: Vec<usize> = targets
        .iter()
        .copied()
        .filter(|i| !inline.contains(i))
        .collect();
    let mut out: Vec<(usize, Result<T>)> = Vec::with_capacity(targets.len());
    if pooled.is_empty() {
        for i in inline {
            let r = &replicas[i];
            out.push((i, r.track(|| f(r))));
        }
        return out;
    }
    let f = Arc::new(f);
    let gather = Arc::new(Gather {
        results: Mutex::new(Vec::with_capacity(pooled.len())),
        arrived: Condvar::new(),
    });
    for &i in &pooled {
        let (g, f, reps) = (gather.clone(), f.clone(), replicas.clone());
        replicas[i]
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        replicas[i].submit(move || {
            let r = &reps[i];
            let res = r.track(|| f(r));
            r.queued.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            if let Ok(mut v) = g.results.lock() {
                v.push((i, res));
            }
            g.arrived.notify_all();
        });
    }
    let end = Instant::now() + deadline;
    for &i in &inline {
        let r = &replicas[i];
        out.push((i, r.track(|| f(r))));
    }
    let arrived = match gather.results.lock() {
        Ok(mut guard) => loop {
            if guard.len() >= pooled.len() {
                break std::mem::take(&mut *guard);
            }
            let now = Instant::now();
            if now >= end {
                break std::mem::take(&mut *guard);
            }
            guard = match gather.arrived.wait_timeout(guard, end - now) {
                Ok((g, _)) => g,
                Err(_) => break Vec::new(),
            };
        },
        Err(_) => Vec::new(),
    };
    out.extend(arrived);
    for &i in targets {
        if !out.iter().any(|(j, _)| *j == i) {
            out.push((i, Err(Errno::ETIMEDOUT)));
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Option<Errno> = None;
    fn e(x: i32) -> Option<Errno> {
        Some(Errno(x))
    }

    #[test]
    fn unanimous_outcomes_are_the_answer() {
        let d = decide(&[(0, OK), (1, OK)], 1);
        assert_eq!(d.answer, Ok(()));
        assert!(d.failed.is_empty());
        let d = decide(&[(0, e(libc::ENOENT)), (1, e(libc::ENOENT))], 1);
        assert_eq!(d.answer, Err(Errno::ENOENT));
        assert!(d.failed.is_empty());
        // Even a unanimous ENOSPC is the answer, not a reason to fail everything.
        let d = decide(&[(0, e(libc::ENOSPC)), (1, e(libc::ENOSPC))], 1);
        assert_eq!(d.answer, Err(Errno::ENOSPC));
        assert!(d.failed.is_empty());
    }

    #[test]
    fn io_failure_on_one_replica_fails_it_and_succeeds() {
        let d = decide(&[(0, OK), (1, e(libc::EIO))], 1);
        assert_eq!(d.answer, Ok(()));
        assert_eq!(d.failed, vec![(1, Errno::EIO)]);
        let d = decide(&[(0, e(libc::ENOSPC)), (1, OK), (2, OK)], 1);
        assert_eq!(d.answer, Ok(()));
        assert_eq!(d.failed, vec![(0, Errno::ENOSPC)]);
    }

    #[test]
    fn quorum_not_reached_is_eio() {
        let d = decide(&[(0, OK), (1, e(libc::ENOSPC))], 2);
        assert_eq!(d.answer, Err(Errno::EIO));
        assert_eq!(d.failed, vec![(1, Errno::ENOSPC)]);
        let d = decide(&[(0, OK)], 2);
        assert_eq!(d.answer, Err(Errno::EIO));
    }

    #[test]
    fn divergent_results_fail_the_minority() {
        let d = decide(&[(0, e(libc::ENOENT)), (1, OK), (2, e(libc::ENOENT))], 1);
        assert_eq!(d.answer, Err(Errno::ENOENT));
        assert_eq!(d.failed, vec![(1, Errno::EIO)]);
        // A tie between success and a path error: success wins.
        let d = decide(&[(0, e(libc::EEXIST)), (1, OK)], 1);
        assert_eq!(d.answer, Ok(()));
        assert_eq!(d.failed, vec![(0, Errno(libc::EEXIST))]);
        // A path error beats a replica failure.
        let d = decide(&[(0, e(libc::EIO)), (1, e(libc::ENOTEMPTY))], 1);
        assert_eq!(d.answer, Err(Errno(libc::ENOTEMPTY)));
        assert_eq!(d.failed, vec![(0, Errno::EIO)]);
    }

    #[test]
    fn all_failed_differently_marks_nothing() {
        let d = decide(&[(0, e(libc::EIO)), (1, e(libc::ENOSPC))], 1);
        assert_eq!(d.answer, Err(Errno::EIO));
        assert!(d.failed.is_empty());
    }

    #[test]
    fn empty_is_eio() {
        assert_eq!(decide(&[], 1).answer, Err(Errno::EIO));
    }
}
