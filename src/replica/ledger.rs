//! The ledger: which replicas are behind, recorded on the replicas
//! themselves (src/DESIGN.md section 5, invariant I5), as GlusterFS AFR
//! keeps its pending changelog on the bricks.
//!
//! Each writer (one mount: `local`, or its ring node name when hosts share
//! the replicas) keeps one file per replica, `.chironfs/behind.<writer>`:
//!
//! ```text
//! gen 42
//! behind 67e55044-10b1-426f-9247-bb680e5fe0c8
//! ```
//!
//! A writer rewrites it on every replica it can still write to whenever a
//! replica leaves or rejoins the in-sync set, with a generation one above
//! the highest it finds, before the operation that caused the change is
//! acknowledged. Whoever mounts the set next reads every replica's files:
//! per writer, the files with the highest generation are the truth, and a
//! replica whose own file is older (or missing while others have one)
//! missed that update, so it is behind too. The local metadata store is a
//! cache of this, never the only truth.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::BorrowedFd;

use super::identity;
use crate::errno::{Errno, Result};
use crate::meta::ReplicaId;

const PREFIX: &str = "behind.";
/// A ledger file is a few lines per replica; anything longer is not one.
const MAX_LEN: usize = 64 * 1024;

/// One writer's record, as found on one replica.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ledger {
    pub generation: u64,
    pub behind: BTreeSet<ReplicaId>,
}

impl Ledger {
    fn encode(&self) -> String {
        let mut s = format!("gen {}\n", self.generation);
        for id in &self.behind {
            s.push_str(&format!("behind {id}\n"));
        }
        s
    }

    fn decode(text: &[u8]) -> Option<Ledger> {
        let text = std::str::from_utf8(text).ok()?;
        let mut out = Ledger::default();
        let mut saw_gen = false;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (key, value) = line.split_once(' ')?;
            match key {
                "gen" => {
                    out.generation = value.trim().parse().ok()?;
                    saw_gen = true;
                }
                "behind" => {
                    out.behind.insert(value.trim().parse().ok()?);
                }
                _ => return None,
            }
        }
        saw_gen.then_some(out)
    }
}

/// A writer name safe as a file name: letters, digits, `-`, `_` and `.`
/// are kept, anything else becomes `_`.
pub fn writer_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() { "local".into() } else { s }
}

/// Every writer's ledger on the replica with root `root`. A file that does
/// not parse is an error (EBADMSG): the caller cannot tell what it said.
pub fn read(root: BorrowedFd) -> Result<BTreeMap<String, Ledger>> {
    let mut out = BTreeMap::new();
    for (name, data) in identity::read_internal(root, PREFIX, MAX_LEN)? {
        let writer = name[PREFIX.len()..].to_string();
        let ledger = Ledger::decode(&data).ok_or(Errno(libc::EBADMSG))?;
        out.insert(writer, ledger);
    }
    Ok(out)
}

/// Writes `writer`'s ledger on the replica with root `root`, durably.
pub fn write(root: BorrowedFd, writer: &str, ledger: &Ledger) -> Result<()> {
    identity::write_internal(
        root,
        &format!("{PREFIX}{}", writer_name(writer)),
        ledger.encode().as_bytes(),
    )
}

/// What the ledgers found on the replicas say, for replicas `ids` (some
/// ledgers unreadable: `None` in `found`).
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether any replica carries a ledger at all.
    pub any: bool,
    /// The highest generation seen (the next write uses one more).
    pub generation: u64,
    /// Replicas some writer's newest ledger names as behind, or that
    /// missed a writer's newest ledger.
    pub behind: BTreeSet<ReplicaId>,
}

/// Combines the ledgers read from each replica (`None`: unreadable).
pub fn judge(found: &[(ReplicaId, Option<BTreeMap<String, Ledger>>)]) -> Verdict {
    let mut behind = BTreeSet::new();
    let mut generation = 0;
    let mut writers: BTreeSet<&String> = BTreeSet::new();
    for (_, l) in found {
        if let Some(l) = l {
            writers.extend(l.keys());
        }
    }
    let any = !writers.is_empty();
    for w in writers {
        let newest = found
            .iter()
            .filter_map(|(_, l)| l.as_ref()?.get(w))
            .map(|l| l.generation)
            .max()
            .unwrap_or(0);
        generation = generation.max(newest);
        for (id, l) in found {
            match l.as_ref().and_then(|l| l.get(w)) {
                Some(l) if l.generation == newest => behind.extend(l.behind.iter().copied()),
                // Older than the newest, missing, or unreadable: this replica
                // was out of reach when the writer last recorded who is behind.
                _ => {
                    behind.insert(*id);
                }
            }
        }
    }
    Verdict {
        any,
        generation,
        behind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn ledger(generation: u64, behind: &[ReplicaId]) -> Ledger {
        Ledger {
            generation,
            behind: behind.iter().copied().collect(),
        }
    }

    #[test]
    fn round_trip_on_a_directory() {
        let t = tempfile::tempdir().unwrap();
        let root: OwnedFd = std::fs::File::open(t.path()).unwrap().into();
        let fd = crate::replica::ops::fd_of(&root);
        assert!(read(fd).unwrap().is_empty());
        let b = ReplicaId::random();
        write(fd, "host/a", &ledger(3, &[b])).unwrap();
        let got = read(fd).unwrap();
        assert_eq!(got.get("host_a"), Some(&ledger(3, &[b])));
        std::fs::write(t.path().join(".chironfs/behind.x"), b"gen nope").unwrap();
        assert_eq!(read(fd).unwrap_err(), Errno(libc::EBADMSG));
    }

    #[test]
    fn newest_generation_wins_and_laggards_are_behind() {
        let (a, b, c) = (
            ReplicaId::random(),
            ReplicaId::random(),
            ReplicaId::random(),
        );
        let m =
            |g, behind: &[ReplicaId]| Some(BTreeMap::from([("w".to_string(), ledger(g, behind))]));
        // a and c recorded at 5 that b is behind; b still holds gen 4.
        let v = judge(&[(a, m(5, &[b])), (b, m(4, &[])), (c, m(5, &[b]))]);
        assert!(v.any);
        assert_eq!(v.generation, 5);
        assert_eq!(v.behind, BTreeSet::from([b]));
        // b came back at 6: nobody is behind.
        let v = judge(&[(a, m(6, &[])), (b, m(6, &[])), (c, m(6, &[]))]);
        assert!(v.behind.is_empty());
        // A replica with no ledger while the others have one missed it.
        let v = judge(&[(a, m(2, &[])), (b, Some(BTreeMap::new())), (c, None)]);
        assert_eq!(v.behind, BTreeSet::from([b, c]));
        // No ledger anywhere: nothing known.
        let v = judge(&[(a, Some(BTreeMap::new())), (b, Some(BTreeMap::new()))]);
        assert!(!v.any);
        assert!(v.behind.is_empty());
    }
}
