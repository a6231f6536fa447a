//! Option values with their own syntax.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Which in-sync replica an open binds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadPolicy {
    /// Rotate over the in-sync replicas, one step per open.
    RoundRobin,
    /// The first in-sync replica in the order given.
    Priority,
    /// The in-sync replica with the fewest requests in flight.
    LeastBusy,
}

/// What stays on a path changed by two hosts on disjoint replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    Newest,
    KeepBoth,
    Manual,
}

/// How many replicas must apply a mutation for it to succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteQuorum {
    Count(usize),
    Majority,
    All,
}

impl WriteQuorum {
    /// The number of successes needed with `replicas` replicas configured.
    pub fn needed(self, replicas: usize) -> usize {
        match self {
            WriteQuorum::Count(n) => n.min(replicas).max(1),
            WriteQuorum::Majority => replicas / 2 + 1,
            WriteQuorum::All => replicas,
        }
    }
}

impl<'de> Deserialize<'de> for WriteQuorum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = WriteQuorum;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of replicas (1 or more), \"majority\" or \"all\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WriteQuorum, E> {
                if v >= 1 {
                    Ok(WriteQuorum::Count(v as usize))
                } else {
                    Err(E::invalid_value(de::Unexpected::Signed(v), &self))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WriteQuorum, E> {
                self.visit_i64(v.min(i64::MAX as u64) as i64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WriteQuorum, E> {
                match v {
                    "majority" => Ok(WriteQuorum::Majority),
                    "all" => Ok(WriteQuorum::All),
                    _ => match v.parse::<i64>() {
                        Ok(n) => self.visit_i64(n),
                        Err(_) => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                    },
                }
            }
        }
        d.deserialize_any(V)
    }
}
