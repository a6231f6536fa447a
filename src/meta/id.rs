//! Replica identity: the UUID written into a replica's marker at first use.

use std::fmt;
use std::str::FromStr;

/// A replica's identity, a 16-byte UUID. Shown as the usual
/// hex-with-dashes form (`67e55044-10b1-426f-9247-bb680e5fe0c8`).
///
/// Invariant: the bytes are the UUID's bytes in network order, so the
/// byte form sorts like the text form and can lead a store key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaId([u8; 16]);

impl ReplicaId {
    /// Length of the byte form.
    pub const LEN: usize = 16;

    /// A fresh random (version 4) identity, for a replica used the first time.
    pub fn random() -> ReplicaId {
        ReplicaId(*uuid::Uuid::new_v4().as_bytes())
    }

    pub const fn from_bytes(bytes: [u8; 16]) -> ReplicaId {
        ReplicaId(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Reads an identity from the front of a store key or value; `None` if
    /// `bytes` is shorter than 16.
    pub fn from_prefix(bytes: &[u8]) -> Option<ReplicaId> {
        let head: [u8; 16] = bytes.get(..Self::LEN)?.try_into().ok()?;
        Some(ReplicaId(head))
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_bytes(self.0).hyphenated(), f)
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicaId({self})")
    }
}

/// The text of a replica marker was not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a replica id (expected a UUID such as 67e55044-10b1-426f-9247-bb680e5fe0c8)")]
pub struct BadReplicaId(pub String);

impl FromStr for ReplicaId {
    type Err = BadReplicaId;

    /// Accepts the hyphenated form, and the other forms the uuid crate
    /// reads (plain hex, braced, `urn:uuid:`), surrounding whitespace ignored.
    fn from_str(s: &str) -> Result<ReplicaId, BadReplicaId> {
        uuid::Uuid::parse_str(s.trim())
            .map(|u| ReplicaId(*u.as_bytes()))
            .map_err(|_| BadReplicaId(s.to_string()))
    }
}
