//! Counting quorums: a key's preference lists (two during a layout
//! change), each with the N, R, W of its layout version, and whether the
//! nodes that answered make R (or W) in every one of them.

use super::NodeId;
use super::layout::Quorum;

/// Quorum needed in a preference list of `set.len()` nodes (a ring smaller
/// than N asks all of them at most).
pub fn need(q: usize, set: &[NodeId]) -> usize {
    q.min(set.len()).max(1)
}

pub fn count_in(set: &[NodeId], acked: &[&NodeId]) -> usize {
    set.iter().filter(|n| acked.contains(n)).count()
}

/// One preference list of a key and the quorum of its layout version.
pub struct OwnerSet {
    pub nodes: Vec<NodeId>,
    pub quorum: Quorum,
}

/// `None` if `acked` holds the quorum `pick` names (R or W) of every
/// list; else (needed, got) in the list furthest from it.
pub fn shortfall(
    sets: &[OwnerSet],
    acked: &[&NodeId],
    pick: impl Fn(&Quorum) -> u8,
) -> Option<(usize, usize)> {
    sets.iter()
        .map(|s| {
            (
                need(pick(&s.quorum) as usize, &s.nodes),
                count_in(&s.nodes, acked),
            )
        })
        .filter(|(needed, got)| got < needed)
        .max_by_key(|(needed, got)| needed - got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::new(n).unwrap()).collect()
    }

    #[test]
    fn every_list_needs_its_own_quorum() {
        let sets = [
            OwnerSet {
                nodes: ids(&["a", "b", "c"]),
                quorum: Quorum { n: 3, r: 2, w: 2 },
            },
            OwnerSet {
                nodes: ids(&["c", "d", "e"]),
                quorum: Quorum { n: 3, r: 1, w: 3 },
            },
        ];
        let acked = ids(&["a", "c"]);
        let acked: Vec<&NodeId> = acked.iter().collect();
        assert_eq!(shortfall(&sets, &acked, |q| q.r), None);
        assert_eq!(shortfall(&sets, &acked, |q| q.w), Some((3, 1)));
        // A list shorter than N (a small ring) needs all of its nodes at most.
        let small = [OwnerSet {
            nodes: ids(&["a"]),
            quorum: Quorum { n: 3, r: 2, w: 2 },
        }];
        assert_eq!(shortfall(&small, &acked, |q| q.w), None);
    }
}
