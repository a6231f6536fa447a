//! One ring member: coordinates quorum reads and writes, answers its
//! peers, and runs the background work that makes the ring converge
//! (hinted handoff, Merkle anti-entropy, tombstone collection, layout
//! exchange).
//!
//! Reads and writes (Dynamo sections 4.5 to 4.7):
//! - a key's partition has one preference list per active layout version
//!   (two during a layout change); a write must reach W nodes of each, a
//!   read R nodes of each;
//! - a write is coordinated by an owner of the key (the first one alive),
//!   which gives it a dot in the key's dotted version vector set, stores it
//!   and sends it to the other owners; an owner that is down or does not
//!   answer is replaced by the next node outside the list, which keeps the
//!   version as a hint and delivers it when the owner is back (sloppy
//!   quorum, hinted handoff);
//! - a read merges what R nodes of each list hold; every owner that
//!   answered with less than the merge gets the merge (read repair).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::commit::Ticket;
use super::hash::{self, PARTITIONS, Partition};
use super::layout::{LayoutHistory, LayoutVersion};
use super::merkle::{self, FANOUT, Tree};
use super::msg::{MAX_KEY, MAX_VALUE, Request, Response};
use super::quorum::{OwnerSet, need, shortfall};
use super::storage::Storage;
use super::version::{Context, Dvv, Val};
use super::{BoxFuture, Handler, Liveness, Net, NodeId};

pub use super::layout::Quorum;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    /// The quorum of a ring's first layout, and the R and W of a layout
    /// stored before they were part of it; a committed layout's own N, R,
    /// W are what the node counts.
    pub quorum: Quorum,
    /// Nodes asked for the layout until this node has one of its own.
    pub seeds: Vec<NodeId>,
    /// How often hints are offered to their owners; `None` never (tests).
    pub hint_interval: Option<Duration>,
    /// How often every owned partition is compared with its co-owners;
    /// `None` never (tests).
    pub anti_entropy_interval: Option<Duration>,
    /// How often the layout is pulled from a peer.
    pub layout_interval: Duration,
    /// The longest read lease this node grants, and how long after it
    /// starts it assumes that grants it made before may still run
    /// (`ring.read_lease`).
    pub read_lease: Duration,
    /// The monotonic clock leases are measured on (`clock::boot_ns`; a
    /// simulated one in ring/dsim).
    pub clock: crate::clock::Clock,
    /// Syncs the store in the thread that waits for a write instead of a
    /// `ring-sync` thread (the deterministic simulation: no thread runs
    /// beside the simulated network).
    pub inline_sync: bool,
    /// Where the node's random choices come from.
    pub dice: Dice,
    /// The keys a layout version from the network must be signed by
    /// (`ring.operator_keys`); none: any member's is taken.
    pub operators: super::operator::Operators,
}

pub use super::Dice;

impl NodeConfig {
    pub fn new(id: NodeId) -> NodeConfig {
        NodeConfig {
            id,
            quorum: Quorum::default(),
            seeds: Vec::new(),
            hint_interval: Some(Duration::from_secs(1)),
            anti_entropy_interval: Some(Duration::from_secs(10)),
            layout_interval: Duration::from_secs(2),
            read_lease: DEFAULT_READ_LEASE,
            clock: crate::clock::Clock::boot(),
            inline_sync: false,
            dice: Dice::os(),
            operators: super::operator::Operators::default(),
        }
    }
}

/// `ring.read_lease` when not configured.
pub const DEFAULT_READ_LEASE: Duration = Duration::from_secs(6);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error(
        "the ring has no layout yet: stage its nodes with `chironctl ring join` and commit with `chironctl ring apply`"
    )]
    NoLayout,
    #[error("no quorum for {op}: {got} of {needed} nodes answered")]
    NoQuorum {
        op: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("key is {0} bytes, more than the ring's limit of {MAX_KEY}")]
    KeyTooLong(usize),
    #[error("value is {0} bytes, more than the ring's limit of {MAX_VALUE}")]
    ValueTooLarge(usize),
    #[error("{0}")]
    Storage(String),
    #[error("refused: {0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, RingError>;

/// What a quorum read found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Found {
    /// The merged version; `None` if no node had the key.
    pub version: Option<Dvv>,
}

impl Found {
    /// The live siblings (deletions left out).
    pub fn values(&self) -> Vec<Vec<u8>> {
        self.version
            .as_ref()
            .map(|v| v.values().into_iter().flatten().collect())
            .unwrap_or_default()
    }

    /// The context to give back with a write that replaces what was read.
    pub fn context(&self) -> Context {
        self.version.as_ref().map(Dvv::context).unwrap_or_default()
    }
}

/// Counters for `chironctl ring status` and the benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub gets: AtomicU64,
    pub puts: AtomicU64,
    pub read_repairs: AtomicU64,
    pub hints_stored: AtomicU64,
    pub hints_delivered: AtomicU64,
    pub entries_repaired: AtomicU64,
    pub tombstones_purged: AtomicU64,
}

/// What `chironctl ring status` shows.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RingStatus {
    pub node: String,
    /// The actor id this node's writes carry (`node:EPOCH`); a new epoch
    /// after every unclean shutdown.
    #[serde(default)]
    pub actor: String,
    pub layout_version: u64,
    pub transition_from: Option<u64>,
    pub n: u8,
    pub r: u8,
    pub w: u8,
    pub members: Vec<MemberStatus>,
    pub staged_join: Vec<(String, String)>,
    pub staged_leave: Vec<String>,
    /// A new N, R, W staged for the next layout version.
    #[serde(default)]
    pub staged_quorum: Option<Quorum>,
    /// Nodes the gossip sees alive that are not in the layout (node,
    /// address): candidates for `chironctl ring join`.
    #[serde(default)]
    pub peers: Vec<(String, String)>,
    pub keys: u64,
    pub hints: u64,
    pub read_repairs: u64,
    pub hints_delivered: u64,
    pub entries_repaired: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    pub node: String,
    pub addr: String,
    pub alive: bool,
    pub partitions: usize,
    pub synced: bool,
}

/// What the layer above the ring (the filesystem) hears from other nodes.
pub trait Listener: Send + Sync + 'static {
    /// Another node says `key` now holds `version`.
    fn nudged(&self, key: &[u8], version: &Dvv);
    /// Another node asks this one to publish what it owes the ring.
    fn flush(&self) -> BoxFuture<'static, ()>;
}

struct Inner {
    listener: RwLock<Option<Arc<dyn Listener>>>,
    cfg: NodeConfig,
    store: Storage,
    layout: RwLock<LayoutHistory>,
    net: Arc<dyn Net>,
    live: Arc<dyn Liveness>,
    /// Cached Merkle trees, dropped when their partition changes, with the
    /// partition's change count when each was built.
    trees: Mutex<HashMap<Partition, (u64, Arc<Tree>)>>,
    /// Changes per partition: a tree built from a scan that raced a
    /// change is not cached.
    generations: Mutex<HashMap<Partition, u64>>,
    /// Tombstones seen in the previous collection round: collected in the
    /// next one if unchanged (a grace period for writes in flight).
    tombstones: Mutex<BTreeMap<Vec<u8>, Dvv>>,
    stats: Stats,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Read leases this node granted (section 7, "Read leases").
    grants: Mutex<super::lease::Grants>,
    /// One log line per refused layout version per minute.
    refused_layouts: Mutex<super::lograte::LogLimiter<u64>>,
    /// `layout.current.version`, readable without a lock (the read path
    /// asks whether a lease is needed).
    layout_version: AtomicU64,
}

/// A ring member. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY {
        return Err(RingError::KeyTooLong(key.len()));
    }
    Ok(())
}

fn storage_err(e: impl std::fmt::Display) -> RingError {
    RingError::Storage(e.to_string())
}

impl Node {
    /// Opens the node's store in `dir` (its layout included). Call
    /// [`Node::start`] to run the background work.
    pub fn open(
        cfg: NodeConfig,
        dir: &Path,
        net: Arc<dyn Net>,
        live: Arc<dyn Liveness>,
    ) -> std::result::Result<Node, String> {
        cfg.quorum
            .check()
            .map_err(|e| format!("configured n, r, w: {e}"))?;
        let store = Storage::open_with(dir, &cfg.id, cfg.inline_sync, cfg.dice.clone())
            .map_err(|e| e.to_string())?;
        let mut layout = store
            .load_layout(cfg.quorum)
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| LayoutHistory::empty(cfg.quorum));
        if layout.current.version > 0 && layout.ack(&cfg.id) {
            store.save_layout(&layout).map_err(|e| e.to_string())?;
        }
        layout
            .check()
            .map_err(|e| format!("the stored layout: {e}"))?;
        super::membership::settle(&store, &layout, &cfg.id).map_err(|e| e.to_string())?;
        if layout.current.version > 0 && layout.current.quorum() != cfg.quorum {
            tracing::info!(
                "ring: layout version {} counts {}; the configured {} only seeds a ring's first layout (`chironctl ring quorum` stages a change)",
                layout.current.version,
                layout.current.quorum(),
                cfg.quorum
            );
        }
        let cfg_read_lease = cfg.read_lease;
        let started = cfg.clock.now_ns();
        let layout_version = AtomicU64::new(layout.current.version);
        Ok(Node {
            inner: Arc::new(Inner {
                listener: RwLock::new(None),
                cfg,
                store,
                layout: RwLock::new(layout),
                net,
                live,
                trees: Mutex::new(HashMap::new()),
                generations: Mutex::new(HashMap::new()),
                tombstones: Mutex::new(BTreeMap::new()),
                stats: Stats::default(),
                tasks: Mutex::new(Vec::new()),
                grants: Mutex::new(super::lease::Grants::new(started, cfg_read_lease)),
                refused_layouts: Mutex::new(super::lograte::LogLimiter::new(Duration::from_secs(
                    60,
                ))),
                layout_version,
            }),
        })
    }

    /// Sets who hears nudges and flush requests.
    pub fn set_listener(&self, l: Arc<dyn Listener>) {
        *self.inner.listener.write() = Some(l);
    }

    /// Tells every other node of the layout that `key` holds `version`,
    /// waiting for each node that is alive to apply it (or for the
    /// timeout). Returns the nodes that did not confirm.
    pub async fn nudge_all(&self, key: &[u8], version: &Dvv) -> Vec<NodeId> {
        self.ask_all(Request::Nudge {
            key: key.to_vec(),
            version: version.clone(),
        })
        .await
    }

    /// Asks every other node of the layout to publish what it owes the
    /// ring. Returns the nodes that did not confirm.
    pub async fn flush_all(&self) -> Vec<NodeId> {
        self.ask_all(Request::Flush).await
    }

    async fn ask_all(&self, req: Request) -> Vec<NodeId> {
        let me = self.inner.cfg.id.clone();
        let nodes: Vec<NodeId> = self
            .layout()
            .addresses()
            .into_keys()
            .filter(|n| *n != me)
            .collect();
        let calls = nodes.into_iter().map(|n| {
            let (net, req) = (self.inner.net.clone(), req.clone());
            async move {
                let ok = matches!(net.call(&n, req).await, Ok(Response::Done));
                (n, ok)
            }
        });
        let mut missing = Vec::new();
        for h in calls.map(tokio::spawn).collect::<Vec<_>>() {
            if let Ok((n, false)) = h.await {
                missing.push(n);
            }
        }
        missing
    }

    /// Asks every member of the current layout (this node included) for a
    /// read lease of `term`. Returns the shortest term granted once a
    /// majority granted one (stragglers are not waited for: a grant they
    /// record later only makes revokers wait longer); `None` if no
    /// majority did. The caller counts its lease from before this call
    /// (`lease::holder_expiry`).
    pub async fn grant_round(&self, term: Duration) -> Option<Duration> {
        let me = self.inner.cfg.id.clone();
        let members: Vec<NodeId> = self.layout().current.nodes.into_keys().collect();
        let term_ms = u64::try_from(term.as_millis()).unwrap_or(u64::MAX);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for n in members.iter().filter(|n| **n != me) {
            let (net, n, tx) = (self.inner.net.clone(), n.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tx.send(net.call(&n, Request::LeaseGrant { term_ms }).await);
            });
        }
        drop(tx);
        let mut granted: Vec<Duration> = Vec::new();
        if members.contains(&me) {
            granted.push(self.grant_local(&me, term));
        }
        while !super::lease::majority(granted.len(), members.len()) {
            match rx.recv().await {
                Some(Ok(Response::Granted(ms))) => {
                    granted.push(Duration::from_millis(ms).min(term));
                }
                Some(_) => {}
                None => return None,
            }
        }
        granted.into_iter().min()
    }

    fn grant_local(&self, host: &NodeId, term: Duration) -> Duration {
        self.inner.grants.lock().grant(host, term, self.now_ns())
    }

    /// Asks every member of the current layout (this node included) how
    /// long its read-lease grants to `hosts` have left. Once a majority
    /// answered, returns the instant (on this host's monotonic clock)
    /// after which every lease those hosts held through any of them is
    /// over; a lease they hold needed a majority too, so it is over then.
    /// The instant is in nanoseconds of this node's clock (`NodeConfig::
    /// clock`, `clock::boot_ns` outside tests; [`Node::now_ns`]).
    /// `None` if no majority answered.
    pub async fn lease_left_round(&self, hosts: &[NodeId]) -> Option<u64> {
        let me = self.inner.cfg.id.clone();
        let members: Vec<NodeId> = self.layout().current.nodes.into_keys().collect();
        let hosts: Vec<NodeId> = hosts
            .iter()
            .take(super::msg::MAX_LEASE_HOSTS)
            .cloned()
            .collect();
        let (tx, mut rx) = mpsc::unbounded_channel();
        for n in members.iter().filter(|n| **n != me) {
            let (net, n, hosts, tx) =
                (self.inner.net.clone(), n.clone(), hosts.clone(), tx.clone());
            let clock = self.inner.cfg.clock.clone();
            tokio::spawn(async move {
                let r = net.call(&n, Request::LeaseLeft { hosts }).await;
                let _ = tx.send((r, clock.now_ns()));
            });
        }
        drop(tx);
        let mut answered = 0;
        let mut until = self.now_ns();
        if members.contains(&me) {
            let now = self.now_ns();
            let left = self.inner.grants.lock().left(&hosts, now);
            answered += 1;
            until = until.max(now.saturating_add(nanos(super::lease::wait_for(left))));
        }
        while !super::lease::majority(answered, members.len()) {
            match rx.recv().await {
                Some((Ok(Response::Left(ms)), at)) => {
                    answered += 1;
                    let wait = super::lease::wait_for(Duration::from_millis(ms));
                    until = until.max(at.saturating_add(nanos(wait)));
                }
                Some(_) => {}
                None => return None,
            }
        }
        Some(until)
    }

    /// Nanoseconds on the clock this node measures leases on.
    pub fn now_ns(&self) -> u64 {
        self.inner.cfg.clock.now_ns()
    }

    /// Whether `node` answers a request now (the failure detector's
    /// opinion aside).
    pub async fn answers(&self, node: &NodeId) -> bool {
        *node == self.inner.cfg.id
            || matches!(
                self.inner.net.call(node, Request::GetLayout).await,
                Ok(Response::Layout(_))
            )
    }

    pub fn is_alive(&self, node: &NodeId) -> bool {
        *node == self.inner.cfg.id || self.inner.live.is_alive(node)
    }

    pub fn id(&self) -> &NodeId {
        &self.inner.cfg.id
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The current layout's version, without copying the layout.
    pub fn layout_version(&self) -> u64 {
        self.inner.layout_version.load(Ordering::Acquire)
    }

    pub fn layout(&self) -> LayoutHistory {
        self.inner.layout.read().clone()
    }

    /// The version this node itself stores for `key` (tests, status).
    pub fn local(&self, key: &[u8]) -> Option<Dvv> {
        self.inner.store.get(key).ok().flatten()
    }

    /// The store as a power loss now would leave it (tests).
    #[cfg(test)]
    pub fn power_loss_copy(&self, to: &Path) -> std::io::Result<()> {
        self.inner.store.power_loss_copy(to)
    }

    /// What a power loss now would leave (tests): see `power_loss_at`.
    #[cfg(test)]
    pub fn power_loss_point(&self) -> super::power_loss::Point {
        self.inner.store.power_loss_point()
    }

    /// The store as a power loss at `p` would have left it (tests).
    #[cfg(test)]
    pub fn power_loss_at(&self, p: super::power_loss::Point, to: &Path) -> std::io::Result<()> {
        self.inner.store.power_loss_at(p, to)
    }

    /// The actor id this node's coordinated writes carry (tests, status).
    pub fn actor(&self) -> String {
        self.inner.store.actor().to_string()
    }

    pub fn hint_count(&self) -> u64 {
        self.inner.store.hint_count().unwrap_or(0)
    }

    /// Starts the background loops on the current tokio runtime. They stop
    /// when [`Node::stop`] is called or the runtime ends.
    pub fn start(&self) {
        let mut tasks = self.inner.tasks.lock();
        if let Some(every) = self.inner.cfg.hint_interval {
            let n = self.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    n.deliver_hints().await;
                }
            }));
        }
        if let Some(every) = self.inner.cfg.anti_entropy_interval {
            let n = self.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    n.anti_entropy_round().await;
                }
            }));
        }
        let every = self.inner.cfg.layout_interval;
        let n = self.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                n.pull_layout().await;
            }
        }));
    }

    /// Stops the background loops and leaves the store as it is, as a
    /// `kill -9` would (the deterministic simulation; its store is then
    /// copied as a power loss would leave it and opened again).
    #[cfg(test)]
    pub fn crash(&self) {
        for t in self.inner.tasks.lock().drain(..) {
            t.abort();
        }
    }

    /// Stops the background loops and closes the store in order (every
    /// write durable, the clean shutdown recorded); requests that come
    /// after are refused.
    pub fn stop(&self) {
        for t in self.inner.tasks.lock().drain(..) {
            t.abort();
        }
        if let Err(e) = self.inner.store.close() {
            tracing::warn!("ring: {e}");
        }
    }

    // ---- client operations ----

    /// Quorum read of `key`. Tried again once if a node refused it for an
    /// older layout (this node took the newer one meanwhile).
    pub async fn get(&self, key: &[u8]) -> Result<Found> {
        let v = self.layout_version();
        match self.get_once(key).await {
            Err(_) if self.layout_version() != v => self.get_once(key).await,
            r => r,
        }
    }

    async fn get_once(&self, key: &[u8]) -> Result<Found> {
        check_key(key)?;
        self.inner.stats.gets.fetch_add(1, Ordering::Relaxed);
        let p = hash::partition_of(key);
        let (lv, sets) = self.owner_sets_at(p)?;
        let slots = Slots::new(&sets, self.fallbacks(p, &sets));
        let (tx, mut rx) = mpsc::unbounded_channel();
        for owner in slots.owners() {
            let (n, key, tx, slots) = (self.clone(), key.to_vec(), tx.clone(), slots.clone());
            tokio::spawn(async move {
                let got = n.read_slot(&owner, &key, &slots, lv).await;
                let _ = tx.send((owner, got));
            });
        }
        drop(tx);
        let mut answers: Vec<(NodeId, Option<Dvv>, bool)> = Vec::new();
        let mut merged: Option<Dvv> = None;
        let mut done = false;
        while let Some((owner, got)) = rx.recv().await {
            if let Some((version, from_owner)) = got {
                merged = merge_opt(merged, version.as_ref());
                answers.push((owner, version, from_owner));
            }
            let ok: Vec<&NodeId> = answers.iter().map(|a| &a.0).collect();
            if shortfall(&sets, &ok, |q| q.r).is_none() {
                done = true;
                break;
            }
        }
        if !done {
            let ok: Vec<&NodeId> = answers.iter().map(|a| &a.0).collect();
            let (needed, got) = shortfall(&sets, &ok, |q| q.r).unwrap_or((1, 0));
            return Err(RingError::NoQuorum {
                op: "read",
                needed,
                got,
            });
        }
        // Read repair, in the background: everyone who answered (now or
        // later) with less than the merge gets the merge.
        let n = self.clone();
        let key = key.to_vec();
        let found = merged.clone();
        tokio::spawn(async move {
            let mut merged = found;
            while let Some((owner, Some((version, from_owner)))) = rx.recv().await {
                merged = merge_opt(merged, version.as_ref());
                answers.push((owner, version, from_owner));
            }
            let Some(merged) = merged else { return };
            for (owner, version, from_owner) in answers {
                if from_owner && version.as_ref() != Some(&merged) {
                    n.inner.stats.read_repairs.fetch_add(1, Ordering::Relaxed);
                    n.send_write(&owner, &key, &merged, None, lv).await;
                }
            }
        });
        Ok(Found { version: merged })
    }

    /// Quorum write of `value` (`None` deletes) after a read that returned
    /// `context` (empty for a blind write, which then stands beside
    /// whatever the key holds as a sibling). Tried again once if a node
    /// refused it for an older layout (this node took the newer one
    /// meanwhile); the second try replaces the first's value where this
    /// node stored it, rather than standing beside it, but only if that
    /// dot directly follows what the client read of its actor: a context
    /// entry covers every lower dot of the actor too, and one between
    /// would be another client's write, which must stay.
    pub async fn put(&self, key: &[u8], value: Val, context: &Context) -> Result<Dvv> {
        let v = self.layout_version();
        let mut made = None;
        match self.put_once(key, value.clone(), context, &mut made).await {
            Err(_) if self.layout_version() != v => {
                let mut again = context.clone();
                if let Some((actor, counter)) = made {
                    let c = again.entry(actor).or_default();
                    if c.checked_add(1) == Some(counter) {
                        *c = counter;
                    }
                }
                self.put_once(key, value, &again, &mut None).await
            }
            r => r,
        }
    }

    async fn put_once(
        &self,
        key: &[u8],
        value: Val,
        context: &Context,
        made: &mut Option<(String, u64)>,
    ) -> Result<Dvv> {
        check_key(key)?;
        if let Some(v) = &value
            && v.len() > MAX_VALUE
        {
            return Err(RingError::ValueTooLarge(v.len()));
        }
        self.inner.stats.puts.fetch_add(1, Ordering::Relaxed);
        let p = hash::partition_of(key);
        let (lv, sets) = self.owner_sets_at(p)?;
        let me = &self.inner.cfg.id;
        let mut last = RingError::NoQuorum {
            op: "write",
            needed: 1,
            got: 0,
        };
        // The coordinator: this node if it owns the key, else the first
        // owner that takes the job.
        if sets[0].nodes.contains(me) {
            return self.coordinate_noting(key, value, context, made).await;
        }
        for owner in sets[0].nodes.clone() {
            if !self.inner.live.is_alive(&owner) {
                last = RingError::Refused(format!(
                    "no owner of the key can coordinate the write: {owner} is not alive"
                ));
                continue;
            }
            let req = Request::Coordinate {
                key: key.to_vec(),
                value: value.clone(),
                context: context.clone(),
                layout: lv,
            };
            match self.inner.net.call(&owner, req).await {
                Ok(Response::Version(Some(v))) => return Ok(v),
                Ok(Response::StaleLayout(l)) => {
                    // Planned on an old layout: `put` starts over on the
                    // new one rather than asking the next old owner.
                    self.merge_layout(&l);
                    return Err(RingError::Refused(format!(
                        "{owner} has layout version {}, newer than this node's",
                        l.current.version
                    )));
                }
                Ok(Response::Refused(why)) => last = RingError::Refused(why),
                Ok(other) => last = RingError::Refused(format!("unexpected answer {other:?}")),
                Err(e) => {
                    tracing::debug!("ring: coordinator {owner}: {e}");
                    last = RingError::Refused(format!(
                        "no owner of the key can coordinate the write: {e}"
                    ));
                }
            }
        }
        Err(last)
    }

    /// Deletes `key` (a tombstone, collected once every node has it).
    pub async fn delete(&self, key: &[u8], context: &Context) -> Result<Dvv> {
        self.put(key, None, context).await
    }

    // ---- coordination ----

    async fn coordinate(&self, key: &[u8], value: Val, context: &Context) -> Result<Dvv> {
        self.coordinate_noting(key, value, context, &mut None).await
    }

    /// [`Node::coordinate`]; `made` gets the dot the value was given here
    /// (set even if the write then fails).
    async fn coordinate_noting(
        &self,
        key: &[u8],
        value: Val,
        context: &Context,
        made: &mut Option<(String, u64)>,
    ) -> Result<Dvv> {
        let p = hash::partition_of(key);
        let (lv, sets) = self.owner_sets_at(p)?;
        let write = Dvv::new_write(context, value);
        // The actor is read with the layout held: a membership drop (which
        // renews it) happens while a layout is taken, with it held too.
        let (actor, updated) = self
            .under_layout(lv, || {
                let actor = self.inner.store.actor();
                let r = self
                    .inner
                    .store
                    .update(key, |cur| write.update(cur, &actor));
                (actor, r)
            })
            .ok_or_else(|| RingError::Refused(format!("the layout changed from version {lv}")))?;
        let (version, ticket) = updated.map_err(storage_err)?;
        *made = version
            .entries
            .iter()
            .find(|e| e.actor == actor)
            .map(|e| (actor.clone(), e.counter));
        self.changed(p);
        let me = self.inner.cfg.id.clone();
        let slots = Slots::new(&sets, self.fallbacks(p, &sets));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut acked: Vec<NodeId> = Vec::new();
        // This node counts once its own copy is durable; its fsync runs
        // while the other owners are written.
        {
            let (n, tx, me) = (self.clone(), tx.clone(), me.clone());
            tokio::spawn(async move {
                let ok = match n.inner.store.durable(ticket).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("ring: {e}");
                        false
                    }
                };
                let _ = tx.send((me, ok));
            });
        }
        for owner in slots.owners() {
            if owner == me {
                continue;
            }
            let (n, key, version, tx, slots) = (
                self.clone(),
                key.to_vec(),
                version.clone(),
                tx.clone(),
                slots.clone(),
            );
            tokio::spawn(async move {
                let ok = n.write_slot(&owner, &key, &version, &slots, lv).await;
                let _ = tx.send((owner, ok));
            });
        }
        drop(tx);
        loop {
            let ok: Vec<&NodeId> = acked.iter().collect();
            let Some((needed, got)) = shortfall(&sets, &ok, |q| q.w) else {
                return Ok(version);
            };
            match rx.recv().await {
                Some((owner, true)) => acked.push(owner),
                Some((_, false)) => {}
                None => {
                    return Err(RingError::NoQuorum {
                        op: "write",
                        needed,
                        got,
                    });
                }
            }
        }
    }

    /// Delivers `version` for `owner`'s slot: to the owner, or as a hint to
    /// a stand-in. True once some node holds it for that slot.
    async fn write_slot(
        &self,
        owner: &NodeId,
        key: &[u8],
        version: &Dvv,
        slots: &Slots,
        lv: u64,
    ) -> bool {
        let believed_alive = self.inner.live.is_alive(owner);
        if believed_alive && self.send_write(owner, key, version, None, lv).await {
            return true;
        }
        // Refused for an older layout: no stand-in may take it in the
        // owner's place (the operation starts over on the new layout).
        let stale = || self.layout_version() > lv;
        if stale() {
            return false;
        }
        while let Some(standin) = slots.take_fallback(&self.inner.live) {
            if stale() {
                return false;
            }
            if standin == self.inner.cfg.id {
                if self.hint_local(owner, key, version, lv).await.is_ok() {
                    self.inner
                        .stats
                        .hints_stored
                        .fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                continue;
            }
            if self
                .send_write(&standin, key, version, Some(owner), lv)
                .await
            {
                self.inner
                    .stats
                    .hints_stored
                    .fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        // No stand-in left: the failure detector may be wrong (it lags
        // behind a loaded or recovering node), so ask the owner anyway.
        !believed_alive && self.send_write(owner, key, version, None, lv).await
    }

    /// Reads `owner`'s slot: from the owner, or from a stand-in that holds
    /// something for the key (a hint). The bool tells whether the owner
    /// itself answered.
    async fn read_slot(
        &self,
        owner: &NodeId,
        key: &[u8],
        slots: &Slots,
        lv: u64,
    ) -> Option<(Option<Dvv>, bool)> {
        let believed_alive = self.inner.live.is_alive(owner);
        if believed_alive && let Some(v) = self.send_read(owner, key, lv).await {
            return Some((v, true));
        }
        if self.layout_version() > lv {
            return None;
        }
        while let Some(standin) = slots.take_fallback(&self.inner.live) {
            // A stand-in that holds nothing for the key says nothing of
            // what the owner holds: its "not found" must not count toward
            // R, or a read could miss an acknowledged write with most of
            // the key's owners down.
            if let Some(Some(v)) = self.send_read(&standin, key, lv).await {
                return Some((Some(v), false));
            }
        }
        // No stand-in left: ask the owner even if believed down.
        if !believed_alive && let Some(v) = self.send_read(owner, key, lv).await {
            return Some((v, true));
        }
        None
    }

    /// Reads `key` from `to`, for an operation planned on layout `lv`.
    async fn send_read(&self, to: &NodeId, key: &[u8], lv: u64) -> Option<Option<Dvv>> {
        if *to == self.inner.cfg.id {
            // As a remote owner would: no answer for an older layout.
            if self.layout_version() > lv {
                return None;
            }
            return self.read_local(key).ok();
        }
        let req = Request::Read {
            key: key.to_vec(),
            layout: lv,
        };
        match self.inner.net.call(to, req).await {
            Ok(Response::Version(v)) if v.as_ref().is_none_or(Dvv::is_valid) => Some(v),
            Ok(Response::StaleLayout(l)) => {
                self.merge_layout(&l);
                None
            }
            Ok(other) => {
                tracing::debug!("ring: read from {to}: unexpected answer {other:?}");
                None
            }
            Err(e) => {
                tracing::debug!("ring: read from {to}: {e}");
                None
            }
        }
    }

    /// Writes `version` of `key` to `to` (as a hint for `hint_for`), for
    /// an operation planned on layout `lv`: every node, this one included,
    /// that took a later layout refuses it.
    async fn send_write(
        &self,
        to: &NodeId,
        key: &[u8],
        version: &Dvv,
        hint_for: Option<&NodeId>,
        lv: u64,
    ) -> bool {
        if *to == self.inner.cfg.id && hint_for.is_none() {
            return match self.under_layout(lv, || self.write_local(key, version)) {
                Some(Ok(t)) => self.inner.store.durable(t).await.is_ok(),
                _ => false,
            };
        }
        let req = Request::Write {
            key: key.to_vec(),
            version: version.clone(),
            hint_for: hint_for.cloned(),
            layout: lv,
        };
        match self.inner.net.call(to, req).await {
            Ok(Response::Done) => true,
            Ok(Response::StaleLayout(l)) => {
                self.merge_layout(&l);
                false
            }
            Ok(other) => {
                tracing::debug!("ring: write to {to}: unexpected answer {other:?}");
                false
            }
            Err(e) => {
                tracing::debug!("ring: write to {to}: {e}");
                false
            }
        }
    }

    /// What this node holds for `key`: its own version merged with any
    /// hints it keeps for others.
    fn read_local(&self, key: &[u8]) -> Result<Option<Dvv>> {
        let mut v = self.inner.store.get(key).map_err(storage_err)?;
        for owner in self.inner.layout.read().addresses().keys() {
            if let Some(h) = self.inner.store.hint_for(owner, key).map_err(storage_err)? {
                v = merge_opt(v, Some(&h));
            }
        }
        Ok(v)
    }

    /// Merges `version` into this node's store; the ticket says when it
    /// is durable (wait for it before acknowledging the write).
    fn write_local(&self, key: &[u8], version: &Dvv) -> Result<Ticket> {
        let (_, changed, ticket) = self.inner.store.merge(key, version).map_err(storage_err)?;
        if changed {
            self.changed(hash::partition_of(key));
        }
        Ok(ticket)
    }

    /// Keeps `version` as a hint for `owner`, durably, for an operation
    /// planned on layout `lv` (refused if this node took a later one).
    async fn hint_local(&self, owner: &NodeId, key: &[u8], version: &Dvv, lv: u64) -> Result<()> {
        let t = self
            .under_layout(lv, || self.inner.store.hint(owner, key, version))
            .ok_or_else(|| RingError::Refused(format!("the layout changed from version {lv}")))?
            .map_err(storage_err)?;
        self.inner.store.durable(t).await.map_err(storage_err)
    }

    /// Runs `f` (a store write of an operation planned on layout `lv`)
    /// with the layout held, unless this node took a later layout: then
    /// `None`. Held, so that no layout is taken, acknowledged and synced
    /// from this node between the check and the write.
    fn under_layout<T>(&self, lv: u64, f: impl FnOnce() -> T) -> Option<T> {
        let l = self.inner.layout.read();
        (l.current.version <= lv).then(f)
    }

    fn changed(&self, p: Partition) {
        *self.inner.generations.lock().entry(p).or_default() += 1;
        self.inner.trees.lock().remove(&p);
    }

    fn generation(&self, p: Partition) -> u64 {
        self.inner.generations.lock().get(&p).copied().unwrap_or(0)
    }

    /// The preference lists of partition `p`, each with the quorum of its
    /// layout version: the current one first.
    fn owner_sets(&self, p: Partition) -> Result<Vec<OwnerSet>> {
        self.owner_sets_at(p).map(|(_, sets)| sets)
    }

    /// The preference lists of partition `p` and the layout version they
    /// come from, read together: an operation stamps its messages with
    /// that version.
    fn owner_sets_at(&self, p: Partition) -> Result<(u64, Vec<OwnerSet>)> {
        let layout = self.inner.layout.read();
        if layout.current.version == 0 {
            return Err(RingError::NoLayout);
        }
        let mut sets = vec![OwnerSet {
            nodes: layout.current.owners(p).to_vec(),
            quorum: layout.current.quorum(),
        }];
        if let Some(old) = &layout.old {
            sets.push(OwnerSet {
                nodes: old.owners(p).to_vec(),
                quorum: old.quorum(),
            });
        }
        Ok((layout.current.version, sets))
    }

    /// Stand-ins for partition `p`: every known node outside its
    /// preference lists, in an order fixed per partition.
    fn fallbacks(&self, p: Partition, sets: &[OwnerSet]) -> Vec<NodeId> {
        let layout = self.inner.layout.read();
        // Members only: the acknowledgements, sync marks and hint counts
        // of a transition cover members, not nodes merely staged to join.
        let mut others: Vec<NodeId> = layout
            .members()
            .into_iter()
            .filter(|n| !sets.iter().any(|s| s.nodes.contains(n)))
            .collect();
        others.sort_by_key(|n| {
            let mut k = p.to_be_bytes().to_vec();
            k.extend_from_slice(n.as_str().as_bytes());
            hash::stable(&k)
        });
        others
    }

    // ---- background work ----

    /// Offers every hint to its owner if the owner is alive.
    pub async fn deliver_hints(&self) {
        // Owner by owner: hints for owners that are down never hold back
        // those for owners that are up.
        // Hints go to members (of either version); those kept for any
        // other node are handed over to the owners (`hand_over_hints`).
        let owners: Vec<NodeId> = self.inner.layout.read().members().into_iter().collect();
        let mut hints = Vec::new();
        for owner in owners.iter().filter(|o| self.inner.live.is_alive(o)) {
            match self.inner.store.hints_for(owner, 10_000) {
                Ok(h) => hints.extend(h.into_iter().map(|(k, v)| (owner.clone(), k, v))),
                Err(e) => {
                    tracing::warn!("ring: {e}");
                    return;
                }
            }
        }
        for (owner, key, version) in hints {
            if !self.inner.live.is_alive(&owner) {
                continue;
            }
            // During a transition the new owners get it too: they may
            // have synced from the owner before it arrives there. Each
            // hint is sent as of the layout it is read under.
            let Ok((lv, sets)) = self.owner_sets_at(hash::partition_of(&key)) else {
                return;
            };
            let transition = sets.len() > 1;
            let owns = sets.iter().any(|s| s.nodes.contains(&owner));
            let delivered = if owns {
                self.send_write(&owner, &key, &version, None, lv).await
                    && (!transition || self.give_to_owners(&key, &version, false).await)
            } else {
                // The owner no longer owns the key (a forced end of a
                // transition): the key's owners get it instead.
                self.give_to_owners(&key, &version, true).await
            };
            if delivered {
                self.hint_done(&owner, &key, &version);
            }
        }
        self.hand_over_hints(&owners).await;
    }

    /// Writes `version` of `key` durably to every owner of the key in the
    /// current layout version (`all`: in every active one); true if each
    /// has it.
    async fn give_to_owners(&self, key: &[u8], version: &Dvv, all: bool) -> bool {
        let Ok((lv, sets)) = self.owner_sets_at(hash::partition_of(key)) else {
            return false;
        };
        let take = if all { sets.len() } else { 1 };
        let owners: BTreeSet<NodeId> = sets.into_iter().take(take).flat_map(|s| s.nodes).collect();
        let mut every = true;
        for owner in owners {
            let ok = (owner == self.inner.cfg.id || self.inner.live.is_alive(&owner))
                && self.send_write(&owner, key, version, None, lv).await;
            every &= ok;
        }
        every
    }

    fn hint_done(&self, owner: &NodeId, key: &[u8], version: &Dvv) {
        if let Err(e) = self.inner.store.hint_delivered(owner, key, version) {
            tracing::warn!("ring: {e}");
        } else {
            self.inner
                .stats
                .hints_delivered
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hints kept for nodes the layout no longer knows (they left while
    /// this node stood in for them) go to each key's owners now: every
    /// owner of every active layout version gets the value, and the hint
    /// is dropped once all of them have it durably. Without this, a write
    /// acknowledged through stand-ins for owners that then left would be
    /// on no owner (the new owners sync from the old owners' stores, not
    /// from hints). Found by the deterministic simulation (ring/dsim,
    /// seed 804).
    async fn hand_over_hints(&self, known: &[NodeId]) {
        let gone: Vec<NodeId> = match self.inner.store.hint_owners() {
            Ok(o) => o.into_iter().filter(|o| !known.contains(o)).collect(),
            Err(e) => {
                tracing::warn!("ring: {e}");
                return;
            }
        };
        for departed in gone {
            let hints = match self.inner.store.hints_for(&departed, 10_000) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!("ring: {e}");
                    return;
                }
            };
            for (key, version) in hints {
                if self.give_to_owners(&key, &version, true).await {
                    self.hint_done(&departed, &key, &version);
                }
            }
        }
    }

    fn tree(&self, p: Partition) -> Result<Arc<Tree>> {
        let generation = self.generation(p);
        if let Some((g, t)) = self.inner.trees.lock().get(&p)
            && *g == generation
        {
            return Ok(t.clone());
        }
        let entries = self.inner.store.scan(p).map_err(storage_err)?;
        let t = Arc::new(Tree::build(entries.iter().map(|(k, v)| (k.as_slice(), v))));
        // Cached only if no change raced the scan.
        if self.generation(p) == generation {
            self.inner.trees.lock().insert(p, (generation, t.clone()));
        }
        Ok(t)
    }

    /// One anti-entropy pass over every partition this node owns, against
    /// every co-owner that is alive; then, during a layout change, records
    /// that this node synced its new partitions from the old owners.
    pub async fn anti_entropy_round(&self) {
        let layout = self.layout();
        if layout.current.version == 0 {
            return;
        }
        let me = self.inner.cfg.id.clone();
        let mut synced_all = true;
        let mut tombstone_candidates = BTreeMap::new();
        for p in 0..PARTITIONS {
            let sets = layout.owner_sets(p);
            if !sets.iter().any(|s| s.contains(&me)) {
                continue;
            }
            let peers: BTreeSet<NodeId> = sets
                .iter()
                .flat_map(|s| s.iter())
                .filter(|n| **n != me)
                .cloned()
                .collect();
            let mut exchanged: Vec<NodeId> = Vec::new();
            for peer in &peers {
                if !self.inner.live.is_alive(peer) {
                    continue;
                }
                match self.exchange(p, peer).await {
                    Ok(()) => exchanged.push(peer.clone()),
                    Err(e) => tracing::debug!("ring: anti-entropy with {peer}: {e}"),
                }
            }
            if let Some(old) = &layout.old
                && layout.current.owners(p).contains(&me)
            {
                // Writes under the old layout reached W of its owners: after
                // exchanging with all but W-1 of them, this node has them all.
                let old_owners = old.owners(p);
                let w = old.w as usize;
                let got = old_owners
                    .iter()
                    .filter(|o| **o == me || exchanged.contains(o))
                    .count();
                if got + need(w, old_owners) <= old_owners.len() {
                    synced_all = false;
                }
            }
            if layout.current.owners(p).first() == Some(&me)
                && exchanged.len() == peers.len()
                && let Ok(entries) = self.inner.store.scan(p)
            {
                for (k, v) in entries {
                    if v.is_tombstone() {
                        tombstone_candidates.insert(k, v);
                    }
                }
            }
        }
        // Synced only once every node took the new version (no write
        // coordinated on the old one lands after the exchanges above) and
        // this node holds no hint (each went to the new owners too).
        if layout.old.is_some() && synced_all && layout.all_acked() && self.hint_count() == 0 {
            self.mark_synced(layout.current.version).await;
        }
        self.collect_tombstones(tombstone_candidates).await;
    }

    /// Compares partition `p` with `peer` level by level and exchanges the
    /// entries of the leaves that differ, both ways.
    async fn exchange(&self, p: Partition, peer: &NodeId) -> Result<()> {
        let mine = self.tree(p)?;
        let theirs = self.call_hashes(peer, p, 0, vec![0]).await?;
        if theirs.first() == Some(&mine.root) {
            return Ok(());
        }
        let all: Vec<u16> = (0..FANOUT as u16).collect();
        let inner = self.call_hashes(peer, p, 1, all).await?;
        let mut leaves = Vec::new();
        for (i, h) in inner.iter().enumerate() {
            if mine.inner.get(i) != Some(h) {
                leaves.extend((i * FANOUT) as u16..((i + 1) * FANOUT) as u16);
            }
        }
        let hashes = self.call_hashes(peer, p, 2, leaves.clone()).await?;
        for (leaf, h) in leaves.iter().zip(hashes) {
            if mine.leaves.get(*leaf as usize) == Some(&h) {
                continue;
            }
            let req = Request::Leaf {
                partition: p,
                leaf: *leaf,
            };
            let theirs = match self.inner.net.call(peer, req).await {
                Ok(Response::Entries(e)) => e,
                Ok(other) => return Err(RingError::Refused(format!("unexpected {other:?}"))),
                Err(e) => return Err(RingError::Refused(e.to_string())),
            };
            let mut their_map: HashMap<Vec<u8>, Dvv> = HashMap::new();
            for (k, v) in theirs {
                if k.len() > MAX_KEY || !v.is_valid() || hash::partition_of(&k) != p {
                    continue;
                }
                // Not waited for: a repair acknowledges nothing, and a
                // layout's sync mark is saved with an fsync of everything.
                let _repair: Ticket = self.write_local(&k, &v)?;
                their_map.insert(k, v);
            }
            for (k, v) in self.leaf_entries(p, *leaf)? {
                if their_map.get(&k) != Some(&v) {
                    self.inner
                        .stats
                        .entries_repaired
                        .fetch_add(1, Ordering::Relaxed);
                    let lv = self.layout_version();
                    self.send_write(peer, &k, &v, None, lv).await;
                }
            }
        }
        Ok(())
    }

    async fn call_hashes(
        &self,
        peer: &NodeId,
        partition: Partition,
        level: u8,
        indices: Vec<u16>,
    ) -> Result<Vec<u64>> {
        let want = indices.len();
        let req = Request::Tree {
            partition,
            level,
            indices,
        };
        match self.inner.net.call(peer, req).await {
            Ok(Response::Hashes(h)) if h.len() == want => Ok(h),
            Ok(other) => Err(RingError::Refused(format!("unexpected {other:?}"))),
            Err(e) => Err(RingError::Refused(e.to_string())),
        }
    }

    fn leaf_entries(&self, p: Partition, leaf: u16) -> Result<Vec<(Vec<u8>, Dvv)>> {
        Ok(self
            .inner
            .store
            .scan(p)
            .map_err(storage_err)?
            .into_iter()
            .filter(|(k, _)| merkle::leaf_of(k) == leaf)
            .collect())
    }

    /// Purges the tombstones that were already candidates last round,
    /// unchanged, and that every node of the layout holds exactly (or does
    /// not hold at all, hints included).
    async fn collect_tombstones(&self, candidates: BTreeMap<Vec<u8>, Dvv>) {
        let previous = std::mem::replace(&mut *self.inner.tombstones.lock(), candidates.clone());
        let everyone: Vec<NodeId> = self.layout().addresses().into_keys().collect();
        for (key, version) in candidates {
            if previous.get(&key) != Some(&version) {
                continue;
            }
            let mut all_agree = true;
            for node in &everyone {
                match self.send_read(node, &key, self.layout_version()).await {
                    Some(None) => {}
                    Some(Some(v)) if v == version => {}
                    _ => {
                        all_agree = false;
                        break;
                    }
                }
            }
            if !all_agree {
                continue;
            }
            for node in &everyone {
                if *node == self.inner.cfg.id {
                    if let Ok(true) = self.inner.store.purge(&key, &version) {
                        self.changed(hash::partition_of(&key));
                    }
                    continue;
                }
                let req = Request::Purge {
                    key: key.clone(),
                    version: version.clone(),
                };
                let _ = self.inner.net.call(node, req).await;
            }
            self.inner
                .stats
                .tombstones_purged
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    // ---- layout ----

    /// Asks one peer (or a seed, while this node has no layout) for its
    /// layout and merges it.
    pub async fn pull_layout(&self) {
        let layout = self.layout();
        let me = &self.inner.cfg.id;
        let mut peers: Vec<NodeId> = layout.addresses().into_keys().filter(|n| n != me).collect();
        if layout.current.version == 0 || peers.is_empty() {
            peers.extend(self.inner.cfg.seeds.iter().filter(|n| *n != me).cloned());
        }
        if peers.is_empty() {
            return;
        }
        let peer = &peers[(self.inner.cfg.dice.roll() % peers.len() as u64) as usize];
        if let Ok(Response::Layout(l)) = self.inner.net.call(peer, Request::GetLayout).await {
            self.merge_layout(&l);
        }
    }

    /// Merges a layout from elsewhere; true if ours changed.
    fn merge_layout(&self, other: &LayoutHistory) -> bool {
        if let Err(e) = other.check() {
            tracing::warn!("ring: refused a malformed layout: {e}");
            return false;
        }
        let acked;
        let changed = {
            let mut l = self.inner.layout.write();
            let mut next = l.clone();
            if !next.merge(other) {
                return false;
            }
            if let Err(e) = self.signed_by_operator(&l, &next) {
                let v = next.current.version;
                if let Some(n) = self.inner.refused_layouts.lock().note(&v, Instant::now()) {
                    tracing::warn!(
                        "ring: refused layout version {v} from the network: {e} ({n} more refusals of it not logged)"
                    );
                }
                return false;
            }
            acked = next.ack(&self.inner.cfg.id);
            if let Err(e) = self.settle_membership(&next) {
                tracing::warn!(
                    "ring: layout version {} not taken: {e}",
                    next.current.version
                );
                return false;
            }
            // Not taken unless stored: after a restart this node would
            // serve the older version again, though counted as past it.
            if let Err(e) = self.inner.store.save_layout(&next) {
                tracing::warn!(
                    "ring: layout version {} not taken: {e}",
                    next.current.version
                );
                return false;
            }
            self.inner
                .layout_version
                .store(next.current.version, Ordering::Release);
            *l = next;
            true
        };
        if changed {
            self.inner.trees.lock().clear();
        }
        if acked {
            // Every node waits for this acknowledgement before syncing.
            let n = self.clone();
            tokio::spawn(async move { n.push_layout().await });
        }
        changed
    }

    /// Checks that every layout version `next` would take in place of
    /// `held`'s is signed by an operator key (`operator`): its current
    /// version unless it is the one held, its old one unless it is one of
    /// those held (a version this node took before keys were required
    /// stays usable as the old side of a transition).
    fn signed_by_operator(
        &self,
        held: &LayoutHistory,
        next: &LayoutHistory,
    ) -> std::result::Result<(), String> {
        let ops = &self.inner.cfg.operators;
        if next.current != held.current && next.current.version > 0 {
            ops.verify(&next.current)?;
        }
        if let Some(old) = &next.old
            && *old != held.current
            && held.old.as_ref() != Some(old)
        {
            ops.verify(old)?;
        }
        Ok(())
    }

    /// Before this node takes `layout`: if it was out of the ring since it
    /// last was a member, it drops what it stored (`membership`).
    fn settle_membership(&self, layout: &LayoutHistory) -> Result<()> {
        let dropped = super::membership::settle(&self.inner.store, layout, &self.inner.cfg.id)
            .map_err(storage_err)?;
        if dropped {
            for p in 0..PARTITIONS {
                self.changed(p);
            }
            self.inner.tombstones.lock().clear();
        }
        Ok(())
    }

    /// Sends our layout to every node it names.
    async fn push_layout(&self) {
        let layout = self.layout();
        for node in layout.addresses().into_keys() {
            if node == self.inner.cfg.id {
                continue;
            }
            let req = Request::PutLayout(Box::new(layout.clone()));
            if let Err(e) = self.inner.net.call(&node, req).await {
                tracing::debug!("ring: layout to {node}: {e}");
            }
        }
    }

    async fn change_layout(
        &self,
        f: impl FnOnce(&mut LayoutHistory) -> std::result::Result<(), String>,
    ) -> std::result::Result<LayoutHistory, String> {
        let new = {
            let mut l = self.inner.layout.write();
            let mut copy = l.clone();
            f(&mut copy)?;
            copy.ack(&self.inner.cfg.id);
            self.settle_membership(&copy).map_err(|e| e.to_string())?;
            self.inner
                .store
                .save_layout(&copy)
                .map_err(|e| e.to_string())?;
            self.inner
                .layout_version
                .store(copy.current.version, Ordering::Release);
            *l = copy.clone();
            copy
        };
        self.inner.trees.lock().clear();
        self.push_layout().await;
        Ok(new)
    }

    pub async fn stage_join(
        &self,
        node: NodeId,
        addr: String,
    ) -> std::result::Result<LayoutHistory, String> {
        self.change_layout(|l| {
            l.stage_join(node, addr);
            Ok(())
        })
        .await
    }

    pub async fn stage_leave(&self, node: NodeId) -> std::result::Result<LayoutHistory, String> {
        self.change_layout(|l| l.stage_leave(node)).await
    }

    /// Stages a new N, R, W for the next layout version (refused if it
    /// breaks the quorum rules).
    pub async fn stage_quorum(&self, q: Quorum) -> std::result::Result<LayoutHistory, String> {
        self.change_layout(|l| l.stage_quorum(q)).await
    }

    /// The version `apply` would commit now, unsigned: what an operator
    /// signs (`chironctl ring apply --key`).
    pub fn plan(&self) -> std::result::Result<LayoutVersion, String> {
        let mut l = self.layout();
        l.apply(self.inner.cfg.quorum)?;
        Ok(l.current)
    }

    /// Commits the staged changes as the next version, with `signature`
    /// (an operator's, of what `plan` gave). With `ring.operator_keys`
    /// set, refused unless the signature is by one of them and of this
    /// very version (the staged changes may have moved since).
    pub async fn apply(
        &self,
        signature: Option<super::operator::LayoutSignature>,
    ) -> std::result::Result<LayoutHistory, String> {
        let first = self.inner.cfg.quorum;
        let ops = self.inner.cfg.operators.clone();
        self.change_layout(|l| {
            l.apply(first)?;
            let signed = signature.is_some();
            l.current.signature = signature;
            ops.verify(&l.current).map_err(|e| {
                if signed {
                    format!(
                        "{e}; if the staged changes moved since it was signed, run `chironctl ring apply --key FILE` again"
                    )
                } else {
                    "this ring takes only layouts signed by an operator key (ring.operator_keys): run `chironctl ring apply --key FILE`".to_string()
                }
            })
        })
        .await
    }

    /// Ends the layout transition by force (`LayoutHistory::force_finish`,
    /// `chironctl ring finish --force`).
    pub async fn force_finish(&self) -> std::result::Result<LayoutHistory, String> {
        let r = self.change_layout(|l| l.force_finish().map(|_| ())).await;
        if let Ok(l) = &r {
            tracing::warn!(
                "ring: layout version {}: transition ended by force (`chironctl ring finish --force`)",
                l.current.version
            );
        }
        r
    }

    async fn mark_synced(&self, version: u64) {
        let me = self.inner.cfg.id.clone();
        let _ = self
            .change_layout(|l| {
                l.mark_synced(&me, version);
                Ok(())
            })
            .await;
    }

    pub fn status(&self) -> RingStatus {
        let l = self.layout();
        // What the node counts: the layout's, or what its first will get.
        let q = if l.current.version > 0 {
            l.current.quorum()
        } else {
            l.next_quorum(self.inner.cfg.quorum)
        };
        let members = l
            .current
            .nodes
            .iter()
            .map(|(id, addr)| MemberStatus {
                node: id.to_string(),
                addr: addr.clone(),
                alive: *id == self.inner.cfg.id || self.inner.live.is_alive(id),
                partitions: l.current.owners.iter().filter(|o| o.contains(id)).count(),
                synced: l.old.is_none()
                    || l.synced.get(id).copied().unwrap_or(0) >= l.current.version,
            })
            .collect();
        let s = &self.inner.stats;
        RingStatus {
            node: self.inner.cfg.id.to_string(),
            actor: self.inner.store.actor().to_string(),
            layout_version: l.current.version,
            transition_from: l.old.as_ref().map(|o| o.version),
            n: q.n,
            r: q.r,
            w: q.w,
            members,
            staged_join: l
                .staged
                .join
                .iter()
                .map(|(n, a)| (n.to_string(), a.clone()))
                .collect(),
            staged_leave: l.staged.leave.iter().map(|n| n.to_string()).collect(),
            staged_quorum: l.staged.quorum,
            peers: Vec::new(),
            keys: self.inner.store.key_count().unwrap_or(0),
            hints: self.hint_count(),
            read_repairs: s.read_repairs.load(Ordering::Relaxed),
            hints_delivered: s.hints_delivered.load(Ordering::Relaxed),
            entries_repaired: s.entries_repaired.load(Ordering::Relaxed),
        }
    }

    // ---- serving peers ----

    /// Answers `req` from node `from`: authenticated by the transport (the
    /// name a static key was bound to at first contact; see `keys`), so a
    /// check of who may ask what belongs here.
    async fn serve(&self, from: NodeId, req: Request) -> Response {
        match self.serve_inner(&from, req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("ring: request from {from} refused: {e}");
                Response::Refused(e.to_string())
            }
        }
    }

    /// A replica read or write coordinated on layout `theirs`: refused if
    /// this node took a later one (`Some`: the answer); if the sender is
    /// ahead, this node fetches its layout (and serves the request).
    fn check_layout(&self, from: &NodeId, theirs: u64) -> Option<Response> {
        let mine = self.layout_version();
        if theirs < mine {
            return Some(Response::StaleLayout(Box::new(self.layout())));
        }
        if theirs > mine {
            let (n, from) = (self.clone(), from.clone());
            tokio::spawn(async move {
                if let Ok(Response::Layout(l)) = n.inner.net.call(&from, Request::GetLayout).await {
                    n.merge_layout(&l);
                }
            });
        }
        None
    }

    async fn serve_inner(&self, from: &NodeId, req: Request) -> Result<Response> {
        let layout = match &req {
            Request::Read { layout, .. }
            | Request::Write { layout, .. }
            | Request::Coordinate { layout, .. } => Some(*layout),
            _ => None,
        };
        if let Some(theirs) = layout
            && let Some(refused) = self.check_layout(from, theirs)
        {
            return Ok(refused);
        }
        Ok(match req {
            Request::Read { key, .. } => {
                check_key(&key)?;
                Response::Version(self.read_local(&key)?)
            }
            Request::Write {
                key,
                version,
                hint_for,
                layout,
            } => {
                check_key(&key)?;
                if !version.is_valid() {
                    return Err(RingError::Refused("malformed version".into()));
                }
                // Stored with the layout held (a later one taken meanwhile
                // refuses it), acknowledged only once durable.
                let stored = self.under_layout(layout, || match &hint_for {
                    Some(owner) if *owner != self.inner.cfg.id => self
                        .inner
                        .store
                        .hint(owner, &key, &version)
                        .map_err(storage_err),
                    _ => self.write_local(&key, &version),
                });
                let Some(t) = stored else {
                    return Ok(Response::StaleLayout(Box::new(self.layout())));
                };
                self.inner.store.durable(t?).await.map_err(storage_err)?;
                Response::Done
            }
            Request::Coordinate {
                key,
                value,
                context,
                ..
            } => {
                check_key(&key)?;
                let p = hash::partition_of(&key);
                if !self.owner_sets(p)?[0].nodes.contains(&self.inner.cfg.id) {
                    return Err(RingError::Refused(format!(
                        "{} does not own partition {p} in layout {}",
                        self.inner.cfg.id,
                        self.layout().current.version
                    )));
                }
                if let Some(v) = &value
                    && v.len() > MAX_VALUE
                {
                    return Err(RingError::ValueTooLarge(v.len()));
                }
                if context.values().any(|&c| c >= super::version::MAX_COUNTER) {
                    return Err(RingError::Refused("counter out of range".into()));
                }
                Response::Version(Some(self.coordinate(&key, value, &context).await?))
            }
            Request::Tree {
                partition,
                level,
                indices,
            } => {
                if partition >= PARTITIONS {
                    return Err(RingError::Refused(format!("no partition {partition}")));
                }
                let t = self.tree(partition)?;
                Response::Hashes(
                    t.hashes(level, &indices)
                        .ok_or_else(|| RingError::Refused("no such tree node".into()))?,
                )
            }
            Request::Leaf { partition, leaf } => {
                if partition >= PARTITIONS || leaf as usize >= merkle::LEAVES {
                    return Err(RingError::Refused("no such leaf".into()));
                }
                Response::Entries(self.leaf_entries(partition, leaf)?)
            }
            Request::Purge { key, version } => {
                check_key(&key)?;
                if self
                    .inner
                    .store
                    .purge(&key, &version)
                    .map_err(storage_err)?
                {
                    self.changed(hash::partition_of(&key));
                }
                Response::Done
            }
            Request::Nudge { key, version } => {
                check_key(&key)?;
                if !version.is_valid() {
                    return Err(RingError::Refused("malformed version".into()));
                }
                let l = self.inner.listener.read().clone();
                if let Some(l) = l {
                    l.nudged(&key, &version);
                }
                Response::Done
            }
            Request::Flush => {
                let l = self.inner.listener.read().clone();
                if let Some(l) = l {
                    l.flush().await;
                }
                Response::Done
            }
            Request::LeaseGrant { term_ms } => {
                // Granted to the authenticated sender only: a node cannot
                // take (or extend) a lease in another's name.
                let term = self.grant_local(from, Duration::from_millis(term_ms));
                Response::Granted(u64::try_from(term.as_millis()).unwrap_or(u64::MAX))
            }
            Request::LeaseLeft { hosts } => {
                let left = self.inner.grants.lock().left(&hosts, self.now_ns());
                // Rounded up: the asker must not stop waiting early.
                let ms = left.as_nanos().div_ceil(1_000_000);
                Response::Left(u64::try_from(ms).unwrap_or(u64::MAX))
            }
            Request::GetLayout => Response::Layout(Box::new(self.layout())),
            Request::PutLayout(l) => {
                l.check().map_err(RingError::Refused)?;
                self.merge_layout(&l);
                Response::Done
            }
        })
    }
}

impl Handler for Node {
    fn handle(&self, from: NodeId, req: Request) -> BoxFuture<'static, Response> {
        let n = self.clone();
        Box::pin(async move { n.serve(from, req).await })
    }
}

/// The preference-list slots of one operation and the stand-ins that may
/// take over a slot whose owner is down; each stand-in takes one slot.
#[derive(Clone)]
struct Slots {
    owners: Vec<NodeId>,
    fallbacks: Arc<Mutex<(Vec<NodeId>, HashSet<NodeId>)>>,
}

impl Slots {
    fn new(sets: &[OwnerSet], fallbacks: Vec<NodeId>) -> Slots {
        let mut owners: Vec<NodeId> = Vec::new();
        for n in sets.iter().flat_map(|s| &s.nodes) {
            if !owners.contains(n) {
                owners.push(n.clone());
            }
        }
        Slots {
            owners,
            fallbacks: Arc::new(Mutex::new((fallbacks, HashSet::new()))),
        }
    }

    fn owners(&self) -> Vec<NodeId> {
        self.owners.clone()
    }

    fn take_fallback(&self, live: &Arc<dyn Liveness>) -> Option<NodeId> {
        let mut g = self.fallbacks.lock();
        let (list, used) = &mut *g;
        let pick = list
            .iter()
            .find(|n| !used.contains(*n) && live.is_alive(n))
            .cloned()?;
        used.insert(pick.clone());
        Some(pick)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn merge_opt(a: Option<Dvv>, b: Option<&Dvv>) -> Option<Dvv> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.sync(b)),
        (None, Some(b)) => Some(b.clone()),
        (a, None) => a,
    }
}
