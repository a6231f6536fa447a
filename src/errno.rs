//! One errno type for the whole filesystem core.
//!
//! The core returns `Result<T, Errno>`; only the FUSE adapter turns it into a
//! reply. Keeping it a plain newtype over the raw code keeps `fuser` out of
//! every layer below the adapter.

use std::fmt;
use std::io;

/// A positive errno value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

pub type Result<T> = std::result::Result<T, Errno>;

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const ENOTSUP: Errno = Errno(libc::EOPNOTSUPP);
    pub const ETIMEDOUT: Errno = Errno(libc::ETIMEDOUT);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ERANGE: Errno = Errno(libc::ERANGE);

    /// Errors that mean the replica itself is unhealthy, as opposed to a
    /// result about the path (ENOENT, EEXIST, EACCES...) that every healthy
    /// replica would give alike.
    pub fn is_replica_failure(self) -> bool {
        matches!(
            self.0,
            libc::EIO
                | libc::ENOSPC
                | libc::EDQUOT
                | libc::EROFS
                | libc::ENOTCONN
                | libc::ESTALE
                | libc::ETIMEDOUT
                | libc::ENODEV
                | libc::ENXIO
                | libc::EUCLEAN
                | libc::ENOMEM
                | libc::EMFILE
                | libc::ENFILE
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ECONNRESET
                | libc::ECONNABORTED
                | libc::ENOLINK
                | libc::EREMOTEIO
        )
    }
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<nix::Error> for Errno {
    /// nix knows the errnos of its table only; any other (a network or FUSE
    /// replica may return one, as NFS's internal ENOTSUPP 524) is its
    /// `UnknownErrno`, 0: taken as EIO, what the client would get for it,
    /// and a replica failure.
    fn from(e: nix::Error) -> Self {
        match e {
            nix::Error::UnknownErrno => Errno(libc::EIO),
            e => Errno(e as i32),
        }
    }
}

impl From<rustix::io::Errno> for Errno {
    fn from(e: rustix::io::Errno) -> Self {
        Errno(e.raw_os_error())
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = nix::errno::Errno::from_raw(self.0);
        write!(f, "{name:?} ({})", name.desc())
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", nix::errno::Errno::from_raw(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::Errno;

    #[test]
    fn errnos_from_nix_keep_their_value_and_an_unknown_one_is_eio() {
        assert_eq!(Errno::from(nix::Error::ENOENT), Errno(libc::ENOENT));
        assert_eq!(Errno::from(nix::Error::ENOSPC), Errno(libc::ENOSPC));
        // What nix makes of an errno outside its table (NFS's 524).
        let unknown = nix::Error::from_raw(524);
        assert_eq!(unknown, nix::Error::UnknownErrno);
        assert_eq!(Errno::from(unknown), Errno(libc::EIO));
    }
}
