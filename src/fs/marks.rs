//! What the metadata store learns from the write path: intent marks before
//! a mutation, and missed marks for replicas that did not get it
//! (src/DESIGN.md section 5).
//!
//! Intent marks are counted in memory per path, so the store sees one mark
//! per path however many operations or open-for-write sessions overlap:
//! `intend` writes it on the first, `release_intent` clears it after the
//! last.
//!
//! A missed mark comes from what an operation did: every replica it did
//! not reach (not a target, no fd there, failed, timed out) is marked for
//! the paths it changed, whatever state the replica is in. A replica that
//! gets a mark while in sync keeps serving everything else, but not that
//! path or anything beneath it (`stale`), until the mark is copied; it is
//! named behind in the ledger meanwhile. Marks are cleared only by the copy
//! that covered them: each mark bumps a generation of its path (striped),
//! and the resync clears a mark only if no mark of that path came after its
//! copy began.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{AUDIT, ChironFs};
use crate::errno::Errno;
use crate::meta::MetaStore;
use crate::replica::{RelPath, State};

/// Path generation stripes: two paths sharing one only cost a retry.
const STRIPES: usize = 4096;

pub struct Marks {
    pub store: Arc<dyn MetaStore>,
    pending: Mutex<HashMap<RelPath, u32>>,
    /// Per replica, per stripe of paths: bumped before every missed mark
    /// of a path in it for that replica.
    stripes: Box<[AtomicU64]>,
    /// The ledger's last generation; the lock orders ledger writes.
    pub ledger: Mutex<u64>,
    /// Paths marked for replicas that were in sync when marked: those
    /// replicas serve no read of the path (or beneath it) until the mark
    /// is copied. Replica indices per path.
    stale: Mutex<HashMap<RelPath, Vec<usize>>>,
    /// Entries of `stale` (reads skip the lookup while it is 0).
    stale_paths: AtomicUsize,
}

impl Marks {
    pub fn new(store: Arc<dyn MetaStore>, replicas: usize, ledger_generation: u64) -> Marks {
        Marks {
            store,
            pending: Mutex::new(HashMap::new()),
            stripes: (0..STRIPES * replicas).map(|_| AtomicU64::new(0)).collect(),
            ledger: Mutex::new(ledger_generation),
            stale: Mutex::new(HashMap::new()),
            stale_paths: AtomicUsize::new(0),
        }
    }

    /// Whether any in-sync replica has a stale path (one atomic load: the
    /// read path asks this before it builds a path to look up).
    pub fn any_stale(&self) -> bool {
        self.stale_paths.load(Ordering::SeqCst) != 0
    }

    /// Whether replica `i` must not serve `p`: `p` or a directory above it
    /// is marked for it while it is in sync.
    pub fn is_stale(&self, i: usize, p: &RelPath) -> bool {
        if self.stale_paths.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let stale = self.stale.lock();
        let mut cur = Some(p.clone());
        while let Some(q) = cur {
            if stale.get(&q).is_some_and(|v| v.contains(&i)) {
                return true;
            }
            cur = q.split().map(|(parent, _)| parent);
        }
        false
    }

    /// Whether replica `i` has stale paths (its resync must copy them).
    pub fn has_stale(&self, i: usize) -> bool {
        self.stale_paths.load(Ordering::SeqCst) != 0
            && self.stale.lock().values().any(|v| v.contains(&i))
    }

    /// Adds (`p`, `i`) to the stale set; returns whether `i` had none before.
    fn add_stale(&self, p: &RelPath, i: usize) -> bool {
        let mut stale = self.stale.lock();
        let first = !stale.values().any(|v| v.contains(&i));
        let v = stale.entry(p.clone()).or_default();
        if v.is_empty() {
            self.stale_paths.fetch_add(1, Ordering::SeqCst);
        }
        if !v.contains(&i) {
            v.push(i);
        }
        first
    }

    /// Forgets every stale path of replica `i` (its marks were dropped).
    pub fn clear_stale(&self, i: usize) {
        let mut stale = self.stale.lock();
        stale.retain(|_, v| {
            v.retain(|&r| r != i);
            !v.is_empty()
        });
        self.stale_paths.store(stale.len(), Ordering::SeqCst);
    }

    /// Removes (`p`, `i`); returns whether `i` has none left.
    fn remove_stale(&self, p: &RelPath, i: usize) -> bool {
        if self.stale_paths.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let mut stale = self.stale.lock();
        let Some(v) = stale.get_mut(p) else {
            return false;
        };
        let before = v.len();
        v.retain(|&r| r != i);
        if v.len() == before {
            return false;
        }
        if v.is_empty() {
            stale.remove(p);
            self.stale_paths.fetch_sub(1, Ordering::SeqCst);
        }
        !stale.values().any(|v| v.contains(&i))
    }

    fn stripe(&self, p: &RelPath, replica: usize) -> &AtomicU64 {
        let h = (xxhash_rust::xxh3::xxh3_64(p.as_bytes()) % STRIPES as u64) as usize;
        &self.stripes[replica * STRIPES + h]
    }

    /// The generation of replica `replica`'s marks of `p`: read it before
    /// copying `p`, and clear with [`ChironFs::clear_covered`].
    pub fn generation(&self, p: &RelPath, replica: usize) -> u64 {
        self.stripe(p, replica).load(Ordering::SeqCst)
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

/// Whether `op` changes what it reaches (a sync does not: a replica it
/// does not reach misses nothing).
pub(super) fn is_change(op: &str) -> bool {
    !matches!(op, "fsync" | "fsyncdir")
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
    /// Records intent for `paths` before a mutation is issued. An error
    /// here fails the operation (EIO): a mutation the store cannot vouch
    /// for is not issued.
    pub(super) fn intend(&self, op: &str, paths: &[RelPath]) -> crate::errno::Result<()> {
        for (k, p) in paths.iter().enumerate() {
            let first = {
                let mut pending = self.marks.pending.lock();
                let n = pending.entry(p.clone()).or_insert(0);
                *n += 1;
                *n == 1
            };
            if first && let Err(e) = self.marks.store.mark_pending(p.as_bytes()) {
                tracing::error!("metadata store: cannot record intent for {op} {p}: {e}");
                self.release_intent(&paths[..=k]);
                return Err(Errno::EIO);
            }
        }
        Ok(())
    }

    /// The intent for `paths` is cleared once no other operation holds it.
    pub(super) fn release_intent(&self, paths: &[RelPath]) {
        for p in paths {
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

    /// Intent for `paths`, and a missed mark for every replica that is not
    /// among `targets` (it will not receive the mutation).
    pub(super) fn begin(
        &self,
        op: &str,
        paths: &[RelPath],
        targets: &[usize],
    ) -> crate::errno::Result<()> {
        self.intend(op, paths)?;
        let skipped = self
            .replicas
            .iter()
            .filter(|r| is_change(op) && !targets.contains(&r.index));
        for r in skipped {
            for p in paths {
                self.record_missed(p, r.index);
            }
        }
        Ok(())
    }

    /// The mutation is done: replicas in `missed` did not get it (marked
    /// again now that it is applied, so a copy that began before it cannot
    /// clear the mark); the intent is released.
    pub(super) fn end(&self, paths: &[RelPath], missed: &[usize]) {
        for p in paths {
            for &i in missed {
                self.record_missed(p, i);
            }
        }
        self.release_intent(paths);
    }

    /// Replica `replica` lacks a change of `p`. Order matters (see the
    /// module doc and `resync`): the path's generation is bumped before the
    /// mark is written, the replica's after it, and only then is the path
    /// taken from an in-sync replica's reads.
    pub(super) fn record_missed(&self, p: &RelPath, replica: usize) {
        self.record_missed_name(p, replica);
        // A file with several links: its other names are the same inode,
        // and the replica must not serve them either (src/DESIGN.md
        // section 4, "Who may serve a path").
        for q in self.other_names(p) {
            self.record_missed_name(&q, replica);
        }
    }

    /// The other names the inode table knows for `p`'s file, if it has
    /// several links.
    fn other_names(&self, p: &RelPath) -> Vec<RelPath> {
        let t = self.inodes.read();
        match t.resolve(p) {
            Some(ino) if t.has_links(ino) => t.names_of(p).into_iter().filter(|q| q != p).collect(),
            _ => Vec::new(),
        }
    }

    fn record_missed_name(&self, p: &RelPath, replica: usize) {
        let r = &self.replicas[replica];
        tracing::trace!(target: AUDIT, "mark {p} r{replica}");
        self.marks.stripe(p, replica).fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.marks.store.mark_missed(p.as_bytes(), &r.id) {
            // The replica cannot be trusted to be complete any more.
            tracing::error!(
                "metadata store: cannot record that replica {} missed {p}: {e}",
                r.id
            );
            r.needs_full.store(true, Ordering::SeqCst);
        }
        r.mark_generation.fetch_add(1, Ordering::SeqCst);
        // With a ring, before the mark counts: a change that misses the
        // replica meanwhile waits until the other hosts know it is behind.
        let _leaving = (r.state() == State::InSync)
            .then(|| self.leaving(replica))
            .flatten();
        if r.state() == State::InSync && self.marks.add_stale(p, replica) {
            // Its first: the ledger names it behind until its marks are
            // copied, and so does its view for the other hosts.
            self.record_ledger();
            self.mark_behind(replica);
        }
    }

    /// What the marks at or beneath `from` say a replica lacks is now (also)
    /// at `to`: a rename or a link moved it there on every replica that
    /// applied it, stale copies included. Marks are copied, never moved.
    pub(super) fn carry_marks(&self, from: &RelPath, to: &RelPath) {
        tracing::trace!(target: AUDIT, "carry marks {from} -> {to}");
        let store = &self.marks.store;
        let mut prefix = from.as_bytes().to_vec();
        prefix.push(b'/');
        for r in self.replicas.iter() {
            if store.missed(&r.id, None, 1).map_or(true, |m| m.is_empty()) {
                continue;
            }
            if store.is_missed(from.as_bytes(), &r.id).unwrap_or(true) {
                self.record_missed(to, r.index);
            }
            let mut after = prefix.clone();
            loop {
                let Ok(batch) = store.missed(&r.id, Some(&after), 256) else {
                    // Cannot tell what is beneath: the replica is compared.
                    r.needs_full.store(true, Ordering::SeqCst);
                    break;
                };
                let under: Vec<&Vec<u8>> = batch
                    .iter()
                    .take_while(|m| m.starts_with(&prefix))
                    .collect();
                for m in &under {
                    let moved = [to.as_bytes(), &m[from.as_bytes().len()..]].concat();
                    if let Some(q) = RelPath::from_bytes(&moved) {
                        self.record_missed(&q, r.index);
                    }
                }
                match under.last() {
                    Some(last) if under.len() == batch.len() => after = (*last).clone(),
                    _ => break,
                }
            }
        }
    }

    /// Clears replica `replica`'s mark of `p` after a copy that began at
    /// generation `generation`; if a mark of `p` came after that, the mark
    /// stays (is written again). Returns whether it was cleared.
    pub(super) fn clear_covered(
        &self,
        raw: &[u8],
        p: &RelPath,
        replica: usize,
        generation: u64,
    ) -> crate::meta::Result<bool> {
        let id = self.replicas[replica].id;
        self.marks.store.clear_missed(raw, &id)?;
        if self.marks.generation(p, replica) != generation {
            self.marks.store.mark_missed(raw, &id)?;
            tracing::trace!(target: AUDIT, "clear {p} r{replica}: kept (generation moved)");
            return Ok(false);
        }
        let removed = self.marks.remove_stale(p, replica);
        // A mark that came between the check above and the removal (its
        // generation moves before it writes the store and the stale set)
        // stands: the store has it, and so must the stale set, or the
        // replica would serve the path (and, with no other stale path,
        // never be resynced for it).
        if self.marks.generation(p, replica) != generation {
            self.marks.store.mark_missed(raw, &id)?;
            let first =
                self.replicas[replica].state() == State::InSync && self.marks.add_stale(p, replica);
            // Even if this call emptied the set: another thread may have
            // written the ledger in between.
            if first {
                self.record_ledger();
            }
            tracing::trace!(target: AUDIT, "clear {p} r{replica}: kept (generation moved while clearing)");
            return Ok(false);
        }
        tracing::trace!(target: AUDIT, "clear {p} r{replica}: cleared");
        if removed {
            self.record_ledger();
        }
        Ok(true)
    }

    /// Makes every mark written so far durable (the application fsynced).
    pub(super) fn sync_marks(&self) -> crate::errno::Result<()> {
        self.marks.store.sync().map_err(|e| {
            tracing::error!("metadata store: sync failed: {e}");
            Errno::EIO
        })
    }
}
