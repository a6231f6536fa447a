//! A node's membership without a break (DESIGN.md section 7, tombstones).
//!
//! A tombstone is collected once every node of the layout holds it. A node
//! taken out of the layout is not asked, so when it is added back later,
//! what it still stores may include values deleted, and their tombstones
//! collected, while it was away: its anti-entropy and its answers would
//! bring them back. So each layout version records, for each member, the
//! version since which it has been one without a break (`joined`), and
//! each node records the value it last saw for itself (`member_since` in
//! its store). A node that finds its `joined` changed was out of the ring
//! meanwhile: it drops every key it stores as an owner before it takes the
//! new layout, and refills from the current owners like a new node (its
//! new partitions are synced before the transition ends). The hints it
//! keeps for others stay; collected tombstones filter them (`storage`).
//!
//! Checked at open (with the stored layout: a crash between the drop and
//! the record drops again) and whenever the node takes a new layout.

use super::NodeId;
use super::layout::LayoutHistory;
use super::storage::{Result, Storage};

/// Makes `store` fit to take `layout` as node `me`; true if it dropped
/// what it stored.
pub fn settle(store: &Storage, layout: &LayoutHistory, me: &NodeId) -> Result<bool> {
    let since = layout
        .current
        .joined
        .get(me)
        .or_else(|| layout.old.as_ref().and_then(|o| o.joined.get(me)))
        .copied();
    // Not a member: nothing to decide until it is one again.
    let Some(since) = since else {
        return Ok(false);
    };
    match store.member_since()? {
        Some(prev) if prev == since => Ok(false),
        Some(prev) => {
            let n = store.drop_owned()?;
            tracing::warn!(
                "ring: {me} was out of the layout (a member since version {prev}, now since {since}): dropped the {n} keys it stored, which may hold values deleted meanwhile; anti-entropy refills it"
            );
            store.set_member_since(since)?;
            Ok(true)
        }
        None => {
            store.set_member_since(since)?;
            Ok(false)
        }
    }
}
