//! The stable hash placing keys on partitions. It must give the same answer
//! on every host, in every version of chironfs, forever: it is XXH3-64
//! with seed 0 (a published algorithm), never std's `DefaultHasher`, whose
//! output may change between Rust releases.

use xxhash_rust::xxh3::xxh3_64;

/// Fixed number of partitions (the Dynamo paper's strategy 3: equal-sized
/// partitions, assigned to nodes by the layout). A power of two, so a
/// key's partition is the top bits of its hash. Never changes: stored data
/// is keyed by it.
pub const PARTITIONS: u16 = 256;
const PARTITION_BITS: u32 = 8;

pub type Partition = u16;

/// The 64-bit stable hash of `bytes`.
pub fn stable(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// The partition holding `key`.
pub fn partition_of(key: &[u8]) -> Partition {
    (stable(key) >> (64 - PARTITION_BITS)) as Partition
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_across_builds() {
        // Known XXH3-64 outputs: if these change, every stored key moves.
        assert_eq!(stable(b""), 0x2d06800538d394c2);
        assert_eq!(stable(b"chironfs"), stable(b"chironfs"));
        let p = partition_of(b"replica/0123");
        assert!(p < PARTITIONS);
    }

    #[test]
    fn keys_spread_over_partitions() {
        let mut counts = vec![0u32; PARTITIONS as usize];
        for i in 0..100_000u32 {
            counts[partition_of(format!("/some/path/{i}").as_bytes()) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        // 390 expected per partition; a fair hash stays well within 25%.
        assert!(*min > 290 && *max < 490, "min {min} max {max}");
    }
}
