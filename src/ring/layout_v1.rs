//! Layouts as stores written before N, R and W (and the version each
//! member joined at) were part of the layout (`layout` in `sys`; now
//! `layout.v2`): decoded, and given the R and W this node is configured
//! with; every member counts as one from the start. N was there already (the preference
//! lists were built with it) and stays. The result is checked like any
//! layout, so a configured R or W that does not fit it is a startup error
//! naming the values.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::NodeId;
use super::layout::{LayoutHistory, LayoutVersion, Quorum, Staged};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionV1 {
    pub version: u64,
    pub n: u8,
    pub nodes: BTreeMap<NodeId, String>,
    pub owners: Vec<Vec<NodeId>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StagedV1 {
    pub counter: u64,
    pub join: BTreeMap<NodeId, String>,
    pub leave: BTreeSet<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryV1 {
    pub current: VersionV1,
    pub old: Option<VersionV1>,
    pub synced: BTreeMap<NodeId, u64>,
    pub staged: StagedV1,
}

fn upgrade(v: VersionV1, configured: Quorum) -> LayoutVersion {
    // A ring never applied takes the configured N too.
    let n = if v.version == 0 { configured.n } else { v.n };
    LayoutVersion {
        version: v.version,
        n,
        r: configured.r,
        w: configured.w,
        // Since when each was a member was not kept: "from the start".
        joined: v.nodes.keys().map(|n| (n.clone(), 0)).collect(),
        nodes: v.nodes,
        owners: v.owners,
        signature: None,
    }
}

/// Decodes an old stored layout; `configured` gives its R and W.
pub fn decode(bytes: &[u8], configured: Quorum) -> Result<LayoutHistory, String> {
    let old: HistoryV1 =
        postcard::from_bytes(bytes).map_err(|e| format!("malformed stored layout: {e}"))?;
    let l = LayoutHistory {
        current: upgrade(old.current, configured),
        old: old.old.map(|v| upgrade(v, configured)),
        synced: old.synced,
        staged: Staged {
            counter: old.staged.counter,
            join: old.staged.join,
            leave: old.staged.leave,
            quorum: None,
        },
        acked: BTreeMap::new(),
    };
    l.check().map_err(|e| {
        format!(
            "the stored layout (kept before N, R and W were part of it) with this node's r = {} and w = {}: {e}; set ring.r and ring.w to fit its N",
            configured.r, configured.w
        )
    })?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    /// An old layout: version 4, N=3 over three nodes.
    fn old_bytes() -> Vec<u8> {
        let nodes: BTreeMap<NodeId, String> = ["a", "b", "c"]
            .iter()
            .map(|n| (id(n), format!("{n}:1")))
            .collect();
        let owners = vec![vec![id("a"), id("b"), id("c")]; super::super::hash::PARTITIONS as usize];
        let h = HistoryV1 {
            current: VersionV1 {
                version: 4,
                n: 3,
                nodes,
                owners,
            },
            old: None,
            synced: BTreeMap::new(),
            staged: StagedV1 {
                counter: 7,
                join: BTreeMap::from([(id("d"), "d:1".to_string())]),
                leave: BTreeSet::new(),
            },
        };
        postcard::to_stdvec(&h).unwrap()
    }

    #[test]
    fn an_old_layout_keeps_its_n_and_takes_the_configured_r_and_w() {
        let l = decode(&old_bytes(), Quorum { n: 5, r: 2, w: 2 }).unwrap();
        assert_eq!(l.current.version, 4);
        assert_eq!(l.current.quorum(), Quorum { n: 3, r: 2, w: 2 });
        assert_eq!(l.staged.counter, 7);
        assert!(l.staged.join.contains_key(&id("d")));
        // Configured values that do not fit the stored N: an error that
        // names them and the rule.
        let e = decode(&old_bytes(), Quorum { n: 3, r: 1, w: 1 }).unwrap_err();
        assert!(e.contains("r = 1") && e.contains("R + W"), "{e}");
        let e = decode(&old_bytes(), Quorum { n: 5, r: 4, w: 4 }).unwrap_err();
        assert!(e.contains("impossible"), "{e}");
        // Garbage is an error, not a panic.
        assert!(decode(&[0xff; 7], Quorum::default()).is_err());
        assert!(decode(&old_bytes()[..40], Quorum::default()).is_err());
    }
}

/// A layout version as stores wrote it before versions carried an
/// operator's signature (`layout.v2` and `layout.v3`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionV3 {
    pub version: u64,
    pub n: u8,
    pub r: u8,
    pub w: u8,
    pub nodes: BTreeMap<NodeId, String>,
    pub joined: BTreeMap<NodeId, u64>,
    pub owners: Vec<Vec<NodeId>>,
}

impl From<VersionV3> for LayoutVersion {
    /// Unsigned: a node takes its own stored layout as it is; only a
    /// version from the network must be signed (`operator`).
    fn from(v: VersionV3) -> LayoutVersion {
        LayoutVersion {
            version: v.version,
            n: v.n,
            r: v.r,
            w: v.w,
            nodes: v.nodes,
            joined: v.joined,
            owners: v.owners,
            signature: None,
        }
    }
}

/// A layout as stores wrote it before the per-node acknowledgements
/// (`LayoutHistory::acked`) were part of it (`layout.v2` in `sys`; now
/// `layout.v4`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryV2 {
    pub current: VersionV3,
    pub old: Option<VersionV3>,
    pub synced: BTreeMap<NodeId, u64>,
    pub staged: Staged,
}

/// Decodes a `layout.v2`: no node has acknowledged anything yet (each
/// acknowledges the version it holds when it opens or takes a layout).
pub fn decode_v2(bytes: &[u8]) -> Result<LayoutHistory, String> {
    let old: HistoryV2 =
        postcard::from_bytes(bytes).map_err(|e| format!("malformed stored layout: {e}"))?;
    Ok(LayoutHistory {
        current: old.current.into(),
        old: old.old.map(Into::into),
        synced: old.synced,
        staged: old.staged,
        acked: BTreeMap::new(),
    })
}

/// A layout as stores wrote it before versions carried a signature
/// (`layout.v3` in `sys`; now `layout.v4`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryV3 {
    pub current: VersionV3,
    pub old: Option<VersionV3>,
    pub synced: BTreeMap<NodeId, u64>,
    pub staged: Staged,
    pub acked: BTreeMap<NodeId, u64>,
}

/// Decodes a `layout.v3`: its versions unsigned.
pub fn decode_v3(bytes: &[u8]) -> Result<LayoutHistory, String> {
    let old: HistoryV3 =
        postcard::from_bytes(bytes).map_err(|e| format!("malformed stored layout: {e}"))?;
    Ok(LayoutHistory {
        current: old.current.into(),
        old: old.old.map(Into::into),
        synced: old.synced,
        staged: old.staged,
        acked: old.acked,
    })
}

#[cfg(test)]
mod v3_tests {
    use super::*;

    #[test]
    fn a_layout_stored_before_signatures_decodes_unsigned() {
        let mut l = LayoutHistory::empty(Quorum::default());
        for n in ["a", "b", "c", "d"] {
            l.stage_join(NodeId::new(n).unwrap(), format!("{n}:1"));
        }
        l.apply(Quorum::default()).unwrap();
        l.stage_leave(NodeId::new("d").unwrap()).unwrap();
        l.apply(Quorum::default()).unwrap();
        l.ack(&NodeId::new("b").unwrap());
        let v3 = |v: &LayoutVersion| VersionV3 {
            version: v.version,
            n: v.n,
            r: v.r,
            w: v.w,
            nodes: v.nodes.clone(),
            joined: v.joined.clone(),
            owners: v.owners.clone(),
        };
        let old = HistoryV3 {
            current: v3(&l.current),
            old: l.old.as_ref().map(v3),
            synced: l.synced.clone(),
            staged: l.staged.clone(),
            acked: l.acked.clone(),
        };
        let back = decode_v3(&postcard::to_stdvec(&old).unwrap()).unwrap();
        assert_eq!(back, l);
        assert!(decode_v3(&[0xff; 9]).is_err());
    }
}
