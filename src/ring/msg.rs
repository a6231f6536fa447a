//! What ring nodes say to each other: one [`Request`], one [`Response`].
//! Encoded with postcard inside authenticated frames (see `wire`); every
//! field that came from the network is checked by the receiver before use.

use serde::{Deserialize, Serialize};

use super::NodeId;
use super::hash::Partition;
use super::layout::LayoutHistory;
use super::version::{Context, Dvv, Val};

/// Longest key the ring stores (a path plus a short prefix).
pub const MAX_KEY: usize = 8 * 1024;
/// Largest value.
pub const MAX_VALUE: usize = 1 << 20;
/// Most hosts one `LeaseLeft` asks about.
pub const MAX_LEASE_HOSTS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Replica read: the version this node holds for `key` (its own store
    /// and any hints it keeps for others).
    ///
    /// `layout` (here and in `Write` and `Coordinate`) is the layout
    /// version the sender coordinates with: a node that took a later one
    /// refuses with `StaleLayout`.
    Read { key: Vec<u8>, layout: u64 },
    /// Replica write: merge `version` into what this node holds. With
    /// `hint_for`, the node stands in for that owner, which is down, and
    /// keeps the version as a hint until the owner is back.
    Write {
        key: Vec<u8>,
        version: Dvv,
        hint_for: Option<NodeId>,
        layout: u64,
    },
    /// Asks an owner of `key` to coordinate a client write: give `value` a
    /// new dot after `context` and replicate it to a write quorum.
    Coordinate {
        key: Vec<u8>,
        value: Val,
        context: Context,
        layout: u64,
    },
    /// Merkle hashes of partition `partition` at `level` (0: the root; 1:
    /// the 16 inner nodes; 2: the 256 leaves) for the given indices.
    Tree {
        partition: Partition,
        level: u8,
        indices: Vec<u16>,
    },
    /// Every key and version of one Merkle leaf.
    Leaf { partition: Partition, leaf: u16 },
    /// Deletes `key` if the node holds exactly `version` (a tombstone that
    /// every node has).
    Purge { key: Vec<u8>, version: Dvv },
    /// Tells a node that `key` now holds `version`, for the filesystem
    /// layered on the ring (a host learning at once that another host
    /// took a replica out of service). Answered once the node applied it.
    Nudge { key: Vec<u8>, version: Dvv },
    /// Asks a node to publish every ring write it still owes (made while
    /// it could not reach a quorum). Answered once done or given up.
    Flush,
    /// Read lease: grant the sender (the authenticated peer) a lease of
    /// `term_ms` milliseconds from now on this node's clock, at most the
    /// node's `read_lease`. Answered `Granted` with the term granted.
    LeaseGrant { term_ms: u64 },
    /// How long this node's read-lease grants to any of `hosts` have left,
    /// on its clock. Answered `Left`.
    LeaseLeft { hosts: Vec<NodeId> },
    /// The node's layout.
    GetLayout,
    /// Merge this layout into yours.
    PutLayout(Box<LayoutHistory>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Done,
    Version(Option<Dvv>),
    Hashes(Vec<u64>),
    Entries(Vec<(Vec<u8>, Dvv)>),
    Layout(Box<LayoutHistory>),
    /// The request was understood and refused; the text says why.
    Refused(String),
    /// A read lease of this many milliseconds was granted.
    Granted(u64),
    /// Grants to the hosts asked about end within this many milliseconds
    /// (rounded up) on the answering node's clock.
    Left(u64),
    /// Refused: the request was coordinated on an older layout than this
    /// node's, which comes along (the sender takes it and tries again).
    StaleLayout(Box<LayoutHistory>),
}
