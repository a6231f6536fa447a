//! The identity marker: `.chironfs/id` in a replica root holds the UUID the
//! replica got at first use. A directory without it (an NFS mount that did
//! not come up leaves an empty mountpoint) or with another one is not the
//! replica it claims to be, and is never written or read.

use std::ffi::CString;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::errno::{Errno, Result};
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

/// Writes the marker durably (see [`write_internal`]); tests use it to
/// make a replica (the daemon uses [`create`]).
#[cfg(test)]
pub fn write(root: BorrowedFd, id: &ReplicaId) -> Result<()> {
    write_internal(root, MARKER, format!("{id}\n").as_bytes())
}

/// Gives a replica without a marker the identity `id`, unless another
/// daemon (another host mounting the same fresh replica set at the same
/// moment) gives it one first: the marker is written in full under a name
/// of this process's own, then linked as the marker, which fails if one
/// exists (atomic on local filesystems and NFS alike). Returns the
/// identity the replica has now, ours or the other daemon's.
pub fn create(root: BorrowedFd, id: &ReplicaId) -> Result<ReplicaId> {
    let (dir, tmp) = write_private(root, MARKER, format!("{id}\n").as_bytes())?;
    let d = ops::fd_of(&dir);
    let name = CString::new(MARKER).map_err(|_| Errno::EINVAL)?;
    let linked = ops::linkat(d, &tmp, d, &name);
    let _ = ops::unlinkat(d, &tmp, 0);
    match linked {
        Ok(()) => {
            ops::fsync(d, false)?;
            Ok(*id)
        }
        Err(e) if e.0 == libc::EEXIST => read(root)?.ok_or(Errno::ENOENT),
        Err(e) => Err(e),
    }
}

/// Writes `data` durably to a temporary of this process's own in the
/// internal directory (made if missing): two daemons writing the same file
/// (two hosts sharing the replica) never touch each other's temporary.
/// Returns the directory and the temporary's name; on error nothing is left.
fn write_private(root: BorrowedFd, name: &str, data: &[u8]) -> Result<(OwnedFd, CString)> {
    let iname = CString::new(INTERNAL_NAME).map_err(|_| Errno::EINVAL)?;
    match ops::mkdirat(root, &iname, 0o700) {
        Ok(()) => {}
        Err(e) if e.0 == libc::EEXIST => {}
        Err(e) => return Err(e),
    }
    let dir = internal_dir(root)?;
    let d = ops::fd_of(&dir);
    let tmp = CString::new(format!(
        "{name}.{}.{}.tmp",
        std::process::id(),
        ReplicaId::random()
    ))
    .map_err(|_| Errno::EINVAL)?;
    let f = ops::openat(
        d,
        &tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o600,
    )?;
    let written =
        ops::pwrite_all(ops::fd_of(&f), data, 0).and_then(|_| ops::fsync(ops::fd_of(&f), false));
    if let Err(e) = written {
        let _ = ops::unlinkat(d, &tmp, 0);
        return Err(e);
    }
    Ok((dir, tmp))
}

/// Writes `data` as file `name` of the replica's internal directory,
/// durably and atomically: a private temporary file, fsync, rename over
/// the old one, fsync of the directory.
pub fn write_internal(root: BorrowedFd, name: &str, data: &[u8]) -> Result<()> {
    let (dir, tmp) = write_private(root, name, data)?;
    let d = ops::fd_of(&dir);
    let final_name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    if let Err(e) = ops::renameat2(d, &tmp, d, &final_name, 0) {
        let _ = ops::unlinkat(d, &tmp, 0);
        return Err(e);
    }
    ops::fsync(d, false)?;
    Ok(())
}

/// The internal directory's entries whose names start with `prefix`, with
/// their contents (at most `max` bytes each). Missing directory: none.
pub fn read_internal(root: BorrowedFd, prefix: &str, max: usize) -> Result<Vec<(String, Vec<u8>)>> {
    let dir = match internal_dir(root) {
        Ok(d) => d,
        Err(e) if e.0 == libc::ENOENT => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let again = ops::openat(
        ops::fd_of(&dir),
        c".",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )?;
    let mut out = Vec::new();
    for e in ops::read_dir(again)? {
        let Ok(name) = std::str::from_utf8(e.name.as_bytes()) else {
            continue;
        };
        if !name.starts_with(prefix) || name.ends_with(".tmp") {
            continue;
        }
        let f = match ops::openat(
            ops::fd_of(&dir),
            &e.name,
            libc::O_RDONLY | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(f) => f,
            Err(e) if e.0 == libc::ENOENT => continue,
            Err(e) => return Err(e),
        };
        out.push((name.to_string(), ops::pread_full(ops::fd_of(&f), max, 0)?));
    }
    out.sort();
    Ok(out)
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

    #[test]
    fn daemons_racing_on_a_fresh_replica_agree_on_one_identity() {
        // Two hosts mounting one fresh replica set at the same moment:
        // every racer comes up, with the same identity, and no temporary
        // is left behind. (A shared temporary name made one of them fail
        // with ENOENT, and each could have believed its own identity.)
        for _ in 0..50 {
            let t = tempfile::tempdir().unwrap();
            let path = t.path().to_path_buf();
            let racers: Vec<_> = (0..4)
                .map(|_| {
                    let p = path.clone();
                    std::thread::spawn(move || {
                        let root: OwnedFd = std::fs::File::open(&p).unwrap().into();
                        let got = create(ops::fd_of(&root), &ReplicaId::random());
                        let again = write_internal(ops::fd_of(&root), "ledger-x", b"1");
                        (got, again)
                    })
                })
                .collect();
            let ids: Vec<ReplicaId> = racers
                .into_iter()
                .map(|r| {
                    let (got, again) = r.join().unwrap();
                    again.expect("concurrent write_internal");
                    got.expect("create")
                })
                .collect();
            assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
            let root: OwnedFd = std::fs::File::open(&path).unwrap().into();
            assert_eq!(read(ops::fd_of(&root)).unwrap(), Some(ids[0]));
            let left: Vec<_> = std::fs::read_dir(path.join(".chironfs"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect();
            assert!(left.is_empty(), "temporaries left: {left:?}");
        }
    }
}
