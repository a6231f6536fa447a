//! Dotted version vector sets (Almeida, Baquero, Gonçalves, Preguiça,
//! Fonte: "Scalable and Accurate Causality Tracking for Eventually
//! Consistent Stores", 2014; the structure Riak adopted after sibling
//! explosion with plain vector clocks).
//!
//! A [`Dvv`] is what a node stores for one key: for each actor (the node
//! that coordinated a write) a counter and the values of its latest dots
//! still not overwritten, newest first. Concurrent writes stay side by side
//! as siblings; a write made with the context of a read replaces exactly
//! the siblings that read saw. Nothing is ever dropped by timestamp.
//!
//! A value of `None` is a deletion (a tombstone sibling).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Counters at or above this come from no honest node (one write a
/// nanosecond for centuries): refused, so that an increment never overflows.
pub const MAX_COUNTER: u64 = u64::MAX / 2;

/// A stored value: bytes, or `None` for a deletion.
pub type Val = Option<Vec<u8>>;

/// The causal context handed to a reader and given back with its write:
/// actor -> highest counter seen.
pub type Context = BTreeMap<String, u64>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Entry {
    pub actor: String,
    pub counter: u64,
    /// Values of dots (actor, counter), (actor, counter - 1), ...
    pub values: Vec<Val>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Dvv {
    /// Sorted by actor, actors unique.
    pub entries: Vec<Entry>,
    /// Values without a dot: only in a client's fresh write, before the
    /// coordinator gives it one.
    pub anonymous: Vec<Val>,
}

impl Dvv {
    /// A fresh write of `value` made after reading `context`.
    pub fn new_write(context: &Context, value: Val) -> Dvv {
        Dvv {
            entries: context
                .iter()
                .map(|(actor, &counter)| Entry {
                    actor: actor.clone(),
                    counter,
                    values: Vec::new(),
                })
                .collect(),
            anonymous: vec![value],
        }
    }

    /// The coordinator's step: applies the client write `self` (from
    /// [`Dvv::new_write`]) to the stored `current`, giving the value a new
    /// dot of `actor`. Siblings that the write's context covers are
    /// dropped; concurrent ones stay.
    pub fn update(&self, current: &Dvv, actor: &str) -> Dvv {
        let value = self.anonymous.first().cloned().unwrap_or(None);
        let context_only = Dvv {
            entries: self.entries.clone(),
            anonymous: Vec::new(),
        };
        let merged = context_only.sync(current);
        Dvv {
            entries: event(merged.entries, actor, value),
            anonymous: merged.anonymous,
        }
    }

    /// Merges two versions of one key (what replicas do on every write,
    /// read repair and anti-entropy). Commutative, associative, idempotent.
    pub fn sync(&self, other: &Dvv) -> Dvv {
        let anonymous = if self.less(other) {
            other.anonymous.clone()
        } else if other.less(self) {
            self.anonymous.clone()
        } else {
            let mut all = self.anonymous.clone();
            for v in &other.anonymous {
                if !all.contains(v) {
                    all.push(v.clone());
                }
            }
            all.sort();
            all
        };
        let mut entries = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let (mut a, mut b) = (
            self.entries.iter().peekable(),
            other.entries.iter().peekable(),
        );
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => entries.push(a.next().cloned().unwrap_or_default()),
                (None, Some(_)) => entries.push(b.next().cloned().unwrap_or_default()),
                (Some(x), Some(y)) => {
                    if x.actor < y.actor {
                        entries.push((*x).clone());
                        a.next();
                    } else if x.actor > y.actor {
                        entries.push((*y).clone());
                        b.next();
                    } else {
                        entries.push(merge_entry(x, y));
                        a.next();
                        b.next();
                    }
                }
            }
        }
        Dvv { entries, anonymous }
    }

    /// The causal context of this version (to hand to a reader).
    pub fn context(&self) -> Context {
        self.entries
            .iter()
            .map(|e| (e.actor.clone(), e.counter))
            .collect()
    }

    /// Every sibling: the concurrent values this version holds.
    pub fn values(&self) -> Vec<Val> {
        let mut out = self.anonymous.clone();
        for e in &self.entries {
            out.extend(e.values.iter().cloned());
        }
        out
    }

    /// Whether this version is causally strictly older than `other`.
    pub fn less(&self, other: &Dvv) -> bool {
        greater(&other.entries, &self.entries)
    }

    /// Whether `other` adds nothing to this version (it is older or equal).
    pub fn covers(&self, other: &Dvv) -> bool {
        &self.sync(other) == self
    }

    /// Whether this is well formed (it may come from the network): actors
    /// sorted and unique, no entry holding more values than its counter,
    /// no anonymous values (only a client's write has them).
    pub fn is_valid(&self) -> bool {
        self.anonymous.is_empty()
            && self.entries.iter().all(|e| e.counter < MAX_COUNTER)
            && self.entries.windows(2).all(|w| w[0].actor < w[1].actor)
            && self
                .entries
                .iter()
                .all(|e| (e.values.len() as u64) <= e.counter && !e.actor.is_empty())
    }

    /// Whether the only sibling is a deletion.
    pub fn is_tombstone(&self) -> bool {
        let v = self.values();
        !v.is_empty() && v.iter().all(Option::is_none)
    }
}

fn merge_entry(x: &Entry, y: &Entry) -> Entry {
    let (lx, ly) = (x.values.len() as u64, y.values.len() as u64);
    if x.counter >= y.counter {
        if x.counter.saturating_sub(lx) >= y.counter.saturating_sub(ly) {
            x.clone()
        } else {
            let keep = (x.counter - y.counter).saturating_add(ly) as usize;
            Entry {
                actor: x.actor.clone(),
                counter: x.counter,
                values: x.values.iter().take(keep).cloned().collect(),
            }
        }
    } else if y.counter.saturating_sub(ly) >= x.counter.saturating_sub(lx) {
        y.clone()
    } else {
        let keep = (y.counter - x.counter).saturating_add(lx) as usize;
        Entry {
            actor: y.actor.clone(),
            counter: y.counter,
            values: y.values.iter().take(keep).cloned().collect(),
        }
    }
}

/// Adds a dot of `actor` holding `value`.
fn event(mut entries: Vec<Entry>, actor: &str, value: Val) -> Vec<Entry> {
    match entries.binary_search_by(|e| e.actor.as_str().cmp(actor)) {
        Ok(i) => {
            let e = &mut entries[i];
            e.counter = e.counter.saturating_add(1);
            e.values.insert(0, value);
        }
        Err(i) => entries.insert(
            i,
            Entry {
                actor: actor.to_string(),
                counter: 1,
                values: vec![value],
            },
        ),
    }
    entries
}

/// Whether clock `a` strictly dominates clock `b`.
fn greater(a: &[Entry], b: &[Entry]) -> bool {
    let mut strict = false;
    let (mut i, mut j) = (0, 0);
    loop {
        match (a.get(i), b.get(j)) {
            (None, None) => return strict,
            (Some(_), None) => return true,
            (None, Some(_)) => return false,
            (Some(x), Some(y)) => {
                if x.actor == y.actor {
                    if x.counter > y.counter {
                        strict = true;
                    } else if x.counter < y.counter {
                        return false;
                    }
                    i += 1;
                    j += 1;
                } else if x.actor < y.actor {
                    strict = true;
                    i += 1;
                } else {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Val {
        Some(s.as_bytes().to_vec())
    }

    fn write(stored: &Dvv, ctx: &Context, value: &str, actor: &str) -> Dvv {
        Dvv::new_write(ctx, v(value)).update(stored, actor)
    }

    #[test]
    fn a_write_with_the_read_context_replaces_what_was_read() {
        let s = write(&Dvv::default(), &Context::new(), "v1", "a");
        assert_eq!(s.values(), vec![v("v1")]);
        let s2 = write(&s, &s.context(), "v2", "a");
        assert_eq!(s2.values(), vec![v("v2")]);
        assert!(s.less(&s2));
        assert!(!s2.less(&s));
    }

    #[test]
    fn concurrent_writes_are_kept_as_siblings_then_resolved() {
        let base = write(&Dvv::default(), &Context::new(), "v1", "a");
        let ctx = base.context();
        // Two clients read v1, then both write, through different nodes.
        let on_a = write(&base, &ctx, "from-x", "a");
        let on_b = write(&base, &ctx, "from-y", "b");
        let merged = on_a.sync(&on_b);
        let mut vals = merged.values();
        vals.sort();
        assert_eq!(vals, vec![v("from-x"), v("from-y")]);
        assert_eq!(merged, on_b.sync(&on_a), "sync commutes");
        assert_eq!(merged.sync(&merged), merged, "sync is idempotent");
        // Same node, same stale context: also siblings (no LWW).
        let again = write(&on_a, &ctx, "from-z", "a");
        let mut vals = again.values();
        vals.sort();
        assert_eq!(vals, vec![v("from-x"), v("from-z")]);
        // A write with the merged context resolves everything.
        let resolved = write(&merged, &merged.context(), "both", "a");
        assert_eq!(resolved.values(), vec![v("both")]);
        assert!(merged.less(&resolved));
    }

    #[test]
    fn old_versions_never_override_newer_ones() {
        let s1 = write(&Dvv::default(), &Context::new(), "v1", "a");
        let s2 = write(&s1, &s1.context(), "v2", "b");
        assert_eq!(s2.sync(&s1), s2);
        assert_eq!(s1.sync(&s2), s2);
        assert!(s2.covers(&s1));
        assert!(!s1.covers(&s2));
    }

    #[test]
    fn deletion_is_a_tombstone_sibling() {
        let s1 = write(&Dvv::default(), &Context::new(), "v1", "a");
        let del = Dvv::new_write(&s1.context(), None).update(&s1, "b");
        assert!(del.is_tombstone());
        // A concurrent write survives a delete.
        let w = write(&s1, &s1.context(), "v2", "c");
        let m = del.sync(&w);
        assert!(!m.is_tombstone());
        assert_eq!(m.values().len(), 2);
    }

    #[test]
    fn sibling_count_stays_bounded_by_concurrent_writers() {
        // Many writes, each with the latest context, by rotating actors:
        // the version holds one value whatever the history length.
        let mut s = Dvv::default();
        for i in 0..100 {
            let actor = ["a", "b", "c"][i % 3];
            s = write(&s, &s.context(), &format!("v{i}"), actor);
        }
        assert_eq!(s.values(), vec![v("v99")]);
        assert_eq!(s.entries.len(), 3);
    }
}
