//! Thin, safe wrappers over the syscalls the filesystem issues on a replica.
//!
//! Every call names its target either by an open fd or by a directory fd
//! plus one name, and never follows a symlink in that final name (either
//! through a `NOFOLLOW` flag, or by first pinning the entry with
//! `O_PATH | O_NOFOLLOW` and then addressing that inode through
//! `/proc/self/fd`, which cannot be redirected by a racing rename).

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::errno::{Errno, Result, check, check_size};

pub type Stat = libc::stat;

/// A timestamp pair for utimensat: (atime, mtime); `UTIME_OMIT` leaves one alone.
pub type Times = [libc::timespec; 2];

pub const OMIT: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_OMIT,
};

/// The current time, as one value every replica will be given.
pub fn now() -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safe because `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts
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
    // Safe because `name` is a valid C string and the fd is owned below.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })?;
    // Safe because the kernel just returned this fd and no one else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn fstat(fd: BorrowedFd) -> Result<Stat> {
    let mut st = MaybeUninit::<Stat>::uninit();
    // Safe because `st` is large enough and is only read after success.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    Ok(unsafe { st.assume_init() })
}

pub fn stat_at(dir: BorrowedFd, name: &CStr) -> Result<Stat> {
    let mut st = MaybeUninit::<Stat>::uninit();
    // Safe because `st` is large enough and is only read after success.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(unsafe { st.assume_init() })
}

impl At<'_> {
    pub fn stat(self) -> Result<Stat> {
        match self {
            At::Fd(fd) => fstat(fd),
            At::Entry(dir, name) => stat_at(dir, name),
        }
    }

    pub fn chown(self, uid: u32, gid: u32) -> Result<()> {
        // Safe because the pointers are valid C strings.
        check(unsafe {
            match self {
                At::Fd(fd) => libc::fchown(fd.as_raw_fd(), uid, gid),
                At::Entry(dir, name) => libc::fchownat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    uid,
                    gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                ),
            }
        })?;
        Ok(())
    }

    pub fn chmod(self, mode: u32) -> Result<()> {
        match self {
            At::Fd(fd) => {
                // Safe: plain syscall on a borrowed fd.
                let r = unsafe { libc::fchmod(fd.as_raw_fd(), mode) };
                if r < 0 && Errno::last() == Errno::EBADF {
                    // O_PATH fd: go through its /proc link.
                    return chmod_proc(fd.as_raw_fd(), mode);
                }
                check(r).map(drop)
            }
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
        // Safe because `times` points at two timespecs and names are C strings.
        check(unsafe {
            match self {
                At::Fd(fd) => libc::futimens(fd.as_raw_fd(), times.as_ptr()),
                At::Entry(dir, name) => libc::utimensat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                ),
            }
        })?;
        Ok(())
    }

    pub fn truncate(self, size: u64) -> Result<()> {
        let size = i64::try_from(size).map_err(|_| Errno(libc::EFBIG))?;
        match self {
            At::Fd(fd) => {
                // Safe: plain syscall on a borrowed fd.
                check(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
            }
            At::Entry(dir, name) => {
                // O_NONBLOCK: never hang on a FIFO swapped in by a racing user.
                let f = openat(dir, name, libc::O_WRONLY | libc::O_NONBLOCK, 0)?;
                // Safe: plain syscall on an fd we own.
                check(unsafe { libc::ftruncate(f.as_raw_fd(), size) }).map(drop)
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

    pub fn getxattr(self, attr: &CStr) -> Result<Vec<u8>> {
        self.with_inode_path(|p| {
            read_sized(|buf, len| {
                // Safe because `buf` has room for `len` bytes (or is null with len 0).
                unsafe { libc::getxattr(p.as_ptr(), attr.as_ptr(), buf.cast(), len) }
            })
        })
    }

    pub fn listxattr(self) -> Result<Vec<u8>> {
        self.with_inode_path(|p| {
            read_sized(|buf, len| {
                // Safe because `buf` has room for `len` bytes (or is null with len 0).
                unsafe { libc::listxattr(p.as_ptr(), buf.cast(), len) }
            })
        })
    }

    pub fn setxattr(self, attr: &CStr, value: &[u8], flags: i32) -> Result<()> {
        self.with_inode_path(|p| {
            // Safe because `value` is valid for its length and strings are C strings.
            check(unsafe {
                libc::setxattr(
                    p.as_ptr(),
                    attr.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            })
            .map(drop)
        })
    }

    pub fn removexattr(self, attr: &CStr) -> Result<()> {
        self.with_inode_path(|p| {
            // Safe because both are valid C strings.
            check(unsafe { libc::removexattr(p.as_ptr(), attr.as_ptr()) }).map(drop)
        })
    }
}

fn chmod_proc(fd: RawFd, mode: u32) -> Result<()> {
    let p = proc_path(fd);
    // Safe because `p` is a valid C string.
    check(unsafe { libc::chmod(p.as_ptr(), mode) }).map(drop)
}

/// Borrows an owned fd (shorthand).
pub fn fd_of(fd: &OwnedFd) -> BorrowedFd<'_> {
    use std::os::fd::AsFd;
    fd.as_fd()
}

/// Calls a size-probing syscall (xattr style) until the buffer fits.
fn read_sized(mut call: impl FnMut(*mut u8, usize) -> libc::ssize_t) -> Result<Vec<u8>> {
    for _ in 0..8 {
        let need = check_size(call(std::ptr::null_mut(), 0))?;
        let mut buf = vec![0u8; need.max(1)];
        match check_size(call(buf.as_mut_ptr(), buf.len())) {
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
    // Safe because `name` is a valid C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd, name: &CStr, mode: u32, rdev: u64) -> Result<()> {
    // Safe because `name` is a valid C string.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd, name: &CStr) -> Result<()> {
    // Safe because both are valid C strings.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn unlinkat(dir: BorrowedFd, name: &CStr, flags: i32) -> Result<()> {
    // Safe because `name` is a valid C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn linkat(from: BorrowedFd, from_name: &CStr, to: BorrowedFd, to_name: &CStr) -> Result<()> {
    // Safe because names are valid C strings; flags 0 never follows a symlink.
    check(unsafe {
        libc::linkat(
            from.as_raw_fd(),
            from_name.as_ptr(),
            to.as_raw_fd(),
            to_name.as_ptr(),
            0,
        )
    })
    .map(drop)
}

pub fn renameat2(
    from: BorrowedFd,
    from_name: &CStr,
    to: BorrowedFd,
    to_name: &CStr,
    flags: u32,
) -> Result<()> {
    // Safe because names are valid C strings.
    check(unsafe {
        libc::renameat2(
            from.as_raw_fd(),
            from_name.as_ptr(),
            to.as_raw_fd(),
            to_name.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

pub fn readlinkat(dir: BorrowedFd, name: &CStr) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // Safe because `buf` has room for its length.
    let n = check_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// Reads up to `len` bytes at `offset`, retrying short reads until EOF.
pub fn pread_full(fd: BorrowedFd, len: usize, offset: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        // Safe because the slice past `done` is valid for the remaining length.
        let n = check_size(unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                len - done,
                (offset + done as u64) as i64,
            )
        });
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
        // Safe because the slice past `done` is valid for the remaining length.
        let n = check_size(unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
                (offset + done as u64) as i64,
            )
        });
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
            // Safe because both offsets point at live i64s and the fds are borrowed.
            let r = check_size(unsafe {
                libc::copy_file_range(src.as_raw_fd(), &mut a, dst.as_raw_fd(), &mut b, want, 0)
            });
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
    // Safe: plain syscalls on a borrowed fd.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

pub fn fallocate(fd: BorrowedFd, mode: i32, offset: u64, len: u64) -> Result<()> {
    // Safe: plain syscall on a borrowed fd.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset as i64, len as i64) }).map(drop)
}

pub fn lseek(fd: BorrowedFd, offset: i64, whence: i32) -> Result<i64> {
    // Safe: plain syscall on a borrowed fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

pub fn fstatvfs(fd: BorrowedFd) -> Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // Safe because `st` is large enough and only read after success.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    Ok(unsafe { st.assume_init() })
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
