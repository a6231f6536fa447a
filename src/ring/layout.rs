//! Which nodes own which partitions: an operator-committed, versioned
//! layout (the lesson of Dynamo's descendants: ownership decided by gossip
//! alone is unsafe; Riak's claimant, Garage's layout versions).
//!
//! The operator stages changes (`chironctl ring join|leave|quorum`) and
//! commits them (`chironctl ring apply`), which makes layout version v+1.
//! Until the change is synced, both versions are active: writes need a
//! quorum of each, reads consult both, each version with its own N, R and
//! W. Syncing follows Garage's ack / sync / sync-ack: every node of either
//! version first takes v+1 and records so (`acked`; from then on it
//! refuses requests coordinated on v), then each new owner fetches its
//! partitions from the old owners and marks itself synced, and the
//! transition ends when every node of both versions has. `force_finish`
//! ends one past a dead node. Layouts travel whole between nodes and
//! merge deterministically.
//!
//! N, R and W are part of each committed version, so every node counts the
//! same quorums: a node's configured `n`, `r`, `w` only seed a ring's first
//! layout (and stand in for R and W in a layout stored before they were
//! kept, `layout_v1`). Every quorum must satisfy `R + W > N` (a read meets
//! the last write) and `W > N/2` (two writes meet), checked when staged,
//! for every layout from the network, and at startup.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::NodeId;
use super::hash::{self, PARTITIONS, Partition};

/// N, R, W: copies of each key, answers a read waits for,
/// acknowledgements a write waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quorum {
    pub n: u8,
    pub r: u8,
    pub w: u8,
}

impl Default for Quorum {
    fn default() -> Quorum {
        Quorum { n: 3, r: 2, w: 2 }
    }
}

impl std::fmt::Display for Quorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "N={} R={} W={}", self.n, self.r, self.w)
    }
}

impl Quorum {
    /// The rules every quorum of the ring must keep; the error names the
    /// values and the rule they break.
    pub fn check(&self) -> Result<(), String> {
        let Quorum { n, r, w } = *self;
        if n == 0 || r == 0 || w == 0 || r > n || w > n {
            return Err(format!(
                "quorum {self} is impossible: need 1 <= R <= N and 1 <= W <= N"
            ));
        }
        if u16::from(r) + u16::from(w) <= u16::from(n) {
            return Err(format!(
                "quorum {self} is unsafe: R + W = {} must exceed N = {n}, or a read can miss the last acknowledged write",
                u16::from(r) + u16::from(w)
            ));
        }
        if 2 * u16::from(w) <= u16::from(n) {
            return Err(format!(
                "quorum {self} is unsafe: W = {w} must exceed N/2 = {}, or two writes can miss each other",
                f64::from(n) / 2.0
            ));
        }
        Ok(())
    }
}

/// One committed assignment of partitions to nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutVersion {
    /// 0 is the empty layout of a ring never applied.
    pub version: u64,
    /// Replicas per key (the N of N, R, W).
    pub n: u8,
    /// Answers a read of a key waits for in this version's owners.
    pub r: u8,
    /// Acknowledgements a write waits for in this version's owners.
    pub w: u8,
    /// Members and their ring addresses (`host:port`).
    pub nodes: BTreeMap<NodeId, String>,
    /// For each member, the version since which it has been one without a
    /// break: a node that finds this changed for itself was out of the
    /// ring meanwhile (`membership`).
    pub joined: BTreeMap<NodeId, u64>,
    /// For each partition, its preference list: min(n, members) distinct
    /// nodes.
    pub owners: Vec<Vec<NodeId>>,
    /// An operator key's signature of the fields above (`operator`):
    /// with `ring.operator_keys` set, only a signed version is taken from
    /// the network.
    pub signature: Option<super::operator::LayoutSignature>,
}

/// Changes staged by the operator, not yet applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Staged {
    /// Bumped by every staging command; the greater wins when layouts merge.
    pub counter: u64,
    pub join: BTreeMap<NodeId, String>,
    pub leave: BTreeSet<NodeId>,
    /// A new N, R, W for the next version.
    pub quorum: Option<Quorum>,
}

impl Staged {
    fn is_empty(&self) -> bool {
        self.join.is_empty() && self.leave.is_empty() && self.quorum.is_none()
    }
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
    /// Node -> the highest layout version it has taken ("ack"): from then
    /// on it coordinates with that version and refuses requests
    /// coordinated on an older one. Syncing a change starts only once
    /// every node of both versions acknowledged it (`all_acked`).
    pub acked: BTreeMap<NodeId, u64>,
}

impl LayoutVersion {
    fn empty(q: Quorum) -> LayoutVersion {
        LayoutVersion {
            version: 0,
            n: q.n,
            r: q.r,
            w: q.w,
            nodes: BTreeMap::new(),
            joined: BTreeMap::new(),
            owners: vec![Vec::new(); PARTITIONS as usize],
            signature: None,
        }
    }

    pub fn quorum(&self) -> Quorum {
        Quorum {
            n: self.n,
            r: self.r,
            w: self.w,
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
    fn assign(prev: &LayoutVersion, nodes: BTreeMap<NodeId, String>, q: Quorum) -> LayoutVersion {
        let members: Vec<NodeId> = nodes.keys().cloned().collect();
        let want = (q.n as usize).min(members.len());
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
        let version = prev.version + 1;
        let joined = nodes
            .keys()
            .map(|n| {
                let since = match prev.nodes.contains_key(n) {
                    true => prev.joined.get(n).copied().unwrap_or(prev.version),
                    false => version,
                };
                (n.clone(), since)
            })
            .collect();
        LayoutVersion {
            version,
            n: q.n,
            r: q.r,
            w: q.w,
            nodes,
            joined,
            owners,
            signature: None,
        }
    }

    /// Checks a layout that came from the network.
    pub fn check(&self) -> Result<(), String> {
        if self.version >= u64::MAX / 2 {
            return Err(format!("layout version {} out of range", self.version));
        }
        self.quorum()
            .check()
            .map_err(|e| format!("layout version {}: {e}", self.version))?;
        if self.owners.len() != PARTITIONS as usize {
            return Err(format!(
                "{} partitions, expected {PARTITIONS}",
                self.owners.len()
            ));
        }
        if !self.joined.keys().eq(self.nodes.keys())
            || self.joined.values().any(|&v| v > self.version)
        {
            return Err(format!(
                "layout version {}: bad membership versions",
                self.version
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
    /// A ring never applied; its first layout will have quorum `q`.
    pub fn empty(q: Quorum) -> LayoutHistory {
        LayoutHistory {
            current: LayoutVersion::empty(q),
            old: None,
            synced: BTreeMap::new(),
            staged: Staged::default(),
            acked: BTreeMap::new(),
        }
    }

    /// Every node of the current version and of the old one while a
    /// change is being synced.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all: BTreeSet<NodeId> = self.current.nodes.keys().cloned().collect();
        if let Some(old) = &self.old {
            all.extend(old.nodes.keys().cloned());
        }
        all
    }

    /// Records that `node` took the current version (true if new).
    pub fn ack(&mut self, node: &NodeId) -> bool {
        let v = self.current.version;
        let e = self.acked.entry(node.clone()).or_default();
        let changed = *e < v;
        *e = (*e).max(v);
        changed
    }

    /// Whether every node of both versions took the current one: no
    /// request coordinated on the old version is accepted any more by a
    /// node that took it, so what the old owners hold from now on is all
    /// there is to sync.
    pub fn all_acked(&self) -> bool {
        let v = self.current.version;
        self.members()
            .iter()
            .all(|n| self.acked.get(n).copied().unwrap_or(0) >= v)
    }

    /// Ends a transition whatever its state (`chironctl ring finish
    /// --force`): every node counts as having taken and synced the current
    /// version. What a node that did not sync lacks is read from nowhere
    /// until anti-entropy brings it, and what only a dead old owner held is
    /// lost if that owner never returns.
    pub fn force_finish(&mut self) -> Result<u64, String> {
        if self.old.is_none() {
            return Err(format!(
                "layout version {} is not in a transition",
                self.current.version
            ));
        }
        let v = self.current.version;
        for n in self.members() {
            let a = self.acked.entry(n.clone()).or_default();
            *a = (*a).max(v);
            let s = self.synced.entry(n).or_default();
            *s = (*s).max(v);
        }
        self.old = None;
        Ok(v)
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

    /// Every node this layout knows an address for. A committed address
    /// wins over a staged one: staged changes are not signed
    /// (`operator`), so they must not redirect links to a member.
    pub fn addresses(&self) -> BTreeMap<NodeId, String> {
        let mut all = self.staged.join.clone();
        if let Some(old) = &self.old {
            all.extend(old.nodes.clone());
        }
        all.extend(self.current.nodes.clone());
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

    /// Stages a new N, R, W for the next version, if it keeps the rules.
    pub fn stage_quorum(&mut self, q: Quorum) -> Result<(), String> {
        q.check()?;
        if q.n > 7 {
            return Err(format!("quorum {q}: N is at most 7 copies of each key"));
        }
        self.staged.quorum = Some(q);
        self.staged.counter += 1;
        Ok(())
    }

    /// The quorum the next version gets: the one staged, else the current
    /// version's, else (the ring's first layout) `first`.
    pub fn next_quorum(&self, first: Quorum) -> Quorum {
        match self.staged.quorum {
            Some(q) => q,
            None if self.current.version > 0 => self.current.quorum(),
            None => first,
        }
    }

    /// Commits the staged changes as a new layout version. `first` is the
    /// quorum of a ring's first layout, unless one was staged.
    pub fn apply(&mut self, first: Quorum) -> Result<u64, String> {
        if self.staged.is_empty() {
            return Err("nothing is staged (chironctl ring join|leave|quorum first)".into());
        }
        let q = self.next_quorum(first);
        q.check()?;
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
        let next = LayoutVersion::assign(&self.current, nodes, q);
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

    /// Ends a transition once every node of both versions synced (a node
    /// of the old version only has nothing to fetch, but may hold hints
    /// that must reach the new owners first).
    fn normalize(&mut self) {
        let v = self.current.version;
        if self.old.is_some()
            && self
                .members()
                .iter()
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
        for (n, v) in &other.acked {
            let e = self.acked.entry(n.clone()).or_default();
            *e = (*e).max(*v);
        }
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
            // `apply` makes a transition from the version just before;
            // any other `old` is forged (it would sync from the wrong
            // owners).
            if old.version.checked_add(1) != Some(self.current.version) {
                return Err(format!(
                    "a transition from version {} to {}: not consecutive",
                    old.version, self.current.version
                ));
            }
        }
        if self.staged.counter >= u64::MAX / 2 {
            return Err(format!(
                "staged counter {} out of range",
                self.staged.counter
            ));
        }
        if let Some(q) = self.staged.quorum {
            q.check()?;
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

    fn q(n: u8, r: u8, w: u8) -> Quorum {
        Quorum { n, r, w }
    }

    fn ring(names: &[&str], n: u8) -> LayoutHistory {
        let quorum = q(n, n / 2 + 1, n / 2 + 1);
        let mut l = LayoutHistory::empty(quorum);
        for (i, name) in names.iter().enumerate() {
            l.stage_join(id(name), format!("127.0.0.1:{}", 7000 + i));
        }
        l.apply(quorum).unwrap();
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
        assert_eq!(l.apply(Quorum::default()).unwrap(), 2);
        let old = l.old.clone().expect("transition");
        let moved: usize = (0..PARTITIONS)
            .map(|p| {
                let new: BTreeSet<_> = l.current.owners(p).iter().collect();
                old.owners(p).iter().filter(|o| !new.contains(o)).count()
            })
            .sum();
        // d takes its fair share (3*256/4 = 192 slots), nothing more.
        assert!((150..=200).contains(&moved), "moved {moved}");
        assert!(
            l.apply(Quorum::default()).is_err(),
            "no second change during a transition"
        );
        for n in ["a", "b", "c"] {
            l.mark_synced(&id(n), 2);
        }
        assert!(l.old.is_some());
        l.mark_synced(&id("d"), 2);
        assert!(l.old.is_none(), "transition ends when all synced");
    }

    #[test]
    fn syncing_waits_until_every_node_took_the_new_version_and_force_ends_a_transition() {
        let mut l = ring(&["a", "b", "c", "d"], 3);
        for n in ["a", "b", "c", "d"] {
            l.ack(&id(n));
        }
        l.stage_leave(id("d")).unwrap();
        assert_eq!(l.apply(Quorum::default()).unwrap(), 2);
        assert!(!l.all_acked());
        for n in ["a", "b", "c"] {
            assert!(l.ack(&id(n)));
        }
        assert!(
            !l.all_acked(),
            "d, leaving, may still coordinate with version 1"
        );
        // Acknowledgements travel with layouts.
        let mut from_d = l.clone();
        from_d.ack(&id("d"));
        assert!(l.merge(&from_d));
        assert!(l.all_acked());
        for n in ["a", "b", "c"] {
            l.mark_synced(&id(n), 2);
        }
        assert!(
            l.old.is_some(),
            "d, of the old version only, may hold hints the new owners need"
        );
        // A dead d would hold it forever: the operator ends it.
        let mut forced = l.clone();
        assert_eq!(forced.force_finish().unwrap(), 2);
        assert!(forced.old.is_none());
        assert!(forced.force_finish().is_err(), "no transition left");
        l.mark_synced(&id("d"), 2);
        assert!(l.old.is_none());
    }

    #[test]
    fn merge_prefers_the_newer_layout_and_adds_sync_marks() {
        let mut a = ring(&["a", "b", "c"], 3);
        let mut b = a.clone();
        a.stage_join(id("d"), "x:1".into());
        a.apply(Quorum::default()).unwrap();
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
        x.apply(Quorum::default()).unwrap();
        y.stage_join(id("e"), "y:1".into());
        y.apply(Quorum::default()).unwrap();
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
        l.apply(Quorum::default()).unwrap();
        assert!(l.current.owners.iter().all(|o| !o.contains(&id("b"))));
        l.current.check().unwrap();
        assert!(l.stage_leave(id("zz")).is_err());
    }

    #[test]
    fn quorum_rules_name_the_values_and_the_rule() {
        for good in [
            q(3, 2, 2),
            q(1, 1, 1),
            q(3, 1, 3),
            q(5, 3, 3),
            q(2, 1, 2),
            q(4, 2, 3),
        ] {
            good.check().unwrap();
        }
        for (bad, rule) in [
            (q(3, 1, 1), "R + W = 2 must exceed N = 3"),
            (q(3, 1, 2), "R + W = 3 must exceed N = 3"),
            (q(4, 3, 2), "W = 2 must exceed N/2 = 2"),
            (q(2, 2, 1), "W = 1 must exceed N/2 = 1"),
            (q(3, 4, 2), "impossible"),
            (q(0, 1, 1), "impossible"),
        ] {
            let e = bad.check().unwrap_err();
            assert!(
                e.contains(rule) && e.contains(&bad.to_string()),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_quorum_is_checked_when_staged_and_kept_by_later_versions() {
        let mut l = ring(&["a", "b", "c", "d"], 3);
        assert_eq!(l.current.quorum(), q(3, 2, 2));
        // Staging an unsafe quorum is refused and stages nothing.
        let e = l.stage_quorum(q(3, 1, 1)).unwrap_err();
        assert!(e.contains("R + W"), "{e}");
        assert!(l.apply(q(3, 2, 2)).is_err(), "nothing staged");
        // A join keeps the current quorum, whatever the applying node's
        // configuration says.
        l.stage_join(id("e"), "x:1".into());
        l.apply(q(5, 3, 3)).unwrap();
        assert_eq!(l.current.quorum(), q(3, 2, 2));
        l.current.check().unwrap();
        for n in ["a", "b", "c", "d", "e"] {
            l.mark_synced(&id(n), l.current.version);
        }
        // A staged quorum alone makes a new version, with N copies.
        l.stage_quorum(q(5, 2, 4)).unwrap();
        let v = l.apply(q(3, 2, 2)).unwrap();
        assert_eq!(l.current.version, v);
        assert_eq!(l.current.quorum(), q(5, 2, 4));
        assert!(l.current.owners.iter().all(|o| o.len() == 5));
        assert_eq!(l.old.as_ref().map(LayoutVersion::quorum), Some(q(3, 2, 2)));
        assert_eq!(l.staged.quorum, None, "applied, no longer staged");
    }

    #[test]
    fn a_layout_from_the_network_with_an_unsafe_quorum_is_refused() {
        let mut l = ring(&["a", "b", "c"], 3);
        l.current.r = 1;
        let e = l.check().unwrap_err();
        assert!(e.contains("layout version 1") && e.contains("R + W"), "{e}");
        let mut l = ring(&["a", "b", "c"], 3);
        l.current.w = 1;
        l.current.r = 3;
        let e = l.check().unwrap_err();
        assert!(e.contains("W = 1 must exceed"), "{e}");
    }

    /// What an unsigned part of a layout could do is refused or ignored:
    /// a transition from a version other than the one just before, a
    /// staged address for a member, a counter that would overflow.
    #[test]
    fn unsigned_parts_of_a_network_layout_cannot_redirect_or_rewind() {
        let mut l = ring(&["a", "b", "c"], 3);
        let first = l.current.clone();
        l.stage_join(id("d"), "d:1".into());
        l.apply(Quorum::default()).unwrap();
        l.check().unwrap();
        l.stage_join(id("e"), "e:1".into());
        let mut forged = l.clone();
        forged.current.version = 3;
        forged.old = Some(first);
        let e = forged.check().unwrap_err();
        assert!(e.contains("not consecutive"), "{e}");
        let mut forged = l.clone();
        forged.staged.join.insert(id("a"), "evil:1".into());
        assert_eq!(forged.addresses()[&id("a")], "127.0.0.1:7000");
        assert_eq!(forged.addresses()[&id("e")], "e:1");
        let mut forged = l.clone();
        forged.staged.counter = u64::MAX;
        assert!(forged.check().unwrap_err().contains("out of range"));
        let mut forged = l;
        forged.staged.quorum = Some(Quorum { n: 3, r: 1, w: 1 });
        assert!(forged.check().is_err());
    }

    #[test]
    fn a_member_keeps_its_joined_version_until_it_leaves_and_comes_back() {
        let mut l = ring(&["a", "b", "c"], 3);
        assert!(l.current.joined.values().all(|&v| v == 1));
        let settle = |l: &mut LayoutHistory| {
            let v = l.current.version;
            for n in l.members() {
                l.mark_synced(&n, v);
            }
        };
        l.stage_join(id("d"), "x:1".into());
        l.apply(Quorum::default()).unwrap();
        settle(&mut l);
        assert_eq!(l.current.joined.get(&id("a")), Some(&1));
        assert_eq!(l.current.joined.get(&id("d")), Some(&2));
        l.stage_leave(id("a")).unwrap();
        l.apply(Quorum::default()).unwrap();
        settle(&mut l);
        assert_eq!(l.current.joined.get(&id("a")), None);
        l.stage_join(id("a"), "x:2".into());
        l.apply(Quorum::default()).unwrap();
        assert_eq!(l.current.joined.get(&id("a")), Some(&4), "back, as of 4");
        assert_eq!(l.current.joined.get(&id("d")), Some(&2));
        l.current.check().unwrap();
        let mut bad = l.clone();
        bad.current.joined.remove(&id("b"));
        assert!(bad.check().is_err());
    }
}
