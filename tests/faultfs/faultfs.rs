//! faultfs: a passthrough FUSE filesystem that fails or hangs on demand, used
//! as a chironfs *replica* in tests (tests/hang.rs).
//!
//! Usage: `faultfs BACKING_DIR MOUNTPOINT CONTROL_FILE` (run as root; mounted
//! with allow_other and default_permissions; the fstype is `fuse.faultfs`).
//!
//! Every request re-reads CONTROL_FILE when it arrives (a small file on a
//! real filesystem, so this is cheap) and acts on its trimmed content:
//! - `ok` (also: file absent, empty or unknown content): pass through to
//!   BACKING_DIR;
//! - `eio`: fail with EIO;
//! - `hang`: block, re-reading the file every 50 ms, until the mode is
//!   something else, then proceed as that mode says.
//!
//! Write the control file atomically (write a temporary file, rename it over
//! CONTROL_FILE) so a request never sees a half-written mode.
//!
//! Nothing is cached by the kernel: entries and attributes have a zero TTL and
//! files are opened with direct I/O, so every operation of a client reaches
//! this daemon (and its fault mode) instead of being answered from a cache.
//!
//! Inodes are path-based: each FUSE inode number is the backing inode number
//! (the root is 1) and maps to the backing paths it was last seen under.
//! Release, releasedir and forget always drop their state, whatever the mode,
//! so no descriptor leaks. The daemon exits (status 0) once unmounted and
//! never panics on a request: every failure is an errno.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

/// Entries and attributes are never cached by the kernel.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;
/// How often a hung request re-reads the control file.
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Eio,
    Hang,
}

type Res<T> = Result<T, Errno>;

fn errno(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn last_errno() -> Errno {
    errno(io::Error::last_os_error())
}

fn check(rc: libc::c_int) -> Res<()> {
    if rc < 0 { Err(last_errno()) } else { Ok(()) }
}

fn cstr(p: &Path) -> Res<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::from_i32(libc::EINVAL))
}

fn cname(n: &OsStr) -> Res<CString> {
    CString::new(n.as_bytes()).map_err(|_| Errno::from_i32(libc::EINVAL))
}

/// A name the kernel gave us must be one path component.
fn component(name: &OsStr) -> Res<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Errno::from_i32(libc::EINVAL));
    }
    Ok(name)
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec)
    }
}

fn kind_of_mode(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(st)) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
            Err(e) => {
                // Before 1970: whole seconds down, nanoseconds up.
                let d = e.duration();
                let (mut s, mut ns) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if ns < 0 {
                    s -= 1;
                    ns += 1_000_000_000;
                }
                libc::timespec {
                    tv_sec: s as libc::time_t,
                    tv_nsec: ns as libc::c_long,
                }
            }
        },
    }
}

/// Backing inode numbers are FUSE inode numbers, except that the root is 1
/// (and a backing inode that happens to be 1 is moved out of the way).
fn fuse_ino(is_root: bool, st_ino: u64) -> u64 {
    if is_root {
        ROOT
    } else if st_ino == ROOT {
        ROOT | (1 << 63)
    } else {
        st_ino
    }
}

/// A directory entry as readdir returns it: inode, type, name.
type DirEnt = (u64, FileType, OsString);

struct FaultFs {
    backing: PathBuf,
    control: PathBuf,
    /// FUSE inode -> backing paths it is known under (last = most recent).
    paths: Mutex<HashMap<u64, Vec<PathBuf>>>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    /// Open directories: a snapshot of their entries taken at opendir.
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEnt>>>>,
    next_fh: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FaultFs {
    fn new(backing: PathBuf, control: PathBuf) -> FaultFs {
        let mut paths = HashMap::new();
        paths.insert(ROOT, vec![backing.clone()]);
        FaultFs {
            backing,
            control,
            paths: Mutex::new(paths),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    fn mode(&self) -> Mode {
        match std::fs::read(&self.control) {
            Ok(b) => match b.trim_ascii() {
                b"eio" => Mode::Eio,
                b"hang" => Mode::Hang,
                _ => Mode::Ok,
            },
            Err(_) => Mode::Ok,
        }
    }

    /// Applies the fault mode to a request that just arrived.
    fn gate(&self) -> Res<()> {
        loop {
            match self.mode() {
                Mode::Ok => return Ok(()),
                Mode::Eio => return Err(Errno::EIO),
                Mode::Hang => std::thread::sleep(POLL),
            }
        }
    }

    fn path(&self, ino: u64) -> Res<PathBuf> {
        lock(&self.paths)
            .get(&ino)
            .and_then(|v| v.last().cloned())
            .ok_or(Errno::from_i32(libc::ENOENT))
    }

    fn child(&self, parent: u64, name: &OsStr) -> Res<PathBuf> {
        Ok(self.path(parent)?.join(component(name)?))
    }

    fn remember(&self, ino: u64, path: &Path) {
        let mut m = lock(&self.paths);
        let v = m.entry(ino).or_default();
        v.retain(|p| p != path);
        v.push(path.to_path_buf());
    }

    /// Forgets `path` (and, for a directory, everything below it).
    fn forget_path(&self, path: &Path) {
        let mut m = lock(&self.paths);
        for v in m.values_mut() {
            v.retain(|p| !p.starts_with(path));
        }
        m.retain(|&ino, v| ino == ROOT || !v.is_empty());
    }

    /// Moves every known path at or below `from` to `to`.
    fn move_paths(&self, from: &Path, to: &Path) {
        let mut m = lock(&self.paths);
        for v in m.values_mut() {
            for p in v.iter_mut() {
                if let Ok(rest) = p.strip_prefix(from) {
                    *p = if rest.as_os_str().is_empty() {
                        to.to_path_buf()
                    } else {
                        to.join(rest)
                    };
                }
            }
        }
    }

    /// Swaps the paths at or below `a` and `b` (RENAME_EXCHANGE).
    fn swap_paths(&self, a: &Path, b: &Path) {
        let mut m = lock(&self.paths);
        for v in m.values_mut() {
            for p in v.iter_mut() {
                let (from, to) = if p.starts_with(a) {
                    (a, b)
                } else if p.starts_with(b) {
                    (b, a)
                } else {
                    continue;
                };
                if let Ok(rest) = p.strip_prefix(from) {
                    *p = if rest.as_os_str().is_empty() {
                        to.to_path_buf()
                    } else {
                        to.join(rest)
                    };
                }
            }
        }
    }

    fn attr_of(&self, md: &std::fs::Metadata, is_root: bool) -> FileAttr {
        FileAttr {
            ino: INodeNo(fuse_ino(is_root, md.ino())),
            size: md.size(),
            blocks: md.blocks(),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind_of_mode(md.mode()),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: md.blksize() as u32,
            flags: 0,
        }
    }

    /// lstat `path` and register it under its inode.
    fn entry_of(&self, path: &Path) -> Res<FileAttr> {
        let md = std::fs::symlink_metadata(path).map_err(errno)?;
        let is_root = path == self.backing;
        let attr = self.attr_of(&md, is_root);
        self.remember(attr.ino.0, path);
        Ok(attr)
    }

    /// After creating `path` for a non-root caller, give it to the caller.
    fn give(&self, req: &Request, path: &Path) -> Res<()> {
        if req.uid() == 0 {
            return Ok(());
        }
        let c = cstr(path)?;
        // Safe because `c` is a valid C string.
        check(unsafe { libc::lchown(c.as_ptr(), req.uid(), req.gid()) })
    }

    fn file(&self, fh: u64) -> Res<Arc<File>> {
        lock(&self.files)
            .get(&fh)
            .cloned()
            .ok_or(Errno::from_i32(libc::EBADF))
    }

    /// The open file `fh`, or else any open file of inode `ino`: the
    /// kernel sends `futimens` and `fchmod` of an open file without its
    /// handle, and its path may be gone (unlinked) or show another file.
    fn file_of(&self, ino: u64, fh: Option<u64>) -> Option<Arc<File>> {
        if let Some(f) = fh.and_then(|fh| self.file(fh).ok()) {
            return Some(f);
        }
        if ino == ROOT {
            return None;
        }
        lock(&self.files)
            .values()
            .find(|f| f.metadata().is_ok_and(|md| md.ino() == ino))
            .cloned()
    }

    fn add_file(&self, f: File) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(fh, Arc::new(f));
        fh
    }

    fn open_path(&self, path: &Path, flags: i32, mode: u32) -> Res<File> {
        let c = cstr(path)?;
        // Safe because `c` is a valid C string; the fd is owned right below.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
        if fd < 0 {
            return Err(last_errno());
        }
        // Safe because the kernel just returned this fd and nobody else owns it.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    // ----- the operations, as Results --------------------------------------

    fn do_getattr(&self, ino: u64, fh: Option<u64>) -> Res<FileAttr> {
        if let Some(f) = self.file_of(ino, fh) {
            let md = f.metadata().map_err(errno)?;
            return Ok(self.attr_of(&md, ino == ROOT));
        }
        let path = self.path(ino)?;
        let md = std::fs::symlink_metadata(&path).map_err(errno)?;
        Ok(self.attr_of(&md, ino == ROOT))
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
    ) -> Res<FileAttr> {
        let file = self.file_of(ino, fh);
        let path = self.path(ino);
        let path = match (&file, path) {
            (_, Ok(p)) => Some(p),
            (Some(_), Err(_)) => None,
            (None, Err(e)) => return Err(e),
        };
        let cpath = path.as_deref().map(cstr).transpose()?;
        if uid.is_some() || gid.is_some() {
            let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
            match (&file, &cpath) {
                // Safe because the fd is valid while `f` lives.
                (Some(f), _) => check(unsafe { libc::fchown(f.as_raw_fd(), u, g) })?,
                // Safe because `c` is a valid C string.
                (None, Some(c)) => check(unsafe { libc::lchown(c.as_ptr(), u, g) })?,
                (None, None) => return Err(Errno::from_i32(libc::ENOENT)),
            }
        }
        if let Some(mode) = mode {
            let mode = mode & 0o7777;
            match (&file, &cpath) {
                // Safe because the fd is valid while `f` lives.
                (Some(f), _) => check(unsafe { libc::fchmod(f.as_raw_fd(), mode) })?,
                (None, Some(c)) => {
                    let md = std::fs::symlink_metadata(path.as_deref().unwrap_or(Path::new("")))
                        .map_err(errno)?;
                    if md.file_type().is_symlink() {
                        return Err(Errno::from_i32(libc::EOPNOTSUPP));
                    }
                    // Safe because `c` is a valid C string.
                    check(unsafe { libc::chmod(c.as_ptr(), mode) })?
                }
                (None, None) => return Err(Errno::from_i32(libc::ENOENT)),
            }
        }
        if let Some(size) = size {
            let size = i64::try_from(size).map_err(|_| Errno::from_i32(libc::EFBIG))?;
            match (&file, &cpath) {
                // Safe because the fd is valid while `f` lives.
                (Some(f), _) => check(unsafe { libc::ftruncate(f.as_raw_fd(), size) })?,
                // Safe because `c` is a valid C string.
                (None, Some(c)) => check(unsafe { libc::truncate(c.as_ptr(), size) })?,
                (None, None) => return Err(Errno::from_i32(libc::ENOENT)),
            }
        }
        if atime.is_some() || mtime.is_some() {
            let ts = [timespec(atime), timespec(mtime)];
            match (&file, &cpath) {
                // Safe because the fd is valid and `ts` holds two timespecs.
                (Some(f), _) => check(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) })?,
                (None, Some(c)) => check(
                    // Safe because `c` is a valid C string and `ts` holds two timespecs.
                    unsafe {
                        libc::utimensat(
                            libc::AT_FDCWD,
                            c.as_ptr(),
                            ts.as_ptr(),
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    },
                )?,
                (None, None) => return Err(Errno::from_i32(libc::ENOENT)),
            }
        }
        self.do_getattr(ino, fh)
    }

    fn do_readdir_snapshot(&self, ino: u64) -> Res<Vec<DirEnt>> {
        let path = self.path(ino)?;
        let md = std::fs::symlink_metadata(&path).map_err(errno)?;
        let mut v = vec![(
            fuse_ino(ino == ROOT, md.ino()),
            FileType::Directory,
            OsString::from("."),
        )];
        let parent_ino = match path.parent() {
            Some(p) if ino != ROOT => std::fs::symlink_metadata(p).map(|m| m.ino()).unwrap_or(0),
            _ => ROOT,
        };
        v.push((parent_ino, FileType::Directory, OsString::from("..")));
        for ent in std::fs::read_dir(&path).map_err(errno)? {
            let ent = ent.map_err(errno)?;
            let kind = match ent.file_type() {
                Ok(t) => FileType::from_std(t).unwrap_or(FileType::RegularFile),
                Err(_) => FileType::RegularFile,
            };
            v.push((fuse_ino(false, ent.ino()), kind, ent.file_name()));
        }
        Ok(v)
    }

    fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Res<()> {
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let (a, b) = (cstr(&from)?, cstr(&to)?);
        // Safe because both are valid C strings.
        check(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                flags,
            )
        })?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            self.swap_paths(&from, &to);
        } else if from != to {
            self.forget_path(&to);
            self.move_paths(&from, &to);
        }
        Ok(())
    }

    fn do_getxattr(&self, ino: u64, name: &OsStr) -> Res<Vec<u8>> {
        let (p, n) = (cstr(&self.path(ino)?)?, cname(name)?);
        loop {
            // Safe because a null buffer with size 0 only queries the size.
            let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
            if len < 0 {
                return Err(last_errno());
            }
            let mut buf = vec![0u8; len as usize];
            // Safe because `buf` is valid for buf.len() bytes.
            let got = unsafe {
                libc::lgetxattr(
                    p.as_ptr(),
                    n.as_ptr(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ERANGE) {
                    continue;
                }
                return Err(errno(e));
            }
            buf.truncate(got as usize);
            return Ok(buf);
        }
    }

    fn do_listxattr(&self, ino: u64) -> Res<Vec<u8>> {
        let p = cstr(&self.path(ino)?)?;
        loop {
            // Safe because a null buffer with size 0 only queries the size.
            let len = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
            if len < 0 {
                return Err(last_errno());
            }
            let mut buf = vec![0u8; len as usize];
            // Safe because `buf` is valid for buf.len() bytes.
            let got = unsafe {
                libc::llistxattr(p.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len())
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ERANGE) {
                    continue;
                }
                return Err(errno(e));
            }
            buf.truncate(got as usize);
            return Ok(buf);
        }
    }
}

fn reply_empty(reply: ReplyEmpty, r: Res<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_entry(reply: ReplyEntry, r: Res<FileAttr>) {
    match r {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_attr(reply: ReplyAttr, r: Res<FileAttr>) {
    match r {
        Ok(a) => reply.attr(&TTL, &a),
        Err(e) => reply.error(e),
    }
}

fn reply_xattr(reply: ReplyXattr, r: Res<Vec<u8>>, size: u32) {
    match r {
        Ok(v) if size == 0 => match u32::try_from(v.len()) {
            Ok(n) => reply.size(n),
            Err(_) => reply.error(Errno::from_i32(libc::E2BIG)),
        },
        Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for FaultFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self
            .gate()
            .and_then(|()| self.child(parent.0, name))
            .and_then(|p| self.entry_of(&p));
        reply_entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = self
            .gate()
            .and_then(|()| self.do_getattr(ino.0, fh.map(|f| f.0)));
        reply_attr(reply, r);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.gate().and_then(|()| {
            self.do_setattr(ino.0, mode, uid, gid, size, atime, mtime, fh.map(|f| f.0))
        });
        reply_attr(reply, r);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self
            .gate()
            .and_then(|()| self.path(ino.0))
            .and_then(|p| std::fs::read_link(p).map_err(errno));
        match r {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self.gate().and_then(|()| {
            let path = self.child(parent.0, name)?;
            let c = cstr(&path)?;
            let mode = mode & !(umask & 0o7777);
            // Safe because `c` is a valid C string.
            check(unsafe { libc::mknod(c.as_ptr(), mode, libc::dev_t::from(rdev)) })?;
            self.give(req, &path)?;
            self.entry_of(&path)
        });
        reply_entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.gate().and_then(|()| {
            let path = self.child(parent.0, name)?;
            let c = cstr(&path)?;
            // Safe because `c` is a valid C string.
            check(unsafe { libc::mkdir(c.as_ptr(), mode & 0o7777 & !umask) })?;
            self.give(req, &path)?;
            self.entry_of(&path)
        });
        reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.gate().and_then(|()| {
            let path = self.child(parent.0, name)?;
            std::fs::remove_file(&path).map_err(errno)?;
            self.forget_path(&path);
            Ok(())
        });
        reply_empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.gate().and_then(|()| {
            let path = self.child(parent.0, name)?;
            std::fs::remove_dir(&path).map_err(errno)?;
            self.forget_path(&path);
            Ok(())
        });
        reply_empty(reply, r);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.gate().and_then(|()| {
            let path = self.child(parent.0, link_name)?;
            std::os::unix::fs::symlink(target, &path).map_err(errno)?;
            self.give(req, &path)?;
            self.entry_of(&path)
        });
        reply_entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self
            .gate()
            .and_then(|()| self.do_rename(parent.0, name, newparent.0, newname, flags.bits()));
        reply_empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.gate().and_then(|()| {
            let from = self.path(ino.0)?;
            let to = self.child(newparent.0, newname)?;
            std::fs::hard_link(&from, &to).map_err(errno)?;
            self.entry_of(&to)
        });
        reply_entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.gate().and_then(|()| {
            let path = self.path(ino.0)?;
            // Writes come with explicit offsets (the kernel resolves O_APPEND).
            let flags = flags.0 & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_APPEND);
            let f = self.open_path(&path, flags, 0)?;
            Ok(self.add_file(f))
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.gate().and_then(|()| {
            let f = self.file(fh.0)?;
            let mut buf = vec![0u8; size as usize];
            let mut n = 0;
            while n < buf.len() {
                match f.read_at(&mut buf[n..], offset + n as u64) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(n);
            Ok(buf)
        });
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.gate().and_then(|()| {
            let f = self.file(fh.0)?;
            f.write_all_at(data, offset).map_err(errno)?;
            u32::try_from(data.len()).map_err(|_| Errno::from_i32(libc::EINVAL))
        });
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let r = self.gate().and_then(|()| self.file(fh.0).map(|_| ()));
        reply_empty(reply, r);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.gate();
        // The handle goes away whatever the mode says.
        lock(&self.files).remove(&fh.0);
        reply_empty(reply, r);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.gate().and_then(|()| {
            let f = self.file(fh.0)?;
            if datasync {
                f.sync_data().map_err(errno)
            } else {
                f.sync_all().map_err(errno)
            }
        });
        reply_empty(reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = self
            .gate()
            .and_then(|()| self.do_readdir_snapshot(ino.0))
            .map(|v| {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                lock(&self.dirs).insert(fh, Arc::new(v));
                fh
            });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.gate().and_then(|()| {
            lock(&self.dirs)
                .get(&fh.0)
                .cloned()
                .ok_or(Errno::from_i32(libc::EBADF))
        });
        match r {
            Ok(entries) => {
                let skip = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, (ino, kind, name)) in entries.iter().enumerate().skip(skip) {
                    if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.gate();
        lock(&self.dirs).remove(&fh.0);
        reply_empty(reply, r);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.gate().and_then(|()| {
            let path = self.path(ino.0)?;
            let d = self.open_path(&path, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            if datasync {
                d.sync_data().map_err(errno)
            } else {
                d.sync_all().map_err(errno)
            }
        });
        reply_empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let r = self.gate().and_then(|()| {
            let c = cstr(&self.backing)?;
            let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
            // Safe because `c` is a valid C string and `s` is writable.
            check(unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) })?;
            // Safe because statvfs succeeded and filled `s`.
            Ok(unsafe { s.assume_init() })
        });
        match r {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let r = self.gate().and_then(|()| {
            let (p, n) = (cstr(&self.path(ino.0)?)?, cname(name)?);
            // Safe because all pointers are valid for the given lengths.
            check(unsafe {
                libc::lsetxattr(
                    p.as_ptr(),
                    n.as_ptr(),
                    value.as_ptr() as *const libc::c_void,
                    value.len(),
                    flags,
                )
            })
        });
        reply_empty(reply, r);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = self.gate().and_then(|()| self.do_getxattr(ino.0, name));
        reply_xattr(reply, r, size);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let r = self.gate().and_then(|()| self.do_listxattr(ino.0));
        reply_xattr(reply, r, size);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.gate().and_then(|()| {
            let (p, n) = (cstr(&self.path(ino.0)?)?, cname(name)?);
            // Safe because both are valid C strings.
            check(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })
        });
        reply_empty(reply, r);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks; this only says it exists.
        let r = self
            .gate()
            .and_then(|()| self.do_getattr(ino.0, None))
            .map(|_| ());
        reply_empty(reply, r);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.gate().and_then(|()| {
            let path = self.child(parent.0, name)?;
            let flags = (flags | libc::O_CREAT) & !(libc::O_NOCTTY | libc::O_APPEND);
            let f = self.open_path(&path, flags, mode & 0o7777 & !umask)?;
            self.give(req, &path)?;
            let attr = self.entry_of(&path)?;
            Ok((attr, self.add_file(f)))
        });
        match r {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.gate().and_then(|()| {
            let f = self.file(fh.0)?;
            let (o, l) = match (i64::try_from(offset), i64::try_from(length)) {
                (Ok(o), Ok(l)) => (o, l),
                _ => return Err(Errno::from_i32(libc::EFBIG)),
            };
            // Safe because the fd is valid while `f` lives.
            check(unsafe { libc::fallocate(f.as_raw_fd(), mode, o, l) })
        });
        reply_empty(reply, r);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let r = self.gate().and_then(|()| {
            let f = self.file(fh.0)?;
            // Safe because the fd is valid while `f` lives. The fd's own
            // offset is not used by anything else (I/O is positional).
            let o = unsafe { libc::lseek(f.as_raw_fd(), offset, whence) };
            if o < 0 { Err(last_errno()) } else { Ok(o) }
        });
        match r {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let [backing, mountpoint, control] = args.as_slice() else {
        return Err("usage: faultfs BACKING_DIR MOUNTPOINT CONTROL_FILE".into());
    };
    let backing = std::fs::canonicalize(backing)
        .map_err(|e| format!("backing dir {}: {e}", Path::new(backing).display()))?;
    if !backing.is_dir() {
        return Err(format!("{} is not a directory", backing.display()));
    }
    let control = std::path::absolute(control).map_err(|e| format!("control file: {e}"))?;
    // Modes and umasks come from the requests, not from this process.
    // Safe because umask cannot fail.
    unsafe { libc::umask(0) };

    use fuser::MountOption as M;
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        M::FSName("faultfs".into()),
        // Plain kernel option: makes the type `fuse.faultfs` in mountinfo.
        M::CUSTOM("subtype=faultfs".into()),
        M::DefaultPermissions,
        M::RW,
        M::Dev,
        M::Suid,
        M::Exec,
    ];
    cfg.acl = fuser::SessionACL::All;
    cfg.n_threads = Some(4);
    cfg.clone_fd = true;
    let fs = FaultFs::new(backing, control);
    let session = fuser::Session::new(fs, Path::new(mountpoint), &cfg)
        .map_err(|e| format!("mount {}: {e}", Path::new(mountpoint).display()))?;
    eprintln!("faultfs: mounted {}", Path::new(mountpoint).display());
    session.run().map_err(|e| format!("session ended: {e}"))?;
    eprintln!("faultfs: unmounted {}", Path::new(mountpoint).display());
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("faultfs: {e}");
        std::process::exit(1);
    }
}
