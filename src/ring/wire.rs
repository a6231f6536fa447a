//! What a ring message is as bytes: postcard encodings of [`Request`] and
//! [`Response`], their size bounds, and the checks of what a decoded one
//! holds (sizes, well-formed versions and layouts, partitions and Merkle
//! positions in range), as pure functions so that all of it can be
//! unit-tested and fuzzed without sockets. How the bytes travel, encrypted,
//! is `noise` (handshake and records) and `transport` (TCP).
//!
//! Lengths are checked before anything is allocated, and what a payload
//! decodes to is checked before the node sees it: a ring node believes
//! what its peers tell it (versions, layouts, hints), so even a peer that
//! holds the secret but is buggy must not be able to make it panic or
//! allocate without bound.

use super::NodeId;
use super::hash::PARTITIONS;
use super::keys::KeyChanged;
use super::msg::{MAX_KEY, MAX_VALUE, Request, Response};
use super::version::{Dvv, Val};

/// Largest frame payload: a few 1 MiB values in an `Entries` response, and
/// room for their keys and versions.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024 + 64 * 1024;
/// Largest number of Merkle hashes one `Tree` request asks for or one
/// `Hashes` response holds: the leaves of one partition.
pub const MAX_HASHES: usize = 256;

/// What was wrong with a handshake message, a record, a frame or a
/// payload, or with the keys of a link.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(
        "the ring secret has {0} bytes, at least {min} are needed",
        min = super::keys::MIN_SECRET_LEN
    )]
    SecretTooShort(usize),
    #[error("length {len} announced, at most {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("message truncated")]
    Truncated,
    #[error("not a chironfs ring handshake")]
    BadMagic,
    #[error(
        "peer speaks ring protocol version {0}, this node speaks {ours}: upgrade every node of the ring together",
        ours = super::noise::PROTOCOL_VERSION
    )]
    Version(u8),
    #[error("bad node id in handshake: {0}")]
    BadNodeId(String),
    #[error("peer claims this node's own id {0}")]
    SelfNamed(NodeId),
    #[error(
        "peer {0} presents this node's own static key (a copy of this node's state directory?)"
    )]
    OwnKey(NodeId),
    #[error("answered as node {got}, not {expected}: wrong address for {expected}?")]
    WrongNode { expected: NodeId, got: NodeId },
    #[error(
        "the peer does not hold this ring's secret (or its last handshake message was altered in transit)"
    )]
    SecretMismatch,
    #[error("{step}: {reason}")]
    Noise { step: &'static str, reason: String },
    #[error("{0}")]
    KeyChanged(#[from] Box<KeyChanged>),
    #[error("record authentication failed: tampered, replayed, reordered or dropped record")]
    BadTag,
    #[error("an earlier record of this link failed")]
    Failed,
    #[error("undecodable message: {0}")]
    Decode(#[source] postcard::Error),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("invalid message: {0}")]
    Invalid(String),
    #[error("cannot encode message: {0}")]
    Encode(#[source] postcard::Error),
    #[error("no randomness for a key: {0}")]
    Random(getrandom::Error),
    #[error("key setup: {0}")]
    Key(String),
}

fn encode<T: serde::Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let payload = postcard::to_stdvec(msg).map_err(WireError::Encode)?;
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::TooLong {
            len: payload.len(),
            max: MAX_PAYLOAD,
        });
    }
    Ok(payload)
}

fn decode<'a, T: serde::Deserialize<'a>>(payload: &'a [u8]) -> Result<T, WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::TooLong {
            len: payload.len(),
            max: MAX_PAYLOAD,
        });
    }
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(WireError::Decode)?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    Ok(msg)
}

/// A request's payload; refused if it would not fit a frame.
pub fn encode_request(req: &Request) -> Result<Vec<u8>, WireError> {
    encode(req)
}

/// A response's payload; refused if it would not fit a frame.
pub fn encode_response(resp: &Response) -> Result<Vec<u8>, WireError> {
    encode(resp)
}

/// Decodes and checks ([`check_request`]) a request's payload.
pub fn decode_request(payload: &[u8]) -> Result<Request, WireError> {
    let req = decode(payload)?;
    check_request(&req)?;
    Ok(req)
}

/// Decodes and checks ([`check_response`]) a response's payload.
pub fn decode_response(payload: &[u8]) -> Result<Response, WireError> {
    let resp = decode(payload)?;
    check_response(&resp)?;
    Ok(resp)
}

fn invalid(what: impl Into<String>) -> WireError {
    WireError::Invalid(what.into())
}

fn check_key(key: &[u8]) -> Result<(), WireError> {
    if key.len() > MAX_KEY {
        return Err(invalid(format!(
            "key of {} bytes, at most {MAX_KEY} allowed",
            key.len()
        )));
    }
    Ok(())
}

fn check_val(val: &Val) -> Result<(), WireError> {
    match val {
        Some(v) if v.len() > MAX_VALUE => Err(invalid(format!(
            "value of {} bytes, at most {MAX_VALUE} allowed",
            v.len()
        ))),
        _ => Ok(()),
    }
}

fn check_dvv(dvv: &Dvv) -> Result<(), WireError> {
    if !dvv.is_valid() {
        return Err(invalid("malformed version"));
    }
    dvv.entries
        .iter()
        .flat_map(|e| &e.values)
        .try_for_each(check_val)
}

fn check_partition(p: u16) -> Result<(), WireError> {
    if p >= PARTITIONS {
        return Err(invalid(format!("partition {p} out of range")));
    }
    Ok(())
}

/// Checks what a decoded request holds: key and value sizes, well-formed
/// versions and layouts, partitions and Merkle positions in range.
pub fn check_request(req: &Request) -> Result<(), WireError> {
    match req {
        Request::Read { key, .. } => check_key(key),
        Request::Write {
            key,
            version,
            hint_for: _,
            layout: _,
        }
        | Request::Purge { key, version }
        | Request::Nudge { key, version } => {
            check_key(key)?;
            check_dvv(version)
        }
        Request::Coordinate {
            key,
            value,
            context,
            layout: _,
        } => {
            check_key(key)?;
            check_val(value)?;
            if context.keys().any(String::is_empty) {
                return Err(invalid("empty actor in context"));
            }
            if context
                .values()
                .any(|&c| c >= crate::ring::version::MAX_COUNTER)
            {
                return Err(invalid("counter out of range in context"));
            }
            Ok(())
        }
        Request::Tree {
            partition,
            level,
            indices,
        } => {
            check_partition(*partition)?;
            let width: u32 = match level {
                0 => 1,
                1 => 16,
                2 => 256,
                _ => return Err(invalid(format!("Merkle level {level} out of range"))),
            };
            if indices.len() > MAX_HASHES {
                return Err(invalid(format!("{} Merkle indices", indices.len())));
            }
            if let Some(i) = indices.iter().find(|&&i| u32::from(i) >= width) {
                return Err(invalid(format!(
                    "Merkle index {i} out of range at level {level}"
                )));
            }
            Ok(())
        }
        Request::Leaf { partition, leaf } => {
            check_partition(*partition)?;
            if *leaf >= 256 {
                return Err(invalid(format!("Merkle leaf {leaf} out of range")));
            }
            Ok(())
        }
        Request::GetLayout | Request::Flush | Request::LeaseGrant { .. } => Ok(()),
        Request::LeaseLeft { hosts } => {
            if hosts.len() > crate::ring::msg::MAX_LEASE_HOSTS {
                return Err(invalid(format!("{} hosts in a lease query", hosts.len())));
            }
            Ok(())
        }
        Request::PutLayout(layout) => layout.check().map_err(WireError::Invalid),
    }
}

/// Checks what a decoded response holds, as [`check_request`] does.
pub fn check_response(resp: &Response) -> Result<(), WireError> {
    match resp {
        Response::Done
        | Response::Refused(_)
        | Response::Version(None)
        | Response::Granted(_)
        | Response::Left(_) => Ok(()),
        Response::Version(Some(dvv)) => check_dvv(dvv),
        Response::Hashes(hashes) => {
            if hashes.len() > MAX_HASHES {
                return Err(invalid(format!("{} Merkle hashes", hashes.len())));
            }
            Ok(())
        }
        Response::Entries(entries) => entries.iter().try_for_each(|(key, dvv)| {
            check_key(key)?;
            check_dvv(dvv)
        }),
        Response::Layout(layout) | Response::StaleLayout(layout) => {
            layout.check().map_err(WireError::Invalid)
        }
    }
}

/// Messages of every kind, for the tests of this module and of `noise`.
#[cfg(test)]
pub(crate) mod samples {
    use super::*;
    use crate::ring::layout::{LayoutHistory, Quorum};
    use crate::ring::version::Entry;

    pub(crate) fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    pub(crate) fn dvv(values: Vec<Val>) -> Dvv {
        Dvv {
            entries: vec![
                Entry {
                    actor: "a".into(),
                    counter: 7,
                    values,
                },
                Entry {
                    actor: "b".into(),
                    counter: 2,
                    values: vec![],
                },
            ],
            anonymous: vec![],
        }
    }

    pub(crate) fn layout() -> LayoutHistory {
        let mut l = LayoutHistory::empty(Quorum::default());
        for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
            l.stage_join(id(n), format!("10.0.0.{i}:7000"));
        }
        l.stage_quorum(Quorum { n: 3, r: 1, w: 3 }).unwrap();
        l.apply(Quorum::default()).unwrap();
        l
    }

    pub(crate) fn requests() -> Vec<Request> {
        vec![
            Request::Read {
                key: b"k".to_vec(),
                layout: 1,
            },
            Request::Write {
                key: vec![0; MAX_KEY],
                version: dvv(vec![Some(vec![1; MAX_VALUE]), None]),
                hint_for: Some(id("c")),
                layout: 1,
            },
            Request::Write {
                key: b"".to_vec(),
                version: Dvv::default(),
                hint_for: None,
                layout: 1,
            },
            Request::Coordinate {
                key: b"/a/b".to_vec(),
                value: Some(b"v".to_vec()),
                context: [("a".to_string(), 3), ("b".to_string(), 1)].into(),
                layout: 1,
            },
            Request::Coordinate {
                key: b"/a/b".to_vec(),
                value: None,
                context: Default::default(),
                layout: 1,
            },
            Request::Tree {
                partition: PARTITIONS - 1,
                level: 2,
                indices: (0..256).collect(),
            },
            Request::Leaf {
                partition: 3,
                leaf: 255,
            },
            Request::Purge {
                key: b"gone".to_vec(),
                version: dvv(vec![None]),
            },
            Request::Nudge {
                key: b"fs/replica/x/h".to_vec(),
                version: dvv(vec![Some(b"{}".to_vec())]),
            },
            Request::Flush,
            Request::LeaseGrant { term_ms: 6000 },
            Request::LeaseLeft {
                hosts: vec![id("a"), id("b")],
            },
            Request::GetLayout,
            Request::PutLayout(Box::new(layout())),
            Request::PutLayout(Box::new(LayoutHistory::empty(Quorum::default()))),
        ]
    }

    pub(crate) fn responses() -> Vec<Response> {
        vec![
            Response::Done,
            Response::Version(None),
            Response::Version(Some(dvv(vec![Some(b"x".to_vec())]))),
            Response::Hashes(vec![u64::MAX; MAX_HASHES]),
            Response::Entries(vec![
                (b"k1".to_vec(), dvv(vec![Some(vec![2; MAX_VALUE])])),
                (b"k2".to_vec(), dvv(vec![Some(vec![3; MAX_VALUE])])),
                (b"k3".to_vec(), dvv(vec![Some(vec![4; MAX_VALUE])])),
                (b"k4".to_vec(), dvv(vec![Some(vec![5; MAX_VALUE])])),
            ]),
            Response::Layout(Box::new(layout())),
            Response::StaleLayout(Box::new(layout())),
            Response::Refused("no".into()),
            Response::Granted(6000),
            Response::Left(u64::MAX),
        ]
    }

    /// xorshift64*: deterministic, so a failure reproduces.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;

    #[test]
    fn every_request_and_response_round_trips() {
        for req in requests() {
            let payload = encode_request(&req).unwrap();
            assert_eq!(decode_request(&payload).unwrap(), req);
        }
        for resp in responses() {
            let payload = encode_response(&resp).unwrap();
            assert_eq!(decode_response(&payload).unwrap(), resp);
        }
    }

    #[test]
    fn payloads_over_the_bound_are_refused() {
        let huge = Response::Entries(
            (0..5)
                .map(|i| (vec![i], dvv(vec![Some(vec![0; MAX_VALUE])])))
                .collect(),
        );
        assert!(matches!(
            encode_response(&huge),
            Err(WireError::TooLong { .. })
        ));
        assert!(matches!(
            decode_request(&vec![0; MAX_PAYLOAD + 1]),
            Err(WireError::TooLong { .. })
        ));
    }

    #[test]
    fn decoded_messages_are_checked() {
        let bad_requests = [
            Request::Read {
                key: vec![0; MAX_KEY + 1],
                layout: 1,
            },
            Request::Write {
                key: b"k".to_vec(),
                version: dvv(vec![Some(vec![0; MAX_VALUE + 1])]),
                hint_for: None,
                layout: 1,
            },
            Request::Write {
                key: b"k".to_vec(),
                version: Dvv::new_write(&Default::default(), None),
                hint_for: None,
                layout: 1,
            },
            Request::Purge {
                key: b"k".to_vec(),
                version: dvv(vec![None; 8]),
            },
            Request::Coordinate {
                key: b"k".to_vec(),
                value: Some(vec![0; MAX_VALUE + 1]),
                context: Default::default(),
                layout: 1,
            },
            Request::Coordinate {
                key: b"k".to_vec(),
                value: None,
                context: [(String::new(), 1)].into(),
                layout: 1,
            },
            Request::Tree {
                partition: PARTITIONS,
                level: 0,
                indices: vec![0],
            },
            Request::Tree {
                partition: 0,
                level: 3,
                indices: vec![],
            },
            Request::Tree {
                partition: 0,
                level: 1,
                indices: vec![16],
            },
            Request::Tree {
                partition: 0,
                level: 2,
                indices: vec![0; MAX_HASHES + 1],
            },
            Request::Leaf {
                partition: 0,
                leaf: 256,
            },
            Request::PutLayout(Box::new({
                let mut l = layout();
                l.current.owners[0].clear();
                l
            })),
        ];
        for req in bad_requests {
            let payload = encode_request(&req).unwrap();
            assert!(
                matches!(decode_request(&payload), Err(WireError::Invalid(_))),
                "{:?}",
                decode_request(&payload)
            );
        }
        let bad_responses = [
            Response::Version(Some(Dvv::new_write(&Default::default(), None))),
            Response::Hashes(vec![0; MAX_HASHES + 1]),
            Response::Entries(vec![(vec![0; MAX_KEY + 1], Dvv::default())]),
            Response::Layout(Box::new({
                let mut l = layout();
                l.current.n = 0;
                l
            })),
            // A quorum that breaks R + W > N.
            Response::Layout(Box::new({
                let mut l = layout();
                l.current.w = 1;
                l
            })),
        ];
        for resp in bad_responses {
            let payload = encode_response(&resp).unwrap();
            assert!(matches!(
                decode_response(&payload),
                Err(WireError::Invalid(_))
            ));
        }
        let mut trailing = encode_request(&Request::GetLayout).unwrap();
        trailing.push(0);
        assert!(matches!(
            decode_request(&trailing),
            Err(WireError::Trailing(1))
        ));
        assert!(decode_request(&[]).is_err());
        assert!(decode_response(&[200]).is_err());
    }

    /// Random bytes and mutated valid payloads straight into the decoders
    /// (an authenticated but buggy or hostile peer): never a panic, and
    /// whatever passes is sound and encodes back to itself.
    #[test]
    fn fuzz_decoders() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let small_requests: Vec<Vec<u8>> = requests()
            .iter()
            .map(|r| encode_request(r).unwrap())
            .filter(|p| p.len() < 4096)
            .collect();
        let small_responses: Vec<Vec<u8>> = responses()
            .iter()
            .map(|r| encode_response(r).unwrap())
            .filter(|p| p.len() < 4096)
            .collect();
        let mut refused = 0u32;
        for round in 0..100_000u32 {
            let input = match round % 3 {
                0 => {
                    let n = rng.below(300);
                    rng.bytes(n)
                }
                1 | 2 => {
                    let pool = if round % 3 == 1 {
                        &small_requests
                    } else {
                        &small_responses
                    };
                    let mut p = pool[rng.below(pool.len())].clone();
                    for _ in 0..1 + rng.below(3) {
                        let bit = rng.below(p.len() * 8);
                        p[bit / 8] ^= 1 << (bit % 8);
                    }
                    if rng.below(4) == 0 {
                        p.truncate(rng.below(p.len() + 1));
                    }
                    p
                }
                _ => unreachable!(),
            };
            match decode_request(&input) {
                Ok(req) => {
                    check_request(&req).unwrap();
                    assert_eq!(decode_request(&encode_request(&req).unwrap()).unwrap(), req);
                }
                Err(_) => refused += 1,
            }
            if let Ok(resp) = decode_response(&input) {
                check_response(&resp).unwrap();
                assert_eq!(
                    decode_response(&encode_response(&resp).unwrap()).unwrap(),
                    resp
                );
            }
        }
        assert!(refused > 50_000, "only {refused} inputs refused");
    }
}
