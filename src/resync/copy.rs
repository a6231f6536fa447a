//! `sync_path`: make one path (and, by mode, what is beneath it) on the
//! destination replica identical to the source replica's.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{BorrowedFd, OwnedFd};

use super::attrs::{self, copy_attrs, inode_key, is_dir, kind, same_inode, same_mtime};
use super::{
    CHUNK, ChunkGuard, CopyControl, CopyStats, SyncMode, entry_name, is_absent, is_internal,
    list_dir, stat_opt, sys,
};
use crate::errno::{Errno, Result};
use crate::replica::ops::{self, At, Stat, fd_of};
use crate::replica::{Name, RelPath, Replica};

/// Raised internally when an entry changed type or identity between two
/// looks at it (a racing mutation): the entry is synced again from scratch.
const RACED: Errno = Errno(libc::EAGAIN);
const CANCELED: Errno = Errno(libc::ECANCELED);
/// Copies of one chunk whose source keeps changing under another host's
/// writes before the path is left for the next pass (`copy_data`).
const RECHECKS: usize = 8;

/// Makes `path` on `dst` identical to `path` on `src` (see [`SyncMode`]).
///
/// - absent on `src`: removed from `dst` (recursively), but only after
///   checking that `src` is still its healthy self, so a vanished source
///   never empties the destination;
/// - absent on `dst`: created, with everything beneath it; a missing or
///   wrong-typed parent on `dst` is brought over first (with its content);
/// - a different type: the `dst` entry is removed and recreated;
/// - regular files are copied in place, chunk by chunk, each chunk under
///   [`CopyControl::chunk_guard`]; holes of the source stay holes;
/// - then owner, mode, xattrs (ACLs included) and times, times last (for a
///   directory, after its children);
/// - a source inode with several links, seen again in the same pass (the
///   same `ctl`), is hard-linked on `dst` to its first copy.
///
/// Errors on single entries (a racing rename, an xattr the destination
/// refuses) do not stop the walk: the rest is synced and the first such
/// error is returned at the end. Errors that mean a replica is unhealthy
/// (EIO, ENOSPC...) and cancellation stop it at once. Progress is added to
/// `ctl` as it goes, so it counts even when an error is returned.
pub fn sync_path(
    src: &Replica,
    dst: &Replica,
    path: &RelPath,
    mode: SyncMode,
    ctl: &CopyControl,
) -> Result<CopyStats> {
    if is_internal(path) {
        return Err(Errno::EINVAL);
    }
    let mut job = Job {
        src,
        dst,
        target: path,
        mode,
        ctl,
        stats: CopyStats::default(),
        first_err: None,
        buf: Vec::new(),
        buf2: Vec::new(),
        use_cfr: true,
    };
    job.sync_target(path)?;
    match job.first_err {
        Some(e) => Err(e),
        None => Ok(job.stats),
    }
}

struct Job<'a> {
    src: &'a Replica,
    dst: &'a Replica,
    /// The path this call syncs (the marked one; others are beneath it).
    target: &'a RelPath,
    mode: SyncMode,
    ctl: &'a CopyControl,
    stats: CopyStats,
    /// The first error that did not stop the walk.
    first_err: Option<Errno>,
    buf: Vec<u8>,
    buf2: Vec<u8>,
    /// copy_file_range works between these replicas (until it says otherwise).
    use_cfr: bool,
}

/// Whether an error stops the whole call rather than just one entry.
fn is_fatal(e: Errno) -> bool {
    e == CANCELED || e.is_replica_failure()
}

impl Job<'_> {
    fn guard(&self, path: &RelPath) -> ChunkGuard {
        self.ctl.chunk_guard(path)
    }

    /// The guard for the content or attributes of a file with `nlink`
    /// links: with several, against mutations through its other names too
    /// (they change the same inode; src/DESIGN.md section 5, "Hard links").
    fn file_guard(&self, path: &RelPath, nlink: u64) -> ChunkGuard {
        if nlink > 1 {
            self.ctl.linked_guard(path)
        } else {
            self.ctl.chunk_guard(path)
        }
    }

    fn check_cancel(&self) -> Result<()> {
        if self.ctl.is_cancelled() {
            Err(CANCELED)
        } else {
            Ok(())
        }
    }

    /// Keeps going after a per-entry error, remembering the first one.
    fn absorb(&mut self, path: &RelPath, r: Result<()>) -> Result<()> {
        match r {
            Err(e) if is_fatal(e) => Err(e),
            // ENOENT everywhere when a replica itself has gone: stop.
            Err(e)
                if matches!(e.0, libc::ENOENT | libc::ENOTDIR)
                    && (self.dst.check_health().is_err() || self.src.check_health().is_err()) =>
            {
                Err(e)
            }
            Err(e) => {
                tracing::warn!(path = %path, errno = e.0, "resync of {path} failed: {e}");
                self.first_err.get_or_insert(e);
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    fn count_entry(&mut self) {
        self.stats.files += 1;
        self.ctl.add_progress(1, 0);
    }

    /// The source says a path is absent: make sure that is the truth about
    /// the path, not about a source replica that has vanished (deleted
    /// root, unmounted NFS, missing marker), before removing anything.
    fn confirm_source(&self) -> Result<()> {
        self.src.check_health().map_err(|e| {
            tracing::warn!(
                replica = %self.src.spec.path.display(),
                "resync source looks gone ({e}); nothing removed"
            );
            if e.is_replica_failure() {
                e
            } else {
                Errno(libc::ENODEV)
            }
        })
    }

    fn sync_target(&mut self, path: &RelPath) -> Result<()> {
        let Some((parent, name)) = path.split() else {
            return self.sync_root();
        };
        let sdir = match self.src.dir(&parent) {
            Ok(d) => Some(d),
            Err(e) if is_absent(e) => None,
            Err(e) => return Err(e),
        };
        let ddir = match self.dst.dir(&parent) {
            Ok(d) => d,
            // Absent on both: nothing to do.
            Err(e) if is_absent(e) && sdir.is_none() => return Ok(()),
            // The parent is missing on dst, or is a file or a symlink
            // there: sync the parent, which brings this path with it.
            Err(e) if is_absent(e) => return self.sync_target(&parent),
            Err(e) => return Err(e),
        };
        let before = ops::fstat(fd_of(&ddir))?;
        let r = match &sdir {
            Some(sdir) => self.sync_entry(fd_of(sdir), fd_of(&ddir), path, &name),
            None => {
                let _g = self.guard(path);
                if stat_opt(fd_of(&ddir), name.as_c())?.is_some() {
                    self.confirm_source()?;
                    self.remove_entry(fd_of(&ddir), name.as_c())?;
                }
                Ok(())
            }
        };
        self.absorb(path, r)?;
        // Creating, replacing or removing the entry changed its parent's
        // mtime on dst: give it the source parent's times again.
        if let Some(sdir) = &sdir
            && !same_mtime(&before, &ops::fstat(fd_of(&ddir))?)
        {
            let _g = self.guard(&parent);
            let sst = ops::fstat(fd_of(sdir))?;
            At::Fd(fd_of(&ddir)).utimens(&attrs::times_of(&sst))?;
        }
        Ok(())
    }

    fn sync_root(&mut self) -> Result<()> {
        let root = RelPath::root();
        let sroot = self.src.dir(&root)?;
        let droot = self.dst.dir(&root)?;
        self.sync_children(&root, fd_of(&sroot), fd_of(&droot))?;
        let _g = self.guard(&root);
        let sst = ops::fstat(fd_of(&sroot))?;
        copy_attrs(At::Fd(fd_of(&sroot)), &sst, At::Fd(fd_of(&droot)))?;
        self.count_entry();
        Ok(())
    }

    /// Syncs entry `name` of the directories `sdir` (source) and `ddir`
    /// (destination), which are `path`'s parent on each replica.
    fn sync_entry(
        &mut self,
        sdir: BorrowedFd,
        ddir: BorrowedFd,
        path: &RelPath,
        name: &Name,
    ) -> Result<()> {
        let mut tries = 0;
        loop {
            self.check_cancel()?;
            match self.sync_entry_once(sdir, ddir, path, name) {
                Err(e) if e == RACED && tries < 3 => tries += 1,
                r => return r,
            }
        }
    }

    fn sync_entry_once(
        &mut self,
        sdir: BorrowedFd,
        ddir: BorrowedFd,
        path: &RelPath,
        name: &Name,
    ) -> Result<()> {
        let n = name.as_c();
        let g = self.guard(path);
        let Some(sst) = stat_opt(sdir, n)? else {
            if stat_opt(ddir, n)?.is_some() {
                self.confirm_source()?;
                self.remove_entry(ddir, n)?;
                // Made again on the source meanwhile (by another host): the
                // removal may have taken its copy on the destination.
                if self.ctl.recheck_source && stat_opt(sdir, n)?.is_some() {
                    return Err(RACED);
                }
            }
            return Ok(());
        };
        let mut dst_st = stat_opt(ddir, n)?;
        if let Some(d) = &dst_st
            && kind(d) != kind(&sst)
        {
            self.remove_entry(ddir, n)?;
            dst_st = None;
        }
        match kind(&sst) {
            libc::S_IFDIR => self.sync_dir(sdir, ddir, path, n, dst_st.is_some(), g),
            libc::S_IFREG => self.sync_file(sdir, ddir, path, n, &sst, dst_st, g),
            _ => {
                self.sync_special(sdir, ddir, path, n, &sst, dst_st)?;
                drop(g);
                self.count_entry();
                Ok(())
            }
        }
    }

    /// A directory: create it if missing, reconcile its entries, then its
    /// own attributes (last, so its mtime is the source's).
    fn sync_dir(
        &mut self,
        sdir: BorrowedFd,
        ddir: BorrowedFd,
        path: &RelPath,
        name: &CStr,
        exists: bool,
        g: ChunkGuard,
    ) -> Result<()> {
        if !exists {
            match ops::mkdirat(ddir, name, 0o700) {
                Err(e) if e.0 == libc::EEXIST => return Err(RACED),
                r => r?,
            }
        }
        let sd = sys::open_subdir(sdir, name).map_err(raced_if_absent)?;
        let dd = sys::open_subdir(ddir, name).map_err(raced_if_absent)?;
        let dst_now = ops::fstat(fd_of(&dd))?;
        self.made(path, exists.then_some(&dst_now), &dst_now);
        drop(g);
        self.sync_children(path, fd_of(&sd), fd_of(&dd))?;
        let _g = self.guard(path);
        let sst = ops::fstat(fd_of(&sd))?;
        copy_attrs(At::Fd(fd_of(&sd)), &sst, At::Fd(fd_of(&dd)))?;
        self.count_entry();
        Ok(())
    }

    /// Reconciles the entries of directory `path`, open as `sd` and `dd`.
    fn sync_children(&mut self, path: &RelPath, sd: BorrowedFd, dd: BorrowedFd) -> Result<()> {
        let at_root = *path == RelPath::root();
        let g = self.guard(path);
        let slist = list_dir(sd, at_root)?;
        (self.ctl.listed)(path);
        let dlist = list_dir(dd, at_root)?;
        let src_names: HashMap<&CString, u8> = slist.iter().map(|e| (&e.name, e.kind)).collect();
        let extras: Vec<&CString> = dlist
            .iter()
            .filter(|e| !src_names.contains_key(&e.name))
            .map(|e| &e.name)
            .collect();
        if !extras.is_empty() {
            self.confirm_source()?;
            for name in extras {
                // Another host may have made it since the source was
                // listed: on the source first, so it is seen there now
                // (kept), or, if it lands during the removal, after it
                // (copied again).
                if self.ctl.recheck_source && stat_opt(sd, name)?.is_some() {
                    continue;
                }
                let r = self.remove_entry(dd, name);
                if self.ctl.recheck_source && stat_opt(sd, name)?.is_some() {
                    return Err(RACED);
                }
                let shown = entry_name_lossy(path, name);
                self.absorb(&shown, r)?;
            }
        }
        drop(g);
        let dst_kinds: HashMap<&CString, u8> = dlist.iter().map(|e| (&e.name, e.kind)).collect();
        for e in &slist {
            self.check_cancel()?;
            let name = match entry_name(e) {
                Ok(n) => n,
                Err(err) => {
                    let shown = entry_name_lossy(path, &e.name);
                    self.absorb(&shown, Err(err))?;
                    continue;
                }
            };
            let child = path.join(&name);
            let needed = match dst_kinds.get(&e.name) {
                None => true,
                Some(_) if self.mode == SyncMode::Tree => true,
                Some(_) => self.entry_differs(sd, dd, name.as_c())?,
            };
            if needed {
                let r = self.sync_entry(sd, dd, &child, &name);
                self.absorb(&child, r)?;
            }
        }
        Ok(())
    }

    /// Whether an entry present on both sides differs in what a stat shows
    /// (type, size, mtime, mode, owner): Entries mode syncs such an entry,
    /// and so a directory renamed or swapped while the destination was out
    /// is descended into. Replicas keep identical mtimes, so an entry whose
    /// stat matches is taken as equal.
    fn entry_differs(&self, sd: BorrowedFd, dd: BorrowedFd, name: &CStr) -> Result<bool> {
        Ok(match (stat_opt(sd, name)?, stat_opt(dd, name)?) {
            (Some(s), Some(d)) => {
                kind(&s) != kind(&d)
                    || !same_mtime(&s, &d)
                    || s.st_mode != d.st_mode
                    || s.st_uid != d.st_uid
                    || s.st_gid != d.st_gid
                    || (kind(&s) == libc::S_IFREG && s.st_size != d.st_size)
                    || (kind(&s) == libc::S_IFREG && s.st_nlink != d.st_nlink)
            }
            _ => true,
        })
    }

    /// Whether the destination inode `d` may be written in place for the
    /// source inode `s`: it has no other name; or this pass copied `s` into
    /// it (its names are names of `s` this pass linked to it: replacing it
    /// would split them off, while the names of `s` not linked yet have
    /// fewer links there); or, not claimed this pass from this source, it
    /// looks like the same link group (as many links).
    fn reusable(&self, s: &Stat, d: &Stat) -> bool {
        if d.st_nlink <= 1 {
            return true;
        }
        match self.ctl.links.lock().claimed.get(&inode_key(d)) {
            Some((src, k)) if *src == self.src.index => *k == inode_key(s),
            _ => s.st_nlink == d.st_nlink,
        }
    }

    /// Records that destination inode `d` now holds source inode `s`
    /// (only where links are involved: that is all [`Self::reusable`] asks).
    /// `made_anew`: `d` was just created, so names the destination had for
    /// the file elsewhere are still on another inode unless the pass links
    /// them (a first copy made anew is listed in `first_copies`).
    fn claim(&self, path: &RelPath, s: &Stat, d: &Stat, made_anew: bool) {
        if s.st_nlink <= 1 && d.st_nlink <= 1 {
            return;
        }
        let mut links = self.ctl.links.lock();
        links
            .claimed
            .insert(inode_key(d), (self.src.index, inode_key(s)));
        if s.st_nlink > 1
            && let std::collections::hash_map::Entry::Vacant(e) = links.first.entry(inode_key(s))
        {
            e.insert(path.clone());
            if made_anew {
                links.first_copies.push((self.src.index, path.clone()));
            }
        }
    }

    /// For a source inode with several links whose first copy this pass
    /// made elsewhere: makes the destination entry a link to that copy.
    /// Returns false when there is no usable first copy.
    fn link_to_first(
        &self,
        ddir: BorrowedFd,
        path: &RelPath,
        name: &CStr,
        sst: &Stat,
        dst_st: Option<&Stat>,
    ) -> Result<bool> {
        let key = inode_key(sst);
        let Some(first) = self.ctl.links.lock().first.get(&key).cloned() else {
            return Ok(false);
        };
        let Some((fparent, fname)) = first.split() else {
            return Ok(false);
        };
        if first == *path {
            return Ok(false);
        }
        // The first name must still be that inode on the source, and a copy
        // of the same type on the destination; otherwise forget it.
        let still = self
            .src
            .dir(&fparent)
            .and_then(|d| ops::stat_at(fd_of(&d), fname.as_c()));
        let fdir = self.dst.dir(&fparent);
        let (fdir, fst) = match (still, fdir) {
            (Ok(s), Ok(fdir)) if same_inode(&s, sst) => {
                match ops::stat_at(fd_of(&fdir), fname.as_c()) {
                    Ok(fst) if kind(&fst) == kind(sst) => (fdir, fst),
                    _ => return Ok(self.forget_first(key)),
                }
            }
            _ => return Ok(self.forget_first(key)),
        };
        tracing::trace!(target: "chironfs::audit", "link {path} to first copy {first}");
        if let Some(d) = dst_st {
            if same_inode(d, &fst) {
                return Ok(true);
            }
            ops::unlinkat(ddir, name, 0)?;
        }
        ops::linkat(fd_of(&fdir), fname.as_c(), ddir, name)?;
        Ok(true)
    }

    /// A source inode with several links not seen yet in this pass: finds
    /// another name of it (in the same directory, or one the filesystem
    /// knows) that the destination already has as a regular file with fewer
    /// links, and takes
    /// it as the first copy, so `path` becomes a link to it rather than an
    /// independent copy.
    /// Returns whether it took one.
    fn seed_first(&self, sdir: BorrowedFd, path: &RelPath, sst: &Stat) -> bool {
        let key = inode_key(sst);
        if self.ctl.links.lock().first.contains_key(&key) {
            return false;
        }
        let Some((parent, own)) = path.split() else {
            return false;
        };
        let mut names = (self.ctl.link_hint)(path);
        let here = sys::reopen_dir(sdir)
            .and_then(ops::read_dir)
            .unwrap_or_default();
        for e in here.iter().filter(|e| e.ino == sst.st_ino) {
            if let Ok(n) = entry_name(e)
                && n != own
            {
                names.push(parent.join(&n));
            }
        }
        for other in names.into_iter().filter(|n| n != path) {
            let Some((op, on)) = other.split() else {
                continue;
            };
            let same_on_src = self
                .src
                .dir(&op)
                .and_then(|d| ops::stat_at(fd_of(&d), on.as_c()))
                .is_ok_and(|s| same_inode(&s, sst));
            let on_dst = self
                .dst
                .dir(&op)
                .and_then(|d| ops::stat_at(fd_of(&d), on.as_c()))
                // Fewer links there than on the source: a name is missing
                // from its group, not part of another group.
                .is_ok_and(|d| kind(&d) == libc::S_IFREG && d.st_nlink < sst.st_nlink);
            if same_on_src && on_dst {
                self.ctl.links.lock().first.insert(key, other);
                return true;
            }
        }
        false
    }

    /// Tells the filesystem which inode `path` is on the destination now
    /// ([`CopyControl::with_made`]), whether or not it is another than
    /// `before`: the copy may also keep an entry the filesystem did not
    /// know there (a directory a rename failed to replace on this replica
    /// alone).
    fn made(&self, path: &RelPath, before: Option<&Stat>, now: &Stat) {
        if before.is_none_or(|b| !same_inode(b, now)) {
            tracing::trace!(
                target: "chironfs::audit",
                "{path} on r{} is now inode {}",
                self.dst.index,
                now.st_ino
            );
        }
        self.ctl.made(self.dst.index, path, now);
    }

    fn forget_first(&self, key: (u64, u64)) -> bool {
        self.ctl.links.lock().first.remove(&key);
        false
    }

    /// A regular file: in place, chunk by chunk, then its attributes.
    #[allow(clippy::too_many_arguments)]
    fn sync_file(
        &mut self,
        sdir: BorrowedFd,
        ddir: BorrowedFd,
        path: &RelPath,
        name: &CStr,
        sst: &Stat,
        dst_st: Option<Stat>,
        g: ChunkGuard,
    ) -> Result<()> {
        // Several links: from here on, no mutation through its other names.
        let g = if sst.st_nlink > 1 {
            drop(g);
            self.ctl.linked_guard(path)
        } else {
            g
        };
        let seeded = sst.st_nlink > 1 && self.seed_first(sdir, path, sst);
        let mut before = dst_st;
        let mut linked = None;
        if sst.st_nlink > 1 && self.link_to_first(ddir, path, name, sst, dst_st.as_ref())? {
            let now = ops::stat_at(ddir, name)?;
            self.made(path, before.as_ref(), &now);
            before = Some(now);
            // The first copy is current unless the file changed since: a
            // write that reached the source alone (marking the name it went
            // through, not the first) leaves another size or mtime (every
            // write sets one mtime on all the replicas it reaches).
            // The marked path itself is always copied, content (and, below,
            // attributes): a change through it that reached the source
            // alone may keep size and mtime (a later change through another
            // name set one mtime on every replica; chmod, xattrs).
            let unchanged = now.st_size == sst.st_size
                && (now.st_mtime, now.st_mtime_nsec) == (sst.st_mtime, sst.st_mtime_nsec);
            if !seeded && unchanged && path != self.target {
                drop(g);
                self.count_entry();
                return Ok(());
            }
            // Linked to a name this pass did not copy, or to a copy older
            // than the file: copied into the shared inode.
            linked = Some(now);
        }
        let sfd = sys::open_read(sdir, name).map_err(raced_if_absent)?;
        let sst2 = ops::fstat(fd_of(&sfd))?;
        if !same_inode(&sst2, sst) || kind(&sst2) != libc::S_IFREG {
            return Err(RACED);
        }
        let access = if self.ctl.verify_content {
            libc::O_RDWR
        } else {
            libc::O_WRONLY
        };
        let dst_st = linked.or(dst_st);
        // An open of another file holds the destination inode (the source
        // renamed or unlinked that file, and the destination missed it):
        // written in place, the copy would become what that open writes.
        let reusable = dst_st.as_ref().is_some_and(|d| self.reusable(sst, d));
        let reuse = linked.is_some()
            || dst_st.as_ref().is_some_and(|d| {
                reusable && !(self.ctl.displaced)(self.src.index, self.dst.index, sst, d)
            });
        let dfd = if reuse {
            let f =
                ops::openat(ddir, name, access | libc::O_NONBLOCK, 0).map_err(raced_if_absent)?;
            let now = ops::fstat(fd_of(&f))?;
            if dst_st.is_none_or(|d| !same_inode(&d, &now)) || kind(&now) != libc::S_IFREG {
                return Err(RACED);
            }
            f
        } else {
            if let Some(d) = &dst_st {
                // Shared with names that are not this file's on the source:
                // writing in place would change them too. Opens holding it
                // (of this file, made while it was the file's copy) let go
                // of it: it stops being the file's copy here.
                if !reusable {
                    (self.ctl.replaced)(self.dst.index, d);
                }
                ops::unlinkat(ddir, name, 0)?;
            }
            match ops::openat(ddir, name, access | libc::O_CREAT | libc::O_EXCL, 0o600) {
                Err(e) if e.0 == libc::EEXIST => return Err(RACED),
                r => r?,
            }
        };
        let dst_now = ops::fstat(fd_of(&dfd))?;
        tracing::trace!(
            target: "chironfs::audit",
            "file {path}: source inode {} nlink {}; destination inode {} ({}){}",
            sst.st_ino,
            sst.st_nlink,
            dst_now.st_ino,
            if reuse { "in place" } else { "made anew" },
            if linked.is_some() { ", linked to the first copy" } else { "" }
        );
        self.claim(path, sst, &dst_now, !reuse);
        self.made(path, before.as_ref(), &dst_now);
        drop(g);
        self.copy_content(path, &sfd, &dfd, sst.st_nlink)?;
        let _g = self.file_guard(path, ops::fstat(fd_of(&sfd))?.st_nlink.max(sst.st_nlink));
        let mut tries = 0;
        loop {
            let sst = ops::fstat(fd_of(&sfd))?;
            copy_attrs(At::Fd(fd_of(&sfd)), &sst, At::Fd(fd_of(&dfd)))?;
            // Another host's change of the source after the stat above
            // (its times, at least) reached the destination before the
            // copy of the attributes, or reaches it after: copied again in
            // the first case (see `copy_data`).
            if !self.ctl.recheck_source || same_attrs(&sst, &ops::fstat(fd_of(&sfd))?) {
                break;
            }
            tries += 1;
            if tries == RECHECKS {
                return Err(RACED);
            }
        }
        self.count_entry();
        Ok(())
    }

    /// Symlinks, FIFOs, sockets and devices (called under the entry's guard).
    fn sync_special(
        &mut self,
        sdir: BorrowedFd,
        ddir: BorrowedFd,
        path: &RelPath,
        name: &CStr,
        sst: &Stat,
        dst_st: Option<Stat>,
    ) -> Result<()> {
        if sst.st_nlink > 1 && self.link_to_first(ddir, path, name, sst, dst_st.as_ref())? {
            self.made(path, dst_st.as_ref(), &ops::stat_at(ddir, name)?);
            return Ok(());
        }
        let target = if kind(sst) == libc::S_IFLNK {
            Some(ops::readlinkat(sdir, name)?)
        } else {
            None
        };
        let keep = match &dst_st {
            None => false,
            Some(d) => {
                self.reusable(sst, d)
                    && match &target {
                        Some(t) => ops::readlinkat(ddir, name)? == *t,
                        None if attrs::has_rdev(sst) => d.st_rdev == sst.st_rdev,
                        None => true,
                    }
            }
        };
        if !keep {
            if dst_st.is_some() {
                ops::unlinkat(ddir, name, 0)?;
            }
            let r = match &target {
                Some(t) => {
                    let t = CString::new(t.clone()).map_err(|_| Errno::EINVAL)?;
                    ops::symlinkat(&t, ddir, name)
                }
                None => {
                    let rdev = if attrs::has_rdev(sst) { sst.st_rdev } else { 0 };
                    ops::mknodat(ddir, name, kind(sst) | 0o600, rdev)
                }
            };
            match r {
                Err(e) if e.0 == libc::EEXIST => return Err(RACED),
                r => r?,
            }
        }
        let now = ops::stat_at(ddir, name)?;
        self.claim(path, sst, &now, !keep);
        self.made(path, dst_st.as_ref(), &now);
        copy_attrs(At::Entry(sdir, name), sst, At::Entry(ddir, name))
    }

    /// Removes entry `name` of `dir` on the destination, recursively for a
    /// directory; never follows a symlink (unlinkat removes the link).
    fn remove_entry(&mut self, dir: BorrowedFd, name: &CStr) -> Result<()> {
        let Some(st) = stat_opt(dir, name)? else {
            return Ok(());
        };
        if is_dir(&st) {
            let sub = match sys::open_subdir(dir, name) {
                Ok(s) => s,
                Err(e) if is_absent(e) => return self.remove_entry(dir, name),
                Err(e) => return Err(e),
            };
            for e in ops::read_dir(sys::reopen_dir(fd_of(&sub))?)? {
                self.check_cancel()?;
                self.remove_entry(fd_of(&sub), &e.name)?;
            }
        }
        let flags = if is_dir(&st) { libc::AT_REMOVEDIR } else { 0 };
        match ops::unlinkat(dir, name, flags) {
            Err(e) if e == Errno::ENOENT => Ok(()),
            Err(e) => Err(e),
            Ok(()) => {
                self.stats.removed += 1;
                Ok(())
            }
        }
    }

    /// Copies the content of `sfd` over `dfd`, one guarded chunk at a time,
    /// following the source's size as it changes under live writes.
    fn copy_content(
        &mut self,
        path: &RelPath,
        sfd: &OwnedFd,
        dfd: &OwnedFd,
        nlink: u64,
    ) -> Result<()> {
        let (s, d) = (fd_of(sfd), fd_of(dfd));
        let mut off = 0u64;
        let mut nlink = nlink;
        loop {
            self.check_cancel()?;
            let mut g = self.file_guard(path, nlink);
            // A link made since the last chunk (link(2) waits for the
            // chunk in progress): from now on, guard its other names too.
            let now = ops::fstat(s)?.st_nlink;
            if now > 1 && nlink <= 1 {
                nlink = now;
                drop(g);
                g = self.file_guard(path, nlink);
            }
            let size = size_of(s)?;
            if size_of(d)? != size {
                At::Fd(d).truncate(size)?;
            }
            if off >= size {
                // Another host may have grown the source after the size
                // was read (and the destination after the truncate).
                if self.ctl.recheck_source && size_of(s)? != size {
                    continue;
                }
                break;
            }
            let len = (size - off).min(CHUNK as u64);
            let (data, written) = self.copy_range(s, d, off, len)?;
            drop(g);
            self.stats.bytes += data;
            self.stats.written += written;
            self.ctl.add_progress(0, data);
            if data > 0 && !self.ctl.throttle.take_or_cancel(data, &self.ctl.cancelled) {
                return Err(CANCELED);
            }
            off += len;
        }
        Ok(())
    }

    /// Makes `[off, off+len)` of `d` equal to `s`'s, keeping the source's
    /// holes as holes. Returns (data bytes processed, bytes written).
    fn copy_range(
        &mut self,
        s: BorrowedFd,
        d: BorrowedFd,
        off: u64,
        len: u64,
    ) -> Result<(u64, u64)> {
        let end = off + len;
        let (mut pos, mut data_bytes, mut written) = (off, 0, 0);
        while pos < end {
            let data = match seek(s, pos, libc::SEEK_DATA) {
                Ok(x) => x.clamp(pos, end),
                // No data from here to the end of the file.
                Err(e) if e.0 == libc::ENXIO => end,
                // No hole support: all data.
                Err(_) => pos,
            };
            if data > pos {
                written += self.zero_range(d, pos, data)?;
                // Data another host wrote there meanwhile is copied on
                // the next pass, not lost under the hole just made.
                if self.ctl.recheck_source && seek(s, pos, libc::SEEK_DATA).is_ok_and(|x| x < data)
                {
                    return Err(RACED);
                }
            }
            if data >= end {
                break;
            }
            let hole = match seek(s, data, libc::SEEK_HOLE) {
                Ok(x) if x > data => x.min(end),
                _ => end,
            };
            written += self.copy_data(s, d, data, hole - data)?;
            data_bytes += hole - data;
            pos = hole;
        }
        Ok((data_bytes, written))
    }

    /// Makes `[a, b)` of `d` read as zeros: nothing if it already is a
    /// hole, else punches one (writes zeros where punching is unsupported).
    fn zero_range(&mut self, d: BorrowedFd, a: u64, b: u64) -> Result<u64> {
        match seek(d, a, libc::SEEK_DATA) {
            Ok(x) if x >= b => return Ok(0),
            Err(e) if e.0 == libc::ENXIO => return Ok(0),
            _ => {}
        }
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match ops::fallocate(d, punch, a, b - a) {
            Ok(()) => Ok(0),
            Err(e) if e == Errno::ENOTSUP || e.0 == libc::ENOSYS => {
                let mut written = 0;
                let mut pos = a;
                while pos < b {
                    let n = (b - pos).min(CHUNK as u64) as usize;
                    if self.ctl.verify_content && self.dst_reads_zero(d, pos, n)? {
                        pos += n as u64;
                        continue;
                    }
                    let zeros = vec![0u8; n];
                    ops::pwrite_all(d, &zeros, pos)?;
                    written += n as u64;
                    pos += n as u64;
                }
                Ok(written)
            }
            Err(e) => Err(e),
        }
    }

    fn dst_reads_zero(&mut self, d: BorrowedFd, off: u64, n: usize) -> Result<bool> {
        self.buf2.resize(n, 0);
        let got = sys::pread_into(d, &mut self.buf2[..n], off)?;
        Ok(self.buf2[..got].iter().all(|&b| b == 0))
    }

    /// Copies `n` bytes of data at `off` (at most one chunk). With
    /// `verify_content`, reads both copies and writes only if they differ.
    fn copy_data(&mut self, s: BorrowedFd, d: BorrowedFd, off: u64, n: u64) -> Result<u64> {
        if !self.ctl.recheck_source {
            return self.copy_data_once(s, d, off, n);
        }
        // Other hosts may write both replicas meanwhile, the destination
        // after the source: a change that reached the destination before
        // the write below reached the source before the read after it.
        let n = n as usize;
        for _ in 0..RECHECKS {
            self.buf.resize(n, 0);
            let got = sys::pread_into(s, &mut self.buf[..n], off)?;
            let mut written = got as u64;
            if self.ctl.verify_content {
                self.buf2.resize(n, 0);
                let have = sys::pread_into(d, &mut self.buf2[..n], off)?;
                if have == got && self.buf[..got] == self.buf2[..have] {
                    written = 0;
                }
            }
            if written > 0 {
                ops::pwrite_all(d, &self.buf[..got], off)?;
            }
            self.buf2.resize(n, 0);
            let again = sys::pread_into(s, &mut self.buf2[..n], off)?;
            if again == got && self.buf2[..got] == self.buf[..got] {
                return Ok(written);
            }
        }
        Err(RACED)
    }

    fn copy_data_once(&mut self, s: BorrowedFd, d: BorrowedFd, off: u64, n: u64) -> Result<u64> {
        let n = n as usize;
        if self.ctl.verify_content {
            self.buf.resize(n, 0);
            self.buf2.resize(n, 0);
            let got = sys::pread_into(s, &mut self.buf[..n], off)?;
            let have = sys::pread_into(d, &mut self.buf2[..n], off)?;
            if got == have && self.buf[..got] == self.buf2[..have] {
                return Ok(0);
            }
            ops::pwrite_all(d, &self.buf[..got], off)?;
            return Ok(got as u64);
        }
        let mut done = 0usize;
        if self.use_cfr {
            while done < n {
                match sys::copy_file_range(s, d, off + done as u64, n - done) {
                    Ok(0) => return Ok(done as u64),
                    Ok(k) => done += k,
                    Err(e) if cfr_unsupported(e) => {
                        self.use_cfr = false;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if done < n {
            self.buf.resize(n, 0);
            let rest = n - done;
            let got = sys::pread_into(s, &mut self.buf[..rest], off + done as u64)?;
            ops::pwrite_all(d, &self.buf[..got], off + done as u64)?;
            done += got;
        }
        Ok(done as u64)
    }
}

/// Whether two stats of one file show the same content and attributes
/// (size, times, owner, mode).
fn same_attrs(a: &Stat, b: &Stat) -> bool {
    (a.st_size, a.st_mode, a.st_uid, a.st_gid) == (b.st_size, b.st_mode, b.st_uid, b.st_gid)
        && (a.st_mtime, a.st_mtime_nsec, a.st_ctime, a.st_ctime_nsec)
            == (b.st_mtime, b.st_mtime_nsec, b.st_ctime, b.st_ctime_nsec)
}

/// copy_file_range errors that mean "use read/write instead".
fn cfr_unsupported(e: Errno) -> bool {
    matches!(
        e.0,
        libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP
    )
}

/// An entry vanished or changed type between a stat and an open.
fn raced_if_absent(e: Errno) -> Errno {
    if is_absent(e) { RACED } else { e }
}

fn size_of(fd: BorrowedFd) -> Result<u64> {
    Ok(ops::fstat(fd)?.st_size.max(0) as u64)
}

fn seek(fd: BorrowedFd, off: u64, whence: i32) -> Result<u64> {
    let off = i64::try_from(off).map_err(|_| Errno(libc::EFBIG))?;
    Ok(ops::lseek(fd, off, whence)?.max(0) as u64)
}

/// `parent/name` for a log line, for a name that may not be a valid [`Name`].
fn entry_name_lossy(parent: &RelPath, name: &CStr) -> RelPath {
    use std::os::unix::ffi::OsStrExt;
    match Name::new(std::ffi::OsStr::from_bytes(name.to_bytes())) {
        Ok(n) => parent.join(&n),
        Err(_) => parent.clone(),
    }
}
