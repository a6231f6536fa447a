//! The ring over TCP: [`TcpNet`] carries a node's calls to its peers,
//! [`serve`] (or [`Server`]) answers them.
//!
//! A connection starts with the Noise handshake of `noise`, which tells
//! each end the other's authenticated name and static key, then carries one
//! request and its response at a time, each an encrypted frame of one or
//! more records. Callers keep a few idle connections per peer, since a
//! quorum operation calls the same peers again and again and a handshake
//! costs a round trip.
//!
//! Whatever a peer sends that is unauthenticated, malformed or too slow
//! costs it that connection, never the server: a warning names the address
//! and the reason, at most one line per source address every
//! [`REFUSAL_LOG_EVERY`] (with the count of those not logged). Every wait
//! is bounded: a call by its timeout, a handshake by [`HANDSHAKE_TIMEOUT`],
//! a quiet connection by [`IDLE_TIMEOUT`], the connections served at once
//! by [`MAX_CONNECTIONS`], and those of one source address still in their
//! handshake by [`MAX_HANDSHAKES_PER_SOURCE`]: a host without the secret
//! can hold no more than that many slots, for 5 s each. Authenticated
//! connections are not limited per address, since the nodes of a test
//! ring, or behind one NAT, share one.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout, timeout_at};

use super::keys::Credentials;
use super::lograte::LogLimiter;
use super::noise::{
    self, ClientHandshake, HEADER_LEN, RECORD_HEADER_LEN, ServerHandshake, Session,
};
use super::wire::{self, WireError};
use super::{BoxFuture, Handler, Net, NetError, NodeId, Request, Response};

/// A node's ring address (`host:port`), or `None` for a node it does not
/// know.
pub type Resolver = Arc<dyn Fn(&NodeId) -> Option<String> + Send + Sync>;

/// Time a client has, once connected, to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A served connection with no request for this long is closed; so is one
/// whose frame or response takes this long to cross.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once; more are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections from one source address still in their handshake; more are
/// closed as soon as accepted.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 16;
/// At most one warning per source address (or per peer node, for a call
/// refused by this node) this often.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Idle connections kept per peer.
const POOL_PER_PEER: usize = 4;
/// An idle connection older than this is not reused: well under
/// [`IDLE_TIMEOUT`], so the server does not close it under a new call.
const POOL_MAX_IDLE: Duration = Duration::from_secs(30);
/// Pause after a failed accept (out of file descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Buffer grown at most this much ahead of the bytes that have arrived.
const READ_CHUNK: usize = 64 * 1024;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Connect(io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("connection closed by the peer")]
    Closed,
    #[error("{0} not done within {1:?}")]
    Late(&'static str, Duration),
}

/// A length prefix of `N` bytes, or `None` if the peer closed the
/// connection before it.
async fn read_header<const N: usize, R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<[u8; N]>, LinkError> {
    let mut header = [0u8; N];
    let mut got = 0;
    while got < N {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(WireError::Truncated.into())
            };
        }
        got += n;
    }
    Ok(Some(header))
}

/// `len` bytes (already checked against its maximum). The buffer grows as
/// bytes arrive, not by what the peer announced.
async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Vec<u8>, LinkError> {
    let mut body = Vec::with_capacity(len.min(READ_CHUNK));
    r.take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(WireError::Truncated.into());
    }
    Ok(body)
}

async fn read_handshake<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, LinkError> {
    let header = read_header::<HEADER_LEN, _>(r)
        .await?
        .ok_or(LinkError::Closed)?;
    read_body(r, noise::handshake_len(header)?).await
}

/// The records of one frame, once the first has begun: its payload.
async fn read_rest<R: AsyncRead + Unpin>(
    r: &mut R,
    session: &mut Session,
    first: [u8; RECORD_HEADER_LEN],
) -> Result<Vec<u8>, LinkError> {
    let mut header = first;
    loop {
        let body = read_body(r, noise::record_len(header)?).await?;
        if let Some(payload) = session.open_record(&body)? {
            return Ok(payload);
        }
        header = read_header::<RECORD_HEADER_LEN, _>(r)
            .await?
            .ok_or(WireError::Truncated)?;
    }
}

/// A frame's payload, or `None` if the peer closed the connection between
/// frames.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    session: &mut Session,
) -> Result<Option<Vec<u8>>, LinkError> {
    match read_header::<RECORD_HEADER_LEN, _>(r).await? {
        None => Ok(None),
        Some(header) => Ok(Some(read_rest(r, session, header).await?)),
    }
}

/// An authenticated connection to a peer, as a caller holds it.
struct Conn {
    stream: TcpStream,
    session: Session,
    addr: String,
    idle_since: Instant,
}

impl Conn {
    /// Connects to `addr` and runs the handshake, refusing a server that
    /// is not `to`, or not by the key this node knows `to` by.
    async fn open(creds: &Credentials, to: &NodeId, addr: &str) -> Result<Conn, LinkError> {
        let mut stream = TcpStream::connect(addr).await.map_err(LinkError::Connect)?;
        // Records are written whole; do not hold the last segment back.
        let _ = stream.set_nodelay(true);
        let session = Conn::handshake(&mut stream, creds, to).await?;
        Ok(Conn {
            stream,
            session,
            addr: addr.to_string(),
            idle_since: Instant::now(),
        })
    }

    async fn handshake(
        stream: &mut TcpStream,
        creds: &Credentials,
        to: &NodeId,
    ) -> Result<Session, LinkError> {
        let (state, hello) = ClientHandshake::start(creds)?;
        stream.write_all(&hello).await?;
        let answer = read_handshake(stream).await?;
        // Checks who answered before anything that depends on the secret
        // is sent.
        let (last, session) = state.read_answer(&answer, to)?.finish()?;
        stream.write_all(&last).await?;
        Ok(session)
    }

    /// Sends one request payload and reads its response.
    async fn exchange(&mut self, payload: &[u8]) -> Result<Response, LinkError> {
        let records = self.session.seal(payload)?;
        self.stream.write_all(&records).await?;
        let payload = read_frame(&mut self.stream, &mut self.session)
            .await?
            .ok_or(LinkError::Closed)?;
        Ok(wire::decode_response(&payload)?)
    }

    /// Whether the peer has not closed this idle connection (as far as the
    /// runtime has seen; a miss only costs the call that reuses it).
    fn looks_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// The ring's [`Net`] over TCP.
pub struct TcpNet {
    inner: Arc<Inner>,
}

struct Inner {
    creds: Credentials,
    timeout: Duration,
    resolve: Resolver,
    idle: Mutex<HashMap<NodeId, Vec<Conn>>>,
    /// Warnings about peers refused by this node's checks (another key).
    refusals: Mutex<LogLimiter<NodeId>>,
}

impl TcpNet {
    /// Calls from the node of `creds`, each given `timeout` in all
    /// (connecting, handshake, request and response), to the addresses
    /// `resolve` gives.
    pub fn new(creds: Credentials, timeout: Duration, resolve: Resolver) -> TcpNet {
        TcpNet {
            inner: Arc::new(Inner {
                creds,
                timeout,
                resolve,
                idle: Mutex::new(HashMap::new()),
                refusals: Mutex::new(LogLimiter::new(REFUSAL_LOG_EVERY)),
            }),
        }
    }

    #[cfg(test)]
    fn idle_count(&self, to: &NodeId) -> usize {
        self.inner.idle.lock().get(to).map_or(0, Vec::len)
    }
}

impl Net for TcpNet {
    fn call(&self, to: &NodeId, req: Request) -> BoxFuture<'static, Result<Response, NetError>> {
        let inner = self.inner.clone();
        let to = to.clone();
        Box::pin(async move { inner.call(to, req).await })
    }
}

impl Inner {
    async fn call(&self, to: NodeId, req: Request) -> Result<Response, NetError> {
        let deadline = Instant::now() + self.timeout;
        if to == self.creds.me {
            return Err(NetError::Unreachable(
                to,
                "a node does not call itself over the network".into(),
            ));
        }
        let Some(addr) = (self.resolve)(&to) else {
            return Err(NetError::UnknownNode(to));
        };
        let payload = match wire::encode_request(&req) {
            Ok(p) => p,
            Err(e) => return Err(NetError::Unreachable(to, format!("request not sent: {e}"))),
        };
        let mut conn = match self.take_idle(&to) {
            Some(conn) => conn,
            None => match timeout_at(deadline, Conn::open(&self.creds, &to, &addr)).await {
                Err(_) => return Err(NetError::Timeout(to)),
                Ok(Err(e)) => {
                    let why = match e {
                        LinkError::Connect(e) => format!("cannot connect to {addr}: {e}"),
                        e => {
                            self.warn_refused(&to, &e);
                            format!("handshake with {addr} failed: {e}")
                        }
                    };
                    return Err(NetError::Unreachable(to, why));
                }
                Ok(Ok(conn)) => conn,
            },
        };
        // On any failure the connection is dropped: its records are out
        // of step, or the peer is gone.
        let fresh = !conn.session.confirmed();
        match timeout_at(deadline, conn.exchange(&payload)).await {
            Err(_) => Err(NetError::Timeout(to)),
            Ok(Err(e)) => {
                self.warn_refused(&to, &e);
                let why = match e {
                    // What a server does on finding that this node does
                    // not hold its secret, or is known by another key.
                    LinkError::Closed | LinkError::Io(_) if fresh => format!(
                        "{}: {e} right after the handshake: does {to} hold this ring's secret, and know this node by its key? (see its log)",
                        conn.addr
                    ),
                    e => format!("{}: {e}", conn.addr),
                };
                Err(NetError::Unreachable(to, why))
            }
            Ok(Ok(resp)) => {
                self.put_idle(to, conn);
                Ok(resp)
            }
        }
    }

    /// Logs a peer refused for presenting another key than the one it is
    /// known by: the operator has to act (the node was reinstalled, or
    /// someone poses as it).
    fn warn_refused(&self, to: &NodeId, e: &LinkError) {
        if let LinkError::Wire(e @ (WireError::KeyChanged(_) | WireError::OwnKey(_))) = e
            && let Some(n) = self.refusals.lock().note(to, std::time::Instant::now())
        {
            tracing::warn!(node = %to, unlogged = n, "ring: call to {to} refused: {e}");
        }
    }

    fn take_idle(&self, to: &NodeId) -> Option<Conn> {
        let mut idle = self.idle.lock();
        let conns = idle.get_mut(to)?;
        while let Some(conn) = conns.pop() {
            if conn.idle_since.elapsed() < POOL_MAX_IDLE && conn.looks_open() {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, to: NodeId, mut conn: Conn) {
        conn.idle_since = Instant::now();
        let mut idle = self.idle.lock();
        let conns = idle.entry(to).or_default();
        if conns.len() < POOL_PER_PEER {
            conns.push(conn);
        }
    }
}

/// What the connections of one server share: who is in a handshake, and
/// the log limits.
struct Shared {
    creds: Credentials,
    handler: Arc<dyn Handler>,
    handshaking: Mutex<HashMap<IpAddr, usize>>,
    log: Mutex<LogLimiter<IpAddr>>,
}

impl Shared {
    /// Logs what became of a connection from `addr` (refused, dropped),
    /// within the limit of one line per source address.
    fn warn(&self, addr: SocketAddr, what: impl std::fmt::Display) {
        if let Some(n) = self.log.lock().note(&addr.ip(), std::time::Instant::now()) {
            if n > 0 {
                tracing::warn!(peer = %addr, unlogged = n,
                    "ring connection from {addr} {what} ({n} more from {} not logged in the last {} s)",
                    addr.ip(), REFUSAL_LOG_EVERY.as_secs());
            } else {
                tracing::warn!(peer = %addr, "ring connection from {addr} {what}");
            }
        }
    }

    /// A handshake slot for `ip`, or `None` if it has all of its own.
    fn begin_handshake(self: &Arc<Self>, ip: IpAddr) -> Option<HandshakeSlot> {
        let mut h = self.handshaking.lock();
        let n = h.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(HandshakeSlot {
            shared: self.clone(),
            ip,
        })
    }
}

/// A connection of one source address in its handshake; released when
/// dropped.
struct HandshakeSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut h = self.shared.handshaking.lock();
        if let Some(n) = h.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                h.remove(&self.ip);
            }
        }
    }
}

/// Answers ring calls to the node of `creds` on `listener` with `handler`,
/// until the returned future is dropped, which closes every connection it
/// serves.
pub async fn serve(listener: TcpListener, creds: Credentials, handler: Arc<dyn Handler>) {
    let shared = Arc::new(Shared {
        creds,
        handler,
        handshaking: Mutex::new(HashMap::new()),
        log: Mutex::new(LogLimiter::new(REFUSAL_LOG_EVERY)),
    });
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    if conns.len() >= MAX_CONNECTIONS {
                        shared.warn(addr, format_args!("refused: {MAX_CONNECTIONS} connections already open"));
                        continue;
                    }
                    let Some(slot) = shared.begin_handshake(addr.ip()) else {
                        shared.warn(addr, format_args!(
                            "refused: {MAX_HANDSHAKES_PER_SOURCE} connections from {} already in their handshake",
                            addr.ip()
                        ));
                        continue;
                    };
                    conns.spawn(connection(stream, addr, shared.clone(), slot));
                }
                Err(e) => {
                    tracing::warn!("ring listener: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::warn!("ring connection handler panicked: {e}");
                }
            }
        }
    }
}

/// [`serve`] on a task of its own, stopped when this is dropped.
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// Starts serving; must be called within a tokio runtime.
    pub fn spawn(
        listener: TcpListener,
        creds: Credentials,
        handler: Arc<dyn Handler>,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, creds, handler));
        Ok(Server { addr, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one connection to its end, logging why it ended if it was not
/// the peer's choice.
async fn connection(
    mut stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    slot: HandshakeSlot,
) {
    let _ = stream.set_nodelay(true);
    let session = match timeout(HANDSHAKE_TIMEOUT, accept(&mut stream, &shared.creds)).await {
        Ok(Ok(session)) => session,
        Ok(Err(why)) => {
            shared.warn(addr, format_args!("refused: {why}"));
            return;
        }
        Err(_) => {
            shared.warn(
                addr,
                format_args!("refused: no handshake within {HANDSHAKE_TIMEOUT:?}"),
            );
            return;
        }
    };
    drop(slot);
    let peer = session.peer().clone();
    match answer(&mut stream, session, &*shared.handler).await {
        Ok(()) => tracing::debug!(peer = %addr, node = %peer, "ring connection closed"),
        Err(e) => shared.warn(addr, format_args!("(node {peer}) dropped: {e}")),
    }
}

/// The server's side of the handshake.
async fn accept(stream: &mut TcpStream, creds: &Credentials) -> Result<Session, String> {
    let hello = read_handshake(stream)
        .await
        .map_err(|e| format!("bad hello: {e}"))?;
    let (state, answer) =
        ServerHandshake::accept(creds, &hello).map_err(|e| format!("bad hello: {e}"))?;
    let failed = |e: LinkError| format!("handshake failed: {e}");
    stream
        .write_all(&answer)
        .await
        .map_err(|e| failed(e.into()))?;
    let last = read_handshake(stream).await.map_err(|e| match e {
        // What a client does on finding that this node is not the one it
        // called, or not by the key it knows it by.
        LinkError::Closed => {
            failed(LinkError::Closed) + " (the client refused this node's name or key: see its log)"
        }
        e => failed(e),
    })?;
    state.finish(&last).map_err(|e| failed(e.into()))
}

/// Answers requests, one at a time, until the peer closes the connection
/// or stays quiet for [`IDLE_TIMEOUT`].
async fn answer(
    stream: &mut TcpStream,
    mut session: Session,
    handler: &dyn Handler,
) -> Result<(), LinkError> {
    let peer = session.peer().clone();
    loop {
        let header = match timeout(IDLE_TIMEOUT, read_header::<RECORD_HEADER_LEN, _>(stream)).await
        {
            Err(_) => return Ok(()),
            Ok(header) => match header? {
                None => return Ok(()),
                Some(header) => header,
            },
        };
        let payload = timeout(IDLE_TIMEOUT, read_rest(stream, &mut session, header))
            .await
            .map_err(|_| LinkError::Late("reading a frame", IDLE_TIMEOUT))??;
        let req = wire::decode_request(&payload)?;
        let resp = handler.handle(peer.clone(), req).await;
        let payload = match wire::encode_response(&resp) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::warn!(node = %peer, "ring response to {peer} not sendable: {e}");
                wire::encode_response(&Response::Refused(format!("response not sendable: {e}")))?
            }
        };
        let records = session.seal(&payload)?;
        timeout(IDLE_TIMEOUT, stream.write_all(&records))
            .await
            .map_err(|_| LinkError::Late("sending a response", IDLE_TIMEOUT))??;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::keys::{Secret, StaticKey};
    use crate::ring::version::{Dvv, Entry};

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn secret(s: &str) -> Secret {
        Secret::new(format!("{s:0>16}").as_bytes()).unwrap()
    }

    fn creds(name: &str, secret: &Secret) -> Credentials {
        Credentials::for_test(name, secret)
    }

    /// Answers who it is and who asked; a `Read` of "slow" takes 2 s, one
    /// of "panic" panics, and a `Coordinate` is answered with its value.
    struct Echo {
        me: NodeId,
    }

    impl Handler for Echo {
        fn handle(&self, from: NodeId, req: Request) -> BoxFuture<'static, Response> {
            let me = self.me.clone();
            Box::pin(async move {
                match req {
                    Request::Read { key, .. } if key == b"slow" => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        Response::Done
                    }
                    Request::Read { key, .. } if key == b"panic" => panic!("handler bug"),
                    Request::Coordinate { key, value, .. } => Response::Entries(vec![(
                        key,
                        Dvv {
                            entries: vec![Entry {
                                actor: me.to_string(),
                                counter: 1,
                                values: vec![value],
                            }],
                            anonymous: vec![],
                        },
                    )]),
                    _ => Response::Refused(format!("{me} heard {from}")),
                }
            })
        }
    }

    async fn server(name: &str, secret: &Secret) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handler = Arc::new(Echo { me: id(name) });
        Server::spawn(listener, creds(name, secret), handler).unwrap()
    }

    fn net(me: &str, secret: &Secret, timeout: Duration, addrs: &[(&str, SocketAddr)]) -> TcpNet {
        net_of(creds(me, secret), timeout, addrs)
    }

    fn net_of(creds: Credentials, timeout: Duration, addrs: &[(&str, SocketAddr)]) -> TcpNet {
        let addrs: HashMap<NodeId, String> =
            addrs.iter().map(|(n, a)| (id(n), a.to_string())).collect();
        TcpNet::new(creds, timeout, Arc::new(move |n| addrs.get(n).cloned()))
    }

    /// Shows the server's warnings with a failing test's output.
    fn logs() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }

    async fn hello(net: &TcpNet, to: &str) -> Result<Response, NetError> {
        net.call(&id(to), Request::GetLayout).await
    }

    /// Whether the server closed `stream` without answering.
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        match timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_answer_each_other_over_reused_connections() {
        let s = secret("ring");
        let (a, b) = (server("a", &s).await, server("b", &s).await);
        let addrs = [("a", a.local_addr()), ("b", b.local_addr())];
        let (net_a, net_b) = (
            net("a", &s, Duration::from_secs(5), &addrs),
            net("b", &s, Duration::from_secs(5), &addrs),
        );
        for _ in 0..3 {
            assert_eq!(
                hello(&net_a, "b").await.unwrap(),
                Response::Refused("b heard a".into())
            );
            assert_eq!(
                hello(&net_b, "a").await.unwrap(),
                Response::Refused("a heard b".into())
            );
        }
        assert_eq!(net_a.idle_count(&id("b")), 1, "one connection, reused");
        // Concurrent calls open more connections; at most 4 stay idle.
        let calls: Vec<_> = (0..8)
            .map(|_| net_a.call(&id("b"), Request::GetLayout))
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        assert!((1..=POOL_PER_PEER).contains(&net_a.idle_count(&id("b"))));
        // The largest values, both ways.
        let value = vec![7u8; crate::ring::msg::MAX_VALUE];
        let req = Request::Coordinate {
            key: b"/big".to_vec(),
            value: Some(value.clone()),
            context: Default::default(),
            layout: 1,
        };
        match net_a.call(&id("b"), req).await.unwrap() {
            Response::Entries(e) => assert_eq!(e[0].1.values(), vec![Some(value)]),
            other => panic!("{other:?}"),
        }
        // Unknown nodes, and itself.
        assert_eq!(
            hello(&net_a, "zz").await,
            Err(NetError::UnknownNode(id("zz")))
        );
        assert!(matches!(
            hello(&net_a, "a").await,
            Err(NetError::Unreachable(..))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_secret_is_refused_and_the_server_keeps_serving() {
        logs();
        let s = secret("ring");
        let b = server("b", &s).await;
        let addrs = [("b", b.local_addr())];
        let intruder = net("a", &secret("guess"), Duration::from_secs(5), &addrs);
        let friend = net("a", &s, Duration::from_secs(5), &addrs);
        for _ in 0..3 {
            match hello(&intruder, "b").await {
                Err(NetError::Unreachable(_, why)) => assert!(why.contains("secret"), "{why}"),
                other => panic!("{other:?}"),
            }
            hello(&friend, "b").await.unwrap();
        }
        // A server with the wrong secret is refused by the caller too.
        let fake = server("c", &secret("guess")).await;
        let to_fake = net("a", &s, Duration::from_secs(5), &[("c", fake.local_addr())]);
        assert!(matches!(
            hello(&to_fake, "c").await,
            Err(NetError::Unreachable(..))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_huge_lengths_and_tampered_frames_cost_only_their_connection() {
        logs();
        let s = secret("ring");
        let b = server("b", &s).await;
        let friend = net("a", &s, Duration::from_secs(5), &[("b", b.local_addr())]);

        let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(closed(&mut raw).await, "garbage");
        hello(&friend, "b").await.unwrap();

        let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
        raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(closed(&mut raw).await, "huge handshake length");
        hello(&friend, "b").await.unwrap();

        // A real handshake, then records that are tampered with, too
        // short, or cut.
        let a = creds("a", &s);
        for attack in ["tampered", "short", "truncated", "cleartext"] {
            let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
            let mut session = Conn::handshake(&mut raw, &a, &id("b")).await.unwrap();
            assert_eq!(session.peer(), &id("b"));
            let payload = wire::encode_request(&Request::GetLayout).unwrap();
            let mut frame = session.seal(&payload).unwrap();
            match attack {
                "tampered" => frame[RECORD_HEADER_LEN] ^= 1,
                "short" => frame[..RECORD_HEADER_LEN].copy_from_slice(&[0, 3]),
                "cleartext" => {
                    frame = (payload.len() as u16 + 16).to_be_bytes().to_vec();
                    frame.extend_from_slice(&payload);
                    frame.extend_from_slice(&[0; 16]);
                }
                _ => {
                    frame.pop();
                }
            }
            raw.write_all(&frame).await.unwrap();
            if attack == "truncated" {
                raw.shutdown().await.unwrap();
            }
            assert!(closed(&mut raw).await, "{attack}");
            hello(&friend, "b").await.unwrap();
        }

        // A valid frame that does not decode.
        let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
        let mut session = Conn::handshake(&mut raw, &a, &id("b")).await.unwrap();
        raw.write_all(&session.seal(&[0xff; 9]).unwrap())
            .await
            .unwrap();
        assert!(closed(&mut raw).await, "undecodable");
        hello(&friend, "b").await.unwrap();

        // A client claiming the server's own name.
        let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
        assert!(
            Conn::handshake(&mut raw, &creds("b", &s), &id("b"))
                .await
                .is_err()
        );
        hello(&friend, "b").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_known_name_with_another_key_is_refused_both_ways() {
        logs();
        let s = secret("ring");
        let b = server("b", &s).await;
        let addrs = [("b", b.local_addr())];
        let friend = net("a", &s, Duration::from_secs(5), &addrs);
        hello(&friend, "b").await.unwrap();
        // Another client calling itself a, with a key of its own.
        let impostor = Credentials {
            key: StaticKey::for_test("not a"),
            ..creds("a", &s)
        };
        let impostor = net_of(impostor, Duration::from_secs(5), &addrs);
        match hello(&impostor, "b").await {
            Err(NetError::Unreachable(_, why)) => {
                assert!(why.contains("know this node by its key"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        hello(&friend, "b").await.unwrap();
        // A server answering as b, with another key, at b's address: the
        // friend, which knows b, refuses it before message 3.
        drop(b);
        // The abort takes effect on the runtime, soon.
        let mut listener = None;
        for _ in 0..100 {
            if let Ok(l) = TcpListener::bind(addrs[0].1).await {
                listener = Some(l);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let listener = listener.expect("b's port is still taken");
        let fake = Credentials {
            key: StaticKey::for_test("not b"),
            ..creds("b", &s)
        };
        let _fake = Server::spawn(listener, fake, Arc::new(Echo { me: id("b") })).unwrap();
        // The pooled connection to the real b is gone with it.
        let mut refused = None;
        for _ in 0..3 {
            match hello(&friend, "b").await {
                Err(NetError::Unreachable(_, why)) if why.contains("static key") => {
                    refused = Some(why);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let why = refused.expect("the fake b was not refused");
        assert!(
            why.contains("node b presented static key") && why.contains("reinstalled"),
            "{why}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_source_holds_few_connections_in_their_handshake() {
        logs();
        let s = secret("ring");
        let b = server("b", &s).await;
        // Connections that never say a word hold the slots of 127.0.0.1.
        let mut silent = Vec::new();
        for _ in 0..MAX_HANDSHAKES_PER_SOURCE {
            silent.push(TcpStream::connect(b.local_addr()).await.unwrap());
        }
        let start = Instant::now();
        let mut one_more = TcpStream::connect(b.local_addr()).await.unwrap();
        assert!(closed(&mut one_more).await);
        assert!(
            start.elapsed() < HANDSHAKE_TIMEOUT,
            "closed at once, not after the handshake timeout"
        );
        // Once they are gone, the address gets in again.
        drop(silent);
        let a = net("a", &s, Duration::from_secs(5), &[("b", b.local_addr())]);
        let mut ok = false;
        for _ in 0..50 {
            if hello(&a, "b").await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            ok,
            "127.0.0.1 still refused once its connections were closed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_answer_times_out() {
        let s = secret("ring");
        let b = server("b", &s).await;
        let a = net(
            "a",
            &s,
            Duration::from_millis(300),
            &[("b", b.local_addr())],
        );
        let start = Instant::now();
        let slow = a.call(
            &id("b"),
            Request::Read {
                key: b"slow".to_vec(),
                layout: 1,
            },
        );
        assert_eq!(slow.await, Err(NetError::Timeout(id("b"))));
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(
            a.idle_count(&id("b")),
            0,
            "a timed-out connection is dropped"
        );
        hello(&a, "b").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_handler_costs_only_its_connection() {
        let s = secret("ring");
        let b = server("b", &s).await;
        let a = net("a", &s, Duration::from_secs(5), &[("b", b.local_addr())]);
        let bug = a.call(
            &id("b"),
            Request::Read {
                key: b"panic".to_vec(),
                layout: 1,
            },
        );
        assert!(matches!(bug.await, Err(NetError::Unreachable(..))));
        hello(&a, "b").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_with_another_name_is_refused() {
        let s = secret("ring");
        let b = server("b", &s).await;
        // The address of b, given for c.
        let a = net("a", &s, Duration::from_secs(5), &[("c", b.local_addr())]);
        match hello(&a, "c").await {
            Err(NetError::Unreachable(n, why)) => {
                assert_eq!(n, id("c"));
                assert!(why.contains("answered as node b"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_server_is_unreachable() {
        let s = secret("ring");
        let b = server("b", &s).await;
        let addr = b.local_addr();
        let a = net("a", &s, Duration::from_secs(5), &[("b", addr)]);
        hello(&a, "b").await.unwrap();
        drop(b);
        // The abort takes effect on the runtime, soon.
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Whether the idle connection is seen closed or fails in use, the
        // call fails quickly; so does the next one, with nothing listening.
        for _ in 0..2 {
            assert!(matches!(
                hello(&a, "b").await,
                Err(NetError::Unreachable(..))
            ));
        }
    }
}
