//! Ring membership and failure detection: who is in the ring, at which
//! ring (TCP) address, with which layout version, and whom this node
//! currently believes alive.
//!
//! Two mechanisms, both needed for a node to count as alive:
//!
//! - **SWIM membership** ([foca]): nodes join through seed addresses, learn
//!   about each other by gossip, probe each other (directly, then through
//!   other members) and agree, eventually, on who is up, suspect or down.
//!   A node that leaves ([`Gossip::shutdown`]) says so and is down at once.
//! - **Phi-accrual failure detection** (Hayashibara et al., 2004, as in
//!   Cassandra, Akka and chitchat), computed here over the arrival times of
//!   heartbeats. foca's periodic gossip is set to go to *every* member once
//!   per interval (the rings are small: 3 to 10 nodes); each such `Gossip`
//!   message received straight from a peer is one heartbeat arrival. foca
//!   skips a gossip round that has nothing to send, so each round gets a
//!   fresh heartbeat record (a foca custom broadcast: node, generation,
//!   sequence number, layout version), which is also how layout versions
//!   spread. Phi grows with the silence since the last arrival, scaled by
//!   the history of intervals, so a crashed node is suspected after about
//!   `interval + acceptable_pause + 5 standard deviations`, and a slow but
//!   regular node is not.
//!
//! A node is alive when foca counts it as a member (alive or suspect) *and*
//! its phi is below the threshold. The answer is purely local.
//!
//! **Why foca and not chitchat.** chitchat 0.13 owns its transport: its
//! `Transport` trait is built on `anyhow` and its message serialization is
//! `pub(crate)`, so there is no place to authenticate a datagram before it
//! is parsed. foca is transport-agnostic: it takes received bytes in
//! `handle_data` and hands out the bytes to send through its `Runtime`, so
//! this module owns the UDP socket and wraps every datagram.
//!
//! **Authentication.** Every datagram is `foca bytes ‖ sender instance
//! (8 bytes) ‖ counter (8) ‖ to-any flag (1) ‖ HMAC-SHA256 tag (32)`. The
//! tag covers all of it and the name of the node the datagram is for (or
//! none, for an announcement to a seed whose name is not known yet: the
//! flag), under the gossip key that `keys::Secret` derives from the ring's
//! secret with a label of its own (not the links' Noise key). The tag is
//! checked in constant time before anything is parsed.
//!
//! **Replays.** The instance is drawn at random when gossip starts, and the
//! counter numbers its datagrams from 1. A receiver keeps, per sender
//! instance, the highest counter seen and which of the 128 below it came
//! (a sliding window, as IPsec does), so a datagram captured and sent
//! again to the same node is dropped, as is one older than the window; the
//! node name under the tag keeps one sent to a node from being taken by
//! another. Datagrams that are too short, too long, fail the tag, are
//! replayed or do not decode are dropped and logged with `warn!`, at most
//! one line per source address every 10 s (with a count of those dropped
//! silently), so a flood cannot fill the log.
//!
//! What this does **not** stop: anyone holding the secret is a member and
//! can claim any node name in gossip (only the links, `noise`, bind names
//! to keys); there is no confidentiality (gossip is readable on the wire:
//! node names, addresses, layout versions); a passive capture of one
//! datagram lets its holder test guesses of the secret offline (the tag is
//! a function of the secret and public bytes: use a random secret); a node
//! that restarted forgets the windows, so datagrams captured before, of
//! instances still running, are each taken once more (one per instance
//! forgotten to make room, too, past [`MAX_INSTANCES`]); and an
//! announcement to a seed (for any node) can be replayed once to each
//! other node. Those are mostly harmless: SWIM state carries incarnation
//! numbers and identities carry a generation, so old news loses against
//! newer news, and heartbeats carry sequence numbers.
//!
//! **Identities.** A member is `(NodeId, gossip address, ring address,
//! generation)`; the generation is the start time in microseconds, so a
//! restarted node is a new member that replaces its old self (foca
//! `Identity::win_addr_conflict`), and a node wrongly declared down rejoins
//! at once with a larger generation (`Identity::renew`). A wall clock set
//! backwards across a restart makes the new process lose to its old self
//! until the old identity is forgotten.
//!
//! Runs on the current tokio runtime: one task owns the UDP socket, the
//! foca instance and its timers; another resolves the seeds and asks for
//! announcements while the node knows no peer (and now and then after, to
//! heal a ring that formed as two halves).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use foca::{
    AccumulatingRuntime, BroadcastHandler, Foca, Identity, Invalidates, OwnedNotification,
    PeriodicParams, PostcardCodec, Timer,
};
use hmac::{Hmac, Mac};
use parking_lot::{Mutex, RwLock};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::keys::Secret;
use super::lograte::LogLimiter;
use super::{Liveness, NodeId};

const TAG_LEN: usize = 32;
/// Sender instance, counter and flag, between the payload and the tag.
const STAMP_LEN: usize = 8 + 8 + 1;
/// Largest foca payload, below a common MTU once stamp and tag are added.
const MAX_PAYLOAD: usize = 1400;
const MAX_DATAGRAM: usize = MAX_PAYLOAD + STAMP_LEN + TAG_LEN;
/// Width of the replay window of each sender instance.
const REPLAY_WINDOW: u64 = 128;
/// Sender instances whose replay windows are kept (the least recently
/// heard from makes room for a new one).
pub const MAX_INSTANCES: usize = 1024;
/// Longest ring address carried in an identity (identities travel in every
/// datagram header, so they must stay small).
const MAX_RING_ADDR: usize = 255;
/// At most one warning per source address this often.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// "Every member" for foca's periodic gossip: more than any ring has.
const GOSSIP_FANOUT: usize = 1024;
/// How many times foca sends one membership update or heartbeat record.
/// One gossip round sends the heartbeat record once per member: at least
/// the ring's size, so that each round's record reaches every member.
const MAX_TRANSMISSIONS: u8 = 64;
/// While connected, announce to the seeds every this many intervals (to
/// join up a ring that started as separate groups).
const REANNOUNCE_EVERY: u64 = 30;

type HmacSha256 = Hmac<Sha256>;

/// Timing of gossip and of the failure detector.
#[derive(Clone, Debug)]
pub struct GossipTiming {
    /// How often each node gossips to every member (its heartbeat) and
    /// probes one member. Also the first estimate of the heartbeat interval.
    pub interval: Duration,
    /// Phi at or above which a node is suspected (8: Akka, Cassandra).
    pub phi_threshold: f64,
    /// Floor of the standard deviation of heartbeat intervals, so that a
    /// very regular history does not make phi jump at the first small delay.
    pub min_std_dev: Duration,
    /// Silence tolerated on top of the mean interval before phi climbs
    /// (lost datagrams, GC-like pauses, a busy host).
    pub acceptable_pause: Duration,
    /// How many recent heartbeat intervals the detector remembers.
    pub max_samples: usize,
}

impl Default for GossipTiming {
    fn default() -> Self {
        // Akka's cluster failure detector defaults for a 1 s heartbeat.
        GossipTiming {
            interval: Duration::from_secs(1),
            phi_threshold: 8.0,
            min_std_dev: Duration::from_millis(100),
            acceptable_pause: Duration::from_secs(3),
            max_samples: 200,
        }
    }
}

/// What a node needs to join the ring's gossip.
#[derive(Clone)]
pub struct GossipConfig {
    pub node: NodeId,
    /// UDP address to bind, and the one peers send to: it must be reachable
    /// by them, so not `0.0.0.0`/`[::]`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// This node's ring (TCP) address, `host:port`, told to the peers.
    pub ring_addr: String,
    /// Gossip addresses (`host:port`) of some other nodes. Unresolvable ones
    /// are logged and retried, not fatal.
    pub seeds: Vec<String>,
    /// Shared by all the ring's nodes: the gossip key is derived from it.
    pub secret: Secret,
    pub timing: GossipTiming,
}

/// A running gossip member: membership, addresses, layout versions and the
/// failure detector. Dropping it leaves the ring (in the background);
/// [`Gossip::shutdown`] leaves and waits.
pub struct Gossip {
    inner: Arc<Inner>,
    cmds: mpsc::UnboundedSender<Cmd>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Gossip {
    /// Binds the UDP socket and starts the gossip tasks on the current
    /// tokio runtime.
    pub async fn start(cfg: GossipConfig) -> io::Result<Gossip> {
        let timing = &cfg.timing;
        if timing.interval < Duration::from_millis(10) {
            return Err(invalid("gossip interval must be at least 10 ms"));
        }
        if !(timing.phi_threshold.is_finite() && timing.phi_threshold > 0.0) {
            return Err(invalid("phi threshold must be a positive number"));
        }
        if cfg.listen.ip().is_unspecified() {
            return Err(invalid(
                "gossip address must be one the peers can reach, not a wildcard address",
            ));
        }
        if cfg.ring_addr.is_empty() || cfg.ring_addr.len() > MAX_RING_ADDR {
            return Err(invalid("ring address must be 1 to 255 bytes"));
        }
        let auth = Auth::new(cfg.secret.gossip_key())?;
        let socket = UdpSocket::bind(cfg.listen).await?;
        let local = socket.local_addr()?;

        let ident = Ident {
            node: cfg.node.clone(),
            gossip: local,
            ring: cfg.ring_addr.clone(),
            generation: next_generation(0),
        };
        let inner = Arc::new(Inner {
            me: cfg.node.clone(),
            ring_addr: cfg.ring_addr.clone(),
            local,
            params: PhiParams::from_timing(timing),
            layout_version: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            running: AtomicBool::new(true),
            peers: RwLock::new(HashMap::new()),
        });
        let seed =
            getrandom::u64().unwrap_or_else(|_| now_micros() ^ u64::from(std::process::id()));
        let foca = Foca::with_custom_broadcast(
            ident,
            foca_config(timing.interval),
            SmallRng::seed_from_u64(seed),
            PostcardCodec,
            Beats {
                inner: inner.clone(),
            },
        );
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            foca,
            rt: AccumulatingRuntime::new(),
            socket,
            inner: inner.clone(),
            auth,
            timers: BTreeMap::new(),
            timer_seq: 0,
            beat_seq: 0,
            replays: ReplayWindows::default(),
            drops: LogLimiter::new(LOG_EVERY),
            leaving: false,
        };
        tracing::info!(node = %cfg.node, gossip = %local, ring = %cfg.ring_addr, "gossip: started");
        let driver = tokio::spawn(driver.run(cmd_rx));
        let seeder = tokio::spawn(seed_loop(
            cfg.seeds,
            local,
            timing.interval,
            cmds.downgrade(),
            inner.clone(),
        ));
        Ok(Gossip {
            inner,
            cmds,
            tasks: Mutex::new(vec![driver, seeder]),
        })
    }

    /// The UDP address gossip is bound to (the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Live nodes and their ring addresses, this node included, by name.
    pub fn live_nodes(&self) -> Vec<(NodeId, String)> {
        if !self.inner.running.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let now = Instant::now();
        let mut out = vec![(self.inner.me.clone(), self.inner.ring_addr.clone())];
        let peers = self.inner.peers.read();
        for (node, peer) in peers.iter() {
            if self.inner.peer_alive(peer, now) {
                out.push((node.clone(), peer.ident.ring.clone()));
            }
        }
        out.sort();
        out
    }

    /// Publishes this node's layout version with its next heartbeats.
    pub fn set_layout_version(&self, version: u64) {
        self.inner.layout_version.store(version, Ordering::Relaxed);
    }

    /// The layout version each live node last announced, this node
    /// included, by name (a node not heard from yet is missing).
    pub fn layout_versions(&self) -> Vec<(NodeId, u64)> {
        if !self.inner.running.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let now = Instant::now();
        let mut out = vec![(
            self.inner.me.clone(),
            self.inner.layout_version.load(Ordering::Relaxed),
        )];
        let peers = self.inner.peers.read();
        for (node, peer) in peers.iter() {
            if let Some(v) = peer.layout_version
                && self.inner.peer_alive(peer, now)
            {
                out.push((node.clone(), v));
            }
        }
        out.sort();
        out
    }

    /// The failure detector's current suspicion of `node` (0: just heard
    /// from it; at or above the threshold: suspected). `None` for this node
    /// and for nodes never heard of.
    pub fn phi(&self, node: &NodeId) -> Option<f64> {
        let peers = self.inner.peers.read();
        peers.get(node).map(|p| p.detector.phi(Instant::now()))
    }

    /// Leaves the ring (the peers are told, so they see this node down at
    /// once) and stops the tasks. Idempotent.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.cmds.send(Cmd::Leave(done)).is_ok() {
            // The driver answers once the goodbye datagrams are sent.
            let limit = Duration::from_secs(5);
            if tokio::time::timeout(limit, wait).await.is_err() {
                tracing::warn!("gossip: leaving the ring took over 5 s; stopping anyway");
            }
        }
        self.inner.running.store(false, Ordering::Relaxed);
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }

    /// Kills the tasks without a goodbye, as a crash would.
    #[cfg(test)]
    fn crash(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

impl Liveness for Gossip {
    fn is_alive(&self, node: &NodeId) -> bool {
        if !self.inner.running.load(Ordering::Relaxed) {
            return false;
        }
        if *node == self.inner.me {
            return true;
        }
        let peers = self.inner.peers.read();
        peers
            .get(node)
            .is_some_and(|p| self.inner.peer_alive(p, Instant::now()))
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

fn foca_config(interval: Duration) -> foca::Config {
    let n = |v: usize| NonZeroUsize::new(v).unwrap_or(NonZeroUsize::MIN);
    foca::Config {
        probe_period: interval,
        probe_rtt: interval / 2,
        num_indirect_probes: n(3),
        max_transmissions: NonZeroU8::new(MAX_TRANSMISSIONS).unwrap_or(NonZeroU8::MIN),
        // foca's LAN setting for up to 10 nodes: 4 probe periods.
        suspect_to_down_after: interval * 4,
        // Identities renew themselves, so a long memory of the down ones
        // costs nothing but a few entries (foca's default).
        remove_down_after: Some(Duration::from_secs(24 * 60 * 60)),
        max_packet_size: n(MAX_PAYLOAD),
        notify_down_members: true,
        periodic_announce: Some(PeriodicParams {
            frequency: interval * 10,
            num_members: n(1),
        }),
        periodic_announce_to_down_members: Some(PeriodicParams {
            frequency: interval * 10,
            num_members: n(2),
        }),
        // To every member, every interval: the heartbeats (see add_beat).
        periodic_gossip: Some(PeriodicParams {
            frequency: interval,
            num_members: n(GOSSIP_FANOUT),
        }),
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A generation newer than `prev`: the clock when it has moved on.
fn next_generation(prev: u64) -> u64 {
    now_micros().max(prev.saturating_add(1))
}

// ---------------------------------------------------------------------------
// Identity and heartbeats

/// A member as foca knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Ident {
    node: NodeId,
    /// Where to send it datagrams; foca's `Addr`: one member per address.
    gossip: SocketAddr,
    ring: String,
    generation: u64,
}

impl Identity for Ident {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Ident {
            generation: next_generation(self.generation),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, &self.node, &self.ring)
            > (adversary.generation, &adversary.node, &adversary.ring)
    }
}

/// Stands for a seed whose identity is not known yet: foca accepts an
/// announcement addressed to any identity with the receiver's address.
fn seed_ident(addr: SocketAddr) -> Ident {
    Ident {
        node: NodeId("seed".to_string()),
        gossip: addr,
        ring: String::new(),
        generation: 0,
    }
}

/// One heartbeat, sent as a foca custom broadcast with each periodic gossip.
/// Its presence is what makes foca gossip every interval (foca skips a
/// round that has nothing to send); it also carries the layout version.
#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    node: NodeId,
    generation: u64,
    seq: u64,
    layout_version: u64,
}

struct BeatKey {
    node: NodeId,
    generation: u64,
    seq: u64,
}

impl Invalidates for BeatKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && (self.generation, self.seq) >= (other.generation, other.seq)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable heartbeat: {0}")]
struct BadBeat(postcard::Error);

/// foca's custom broadcast handler: keeps sending this node's latest
/// heartbeat and takes the layout versions from received ones.
struct Beats {
    inner: Arc<Inner>,
}

impl BroadcastHandler<Ident> for Beats {
    type Key = BeatKey;
    type Error = BadBeat;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&Ident>,
    ) -> Result<Option<BeatKey>, BadBeat> {
        let beat: Beat = postcard::from_bytes(data).map_err(BadBeat)?;
        match sender {
            // Our own, from add_broadcast: disseminate it.
            None => Ok(Some(BeatKey {
                node: beat.node,
                generation: beat.generation,
                seq: beat.seq,
            })),
            // Only heartbeats straight from their node count (every node
            // gossips to every member), and none is relayed.
            Some(from) => {
                if from.node == beat.node && from.generation == beat.generation {
                    self.inner.record_beat(from, &beat);
                }
                Ok(None)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Shared state

struct Inner {
    me: NodeId,
    ring_addr: String,
    local: SocketAddr,
    params: PhiParams,
    layout_version: AtomicU64,
    /// foca knows at least one live member.
    connected: AtomicBool,
    running: AtomicBool,
    peers: RwLock<HashMap<NodeId, Peer>>,
}

impl Inner {
    fn peer_alive(&self, peer: &Peer, now: Instant) -> bool {
        peer.up && peer.detector.phi(now) < self.params.threshold
    }

    /// The entry for `from`, adopting it if it is a newer generation;
    /// `None` if it is an older process under the same name.
    fn peer_entry<'a>(
        &self,
        peers: &'a mut HashMap<NodeId, Peer>,
        from: &Ident,
    ) -> Option<&'a mut Peer> {
        let peer = peers
            .entry(from.node.clone())
            .or_insert_with(|| Peer::new(from.clone(), self.params));
        if peer.ident != *from {
            if from.generation < peer.ident.generation {
                return None;
            }
            peer.reset(from.clone(), self.params);
        }
        Some(peer)
    }

    /// A periodic gossip message straight from `from`: one heartbeat
    /// arrival for the failure detector.
    fn record_arrival(&self, from: &Ident, now: Instant) {
        if from.node == self.me {
            return;
        }
        let mut peers = self.peers.write();
        if let Some(peer) = self.peer_entry(&mut peers, from) {
            peer.detector.heartbeat(now);
        }
    }

    fn record_beat(&self, from: &Ident, beat: &Beat) {
        if from.node == self.me {
            return;
        }
        let mut peers = self.peers.write();
        if let Some(peer) = self.peer_entry(&mut peers, from) {
            // Sequence numbers: a late or replayed heartbeat cannot roll
            // the layout version back.
            if beat.seq > peer.last_seq {
                peer.last_seq = beat.seq;
                peer.layout_version = Some(beat.layout_version);
            }
        }
    }
}

/// What this node knows of another, by name.
struct Peer {
    /// The newest identity seen under this name.
    ident: Ident,
    /// foca counts `ident` as a member (alive or suspect).
    up: bool,
    last_seq: u64,
    layout_version: Option<u64>,
    detector: PhiAccrual,
}

impl Peer {
    fn new(ident: Ident, params: PhiParams) -> Peer {
        Peer {
            ident,
            up: false,
            last_seq: 0,
            layout_version: None,
            detector: PhiAccrual::new(params),
        }
    }

    fn reset(&mut self, ident: Ident, params: PhiParams) {
        *self = Peer::new(ident, params);
    }
}

// ---------------------------------------------------------------------------
// Phi-accrual failure detector

#[derive(Clone, Copy, Debug)]
struct PhiParams {
    threshold: f64,
    /// All durations in milliseconds.
    first_estimate: f64,
    min_std_dev: f64,
    acceptable_pause: f64,
    max_samples: usize,
}

impl PhiParams {
    fn from_timing(t: &GossipTiming) -> PhiParams {
        PhiParams {
            threshold: t.phi_threshold,
            first_estimate: ms(t.interval),
            min_std_dev: ms(t.min_std_dev),
            acceptable_pause: ms(t.acceptable_pause),
            max_samples: t.max_samples.max(2),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Phi accrual over a sliding window of heartbeat intervals, with running
/// sums so that phi costs O(1) (it is computed on every `is_alive`).
struct PhiAccrual {
    params: PhiParams,
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last: Option<Instant>,
}

impl PhiAccrual {
    fn new(params: PhiParams) -> PhiAccrual {
        PhiAccrual {
            params,
            intervals: VecDeque::new(),
            sum: 0.0,
            sum_sq: 0.0,
            last: None,
        }
    }

    fn heartbeat(&mut self, now: Instant) {
        match self.last {
            // As Akka: the first heartbeat seeds the history with two
            // intervals around the expected one, so that phi is meaningful
            // from the start.
            None => {
                let mean = self.params.first_estimate;
                self.push(mean - mean / 4.0);
                self.push(mean + mean / 4.0);
                self.last = Some(now);
            }
            Some(last) => {
                self.push(ms(now.saturating_duration_since(last)));
                self.last = Some(last.max(now));
            }
        }
    }

    fn push(&mut self, interval: f64) {
        if self.intervals.len() >= self.params.max_samples
            && let Some(old) = self.intervals.pop_front()
        {
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.intervals.push_back(interval);
        self.sum += interval;
        self.sum_sq += interval * interval;
    }

    /// -log10 of the probability that a heartbeat still comes, given the
    /// silence since the last one; 0 before any heartbeat. Always finite.
    fn phi(&self, now: Instant) -> f64 {
        let Some(last) = self.last else {
            return 0.0;
        };
        let n = self.intervals.len() as f64;
        let (mean, var) = if self.intervals.is_empty() {
            let m = self.params.first_estimate;
            (m, (m / 4.0) * (m / 4.0))
        } else {
            let mean = self.sum / n;
            (mean, (self.sum_sq / n - mean * mean).max(0.0))
        };
        // The 1 µs floor keeps the division finite when min_std_dev is 0.
        let std_dev = var.sqrt().max(self.params.min_std_dev).max(1e-3);
        let elapsed = ms(now.saturating_duration_since(last));
        phi_of(elapsed, mean + self.params.acceptable_pause, std_dev)
    }
}

/// phi = -log10(1 - F(elapsed)) with F the normal CDF of (mean, std_dev),
/// through the logistic approximation that Akka and Cassandra use:
/// 1 - F ≈ 1 / (1 + e^z), z = y (1.5976 + 0.070566 y²), y = (t - mean)/σ.
/// Written as log10(1 + e^z) and evaluated without overflow.
fn phi_of(elapsed: f64, mean: f64, std_dev: f64) -> f64 {
    let y = (elapsed - mean) / std_dev;
    let z = y * (1.5976 + 0.070566 * y * y);
    let phi = if z > 0.0 {
        (z + (-z).exp().ln_1p()) / std::f64::consts::LN_10
    } else {
        z.exp().ln_1p() / std::f64::consts::LN_10
    };
    if phi.is_nan() {
        0.0
    } else {
        phi.clamp(0.0, f64::MAX)
    }
}

// ---------------------------------------------------------------------------
// Datagram authentication

struct Auth {
    mac: HmacSha256,
    /// This process's sender instance, and the counter of its last
    /// datagram.
    instance: u64,
    counter: u64,
}

/// Where an authentic datagram came from: its sender instance and
/// counter, for the replay windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    instance: u64,
    counter: u64,
}

impl Auth {
    fn new(key: &[u8; 32]) -> io::Result<Auth> {
        let mac = HmacSha256::new_from_slice(key).map_err(|_| invalid("unusable gossip key"))?;
        let instance = getrandom::u64()
            .map_err(|e| io::Error::other(format!("no randomness for the gossip instance: {e}")))?;
        Ok(Auth {
            mac,
            instance,
            counter: 0,
        })
    }

    fn tag(&self, body: &[u8], to: Option<&NodeId>) -> HmacSha256 {
        let mut mac = self.mac.clone();
        match to {
            Some(n) => {
                mac.update(&[n.as_str().len() as u8]);
                mac.update(n.as_str().as_bytes());
            }
            None => mac.update(&[0]),
        }
        mac.update(body);
        mac
    }

    /// The datagram carrying `payload` to node `to` (`None`: any node).
    fn seal(&mut self, payload: &[u8], to: Option<&NodeId>) -> Vec<u8> {
        self.counter += 1;
        let mut out = Vec::with_capacity(payload.len() + STAMP_LEN + TAG_LEN);
        out.extend_from_slice(payload);
        out.extend_from_slice(&self.instance.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.push(u8::from(to.is_none()));
        let tag = self.tag(&out, to).finalize().into_bytes();
        out.extend_from_slice(&tag);
        out
    }

    /// The payload and stamp of a datagram for node `me` (or any node) if
    /// the tag is right (compared in constant time).
    fn open<'a>(&self, datagram: &'a [u8], me: &NodeId) -> Option<(&'a [u8], Stamp)> {
        let cut = datagram.len().checked_sub(TAG_LEN)?;
        let (body, tag) = datagram.split_at(cut);
        let payload_len = body.len().checked_sub(STAMP_LEN)?;
        let (payload, stamp) = body.split_at(payload_len);
        let to_any = match stamp[16] {
            0 => false,
            1 => true,
            _ => return None,
        };
        self.tag(body, if to_any { None } else { Some(me) })
            .verify_slice(tag)
            .ok()?;
        let instance = u64::from_be_bytes(stamp[..8].try_into().ok()?);
        let counter = u64::from_be_bytes(stamp[8..16].try_into().ok()?);
        Some((payload, Stamp { instance, counter }))
    }
}

/// The replay windows of the sender instances heard from.
#[derive(Default)]
struct ReplayWindows {
    by_instance: HashMap<u64, Window>,
}

struct Window {
    /// The highest counter seen.
    top: u64,
    /// Bit i: counter `top - i` was seen.
    seen: u128,
    last: Instant,
}

impl ReplayWindows {
    /// Whether a datagram of this stamp is new (it is then recorded).
    fn fresh(&mut self, stamp: Stamp, now: Instant) -> bool {
        if !self.by_instance.contains_key(&stamp.instance)
            && self.by_instance.len() >= MAX_INSTANCES
            && let Some(oldest) = self
                .by_instance
                .iter()
                .min_by_key(|(_, w)| w.last)
                .map(|(i, _)| *i)
        {
            self.by_instance.remove(&oldest);
        }
        let w = self.by_instance.entry(stamp.instance).or_insert(Window {
            top: stamp.counter,
            seen: 0,
            last: now,
        });
        w.last = now;
        if stamp.counter > w.top {
            let shift = stamp.counter - w.top;
            w.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                w.seen << shift
            };
            w.top = stamp.counter;
        }
        let age = w.top - stamp.counter;
        if age >= REPLAY_WINDOW {
            return false;
        }
        let bit = 1u128 << age;
        if w.seen & bit != 0 {
            return false;
        }
        w.seen |= bit;
        true
    }
}

// ---------------------------------------------------------------------------
// The task that runs foca

enum Cmd {
    Announce(Vec<SocketAddr>),
    Leave(oneshot::Sender<()>),
}

enum Event {
    Datagram(io::Result<(usize, SocketAddr)>),
    Cmd(Option<Cmd>),
    Timers,
}

struct Driver {
    foca: Foca<Ident, PostcardCodec, SmallRng, Beats>,
    rt: AccumulatingRuntime<Ident>,
    socket: UdpSocket,
    inner: Arc<Inner>,
    auth: Auth,
    replays: ReplayWindows,
    /// foca's timers, by due time (then order of submission).
    timers: BTreeMap<(Instant, u64), Timer<Ident>>,
    timer_seq: u64,
    beat_seq: u64,
    drops: LogLimiter<SocketAddr>,
    /// Leaving on purpose: foca then reports us down, which is no news.
    leaving: bool,
}

impl Driver {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        // One byte more than allowed, to see datagrams that are too long.
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let next_timer = self.timers.keys().next().map(|(at, _)| *at);
            let wake = next_timer.unwrap_or_else(Instant::now);
            let event = tokio::select! {
                r = self.socket.recv_from(&mut buf) => Event::Datagram(r),
                c = cmds.recv() => Event::Cmd(c),
                () = tokio::time::sleep_until(wake.into()), if next_timer.is_some() => Event::Timers,
            };
            match event {
                Event::Datagram(Ok((len, from))) => self.on_datagram(&buf[..len], from),
                Event::Datagram(Err(e)) => {
                    // e.g. an ICMP error reported on the socket: nothing
                    // to do but not to spin on it.
                    tracing::debug!(error = %e, "gossip: receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Event::Cmd(Some(Cmd::Announce(seeds))) => {
                    for seed in seeds {
                        if let Err(e) = self.foca.announce(seed_ident(seed), &mut self.rt) {
                            tracing::debug!(%seed, error = %e, "gossip: announce failed");
                        }
                    }
                }
                Event::Cmd(Some(Cmd::Leave(done))) => {
                    self.leave().await;
                    let _ = done.send(());
                    return;
                }
                // The Gossip handle was dropped.
                Event::Cmd(None) => {
                    self.leave().await;
                    return;
                }
                Event::Timers => self.fire_timers(),
            }
            self.flush().await;
            self.sync_members();
        }
    }

    fn on_datagram(&mut self, data: &[u8], from: SocketAddr) {
        let reason = if data.len() > MAX_DATAGRAM {
            "too long"
        } else if data.len() <= STAMP_LEN + TAG_LEN {
            "too short"
        } else {
            match self.auth.open(data, &self.inner.me) {
                None => "bad authentication tag",
                Some((_, stamp)) if !self.replays.fresh(stamp, Instant::now()) => {
                    "replayed, duplicated or too old"
                }
                Some((payload, _)) => match self.foca.handle_data(payload, &mut self.rt) {
                    Ok(()) => {
                        if let Some(src) = periodic_gossip_sender(payload) {
                            self.inner.record_arrival(&src, Instant::now());
                        }
                        return;
                    }
                    Err(e) if is_decode_error(&e) => {
                        if let Some(n) = self.drops.note(&from, Instant::now()) {
                            tracing::warn!(%from, error = %e, unlogged_drops = n,
                                "gossip: dropped an authenticated datagram that does not decode");
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(%from, error = %e, "gossip: datagram not used");
                        return;
                    }
                },
            }
        };
        if let Some(n) = self.drops.note(&from, Instant::now()) {
            tracing::warn!(%from, len = data.len(), reason, unlogged_drops = n,
                "gossip: dropped a datagram");
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        // foca's order for timers due together (a stable sort keeps the
        // submission order otherwise).
        due.sort();
        for timer in due {
            if matches!(timer, Timer::PeriodicGossip(_)) {
                self.add_beat();
            }
            if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                tracing::debug!(error = %e, "gossip: timer failed");
            }
        }
    }

    /// A fresh heartbeat just before each periodic gossip, so that foca
    /// sends the gossip (to every member) and it carries the layout version.
    fn add_beat(&mut self) {
        self.beat_seq += 1;
        let beat = Beat {
            node: self.inner.me.clone(),
            generation: self.foca.identity().generation,
            seq: self.beat_seq,
            layout_version: self.inner.layout_version.load(Ordering::Relaxed),
        };
        let result = postcard::to_allocvec(&beat)
            .map_err(|e| e.to_string())
            .and_then(|bytes| self.foca.add_broadcast(&bytes).map_err(|e| e.to_string()));
        if let Err(e) = result {
            tracing::warn!(error = %e, "gossip: could not queue a heartbeat");
        }
    }

    async fn leave(&mut self) {
        self.leaving = true;
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            tracing::debug!(error = %e, "gossip: leaving failed");
        }
        self.flush().await;
        self.inner.running.store(false, Ordering::Relaxed);
        self.inner.connected.store(false, Ordering::Relaxed);
        tracing::info!(node = %self.inner.me, "gossip: left the ring");
    }

    /// Sends what foca wants sent, schedules its timers, logs its news.
    async fn flush(&mut self) {
        while let Some((to, data)) = self.rt.to_send() {
            // A seed's identity is not known yet (seed_ident): any node.
            let dest = (!to.ring.is_empty()).then_some(&to.node);
            let datagram = self.auth.seal(&data, dest);
            if let Err(e) = self.socket.send_to(&datagram, to.gossip).await {
                tracing::debug!(to = %to.gossip, error = %e, "gossip: send failed");
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.rt.to_schedule() {
            let at = now
                .checked_add(after)
                .unwrap_or_else(|| now + Duration::from_secs(24 * 60 * 60));
            self.timer_seq += 1;
            self.timers.insert((at, self.timer_seq), timer);
        }
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => {
                    tracing::info!(node = %id.node, ring = %id.ring, gossip = %id.gossip, "gossip: member up");
                }
                OwnedNotification::MemberDown(id) => {
                    tracing::info!(node = %id.node, gossip = %id.gossip, "gossip: member down");
                }
                OwnedNotification::Rename(old, new) => {
                    tracing::info!(node = %new.node, old = %old.node, gossip = %new.gossip,
                        "gossip: member restarted");
                }
                OwnedNotification::Active => tracing::info!("gossip: joined the ring"),
                OwnedNotification::Idle => tracing::info!("gossip: no live peer"),
                OwnedNotification::Defunct if self.leaving => {}
                OwnedNotification::Defunct => {
                    tracing::warn!("gossip: declared down by the ring");
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(
                        generation = id.generation,
                        "gossip: was declared down by the ring; rejoined as a new generation"
                    );
                }
            }
        }
    }

    /// Copies foca's member list into the snapshot `is_alive` reads.
    fn sync_members(&mut self) {
        self.inner
            .connected
            .store(self.foca.num_members() > 0, Ordering::Relaxed);
        let mut newest: HashMap<&NodeId, &Ident> = HashMap::new();
        for member in self.foca.iter_members() {
            let id = member.id();
            if id.node == self.inner.me {
                continue; // someone else under our name: not us
            }
            newest
                .entry(&id.node)
                .and_modify(|cur| {
                    if id.generation > cur.generation {
                        *cur = id;
                    }
                })
                .or_insert(id);
        }
        let now = Instant::now();
        let params = self.inner.params;
        let mut peers = self.inner.peers.write();
        for (node, peer) in peers.iter_mut() {
            if !newest.contains_key(node) {
                peer.up = false;
            }
        }
        for (node, ident) in newest {
            let peer = peers
                .entry(node.clone())
                .or_insert_with(|| Peer::new(ident.clone(), params));
            if peer.ident != *ident {
                peer.reset(ident.clone(), params);
            }
            if !peer.up {
                // Just (re)joined: start the detector afresh, as if it
                // had sent a heartbeat now.
                peer.up = true;
                peer.detector = PhiAccrual::new(params);
                peer.detector.heartbeat(now);
            }
        }
    }
}

/// The sender of a foca `Gossip` message (sent to every member every
/// interval, so the failure detector's heartbeat), from the header alone:
/// the heartbeat broadcast in it may not fit when many membership updates
/// are pending, the message itself is sent regardless.
fn periodic_gossip_sender(payload: &[u8]) -> Option<Ident> {
    match postcard::take_from_bytes::<foca::Header<Ident>>(payload) {
        Ok((header, _)) if header.message == foca::Message::Gossip => Some(header.src),
        _ => None,
    }
}

fn is_decode_error(e: &foca::Error) -> bool {
    matches!(
        e,
        foca::Error::DataTooBig
            | foca::Error::MalformedPacket
            | foca::Error::Decode(_)
            | foca::Error::CustomBroadcast(_)
    )
}

/// Resolves the seeds and has the driver announce to them: every interval
/// while no peer is known, now and then after.
async fn seed_loop(
    seeds: Vec<String>,
    me: SocketAddr,
    interval: Duration,
    cmds: mpsc::WeakUnboundedSender<Cmd>,
    inner: Arc<Inner>,
) {
    let mut warned: HashMap<String, Instant> = HashMap::new();
    let mut round: u64 = 0;
    loop {
        if !inner.connected.load(Ordering::Relaxed) || round.is_multiple_of(REANNOUNCE_EVERY) {
            let mut addrs = Vec::new();
            for seed in &seeds {
                let limit = interval.max(Duration::from_secs(1));
                let problem = match tokio::time::timeout(limit, tokio::net::lookup_host(seed)).await
                {
                    Ok(Ok(found)) => {
                        // One address per seed, of our own family.
                        let found: Vec<SocketAddr> = found.collect();
                        match found.iter().find(|a| a.is_ipv4() == me.is_ipv4()) {
                            Some(a) if *a == me => None,
                            Some(a) => {
                                addrs.push(*a);
                                None
                            }
                            None if found.is_empty() => Some("no address".to_string()),
                            None => Some("no address of the gossip socket's family".to_string()),
                        }
                    }
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("name resolution timed out".to_string()),
                };
                if let Some(problem) = problem {
                    let now = Instant::now();
                    let due = warned
                        .get(seed)
                        .is_none_or(|t| now.saturating_duration_since(*t) >= LOG_EVERY);
                    if due {
                        warned.insert(seed.clone(), now);
                        tracing::warn!(%seed, %problem, "gossip: cannot resolve seed");
                    }
                }
            }
            let Some(tx) = cmds.upgrade() else {
                return;
            };
            if !addrs.is_empty() && tx.send(Cmd::Announce(addrs)).is_err() {
                return;
            }
        }
        round += 1;
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    fn params(interval_ms: u64, min_sd_ms: u64, pause_ms: u64) -> PhiParams {
        PhiParams::from_timing(&GossipTiming {
            interval: Duration::from_millis(interval_ms),
            phi_threshold: 8.0,
            min_std_dev: Duration::from_millis(min_sd_ms),
            acceptable_pause: Duration::from_millis(pause_ms),
            max_samples: 200,
        })
    }

    /// A detector fed `n` heartbeats about every `every_ms` (±5 %).
    fn regular(p: PhiParams, n: u32, every_ms: u64) -> (PhiAccrual, Instant) {
        let mut d = PhiAccrual::new(p);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut t = Instant::now();
        for _ in 0..n {
            d.heartbeat(t);
            let jitter = rng.random_range(0..=every_ms / 10);
            t += Duration::from_millis(every_ms - every_ms / 20 + jitter);
        }
        (d, t)
    }

    #[test]
    fn phi_is_low_for_regular_heartbeats() {
        let (d, last) = regular(params(1000, 100, 0), 100, 1000);
        let phi = d.phi(last);
        assert!(phi < 1.0, "phi {phi} right after a regular heartbeat");
        // With Akka's defaults (3 s acceptable pause) even a 3 s silence
        // is fine.
        let (d, last) = regular(params(1000, 100, 3000), 100, 1000);
        assert!(d.phi(last + Duration::from_secs(3)) < 1.0);
    }

    #[test]
    fn phi_climbs_past_the_threshold_after_a_long_pause() {
        let (d, last) = regular(params(1000, 100, 0), 100, 1000);
        let at = |s: u64| d.phi(last + Duration::from_secs(s));
        assert!(at(5) > 8.0, "phi {} after 5 s", at(5));
        // Monotonic in the silence.
        let mut prev = 0.0;
        for s in 0..20 {
            let phi = d.phi(last + Duration::from_millis(s * 250));
            assert!(phi >= prev, "phi went down: {prev} then {phi}");
            prev = phi;
        }
        let (d, last) = regular(params(1000, 100, 3000), 100, 1000);
        assert!(d.phi(last + Duration::from_secs(6)) > 8.0);
    }

    #[test]
    fn phi_is_finite_with_no_or_few_samples_and_extreme_silences() {
        let p = params(1000, 0, 0);
        let now = Instant::now();
        let empty = PhiAccrual::new(p);
        assert_eq!(empty.phi(now), 0.0);
        assert_eq!(empty.phi(now + Duration::from_secs(1_000_000)), 0.0);

        let mut one = PhiAccrual::new(p);
        one.heartbeat(now);
        // Identical intervals (zero variance), min_std_dev 0.
        let mut flat = PhiAccrual::new(p);
        flat.params.max_samples = 2;
        for i in 0..10 {
            flat.heartbeat(now + Duration::from_secs(i));
        }
        for d in [&one, &flat] {
            for s in [0, 1, 2, 10, 3600, 1 << 40] {
                let phi = d.phi(now + Duration::from_secs(s));
                assert!(phi.is_finite() && phi >= 0.0, "phi {phi} at +{s} s");
            }
            // A clock that went backwards is no silence.
            assert!(d.phi(now - Duration::from_secs(5)) < 1.0);
        }
        assert!(one.phi(now + Duration::from_secs(10)) > 8.0);
        for (elapsed, mean, sd) in [
            (1e300, 0.0, 1e-3),
            (-1e300, 0.0, 1e-3),
            (f64::NAN, 1.0, 1.0),
        ] {
            let phi = phi_of(elapsed, mean, sd);
            assert!(
                phi.is_finite() && phi >= 0.0,
                "phi_of({elapsed}, ..) = {phi}"
            );
        }
    }

    #[test]
    fn auth_tags_and_rejects() {
        let mut a = Auth::new(&[1; 32]).unwrap();
        let b = Auth::new(&[2; 32]).unwrap();
        let (x, y) = (id("x"), id("y"));
        let sealed = a.seal(b"hello", Some(&x));
        assert_eq!(sealed.len(), 5 + STAMP_LEN + TAG_LEN);
        let (payload, stamp) = a.open(&sealed, &x).unwrap();
        assert_eq!(payload, b"hello");
        assert_eq!(
            stamp,
            Stamp {
                instance: a.instance,
                counter: 1
            }
        );
        assert_eq!(b.open(&sealed, &x), None, "another key");
        assert_eq!(a.open(&sealed, &y), None, "for another node");
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 1;
            assert_eq!(a.open(&tampered, &x), None, "byte {i}");
        }
        assert_eq!(a.open(&sealed[..TAG_LEN - 1], &x), None);
        assert_eq!(a.open(&sealed[..STAMP_LEN + TAG_LEN - 1], &x), None);
        assert_eq!(a.open(&[], &x), None);
        // For any node: every node takes it.
        let any = a.seal(b"announce", None);
        assert_eq!(a.open(&any, &x).unwrap().1.counter, 2);
        assert_eq!(a.open(&any, &y).unwrap().0, b"announce");
        // A new process, a new instance.
        assert_ne!(Auth::new(&[1; 32]).unwrap().instance, a.instance);
    }

    #[test]
    fn replayed_and_old_datagrams_are_refused() {
        let mut w = ReplayWindows::default();
        let now = Instant::now();
        let s = |instance, counter| Stamp { instance, counter };
        assert!(w.fresh(s(1, 10), now));
        assert!(!w.fresh(s(1, 10), now), "replayed");
        // Out of order within the window: taken once.
        assert!(w.fresh(s(1, 12), now));
        assert!(w.fresh(s(1, 11), now));
        assert!(!w.fresh(s(1, 11), now));
        assert!(w.fresh(s(1, 9), now));
        // Another instance has a window of its own.
        assert!(w.fresh(s(2, 10), now));
        // Far ahead: what was the window is now too old.
        assert!(w.fresh(s(1, 12 + REPLAY_WINDOW), now));
        assert!(!w.fresh(s(1, 12), now), "just out of the window");
        assert!(w.fresh(s(1, 13), now), "just in it, never seen");
        assert!(!w.fresh(s(1, 13), now));
        assert!(!w.fresh(s(1, 0), now));
        // Bounded: the least recently heard from instance makes room.
        for i in 0..2 * MAX_INSTANCES as u64 {
            assert!(w.fresh(s(100 + i, 1), now + Duration::from_millis(i)));
        }
        assert_eq!(w.by_instance.len(), MAX_INSTANCES);
        assert!(!w.fresh(s(100 + 2 * MAX_INSTANCES as u64 - 1, 1), now));
    }

    // --- Several nodes on loopback -----------------------------------------

    const SECRET: &[u8] = b"the ring's shared secret";

    fn ring_secret(bytes: &[u8]) -> Secret {
        Secret::new(bytes).unwrap()
    }
    const THRESHOLD: f64 = 8.0;

    fn fast() -> GossipTiming {
        GossipTiming {
            interval: Duration::from_millis(100),
            phi_threshold: THRESHOLD,
            min_std_dev: Duration::from_millis(50),
            acceptable_pause: Duration::from_millis(500),
            max_samples: 100,
        }
    }

    fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn ring_addr(name: &str) -> String {
        format!("{name}.ring.test:7400")
    }

    async fn start(name: &str, secret: &[u8], seeds: &[&Gossip]) -> Gossip {
        Gossip::start(GossipConfig {
            node: id(name),
            listen: "127.0.0.1:0".parse().unwrap(),
            ring_addr: ring_addr(name),
            seeds: seeds.iter().map(|g| g.local_addr().to_string()).collect(),
            secret: ring_secret(secret),
            timing: fast(),
        })
        .await
        .unwrap()
    }

    /// Polls `cond` until it holds, or panics after `secs` seconds.
    async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            assert!(Instant::now() < deadline, "not within {secs} s: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn names(nodes: &[(NodeId, String)]) -> Vec<String> {
        nodes.iter().map(|(n, _)| n.to_string()).collect()
    }

    async fn three() -> (Gossip, Gossip, Gossip) {
        let a = start("a", SECRET, &[]).await;
        let b = start("b", SECRET, &[&a]).await;
        let c = start("c", SECRET, &[&a]).await;
        let all = [&a, &b, &c];
        eventually(10, "a, b and c see each other alive", || {
            all.iter()
                .all(|g| names(&g.live_nodes()) == ["a", "b", "c"])
        })
        .await;
        (a, b, c)
    }

    #[tokio::test]
    async fn three_nodes_see_each_other_with_ring_addresses_and_layout_versions() {
        let (a, b, c) = three().await;
        for g in [&a, &b, &c] {
            for n in ["a", "b", "c"] {
                assert!(g.is_alive(&id(n)));
            }
            let expect: Vec<(NodeId, String)> = ["a", "b", "c"]
                .iter()
                .map(|n| (id(n), ring_addr(n)))
                .collect();
            assert_eq!(g.live_nodes(), expect);
            assert!(!g.is_alive(&id("nobody")));
            assert_eq!(g.phi(&id("nobody")), None);
        }
        a.set_layout_version(3);
        b.set_layout_version(4);
        c.set_layout_version(5);
        let expect = vec![(id("a"), 3), (id("b"), 4), (id("c"), 5)];
        eventually(10, "layout versions spread", || {
            [&a, &b, &c].iter().all(|g| g.layout_versions() == expect)
        })
        .await;
        let phi = a.phi(&id("b")).unwrap();
        assert!(phi < THRESHOLD, "phi of a live node: {phi}");
        for g in [&a, &b, &c] {
            g.shutdown().await;
        }
        assert!(!a.is_alive(&id("a")));
    }

    #[tokio::test]
    async fn a_node_that_leaves_or_crashes_is_reported_down() {
        let (a, b, c) = three().await;
        // c leaves: it says goodbye.
        c.shutdown().await;
        eventually(5, "a and b see c down after it left", || {
            !a.is_alive(&id("c")) && !b.is_alive(&id("c"))
        })
        .await;
        // b crashes: no goodbye, only silence.
        b.crash();
        eventually(5, "a sees b down after it crashed", || {
            !a.is_alive(&id("b"))
        })
        .await;
        eventually(5, "b's phi climbs past the threshold", || {
            a.phi(&id("b")).is_some_and(|phi| phi >= THRESHOLD)
        })
        .await;
        assert_eq!(names(&a.live_nodes()), ["a"]);

        // b comes back on the same address, as a new generation (with a
        // new ring address, to tell it from the old one).
        let addr = b.local_addr();
        let deadline = Instant::now() + Duration::from_secs(5);
        let b2 = loop {
            let cfg = GossipConfig {
                node: id("b"),
                listen: addr,
                ring_addr: "b.restarted.test:7400".to_string(),
                seeds: vec![a.local_addr().to_string()],
                secret: ring_secret(SECRET),
                timing: fast(),
            };
            match Gossip::start(cfg).await {
                Ok(g) => break g,
                // The crashed task may not have dropped its socket yet.
                Err(e) if Instant::now() < deadline => {
                    assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot restart b: {e}"),
            }
        };
        let expect = vec![
            (id("a"), ring_addr("a")),
            (id("b"), "b.restarted.test:7400".to_string()),
        ];
        eventually(5, "a sees the restarted b", || a.live_nodes() == expect).await;
        eventually(5, "the restarted b sees a", || b2.live_nodes() == expect).await;
        a.shutdown().await;
        b2.shutdown().await;
    }

    #[tokio::test]
    async fn a_node_with_the_wrong_secret_is_never_seen() {
        let a = start("a", SECRET, &[]).await;
        let b = start("b", SECRET, &[&a]).await;
        let d = start("d", b"not the ring's secret", &[&a, &b]).await;
        eventually(10, "a and b see each other", || {
            names(&a.live_nodes()) == ["a", "b"] && names(&b.live_nodes()) == ["a", "b"]
        })
        .await;
        // d announces every interval while alone: 2 s is 20 attempts.
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            for g in [&a, &b] {
                assert!(!g.is_alive(&id("d")));
                assert_eq!(g.phi(&id("d")), None);
            }
            assert_eq!(names(&d.live_nodes()), ["d"]);
            assert!(!d.is_alive(&id("a")) && !d.is_alive(&id("b")));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for g in [&a, &b, &d] {
            g.shutdown().await;
        }
    }

    #[tokio::test]
    async fn garbage_datagrams_do_not_disturb_a_node() {
        let a = start("a", SECRET, &[]).await;
        let b = start("b", SECRET, &[&a]).await;
        let both = || names(&a.live_nodes()) == ["a", "b"] && names(&b.live_nodes()) == ["a", "b"];
        eventually(10, "a and b see each other", both).await;

        let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = a.local_addr();
        let mut auth = Auth::new(ring_secret(SECRET).gossip_key()).unwrap();
        let mut rng = SmallRng::seed_from_u64(42);
        let mut junk = |len: usize| (0..len).map(|_| rng.random::<u8>()).collect::<Vec<u8>>();
        let mut datagrams: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0],
            vec![0; TAG_LEN],
            vec![0xff; MAX_DATAGRAM + 1],
            vec![0; 9000],
            // Authentic but not foca: garbage, a truncated header, a
            // header followed by a bogus update count.
            auth.seal(&junk(100), Some(&id("a"))),
            auth.seal(&[0], Some(&id("a"))),
            auth.seal(&[1, 1, b'x', 0xff, 0xff, 0xff], None),
        ];
        for len in [1, 31, 33, 64, 500, 1400, 1432] {
            datagrams.push(junk(len));
        }
        for _ in 0..30 {
            for dgram in &datagrams {
                // A full socket buffer may drop some: fine, it is a flood.
                let _ = attacker.send_to(dgram, target).await;
            }
            tokio::task::yield_now().await;
        }
        eventually(5, "a and b still see each other", both).await;
        let phi = b.phi(&id("a")).unwrap();
        assert!(phi < THRESHOLD, "phi of a after the flood: {phi}");
        a.shutdown().await;
        b.shutdown().await;
    }
}
