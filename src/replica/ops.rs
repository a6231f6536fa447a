//! Thin, safe wrappers over the syscalls the filesystem issues on a replica.
//!
//! Every call names its target either by an open fd or by a directory fd
//! plus one name, and never follows a symlink in that final name (either
//! through a `NOFOLLOW` flag, or by first pinning the entry with
//! `O_PATH | O_NOFOLLOW` and then addressing that inode through
//! `/proc/self/fd`, which cannot be redirected by a racing rename).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;

use nix::fcntl::{AT_FDCWD, AtFlags, FallocateFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, Whence};

use rustix::fs as xattr;

use crate::errno::{Errno, Result};

pub type Stat = libc::stat;

/// A timestamp pair for utimensat: (atime, mtime); `UTIME_OMIT` leaves one alone.
pub type Times = [libc::timespec; 2];

pub const OMIT: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_OMIT,
};

/// The current time, as one value every replica will be given.
pub fn now() -> libc::timespec {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME) {
        Ok(ts) => *ts.as_ref(),
        // CLOCK_REALTIME always exists; were it refused, the epoch.
        Err(_) => libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
    }
}

/// What a metadata call acts on.
#[derive(Clone, Copy)]
pub enum At<'a> {
    /// An open file or directory (also used for a replica root).
    Fd(BorrowedFd<'a>),
    /// The entry `name` in directory `dir`, not following a symlink.
    Entry(BorrowedFd<'a>, &'a CStr),
}

fn proc_path(fd: RawFd) -> CString {
    // A decimal number never contains NUL.
    CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default()
}

/// Pins `name` in `dir` without following a symlink.
pub fn open_path(dir: BorrowedFd, name: &CStr) -> Result<OwnedFd> {
    openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// openat with O_CLOEXEC | O_NOFOLLOW always added.
pub fn openat(dir: BorrowedFd, name: &CStr, flags: i32, mode: u32) -> Result<OwnedFd> {
    let flags = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // `_retain`: the bits go to the kernel exactly as given.
    Ok(nix::fcntl::openat(
        dir,
        name,
        OFlag::from_bits_retain(flags),
        Mode::from_bits_retain(mode),
    )?)
}

pub fn fstat(fd: BorrowedFd) -> Result<Stat> {
    Ok(nix::sys::stat::fstat(fd)?)
}

pub fn stat_at(dir: BorrowedFd, name: &CStr) -> Result<Stat> {
    Ok(nix::sys::stat::fstatat(
        dir,
        name,
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

impl At<'_> {
    pub fn stat(self) -> Result<Stat> {
        match self {
            At::Fd(fd) => fstat(fd),
            At::Entry(dir, name) => stat_at(dir, name),
        }
    }

    /// `u32::MAX` (-1) for either id leaves it alone, as chown(2) has it.
    pub fn chown(self, uid: u32, gid: u32) -> Result<()> {
        let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        match self {
            At::Fd(fd) => nix::unistd::fchown(fd, uid, gid)?,
            At::Entry(dir, name) => {
                nix::unistd::fchownat(dir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?
            }
        }
        Ok(())
    }

    pub fn chmod(self, mode: u32) -> Result<()> {
        match self {
            At::Fd(fd) => match nix::sys::stat::fchmod(fd, Mode::from_bits_retain(mode)) {
                // O_PATH fd: go through its /proc link.
                Err(nix::Error::EBADF) => chmod_proc(fd.as_raw_fd(), mode),
                r => Ok(r?),
            },
            At::Entry(dir, name) => {
                let pinned = open_path(dir, name)?;
                if fstat(fd_of(&pinned))?.st_mode & libc::S_IFMT == libc::S_IFLNK {
                    return Err(Errno::ENOTSUP);
                }
                chmod_proc(pinned.as_raw_fd(), mode)
            }
        }
    }

    pub fn utimens(self, times: &Times) -> Result<()> {
        let (atime, mtime) = (TimeSpec::from(times[0]), TimeSpec::from(times[1]));
        match self {
            At::Fd(fd) => nix::sys::stat::futimens(fd, &atime, &mtime)?,
            At::Entry(dir, name) => nix::sys::stat::utimensat(
                dir,
                name,
                &atime,
                &mtime,
                UtimensatFlags::NoFollowSymlink,
            )?,
        }
        Ok(())
    }

    pub fn truncate(self, size: u64) -> Result<()> {
        let size = i64::try_from(size).map_err(|_| Errno(libc::EFBIG))?;
        match self {
            At::Fd(fd) => Ok(nix::unistd::ftruncate(fd, size)?),
            At::Entry(dir, name) => {
                // O_NONBLOCK: never hang on a FIFO swapped in by a racing user.
                let f = openat(dir, name, libc::O_WRONLY | libc::O_NONBLOCK, 0)?;
                Ok(nix::unistd::ftruncate(&f, size)?)
            }
        }
    }

    /// Runs `f` with a path naming exactly this inode (through /proc/self/fd).
    fn with_inode_path<T>(self, f: impl FnOnce(&CStr) -> Result<T>) -> Result<T> {
        match self {
            At::Fd(fd) => f(&proc_path(fd.as_raw_fd())),
            At::Entry(dir, name) => {
                let pinned = open_path(dir, name)?;
                f(&proc_path(pinned.as_raw_fd()))
            }
        }
    }

    // The xattr calls are the path forms (they follow the /proc magic
    // link to the pinned inode); nix has none, rustix (already built for
    // tempfile) does.

    pub fn getxattr(self, attr: &CStr) -> Result<Vec<u8>> {
        self.with_inode_path(|p| {
            read_sized(
                || xattr::getxattr_query(p, attr),
                |buf| xattr::getxattr(p, attr, buf),
            )
        })
    }

    pub fn listxattr(self) -> Result<Vec<u8>> {
        self.with_inode_path(|p| {
            read_sized(|| xattr::listxattr_query(p), |buf| xattr::listxattr(p, buf))
        })
    }

    /// `flags` as setxattr(2) takes it (`XATTR_CREATE`, `XATTR_REPLACE`), passed unchanged.
    pub fn setxattr(self, attr: &CStr, value: &[u8], flags: i32) -> Result<()> {
        let flags = xattr::XattrFlags::from_bits_retain(flags as u32);
        self.with_inode_path(|p| Ok(xattr::setxattr(p, attr, value, flags)?))
    }

    pub fn removexattr(self, attr: &CStr) -> Result<()> {
        self.with_inode_path(|p| Ok(xattr::removexattr(p, attr)?))
    }
}

fn chmod_proc(fd: RawFd, mode: u32) -> Result<()> {
    // chmod(2) of the path, following the magic link to the inode.
    let p = proc_path(fd);
    Ok(nix::sys::stat::fchmodat(
        AT_FDCWD,
        p.as_c_str(),
        Mode::from_bits_retain(mode),
        FchmodatFlags::FollowSymlink,
    )?)
}

/// Borrows an owned fd (shorthand).
pub fn fd_of(fd: &OwnedFd) -> BorrowedFd<'_> {
    use std::os::fd::AsFd;
    fd.as_fd()
}

/// Asks an xattr-style call for the size it needs (`query`, the call with
/// size 0), then reads (`read`), until the buffer fits.
fn read_sized(
    mut query: impl FnMut() -> rustix::io::Result<usize>,
    mut read: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> Result<Vec<u8>> {
    for _ in 0..8 {
        let need = query()?;
        let mut buf = vec![0u8; need.max(1)];
        match read(&mut buf).map_err(Errno::from) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            // Grew between the two calls: ask again.
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::ERANGE)
}

pub fn mkdirat(dir: BorrowedFd, name: &CStr, mode: u32) -> Result<()> {
    Ok(nix::sys::stat::mkdirat(
        dir,
        name,
        Mode::from_bits_retain(mode),
    )?)
}

/// `mode` carries the file type and the permissions, as mknod(2) takes it.
pub fn mknodat(dir: BorrowedFd, name: &CStr, mode: u32, rdev: u64) -> Result<()> {
    // nix ORs the two halves back together: the kernel sees `mode` unchanged.
    let kind = SFlag::from_bits_retain(mode & libc::S_IFMT);
    let perm = Mode::from_bits_retain(mode & !libc::S_IFMT);
    Ok(nix::sys::stat::mknodat(dir, name, kind, perm, rdev)?)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd, name: &CStr) -> Result<()> {
    Ok(nix::unistd::symlinkat(target, dir, name)?)
}

/// `flags` is 0 or `AT_REMOVEDIR`, as unlinkat(2) takes it.
pub fn unlinkat(dir: BorrowedFd, name: &CStr, flags: i32) -> Result<()> {
    let flag = match flags {
        0 => UnlinkatFlags::NoRemoveDir,
        libc::AT_REMOVEDIR => UnlinkatFlags::RemoveDir,
        // What unlinkat(2) answers to any other flag.
        _ => return Err(Errno::EINVAL),
    };
    Ok(nix::unistd::unlinkat(dir, name, flag)?)
}

pub fn linkat(from: BorrowedFd, from_name: &CStr, to: BorrowedFd, to_name: &CStr) -> Result<()> {
    // No AT_SYMLINK_FOLLOW: a symlink named here is linked, never followed.
    Ok(nix::unistd::linkat(
        from,
        from_name,
        to,
        to_name,
        AtFlags::empty(),
    )?)
}

pub fn renameat2(
    from: BorrowedFd,
    from_name: &CStr,
    to: BorrowedFd,
    to_name: &CStr,
    flags: u32,
) -> Result<()> {
    // rustix, not nix: nix has renameat2 only on glibc targets.
    let flags = rustix::fs::RenameFlags::from_bits_retain(flags);
    Ok(rustix::fs::renameat_with(
        from, from_name, to, to_name, flags,
    )?)
}

pub fn readlinkat(dir: BorrowedFd, name: &CStr) -> Result<Vec<u8>> {
    Ok(nix::fcntl::readlinkat(dir, name)?.into_vec())
}

/// Reads up to `len` bytes at `offset`, retrying short reads until EOF.
pub fn pread_full(fd: BorrowedFd, len: usize, offset: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = nix::sys::uio::pread(fd, &mut buf[done..], (offset + done as u64) as i64)
            .map_err(Errno::from);
        match n {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.0 == libc::EINTR => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Writes all of `data` at `offset`; a short write that makes no progress
/// is reported as ENOSPC, which is what it means on a regular file.
pub fn pwrite_all(fd: BorrowedFd, data: &[u8], offset: u64) -> Result<usize> {
    let mut done = 0;
    while done < data.len() {
        let n = nix::sys::uio::pwrite(fd, &data[done..], (offset + done as u64) as i64)
            .map_err(Errno::from);
        match n {
            Ok(0) => return Err(Errno::ENOSPC),
            Ok(n) => done += n,
            Err(e) if e.0 == libc::EINTR => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Copies up to `len` bytes of `src` at `off_in` to `dst` at `off_out`
/// inside the kernel (`copy_file_range`, reflinks where the filesystem
/// has them), through a buffer where it cannot (another filesystem, an
/// old kernel). Returns the bytes copied: fewer than `len` only at the
/// source's end.
pub fn copy_range(
    src: BorrowedFd,
    off_in: u64,
    dst: BorrowedFd,
    off_out: u64,
    len: u64,
) -> Result<u64> {
    let mut done = 0u64;
    let mut in_kernel = true;
    while done < len {
        let want = (len - done).min(1 << 30) as usize;
        if in_kernel {
            let mut a = i64::try_from(off_in + done).map_err(|_| Errno(libc::EFBIG))?;
            let mut b = i64::try_from(off_out + done).map_err(|_| Errno(libc::EFBIG))?;
            let r = nix::fcntl::copy_file_range(src, Some(&mut a), dst, Some(&mut b), want)
                .map_err(Errno::from);
            match r {
                Ok(0) => break,
                Ok(n) => done += n as u64,
                Err(e) if e.0 == libc::EINTR => {}
                Err(e)
                    if matches!(
                        e.0,
                        libc::EXDEV | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL
                    ) =>
                {
                    in_kernel = false
                }
                Err(e) => return Err(e),
            }
            continue;
        }
        let chunk = pread_full(src, want.min(1 << 20), off_in + done)?;
        if chunk.is_empty() {
            break;
        }
        done += pwrite_all(dst, &chunk, off_out + done)? as u64;
    }
    Ok(done)
}

pub fn fsync(fd: BorrowedFd, datasync: bool) -> Result<()> {
    if datasync {
        Ok(nix::unistd::fdatasync(fd)?)
    } else {
        Ok(nix::unistd::fsync(fd)?)
    }
}

/// `mode` as fallocate(2) takes it (`FALLOC_FL_*` bits, passed unchanged).
pub fn fallocate(fd: BorrowedFd, mode: i32, offset: u64, len: u64) -> Result<()> {
    let mode = FallocateFlags::from_bits_retain(mode);
    Ok(nix::fcntl::fallocate(fd, mode, offset as i64, len as i64)?)
}

/// `whence` as lseek(2) takes it (`SEEK_SET` ... `SEEK_HOLE`).
pub fn lseek(fd: BorrowedFd, offset: i64, whence: i32) -> Result<i64> {
    let whence = match whence {
        libc::SEEK_SET => Whence::SeekSet,
        libc::SEEK_CUR => Whence::SeekCur,
        libc::SEEK_END => Whence::SeekEnd,
        libc::SEEK_DATA => Whence::SeekData,
        libc::SEEK_HOLE => Whence::SeekHole,
        // What lseek(2) answers to any other whence.
        _ => return Err(Errno::EINVAL),
    };
    Ok(nix::unistd::lseek(fd, offset, whence)?)
}

pub fn fstatvfs(fd: BorrowedFd) -> Result<nix::sys::statvfs::Statvfs> {
    Ok(nix::sys::statvfs::fstatvfs(fd)?)
}

/// One directory entry as read from a replica.
pub struct RawDirEntry {
    pub name: CString,
    pub ino: u64,
    pub kind: u8,
}

/// Reads every entry of an open directory except `.` and `..`.
pub fn read_dir(dir: OwnedFd) -> Result<Vec<RawDirEntry>> {
    let mut d = nix::dir::Dir::from_fd(dir).map_err(Errno::from)?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(Errno::from)?;
        let name = e.file_name();
        let b = name.to_bytes();
        if b == b"." || b == b".." {
            continue;
        }
        let kind = match e.file_type() {
            Some(nix::dir::Type::Directory) => libc::DT_DIR,
            Some(nix::dir::Type::File) => libc::DT_REG,
            Some(nix::dir::Type::Symlink) => libc::DT_LNK,
            Some(nix::dir::Type::Fifo) => libc::DT_FIFO,
            Some(nix::dir::Type::Socket) => libc::DT_SOCK,
            Some(nix::dir::Type::CharacterDevice) => libc::DT_CHR,
            Some(nix::dir::Type::BlockDevice) => libc::DT_BLK,
            None => libc::DT_UNKNOWN,
        };
        out.push(RawDirEntry {
            name: name.to_owned(),
            ino: e.ino(),
            kind,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn dir() -> (tempfile::TempDir, OwnedFd) {
        let t = tempfile::tempdir().unwrap();
        let fd: OwnedFd = std::fs::File::open(t.path()).unwrap().into();
        (t, fd)
    }

    #[test]
    fn xattrs_round_trip_and_keep_their_errnos() {
        let (_t, d) = dir();
        let d = d.as_fd();
        drop(openat(d, c"f", libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap());
        let at = At::Entry(d, c"f");
        assert_eq!(at.getxattr(c"user.none"), Err(Errno(libc::ENODATA)));
        // Larger than any first guess: the size is asked for, then read.
        let big = vec![7u8; 3000];
        at.setxattr(c"user.big", &big, 0).unwrap();
        at.setxattr(c"user.empty", b"", 0).unwrap();
        assert_eq!(at.getxattr(c"user.big").unwrap(), big);
        assert_eq!(at.getxattr(c"user.empty").unwrap(), b"");
        let e = at.setxattr(c"user.big", b"x", libc::XATTR_CREATE);
        assert_eq!(e, Err(Errno::EEXIST));
        let e = at.setxattr(c"user.new", b"x", libc::XATTR_REPLACE);
        assert_eq!(e, Err(Errno(libc::ENODATA)));
        let mut names: Vec<_> = at
            .listxattr()
            .unwrap()
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        names.sort();
        assert_eq!(names, [b"user.big".to_vec(), b"user.empty".to_vec()]);
        at.removexattr(c"user.big").unwrap();
        assert_eq!(at.removexattr(c"user.big"), Err(Errno(libc::ENODATA)));
        // Through an O_PATH fd, as an open of a file is pinned.
        let pinned = open_path(d, c"f").unwrap();
        assert_eq!(At::Fd(pinned.as_fd()).getxattr(c"user.empty").unwrap(), b"");
    }

    #[test]
    fn raw_flags_reach_the_kernel_unchanged() {
        let (_t, d) = dir();
        let d = d.as_fd();
        for n in [c"a", c"b"] {
            drop(openat(d, n, libc::O_CREAT | libc::O_WRONLY, 0o600).unwrap());
        }
        let e = renameat2(d, c"a", d, c"b", libc::RENAME_NOREPLACE);
        assert_eq!(e, Err(Errno::EEXIST));
        renameat2(d, c"a", d, c"b", libc::RENAME_EXCHANGE).unwrap();
        assert_eq!(unlinkat(d, c"a", 0x4000), Err(Errno::EINVAL));
        mkdirat(d, c"sub", 0o700).unwrap();
        assert_eq!(unlinkat(d, c"sub", 0), Err(Errno::EISDIR));
        unlinkat(d, c"sub", libc::AT_REMOVEDIR).unwrap();
        let f = openat(d, c"a", libc::O_RDWR, 0).unwrap();
        assert_eq!(lseek(f.as_fd(), 0, 42), Err(Errno::EINVAL));
        assert_eq!(
            lseek(f.as_fd(), 0, libc::SEEK_DATA),
            Err(Errno(libc::ENXIO))
        );
        // The final name is never followed.
        symlinkat(c"a", d, c"link").unwrap();
        assert_eq!(readlinkat(d, c"link").unwrap(), b"a");
        let e = openat(d, c"link", libc::O_RDONLY, 0).unwrap_err();
        assert_eq!(e, Errno(libc::ELOOP));
        let st = stat_at(d, c"link").unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
        mknodat(d, c"fifo", libc::S_IFIFO | 0o640, 0).unwrap();
        let st = stat_at(d, c"fifo").unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFIFO);
        // The permissions given, less the umask.
        assert_eq!(st.st_mode & 0o7777 & !0o640, 0);
    }
}
