//! Names: lookup, create-like operations, unlink, rename, links, listings.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use parking_lot::Mutex;

use super::handles::{DirEntry, DirHandle};
use super::{ChironFs, Entry, ROOT};
use super::{fanout, inodes};
use crate::errno::{Errno, Result};
use crate::replica::ops::{self, At, OMIT, Stat, fd_of};
use crate::replica::{INTERNAL_NAME, Name, RelPath};

/// Who a new entry belongs to: the caller of the request.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// What kind of entry to make.
enum Make {
    Dir { mode: u32 },
    Node { mode: u32, rdev: u64 },
    Symlink { target: CString },
}

/// After an entry was made by root in `dir`: give it to its owner (the
/// group comes from a setgid parent, as the backing filesystem already
/// chose), restore set-id bits that chown cleared, and give the entry and
/// its parent the same timestamps on every replica.
pub(super) fn settle_new_entry(
    dir: BorrowedFd,
    name: &Name,
    owner: Owner,
    mode: Option<u32>,
    now: libc::timespec,
) -> Result<Stat> {
    let entry = At::Entry(dir, name.as_c());
    if owner.uid != 0 || owner.gid != 0 {
        let parent = ops::fstat(dir)?;
        let gid = if parent.st_mode & libc::S_ISGID != 0 {
            u32::MAX
        } else {
            owner.gid
        };
        entry.chown(owner.uid, gid)?;
        if let Some(m) = mode.filter(|m| m & (libc::S_ISUID | libc::S_ISGID) != 0) {
            entry.chmod(m & 0o7777)?;
        }
    }
    entry.utimens(&[now, now])?;
    At::Fd(dir).utimens(&[OMIT, now])?;
    entry.stat()
}

impl ChironFs {
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry> {
        let name = self.name(parent, name)?;
        let ppath = self.path(parent)?;
        let path = ppath.join(&name);
        let n2 = name.clone();
        let found = self.read_meta("lookup", &path, move |rep| {
            let name = &n2;
            ops::stat_at(fd_of(&rep.dir(&ppath)?), name.as_c())
        });
        let (r, st) = found.inspect_err(|e| {
            tracing::trace!(target: super::AUDIT, "lookup {path} under ino {parent}: {e}");
        })?;
        let kind = st.st_mode & libc::S_IFMT;
        let entry = if kind == libc::S_IFDIR {
            self.remember(parent, &name, r, &st)
        } else if st.st_nlink > 1 {
            self.remember_linked(parent, &name, &path, r, st)
        } else {
            // The one name left of a file open under a name since removed
            // is that open's inode.
            let keys = [Self::key(r, &st)];
            let join = self.checked_join(parent, &name, kind, &keys, true);
            self.remember_as(parent, &name, &keys, join, &st)
        };
        tracing::trace!(
            target: super::AUDIT,
            "lookup {path} under ino {parent}: ino {} from r{r} (inode {})",
            entry.ino,
            st.st_ino
        );
        Ok(entry)
    }

    /// `remember` for a file with several links: two names of one file
    /// must be one inode to the kernel (two would be two page caches, an
    /// mmap of one name missing writes made through the other), whichever
    /// replica each name was read from. The name is read on every replica
    /// that serves it (answering from the first), and it joins a node known
    /// by one of those numbers once that replica confirms that the node's
    /// own path still names the same file there. See src/DESIGN.md
    /// section 4, inode numbers.
    fn remember_linked(
        &self,
        parent: u64,
        name: &Name,
        path: &RelPath,
        r: usize,
        st: Stat,
    ) -> Entry {
        let kind = st.st_mode & libc::S_IFMT;
        let serving: Vec<usize> = self
            .readers()
            .into_iter()
            .filter(|&i| i != r && self.serves(i, path))
            .collect();
        let mut seen = vec![(r, st)];
        if !serving.is_empty() {
            let (pp, nm) = (path.parent(), name.clone());
            let more = fanout::run(
                &self.replicas,
                &serving,
                self.opts.replica_timeout,
                fanout::Spread::Light,
                move |rep| ops::stat_at(fd_of(&rep.dir(&pp)?), nm.as_c()),
            );
            seen.extend(
                more.into_iter()
                    .filter_map(|(i, s)| Some((i, s.ok()?)))
                    .filter(|(_, s)| s.st_mode & libc::S_IFMT == kind),
            );
        }
        // Answer from the first serving replica in reading order, so that
        // every name of the file is described by the same replica.
        let order = self.readers();
        seen.sort_by_key(|(i, _)| order.iter().position(|o| o == i).unwrap_or(usize::MAX));
        let keys: Vec<inodes::BackingKey> = seen.iter().map(|(i, s)| Self::key(*i, s)).collect();
        let join = self.checked_join(parent, name, kind, &keys, false);
        let mut inodes = self.inodes.write();
        let ino = inodes.lookup(parent, name, kind, &keys, join);
        inodes.set_nlink(ino, seen[0].1.st_nlink);
        drop(inodes);
        Entry {
            ino,
            attr: seen[0].1,
        }
    }

    /// The node a new name (parent, name) of a file seen as `keys` is
    /// checked to be another name of, if any: a named node found by one of
    /// the numbers (see [`inodes::InodeTable::candidates`]), or an open
    /// node whose every name was removed (checked through an open handle's
    /// fd). `nameless_only`: the latter only (for a file with one link, a
    /// named node with its number is another file).
    fn checked_join(
        &self,
        parent: u64,
        name: &Name,
        kind: u32,
        keys: &[inodes::BackingKey],
        nameless_only: bool,
    ) -> Option<u64> {
        let (candidates, nameless) = {
            let inodes = self.inodes.read();
            if inodes.child(parent, name).is_some() {
                return None;
            }
            let candidates = if nameless_only {
                Vec::new()
            } else {
                inodes.candidates(kind, keys)
            };
            (candidates, inodes.nameless(kind))
        };
        let named = candidates
            .into_iter()
            .find_map(|(ino, (i, dev, num), other)| {
                if !self.serves(i, &other) {
                    return None;
                }
                let st = self
                    .on_replica(i, move |rep| {
                        let (pp, nm) = other.split().ok_or(Errno::ENOENT)?;
                        ops::stat_at(fd_of(&rep.dir(&pp)?), nm.as_c())
                    })
                    .ok()?;
                (st.st_dev == dev && st.st_ino == num).then_some(ino)
            });
        if named.is_some() || nameless.is_empty() {
            return named;
        }
        let path = self.path(parent).ok()?.join(name);
        nameless
            .into_iter()
            .find(|&ino| self.open_file_is_at(ino, &path))
    }

    /// Whether `path` names the file that open node `ino` holds: on the
    /// first replica serving `path` where one of its opens holds an fd,
    /// the name and the fd are one inode (an fd holds its inode, so the
    /// number cannot have been reused).
    fn open_file_is_at(&self, ino: u64, path: &RelPath) -> bool {
        let opens = self.files.all(|h| h.ino == ino);
        for k in self.readers() {
            if !self.serves(k, path) {
                continue;
            }
            let Some(fd) = opens.iter().find_map(|h| h.fd(k)) else {
                continue;
            };
            let p = path.clone();
            return self
                .on_replica(k, move |rep| {
                    let (pp, nm) = p.split().ok_or(Errno::ENOENT)?;
                    let named = ops::stat_at(fd_of(&rep.dir(&pp)?), nm.as_c())?;
                    let held = ops::fstat(fd.as_fd())?;
                    Ok(named.st_dev == held.st_dev && named.st_ino == held.st_ino)
                })
                .unwrap_or(false);
        }
        false
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, owner: Owner) -> Result<Entry> {
        self.make(parent, name, owner, Make::Dir { mode })
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        owner: Owner,
    ) -> Result<Entry> {
        self.make(parent, name, owner, Make::Node { mode, rdev })
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        owner: Owner,
    ) -> Result<Entry> {
        let target = CString::new(target.as_bytes()).map_err(|_| Errno::EINVAL)?;
        self.make(parent, name, owner, Make::Symlink { target })
    }

    fn make(&self, parent: u64, name: &OsStr, owner: Owner, what: Make) -> Result<Entry> {
        let name = self.new_name(parent, name)?;
        let ppath = self.path(parent)?;
        let path = ppath.join(&name);
        let now = ops::now();
        let (op, n2) = (
            match what {
                Make::Dir { .. } => "mkdir",
                Make::Node { .. } => "mknod",
                Make::Symlink { .. } => "symlink",
            },
            name.clone(),
        );
        let done = self.mutate(op, &path, move |rep| {
            let dir = rep.dir(&ppath)?;
            let d = fd_of(&dir);
            let restore = match &what {
                Make::Dir { mode } => {
                    ops::mkdirat(d, n2.as_c(), mode & 0o7777)?;
                    None
                }
                Make::Node { mode, rdev } => {
                    ops::mknodat(d, n2.as_c(), *mode, *rdev)?;
                    Some(*mode)
                }
                Make::Symlink { target } => {
                    ops::symlinkat(target, d, n2.as_c())?;
                    None
                }
            };
            settle_new_entry(d, &n2, owner, restore, now)
        })?;
        let (r, st) = &done[0];
        Ok(self.remember(parent, &name, *r, st))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let Some((ppath, name)) = self.locate(ino)? else {
            return Err(Errno::EINVAL);
        };
        let path = ppath.join(&name);
        let (_, target) = self.read_meta("readlink", &path.clone(), move |rep| {
            ops::readlinkat(fd_of(&rep.dir(&ppath)?), name.as_c())
        })?;
        Ok(target)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, 0, "unlink")
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, libc::AT_REMOVEDIR, "rmdir")
    }

    fn remove(&self, parent: u64, name: &OsStr, flags: i32, op: &'static str) -> Result<()> {
        let name = self.new_name(parent, name)?;
        let ppath = self.path(parent)?;
        let path = ppath.join(&name);
        let now = ops::now();
        let n2 = name.clone();
        // A file's other names keep what this one's marks say it lacks.
        let others = self.inodes.read().names_of(&path);
        // No change through an open of it runs until the marks are carried
        // and the table renamed it: such a change marks the name the table
        // gives (DESIGN.md section 3, "Names and marks").
        let ino = self.inodes.read().child(parent, &name);
        let opens = self.opens_at(ino, &path);
        let _gates = super::file::hold_gates(&opens);
        // Open files about to lose their last name get fds everywhere now.
        self.pin_open(parent, &name);
        self.mutate(op, &path, move |rep| {
            let dir = rep.dir(&ppath)?;
            ops::unlinkat(fd_of(&dir), n2.as_c(), flags)?;
            At::Fd(fd_of(&dir)).utimens(&[OMIT, now])
        })?;
        for other in others.iter().filter(|o| **o != path) {
            self.carry_marks(&path, other);
        }
        self.inodes.write().unlink(parent, &name);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let name = self.new_name(parent, name)?;
        let newname = self.new_name(newparent, newname)?;
        let (p1, p2) = (self.path(parent)?, self.path(newparent)?);
        let path = p1.join(&name);
        let dest = p2.join(&newname);
        let now = ops::now();
        let (n1, n2) = (name.clone(), newname.clone());
        // As in `remove`: opens of both files (and of files beneath a
        // directory) change nothing until marks and table follow.
        let (a, b) = {
            let t = self.inodes.read();
            (t.child(parent, &name), t.child(newparent, &newname))
        };
        let mut opens = self.opens_at(a, &path);
        opens.extend(self.opens_at(b, &dest));
        let _gates = super::file::hold_gates(&opens);
        if flags & libc::RENAME_EXCHANGE == 0 {
            self.pin_open(newparent, &newname);
        }
        let targets = self.writers();
        let done = self.mutate_on(
            "rename",
            &path,
            Some(&dest),
            &targets,
            self.opts.needed,
            super::fanout::Spread::Light,
            move |rep| {
                let d1 = rep.dir(&p1)?;
                let d2 = rep.dir(&p2)?;
                // Two names of one file: rename(2) does nothing (POSIX).
                let a = ops::stat_at(fd_of(&d1), n1.as_c());
                let b = ops::stat_at(fd_of(&d2), n2.as_c());
                if let (Ok(a), Ok(b)) = (a, b)
                    && (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
                {
                    return Ok(false);
                }
                ops::renameat2(fd_of(&d1), n1.as_c(), fd_of(&d2), n2.as_c(), flags)?;
                At::Fd(fd_of(&d1)).utimens(&[OMIT, now])?;
                At::Fd(fd_of(&d2)).utimens(&[OMIT, now])?;
                Ok(true)
            },
        )?;
        if !self.answer_of(&done, &dest).1 {
            // Both names stay; the table must not lose the first.
            return Ok(());
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        self.carry_marks(&path, &dest);
        if exchange {
            self.carry_marks(&dest, &path);
        }
        self.inodes
            .write()
            .rename(parent, &name, newparent, &newname, exchange);
        Ok(())
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Entry> {
        let newname = self.new_name(newparent, newname)?;
        let Some((sp, sn)) = self.locate(ino)? else {
            return Err(Errno::EPERM);
        };
        let dp = self.path(newparent)?;
        let path = dp.join(&newname);
        let now = ops::now();
        let n2 = newname.clone();
        let source = sp.join(&sn);
        let done = self.mutate("link", &path, move |rep| {
            let sd = rep.dir(&sp)?;
            let dd = rep.dir(&dp)?;
            ops::linkat(fd_of(&sd), sn.as_c(), fd_of(&dd), n2.as_c())?;
            At::Fd(fd_of(&dd)).utimens(&[OMIT, now])?;
            ops::stat_at(fd_of(&dd), n2.as_c())
        })?;
        let attr = self.answer_of(&done, &path).1;
        self.carry_marks(&source, &path);
        if !self.inodes.write().add_link(ino, newparent, &newname) {
            return Err(Errno::ENOENT);
        }
        Ok(Entry { ino, attr })
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let entries = self.list(ino)?;
        Ok(self.dirs.insert(DirHandle {
            ino,
            entries: Mutex::new(Arc::new(entries)),
        }))
    }

    /// Entries from `offset` on. Offset 0 (a rewind) takes a fresh snapshot.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>> {
        let h = self.dirs.get(fh).ok_or(Errno::EBADF)?;
        if offset == 0 {
            let fresh = Arc::new(self.list(h.ino)?);
            *h.entries.lock() = fresh.clone();
            return Ok(fresh);
        }
        Ok(h.entries.lock().clone())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(fh);
    }

    /// A full listing of directory `ino`, with `.` and `..` first.
    fn list(&self, ino: u64) -> Result<Vec<DirEntry>> {
        let path = self.path(ino)?;
        let p2 = path.clone();
        let (r, (dev, raw)) = self.read_meta("readdir", &path, move |rep| {
            let dir = rep.dir(&p2)?;
            let dev = ops::fstat(fd_of(&dir))?.st_dev;
            Ok((dev, ops::read_dir(dir)?))
        })?;
        let parent_ino = if ino == ROOT {
            ROOT
        } else {
            self.inodes.read().parent(ino).unwrap_or(ROOT)
        };
        let mut out = Vec::with_capacity(raw.len() + 2);
        out.push(DirEntry {
            ino,
            kind: libc::DT_DIR,
            name: ".".into(),
        });
        out.push(DirEntry {
            ino: parent_ino,
            kind: libc::DT_DIR,
            name: "..".into(),
        });
        let mut inodes = self.inodes.write();
        for e in raw {
            let bytes = e.name.as_bytes();
            if ino == ROOT && bytes == INTERNAL_NAME.as_bytes() {
                continue;
            }
            let name = OsStr::from_bytes(bytes);
            let known = Name::new(name).ok().and_then(|n| inodes.child(ino, &n));
            out.push(DirEntry {
                ino: known.unwrap_or_else(|| inodes.number_for((r, dev, e.ino))),
                kind: e.kind,
                name: name.to_os_string(),
            });
        }
        Ok(out)
    }

    /// The path of `ino`, for logs.
    pub fn describe(&self, ino: u64) -> RelPath {
        self.inodes.read().path(ino).unwrap_or_default()
    }
}

impl ChironFs {
    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> Result<()> {
        let path = self.path(ino)?;
        let p = path.clone();
        self.sync_marks()?;
        self.mutate("fsyncdir", &path, move |rep| {
            ops::fsync(fd_of(&rep.dir(&p)?), datasync)
        })?;
        Ok(())
    }
}
