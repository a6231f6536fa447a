//! Read leases (DESIGN.md section 7, "Read leases"): the arithmetic, kept
//! apart from the network so that it can be tested with any clock.
//!
//! A host serves reads only while it holds a lease granted by a majority
//! of the layout's members. Each granter records the grant against its own
//! monotonic clock ([`Grants`]); the holder counts its lease from the
//! moment it *sent* the request, minus a margin for drift
//! ([`holder_expiry`]), so the holder's lease always ends before any
//! granter's record of it. A host that must take a replica out of service
//! while some host did not confirm that it learned so asks a majority how
//! long their grants to those hosts have left and waits that long on its
//! own clock, plus the margin ([`wait_for`]). No clock is ever compared
//! with another host's: only durations cross the network, and each is
//! measured on one clock.
//!
//! Times are nanoseconds of [`crate::clock::boot_ns`] (monotonic, counts
//! suspend); a wall-clock step moves none of them.

use std::collections::HashMap;
use std::time::Duration;

use super::NodeId;

/// Relative rate error allowed between two hosts' monotonic clocks: 1%,
/// twenty times what NTP may slew a clock (500 ppm).
pub const DRIFT_PER_MILLE: u64 = 10;
/// Added to every margin: scheduling and timer granularity.
pub const DRIFT_FLOOR: Duration = Duration::from_millis(5);

/// The safety margin for a lease or a wait of `d`.
pub fn margin(d: Duration) -> Duration {
    d * DRIFT_PER_MILLE as u32 / 1000 + DRIFT_FLOOR
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The holder's side: a lease of `term`, asked for at `sent` (its own
/// clock, read before the request left), ends at the returned instant of
/// that clock. Every granter recorded it no earlier than `sent` for at
/// least `term` on a clock that runs at most [`DRIFT_PER_MILLE`] apart, so
/// this ends before any granter's record does.
pub fn holder_expiry(sent: u64, term: Duration) -> u64 {
    sent.saturating_add(ns(term.saturating_sub(margin(term))))
}

/// The longest lease any node grants (`ring.read_lease` is at most an
/// hour): what a granter says is capped to it, so an answer from the
/// network cannot make a revoker wait forever (or overflow a clock).
pub const MAX_TERM: Duration = Duration::from_secs(3600);

/// The revoker's side: a granter answered that its grants have `left` to
/// run on its clock; waiting the returned duration from the moment the
/// answer arrived outlasts them on this host's clock.
pub fn wait_for(left: Duration) -> Duration {
    if left.is_zero() {
        Duration::ZERO
    } else {
        let left = left.min(MAX_TERM);
        left + margin(left)
    }
}

/// The granter's side: which hosts hold a grant from this node, until when
/// on this node's clock.
#[derive(Debug)]
pub struct Grants {
    /// When this node started: grants it made before (in an earlier
    /// process) are forgotten, so until `started + max_term` any host may
    /// still hold one.
    started: u64,
    max_term: Duration,
    until: HashMap<NodeId, u64>,
}

impl Grants {
    pub fn new(started: u64, max_term: Duration) -> Grants {
        Grants {
            started,
            max_term: max_term.min(MAX_TERM),
            until: HashMap::new(),
        }
    }

    /// The longest grant this node makes.
    pub fn max_term(&self) -> Duration {
        self.max_term
    }

    /// Grants `host` a lease of `term` (at most `max_term`) from `now`;
    /// returns the term granted. A grant never shortens an earlier one.
    pub fn grant(&mut self, host: &NodeId, term: Duration, now: u64) -> Duration {
        let term = term.min(self.max_term);
        let end = now.saturating_add(ns(term));
        let e = self.until.entry(host.clone()).or_insert(end);
        *e = (*e).max(end);
        // Forget grants long over (the table stays as small as the ring).
        self.until.retain(|_, u| *u > now);
        term
    }

    /// How long the grants to any of `hosts` have left at `now`, on this
    /// node's clock; a node that started less than `max_term` ago also
    /// counts the grants it may have made before it restarted.
    pub fn left(&self, hosts: &[NodeId], now: u64) -> Duration {
        let recorded = hosts
            .iter()
            .filter_map(|h| self.until.get(h))
            .map(|u| u.saturating_sub(now))
            .max()
            .unwrap_or(0);
        let forgotten = self
            .started
            .saturating_add(ns(self.max_term))
            .saturating_sub(now);
        Duration::from_nanos(recorded.max(forgotten))
    }
}

/// Whether `answered` of `members` is a majority (the two sides of a lease,
/// a grant and a revocation, each need one: they meet on some node).
pub fn majority(answered: usize, members: usize) -> bool {
    members > 0 && answered * 2 > members
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn a_holder_lease_ends_before_every_granter_record() {
        let term = Duration::from_secs(6);
        // Sent at 100 s on the holder's clock; granted 30 ms later (in
        // real time) by a node whose clock reads 5000 s then.
        let end = holder_expiry(100 * S, term);
        assert_eq!(end, 100 * S + 6 * S - ns(margin(term)));
        assert_eq!(margin(term), Duration::from_millis(65));
        let mut g = Grants::new(0, Duration::from_secs(60));
        let granted = g.grant(&id("hostb"), term, 5000 * S + 30_000_000);
        assert_eq!(granted, term);
        // The holder's lease lasts 5.935 s of its clock; even if that
        // clock runs 1% slow (its 5.935 s are 5.995 s of real time) the
        // granter's record (6 s after a later start) outlasts it.
        let holder_real = (end - 100 * S) as f64 * 1.01;
        let granter_real = (6 * S + 30_000_000) as f64;
        assert!(holder_real < granter_real);
    }

    #[test]
    fn grants_expire_on_the_granter_clock_and_never_shrink() {
        let mut g = Grants::new(0, Duration::from_secs(10));
        let b = id("hostb");
        // Long after start: nothing forgotten counts.
        g.grant(&b, Duration::from_secs(6), 100 * S);
        assert_eq!(
            g.left(std::slice::from_ref(&b), 101 * S),
            Duration::from_secs(5)
        );
        // A shorter grant later does not shorten it.
        g.grant(&b, Duration::from_secs(1), 102 * S);
        assert_eq!(
            g.left(std::slice::from_ref(&b), 102 * S),
            Duration::from_secs(4)
        );
        // Over at 106 s; other hosts never had one.
        assert_eq!(g.left(&[b], 106 * S), Duration::ZERO);
        assert_eq!(g.left(&[id("hosta")], 101 * S), Duration::ZERO);
        assert_eq!(g.left(&[], 101 * S), Duration::ZERO);
    }

    #[test]
    fn a_grant_is_capped_by_the_node_maximum() {
        let mut g = Grants::new(0, Duration::from_secs(10));
        let b = id("hostb");
        assert_eq!(
            g.grant(&b, Duration::from_secs(3600), 100 * S),
            Duration::from_secs(10)
        );
        assert_eq!(g.left(&[b], 100 * S), Duration::from_secs(10));
    }

    #[test]
    fn a_restarted_granter_counts_what_it_forgot() {
        // Started at 50 s: until 60 s any host may hold a grant it made in
        // its previous life.
        let g = Grants::new(50 * S, Duration::from_secs(10));
        assert_eq!(g.left(&[id("hostb")], 52 * S), Duration::from_secs(8));
        assert_eq!(g.left(&[id("hostb")], 60 * S), Duration::ZERO);
    }

    #[test]
    fn the_revoker_waits_longer_than_the_granter_said() {
        assert_eq!(wait_for(Duration::ZERO), Duration::ZERO);
        let w = wait_for(Duration::from_secs(2));
        assert_eq!(w, Duration::from_millis(2025));
        // An answer from the network is capped (ring.read_lease <= 1 h).
        assert_eq!(
            wait_for(Duration::from_millis(u64::MAX)),
            MAX_TERM + margin(MAX_TERM)
        );
        // Even on a clock 1% fast (its 2.025 s are 2.005 s of real time).
        assert!(w.as_secs_f64() / 1.01 > 2.0);
    }

    #[test]
    fn a_clock_that_steps_moves_no_lease() {
        // The lease clock is monotonic: a wall-clock step (an hour back)
        // changes nothing here, and were a caller to pass an earlier
        // instant than a grant's, the arithmetic saturates instead of
        // granting forever or panicking.
        let mut g = Grants::new(0, Duration::from_secs(10));
        let b = id("hostb");
        g.grant(&b, Duration::from_secs(6), 3600 * S);
        let back = g.left(std::slice::from_ref(&b), 0);
        assert_eq!(back, Duration::from_secs(3606), "bounded by the record");
        assert_eq!(g.left(&[b], u64::MAX), Duration::ZERO);
        assert_eq!(
            holder_expiry(u64::MAX - 1, Duration::from_secs(6)),
            u64::MAX
        );
        assert_eq!(holder_expiry(0, Duration::from_millis(1)), 0);
        // And the boot clock itself only moves forward.
        let a = crate::clock::boot_ns();
        let b = crate::clock::boot_ns();
        assert!(b >= a);
    }

    #[test]
    fn grant_and_revocation_majorities_meet() {
        assert!(!majority(1, 3));
        assert!(majority(2, 3));
        assert!(!majority(2, 4));
        assert!(majority(3, 4));
        assert!(!majority(0, 0));
        // Any two majorities of n members share a member.
        for n in 1..8usize {
            let m = n / 2 + 1;
            assert!(majority(m, n) && m + m > n);
        }
    }
}
