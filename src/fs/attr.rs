//! Attributes, extended attributes, statfs.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::{ChironFs, ROOT};
use crate::errno::{Errno, Result};
use crate::replica::ops::{self, At, OMIT, Stat, fd_of};
use crate::replica::{Name, RelPath, Replica};

/// A time given to setattr.
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    Now,
    At(libc::timespec),
}

/// The changes one setattr asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// With a size: the caller is unprivileged, and set-user-ID and
    /// set-group-ID (when group-executable) go, as a truncate by such a
    /// user removes them (FUSE_HANDLE_KILLPRIV_V2 leaves it to the daemon).
    pub kill_suidgid: bool,
}

/// Filesystem usage as statfs reports it.
#[derive(Debug, Clone, Copy)]
pub struct FsStats {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Where an inode is on a replica, for calls that take an [`At`].
pub(super) fn on_inode<T>(
    rep: &Replica,
    loc: &Option<(RelPath, Name)>,
    fd: Option<&OwnedFd>,
    f: impl FnOnce(At) -> Result<T>,
) -> Result<T> {
    if let Some(fd) = fd {
        return f(At::Fd(fd.as_fd()));
    }
    match loc {
        None => f(At::Fd(rep.root().as_fd())),
        Some((parent, name)) => {
            let dir = rep.dir(parent)?;
            f(At::Entry(fd_of(&dir), name.as_c()))
        }
    }
}

fn xattr_name(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

impl ChironFs {
    /// The handle to use for an inode: the one given, or, for an inode
    /// whose every name is gone (unlinked while open), any open handle of
    /// it: fstat, fchmod and friends arrive without one.
    fn handle_for(&self, ino: u64, fh: Option<u64>) -> Option<Arc<super::file::FileHandle>> {
        match fh.and_then(|fh| self.files.get(fh)) {
            Some(h) => Some(h),
            None if ino != ROOT && self.inodes.read().path(ino).is_none() => {
                self.files.find(|h| h.ino == ino)
            }
            None => None,
        }
    }

    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Stat> {
        if let Some(h) = self.handle_for(ino, fh) {
            match self.getattr_open(&h) {
                Ok(st) => return Ok(st),
                // Its file has no name left: only the open reaches it.
                Err(e) if self.locate(ino).is_err() => return Err(e),
                Err(_) => {}
            }
        }
        let loc = self.locate(ino)?;
        let path = self.describe(ino);
        let (_, st) = self.read_meta("getattr", &path, move |rep| {
            on_inode(rep, &loc, None, |at| at.stat())
        })?;
        Ok(st)
    }

    /// The attributes of an open's file, through the open's fd on a
    /// serving replica (failing over as a read does).
    fn getattr_open(&self, h: &super::file::FileHandle) -> Result<Stat> {
        let mut tried = Vec::new();
        loop {
            let (r, fd) = self.reader_fd(h)?;
            match self.on_replica(r, move |_| ops::fstat(fd.as_fd())) {
                Ok(st) => return Ok(st),
                Err(e) if self.is_failure(r, e) => {
                    self.fail(r, "getattr", &self.describe(h.ino), e);
                    tried.push(r);
                    self.fail_over_reader(h, &tried)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn setattr(&self, ino: u64, fh: Option<u64>, set: SetAttr) -> Result<Stat> {
        let now = ops::now();
        let time = |t: Option<SetTime>| match t {
            None => OMIT,
            Some(SetTime::Now) => now,
            Some(SetTime::At(ts)) => ts,
        };
        let mut times = [time(set.atime), time(set.mtime)];
        if set.size.is_some() && set.mtime.is_none() {
            // truncate updates mtime; give every replica the same one.
            times[1] = now;
        }
        // A read-only handle's fd cannot truncate (open(O_RDONLY|O_TRUNC)
        // arrives as an open and then a truncating setattr on it).
        let usable = |h: &Arc<super::file::FileHandle>| {
            h.is_writable() || set.size.is_none() || self.inodes.read().path(ino).is_none()
        };
        let handle = self.handle_for(ino, fh).filter(|h| usable(h));
        // As every change through a handle: its gate held, and its fd
        // taken when each replica's call runs, under the path's lock (a
        // copy waited for may have replaced or let go of it meanwhile).
        let _gate = handle.as_ref().map(|h| h.change_gate());
        let has_fd: Vec<bool> = (0..self.replicas.len())
            .map(|i| handle.as_ref().is_some_and(|h| h.fd(i).is_some()))
            .collect();
        let loc = if ino == ROOT {
            None
        } else {
            match self.locate(ino) {
                Ok(l) => l,
                // Unlinked but open: only the handle's fds can reach it.
                Err(e) if handle.is_none() => return Err(e),
                Err(_) => None,
            }
        };
        let unlinked = ino != ROOT && loc.is_none();
        let targets: Vec<usize> = self
            .writers()
            .into_iter()
            .filter(|&i| !unlinked || has_fd[i])
            .collect();
        let h2 = handle.clone();
        let path = self.describe(ino);
        let done = self.mutate_on(
            "setattr",
            &path,
            None,
            &targets,
            self.opts.needed,
            super::fanout::Spread::Light,
            move |rep| {
                let fd = h2.as_ref().and_then(|h| h.fd(rep.index));
                on_inode(rep, &loc, fd.as_deref().map(|fd| &**fd), |at| {
                    if set.uid.is_some() || set.gid.is_some() {
                        at.chown(set.uid.unwrap_or(u32::MAX), set.gid.unwrap_or(u32::MAX))?;
                    }
                    if let Some(mode) = set.mode {
                        at.chmod(mode & 0o7777)?;
                    }
                    if let Some(size) = set.size {
                        at.truncate(size)?;
                        if set.kill_suidgid {
                            super::file::kill_suidgid(at)?;
                        }
                        super::file::kill_caps(at)?;
                    }
                    if times[0].tv_nsec != libc::UTIME_OMIT || times[1].tv_nsec != libc::UTIME_OMIT
                    {
                        at.utimens(&times)?;
                    }
                    at.stat()
                })
            },
        )?;
        if set.size.is_some()
            && let Some(h) = &handle
        {
            h.mark_clean();
        }
        Ok(self.answer_of(&done, &path).1)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        let attr = xattr_name(name)?;
        let loc = self.locate(ino)?;
        let (_, v) = self.read_meta("getxattr", &self.describe(ino), move |rep| {
            on_inode(rep, &loc, None, |at| at.getxattr(&attr))
        })?;
        Ok(v)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let loc = self.locate(ino)?;
        let (_, v) = self.read_meta("listxattr", &self.describe(ino), move |rep| {
            on_inode(rep, &loc, None, |at| at.listxattr())
        })?;
        Ok(v)
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let attr = xattr_name(name)?;
        let loc = self.locate(ino)?;
        let value: Arc<[u8]> = value.into();
        self.mutate("setxattr", &self.describe(ino), move |rep| {
            on_inode(rep, &loc, None, |at| at.setxattr(&attr, &value, flags))
        })?;
        Ok(())
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        let attr = xattr_name(name)?;
        let loc = self.locate(ino)?;
        self.mutate("removexattr", &self.describe(ino), move |rep| {
            on_inode(rep, &loc, None, |at| at.removexattr(&attr))
        })?;
        Ok(())
    }

    /// Usage of the in-sync replica with the least space available: a write
    /// needs room on all of them.
    pub fn statfs(&self) -> Result<FsStats> {
        let mut best: Option<FsStats> = None;
        for i in self.readers() {
            let st = match self.on_replica(i, |rep| ops::fstatvfs(rep.root().as_fd())) {
                Ok(st) => st,
                Err(e) => {
                    if e.is_replica_failure() {
                        self.fail(i, "statfs", &RelPath::root(), e);
                    }
                    continue;
                }
            };
            let frsize = st.fragment_size().max(1);
            let s = FsStats {
                blocks: st.blocks(),
                bfree: st.blocks_free(),
                bavail: st.blocks_available(),
                files: st.files(),
                ffree: st.files_free(),
                bsize: st.block_size() as u32,
                namelen: st.name_max() as u32,
                frsize: frsize as u32,
            };
            let avail = |s: &FsStats| s.bavail.saturating_mul(s.frsize as u64);
            if best.as_ref().is_none_or(|b| avail(&s) < avail(b)) {
                best = Some(s);
            }
        }
        best.ok_or(Errno::EIO)
    }
}
