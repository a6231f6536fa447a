//! The simulated world of one seed: a network with latency, loss,
//! duplication, reordering, partitions (symmetric or one way) and crashed
//! nodes; a monotonic clock per node running at its own rate on virtual
//! time; a failure detector that can be wrong; and the log of what
//! happened. Every random choice comes from one generator seeded by the
//! seed, and everything runs on one thread with tokio's paused clock, so
//! a seed replays exactly (DESIGN.md section 7, "Deterministic
//! simulation").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::super::{BoxFuture, Handler, Liveness, Net, NetError, NodeId, Request, Response};

/// SplitMix64: small, fast, and the same sequence for a seed everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    /// Uniform in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo).max(1)))
    }
}

/// What the network does to messages now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Probability that a request, or its answer, is lost.
    pub loss: f64,
    /// Probability that a request is delivered twice.
    pub dup: f64,
    /// Probability that the failure detector is wrong about a node.
    pub fd_mistakes: f64,
    /// Probability that a request arrives late: after its sender gave
    /// up on it (up to 1.5 s past the timeout).
    pub late: f64,
}

struct ClockModel {
    /// Offset of this node's clock at virtual time 0.
    offset: u64,
    /// Rate error in parts per million.
    ppm: i64,
}

pub struct World {
    rng: Mutex<Rng>,
    start: tokio::time::Instant,
    handlers: Mutex<BTreeMap<NodeId, Arc<dyn Handler>>>,
    down: Mutex<BTreeSet<NodeId>>,
    /// Directed links that carry nothing: (from, to).
    cut: Mutex<BTreeSet<(NodeId, NodeId)>>,
    faults: Mutex<Faults>,
    clocks: Mutex<BTreeMap<NodeId, ClockModel>>,
    /// How long a caller waits for an answer that never comes.
    pub timeout: Duration,
    /// Highest one-way latency.
    pub max_latency: Duration,
    events: Mutex<Vec<String>>,
    /// Every node opened: held to the end, so that no task of the
    /// simulation drops the last handle of a store (a close waits for
    /// fjall's threads in real time).
    graveyard: Mutex<Vec<super::super::node::Node>>,
    /// A digest of every message sent (from, to, kind, fate), so that a
    /// replay is compared message by message, not only event by event.
    messages: Mutex<u64>,
}

impl World {
    /// A world for `seed`; call within the seed's runtime.
    pub fn new(seed: u64) -> Arc<World> {
        Arc::new(World {
            rng: Mutex::new(Rng::new(seed)),
            start: tokio::time::Instant::now(),
            handlers: Mutex::new(BTreeMap::new()),
            down: Mutex::new(BTreeSet::new()),
            cut: Mutex::new(BTreeSet::new()),
            faults: Mutex::new(Faults::default()),
            clocks: Mutex::new(BTreeMap::new()),
            timeout: Duration::from_millis(500),
            max_latency: Duration::from_millis(4),
            events: Mutex::new(Vec::new()),
            graveyard: Mutex::new(Vec::new()),
            messages: Mutex::new(0xcbf2_9ce4_8422_2325),
        })
    }

    pub fn rng(&self) -> parking_lot::MutexGuard<'_, Rng> {
        self.rng.lock()
    }

    /// Virtual time since the start, in milliseconds (for the log).
    pub fn now_ms(&self) -> u128 {
        self.elapsed().as_millis()
    }

    pub fn elapsed(&self) -> Duration {
        tokio::time::Instant::now().duration_since(self.start)
    }

    /// Records an event of the run (what a failing seed prints).
    pub fn event(&self, what: impl Into<String>) {
        let line = format!("{:>7}ms {}", self.now_ms(), what.into());
        if std::env::var_os("CHIRONFS_SIM_TRACE").is_some() {
            eprintln!("{:?} {line}", std::time::Instant::now());
        }
        self.events.lock().push(line);
    }

    /// Keeps `node` open until the run ends (`graveyard`).
    pub fn keep(&self, node: &super::super::node::Node) {
        self.graveyard.lock().push(node.clone());
    }

    /// Every node the run opened, to close once the runtime is gone; the
    /// world forgets them (a node's network refers to the world: without
    /// this the two would keep each other, and the stores, forever).
    pub fn take_graveyard(&self) -> Vec<super::super::node::Node> {
        self.handlers.lock().clear();
        std::mem::take(&mut *self.graveyard.lock())
    }

    pub fn events(&self) -> Vec<String> {
        self.events.lock().clone()
    }

    pub fn message_digest(&self) -> u64 {
        *self.messages.lock()
    }

    fn note_message(&self, from: &NodeId, to: &NodeId, req: &Request, fate: &str) {
        let kind = format!("{req:?}");
        let kind = kind.split([' ', '{', '(']).next().unwrap_or("");
        let mut h = self.messages.lock();
        for b in from
            .as_str()
            .bytes()
            .chain(to.as_str().bytes())
            .chain(kind.bytes())
            .chain(fate.bytes())
        {
            *h = (*h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    /// Random message faults: up to `max_loss`% lost, 10% duplicated, 5%
    /// late, and (`fd`) up to 10% failure-detector mistakes, else those
    /// in force now.
    pub fn random_faults(&self, max_loss: u64, fd: bool) -> Faults {
        let now = self.faults();
        let mut r = self.rng();
        let pct = |r: &mut Rng, max: u64| r.below(max) as f64 / 100.0;
        Faults {
            loss: pct(&mut r, max_loss),
            dup: pct(&mut r, 10),
            late: pct(&mut r, 5),
            fd_mistakes: if fd { pct(&mut r, 10) } else { now.fd_mistakes },
        }
    }

    pub fn set_faults(&self, f: Faults) {
        *self.faults.lock() = f;
    }

    pub fn faults(&self) -> Faults {
        *self.faults.lock()
    }

    pub fn register(&self, id: &NodeId, h: Arc<dyn Handler>) {
        self.handlers.lock().insert(id.clone(), h);
    }

    pub fn set_down(&self, id: &NodeId, down: bool) {
        if down {
            self.down.lock().insert(id.clone());
        } else {
            self.down.lock().remove(id);
        }
    }

    pub fn is_down(&self, id: &NodeId) -> bool {
        self.down.lock().contains(id)
    }

    /// Cuts the link from `a` to `b` (one way).
    pub fn cut(&self, a: &NodeId, b: &NodeId) {
        self.cut.lock().insert((a.clone(), b.clone()));
    }

    pub fn heal(&self) {
        self.cut.lock().clear();
    }

    fn reachable(&self, from: &NodeId, to: &NodeId) -> bool {
        let down = self.down.lock();
        !down.contains(from)
            && !down.contains(to)
            && !self.cut.lock().contains(&(from.clone(), to.clone()))
    }

    /// Gives `node` a clock with a random offset and a rate error within
    /// `max_ppm` (two clocks then differ by at most twice that).
    pub fn add_clock(&self, node: &NodeId, max_ppm: i64) {
        let (offset, ppm) = {
            let mut r = self.rng();
            let offset = r.below(1 << 40) + (1 << 30);
            let span = (2 * max_ppm + 1).max(1) as u64;
            (offset, r.below(span) as i64 - max_ppm)
        };
        self.clocks
            .lock()
            .insert(node.clone(), ClockModel { offset, ppm });
    }

    /// `node`'s monotonic clock, in nanoseconds.
    pub fn clock_ns(&self, node: &NodeId) -> u64 {
        let t = u64::try_from(self.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let clocks = self.clocks.lock();
        let Some(c) = clocks.get(node) else {
            return t;
        };
        let scaled = (i128::from(t) * i128::from(1_000_000 + c.ppm) / 1_000_000).max(0);
        c.offset
            .saturating_add(u64::try_from(scaled).unwrap_or(u64::MAX))
    }

    /// The clock of `node` for its `NodeConfig`.
    pub fn clock(self: &Arc<World>, node: &NodeId) -> crate::clock::Clock {
        let (w, n) = (self.clone(), node.clone());
        crate::clock::Clock::from_fn(move || w.clock_ns(&n))
    }

    fn latency(&self) -> Duration {
        let us = self.rng().below(self.max_latency.as_micros() as u64 + 1);
        Duration::from_micros(us)
    }

    fn lost(&self) -> bool {
        let p = self.faults.lock().loss;
        self.rng().chance(p)
    }

    pub fn net(self: &Arc<World>, me: &NodeId) -> Arc<SimNet> {
        Arc::new(SimNet {
            world: self.clone(),
            me: me.clone(),
            dead: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// One process's view of the network.
pub struct SimNet {
    world: Arc<World>,
    me: NodeId,
    /// The process crashed: nothing it still has in flight goes out or
    /// comes back (its restart gets a new `SimNet`).
    dead: Arc<AtomicBool>,
}

impl SimNet {
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }
}

fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned>(v: &T) -> Option<T> {
    let bytes = postcard::to_stdvec(v).ok()?;
    postcard::from_bytes(&bytes).ok()
}

impl Net for SimNet {
    fn call(&self, to: &NodeId, req: Request) -> BoxFuture<'static, Result<Response, NetError>> {
        let (w, me, to) = (self.world.clone(), self.me.clone(), to.clone());
        let flag = self.dead.clone();
        Box::pin(async move {
            let dead = || flag.load(Ordering::SeqCst);
            let lost = |w: &World, fate: &str, req: &Request| {
                w.note_message(&me, &to, req, fate);
                NetError::Timeout(to.clone())
            };
            tokio::time::sleep(w.latency()).await;
            if dead() || !w.reachable(&me, &to) || w.lost() {
                tokio::time::sleep(w.timeout).await;
                return Err(lost(&w, "request lost", &req));
            }
            let handler = w.handlers.lock().get(&to).cloned();
            let Some(h) = handler else {
                return Err(NetError::UnknownNode(to.clone()));
            };
            let Some(delivered) = roundtrip(&req) else {
                return Err(lost(&w, "undecodable", &req));
            };
            let late = {
                let p = w.faults.lock().late;
                w.rng().chance(p)
            };
            if late {
                // Delivered after the sender gave up on it; the answer
                // goes nowhere.
                let delay = w.timeout + w.rng().millis(0, 1500);
                let (w2, me2, to2) = (w.clone(), me.clone(), to.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let h = w2.handlers.lock().get(&to2).cloned();
                    if let Some(h) = h
                        && w2.reachable(&me2, &to2)
                    {
                        let _ = h.handle(me2, delivered).await;
                    }
                });
                tokio::time::sleep(w.timeout).await;
                return Err(lost(&w, "late", &req));
            }
            let dup = {
                let p = w.faults.lock().dup;
                w.rng().chance(p)
            };
            if dup {
                // The copy arrives later, and its answer goes nowhere.
                let (w2, h2, me2, to2, copy) = (
                    w.clone(),
                    h.clone(),
                    me.clone(),
                    to.clone(),
                    delivered.clone(),
                );
                let delay = w.latency() * 20;
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if w2.reachable(&me2, &to2) {
                        let _ = h2.handle(me2, copy).await;
                    }
                });
            }
            let resp = h.handle(me.clone(), delivered).await;
            tokio::time::sleep(w.latency()).await;
            // The node that served it crashed (and restarted) meanwhile:
            // its answer never left.
            let same = w
                .handlers
                .lock()
                .get(&to)
                .is_some_and(|now| Arc::ptr_eq(now, &h));
            if dead() || !same || !w.reachable(&to, &me) || w.lost() {
                tokio::time::sleep(w.timeout).await;
                return Err(lost(&w, "answer lost", &req));
            }
            w.note_message(&me, &to, &req, "answered");
            roundtrip(&resp).ok_or_else(|| NetError::Timeout(to.clone()))
        })
    }
}

impl Liveness for SimNet {
    fn is_alive(&self, node: &NodeId) -> bool {
        if *node == self.me {
            return true;
        }
        let up = self.world.reachable(&self.me, node);
        let p = self.world.faults.lock().fd_mistakes;
        up != self.world.rng().chance(p)
    }
}
