//! Which nodes own which partitions: an operator-committed, versioned
//! layout (the lesson of Dynamo's descendants: ownership decided by gossip
//! alone is unsafe; Riak's claimant, Garage's layout versions).
//!
//! The operator stages changes (`chironctl ring join|leave`) and commits
//! them (`chironctl ring apply`), which makes layout version v+1. Until
//! every node of v+1 has synced its new partitions from the owners of v,
//! both versions are active: writes need a quorum of each, reads consult
//! both. Layouts travel whole between nodes and merge deterministically.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::NodeId;
use super::hash::{self, PARTITIONS, Partition};

/// One committed assignment of partitions to nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutVersion {
    /// 0 is the empty layout of a ring never applied.
    pub version: u64,
    /// Replicas per key (the N of N, R, W).
    pub n: u8,
    /// Members and their ring addresses (`host:port`).
    pub nodes: BTreeMap<NodeId, String>,
    /// For each partition, its preference list: min(n, members) distinct
    /// nodes.
    pub owners: Vec<Vec<NodeId>>,
}

/// Changes staged by the operator, not yet applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Staged {
    /// Bumped by every staging command; the greater wins when layouts merge.
    pub counter: u64,
    pub join: BTreeMap<NodeId, String>,
    pub leave: BTreeSet<NodeId>,
}

/// What every node keeps: the current layout, the previous one while a
/// change is being synced, and who has synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutHistory {
    pub current: LayoutVersion,
    pub old: Option<LayoutVersion>,
    /// Node -> the highest layout version whose partitions it has synced.
    pub synced: BTreeMap<NodeId, u64>,
    pub staged: Staged,
}

impl LayoutVersion {
    fn empty(n: u8) -> LayoutVersion {
        LayoutVersion {
            version: 0,
            n,
            nodes: BTreeMap::new(),
            owners: vec![Vec::new(); PARTITIONS as usize],
        }
    }

    pub fn owners(&self, p: Partition) -> &[NodeId] {
        self.owners
            .get(p as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Assigns every partition to min(n, members) distinct members, keeping
    /// the assignments of `prev` where the node is still a member (so a
    /// change moves as little data as it can), then evening out the load.
    fn assign(prev: &LayoutVersion, nodes: BTreeMap<NodeId, String>, n: u8) -> LayoutVersion {
        let members: Vec<NodeId> = nodes.keys().cloned().collect();
        let want = (n as usize).min(members.len());
        let mut load: BTreeMap<NodeId, usize> = members.iter().map(|m| (m.clone(), 0)).collect();
        let mut owners: Vec<Vec<NodeId>> = Vec::with_capacity(PARTITIONS as usize);
        for p in 0..PARTITIONS {
            let mut list: Vec<NodeId> = prev
                .owners(p)
                .iter()
                .filter(|o| nodes.contains_key(*o))
                .take(want)
                .cloned()
                .collect();
            for o in &list {
                *load.entry(o.clone()).or_default() += 1;
            }
            while list.len() < want {
                let pick = least_loaded(&load, &list, p);
                *load.entry(pick.clone()).or_default() += 1;
                list.push(pick);
            }
            owners.push(list);
        }
        // Even out: move slots from the most to the least loaded node while
        // the spread exceeds one.
        if want > 0 {
            while let Some((max_node, max)) = load
                .iter()
                .max_by_key(|(id, l)| (**l, std::cmp::Reverse((*id).clone())))
                .map(|(id, l)| (id.clone(), *l))
            {
                let Some((min_node, min)) = load
                    .iter()
                    .min_by_key(|(id, l)| (**l, (*id).clone()))
                    .map(|(id, l)| (id.clone(), *l))
                else {
                    break;
                };
                if max <= min + 1 {
                    break;
                }
                let slot = (0..PARTITIONS as usize)
                    .find(|&p| owners[p].contains(&max_node) && !owners[p].contains(&min_node));
                let Some(p) = slot else { break };
                for o in owners[p].iter_mut() {
                    if *o == max_node {
                        *o = min_node.clone();
                    }
                }
                *load.entry(max_node).or_default() -= 1;
                *load.entry(min_node).or_default() += 1;
            }
        }
        LayoutVersion {
            version: prev.version + 1,
            n,
            nodes,
            owners,
        }
    }

    /// Checks a layout that came from the network.
    pub fn check(&self) -> Result<(), String> {
        if self.version >= u64::MAX / 2 {
            return Err(format!("layout version {} out of range", self.version));
        }
        if self.n == 0 {
            return Err("n is 0".into());
        }
        if self.owners.len() != PARTITIONS as usize {
            return Err(format!(
                "{} partitions, expected {PARTITIONS}",
                self.owners.len()
            ));
        }
        let want = (self.n as usize).min(self.nodes.len());
        for (p, list) in self.owners.iter().enumerate() {
            let distinct: BTreeSet<&NodeId> = list.iter().collect();
            if list.len() != want || distinct.len() != want {
                return Err(format!("partition {p} has a bad preference list"));
            }
            if let Some(o) = list.iter().find(|o| !self.nodes.contains_key(*o)) {
                return Err(format!("partition {p} is owned by non-member {o}"));
            }
        }
        Ok(())
    }
}

/// A stable hash of a layout's encoding, to break ties between rivals.
fn fingerprint<T: Serialize>(v: &T) -> u64 {
    hash::stable(&postcard::to_stdvec(v).unwrap_or_default())
}

fn least_loaded(load: &BTreeMap<NodeId, usize>, taken: &[NodeId], p: Partition) -> NodeId {
    load.iter()
        .filter(|(id, _)| !taken.contains(id))
        .min_by_key(|(id, l)| {
            // Ties broken by a stable per-partition hash, so that equal
            // loads do not all land on the alphabetically first node.
            let mut key = p.to_be_bytes().to_vec();
            key.extend_from_slice(id.as_str().as_bytes());
            (**l, hash::stable(&key))
        })
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| taken[0].clone())
}

impl LayoutHistory {
    pub fn empty(n: u8) -> LayoutHistory {
        LayoutHistory {
            current: LayoutVersion::empty(n),
            old: None,
            synced: BTreeMap::new(),
            staged: Staged::default(),
        }
    }

    /// The preference lists of partition `p`: the current one, and the old
    /// one while a change is being synced.
    pub fn owner_sets(&self, p: Partition) -> Vec<&[NodeId]> {
        let mut sets = vec![self.current.owners(p)];
        if let Some(old) = &self.old {
            sets.push(old.owners(p));
        }
        sets
    }

    /// Every node this layout knows an address for.
    pub fn addresses(&self) -> BTreeMap<NodeId, String> {
        let mut all = BTreeMap::new();
        if let Some(old) = &self.old {
            all.extend(old.nodes.clone());
        }
        all.extend(self.current.nodes.clone());
        all.extend(self.staged.join.clone());
        all
    }

    pub fn is_member(&self, node: &NodeId) -> bool {
        self.current.nodes.contains_key(node)
            || self
                .old
                .as_ref()
                .is_some_and(|o| o.nodes.contains_key(node))
    }

    pub fn stage_join(&mut self, node: NodeId, addr: String) {
        self.staged.leave.remove(&node);
        self.staged.join.insert(node, addr);
        self.staged.counter += 1;
    }

    pub fn stage_leave(&mut self, node: NodeId) -> Result<(), String> {
        if !self.current.nodes.contains_key(&node) && !self.staged.join.contains_key(&node) {
            return Err(format!("node {node} is not in the ring"));
        }
        self.staged.join.remove(&node);
        if self.current.nodes.contains_key(&node) {
            self.staged.leave.insert(node);
        }
        self.staged.counter += 1;
        Ok(())
    }

    /// Commits the staged changes as a new layout version.
    pub fn apply(&mut self, n: u8) -> Result<u64, String> {
        if self.staged.join.is_empty() && self.staged.leave.is_empty() {
            return Err("nothing is staged (chironctl ring join|leave first)".into());
        }
        if self.old.is_some() {
            return Err(format!(
                "layout version {} is still being synced; apply again when `chironctl ring status` shows no transition",
                self.current.version
            ));
        }
        let mut nodes = self.current.nodes.clone();
        for id in &self.staged.leave {
            nodes.remove(id);
        }
        nodes.extend(self.staged.join.clone());
        if nodes.is_empty() {
            return Err("the ring would have no node left".into());
        }
        let next = LayoutVersion::assign(&self.current, nodes, n);
        let prev = std::mem::replace(&mut self.current, next);
        // A ring's first layout has nothing to sync from.
        self.old = (prev.version > 0).then_some(prev);
        self.synced.clear();
        self.staged = Staged {
            counter: self.staged.counter + 1,
            ..Staged::default()
        };
        self.normalize();
        Ok(self.current.version)
    }

    /// Records that `node` synced every partition it owns in the current
    /// version from their old owners.
    pub fn mark_synced(&mut self, node: &NodeId, version: u64) {
        let v = self.synced.entry(node.clone()).or_default();
        *v = (*v).max(version);
        self.normalize();
    }

    /// Ends a transition once every member of the new version synced.
    fn normalize(&mut self) {
        let v = self.current.version;
        if self.old.is_some()
            && self
                .current
                .nodes
                .keys()
                .all(|n| self.synced.get(n).copied().unwrap_or(0) >= v)
        {
            self.old = None;
        }
    }

    /// Merges a layout from another node into this one; true if this one
    /// changed. The higher version wins; at equal versions the sync marks
    /// add up (ending the transition when complete) and the staged changes
    /// with the higher counter win.
    pub fn merge(&mut self, other: &LayoutHistory) -> bool {
        let before = self.clone();
        // Two operators who applied different changes on different nodes
        // made two layouts with one number: every node keeps the same one
        // (the greater by a stable hash); the other change must be staged
        // and applied again.
        let rival = other.current.version == self.current.version
            && other.current != self.current
            && fingerprint(&other.current) > fingerprint(&self.current);
        if other.current.version > self.current.version || rival {
            self.current = other.current.clone();
            self.old = other.old.clone();
            self.synced = other.synced.clone();
        } else if other.current.version == self.current.version && other.current == self.current {
            if other.old.is_none() {
                self.old = None;
            }
            for (n, v) in &other.synced {
                let e = self.synced.entry(n.clone()).or_default();
                *e = (*e).max(*v);
            }
        }
        if other.staged.counter > self.staged.counter
            || (other.staged.counter == self.staged.counter
                && fingerprint(&other.staged) > fingerprint(&self.staged))
        {
            self.staged = other.staged.clone();
        }
        self.normalize();
        *self != before
    }

    /// Checks a layout that came from the network.
    pub fn check(&self) -> Result<(), String> {
        if self.current.version > 0 {
            self.current.check()?;
        }
        if let Some(old) = &self.old {
            old.check()?;
            if old.version >= self.current.version {
                return Err("old layout is not older than the current one".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn ring(names: &[&str], n: u8) -> LayoutHistory {
        let mut l = LayoutHistory::empty(n);
        for (i, name) in names.iter().enumerate() {
            l.stage_join(id(name), format!("127.0.0.1:{}", 7000 + i));
        }
        l.apply(n).unwrap();
        l
    }

    fn load(l: &LayoutVersion) -> BTreeMap<NodeId, usize> {
        let mut m = BTreeMap::new();
        for list in &l.owners {
            for o in list {
                *m.entry(o.clone()).or_default() += 1;
            }
        }
        m
    }

    #[test]
    fn every_partition_gets_n_distinct_nodes_evenly() {
        let l = ring(&["a", "b", "c", "d", "e"], 3);
        assert_eq!(l.current.version, 1);
        assert!(l.old.is_none(), "first layout has nothing to sync");
        l.current.check().unwrap();
        let loads = load(&l.current);
        let (min, max) = (loads.values().min().unwrap(), loads.values().max().unwrap());
        assert!(max - min <= 1, "{loads:?}");
        // Fewer nodes than n: every node owns every partition.
        let small = ring(&["a", "b"], 3);
        small.current.check().unwrap();
        assert!(small.current.owners.iter().all(|o| o.len() == 2));
    }

    #[test]
    fn a_join_moves_few_partitions_and_opens_a_transition() {
        let mut l = ring(&["a", "b", "c"], 3);
        l.stage_join(id("d"), "127.0.0.1:7010".into());
        assert_eq!(l.apply(3).unwrap(), 2);
        let old = l.old.clone().expect("transition");
        let moved: usize = (0..PARTITIONS)
            .map(|p| {
                let new: BTreeSet<_> = l.current.owners(p).iter().collect();
                old.owners(p).iter().filter(|o| !new.contains(o)).count()
            })
            .sum();
        // d takes its fair share (3*256/4 = 192 slots), nothing more.
        assert!((150..=200).contains(&moved), "moved {moved}");
        assert!(l.apply(3).is_err(), "no second change during a transition");
        for n in ["a", "b", "c"] {
            l.mark_synced(&id(n), 2);
        }
        assert!(l.old.is_some());
        l.mark_synced(&id("d"), 2);
        assert!(l.old.is_none(), "transition ends when all synced");
    }

    #[test]
    fn merge_prefers_the_newer_layout_and_adds_sync_marks() {
        let mut a = ring(&["a", "b", "c"], 3);
        let mut b = a.clone();
        a.stage_join(id("d"), "x:1".into());
        a.apply(3).unwrap();
        assert!(b.merge(&a));
        assert_eq!(b, a);
        a.mark_synced(&id("a"), 2);
        a.mark_synced(&id("b"), 2);
        b.mark_synced(&id("c"), 2);
        b.mark_synced(&id("d"), 2);
        assert!(a.merge(&b));
        assert!(a.old.is_none());
        assert!(!a.merge(&b.clone()) || a.old.is_none());
        let mut bad = a.clone();
        bad.current.owners[0].clear();
        assert!(bad.check().is_err());
    }

    #[test]
    fn rival_layouts_with_one_number_converge_on_one() {
        let base = ring(&["a", "b", "c"], 3);
        let (mut x, mut y) = (base.clone(), base.clone());
        x.stage_join(id("d"), "x:1".into());
        x.apply(3).unwrap();
        y.stage_join(id("e"), "y:1".into());
        y.apply(3).unwrap();
        assert_eq!(x.current.version, y.current.version);
        let (x0, y0) = (x.clone(), y.clone());
        x.merge(&y0);
        y.merge(&x0);
        assert_eq!(x, y, "both nodes keep the same layout");
    }

    #[test]
    fn leave_removes_the_node_everywhere() {
        let mut l = ring(&["a", "b", "c", "d"], 3);
        l.stage_leave(id("b")).unwrap();
        l.apply(3).unwrap();
        assert!(l.current.owners.iter().all(|o| !o.contains(&id("b"))));
        l.current.check().unwrap();
        assert!(l.stage_leave(id("zz")).is_err());
    }
}
