//! The metadata ring (DESIGN.md section 7): a Dynamo-style key-value store
//! spread over several hosts, for the metadata that every host mounting the
//! same replica set must agree on.
//!
//! - `hash`: the stable hash that places keys on fixed partitions;
//! - `layout`: the operator-committed, versioned partition assignment, the
//!   preference lists it gives and each version's N, R, W (`layout_v1`:
//!   layouts stored before those were part of it);
//! - `lease`: read leases: grants on each node's monotonic clock, the
//!   holder's and the revoker's margins;
//! - `membership`: a node added back to the layout drops what it stored
//!   before (it may hold values deleted while it was away);
//! - `version`: dotted version vector sets (siblings, no last-write-wins);
//! - `msg`: what nodes say to each other;
//! - `storage`: one node's share, on the same engine as the single-host store;
//! - `commit`: group commit: a write is fsynced before it is acknowledged,
//!   one fsync for every writer waiting;
//! - `epoch`: the actor epoch and the clean-shutdown flag (a node that did
//!   not close cleanly takes a new epoch, so it reuses no dot);
//! - `merkle`: per-partition hash trees for anti-entropy;
//! - `quorum`: counting R and W over a key's preference lists;
//! - `node`: one ring member: quorum reads and writes, read repair, hinted
//!   handoff, anti-entropy, layout changes;
//! - `keys`: the secret's derived keys, each node's static key, the keys
//!   of the nodes met (trust on first use);
//! - `noise`, `wire`, `transport`: encrypted, authenticated, length-limited
//!   frames over TCP (a Noise handshake, records, the message codec);
//! - `gossip`: membership (foca, SWIM) and phi-accrual failure detection;
//! - `sim`: an in-process network with kills and partitions, for tests;
//! - `dsim`: the deterministic simulation (one thread, virtual time, a
//!   seeded network and clocks) with its history checkers, for tests;
//! - `power_loss`: a store's copy as a power loss would leave it, for tests.
//!
//! The ring knows nothing of the filesystem: keys and values are bytes.

#![allow(dead_code)]

pub mod commit;
#[cfg(test)]
mod dsim;
#[cfg(test)]
mod durability_tests;
pub mod epoch;
pub mod gossip;
pub mod hash;
pub mod keys;
pub mod layout;
pub mod layout_v1;
pub mod lease;
pub mod lograte;
pub mod membership;
pub mod merkle;
pub mod msg;
pub mod node;
pub mod noise;
pub mod operator;
#[cfg(test)]
mod operator_tests;
#[cfg(test)]
pub mod power_loss;
pub mod quorum;
#[cfg(test)]
mod quorum_tests;
pub mod service;
#[cfg(test)]
pub mod sim;
pub mod storage;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tombstone_tests;
pub mod transport;
pub mod version;
pub mod wire;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

pub use msg::{Request, Response};

/// A node's source of random choices: the OS, or in the deterministic
/// simulation (ring/dsim) the seed's generator.
#[derive(Clone)]
pub struct Dice(std::sync::Arc<dyn Fn() -> u64 + Send + Sync>);

impl Dice {
    pub fn os() -> Dice {
        Dice(std::sync::Arc::new(|| {
            let mut b = [0u8; 8];
            let _ = getrandom::fill(&mut b);
            u64::from_le_bytes(b)
        }))
    }

    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Dice {
        Dice(std::sync::Arc::new(f))
    }

    pub fn roll(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Dice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dice")
    }
}

/// A node's name, given by the operator: 1 to 64 of `[A-Za-z0-9._-]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    pub fn new(name: &str) -> Result<NodeId, String> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if ok {
            Ok(NodeId(name.to_string()))
        } else {
            Err(format!(
                "bad node id '{}': use 1 to 64 letters, digits, '.', '_' or '-'",
                name.escape_debug()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = String;
    fn try_from(s: String) -> Result<NodeId, String> {
        NodeId::new(&s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a call to another node got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("node {0} is unreachable: {1}")]
    Unreachable(NodeId, String),
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
    #[error("node {0} is not in the layout and has no known address")]
    UnknownNode(NodeId),
}

/// The ring's view of the network: one request, one response.
/// Implemented by `transport` (TCP) and `sim` (in-process, for tests).
pub trait Net: Send + Sync + 'static {
    fn call(&self, to: &NodeId, req: Request) -> BoxFuture<'static, Result<Response, NetError>>;
}

/// What a node does with a request from an (authenticated) peer.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, from: NodeId, req: Request) -> BoxFuture<'static, Response>;
}

/// Whom the failure detector currently believes alive. Purely local: two
/// nodes may disagree, which the quorums tolerate.
pub trait Liveness: Send + Sync + 'static {
    fn is_alive(&self, node: &NodeId) -> bool;
}
