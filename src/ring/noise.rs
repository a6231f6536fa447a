//! The ring's links as pure functions of bytes (the sockets are in
//! `transport`): a Noise handshake, then encrypted frames, so that all of
//! it can be unit-tested and fuzzed without a network.
//!
//! **Handshake**: `Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s`. Every node has a
//! static X25519 key (`keys::StaticKey`); every node of a ring holds the
//! same secret, from which the pre-shared key is derived
//! (`keys::Secret::psk`). Each handshake message travels as a 4-byte
//! big-endian length and a body of at most [`MAX_HANDSHAKE`] bytes:
//!
//! 1. client: `CHRG`, the protocol version, then Noise `-> e`;
//! 2. server: Noise `<- e, ee, s, es`, its payload the server's node name;
//! 3. client: Noise `-> s, se, psk`, its payload the client's node name.
//!
//! The server learns the client's static key and name only from message 3,
//! which only a holder of the secret can produce: a client without it is
//! refused there ([`WireError::SecretMismatch`]). The client learns the
//! server's static key and name from message 2 and checks both (the node
//! it meant to reach, and the key it knows that node by: `KnownNodes`)
//! *before* it sends message 3, the first message that depends on the
//! secret. The server proves that it holds the secret with its first frame,
//! which the client cannot decrypt otherwise; only then does the client
//! bind a node it did not know to the key it presented (trust on first
//! use), so that an impostor cannot have its own key bound to a name.
//!
//! What that gives: both ends know the other holds the ring's secret and
//! the private half of the static key it is known by; every frame is
//! encrypted and authenticated (ChaCha20-Poly1305) under keys of this
//! connection alone (forward secrecy: ephemeral keys, forgotten with the
//! connection); nothing sent in clear or by the server depends on the
//! secret, so neither a passive capture nor a connection to a node gives
//! anything to test guesses of the secret against offline. The one such
//! test: an active attacker that a node connects to, taking it for a node
//! it has never met, gets message 3. A random secret (as the man page
//! asks) makes that moot.
//!
//! **Frames**: a payload of up to [`MAX_PAYLOAD`] bytes (a postcard
//! `Request` or `Response`, see `wire`) goes in one or more records. A
//! record is a 2-byte big-endian length and one Noise transport message of
//! at most 65535 bytes: 16 of them the tag, the rest a chunk of the frame.
//! The first chunk starts with the payload's length (4 bytes big-endian,
//! checked against [`MAX_PAYLOAD`] as soon as it is decrypted); every chunk
//! but the last is full. Noise numbers the messages of each direction, so
//! a record replayed, reordered, dropped, altered or sent the other way
//! fails to decrypt, and the link is given up at the first failure.

use snow::{HandshakeState, TransportState};

use super::NodeId;
use super::keys::{Credentials, KnownNodes, PublicKey};
use super::wire::{MAX_PAYLOAD, WireError};

/// The Noise protocol of ring links.
pub const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";
/// The protocol this code speaks; a peer announcing another one is refused.
/// 2: layouts carry each version's R and W. 3: Noise links (this module).
/// 4: read leases (`LeaseGrant`, `LeaseLeft`). 5: layouts carry the
/// nodes' acknowledgements, and replica reads and writes the layout
/// version they were coordinated on (`StaleLayout`). 6: layout versions
/// carry an operator's signature (`operator`).
/// Every node of a ring must be upgraded together.
pub const PROTOCOL_VERSION: u8 = 6;
/// Length of the length prefix of handshake messages.
pub const HEADER_LEN: usize = 4;
/// Largest handshake message body (the largest is the server's, with a
/// 64-byte name: 161 bytes).
pub const MAX_HANDSHAKE: usize = 256;
/// Length of the length prefix of records.
pub const RECORD_HEADER_LEN: usize = 2;
/// Largest Noise message, so largest record body.
pub const MAX_RECORD: usize = 65535;
/// Length of a Noise message's authentication tag.
pub const NOISE_TAG_LEN: usize = 16;
/// Largest chunk of a frame in one record.
pub const MAX_CHUNK: usize = MAX_RECORD - NOISE_TAG_LEN;
/// Length of the frame length that starts the first chunk.
const FRAME_LEN_LEN: usize = 4;
/// Smallest record body: the frame length and a tag.
pub const MIN_RECORD: usize = NOISE_TAG_LEN + 1;

const MAGIC: &[u8; 4] = b"CHRG";
/// Hashed into the handshake by both ends, with the protocol version.
const PROLOGUE: &[u8] = b"chironfs ring link\0";

fn noise_err(step: &'static str) -> impl Fn(snow::Error) -> WireError {
    move |e| WireError::Noise {
        step,
        reason: format!("{e:?}"),
    }
}

/// The random numbers of a handshake (its ephemeral keys) from the
/// `getrandom` the rest of the program uses: snow's own would pull a second
/// version of it into the build.
struct OsRandom;

impl snow::types::Random for OsRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        getrandom::fill(dest).map_err(|_| snow::Error::Rng)
    }
}

/// snow's default primitives, with [`OsRandom`].
struct Resolver;

impl snow::resolvers::CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        Some(Box::new(OsRandom))
    }
    fn resolve_dh(&self, c: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        snow::resolvers::DefaultResolver.resolve_dh(c)
    }
    fn resolve_hash(&self, c: &snow::params::HashChoice) -> Option<Box<dyn snow::types::Hash>> {
        snow::resolvers::DefaultResolver.resolve_hash(c)
    }
    fn resolve_cipher(
        &self,
        c: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        snow::resolvers::DefaultResolver.resolve_cipher(c)
    }
}

fn builder(creds: &Credentials) -> Result<snow::Builder<'_>, WireError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(noise_err("parsing the Noise protocol name"))?;
    snow::Builder::with_resolver(params, Box::new(Resolver))
        .local_private_key(creds.key.private())
        .and_then(|b| b.psk(3, creds.secret.psk()))
        .map_err(noise_err("setting up the handshake"))
}

fn prologue() -> Vec<u8> {
    let mut p = PROLOGUE.to_vec();
    p.push(PROTOCOL_VERSION);
    p
}

/// Prefixes a handshake message body with its length.
fn with_header(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
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

/// A node name as a handshake payload: its length, then its bytes.
fn name_payload(id: &NodeId) -> Vec<u8> {
    let mut p = Vec::with_capacity(1 + id.as_str().len());
    p.push(id.as_str().len() as u8);
    p.extend_from_slice(id.as_str().as_bytes());
    p
}

fn take_name(payload: &[u8]) -> Result<NodeId, WireError> {
    let (&len, rest) = payload.split_first().ok_or(WireError::Truncated)?;
    let len = len as usize;
    if rest.len() < len {
        return Err(WireError::Truncated);
    }
    if rest.len() > len {
        return Err(WireError::Trailing(rest.len() - len));
    }
    let name = std::str::from_utf8(rest).map_err(|_| WireError::BadNodeId("not UTF-8".into()))?;
    NodeId::new(name).map_err(WireError::BadNodeId)
}

/// Reads one handshake message: its payload, of at most what a body
/// holds.
fn read_hs(hs: &mut HandshakeState, body: &[u8], step: &'static str) -> Result<Vec<u8>, WireError> {
    if body.len() > MAX_HANDSHAKE {
        return Err(WireError::TooLong {
            len: body.len(),
            max: MAX_HANDSHAKE,
        });
    }
    let mut payload = vec![0u8; MAX_HANDSHAKE];
    let n = hs.read_message(body, &mut payload).map_err(|e| match e {
        snow::Error::Input => WireError::Truncated,
        e => noise_err(step)(e),
    })?;
    payload.truncate(n);
    Ok(payload)
}

fn write_hs(
    hs: &mut HandshakeState,
    payload: &[u8],
    step: &'static str,
) -> Result<Vec<u8>, WireError> {
    let mut body = vec![0u8; MAX_HANDSHAKE];
    let n = hs
        .write_message(payload, &mut body)
        .map_err(noise_err(step))?;
    body.truncate(n);
    Ok(body)
}

fn remote_static(hs: &HandshakeState) -> Result<PublicKey, WireError> {
    hs.get_remote_static()
        .and_then(PublicKey::from_slice)
        .ok_or(WireError::Noise {
            step: "reading the peer's static key",
            reason: "missing".into(),
        })
}

/// The client's side of the handshake, before the server's answer.
pub struct ClientHandshake {
    hs: HandshakeState,
    creds: Credentials,
}

impl ClientHandshake {
    /// Starts a handshake: the state, and message 1 to send (with its
    /// length prefix).
    pub fn start(creds: &Credentials) -> Result<(ClientHandshake, Vec<u8>), WireError> {
        let prologue = prologue();
        let mut hs = builder(creds)?
            .prologue(&prologue)
            .and_then(|b| b.build_initiator())
            .map_err(noise_err("starting the handshake"))?;
        let noise = write_hs(&mut hs, &[], "writing message 1")?;
        let mut body = Vec::with_capacity(MAGIC.len() + 1 + noise.len());
        body.extend_from_slice(MAGIC);
        body.push(PROTOCOL_VERSION);
        body.extend_from_slice(&noise);
        let state = ClientHandshake {
            hs,
            creds: creds.clone(),
        };
        Ok((state, with_header(&body)))
    }

    /// Reads the server's answer (message 2, its body without the length
    /// prefix) and checks who it is: node `expected`, by the key this node
    /// knows it by (if it knows it). Nothing that depends on the secret
    /// has been sent yet.
    pub fn read_answer(
        mut self,
        answer: &[u8],
        expected: &NodeId,
    ) -> Result<ClientAnswered, WireError> {
        let payload = read_hs(&mut self.hs, answer, "reading the server's answer")?;
        let server = take_name(&payload)?;
        let key = remote_static(&self.hs)?;
        if server == self.creds.me {
            return Err(WireError::SelfNamed(server));
        }
        if server != *expected {
            return Err(WireError::WrongNode {
                expected: expected.clone(),
                got: server,
            });
        }
        if key == self.creds.key.public() {
            return Err(WireError::OwnKey(server));
        }
        self.creds.known.check(&server, key)?;
        Ok(ClientAnswered {
            hs: self.hs,
            creds: self.creds,
            server,
            key,
        })
    }
}

/// The client's side of the handshake once the server answered.
pub struct ClientAnswered {
    hs: HandshakeState,
    creds: Credentials,
    server: NodeId,
    key: PublicKey,
}

impl ClientAnswered {
    /// Message 3 to send (with its length prefix) and the session. The
    /// server is bound to its key once its first frame is opened.
    pub fn finish(mut self) -> Result<(Vec<u8>, Session), WireError> {
        let body = write_hs(
            &mut self.hs,
            &name_payload(&self.creds.me),
            "writing message 3",
        )?;
        let noise = self
            .hs
            .into_transport_mode()
            .map_err(noise_err("ending the handshake"))?;
        let session = Session::new(self.server, self.key, noise, Some(self.creds.known));
        Ok((with_header(&body), session))
    }
}

/// The server's side of the handshake, between its answer and the client's
/// message 3.
pub struct ServerHandshake {
    hs: HandshakeState,
    creds: Credentials,
}

impl ServerHandshake {
    /// Reads a client's message 1 (its body, without the length prefix):
    /// the state, and the answer (message 2) to send, with its length
    /// prefix.
    pub fn accept(
        creds: &Credentials,
        hello: &[u8],
    ) -> Result<(ServerHandshake, Vec<u8>), WireError> {
        let (magic, rest) = hello.split_first_chunk::<4>().ok_or(WireError::Truncated)?;
        if magic != MAGIC {
            return Err(WireError::BadMagic);
        }
        let (&version, noise) = rest.split_first().ok_or(WireError::Truncated)?;
        if version != PROTOCOL_VERSION {
            return Err(WireError::Version(version));
        }
        let prologue = prologue();
        let mut hs = builder(creds)?
            .prologue(&prologue)
            .and_then(|b| b.build_responder())
            .map_err(noise_err("starting the handshake"))?;
        let payload = read_hs(&mut hs, noise, "reading message 1")?;
        if !payload.is_empty() {
            return Err(WireError::Trailing(payload.len()));
        }
        let answer = write_hs(&mut hs, &name_payload(&creds.me), "writing the answer")?;
        let state = ServerHandshake {
            hs,
            creds: creds.clone(),
        };
        Ok((state, with_header(&answer)))
    }

    /// Reads the client's message 3 (its body, without the length prefix):
    /// proof that it holds the secret, its static key and name. Binds the
    /// name to the key if the name is new, refuses another key for a known
    /// name. Gives the session, whose peer is the client's authenticated
    /// name.
    pub fn finish(mut self, last: &[u8]) -> Result<Session, WireError> {
        let payload = read_hs(&mut self.hs, last, "reading message 3").map_err(|e| match e {
            // The only secret-dependent part of the handshake.
            WireError::Noise { .. } => WireError::SecretMismatch,
            e => e,
        })?;
        let client = take_name(&payload)?;
        let key = remote_static(&self.hs)?;
        if client == self.creds.me {
            return Err(WireError::SelfNamed(client));
        }
        if key == self.creds.key.public() {
            return Err(WireError::OwnKey(client));
        }
        self.creds.known.bind(&client, key)?;
        let noise = self
            .hs
            .into_transport_mode()
            .map_err(noise_err("ending the handshake"))?;
        Ok(Session::new(client, key, noise, None))
    }
}

/// A frame being received: how long it is, and what has arrived.
struct Partial {
    total: usize,
    data: Vec<u8>,
}

/// An encrypted link, after the handshake: seals the frames this end
/// sends and opens the ones it receives, in order.
pub struct Session {
    peer: NodeId,
    peer_key: PublicKey,
    noise: TransportState,
    /// The client's table of known nodes, until the server's first frame
    /// proves that it holds the secret; then the server is bound to its key.
    pin: Option<KnownNodes>,
    rx: Option<Partial>,
    failed: bool,
}

impl Session {
    fn new(
        peer: NodeId,
        peer_key: PublicKey,
        noise: TransportState,
        pin: Option<KnownNodes>,
    ) -> Session {
        Session {
            peer,
            peer_key,
            noise,
            pin,
            rx: None,
            failed: false,
        }
    }

    /// The other end's authenticated name.
    pub fn peer(&self) -> &NodeId {
        &self.peer
    }

    /// The other end's static key.
    pub fn peer_key(&self) -> PublicKey {
        self.peer_key
    }

    /// Whether the other end has proven that it holds the secret (always,
    /// for the server's end of a link; for the client's, once a frame
    /// from the server was opened).
    pub fn confirmed(&self) -> bool {
        self.pin.is_none()
    }

    /// The records (each with its length prefix) carrying `payload`.
    pub fn seal(&mut self, payload: &[u8]) -> Result<Vec<u8>, WireError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(WireError::TooLong {
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        let records = (FRAME_LEN_LEN + payload.len()).div_ceil(MAX_CHUNK).max(1);
        let mut out = Vec::with_capacity(
            FRAME_LEN_LEN + payload.len() + records * (RECORD_HEADER_LEN + NOISE_TAG_LEN),
        );
        let first = payload.len().min(MAX_CHUNK - FRAME_LEN_LEN);
        let mut chunk = Vec::with_capacity(FRAME_LEN_LEN + first);
        chunk.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        chunk.extend_from_slice(&payload[..first]);
        self.seal_record(&chunk, &mut out)?;
        for chunk in payload[first..].chunks(MAX_CHUNK) {
            self.seal_record(chunk, &mut out)?;
        }
        Ok(out)
    }

    /// Appends the record carrying `chunk` (at most [`MAX_CHUNK`] bytes).
    fn seal_record(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let len = chunk.len() + NOISE_TAG_LEN;
        let at = out.len();
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.resize(at + RECORD_HEADER_LEN + len, 0);
        let n = self
            .noise
            .write_message(chunk, &mut out[at + RECORD_HEADER_LEN..])
            .map_err(noise_err("encrypting a record"))?;
        if n != len {
            return Err(WireError::Noise {
                step: "encrypting a record",
                reason: format!("{n} bytes written, {len} expected"),
            });
        }
        Ok(())
    }

    /// Opens the next record (its body, as [`record_len`] measured it):
    /// the frame's payload once its last record is in, `None` before.
    /// After a failure every later record fails too: the link is to be
    /// dropped.
    pub fn open_record(&mut self, body: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
        if self.failed {
            return Err(WireError::Failed);
        }
        self.failed = true;
        if body.len() < MIN_RECORD {
            return Err(WireError::Truncated);
        }
        if body.len() > MAX_RECORD {
            return Err(WireError::TooLong {
                len: body.len(),
                max: MAX_RECORD,
            });
        }
        let mut chunk = vec![0u8; body.len() - NOISE_TAG_LEN];
        let n = self
            .noise
            .read_message(body, &mut chunk)
            .map_err(|_| WireError::BadTag)?;
        chunk.truncate(n);
        let done = match self.rx.take() {
            None => {
                let (len, data) = chunk
                    .split_first_chunk::<FRAME_LEN_LEN>()
                    .ok_or(WireError::Truncated)?;
                let total = u32::from_be_bytes(*len) as usize;
                if total > MAX_PAYLOAD {
                    return Err(WireError::TooLong {
                        len: total,
                        max: MAX_PAYLOAD,
                    });
                }
                self.add_chunk(
                    Partial {
                        total,
                        data: Vec::new(),
                    },
                    data,
                    MAX_CHUNK - FRAME_LEN_LEN,
                )?
            }
            Some(partial) => self.add_chunk(partial, &chunk, MAX_CHUNK)?,
        };
        if let Some(known) = self.pin.take() {
            // The server decrypted our message 3 and sealed this: it holds
            // the secret, so its key may now be bound to its name.
            known.bind(&self.peer, self.peer_key)?;
        }
        self.failed = false;
        Ok(done)
    }

    /// Adds a chunk of `full` bytes at most to a frame: the payload if it
    /// is complete.
    fn add_chunk(
        &mut self,
        mut p: Partial,
        data: &[u8],
        full: usize,
    ) -> Result<Option<Vec<u8>>, WireError> {
        let left = p.total - p.data.len();
        if data.len() > left {
            return Err(WireError::Invalid(format!(
                "a record carries {} bytes of a frame that has {left} left",
                data.len()
            )));
        }
        if data.len() < left && data.len() != full {
            return Err(WireError::Invalid(format!(
                "a record carries {} bytes of a frame that has {left} left, not a full chunk",
                data.len()
            )));
        }
        if p.data.is_empty() && data.len() == left {
            return Ok(Some(data.to_vec()));
        }
        // Grows as records arrive, not by what the frame announced.
        p.data.extend_from_slice(data);
        if p.data.len() == p.total {
            return Ok(Some(p.data));
        }
        self.rx = Some(p);
        Ok(None)
    }
}

/// Length of the record body announced by `header`.
pub fn record_len(header: [u8; RECORD_HEADER_LEN]) -> Result<usize, WireError> {
    let len = u16::from_be_bytes(header) as usize;
    if len < MIN_RECORD {
        return Err(WireError::Invalid(format!(
            "record of {len} bytes, at least {MIN_RECORD} expected"
        )));
    }
    Ok(len)
}

/// The first record in `buf`: its body (to [`Session::open_record`]) and
/// the bytes it takes, or `None` if `buf` holds only part of it.
pub fn split_record(buf: &[u8]) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some(header) = buf.first_chunk::<RECORD_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = record_len(*header)?;
    Ok(buf
        .get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len)
        .map(|body| (body, RECORD_HEADER_LEN + len)))
}

#[cfg(test)]
impl Session {
    /// Back to before the first record received: a receiver that has seen
    /// nothing yet, with the same keys (for fuzzing one stream many ways).
    fn rewind_receiver(&mut self) {
        self.noise.set_receiving_nonce(0);
        self.rx = None;
        self.failed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::keys::{Secret, StaticKey};
    use crate::ring::msg::Request;
    use crate::ring::wire::samples::{Rng, id, requests, responses};
    use crate::ring::wire::{decode_request, decode_response, encode_request, encode_response};
    use proptest::prelude::*;

    fn secret(s: &str) -> Secret {
        Secret::new(format!("{s:0>16}").as_bytes()).unwrap()
    }

    fn creds(name: &str, s: &Secret) -> Credentials {
        Credentials::for_test(name, s)
    }

    /// The three handshake messages between `c` and `s`, bodies only.
    struct Exchange {
        hello: Vec<u8>,
        answer: Vec<u8>,
        last: Vec<u8>,
    }

    /// A full handshake: the client's session, the server's, and what
    /// was sent.
    fn handshake(c: &Credentials, s: &Credentials) -> (Session, Session, Exchange) {
        let (client, hello) = ClientHandshake::start(c).unwrap();
        let (server, answer) = ServerHandshake::accept(s, &hello[HEADER_LEN..]).unwrap();
        let answered = client.read_answer(&answer[HEADER_LEN..], &s.me).unwrap();
        assert_eq!(answered.server, s.me);
        let (last, cs) = answered.finish().unwrap();
        let ss = server.finish(&last[HEADER_LEN..]).unwrap();
        let ex = Exchange {
            hello: hello[HEADER_LEN..].to_vec(),
            answer: answer[HEADER_LEN..].to_vec(),
            last: last[HEADER_LEN..].to_vec(),
        };
        (cs, ss, ex)
    }

    /// A client session to "server" and the server's session to "client".
    fn pair() -> (Session, Session) {
        let s = secret("shared");
        let (c, srv, _) = handshake(&creds("client", &s), &creds("server", &s));
        (c, srv)
    }

    /// Every frame of `stream`, all or nothing: a partial record or frame
    /// at the end is an error, as it is on a closed connection.
    fn open_all(session: &mut Session, mut stream: &[u8]) -> Result<Vec<Vec<u8>>, WireError> {
        let mut out = Vec::new();
        while !stream.is_empty() {
            let (body, used) = split_record(stream)?.ok_or(WireError::Truncated)?;
            if let Some(p) = session.open_record(body)? {
                out.push(p);
            }
            stream = &stream[used..];
        }
        if session.rx.is_some() {
            return Err(WireError::Truncated);
        }
        Ok(out)
    }

    #[test]
    fn a_handshake_with_the_same_secret_authenticates_both_ends() {
        let s = secret("shared");
        let (c, srv) = (creds("client", &s), creds("server", &s));
        let (mut cs, mut ss, ex) = handshake(&c, &srv);
        assert_eq!(cs.peer(), &id("server"));
        assert_eq!(ss.peer(), &id("client"));
        assert_eq!(cs.peer_key(), srv.key.public());
        assert_eq!(ss.peer_key(), c.key.public());
        assert!(ex.hello.len() <= MAX_HANDSHAKE && ex.answer.len() <= MAX_HANDSHAKE);
        // The server bound the client at once; the client binds the server
        // only once the server proved it holds the secret (a frame).
        assert_eq!(srv.known.get(&id("client")), Some(c.key.public()));
        assert_eq!(c.known.get(&id("server")), None);
        assert!(ss.confirmed() && !cs.confirmed());
        let f = cs.seal(b"ping").unwrap();
        assert_eq!(open_all(&mut ss, &f).unwrap(), vec![b"ping".to_vec()]);
        assert_eq!(c.known.get(&id("server")), None);
        let f = ss.seal(b"pong").unwrap();
        assert_eq!(open_all(&mut cs, &f).unwrap(), vec![b"pong".to_vec()]);
        assert!(cs.confirmed());
        assert_eq!(c.known.get(&id("server")), Some(srv.key.public()));
        // Nothing of a payload is in clear.
        let f = cs.seal(b"a very recognisable payload").unwrap();
        assert!(!f.windows(8).any(|w| w == b"a very r"));
        // Names of the longest length fit.
        let long = "n".repeat(64);
        let (a, b, ex) = handshake(&creds(&long, &s), &creds(&"m".repeat(64), &s));
        assert_eq!(a.peer().as_str().len(), 64);
        assert_eq!(b.peer().as_str(), long);
        assert!(ex.answer.len() <= MAX_HANDSHAKE && ex.last.len() <= MAX_HANDSHAKE);
    }

    #[test]
    fn every_request_and_response_round_trips_in_records() {
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
        // Sizes around the chunk boundaries, and the largest frame.
        for len in [
            0,
            1,
            MAX_CHUNK - FRAME_LEN_LEN - 1,
            MAX_CHUNK - FRAME_LEN_LEN,
            MAX_CHUNK - FRAME_LEN_LEN + 1,
            2 * MAX_CHUNK - FRAME_LEN_LEN,
            2 * MAX_CHUNK,
            MAX_PAYLOAD,
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = c.seal(&payload).unwrap();
            let records = (FRAME_LEN_LEN + len).div_ceil(MAX_CHUNK).max(1);
            assert_eq!(
                frame.len(),
                FRAME_LEN_LEN + len + records * (RECORD_HEADER_LEN + NOISE_TAG_LEN),
                "{len}"
            );
            assert_eq!(open_all(&mut s, &frame).unwrap(), vec![payload], "{len}");
        }
    }

    #[test]
    fn a_wrong_secret_fails_at_the_handshake_with_a_clear_error() {
        let (good, bad) = (secret("good"), secret("bad"));
        // A client without the secret: refused on its message 3.
        let (client, hello) = ClientHandshake::start(&creds("c", &bad)).unwrap();
        let srv = creds("s", &good);
        let (server, answer) = ServerHandshake::accept(&srv, &hello[HEADER_LEN..]).unwrap();
        let (last, _) = client
            .read_answer(&answer[HEADER_LEN..], &id("s"))
            .unwrap()
            .finish()
            .unwrap();
        let e = server.finish(&last[HEADER_LEN..]).err().unwrap();
        assert!(matches!(e, WireError::SecretMismatch), "{e}");
        assert!(e.to_string().contains("does not hold this ring's secret"));
        assert_eq!(srv.known.get(&id("c")), None, "nothing bound");
        // A server without the secret gets as far as its answer, which
        // depends on no secret, and no further: it cannot read message 3,
        // so it cannot send the frame that would have the client bind it.
        let c = creds("c", &good);
        let (client, hello) = ClientHandshake::start(&c).unwrap();
        let (fake, answer) =
            ServerHandshake::accept(&creds("s", &bad), &hello[HEADER_LEN..]).unwrap();
        let (last, session) = client
            .read_answer(&answer[HEADER_LEN..], &id("s"))
            .unwrap()
            .finish()
            .unwrap();
        assert!(matches!(
            fake.finish(&last[HEADER_LEN..]),
            Err(WireError::SecretMismatch)
        ));
        assert!(!session.confirmed());
        assert_eq!(c.known.get(&id("s")), None);
    }

    #[test]
    fn a_known_name_with_another_static_key_is_refused() {
        let s = secret("shared");
        let server = creds("s", &s);
        let client = creds("c", &s);
        handshake(&client, &server);
        // Another client under the name "c", with its own key: refused by
        // the server at message 3, naming the node.
        let impostor = Credentials {
            key: StaticKey::for_test("another c"),
            ..creds("c", &s)
        };
        let (ch, hello) = ClientHandshake::start(&impostor).unwrap();
        let (sh, answer) = ServerHandshake::accept(&server, &hello[HEADER_LEN..]).unwrap();
        let (last, _) = ch
            .read_answer(&answer[HEADER_LEN..], &id("s"))
            .unwrap()
            .finish()
            .unwrap();
        match sh.finish(&last[HEADER_LEN..]) {
            Err(WireError::KeyChanged(e)) => {
                assert_eq!(e.node, id("c"));
                assert_eq!(e.known, client.key.public());
                assert_eq!(e.presented, impostor.key.public());
                assert!(e.to_string().contains("node c presented static key"), "{e}");
            }
            other => panic!("{:?}", other.err()),
        }
        // The real one still gets in.
        handshake(&client, &server);

        // The client side: once it knows "s" (after a frame from it), a
        // server answering as "s" with another key is refused before
        // message 3, the first one that depends on the secret.
        let (mut cs, mut ss, _) = handshake(&client, &server);
        let f = ss.seal(b"hi").unwrap();
        open_all(&mut cs, &f).unwrap();
        let fake = Credentials {
            key: StaticKey::for_test("another s"),
            ..creds("s", &s)
        };
        let (ch, hello) = ClientHandshake::start(&client).unwrap();
        let (_, answer) = ServerHandshake::accept(&fake, &hello[HEADER_LEN..]).unwrap();
        match ch.read_answer(&answer[HEADER_LEN..], &id("s")) {
            Err(WireError::KeyChanged(e)) => assert_eq!(e.node, id("s")),
            other => panic!("{:?}", other.err()),
        }
        // Before the client knows a server, a first frame binds it, and a
        // frame from a later server with another key is refused.
        let lone = creds("lone", &s);
        let (mut c1, mut s1, _) = handshake(&lone, &creds("t", &s));
        let other_t = Credentials {
            key: StaticKey::for_test("other t"),
            ..creds("t", &s)
        };
        let (mut c2, mut s2, _) = handshake(&lone, &other_t);
        open_all(&mut c1, &s1.seal(b"one").unwrap()).unwrap();
        assert!(matches!(
            open_all(&mut c2, &s2.seal(b"two").unwrap()),
            Err(WireError::KeyChanged(_))
        ));
    }

    #[test]
    fn handshakes_refuse_other_versions_names_and_keys() {
        let s = secret("shared");
        let (c, srv) = (creds("c", &s), creds("s", &s));
        let (_, hello) = ClientHandshake::start(&c).unwrap();
        let body = &hello[HEADER_LEN..];
        // A node of the previous version, or no ring node at all.
        let prev = PROTOCOL_VERSION - 1;
        let mut older = body.to_vec();
        older[MAGIC.len()] = prev;
        let e = ServerHandshake::accept(&srv, &older).err().unwrap();
        assert!(matches!(e, WireError::Version(v) if v == prev));
        assert!(
            e.to_string().contains(&format!(
                "version {prev}, this node speaks {PROTOCOL_VERSION}"
            )),
            "{e}"
        );
        let mut magic = body.to_vec();
        magic[0] = b'X';
        assert!(matches!(
            ServerHandshake::accept(&srv, &magic),
            Err(WireError::BadMagic)
        ));
        assert!(matches!(
            ServerHandshake::accept(&srv, b"GET / HTTP/1.1\r\n\r\n"),
            Err(WireError::BadMagic)
        ));
        assert!(ServerHandshake::accept(&srv, &body[..body.len() - 1]).is_err());
        let mut long = body.to_vec();
        long.push(0);
        assert!(ServerHandshake::accept(&srv, &long).is_err());
        // A server under another name than the one called, or the
        // client's own, or with the client's own key.
        let (ch, hello) = ClientHandshake::start(&c).unwrap();
        let (_, answer) = ServerHandshake::accept(&srv, &hello[HEADER_LEN..]).unwrap();
        let e = ch
            .read_answer(&answer[HEADER_LEN..], &id("t"))
            .err()
            .unwrap();
        assert!(matches!(e, WireError::WrongNode { .. }));
        assert!(e.to_string().contains("answered as node s, not t"), "{e}");
        let twin = creds("c", &s);
        let (ch, hello) = ClientHandshake::start(&c).unwrap();
        let (_, answer) = ServerHandshake::accept(&twin, &hello[HEADER_LEN..]).unwrap();
        assert!(matches!(
            ch.read_answer(&answer[HEADER_LEN..], &id("c")),
            Err(WireError::SelfNamed(_))
        ));
        let copy = Credentials {
            key: c.key.clone(),
            ..creds("s", &s)
        };
        let (ch, hello) = ClientHandshake::start(&c).unwrap();
        let (_, answer) = ServerHandshake::accept(&copy, &hello[HEADER_LEN..]).unwrap();
        assert!(matches!(
            ch.read_answer(&answer[HEADER_LEN..], &id("s")),
            Err(WireError::OwnKey(_))
        ));
        // A client under the server's own name.
        let (ch, hello) = ClientHandshake::start(&creds("s", &s)).unwrap();
        let (sh, answer) = ServerHandshake::accept(&srv, &hello[HEADER_LEN..]).unwrap();
        // (The client would refuse first: the server has its name.)
        assert!(matches!(
            ch.read_answer(&answer[HEADER_LEN..], &id("s")),
            Err(WireError::SelfNamed(_))
        ));
        drop(sh);
        assert!(handshake_len((MAX_HANDSHAKE as u32 + 1).to_be_bytes()).is_err());
        assert_eq!(
            handshake_len((MAX_HANDSHAKE as u32).to_be_bytes()).unwrap(),
            MAX_HANDSHAKE
        );
    }

    #[test]
    fn every_tampered_handshake_message_fails() {
        let s = secret("shared");
        let (c, srv) = (creds("c", &s), creds("s", &s));
        // A flipped bit in message 1: the server may answer, but the
        // client, whose transcript differs, cannot read the answer.
        let (_, _, ex) = handshake(&c, &srv);
        for bit in 0..ex.hello.len() * 8 {
            let (ch, hello) = ClientHandshake::start(&c).unwrap();
            let mut h = hello[HEADER_LEN..].to_vec();
            h[bit / 8] ^= 1 << (bit % 8);
            let failed = match ServerHandshake::accept(&srv, &h) {
                Err(_) => true,
                Ok((_, answer)) => ch.read_answer(&answer[HEADER_LEN..], &id("s")).is_err(),
            };
            assert!(failed, "bit {bit} of message 1");
        }
        for bit in 0..ex.answer.len() * 8 {
            let (ch, hello) = ClientHandshake::start(&c).unwrap();
            let (_, answer) = ServerHandshake::accept(&srv, &hello[HEADER_LEN..]).unwrap();
            let mut a = answer[HEADER_LEN..].to_vec();
            a[bit / 8] ^= 1 << (bit % 8);
            assert!(
                ch.read_answer(&a, &id("s")).is_err(),
                "bit {bit} of message 2"
            );
        }
        for bit in 0..ex.last.len() * 8 {
            let (ch, hello) = ClientHandshake::start(&c).unwrap();
            let (sh, answer) = ServerHandshake::accept(&srv, &hello[HEADER_LEN..]).unwrap();
            let (last, _) = ch
                .read_answer(&answer[HEADER_LEN..], &id("s"))
                .unwrap()
                .finish()
                .unwrap();
            let mut l = last[HEADER_LEN..].to_vec();
            l[bit / 8] ^= 1 << (bit % 8);
            assert!(sh.finish(&l).is_err(), "bit {bit} of message 3");
        }
        // Truncated messages.
        for cut in 0..ex.answer.len() {
            let (ch, hello) = ClientHandshake::start(&c).unwrap();
            let (_, answer) = ServerHandshake::accept(&srv, &hello[HEADER_LEN..]).unwrap();
            let a = &answer[HEADER_LEN..HEADER_LEN + cut];
            assert!(
                ch.read_answer(a, &id("s")).is_err(),
                "cut {cut} of message 2"
            );
        }
        for cut in 0..ex.last.len() {
            let (ch, hello) = ClientHandshake::start(&c).unwrap();
            let (sh, answer) = ServerHandshake::accept(&srv, &hello[HEADER_LEN..]).unwrap();
            let (last, _) = ch
                .read_answer(&answer[HEADER_LEN..], &id("s"))
                .unwrap()
                .finish()
                .unwrap();
            let l = &last[HEADER_LEN..HEADER_LEN + cut];
            assert!(sh.finish(l).is_err(), "cut {cut} of message 3");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_record_fails() {
        let req = Request::Coordinate {
            key: b"/x".to_vec(),
            value: Some(b"hello".to_vec()),
            context: [("a".to_string(), 1)].into(),
            layout: 1,
        };
        let (mut c, mut s) = pair();
        // Not the first record of the link, to cover the nonce.
        let first = c.seal(b"first").unwrap();
        let frame = c.seal(&encode_request(&req).unwrap()).unwrap();
        for bit in 0..frame.len() * 8 {
            s.rewind_receiver();
            open_all(&mut s, &first).unwrap();
            let mut f = frame.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            assert!(open_all(&mut s, &f).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn replayed_reordered_dropped_and_truncated_records_fail() {
        let (mut c, mut s) = pair();
        let f0 = c.seal(b"zero").unwrap();
        let f1 = c.seal(b"one").unwrap();
        assert_eq!(open_all(&mut s, &f0).unwrap(), vec![b"zero".to_vec()]);
        assert!(matches!(open_all(&mut s, &f0), Err(WireError::BadTag)));
        // The session is dead after a failure, even for the right record.
        assert!(matches!(open_all(&mut s, &f1), Err(WireError::Failed)));

        let (mut c, mut s) = pair();
        let _dropped = c.seal(b"zero").unwrap();
        let f1 = c.seal(b"one").unwrap();
        assert!(matches!(open_all(&mut s, &f1), Err(WireError::BadTag)));

        // A record sent the other way is not valid in this direction.
        let (mut c, mut s) = pair();
        let up = c.seal(b"up").unwrap();
        assert!(open_all(&mut c, &up).is_err());
        assert_eq!(open_all(&mut s, &up).unwrap(), vec![b"up".to_vec()]);

        // Nor is a record of another link.
        let (mut c, _) = pair();
        let (_, mut s) = pair();
        assert!(matches!(
            open_all(&mut s, &c.seal(b"x").unwrap()),
            Err(WireError::BadTag)
        ));

        // The records of a large frame, reordered or cut short.
        let (mut c, mut s) = pair();
        let big = c.seal(&vec![7u8; 3 * MAX_CHUNK]).unwrap();
        let mut records = Vec::new();
        let mut rest = &big[..];
        while let Some((_, used)) = split_record(rest).unwrap() {
            records.push(rest[..used].to_vec());
            rest = &rest[used..];
        }
        assert_eq!(records.len(), 4);
        let swapped = [&records[1][..], &records[0], &records[2], &records[3]].concat();
        assert!(open_all(&mut s, &swapped).is_err());
        s.rewind_receiver();
        assert!(matches!(
            open_all(&mut s, &records[..3].concat()),
            Err(WireError::Truncated)
        ));

        let (mut c, _) = pair();
        let f = c.seal(b"payload").unwrap();
        for cut in 1..f.len() {
            let (_, mut s) = pair();
            assert!(split_record(&f[..cut]).unwrap().is_none());
            assert!(open_all(&mut s, &f[..cut]).is_err());
        }
    }

    #[test]
    fn lengths_are_bounded_before_allocating() {
        // Record lengths: at most 65535 by their 2 bytes, at least a tag
        // and a frame length.
        for len in 0..MIN_RECORD as u16 {
            assert!(record_len(len.to_be_bytes()).is_err());
        }
        assert_eq!(record_len(u16::MAX.to_be_bytes()).unwrap(), MAX_RECORD);
        // A frame announcing more than MAX_PAYLOAD, authenticated: refused
        // at its first record.
        for total in [MAX_PAYLOAD as u32 + 1, u32::MAX] {
            let (mut c, mut s) = pair();
            let mut chunk = total.to_be_bytes().to_vec();
            chunk.extend_from_slice(&[0; 100]);
            let mut out = Vec::new();
            c.seal_record(&chunk, &mut out).unwrap();
            assert!(matches!(
                open_all(&mut s, &out),
                Err(WireError::TooLong { .. })
            ));
        }
        // A record carrying more than its frame has left, or a short one
        // before the last.
        for chunks in [
            vec![[&5u32.to_be_bytes()[..], b"toolong"].concat()],
            vec![
                [&(2 * MAX_CHUNK as u32).to_be_bytes()[..], b"short"].concat(),
                vec![0; 10],
            ],
        ] {
            let (mut c, mut s) = pair();
            let mut out = Vec::new();
            for chunk in &chunks {
                c.seal_record(chunk, &mut out).unwrap();
            }
            assert!(matches!(open_all(&mut s, &out), Err(WireError::Invalid(_))));
        }
        let (mut c, _) = pair();
        assert!(matches!(
            c.seal(&vec![0; MAX_PAYLOAD + 1]),
            Err(WireError::TooLong { .. })
        ));
    }

    /// Random bytes and mangled valid record streams never panic, and
    /// nothing but the exact records sent (a prefix of them, at a frame
    /// boundary) is ever accepted; the handshake parsers take garbage too.
    #[test]
    fn fuzz_frames_and_decoders() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let sec = secret("fuzz");
        let (cc, sc) = (creds("c", &sec), creds("s", &sec));
        let (mut c, mut srv, ex) = handshake(&cc, &sc);
        // A stream of frames (one of them over several records) and where
        // each ends.
        let mut payloads: Vec<Vec<u8>> = requests()
            .iter()
            .map(|r| encode_request(r).unwrap())
            .filter(|p| p.len() < 4096)
            .take(3)
            .collect();
        payloads.insert(1, vec![9u8; MAX_CHUNK + 10]);
        let mut stream = Vec::new();
        let mut ends = vec![0];
        for p in &payloads {
            stream.extend(c.seal(p).unwrap());
            ends.push(stream.len());
        }
        let mut refused = 0u32;
        let rounds = 100_000u32;
        for round in 0..rounds {
            let input = match round % 5 {
                // Random bytes.
                0 => {
                    let n = rng.below(300);
                    rng.bytes(n)
                }
                // Random bytes behind a plausible header.
                1 => {
                    let n = MIN_RECORD + rng.below(200);
                    let mut v = (n as u16).to_be_bytes().to_vec();
                    v.extend(rng.bytes(n));
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
                // A length field set to something else.
                _ => {
                    let mut v = stream.clone();
                    let at = ends[rng.below(ends.len() - 1)];
                    let len = match rng.below(3) {
                        0 => u16::MAX - rng.below(1000) as u16,
                        1 => rng.below(MIN_RECORD) as u16,
                        _ => rng.next() as u16,
                    };
                    v[at..at + RECORD_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
                    v
                }
            };
            srv.rewind_receiver();
            match open_all(&mut srv, &input) {
                Ok(got) => {
                    let k = got.len();
                    assert_eq!(got, payloads[..k], "round {round}");
                    assert_eq!(input, stream[..ends[k]], "round {round}");
                }
                Err(_) => refused += 1,
            }
            // Decoders on raw bytes: never a panic.
            let _ = decode_request(&input);
            let _ = decode_response(&input);
            // The handshake parsers (no Noise decryption passes garbage).
            if round % 16 == 0 {
                let cut = &input[..input.len().min(MAX_HANDSHAKE)];
                assert!(ServerHandshake::accept(&sc, cut).is_err(), "round {round}");
                let (ch, _) = ClientHandshake::start(&cc).unwrap();
                assert!(ch.read_answer(cut, &id("s")).is_err(), "round {round}");
                let (ch, hello) = ClientHandshake::start(&cc).unwrap();
                let (sh, _) = ServerHandshake::accept(&sc, &hello[HEADER_LEN..]).unwrap();
                drop(ch);
                assert!(sh.finish(cut).is_err(), "round {round}");
                let mut h = ex.hello.clone();
                let at = rng.below(h.len());
                h[at] = rng.next() as u8;
                h.truncate(rng.below(h.len() + 1));
                let _ = ServerHandshake::accept(&sc, &h);
            }
        }
        assert!(refused > rounds * 3 / 4, "only {refused} inputs refused");
    }

    /// The bytes of a fresh client's three handshake messages and a short
    /// stream of records, for the property tests below.
    fn sample_stream() -> (Session, Vec<u8>, Vec<usize>) {
        let (mut c, s) = pair();
        let mut stream = Vec::new();
        let mut ends = vec![0];
        for p in [
            &b"one"[..],
            &[5u8; 300][..],
            &encode_request(&Request::Flush).unwrap(),
        ] {
            stream.extend(c.seal(p).unwrap());
            ends.push(stream.len());
        }
        (s, stream, ends)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Random bytes are never taken for records.
        #[test]
        fn random_bytes_are_refused_as_records(bytes in prop::collection::vec(any::<u8>(), 1..2048)) {
            let (_, mut s) = pair();
            prop_assert!(open_all(&mut s, &bytes).is_err());
        }

        /// A stream with bits flipped is refused; one cut short is taken
        /// only up to the last whole frame before the cut.
        #[test]
        fn flipped_and_cut_streams_are_refused(
            flips in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let (mut s, stream, ends) = sample_stream();
            let mut v = stream.clone();
            for f in &flips {
                let bit = f.index(v.len() * 8);
                v[bit / 8] ^= 1 << (bit % 8);
            }
            if v != stream {
                prop_assert!(open_all(&mut s, &v).is_err());
            }
            s.rewind_receiver();
            let at = cut.index(stream.len());
            match open_all(&mut s, &stream[..at]) {
                Ok(got) => prop_assert_eq!(ends[got.len()], at),
                Err(_) => prop_assert!(!ends.contains(&at)),
            }
        }

        /// Random handshake messages are refused at every step, and so are
        /// valid ones with a bit flipped or cut short; never a panic.
        #[test]
        fn random_and_mangled_handshake_messages_are_refused(
            bytes in prop::collection::vec(any::<u8>(), 0..MAX_HANDSHAKE + 1),
            flip in any::<prop::sample::Index>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let sec = secret("prop");
            let (cc, sc) = (creds("c", &sec), creds("s", &sec));
            // Random bytes at each step.
            prop_assert!(ServerHandshake::accept(&sc, &bytes).is_err());
            let (ch, _) = ClientHandshake::start(&cc).unwrap();
            prop_assert!(ch.read_answer(&bytes, &id("s")).is_err());
            let (_, hello) = ClientHandshake::start(&cc).unwrap();
            let (sh, _) = ServerHandshake::accept(&sc, &hello[HEADER_LEN..]).unwrap();
            prop_assert!(sh.finish(&bytes).is_err());
            // A valid answer with a bit flipped, or cut short.
            let (ch, hello) = ClientHandshake::start(&cc).unwrap();
            let (_, answer) = ServerHandshake::accept(&sc, &hello[HEADER_LEN..]).unwrap();
            let mut a = answer[HEADER_LEN..].to_vec();
            let bit = flip.index(a.len() * 8);
            a[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(ch.read_answer(&a, &id("s")).is_err());
            let (ch, hello) = ClientHandshake::start(&cc).unwrap();
            let (_, answer) = ServerHandshake::accept(&sc, &hello[HEADER_LEN..]).unwrap();
            let a = &answer[HEADER_LEN..];
            prop_assert!(ch.read_answer(&a[..cut.index(a.len())], &id("s")).is_err());
            // A valid message 3 with a bit flipped, or cut short.
            for mangle in [true, false] {
                let (ch, hello) = ClientHandshake::start(&cc).unwrap();
                let (sh, answer) = ServerHandshake::accept(&sc, &hello[HEADER_LEN..]).unwrap();
                let (last, _) = ch
                    .read_answer(&answer[HEADER_LEN..], &id("s"))
                    .unwrap()
                    .finish()
                    .unwrap();
                let mut l = last[HEADER_LEN..].to_vec();
                if mangle {
                    let bit = flip.index(l.len() * 8);
                    l[bit / 8] ^= 1 << (bit % 8);
                } else {
                    l.truncate(cut.index(l.len()));
                }
                prop_assert!(sh.finish(&l).is_err());
            }
            // An answer meant for another client's hello.
            let (_, hello) = ClientHandshake::start(&cc).unwrap();
            let (_, answer) = ServerHandshake::accept(&sc, &hello[HEADER_LEN..]).unwrap();
            let (ch, _) = ClientHandshake::start(&cc).unwrap();
            prop_assert!(ch.read_answer(&answer[HEADER_LEN..], &id("s")).is_err());
        }
    }
}
