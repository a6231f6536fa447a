//! `diff_tree`: which paths differ between two replicas.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::attrs::{self, inode_key, kind, perms, same_mtime, xattrs};
use super::{CHUNK, DiffStats, entry_name, is_absent, is_internal, list_dir, stat_opt, sys};
use crate::errno::{Errno, Result};
use crate::replica::ops::{self, At, Stat, fd_of};
use crate::replica::{RelPath, Replica};

/// Walks `root` on both replicas and calls `on_diff` for each path whose
/// copy on `dst` differs from `src`'s: presence, type, size, mtime (ns),
/// mode, owner, xattrs, symlink target, device number, link count and
/// hard-link structure (paths sharing an inode on `src` must share one on
/// `dst`), and with `verify_content` the bytes.
///
/// A directory is reported when its own attributes or its set of names
/// differ; the entries only one side has are then not reported on their
/// own (a missing subtree is reported once, through its parent or as
/// `root` itself). Entries present on both sides are compared recursively.
/// Parents are reported before their children. For a broken hard link the
/// path where the source inode was first seen is reported too, just
/// before the differing one.
///
/// Each reported path is made identical by `sync_path(path,
/// SyncMode::Entries, ctl)`, called in the reported order with one `ctl`
/// for the pass (so hard links are re-made); `SyncMode::Tree` works too but
/// copies every file beneath a reported directory again. Link counts and
/// hard-link structure can only be repaired when all the names of an inode
/// lie under `root` (a full pass uses the replica root).
pub fn diff_tree(
    src: &Replica,
    dst: &Replica,
    root: &RelPath,
    verify_content: bool,
    on_diff: &mut dyn FnMut(RelPath),
) -> Result<DiffStats> {
    if is_internal(root) {
        return Err(Errno::EINVAL);
    }
    let mut d = Differ {
        verify_content,
        on_diff,
        stats: DiffStats::default(),
        links: HashMap::new(),
        reported: HashSet::new(),
        buf: Vec::new(),
        buf2: Vec::new(),
    };
    match root.split() {
        None => {
            let s = src.dir(root)?;
            let t = dst.dir(root)?;
            d.stats.entries += 1;
            let (ss, ts) = (ops::fstat(fd_of(&s))?, ops::fstat(fd_of(&t))?);
            let own = d.attrs_differ(At::Fd(fd_of(&s)), &ss, At::Fd(fd_of(&t)), &ts)?;
            d.compare_dir(root, s, t, own)?;
        }
        Some((parent, name)) => {
            let open = |r: &Replica| match r.dir(&parent) {
                Ok(fd) => Ok(Some(fd)),
                Err(e) if is_absent(e) => Ok(None),
                Err(e) => Err(e),
            };
            match (open(src)?, open(dst)?) {
                (None, None) => {}
                (Some(s), Some(t)) => d.compare_entry(fd_of(&s), fd_of(&t), root, name.as_c())?,
                (Some(only), None) | (None, Some(only)) => {
                    d.stats.entries += 1;
                    if stat_opt(fd_of(&only), name.as_c())?.is_some() {
                        d.report(root);
                    }
                }
            }
        }
    }
    Ok(d.stats)
}

struct Differ<'a> {
    verify_content: bool,
    on_diff: &'a mut dyn FnMut(RelPath),
    stats: DiffStats,
    /// Source inode with several links -> (first path seen, the destination
    /// inode at that path).
    links: HashMap<(u64, u64), (RelPath, (u64, u64))>,
    reported: HashSet<RelPath>,
    buf: Vec<u8>,
    buf2: Vec<u8>,
}

impl Differ<'_> {
    fn report(&mut self, path: &RelPath) {
        if self.reported.insert(path.clone()) {
            self.stats.differing += 1;
            (self.on_diff)(path.clone());
        }
    }

    /// Compares entry `name` of the directories `sdir` and `ddir` (the
    /// parent of `path` on each side). An entry that goes away on either
    /// side while it is compared (the mount is live) differs: the copy
    /// that follows settles it under the path's lock.
    fn compare_entry(
        &mut self,
        sdir: BorrowedFd,
        ddir: BorrowedFd,
        path: &RelPath,
        name: &CStr,
    ) -> Result<()> {
        match self.compare_entry_now(sdir, ddir, path, name) {
            Err(e) if is_absent(e) => {
                self.report(path);
                Ok(())
            }
            r => r,
        }
    }

    fn compare_entry_now(
        &mut self,
        sdir: BorrowedFd,
        ddir: BorrowedFd,
        path: &RelPath,
        name: &CStr,
    ) -> Result<()> {
        self.stats.entries += 1;
        let (s, t) = match (stat_opt(sdir, name)?, stat_opt(ddir, name)?) {
            (None, None) => return Ok(()),
            (Some(s), Some(t)) if kind(&s) == kind(&t) => (s, t),
            _ => {
                self.report(path);
                return Ok(());
            }
        };
        let (sat, tat) = (At::Entry(sdir, name), At::Entry(ddir, name));
        let mut differs = self.attrs_differ(sat, &s, tat, &t)?;
        match kind(&s) {
            libc::S_IFDIR => {
                let (sd, td) = match (sys::open_subdir(sdir, name), sys::open_subdir(ddir, name)) {
                    (Ok(a), Ok(b)) => (a, b),
                    // Changed under us: whatever it is now, it differs.
                    (Err(e), _) | (_, Err(e)) if is_absent(e) => {
                        self.report(path);
                        return Ok(());
                    }
                    (Err(e), _) | (_, Err(e)) => return Err(e),
                };
                return self.compare_dir(path, sd, td, differs);
            }
            libc::S_IFREG if !differs && self.verify_content => {
                differs = self.content_differs(sdir, ddir, name, s.st_size.max(0) as u64)?;
            }
            libc::S_IFLNK if !differs => {
                differs = ops::readlinkat(sdir, name)? != ops::readlinkat(ddir, name)?;
            }
            _ => {}
        }
        if s.st_nlink > 1 {
            match self.links.get(&inode_key(&s)) {
                None => {
                    self.links
                        .insert(inode_key(&s), (path.clone(), inode_key(&t)));
                }
                Some((first, tkey)) if *tkey != inode_key(&t) => {
                    let first = first.clone();
                    self.report(&first);
                    differs = true;
                }
                Some(_) => {}
            }
        }
        if differs {
            self.report(path);
        }
        Ok(())
    }

    /// A directory present on both sides: reported if `own_differs` or its
    /// names differ, then its common entries compared.
    fn compare_dir(
        &mut self,
        path: &RelPath,
        sd: OwnedFd,
        td: OwnedFd,
        own_differs: bool,
    ) -> Result<()> {
        let at_root = *path == RelPath::root();
        let slist = list_dir(fd_of(&sd), at_root)?;
        let tlist = list_dir(fd_of(&td), at_root)?;
        let names_differ =
            slist.len() != tlist.len() || slist.iter().zip(&tlist).any(|(a, b)| a.name != b.name);
        if own_differs || names_differ {
            self.report(path);
        }
        // Both lists are sorted: walk them together.
        let mut ti = tlist.iter().peekable();
        for e in &slist {
            while ti.next_if(|t| t.name < e.name).is_some() {}
            if ti.next_if(|t| t.name == e.name).is_none() {
                continue;
            }
            let name = match entry_name(e) {
                Ok(n) => n,
                Err(_) => {
                    // A name the mount could never show; count the directory as different.
                    self.report(path);
                    continue;
                }
            };
            self.compare_entry(fd_of(&sd), fd_of(&td), &path.join(&name), &e.name)?;
        }
        Ok(())
    }

    /// Owner, mode, link count, size, mtime, device number, xattrs.
    fn attrs_differ(&mut self, sat: At, s: &Stat, tat: At, t: &Stat) -> Result<bool> {
        let k = kind(s);
        let differs = s.st_uid != t.st_uid
            || s.st_gid != t.st_gid
            || (k != libc::S_IFLNK && perms(s) != perms(t))
            || (k != libc::S_IFDIR && s.st_nlink != t.st_nlink)
            || (k == libc::S_IFREG && s.st_size != t.st_size)
            || !same_mtime(s, t)
            || (attrs::has_rdev(s) && s.st_rdev != t.st_rdev);
        Ok(differs || xattrs(sat)? != xattrs(tat)?)
    }

    fn content_differs(
        &mut self,
        sdir: BorrowedFd,
        ddir: BorrowedFd,
        name: &CStr,
        size: u64,
    ) -> Result<bool> {
        let open = |dir| sys::open_read(dir, name);
        let (sf, tf) = match (open(sdir), open(ddir)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) if is_absent(e) => return Ok(true),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        self.buf.resize(CHUNK, 0);
        self.buf2.resize(CHUNK, 0);
        let mut off = 0u64;
        loop {
            let a = sys::pread_into(fd_of(&sf), &mut self.buf, off)?;
            let b = sys::pread_into(fd_of(&tf), &mut self.buf2, off)?;
            self.stats.bytes += a as u64;
            if a != b || self.buf[..a] != self.buf2[..b] {
                return Ok(true);
            }
            if a < CHUNK {
                // Both ended here; a size that changed meanwhile is a difference.
                return Ok(off + a as u64 != size);
            }
            off += a as u64;
        }
    }
}
