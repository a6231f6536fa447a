//! Relative paths inside a replica, and the only way to turn one into a file
//! descriptor.
//!
//! Invariant: nothing outside a replica root is ever reached. Every path is a
//! list of plain names (no `.`, `..`, `/` or NUL) resolved with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the root's fd, and
//! the final name is always used with a `*at` call that does not follow a
//! symlink. The kernel resolves symlinks of the mount itself, so a path the
//! daemon is asked about never legitimately crosses one; a symlink planted
//! or swapped in on a replica makes the call fail (ELOOP), never escape.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use crate::errno::{Errno, Result};

/// A validated path relative to a replica root; empty means the root.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    pub fn root() -> RelPath {
        RelPath(Vec::new())
    }

    #[cfg(test)]
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// This path with one more name appended.
    pub fn join(&self, name: &Name) -> RelPath {
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.0.as_bytes().len());
        v.extend_from_slice(&self.0);
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name.0.as_bytes());
        RelPath(v)
    }

    /// A path from its bytes as stored (validated component by component).
    pub fn from_bytes(b: &[u8]) -> Option<RelPath> {
        let mut p = RelPath::root();
        for comp in b.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
            p = p.join(&Name::new(std::ffi::OsStr::from_bytes(comp)).ok()?);
        }
        Some(p)
    }

    /// The directory this path is in (the root for a top-level name and for the root).
    pub fn parent(&self) -> RelPath {
        self.split().map_or_else(RelPath::root, |(p, _)| p)
    }

    /// Splits into (parent, final name); `None` for the root.
    pub fn split(&self) -> Option<(RelPath, Name)> {
        if self.0.is_empty() {
            return None;
        }
        let (parent, name) = match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => (self.0[..i].to_vec(), self.0[i + 1..].to_vec()),
            None => (Vec::new(), self.0.clone()),
        };
        // Safe to unwrap-free construct: components were validated on the way in.
        let name = CString::new(name).map_err(|_| ()).ok()?;
        Some((RelPath(parent), Name(name)))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as a C string for openat2; "." for the root.
    fn to_cstring(&self) -> CString {
        if self.0.is_empty() {
            return c".".to_owned();
        }
        // Components never contain NUL (checked in Name::new).
        CString::new(self.0.clone()).unwrap_or_else(|_| c".".to_owned())
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", String::from_utf8_lossy(&self.0))
    }
}

impl std::fmt::Debug for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// One validated file name: not empty, not `.` or `..`, no `/` or NUL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Name(CString);

impl Name {
    pub fn new(name: &OsStr) -> Result<Name> {
        let b = name.as_bytes();
        if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
            return Err(Errno::EINVAL);
        }
        if b.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        CString::new(b).map(Name).map_err(|_| Errno::EINVAL)
    }

    pub fn as_c(&self) -> &CStr {
        &self.0
    }

    pub fn as_os(&self) -> &OsStr {
        OsStr::from_bytes(self.0.as_bytes())
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_os())
    }
}

/// Opens directory `rel` beneath `root` for use as the parent of `*at`
/// calls. Never follows a symlink, never leaves `root`.
pub fn open_dir_beneath(root: &OwnedFd, rel: &RelPath) -> Result<OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let path = rel.to_cstring();
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    loop {
        match nix::fcntl::openat2(root, path.as_c_str(), how) {
            // EAGAIN: a concurrent rename raced the lookup; try again.
            Err(nix::Error::EAGAIN) => continue,
            r => return Ok(r?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn name(s: &str) -> Name {
        Name::new(OsStr::new(s)).unwrap()
    }

    #[test]
    fn names_reject_traversal() {
        for bad in ["", ".", "..", "a/b", "/", "x\0y"] {
            assert!(Name::new(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        assert!(Name::new(OsStr::new(&"n".repeat(256))).is_err());
        assert!(Name::new(OsStr::new("...")).is_ok());
    }

    #[test]
    fn join_and_split_round_trip() {
        let p = RelPath::root().join(&name("a")).join(&name("b"));
        assert_eq!(p.as_bytes(), b"a/b");
        let (parent, n) = p.split().unwrap();
        assert_eq!(parent.as_bytes(), b"a");
        assert_eq!(n.as_os(), "b");
        let (parent, n) = parent.split().unwrap();
        assert!(parent.is_root());
        assert_eq!(n.as_os(), "a");
        assert!(RelPath::root().split().is_none());
    }

    #[test]
    fn resolution_never_follows_symlinks_out() {
        let root_dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(root_dir.path().join("real")).unwrap();
        symlink(outside.path(), root_dir.path().join("escape")).unwrap();
        symlink("real", root_dir.path().join("inner")).unwrap();
        let root: OwnedFd = std::fs::File::open(root_dir.path()).unwrap().into();

        assert!(open_dir_beneath(&root, &RelPath::root()).is_ok());
        assert!(open_dir_beneath(&root, &RelPath::root().join(&name("real"))).is_ok());
        // A symlink out of the root, and even one that stays inside, are refused.
        let e = open_dir_beneath(&root, &RelPath::root().join(&name("escape"))).unwrap_err();
        assert_eq!(e, Errno(libc::ELOOP));
        let e = open_dir_beneath(&root, &RelPath::root().join(&name("inner"))).unwrap_err();
        assert_eq!(e, Errno(libc::ELOOP));
    }
}
