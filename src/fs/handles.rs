//! Open file and directory handles, and each inode's kernel I/O mode.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

/// Handles by number. Numbers are never reused while the mount lives.
pub struct Table<T> {
    map: RwLock<HashMap<u64, Arc<T>>>,
    next: AtomicU64,
}

impl<T> Table<T> {
    pub fn new() -> Self {
        Table {
            map: RwLock::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    pub fn insert(&self, h: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.write().insert(fh, Arc::new(h));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.map.read().get(&fh).cloned()
    }

    /// Any open handle satisfying `pred` (a scan; for rare paths only).
    pub fn find(&self, pred: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        self.map.read().values().find(|h| pred(h)).cloned()
    }

    /// Every open handle satisfying `pred` (a scan; for rare paths only).
    pub fn all(&self, pred: impl Fn(&T) -> bool) -> Vec<Arc<T>> {
        self.map
            .read()
            .values()
            .filter(|h| pred(h))
            .cloned()
            .collect()
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.map.write().remove(&fh)
    }
}

/// One entry of a directory listing as the kernel will see it.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    /// DT_* type.
    pub kind: u8,
    pub name: OsString,
}

/// An open directory: a snapshot of its entries taken at opendir (and again
/// on a rewind), so offsets stay valid while entries are removed — `rm -rf`
/// of a large directory never skips or repeats a name.
pub struct DirHandle {
    pub ino: u64,
    pub entries: Mutex<Arc<Vec<DirEntry>>>,
}

/// How the kernel does I/O on an inode's open files. The kernel refuses
/// (with EIO) a cached open of an inode that has passthrough opens, a
/// passthrough open of an inode with cached opens, and any open of an inode
/// in passthrough mode that does not name the inode's one backing file.
/// These counters let `open` pick a mode the kernel accepts. They count
/// opens the daemon answered and has not yet seen released, so they are
/// never lower than the kernel's own counts.
#[derive(Default)]
pub struct IoModes {
    map: Mutex<HashMap<u64, IoCount>>,
}

#[derive(Default, Clone, Copy)]
struct IoCount {
    cached: u64,
    /// Opens that name the backing file (Passthrough and ShareBacking).
    backing: u64,
    /// The replica of the inode's backing file.
    backing_replica: usize,
}

/// What a new open of an inode uses.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Mode {
    /// Page cache; reads and writes come to the daemon.
    Cached,
    /// Reads go straight to the backing file on this replica.
    Passthrough(usize),
    /// The inode is in passthrough mode already: name its backing file (on
    /// this replica), but with direct I/O so that reads and writes still
    /// come to the daemon. An mmap of such an open maps the backing file
    /// itself: its stores reach that replica only.
    ShareBacking(usize),
}

impl IoModes {
    /// Decides and records the mode of a new open. `want_passthrough` is
    /// `Some(replica)` for a read-only open that could use passthrough
    /// there; `serving` says whether a replica is still in service.
    pub fn open(
        &self,
        ino: u64,
        want_passthrough: Option<usize>,
        serving: impl Fn(usize) -> bool,
    ) -> Mode {
        let mut map = self.map.lock();
        let c = map.entry(ino).or_default();
        let mode = match want_passthrough {
            _ if c.cached > 0 => Mode::Cached,
            Some(r) if c.backing == 0 => {
                c.backing_replica = r;
                Mode::Passthrough(r)
            }
            Some(_) if serving(c.backing_replica) => Mode::Passthrough(c.backing_replica),
            _ if c.backing > 0 => Mode::ShareBacking(c.backing_replica),
            _ => Mode::Cached,
        };
        match mode {
            Mode::Cached => c.cached += 1,
            Mode::Passthrough(_) | Mode::ShareBacking(_) => c.backing += 1,
        }
        mode
    }

    /// The adapter could not register a backing file for an open recorded
    /// as passthrough: it is answered as a cached open instead.
    pub fn passthrough_refused(&self, ino: u64) -> Mode {
        let mut map = self.map.lock();
        let c = map.entry(ino).or_default();
        c.backing = c.backing.saturating_sub(1);
        c.cached += 1;
        Mode::Cached
    }

    pub fn release(&self, ino: u64, mode: Mode) {
        let mut map = self.map.lock();
        if let Some(c) = map.get_mut(&ino) {
            match mode {
                Mode::Cached => c.cached = c.cached.saturating_sub(1),
                Mode::Passthrough(_) | Mode::ShareBacking(_) => {
                    c.backing = c.backing.saturating_sub(1)
                }
            }
            if c.cached == 0 && c.backing == 0 {
                map.remove(&ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_and_cached_never_mix() {
        let m = IoModes::default();
        assert_eq!(m.open(7, Some(1), |_| true), Mode::Passthrough(1));
        // A second reader shares the first one's backing replica.
        assert_eq!(m.open(7, Some(0), |_| true), Mode::Passthrough(1));
        // A writer while passthrough is active names the backing file.
        assert_eq!(m.open(7, None, |_| true), Mode::ShareBacking(1));
        m.release(7, Mode::Passthrough(1));
        m.release(7, Mode::Passthrough(1));
        m.release(7, Mode::ShareBacking(1));
        assert_eq!(m.open(7, None, |_| true), Mode::Cached);
        // A reader while a cached writer is open is cached too.
        assert_eq!(m.open(7, Some(0), |_| true), Mode::Cached);
    }

    #[test]
    fn failed_backing_replica_is_not_read_through() {
        let m = IoModes::default();
        assert_eq!(m.open(3, Some(0), |_| true), Mode::Passthrough(0));
        assert_eq!(m.open(3, Some(1), |r| r != 0), Mode::ShareBacking(0));
    }

    #[test]
    fn refused_passthrough_falls_back_to_cached() {
        let m = IoModes::default();
        assert_eq!(m.open(5, Some(0), |_| true), Mode::Passthrough(0));
        assert_eq!(m.passthrough_refused(5), Mode::Cached);
        assert_eq!(m.open(5, Some(0), |_| true), Mode::Cached);
    }
}
