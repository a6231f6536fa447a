//! The resync copy engine: makes a path on one replica identical to the same
//! path on another (the source is authoritative), and finds the paths whose
//! copies differ. Background workers (incremental from the missed marks,
//! full and verifying passes) are built on these two calls.
//!
//! Safety: every directory is resolved with [`Replica::dir`] (openat2,
//! beneath the root, no symlinks) and every entry in it is used with `*at`
//! calls that never follow a symlink, so nothing outside either replica
//! root is ever read or written, whatever is planted on the replicas. The
//! replica's internal entry ([`INTERNAL_NAME`]) at the root is never read,
//! compared, written or removed.
//!
//! Live writes: content is copied in place, chunk by chunk, each chunk under
//! the guard that [`CopyControl::chunk_guard`] returns for the path (the
//! filesystem's per-file lock), so a writer that updates every replica under
//! that lock waits for at most one chunk and its update is never lost: it
//! lands on the destination either before the chunk is copied (and is
//! copied) or after (and is written there directly).

// Parts of the API (cancel, verifying passes, runtime rate changes) are not
// called by the filesystem yet.
#![allow(dead_code)]

pub(crate) mod attrs;
mod copy;
mod diff;
mod sys;
pub mod throttle;

#[cfg(test)]
mod tests;

use std::any::Any;
use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

pub use copy::sync_path;
pub use diff::diff_tree;
pub use throttle::Throttle;

use crate::errno::{Errno, Result};
#[cfg(doc)]
use crate::replica::Replica;
use crate::replica::ops::{self, RawDirEntry, Stat};
use crate::replica::{INTERNAL_NAME, Name, RelPath};

/// Size of one copied (and locked) chunk of file content.
pub const CHUNK: usize = 1 << 20;

/// How far [`sync_path`] goes below the path it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// The path itself (content and attributes); for a directory, its own
    /// attributes and its entry set: entries only on the destination are
    /// removed (recursively), entries missing there are created with their
    /// whole content. Entries present on both are left alone (beyond a type
    /// change, which replaces the entry). The mode for paths reported by
    /// [`diff_tree`] and for the missed marks of directories.
    Entries,
    /// The path and everything beneath it, every file's content copied.
    Tree,
}

/// What one [`sync_path`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Entries brought up to date (created, replaced or re-synced), the
    /// path itself included.
    pub files: u64,
    /// File content processed: bytes of data read from the source (holes
    /// are not counted). Drives the throttle and the progress figures.
    pub bytes: u64,
    /// Of `bytes`, what was actually written to the destination (less than
    /// `bytes` when `verify_content` found identical chunks).
    pub written: u64,
    /// Entries removed from the destination (each entry of a removed
    /// subtree counts).
    pub removed: u64,
}

/// What one [`diff_tree`] call saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Entries compared (each path present on either side that was looked at).
    pub entries: u64,
    /// Paths reported.
    pub differing: u64,
    /// Content bytes compared (with `verify_content`).
    pub bytes: u64,
}

/// What the filesystem's lock callback returns: dropping it releases the lock.
pub type ChunkGuard = Box<dyn Any>;

type GuardFn = dyn Fn(&RelPath, bool) -> ChunkGuard + Send + Sync;

/// Shared state of one resync pass: throttle, live progress, cancellation,
/// the filesystem's per-file lock, and the hard links seen so far.
///
/// Use one `CopyControl` for all the [`sync_path`] calls of one pass (it may
/// be shared by several worker threads): hard links are re-created across
/// calls only through it.
pub struct CopyControl {
    /// Bandwidth limit for content; may be shared with other passes.
    pub throttle: Arc<Throttle>,
    /// Compare each chunk of content with the destination's and write only
    /// the chunks that differ (a verifying pass). Otherwise every chunk is
    /// written.
    pub verify_content: bool,
    /// Other hosts may write the source and the destination while this
    /// pass copies (they share the replicas through a ring; no lock of
    /// this host keeps them out): each chunk's source is read again after
    /// the destination was written, and copied again if it changed
    /// meanwhile. Sound because such hosts write a replica that another
    /// host copies into only after the others took the change (src/DESIGN.md
    /// section 7, "Writes beside another host's resync").
    pub recheck_source: bool,
    /// Live progress: entries brought up to date so far.
    pub files_done: AtomicU64,
    /// Live progress: content bytes processed so far.
    pub bytes_done: AtomicU64,
    cancelled: AtomicBool,
    guard: Box<GuardFn>,
    links: Mutex<LinkMap>,
    link_hint: Box<HintFn>,
    displaced: Box<DisplaceFn>,
    replaced: Box<ReplacedFn>,
    made: Box<MadeFn>,
    listed: Box<ListedFn>,
}

/// Called with a directory's path between the listings of its source and
/// its destination (see [`CopyControl::with_listed`]).
type ListedFn = dyn Fn(&RelPath) + Send + Sync;

/// (destination replica index, the destination inode's stat): see
/// [`CopyControl::with_replaced`].
type ReplacedFn = dyn Fn(usize, &Stat) + Send + Sync;

/// (destination replica index, path, the new entry's stat).
type MadeFn = dyn Fn(usize, &RelPath, &Stat) + Send + Sync;

type HintFn = dyn Fn(&RelPath) -> Vec<RelPath> + Send + Sync;

/// (source replica index, destination replica index, source inode's
/// stat, destination inode's stat) -> the destination inode is held for
/// another file (see [`CopyControl::with_displace`]).
type DisplaceFn = dyn Fn(usize, usize, &Stat, &Stat) -> bool + Send + Sync;

/// Hard-link bookkeeping across the calls of one pass.
#[derive(Default)]
pub(crate) struct LinkMap {
    /// Source inode (dev, ino) with more than one link -> the path it was
    /// first synced at (on both replicas).
    pub(crate) first: HashMap<(u64, u64), RelPath>,
    /// Destination inode (dev, ino) -> the source replica and the source
    /// inode it now holds a copy of, so that a destination inode shared by
    /// unrelated paths is never written in place for two different sources.
    /// (Inode numbers of two source replicas say nothing of each other.)
    pub(crate) claimed: HashMap<(u64, u64), (usize, (u64, u64))>,
    /// (source replica, path) of each first copy made anew, in order: a
    /// group whose other names the pass never met may be left split on
    /// the destination ([`CopyControl::first_copies`]).
    pub(crate) first_copies: Vec<(usize, RelPath)>,
}

impl CopyControl {
    /// A pass limited to `bytes_per_sec` (0 = unlimited), without a lock.
    pub fn new(bytes_per_sec: u64) -> CopyControl {
        CopyControl::with_throttle(Arc::new(Throttle::new(bytes_per_sec)))
    }

    /// A pass sharing an existing throttle (one bandwidth for all workers).
    pub fn with_throttle(throttle: Arc<Throttle>) -> CopyControl {
        CopyControl {
            throttle,
            verify_content: false,
            recheck_source: false,
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            cancelled: AtomicBool::new(false),
            guard: Box::new(|_, _| Box::new(())),
            links: Mutex::new(LinkMap::default()),
            link_hint: Box::new(|_| Vec::new()),
            displaced: Box::new(|_, _, _, _| false),
            replaced: Box::new(|_, _| {}),
            made: Box::new(|_, _, _| ()),
            listed: Box::new(|_| ()),
        }
    }

    /// Sets what runs between the listing of a directory's source and of
    /// its destination (where another host's change may land, in tests).
    pub fn with_listed(mut self, f: impl Fn(&RelPath) + Send + Sync + 'static) -> CopyControl {
        self.listed = Box::new(f);
        self
    }

    /// Sets who learns which inode each entry the copy synced is on the
    /// destination (made anew, linked to a first copy, or kept):
    /// `f(dst, path, stat)`, called under the path's guard, before the
    /// path's mark can be cleared. The filesystem keeps the number it gave
    /// the path's file (src/DESIGN.md section 4, inode numbers): a name the
    /// resync remade is the same file to it.
    pub fn with_made(
        mut self,
        f: impl Fn(usize, &RelPath, &Stat) + Send + Sync + 'static,
    ) -> CopyControl {
        self.made = Box::new(f);
        self
    }

    /// Tells [`CopyControl::with_made`]'s function about a new entry.
    pub(crate) fn made(&self, dst: usize, path: &RelPath, st: &Stat) {
        (self.made)(dst, path, st)
    }

    /// Sets how the engine learns that a destination file is held open by
    /// the filesystem for another file than the source's: `f(src, dst,
    /// s, d)` returns true when some open holds inode `d` on replica `dst`
    /// while its file on replica `src` is not inode `s` (it was renamed
    /// away or unlinked there, and `dst` missed that). Such a destination
    /// is never written in place: it is replaced by a new file, so that
    /// the open's writes do not land in the copy. Called under the path's
    /// guard, before the copy of a regular file over an existing one.
    pub fn with_displace(
        mut self,
        f: impl Fn(usize, usize, &Stat, &Stat) -> bool + Send + Sync + 'static,
    ) -> CopyControl {
        self.displaced = Box::new(f);
        self
    }

    /// Sets how the engine tells the filesystem that destination inode `d`
    /// on replica `dst`, an older copy of the file being synced that has
    /// other names not part of the file's group on the source, is about to
    /// be replaced by a new inode (`f(dst, d)`): opens holding it let go of
    /// it, or they would keep reading and writing a copy that no longer is
    /// the file's. Called under the path's guard.
    pub fn with_replaced(
        mut self,
        f: impl Fn(usize, &Stat) + Send + Sync + 'static,
    ) -> CopyControl {
        self.replaced = Box::new(f);
        self
    }

    /// Sets where other names of a file may be learnt: `f(path)` returns
    /// names the filesystem knows for the same file. A file with several
    /// links whose other names were not synced in this pass (a hard link
    /// made while the destination was out) is linked to one of them on the
    /// destination instead of copied. Names in the same directory are
    /// always looked for.
    pub fn with_link_hint(
        mut self,
        f: impl Fn(&RelPath) -> Vec<RelPath> + Send + Sync + 'static,
    ) -> CopyControl {
        self.link_hint = Box::new(f);
        self
    }

    /// Sets the filesystem's lock: `f(path, every)` must return once the
    /// file (or directory) at `path` may be changed on the destination
    /// without racing a mutation through the mount, and keep it so until its
    /// result is dropped. With `linked` (a file with several links) no
    /// mutation through another name of the file the filesystem knows may
    /// run meanwhile either: it changes the same inode. It is called around each chunk of content, around the
    /// copy of an entry's attributes, around the creation or replacement of
    /// an entry, and around the listing of a directory on both sides plus
    /// the removal of its extra entries. Never nested: the engine holds at
    /// most one guard at a time, and sleeps for the throttle without one.
    pub fn with_chunk_guard(
        mut self,
        f: impl Fn(&RelPath, bool) -> ChunkGuard + Send + Sync + 'static,
    ) -> CopyControl {
        self.guard = Box::new(f);
        self
    }

    /// Makes this a verifying pass (see [`CopyControl::verify_content`]).
    pub fn verifying(mut self, verify: bool) -> CopyControl {
        self.verify_content = verify;
        self
    }

    /// See [`CopyControl::recheck_source`].
    pub fn rechecking_source(mut self, recheck: bool) -> CopyControl {
        self.recheck_source = recheck;
        self
    }

    /// Takes the filesystem's lock for `path`.
    pub fn chunk_guard(&self, path: &RelPath) -> ChunkGuard {
        (self.guard)(path, false)
    }

    /// Takes the filesystem's lock for `path` and every other name of its
    /// file (see [`CopyControl::with_chunk_guard`]), for a file with
    /// several links.
    pub fn linked_guard(&self, path: &RelPath) -> ChunkGuard {
        (self.guard)(path, true)
    }

    /// Asks every running call of this pass to stop soon (they return ECANCELED).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// The first copies of files with several links made anew so far
    /// (a copy in place keeps the destination's names on the inode):
    /// (source replica index, path). A pass links every other name of such a file
    /// it meets to its first copy, but meets only the names it syncs: a
    /// name elsewhere that the destination holds as a separate file stays
    /// one (the caller compares link counts, src/DESIGN.md section 5,
    /// "Hard links").
    pub fn first_copies(&self) -> Vec<(usize, RelPath)> {
        self.links.lock().first_copies.clone()
    }

    /// Forgets the hard links seen so far (start of a new pass).
    pub fn forget_links(&self) {
        *self.links.lock() = LinkMap::default();
    }

    fn add_progress(&self, files: u64, bytes: u64) {
        if files != 0 {
            self.files_done.fetch_add(files, Ordering::Relaxed);
        }
        if bytes != 0 {
            self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// Whether `path` is the replica's internal entry or lies beneath it.
fn is_internal(path: &RelPath) -> bool {
    let mut cur = path.clone();
    while let Some((parent, name)) = cur.split() {
        if parent == RelPath::root() {
            return name.as_os() == INTERNAL_NAME;
        }
        cur = parent;
    }
    false
}

/// Errors that mean a path is not there as a directory on a replica: gone,
/// or one of its components is a file or a symlink.
fn is_absent(e: Errno) -> bool {
    matches!(e.0, libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
}

/// The stat of entry `name` of `dir` (not following a symlink), or None if
/// there is no such entry.
fn stat_opt(dir: BorrowedFd, name: &CStr) -> Result<Option<Stat>> {
    match ops::stat_at(dir, name) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e == Errno::ENOENT => Ok(None),
        Err(e) => Err(e),
    }
}

/// The entries of directory `dir`, sorted by name, without the internal
/// entry when `dir` is a replica root.
fn list_dir(dir: BorrowedFd, at_root: bool) -> Result<Vec<RawDirEntry>> {
    let mut v = ops::read_dir(sys::reopen_dir(dir)?)?;
    if at_root {
        v.retain(|e| e.name.as_bytes() != INTERNAL_NAME.as_bytes());
    }
    v.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// A directory entry's name as a validated [`Name`].
fn entry_name(e: &RawDirEntry) -> Result<Name> {
    Name::new(OsStr::from_bytes(e.name.as_bytes()))
}
