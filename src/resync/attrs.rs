//! Entry attributes: comparing and copying owner, mode, xattrs and times.

use std::collections::BTreeMap;
use std::ffi::CString;

use crate::errno::{Errno, Result};
use crate::replica::ops::{At, Stat, Times};

pub fn kind(st: &Stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

pub fn is_dir(st: &Stat) -> bool {
    kind(st) == libc::S_IFDIR
}

/// Permission bits including set-id and sticky.
pub fn perms(st: &Stat) -> u32 {
    st.st_mode & 0o7777
}

pub fn same_inode(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

pub fn inode_key(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// Whether a device number matters for this kind of entry.
pub fn has_rdev(st: &Stat) -> bool {
    matches!(kind(st), libc::S_IFCHR | libc::S_IFBLK)
}

pub fn same_mtime(a: &Stat, b: &Stat) -> bool {
    a.st_mtime == b.st_mtime && a.st_mtime_nsec == b.st_mtime_nsec
}

/// Every extended attribute of an entry, by name. A filesystem without
/// xattr support has none.
pub fn xattrs(at: At) -> Result<BTreeMap<CString, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for name in xattr_names(at)? {
        match at.getxattr(&name) {
            Ok(v) => {
                out.insert(name, v);
            }
            // Removed between the listing and now.
            Err(e) if e.0 == libc::ENODATA => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn xattr_names(at: At) -> Result<Vec<CString>> {
    let list = match at.listxattr() {
        Ok(l) => l,
        Err(e) if e == Errno::ENOTSUP => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(list
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|n| CString::new(n).ok())
        .collect())
}

/// Makes `dst`'s xattrs exactly `src`'s: sets what is missing or different,
/// removes what `src` lacks (POSIX ACLs included: they are xattrs).
pub fn sync_xattrs(src: At, dst: At) -> Result<()> {
    let want = xattrs(src)?;
    let have = xattrs(dst)?;
    for (name, v) in &want {
        if have.get(name) != Some(v) {
            dst.setxattr(name, v, 0)?;
        }
    }
    for name in have.keys().filter(|n| !want.contains_key(*n)) {
        match dst.removexattr(name) {
            Err(e) if e.0 != libc::ENODATA => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Copies owner, mode (not for symlinks), xattrs and then the times from
/// `src` (whose attributes are `sst`) to `dst`, in an order that makes each
/// stick: chown clears set-id bits and file capabilities, so it goes first;
/// setting an ACL rewrites the group bits, so the mode is checked again after
/// the xattrs; anything changes the ctime but only utimens sets atime/mtime,
/// so the times go last.
pub fn copy_attrs(src: At, sst: &Stat, dst: At) -> Result<()> {
    let symlink = kind(sst) == libc::S_IFLNK;
    let mut now = dst.stat()?;
    if now.st_uid != sst.st_uid || now.st_gid != sst.st_gid {
        dst.chown(sst.st_uid, sst.st_gid)?;
        now = dst.stat()?;
    }
    if !symlink && perms(&now) != perms(sst) {
        dst.chmod(perms(sst))?;
    }
    sync_xattrs(src, dst)?;
    if !symlink && perms(&dst.stat()?) != perms(sst) {
        dst.chmod(perms(sst))?;
    }
    dst.utimens(&times_of(sst))
}

/// (atime, mtime) of `st`, for utimens.
pub fn times_of(st: &Stat) -> Times {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}
