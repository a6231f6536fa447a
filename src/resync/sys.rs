//! Syscall wrappers the copy engine needs beyond `replica::ops`.

use std::ffi::CStr;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::errno::{Errno, Result};
use crate::replica::ops;

/// `copy_file_range` of up to `len` bytes from `src` at `off` to `dst` at
/// the same offset. Returns the bytes copied (0 at the source's end).
pub fn copy_file_range(src: BorrowedFd, dst: BorrowedFd, off: u64, len: usize) -> Result<usize> {
    let mut off_in = i64::try_from(off).map_err(|_| Errno(libc::EFBIG))?;
    let mut off_out = off_in;
    loop {
        match nix::fcntl::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), len) {
            Err(nix::Error::EINTR) => continue,
            r => return Ok(r?),
        }
    }
}

/// Reads into `buf` at `off` until it is full or the file ends; returns the
/// bytes read.
pub fn pread_into(fd: BorrowedFd, buf: &mut [u8], off: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let pos = i64::try_from(off + done as u64).map_err(|_| Errno(libc::EFBIG))?;
        match nix::sys::uio::pread(fd, &mut buf[done..], pos) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
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
