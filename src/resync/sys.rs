//! Syscall wrappers the copy engine needs beyond `replica::ops`.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use crate::errno::{Errno, Result, check_size};
use crate::replica::ops;

/// `copy_file_range` of up to `len` bytes from `src` at `off` to `dst` at
/// the same offset. Returns the bytes copied (0 at the source's end).
pub fn copy_file_range(src: BorrowedFd, dst: BorrowedFd, off: u64, len: usize) -> Result<usize> {
    let mut off_in = i64::try_from(off).map_err(|_| Errno(libc::EFBIG))?;
    let mut off_out = off_in;
    loop {
        // Safe because both offsets point at live i64s and the fds are borrowed.
        let r = check_size(unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                len,
                0,
            )
        });
        match r {
            Err(e) if e.0 == libc::EINTR => continue,
            r => return r,
        }
    }
}

/// Reads into `buf` at `off` until it is full or the file ends; returns the
/// bytes read.
pub fn pread_into(fd: BorrowedFd, buf: &mut [u8], off: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let pos = i64::try_from(off + done as u64).map_err(|_| Errno(libc::EFBIG))?;
        // Safe because the slice past `done` is valid for its length.
        let r = check_size(unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                buf.len() - done,
                pos,
            )
        });
        match r {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.0 == libc::EINTR => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Opens the subdirectory `name` of `dir` for listing, never following a
/// symlink (ELOOP or ENOTDIR if `name` is not a directory).
pub fn open_subdir(dir: BorrowedFd, name: &CStr) -> Result<OwnedFd> {
    ops::openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// A second, independent open of the directory `dir` (own read position),
/// for listing it while `dir` stays usable for `*at` calls.
pub fn reopen_dir(dir: BorrowedFd) -> Result<OwnedFd> {
    open_subdir(dir, c".")
}

/// Opens an existing entry for reading its content without updating its
/// access time (O_NOATIME where permitted) and without blocking on a FIFO
/// swapped in by a racing rename.
pub fn open_read(dir: BorrowedFd, name: &CStr) -> Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_NONBLOCK;
    match ops::openat(dir, name, flags | libc::O_NOATIME, 0) {
        Err(e) if e == Errno::EPERM => ops::openat(dir, name, flags, 0),
        r => r,
    }
}
