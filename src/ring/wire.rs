//! What travels on a ring link (see `transport`), as pure functions of
//! bytes, so that all of it can be unit-tested and fuzzed without sockets.
//!
//! Every host of a ring holds the same secret. A link starts with a mutual
//! handshake proving that both ends hold it, then carries frames that each
//! end authenticates, because a ring node believes what its peers tell it
//! (versions, layouts, hints): a forged message would corrupt metadata.
//! Frames are authenticated, not encrypted.
//!
//! Handshake (every message: a 4-byte big-endian length, then the body):
//!
//! 1. client: `Hello` = magic, protocol version, a random nonce, its id;
//! 2. server: its own `Hello`, then HMAC(secret, "server" ‖ transcript),
//!    where the transcript is both nonces and both ids;
//! 3. client: HMAC(secret, "client" ‖ transcript).
//!
//! Each side sends its proof only after checking the other's, the labels
//! keep one side's proof from serving as the other's, and the fresh nonces
//! keep an old handshake from being replayed. Both sides then derive one
//! key per direction from the secret and the transcript.
//!
//! A frame is a 4-byte big-endian payload length, the payload (a postcard
//! [`Request`] or [`Response`]), and HMAC(key of that direction, sequence
//! number ‖ payload). The sequence number counts the frames of a direction
//! from 0 and is never sent: a replayed, reordered, dropped or altered
//! frame fails its tag, and the receiver gives up on the link at the first
//! failure. Lengths are checked before anything is allocated, and what a
//! payload decodes to is checked (sizes, well-formed versions and layouts)
//! before the node sees it.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::NodeId;
use super::hash::PARTITIONS;
use super::msg::{MAX_KEY, MAX_VALUE, Request, Response};
use super::version::{Dvv, Val};

type HmacSha256 = Hmac<Sha256>;

/// The protocol this code speaks; a peer announcing another one is refused.
/// 2: layouts carry each version's R and W (and a staged quorum), so a
/// node of version 1 could not decode them: every node of a ring must be
/// upgraded together.
pub const PROTOCOL_VERSION: u8 = 2;
/// Shortest ring secret accepted.
pub const MIN_SECRET_LEN: usize = 16;
pub const NONCE_LEN: usize = 32;
/// Length of an HMAC-SHA256 tag or proof.
pub const TAG_LEN: usize = 32;
/// Length of the length prefix of handshake messages and frames.
pub const HEADER_LEN: usize = 4;
/// Largest handshake message body (the largest is the server's: 134 bytes).
pub const MAX_HANDSHAKE: usize = 256;
/// Largest frame payload: a few 1 MiB values in an `Entries` response, and
/// room for their keys and versions.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024 + 64 * 1024;
/// Largest number of Merkle hashes one `Tree` request asks for or one
/// `Hashes` response holds: the leaves of one partition.
pub const MAX_HASHES: usize = 256;

const MAGIC: &[u8; 4] = b"CHRG";
const LABEL_SERVER: &[u8] = b"chironfs ring v1 server proof\0";
const LABEL_CLIENT: &[u8] = b"chironfs ring v1 client proof\0";
const LABEL_KEY_TO_SERVER: &[u8] = b"chironfs ring v1 key client to server\0";
const LABEL_KEY_TO_CLIENT: &[u8] = b"chironfs ring v1 key server to client\0";

/// What was wrong with a handshake message, a frame or a payload.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the ring secret has {0} bytes, at least {MIN_SECRET_LEN} are needed")]
    SecretTooShort(usize),
    #[error("length {len} announced, at most {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("message truncated")]
    Truncated,
    #[error("not a chironfs ring handshake")]
    BadMagic,
    #[error("peer speaks ring protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    Version(u8),
    #[error("bad node id in handshake: {0}")]
    BadNodeId(String),
    #[error("peer claims this node's own id {0}")]
    SelfNamed(NodeId),
    #[error("handshake proof does not match: the peer does not hold this ring's secret")]
    BadProof,
    #[error("frame authentication failed: tampered, replayed, reordered or dropped frame")]
    BadTag,
    #[error("an earlier frame of this link failed")]
    Failed,
    #[error("frame sequence numbers exhausted")]
    SequenceExhausted,
    #[error("undecodable message: {0}")]
    Decode(#[source] postcard::Error),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("invalid message: {0}")]
    Invalid(String),
    #[error("cannot encode message: {0}")]
    Encode(#[source] postcard::Error),
    #[error("no randomness for the handshake nonce: {0}")]
    Random(getrandom::Error),
    #[error("HMAC refused the key")]
    Key,
}

/// The ring's shared secret: at least [`MIN_SECRET_LEN`] bytes, used as
/// given. Cheap to clone; never printed.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(bytes: &[u8]) -> Result<Secret, WireError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(WireError::SecretTooShort(bytes.len()));
        }
        Ok(Secret(bytes.into()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A keyed HMAC, ready to be cloned for each message.
fn keyed(key: &[u8]) -> Result<HmacSha256, WireError> {
    HmacSha256::new_from_slice(key).map_err(|_| WireError::Key)
}

fn prf(secret: &Secret, label: &[u8], transcript: &[u8]) -> Result<[u8; TAG_LEN], WireError> {
    let mut mac = keyed(&secret.0)?;
    mac.update(label);
    mac.update(transcript);
    Ok(mac.finalize().into_bytes().into())
}

fn verify(secret: &Secret, label: &[u8], transcript: &[u8], proof: &[u8]) -> Result<(), WireError> {
    let mut mac = keyed(&secret.0)?;
    mac.update(label);
    mac.update(transcript);
    mac.verify_slice(proof).map_err(|_| WireError::BadProof)
}

/// Both nonces and both ids, each id prefixed by its length so that no two
/// handshakes share a transcript.
fn transcript(
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    client: &NodeId,
    server: &NodeId,
) -> Vec<u8> {
    let mut t = Vec::with_capacity(2 * NONCE_LEN + 2 + 128);
    t.extend_from_slice(client_nonce);
    t.extend_from_slice(server_nonce);
    for id in [client, server] {
        t.push(id.as_str().len() as u8);
        t.extend_from_slice(id.as_str().as_bytes());
    }
    t
}

fn nonce() -> Result<[u8; NONCE_LEN], WireError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(WireError::Random)?;
    Ok(n)
}

/// Prefixes a body with its length.
fn with_header(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads fixed fields off a handshake body.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.0.len()))
        }
    }
}

/// Magic, version, nonce, id length, id.
fn put_hello(out: &mut Vec<u8>, nonce: &[u8; NONCE_LEN], id: &NodeId) {
    out.extend_from_slice(MAGIC);
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(nonce);
    out.push(id.as_str().len() as u8);
    out.extend_from_slice(id.as_str().as_bytes());
}

fn take_hello(f: &mut Fields<'_>) -> Result<([u8; NONCE_LEN], NodeId), WireError> {
    if f.take(MAGIC.len())? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = f.take(1)?[0];
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version(version));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(f.take(NONCE_LEN)?);
    let len = f.take(1)?[0] as usize;
    let name =
        std::str::from_utf8(f.take(len)?).map_err(|_| WireError::BadNodeId("not UTF-8".into()))?;
    let id = NodeId::new(name).map_err(WireError::BadNodeId)?;
    Ok((nonce, id))
}

/// Length of the handshake message body announced by `header`.
pub fn handshake_len(header: [u8; HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_HANDSHAKE {
        return Err(WireError::TooLong {
            len,
            max: MAX_HANDSHAKE,
        });
    }
    Ok(len)
}

/// The client's side of the handshake.
pub struct ClientHandshake {
    secret: Secret,
    me: NodeId,
    nonce: [u8; NONCE_LEN],
}

impl ClientHandshake {
    /// Starts a handshake: the state, and the `Hello` message to send
    /// (with its length prefix).
    pub fn start(secret: &Secret, me: &NodeId) -> Result<(ClientHandshake, Vec<u8>), WireError> {
        Ok(ClientHandshake::with_nonce(secret, me, nonce()?))
    }

    fn with_nonce(
        secret: &Secret,
        me: &NodeId,
        nonce: [u8; NONCE_LEN],
    ) -> (ClientHandshake, Vec<u8>) {
        let mut body = Vec::with_capacity(MAX_HANDSHAKE);
        put_hello(&mut body, &nonce, me);
        let state = ClientHandshake {
            secret: secret.clone(),
            me: me.clone(),
            nonce,
        };
        (state, with_header(&body))
    }

    /// Checks the server's answer (its body, without the length prefix):
    /// gives the proof message to send back and the session, whose peer is
    /// the server's authenticated id. The caller checks that this is the
    /// node it meant to reach.
    pub fn finish(self, server_hello: &[u8]) -> Result<(Vec<u8>, Session), WireError> {
        let mut f = Fields(server_hello);
        let (server_nonce, server) = take_hello(&mut f)?;
        let proof = f.take(TAG_LEN)?;
        f.end()?;
        let t = transcript(&self.nonce, &server_nonce, &self.me, &server);
        verify(&self.secret, LABEL_SERVER, &t, proof)?;
        if server == self.me {
            return Err(WireError::SelfNamed(server));
        }
        let mine = prf(&self.secret, LABEL_CLIENT, &t)?;
        let session = Session::new(
            server,
            &prf(&self.secret, LABEL_KEY_TO_SERVER, &t)?,
            &prf(&self.secret, LABEL_KEY_TO_CLIENT, &t)?,
        )?;
        Ok((with_header(&mine), session))
    }
}

/// The server's side of the handshake, between its answer and the client's
/// proof.
pub struct ServerHandshake {
    secret: Secret,
    claimed: NodeId,
    transcript: Vec<u8>,
}

impl ServerHandshake {
    /// Answers a client's `Hello` (its body, without the length prefix):
    /// the state, and the answer to send (with its length prefix).
    pub fn accept(
        secret: &Secret,
        me: &NodeId,
        client_hello: &[u8],
    ) -> Result<(ServerHandshake, Vec<u8>), WireError> {
        ServerHandshake::with_nonce(secret, me, client_hello, nonce()?)
    }

    fn with_nonce(
        secret: &Secret,
        me: &NodeId,
        client_hello: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<(ServerHandshake, Vec<u8>), WireError> {
        let mut f = Fields(client_hello);
        let (client_nonce, client) = take_hello(&mut f)?;
        f.end()?;
        if client == *me {
            return Err(WireError::SelfNamed(client));
        }
        let t = transcript(&client_nonce, &nonce, &client, me);
        let mut body = Vec::with_capacity(MAX_HANDSHAKE);
        put_hello(&mut body, &nonce, me);
        body.extend_from_slice(&prf(secret, LABEL_SERVER, &t)?);
        let state = ServerHandshake {
            secret: secret.clone(),
            claimed: client,
            transcript: t,
        };
        Ok((state, with_header(&body)))
    }

    /// The id the client claims, not yet proven (for logs).
    pub fn claimed_peer(&self) -> &NodeId {
        &self.claimed
    }

    /// Checks the client's proof (its body, without the length prefix):
    /// gives the session, whose peer is the client's authenticated id.
    pub fn finish(self, client_proof: &[u8]) -> Result<Session, WireError> {
        let mut f = Fields(client_proof);
        let proof = f.take(TAG_LEN)?;
        f.end()?;
        verify(&self.secret, LABEL_CLIENT, &self.transcript, proof)?;
        Session::new(
            self.claimed,
            &prf(&self.secret, LABEL_KEY_TO_CLIENT, &self.transcript)?,
            &prf(&self.secret, LABEL_KEY_TO_SERVER, &self.transcript)?,
        )
    }
}

/// One direction of a link: its key and the number of its next frame.
struct Direction {
    mac: HmacSha256,
    seq: u64,
}

impl Direction {
    fn new(key: &[u8; TAG_LEN]) -> Result<Direction, WireError> {
        Ok(Direction {
            mac: keyed(key)?,
            seq: 0,
        })
    }

    fn mac_of(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(&self.seq.to_be_bytes());
        mac.update(payload);
        mac
    }

    fn advance(&mut self) -> Result<(), WireError> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(WireError::SequenceExhausted)?;
        Ok(())
    }
}

/// An authenticated link, after the handshake: seals the frames this end
/// sends and opens the ones it receives, in order.
pub struct Session {
    peer: NodeId,
    send: Direction,
    recv: Direction,
    failed: bool,
}

impl Session {
    fn new(
        peer: NodeId,
        send_key: &[u8; TAG_LEN],
        recv_key: &[u8; TAG_LEN],
    ) -> Result<Session, WireError> {
        Ok(Session {
            peer,
            send: Direction::new(send_key)?,
            recv: Direction::new(recv_key)?,
            failed: false,
        })
    }

    /// The other end's authenticated id.
    pub fn peer(&self) -> &NodeId {
        &self.peer
    }

    /// The whole frame (length, payload, tag) carrying `payload`.
    pub fn seal(&mut self, payload: &[u8]) -> Result<Vec<u8>, WireError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(WireError::TooLong {
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        let tag = self.send.mac_of(payload).finalize().into_bytes();
        self.send.advance()?;
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.extend_from_slice(&tag);
        Ok(frame)
    }

    /// Checks the next frame's body (payload and tag, as [`body_len`]
    /// measured it) and gives its payload. After a failure every later
    /// frame fails too: the link is to be dropped.
    pub fn open<'b>(&mut self, body: &'b [u8]) -> Result<&'b [u8], WireError> {
        if self.failed {
            return Err(WireError::Failed);
        }
        self.failed = true;
        let Some(len) = body.len().checked_sub(TAG_LEN) else {
            return Err(WireError::Truncated);
        };
        if len > MAX_PAYLOAD {
            return Err(WireError::TooLong {
                len,
                max: MAX_PAYLOAD,
            });
        }
        let (payload, tag) = body.split_at(len);
        self.recv
            .mac_of(payload)
            .verify_slice(tag)
            .map_err(|_| WireError::BadTag)?;
        self.recv.advance()?;
        self.failed = false;
        Ok(payload)
    }
}

/// Length of the frame body (payload and tag) announced by `header`,
/// refused above the maximum before anything is allocated for it.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLong {
            len,
            max: MAX_PAYLOAD,
        });
    }
    Ok(len + TAG_LEN)
}

/// The first frame in `buf`: its body (to [`Session::open`]) and the bytes
/// it takes, or `None` if `buf` holds only part of it.
pub fn split_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = body_len(*header)?;
    Ok(buf
        .get(HEADER_LEN..HEADER_LEN + len)
        .map(|body| (body, HEADER_LEN + len)))
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
        Request::Read { key } => check_key(key),
        Request::Write {
            key,
            version,
            hint_for: _,
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
        Request::GetLayout | Request::Flush => Ok(()),
        Request::PutLayout(layout) => layout.check().map_err(WireError::Invalid),
    }
}

/// Checks what a decoded response holds, as [`check_request`] does.
pub fn check_response(resp: &Response) -> Result<(), WireError> {
    match resp {
        Response::Done | Response::Refused(_) | Response::Version(None) => Ok(()),
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
        Response::Layout(layout) => layout.check().map_err(WireError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::layout::{LayoutHistory, Quorum};
    use crate::ring::version::Entry;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn secret(s: &str) -> Secret {
        Secret::new(format!("{s:0>16}").as_bytes()).unwrap()
    }

    /// A client session to "server" and the server's session to "client".
    fn pair() -> (Session, Session) {
        let s = secret("shared");
        let (client, hello) = ClientHandshake::start(&s, &id("client")).unwrap();
        let (server, answer) =
            ServerHandshake::accept(&s, &id("server"), &hello[HEADER_LEN..]).unwrap();
        assert_eq!(server.claimed_peer(), &id("client"));
        let (proof, c) = client.finish(&answer[HEADER_LEN..]).unwrap();
        let srv = server.finish(&proof[HEADER_LEN..]).unwrap();
        assert_eq!(c.peer(), &id("server"));
        assert_eq!(srv.peer(), &id("client"));
        (c, srv)
    }

    fn dvv(values: Vec<Val>) -> Dvv {
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

    fn layout() -> LayoutHistory {
        let mut l = LayoutHistory::empty(Quorum::default());
        for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
            l.stage_join(id(n), format!("10.0.0.{i}:7000"));
        }
        l.stage_quorum(Quorum { n: 3, r: 1, w: 3 }).unwrap();
        l.apply(Quorum::default()).unwrap();
        l
    }

    fn requests() -> Vec<Request> {
        vec![
            Request::Read { key: b"k".to_vec() },
            Request::Write {
                key: vec![0; MAX_KEY],
                version: dvv(vec![Some(vec![1; MAX_VALUE]), None]),
                hint_for: Some(id("c")),
            },
            Request::Write {
                key: b"".to_vec(),
                version: Dvv::default(),
                hint_for: None,
            },
            Request::Coordinate {
                key: b"/a/b".to_vec(),
                value: Some(b"v".to_vec()),
                context: [("a".to_string(), 3), ("b".to_string(), 1)].into(),
            },
            Request::Coordinate {
                key: b"/a/b".to_vec(),
                value: None,
                context: Default::default(),
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
            Request::GetLayout,
            Request::PutLayout(Box::new(layout())),
            Request::PutLayout(Box::new(LayoutHistory::empty(Quorum::default()))),
        ]
    }

    fn responses() -> Vec<Response> {
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
            Response::Refused("no".into()),
        ]
    }

    /// Every frame of `stream`, all or nothing: a partial frame at the end
    /// is an error, as it is on a closed connection.
    fn open_all(session: &mut Session, mut stream: &[u8]) -> Result<Vec<Vec<u8>>, WireError> {
        let mut out = Vec::new();
        while !stream.is_empty() {
            let (body, used) = split_frame(stream)?.ok_or(WireError::Truncated)?;
            out.push(session.open(body)?.to_vec());
            stream = &stream[used..];
        }
        Ok(out)
    }

    #[test]
    fn every_request_and_response_round_trips() {
        let (mut c, mut s) = pair();
        for req in requests() {
            let frame = c.seal(&encode_request(&req).unwrap()).unwrap();
            let payload = open_all(&mut s, &frame).unwrap();
            assert_eq!(decode_request(&payload[0]).unwrap(), req);
        }
        for resp in responses() {
            let frame = s.seal(&encode_response(&resp).unwrap()).unwrap();
            let payload = open_all(&mut c, &frame).unwrap();
            assert_eq!(decode_response(&payload[0]).unwrap(), resp);
        }
    }

    #[test]
    fn wrong_secret_fails_the_handshake_on_both_sides() {
        let (good, bad) = (secret("good"), secret("bad"));
        // The client checks the server first.
        let (client, hello) = ClientHandshake::start(&bad, &id("c")).unwrap();
        let (_, answer) = ServerHandshake::accept(&good, &id("s"), &hello[HEADER_LEN..]).unwrap();
        assert!(matches!(
            client.finish(&answer[HEADER_LEN..]),
            Err(WireError::BadProof)
        ));
        // A client that got past a server of its own (same nonce, wrong
        // secret) cannot convince the real one.
        let (client, hello) = ClientHandshake::start(&bad, &id("c")).unwrap();
        let n = [9; NONCE_LEN];
        let (real, _) =
            ServerHandshake::with_nonce(&good, &id("s"), &hello[HEADER_LEN..], n).unwrap();
        let (_, fake) =
            ServerHandshake::with_nonce(&bad, &id("s"), &hello[HEADER_LEN..], n).unwrap();
        let (proof, _) = client.finish(&fake[HEADER_LEN..]).unwrap();
        assert!(matches!(
            real.finish(&proof[HEADER_LEN..]),
            Err(WireError::BadProof)
        ));
    }

    #[test]
    fn every_tampered_handshake_message_fails() {
        let s = secret("shared");
        let cn = [1; NONCE_LEN];
        let sn = [2; NONCE_LEN];
        let (_, hello) = ClientHandshake::with_nonce(&s, &id("c"), cn);
        let (_, answer) =
            ServerHandshake::with_nonce(&s, &id("s"), &hello[HEADER_LEN..], sn).unwrap();
        let (client, _) = ClientHandshake::with_nonce(&s, &id("c"), cn);
        let (proof, _) = client.finish(&answer[HEADER_LEN..]).unwrap();
        for bit in HEADER_LEN * 8..hello.len() * 8 {
            // A client hello altered in flight: the server may answer, but
            // the client's proof (over what it really sent) does not match.
            let mut h = hello.clone();
            h[bit / 8] ^= 1 << (bit % 8);
            if let Ok((server, _)) = ServerHandshake::with_nonce(&s, &id("s"), &h[HEADER_LEN..], sn)
            {
                assert!(server.finish(&proof[HEADER_LEN..]).is_err(), "bit {bit}");
            }
        }
        for bit in HEADER_LEN * 8..answer.len() * 8 {
            let mut a = answer.clone();
            a[bit / 8] ^= 1 << (bit % 8);
            let (client, _) = ClientHandshake::with_nonce(&s, &id("c"), cn);
            assert!(client.finish(&a[HEADER_LEN..]).is_err(), "bit {bit}");
        }
        for bit in HEADER_LEN * 8..proof.len() * 8 {
            let mut p = proof.clone();
            p[bit / 8] ^= 1 << (bit % 8);
            let (server, _) =
                ServerHandshake::with_nonce(&s, &id("s"), &hello[HEADER_LEN..], sn).unwrap();
            assert!(matches!(
                server.finish(&p[HEADER_LEN..]),
                Err(WireError::BadProof)
            ));
        }
        // Truncated messages.
        for cut in HEADER_LEN..answer.len() {
            let (client, _) = ClientHandshake::with_nonce(&s, &id("c"), cn);
            assert!(client.finish(&answer[HEADER_LEN..cut]).is_err());
        }
        let (server, _) =
            ServerHandshake::with_nonce(&s, &id("s"), &hello[HEADER_LEN..], sn).unwrap();
        assert!(server.finish(&proof[HEADER_LEN..proof.len() - 1]).is_err());
    }

    #[test]
    fn handshake_refuses_other_versions_self_names_and_bad_ids() {
        let s = secret("shared");
        let (_, hello) = ClientHandshake::start(&s, &id("me")).unwrap();
        let body = &hello[HEADER_LEN..];
        assert!(matches!(
            ServerHandshake::accept(&s, &id("me"), body),
            Err(WireError::SelfNamed(_))
        ));
        // A node of the previous version (layouts without R and W).
        let mut v1 = body.to_vec();
        v1[MAGIC.len()] = 1;
        assert!(matches!(
            ServerHandshake::accept(&s, &id("x"), &v1),
            Err(WireError::Version(1))
        ));
        let mut magic = body.to_vec();
        magic[0] = b'X';
        assert!(matches!(
            ServerHandshake::accept(&s, &id("x"), &magic),
            Err(WireError::BadMagic)
        ));
        let mut bad_id = body.to_vec();
        let last = bad_id.len() - 1;
        bad_id[last] = b'/';
        assert!(matches!(
            ServerHandshake::accept(&s, &id("x"), &bad_id),
            Err(WireError::BadNodeId(_))
        ));
        let mut long = body.to_vec();
        long.push(0);
        assert!(matches!(
            ServerHandshake::accept(&s, &id("x"), &long),
            Err(WireError::Trailing(1))
        ));
        // A server answering, with the secret, under the client's own name.
        let (cn, sn) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        let (client, _) = ClientHandshake::with_nonce(&s, &id("me"), cn);
        let mut answer = Vec::new();
        put_hello(&mut answer, &sn, &id("me"));
        let t = transcript(&cn, &sn, &id("me"), &id("me"));
        answer.extend_from_slice(&prf(&s, LABEL_SERVER, &t).unwrap());
        assert!(matches!(
            client.finish(&answer),
            Err(WireError::SelfNamed(_))
        ));
        assert!(handshake_len((MAX_HANDSHAKE as u32 + 1).to_be_bytes()).is_err());
        assert!(Secret::new(b"short").is_err());
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_frame_fails() {
        let req = Request::Coordinate {
            key: b"/x".to_vec(),
            value: Some(b"hello".to_vec()),
            context: [("a".to_string(), 1)].into(),
        };
        let (up, down) = ([1; TAG_LEN], [2; TAG_LEN]);
        let mut c = Session::new(id("s"), &up, &down).unwrap();
        // Not the first frame of the link, to cover the sequence number.
        let first = c.seal(b"first").unwrap();
        let frame = c.seal(&encode_request(&req).unwrap()).unwrap();
        for bit in 0..frame.len() * 8 {
            let mut s = Session::new(id("c"), &down, &up).unwrap();
            open_all(&mut s, &first).unwrap();
            let mut f = frame.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            assert!(open_all(&mut s, &f).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn replayed_reordered_and_truncated_frames_fail() {
        let (mut c, mut s) = pair();
        let f0 = c.seal(b"zero").unwrap();
        let f1 = c.seal(b"one").unwrap();
        assert_eq!(open_all(&mut s, &f0).unwrap(), vec![b"zero".to_vec()]);
        assert!(matches!(open_all(&mut s, &f0), Err(WireError::BadTag)));
        // The session is dead after a failure, even for the right frame.
        assert!(matches!(open_all(&mut s, &f1), Err(WireError::Failed)));

        let (mut c, mut s) = pair();
        let _dropped = c.seal(b"zero").unwrap();
        let f1 = c.seal(b"one").unwrap();
        assert!(matches!(open_all(&mut s, &f1), Err(WireError::BadTag)));

        // A frame sent the other way is not valid in this direction.
        let (mut c, mut s) = pair();
        let up = c.seal(b"up").unwrap();
        assert!(open_all(&mut c, &up).is_err());
        assert_eq!(open_all(&mut s, &up).unwrap(), vec![b"up".to_vec()]);

        let (mut c, _) = pair();
        let f = c.seal(b"payload").unwrap();
        for cut in 0..f.len() {
            let (_, mut s) = pair();
            assert!(split_frame(&f[..cut]).unwrap().is_none());
            assert!(open_all(&mut s, &f[..cut]).is_err() || cut == 0);
        }
    }

    #[test]
    fn huge_lengths_are_refused_before_allocating() {
        for len in [MAX_PAYLOAD as u32 + 1, u32::MAX] {
            let mut buf = len.to_be_bytes().to_vec();
            buf.extend_from_slice(&[0; 64]);
            assert!(matches!(split_frame(&buf), Err(WireError::TooLong { .. })));
        }
        assert_eq!(
            body_len((MAX_PAYLOAD as u32).to_be_bytes()).unwrap(),
            MAX_PAYLOAD + TAG_LEN
        );
        let (mut c, _) = pair();
        assert!(c.seal(&vec![0; MAX_PAYLOAD + 1]).is_err());
        let huge = Response::Entries(
            (0..5)
                .map(|i| (vec![i], dvv(vec![Some(vec![0; MAX_VALUE])])))
                .collect(),
        );
        assert!(matches!(
            encode_response(&huge),
            Err(WireError::TooLong { .. })
        ));
    }

    #[test]
    fn decoded_messages_are_checked() {
        let bad_requests = [
            Request::Read {
                key: vec![0; MAX_KEY + 1],
            },
            Request::Write {
                key: b"k".to_vec(),
                version: dvv(vec![Some(vec![0; MAX_VALUE + 1])]),
                hint_for: None,
            },
            Request::Write {
                key: b"k".to_vec(),
                version: Dvv::new_write(&Default::default(), None),
                hint_for: None,
            },
            Request::Purge {
                key: b"k".to_vec(),
                version: dvv(vec![None; 8]),
            },
            Request::Coordinate {
                key: b"k".to_vec(),
                value: Some(vec![0; MAX_VALUE + 1]),
                context: Default::default(),
            },
            Request::Coordinate {
                key: b"k".to_vec(),
                value: None,
                context: [(String::new(), 1)].into(),
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

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// Random bytes and mangled valid frames never panic, and nothing but
    /// the exact frames sent (a prefix of them, at a frame boundary) is
    /// ever accepted.
    #[test]
    fn fuzz_frames_and_decoders() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let small_requests: Vec<Request> = requests()
            .into_iter()
            .filter(|r| encode_request(r).unwrap().len() < 4096)
            .collect();
        let small_responses: Vec<Response> = responses()
            .into_iter()
            .filter(|r| encode_response(r).unwrap().len() < 4096)
            .collect();
        let s = secret("fuzz");
        let t = transcript(&[1; NONCE_LEN], &[2; NONCE_LEN], &id("c"), &id("s"));
        let to_server = prf(&s, LABEL_KEY_TO_SERVER, &t).unwrap();
        let to_client = prf(&s, LABEL_KEY_TO_CLIENT, &t).unwrap();
        let mut c = Session::new(id("s"), &to_server, &to_client).unwrap();
        let fresh_server = || Session::new(id("c"), &to_client, &to_server).unwrap();
        let (_, hello) = ClientHandshake::with_nonce(&s, &id("c"), [1; NONCE_LEN]);
        let hello = &hello[HEADER_LEN..];
        // A stream of three valid frames and where each ends.
        let mut stream = Vec::new();
        let mut ends = vec![0];
        let mut payloads = Vec::new();
        for req in small_requests.iter().take(3) {
            let p = encode_request(req).unwrap();
            stream.extend(c.seal(&p).unwrap());
            ends.push(stream.len());
            payloads.push(p);
        }
        let mut checked = 0u32;
        for round in 0..200_000u32 {
            let input = match round % 5 {
                // Random bytes.
                0 => {
                    let n = rng.below(300);
                    rng.bytes(n)
                }
                // Random bytes behind a plausible header.
                1 => {
                    let n = rng.below(200);
                    let mut v = (n as u32).to_be_bytes().to_vec();
                    v.extend(rng.bytes(n + TAG_LEN));
                    v
                }
                // Bit flips.
                2 => {
                    let mut v = stream.clone();
                    for _ in 0..1 + rng.below(4) {
                        let bit = rng.below(v.len() * 8);
                        v[bit / 8] ^= 1 << (bit % 8);
                    }
                    v
                }
                // Truncations and splices of pieces of the stream.
                3 => {
                    let a = rng.below(stream.len());
                    let b = a + rng.below(stream.len() - a);
                    let c = rng.below(stream.len());
                    let mut v = stream[..a].to_vec();
                    if rng.below(2) == 0 {
                        v.extend_from_slice(&stream[c..]);
                    } else {
                        v.extend_from_slice(&stream[b..]);
                    }
                    v
                }
                // A length field set to something else, often huge.
                _ => {
                    let mut v = stream.clone();
                    let at = ends[rng.below(ends.len() - 1)];
                    let len = match rng.below(3) {
                        0 => u32::MAX - rng.below(1000) as u32,
                        1 => MAX_PAYLOAD as u32 + rng.below(1 << 20) as u32,
                        _ => rng.next() as u32 % 512,
                    };
                    v[at..at + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
                    v
                }
            };
            let mut srv = fresh_server();
            match open_all(&mut srv, &input) {
                Ok(got) => {
                    let k = got.len();
                    assert_eq!(got, payloads[..k], "round {round}");
                    assert_eq!(input, stream[..ends[k]], "round {round}");
                }
                Err(_) => checked += 1,
            }
            // The decoders on raw bytes (an authenticated but buggy or
            // hostile peer): never a panic, and whatever passes is sound.
            if let Ok(req) = decode_request(&input) {
                check_request(&req).unwrap();
                assert_eq!(decode_request(&encode_request(&req).unwrap()).unwrap(), req);
            }
            if let Ok(resp) = decode_response(&input) {
                check_response(&resp).unwrap();
            }
            // The handshake parsers (no HMAC is reached by garbage).
            if round % 16 == 0 {
                let _ = ServerHandshake::with_nonce(&s, &id("s"), &input, [2; NONCE_LEN]);
                let (client, _) = ClientHandshake::with_nonce(&s, &id("c"), [1; NONCE_LEN]);
                let _ = client.finish(&input);
                let mut h = hello.to_vec();
                let at = rng.below(h.len());
                h[at] = rng.next() as u8;
                h.truncate(rng.below(h.len() + 1));
                let _ = ServerHandshake::with_nonce(&s, &id("s"), &h, [2; NONCE_LEN]);
            }
            // Mutated valid payloads straight into the decoders.
            if round % 4 == 0 {
                let mut p = if round % 8 == 0 {
                    encode_request(&small_requests[rng.below(small_requests.len())]).unwrap()
                } else {
                    encode_response(&small_responses[rng.below(small_responses.len())]).unwrap()
                };
                if !p.is_empty() {
                    let bit = rng.below(p.len() * 8);
                    p[bit / 8] ^= 1 << (bit % 8);
                    p.truncate(rng.below(p.len() + 1));
                }
                let _ = decode_request(&p);
                let _ = decode_response(&p);
            }
        }
        assert!(checked > 150_000, "only {checked} inputs rejected");
    }
}
