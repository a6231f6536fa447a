//! Per-path locks between the write path and a resync: a file is copied to
//! a resyncing replica chunk by chunk under its lock, and a mutation holds
//! the lock of every path it marks while a replica is resyncing, so a
//! writer waits for at most one chunk and its update is never lost. While
//! every replica is in sync nobody takes them.

use std::sync::Arc;

use parking_lot::{Mutex, RawMutex, lock_api::ArcMutexGuard};

use crate::replica::RelPath;

const STRIPES: usize = 64;

pub struct PathLocks {
    stripes: Vec<Arc<Mutex<()>>>,
}

pub type PathGuard = ArcMutexGuard<RawMutex, ()>;

/// FNV-1a: stable, cheap, good enough to spread paths over the stripes.
fn stripe(p: &RelPath) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in p.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % STRIPES as u64) as usize
}

impl PathLocks {
    pub fn new() -> PathLocks {
        PathLocks {
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
        }
    }

    /// Locks every path of one mutation, in stripe order (no deadlock with
    /// another mutation, and the resync engine holds one lock at a time).
    pub fn lock_all(&self, paths: &[RelPath]) -> Vec<PathGuard> {
        let mut idx: Vec<usize> = paths.iter().map(stripe).collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .map(|i| self.stripes[i].lock_arc())
            .collect()
    }

    /// Every stripe, in order (see `lock_every`).
    pub fn lock_every(&self) -> Vec<PathGuard> {
        lock_every(&self.stripes)
    }

    /// The stripes, for a closure that outlives a borrow of `self`.
    pub fn shared(&self) -> Vec<Arc<Mutex<()>>> {
        self.stripes.clone()
    }
}

/// Every stripe, in order: no mutation runs while it is held.
pub fn lock_every(stripes: &[Arc<Mutex<()>>]) -> Vec<PathGuard> {
    stripes.iter().map(|s| s.lock_arc()).collect()
}

/// The stripes of several paths, in stripe order (the copy of a file with
/// several links: a write through any of its names changes the inode).
pub fn lock_paths_in(stripes: &[Arc<Mutex<()>>], paths: &[RelPath]) -> Vec<PathGuard> {
    let mut idx: Vec<usize> = paths.iter().map(stripe).collect();
    idx.sort_unstable();
    idx.dedup();
    idx.into_iter().map(|i| stripes[i].lock_arc()).collect()
}

/// A lock function over shared stripes (what the resync engine calls).
pub fn lock_in(stripes: &[Arc<Mutex<()>>], p: &RelPath) -> PathGuard {
    stripes[stripe(p)].lock_arc()
}
