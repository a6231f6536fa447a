//! The identity marker: `.chironfs/id` in a replica root holds the UUID the
//! replica got at first use. A directory without it (an NFS mount that did
//! not come up leaves an empty mountpoint) or with another one is not the
//! replica it claims to be, and is never written or read.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::errno::{Errno, Result, check};
use crate::meta::ReplicaId;
use crate::replica::INTERNAL_NAME;
use crate::replica::ops;

const MARKER: &str = "id";

fn internal_dir(root: BorrowedFd) -> Result<std::os::fd::OwnedFd> {
    let name = CString::new(INTERNAL_NAME).map_err(|_| Errno::EINVAL)?;
    ops::openat(root, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// The marker's identity; `None` if there is no marker (or no internal dir).
pub fn read(root: BorrowedFd) -> Result<Option<ReplicaId>> {
    let dir = match internal_dir(root) {
        Ok(d) => d,
        Err(e) if e.0 == libc::ENOENT => return Ok(None),
        Err(e) => return Err(e),
    };
    let name = CString::new(MARKER).map_err(|_| Errno::EINVAL)?;
    let f = match ops::openat(ops::fd_of(&dir), &name, libc::O_RDONLY, 0) {
        Ok(f) => f,
        Err(e) if e.0 == libc::ENOENT => return Ok(None),
        Err(e) => return Err(e),
    };
    let data = ops::pread_full(ops::fd_of(&f), 128, 0)?;
    let text = String::from_utf8_lossy(&data);
    // A marker that does not parse is foreign, not absent.
    Ok(Some(text.trim().parse().map_err(|_| Errno(libc::EBADMSG))?))
}

/// Writes the marker durably (temporary file, fsync, rename, fsync dir).
pub fn write(root: BorrowedFd, id: &ReplicaId) -> Result<()> {
    let iname = CString::new(INTERNAL_NAME).map_err(|_| Errno::EINVAL)?;
    match ops::mkdirat(root, &iname, 0o700) {
        Ok(()) => {}
        Err(e) if e.0 == libc::EEXIST => {}
        Err(e) => return Err(e),
    }
    let dir = internal_dir(root)?;
    let d = ops::fd_of(&dir);
    let tmp = CString::new(format!("{MARKER}.tmp")).map_err(|_| Errno::EINVAL)?;
    let name = CString::new(MARKER).map_err(|_| Errno::EINVAL)?;
    let f = ops::openat(
        d,
        &tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        0o600,
    )?;
    ops::pwrite_all(ops::fd_of(&f), format!("{id}\n").as_bytes(), 0)?;
    ops::fsync(ops::fd_of(&f), false)?;
    ops::renameat2(d, &tmp, d, &name, 0)?;
    // Safe: plain syscall on a borrowed fd.
    check(unsafe { libc::fsync(d.as_raw_fd()) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    #[test]
    fn marker_round_trip_and_absence() {
        let t = tempfile::tempdir().unwrap();
        let root: OwnedFd = std::fs::File::open(t.path()).unwrap().into();
        assert_eq!(read(ops::fd_of(&root)).unwrap(), None);
        let id = ReplicaId::random();
        write(ops::fd_of(&root), &id).unwrap();
        assert_eq!(read(ops::fd_of(&root)).unwrap(), Some(id));
        std::fs::write(t.path().join(".chironfs/id"), b"garbage").unwrap();
        assert_eq!(read(ops::fd_of(&root)).unwrap_err(), Errno(libc::EBADMSG));
    }
}
