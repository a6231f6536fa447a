//! The actor epoch: the part of a node's actor id (`node:EPOCH`) that
//! makes its dots unique across crashes.
//!
//! A coordinator numbers its writes to a key from what its store holds. If
//! the store lost its unsynced tail (a power loss), or the node's writes
//! went out to other nodes before its own fsync completed, the numbers
//! restart below dots already issued, and a reissued dot makes two
//! different values look identical to every replica: they diverge for
//! good, and one acknowledged value disappears. So a node takes a new
//! epoch whenever its store was not closed cleanly:
//!
//! - `sys/shutdown` is `open` from `begin` (at open, durable before any
//!   write) until `end`, which the orderly close writes last, after
//!   syncing everything: then it is `clean`;
//! - `begin` keeps the epoch only if it finds `clean`; otherwise (a crash,
//!   kill -9, a power loss, or a store written by a version that kept no
//!   flag) it retires the epoch into `sys/retired` and draws a new one,
//!   never one retired before.
//!
//! A wiped store has no record: its epoch is drawn at random (32 bits),
//! which is why epochs are random rather than counted.

use fjall::PartitionHandle;

use super::storage::{Result, StorageError, err};
use super::{Dice, NodeId};

const ACTOR: &str = "actor";
const SHUTDOWN: &str = "shutdown";
const RETIRED: &str = "retired";
const OPEN: &[u8] = b"open";
const CLEAN: &[u8] = b"clean";

fn malformed(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError {
        step: "read actor",
        reason: format!("malformed stored {what}: {e}"),
    }
}

/// The actor id this session's writes carry; records the store as open.
/// The caller makes the `sys` writes durable before any other write.
pub fn begin(sys: &PartitionHandle, node: &NodeId, dice: &Dice) -> Result<String> {
    let previous = match sys.get(ACTOR).map_err(err("read actor"))? {
        Some(a) => Some(String::from_utf8(a.to_vec()).map_err(|e| malformed("actor", e))?),
        None => None,
    };
    let clean = sys
        .get(SHUTDOWN)
        .map_err(err("read actor"))?
        .is_some_and(|f| &*f == CLEAN);
    let actor = match previous {
        Some(a) if clean => a,
        previous => {
            let actor = retire(sys, node, previous.clone(), dice)?;
            if let Some(old) = previous {
                tracing::warn!(
                    "ring: the store was not closed cleanly: actor {old} retired, this node's writes now carry {actor}"
                );
            }
            actor
        }
    };
    sys.insert(SHUTDOWN, OPEN).map_err(err("write actor"))?;
    Ok(actor)
}

/// Retires the current actor and draws a new one: the node dropped the
/// keys it stored (it was out of the layout, `membership`), so numbering
/// from its store would issue dots again. The caller makes it durable
/// before any write that carries it.
pub fn renew(sys: &PartitionHandle, node: &NodeId, dice: &Dice) -> Result<String> {
    let current = match sys.get(ACTOR).map_err(err("read actor"))? {
        Some(a) => Some(String::from_utf8(a.to_vec()).map_err(|e| malformed("actor", e))?),
        None => None,
    };
    retire(sys, node, current, dice)
}

fn retire(
    sys: &PartitionHandle,
    node: &NodeId,
    old: Option<String>,
    dice: &Dice,
) -> Result<String> {
    let mut retired: Vec<String> = match sys.get(RETIRED).map_err(err("read actor"))? {
        Some(b) => postcard::from_bytes(&b).map_err(|e| malformed("retired epochs", e))?,
        None => Vec::new(),
    };
    if let Some(old) = old {
        retired.push(old);
    }
    let actor = draw(node, &retired, dice);
    let bytes = postcard::to_stdvec(&retired).map_err(|e| StorageError {
        step: "write actor",
        reason: e.to_string(),
    })?;
    sys.insert(RETIRED, bytes).map_err(err("write actor"))?;
    sys.insert(ACTOR, actor.as_bytes())
        .map_err(err("write actor"))?;
    Ok(actor)
}

/// Records the orderly close; the caller has synced every write before
/// and syncs this one after.
pub fn end(sys: &PartitionHandle) -> Result<()> {
    sys.insert(SHUTDOWN, CLEAN).map_err(err("close"))
}

fn draw(node: &NodeId, retired: &[String], dice: &Dice) -> String {
    loop {
        let a = format!("{node}:{:08x}", dice.roll() as u32);
        if !retired.contains(&a) {
            return a;
        }
    }
}
