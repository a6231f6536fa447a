//! Which replica an open reads from (`read_policy`).

use std::sync::atomic::Ordering;

use super::ChironFs;
use crate::config::ReadPolicy;
use crate::replica::RelPath;

/// A replica that could serve a read.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub index: usize,
    pub low_priority: bool,
    /// Requests in flight plus handles bound to it.
    pub load: u64,
}

/// Picks among `candidates` (in configured order). Low-priority replicas
/// are only considered when no high-priority one is available.
pub fn pick(policy: ReadPolicy, candidates: &[Candidate], turn: usize) -> Option<usize> {
    let high: Vec<&Candidate> = candidates.iter().filter(|c| !c.low_priority).collect();
    let group: Vec<&Candidate> = if high.is_empty() {
        candidates.iter().collect()
    } else {
        high
    };
    let first = group.first()?;
    Some(match policy {
        ReadPolicy::Priority => first.index,
        ReadPolicy::RoundRobin => group[turn % group.len()].index,
        ReadPolicy::LeastBusy => group
            .iter()
            .min_by_key(|c| c.load)
            .map_or(first.index, |c| c.index),
    })
}

impl ChironFs {
    /// The replica a new open of `path` should read from, skipping `exclude`.
    pub(super) fn choose_reader(&self, path: &RelPath, exclude: &[usize]) -> Option<usize> {
        let candidates: Vec<Candidate> = self
            .replicas
            .iter()
            .filter(|r| self.serves(r.index, path) && !exclude.contains(&r.index))
            .map(|r| Candidate {
                index: r.index,
                low_priority: r.spec.low_priority,
                load: r.in_flight.load(Ordering::Relaxed) + r.bound_handles.load(Ordering::Relaxed),
            })
            .collect();
        let turn = self.round_robin.fetch_add(1, Ordering::Relaxed);
        pick(self.opts.read_policy, &candidates, turn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: usize, low_priority: bool, load: u64) -> Candidate {
        Candidate {
            index,
            low_priority,
            load,
        }
    }

    #[test]
    fn round_robin_rotates_over_high_priority_replicas() {
        let cs = [c(0, false, 0), c(1, true, 0), c(2, false, 0)];
        let picks: Vec<_> = (0..4)
            .map(|t| pick(ReadPolicy::RoundRobin, &cs, t).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
    }

    #[test]
    fn low_priority_serves_only_when_alone() {
        let cs = [c(1, true, 0), c(3, true, 5)];
        assert_eq!(pick(ReadPolicy::Priority, &cs, 0), Some(1));
        assert_eq!(pick(ReadPolicy::RoundRobin, &cs, 1), Some(3));
        assert_eq!(pick(ReadPolicy::Priority, &[], 0), None);
    }

    #[test]
    fn priority_and_least_busy() {
        let cs = [c(0, false, 9), c(1, false, 2), c(2, false, 4)];
        assert_eq!(pick(ReadPolicy::Priority, &cs, 7), Some(0));
        assert_eq!(pick(ReadPolicy::LeastBusy, &cs, 7), Some(1));
    }
}
