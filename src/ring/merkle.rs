//! Merkle trees over one ring partition, for anti-entropy that exchanges
//! only what differs (Dynamo section 4.7).
//!
//! Three levels: 256 leaves (a key's leaf is the low byte of its stable
//! hash), 16 inner nodes of 16 leaves each, one root. A leaf's hash is the
//! wrapping sum of its entries' hashes (each entry: key and encoded
//! version), so it does not depend on scan order; an empty leaf is 0.

use super::hash;
use super::version::Dvv;

pub const LEAVES: usize = 256;
pub const FANOUT: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub root: u64,
    pub inner: [u64; FANOUT],
    pub leaves: Vec<u64>,
}

/// The leaf of `key`.
pub fn leaf_of(key: &[u8]) -> u16 {
    (hash::stable(key) & 0xff) as u16
}

fn entry_hash(key: &[u8], version: &Dvv) -> u64 {
    let mut bytes = postcard::to_stdvec(version).unwrap_or_default();
    bytes.extend_from_slice(&(key.len() as u64).to_be_bytes());
    bytes.extend_from_slice(key);
    hash::stable(&bytes)
}

impl Tree {
    pub fn build<'a>(entries: impl IntoIterator<Item = (&'a [u8], &'a Dvv)>) -> Tree {
        let mut leaves = vec![0u64; LEAVES];
        for (key, version) in entries {
            let l = leaf_of(key) as usize;
            leaves[l] = leaves[l].wrapping_add(entry_hash(key, version));
        }
        let mut inner = [0u64; FANOUT];
        for (i, slot) in inner.iter_mut().enumerate() {
            *slot = hash_words(&leaves[i * FANOUT..(i + 1) * FANOUT]);
        }
        Tree {
            root: hash_words(&inner),
            inner,
            leaves,
        }
    }

    /// The hashes at `level` (0 root, 1 inner, 2 leaves) for `indices`;
    /// `None` if an index is out of range.
    pub fn hashes(&self, level: u8, indices: &[u16]) -> Option<Vec<u64>> {
        let all: &[u64] = match level {
            0 => std::slice::from_ref(&self.root),
            1 => &self.inner,
            2 => &self.leaves,
            _ => return None,
        };
        indices
            .iter()
            .map(|&i| all.get(i as usize).copied())
            .collect()
    }
}

fn hash_words(words: &[u64]) -> u64 {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    hash::stable(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::version::Context;

    #[test]
    fn one_changed_key_changes_one_leaf_and_its_path() {
        let v = Dvv::new_write(&Context::new(), Some(b"x".to_vec())).update(&Dvv::default(), "a");
        let keys: Vec<Vec<u8>> = (0..1000).map(|i| format!("k{i}").into_bytes()).collect();
        let a = Tree::build(keys.iter().map(|k| (k.as_slice(), &v)));
        let b = Tree::build(keys.iter().rev().map(|k| (k.as_slice(), &v)));
        assert_eq!(a, b, "order does not matter");
        let v2 = Dvv::new_write(&v.context(), Some(b"y".to_vec())).update(&v, "a");
        let c = Tree::build(
            keys.iter()
                .map(|k| (k.as_slice(), if k == b"k7" { &v2 } else { &v })),
        );
        assert_ne!(a.root, c.root);
        let l = leaf_of(b"k7") as usize;
        let diff: Vec<usize> = (0..LEAVES)
            .filter(|&i| a.leaves[i] != c.leaves[i])
            .collect();
        assert_eq!(diff, vec![l]);
        let diff: Vec<usize> = (0..FANOUT).filter(|&i| a.inner[i] != c.inner[i]).collect();
        assert_eq!(diff, vec![l / FANOUT]);
        assert_eq!(a.hashes(3, &[0]), None);
        assert_eq!(a.hashes(1, &[16]), None);
    }
}
