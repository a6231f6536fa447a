//! [`MetaStore`] for hosts that share replicas through the metadata ring
//! (DESIGN.md section 7), and what the filesystem asks of the other hosts.
//!
//! What stays on this host, in its own [`EmbeddedStore`]: intent marks,
//! the session flag, resync cursors and this host's missed marks (crash
//! recovery is per host). What goes to the ring, under keys prefixed with
//! the replica set's id:
//!
//! | key                               | value (JSON)                          |
//! |-----------------------------------|---------------------------------------|
//! | `replica/<replica id>/<host>`     | that host's view of the replica       |
//! | `path/<path>`                     | a write that missed replicas: host and the replicas it missed |
//! | `lease/resync`                    | which host resyncs, until when        |
//! | `conflicts/<host>`                | conflict copies that host made        |
//!
//! A host that takes a replica out of service writes its view to a quorum
//! and nudges every other node before the failing operation returns, so a
//! host that can be reached stops reading that replica at once; the views
//! are also polled. Ring writes that find no quorum (this host is cut off)
//! are kept in an outbox and published when the ring is back; a host that
//! takes the resync lease first asks every node to flush its outbox.
//! While every replica is in sync the write path never touches the ring.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::{
    EmbeddedStore, MetaStore, PreviousShutdown, ReplicaId, ReplicaRecord, ReplicaState, Result,
};
use crate::ring::node::{Listener, Node};
use crate::ring::version::{Context, Dvv};
use crate::ring::{BoxFuture, NodeId};

/// One host's view of one replica, as published in the ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub state: String,
    /// Milliseconds since the epoch (shown to the operator; never used to
    /// order views: clocks step).
    pub since: u64,
    pub cause: String,
    /// The view's number: each host numbers the views it publishes from a
    /// durable counter (`EmbeddedStore::next_view_seq`), above every number
    /// found in the ring for the key; of two views of one key the higher
    /// number is the later. 0: written by a version that did not number
    /// them (older than any numbered view).
    #[serde(default)]
    pub seq: u64,
}

impl HostView {
    pub fn in_sync(&self) -> bool {
        self.state == ReplicaState::InSync.to_string()
    }

    /// What orders two views of one key: the number, then (among
    /// unnumbered views of an older version only) the time.
    fn order(&self) -> (u64, u64) {
        (self.seq, if self.seq == 0 { self.since } else { 0 })
    }
}

/// This host's read lease (DESIGN.md section 7, "Read leases"): file
/// contents are served only while it is current. Checked on every read:
/// two atomic loads and a read of the monotonic clock.
#[derive(Debug)]
pub struct ReadLease {
    /// Whether a lease is needed (the ring has a committed layout).
    required: AtomicBool,
    /// When the lease ends, on `clock::boot_ns`.
    until: AtomicU64,
    /// Whether the last renewal worked (a read that finds the lease over
    /// waits for the next renewal only then).
    renewing: AtomicBool,
    /// How many times the lease was extended after it had run out: a call
    /// that saw the same count at its start and end, with the lease held
    /// at both, was under it all along.
    lapses: AtomicU64,
}

impl ReadLease {
    fn new(required: bool) -> ReadLease {
        ReadLease {
            required: AtomicBool::new(required),
            until: AtomicU64::new(0),
            renewing: AtomicBool::new(true),
            lapses: AtomicU64::new(0),
        }
    }

    /// See `lapses`.
    pub fn lapses(&self) -> u64 {
        self.lapses.load(Ordering::SeqCst)
    }

    /// Extends the lease to `e`; counts a lapse if it had run out (before
    /// the extension is visible).
    fn extend(&self, e: u64) {
        if crate::clock::boot_ns() >= self.until.load(Ordering::SeqCst) {
            self.lapses.fetch_add(1, Ordering::SeqCst);
        }
        self.until.fetch_max(e, Ordering::SeqCst);
    }

    /// Whether this host may serve file contents now.
    pub fn current(&self) -> bool {
        self.valid_until().is_some()
    }

    /// If the lease is held now, when it ends (`clock::boot_ns`;
    /// `u64::MAX` when no lease is needed). Only ever extended, so a read
    /// that began under it and ends before this instant was under it all
    /// along.
    pub fn valid_until(&self) -> Option<u64> {
        if !self.required.load(Ordering::Acquire) {
            return Some(u64::MAX);
        }
        let until = self.until.load(Ordering::Acquire);
        (crate::clock::boot_ns() < until).then_some(until)
    }
}

/// A mutation of a path that some replicas missed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub struct PathWrite {
    pub host: String,
    pub missed: Vec<String>,
    /// Whether the host acknowledged the change (a host cut off from the
    /// ring, which could not tell the others that replicas it missed were
    /// out, answered EIO: the change reached its replicas all the same).
    /// (Records of older versions have none: taken as acknowledged.)
    #[serde(default = "acknowledged")]
    pub acked: bool,
    /// Orders one host's records of a path: its latest counts. (0 in
    /// records of older versions.)
    #[serde(default)]
    pub n: u64,
}

fn acknowledged() -> bool {
    true
}

/// A conflict copy made by a resync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub struct ConflictRecord {
    /// The path both hosts changed.
    pub path: String,
    /// Where the other version was kept.
    pub copy: String,
    /// The host whose version was moved to the copy.
    pub host: String,
    pub policy: String,
    /// Milliseconds since the epoch.
    pub at: u64,
}

/// A host's resync lease as stored in the ring (`lease/<host>`). Other
/// hosts never compare its times with their own clocks: a record counts as
/// held for `ttl_ms` (plus a margin for clock rates) from the moment a host
/// first reads that `renewal`, on that host's monotonic clock (DESIGN.md
/// section 7, "The resync lease").
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    holder: String,
    /// Milliseconds since the epoch, by the holder's clock: for people
    /// reading the ring (and versions that compared it); never compared.
    until: u64,
    /// How long it lasts after it is seen, in milliseconds (0 in records
    /// of older versions: the reader's own term is taken).
    #[serde(default)]
    ttl_ms: u64,
    /// Drawn at random at each take and renewal: a host that reads the
    /// same number again has seen no renewal since.
    #[serde(default)]
    renewal: u64,
}

/// Margin on another host's resync lease term: clocks run at slightly
/// different rates, and reading the record takes time.
fn lease_margin(ttl: Duration) -> Duration {
    ttl / 5 + Duration::from_millis(200)
}

/// The term assumed for a lease record of an older version (which has
/// none): the longest this version takes (`fs::cluster::LEASE`).
const OLD_LEASE_TERM: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct SharedStore {
    local: EmbeddedStore,
    node: Node,
    rt: tokio::runtime::Handle,
    host: NodeId,
    /// Key prefix: this replica set's id.
    prefix: String,
    /// Context of the last version this host read or wrote, per key it
    /// writes, so its own writes replace its own earlier ones.
    contexts: Mutex<HashMap<Vec<u8>, Context>>,
    /// Ring writes owed: key -> value (`None`: delete).
    outbox: Mutex<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Paths whose missed write is already in the ring this degraded spell.
    recorded: Mutex<HashMap<Vec<u8>, bool>>,
    /// Other hosts' views: replica -> host -> view.
    views: RwLock<HashMap<ReplicaId, BTreeMap<String, HostView>>>,
    on_change: RwLock<Option<Arc<dyn Fn() + Send + Sync>>>,
    timeout: Duration,
    this: std::sync::Weak<SharedStore>,
    /// Nodes that did not answer a flush request, since when.
    gone_since: Mutex<HashMap<NodeId, std::time::Instant>>,
    /// Whether this host holds the resync lease.
    holding: std::sync::atomic::AtomicBool,
    /// Other hosts' resync lease records ("host/renewal/until"): when this
    /// host first read each, and its term.
    leases_seen: Mutex<HashMap<String, (std::time::Instant, Duration)>>,
    /// When this host's own resync lease ends, on its monotonic clock: the
    /// term from the start of its last renewal that reached the ring (the
    /// others count it from when they read that renewal, later).
    lease_until: Mutex<Option<std::time::Instant>>,
    /// Nodes the failure detector believes dead, since when.
    dead_since: Mutex<HashMap<NodeId, std::time::Instant>>,
    /// How long a node must stay unreachable before a resync goes ahead
    /// without the writes it may owe (it is taken for crashed).
    takeover: Duration,
    /// This host's intent marks, as last changed and as last published
    /// (`pending/<host>`, in the background, so that another host can heal
    /// them if this one dies).
    pending: Mutex<(BTreeSet<Vec<u8>>, u64, u64)>,
    /// This host's read lease, and the term it asks for.
    lease: ReadLease,
    lease_term: Duration,
    /// Replicas whose view taking them out of service this host could not
    /// settle (publish to a quorum and revoke the others' read leases):
    /// writes that miss them are not acknowledged (`is_settled`).
    unsettled: Mutex<HashSet<ReplicaId>>,
    /// Whether `unsettled` is empty (the write path reads only this).
    all_settled: AtomicBool,
    /// Hosts this host fenced to take over for them (`fence`), until it
    /// lifts the fence (`lift_fences`).
    fenced_by_me: Mutex<BTreeSet<String>>,
    /// The host that fenced this one, as the last renewal read it: this
    /// host takes no read lease (so serves no reads and makes no changes)
    /// while it is set.
    fenced_by: Mutex<Option<String>>,
    /// Orders this host's path records (`PathWrite::n`): drawn from the
    /// local store's durable counter at start, above every earlier run.
    record_epoch: u64,
    record_count: AtomicU64,
    /// Replicas whose view under this host's name in the ring says other
    /// than this host's own record (another host vouched for it while it
    /// was taken for dead), found by `refresh`, for `take_mismatched`.
    mismatched: Mutex<Vec<ReplicaId>>,
    /// Replicas in sync here but missing some paths this host will copy:
    /// published as resyncing, not in sync (`set_behind`).
    behind: Mutex<HashSet<ReplicaId>>,
}

/// A fence on a host taken for dead (`fence/<host>`), written by the host
/// that takes over for it before it does anything in its name: while it
/// stands, the fenced host takes no read lease, so it neither reads nor
/// writes (DESIGN.md section 7, "Dead hosts").
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fence {
    by: String,
    /// Milliseconds since the epoch, by the fencer's clock: for people.
    at: u64,
}

/// More intent marks than this are published as "too many": whoever heals
/// them compares the replicas in full.
const MAX_PUBLISHED_PENDING: usize = 10_000;

/// A host's intent marks as published in the ring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPending {
    pub paths: Vec<Vec<u8>>,
    /// More than MAX_PUBLISHED_PENDING: compare everything.
    pub overflow: bool,
}

impl SharedStore {
    pub fn new(
        local: EmbeddedStore,
        node: Node,
        rt: tokio::runtime::Handle,
        replica_ids: &[ReplicaId],
        timeout: Duration,
        takeover: Duration,
        lease_term: Duration,
    ) -> Arc<SharedStore> {
        let mut ids: Vec<String> = replica_ids.iter().map(ToString::to_string).collect();
        ids.sort();
        let set = crate::ring::hash::stable(ids.join(",").as_bytes());
        // Ring writes owed when the daemon last stopped (or died).
        let owed: BTreeMap<Vec<u8>, Option<Vec<u8>>> = match local.owed() {
            Ok(o) => o.into_iter().collect(),
            Err(e) => {
                tracing::error!("metadata store: {e}");
                BTreeMap::new()
            }
        };
        let record_epoch = local.next_view_seq(0).unwrap_or_else(|e| {
            tracing::error!("metadata store: {e}");
            u64::from(crate::clock::boot_ns() as u32)
        });
        let s = Arc::new_cyclic(|this| SharedStore {
            this: this.clone(),
            gone_since: Mutex::new(HashMap::new()),
            dead_since: Mutex::new(HashMap::new()),
            holding: std::sync::atomic::AtomicBool::new(false),
            leases_seen: Mutex::new(HashMap::new()),
            lease_until: Mutex::new(None),
            takeover,
            pending: Mutex::new((BTreeSet::new(), 0, 0)),
            local,
            host: node.id().clone(),
            node: node.clone(),
            rt,
            prefix: format!("fs/{set:016x}/"),
            contexts: Mutex::new(HashMap::new()),
            outbox: Mutex::new(owed),
            recorded: Mutex::new(HashMap::new()),
            views: RwLock::new(HashMap::new()),
            on_change: RwLock::new(None),
            timeout,
            // With a committed layout, no read until a lease is granted
            // (a host restarted while cut off must not read either).
            lease: ReadLease::new(node.layout().current.version > 0),
            lease_term,
            unsettled: Mutex::new(HashSet::new()),
            all_settled: AtomicBool::new(true),
            fenced_by_me: Mutex::new(BTreeSet::new()),
            fenced_by: Mutex::new(None),
            mismatched: Mutex::new(Vec::new()),
            behind: Mutex::new(HashSet::new()),
            record_epoch,
            record_count: AtomicU64::new(0),
        });
        node.set_listener(s.clone());
        s
    }

    /// The layout version the ring member knows.
    pub fn node_layout_version(&self) -> u64 {
        self.node.layout().current.version
    }

    pub fn host(&self) -> &NodeId {
        &self.host
    }

    /// Called (from any thread) whenever another host's view changes.
    pub fn set_on_change(&self, f: Arc<dyn Fn() + Send + Sync>) {
        *self.on_change.write() = Some(f);
    }

    fn key(&self, rest: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.as_bytes().to_vec();
        k.extend_from_slice(rest);
        k
    }

    fn replica_key(&self, id: &ReplicaId, host: &str) -> Vec<u8> {
        self.key(format!("replica/{id}/{host}").as_bytes())
    }

    fn block<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        let timeout = self.timeout * 3;
        self.rt
            .block_on(async move { tokio::time::timeout(timeout, f).await.ok() })
    }

    /// Reads `key` from a quorum: the siblings' values and the context.
    fn get(&self, key: &[u8]) -> std::result::Result<(Vec<Vec<u8>>, Context), String> {
        match self.block(self.node.get(key)) {
            Some(Ok(found)) => Ok((found.values(), found.context())),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("ring timeout".into()),
        }
    }

    /// Writes this host's `value` for `key`, replacing what this host saw
    /// last; on failure the write waits in the outbox.
    fn put(&self, key: Vec<u8>, value: Option<Vec<u8>>) -> bool {
        let ok = self
            .block(self.put_async(key.clone(), value.clone()))
            .unwrap_or(false);
        if !ok {
            self.owe(key, value);
        } else if self.outbox.lock().remove(&key).is_some() {
            // An older write owed for this key is superseded.
            if let Err(e) = self.local.paid(&key) {
                tracing::error!("metadata store: {e}");
            }
        }
        ok
    }

    /// Keeps a ring write to make later, in memory and in the local store
    /// (so a crash of this daemon does not forget it).
    fn owe(&self, key: Vec<u8>, value: Option<Vec<u8>>) {
        if let Err(e) = self.local.owe(&key, value.as_deref()) {
            tracing::error!("metadata store: {e}");
        }
        self.outbox.lock().insert(key, value);
    }

    async fn put_async(&self, key: Vec<u8>, value: Option<Vec<u8>>) -> bool {
        // Every host records its own writes to a path under the same key:
        // written blind (no context), they stand side by side as siblings
        // instead of replacing each other. Settling deletes them all.
        if value.is_some() && key.starts_with(&self.key(b"path/")) {
            return match self.node.put(&key, value, &Context::new()).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!("ring: write {}: {e}", String::from_utf8_lossy(&key));
                    false
                }
            };
        }
        let ctx = self.contexts.lock().get(&key).cloned();
        let ctx = match ctx {
            Some(c) => c,
            None => match self.node.get(&key).await {
                Ok(f) => f.context(),
                Err(_) => return false,
            },
        };
        match self.node.put(&key, value, &ctx).await {
            Ok(v) => {
                self.contexts.lock().insert(key, v.context());
                true
            }
            Err(e) => {
                tracing::debug!("ring: write {}: {e}", String::from_utf8_lossy(&key));
                false
            }
        }
    }

    /// Publishes every write owed; true if none is left.
    pub async fn flush_outbox(&self) -> bool {
        let owed: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
            .outbox
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in owed {
            if self.put_async(k.clone(), v.clone()).await {
                let mut out = self.outbox.lock();
                if out.get(&k) == Some(&v) {
                    out.remove(&k);
                    if let Err(e) = self.local.paid(&k) {
                        tracing::error!("metadata store: {e}");
                    }
                }
            }
        }
        self.outbox.lock().is_empty()
    }

    /// The highest view number the ring holds under `key` (0 for none),
    /// keeping the key's context for the next write; `None` when the ring
    /// cannot be read.
    fn highest_seq(&self, key: &[u8]) -> Option<u64> {
        let (values, ctx) = self.get(key).ok()?;
        self.contexts.lock().insert(key.to_vec(), ctx);
        Some(
            values
                .iter()
                .filter_map(|v| serde_json::from_slice::<HostView>(v).ok())
                .map(|v| v.seq)
                .max()
                .unwrap_or(0),
        )
    }

    /// The number of the next view published under `key`: above this
    /// host's durable counter and above every view the ring holds for the
    /// key (another host vouched for this one, or an older counter was
    /// lost with its state directory).
    fn next_seq(&self, key: &[u8]) -> u64 {
        let floor = self.highest_seq(key).unwrap_or(0);
        let floor = floor.max(self.owed_seq(key));
        match self.local.next_view_seq(floor) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("metadata store: {e}");
                floor.saturating_add(1)
            }
        }
    }

    /// The number of the view owed for `key`, if one waits in the outbox.
    fn owed_seq(&self, key: &[u8]) -> u64 {
        self.outbox
            .lock()
            .get(key)
            .and_then(|v| v.as_ref())
            .and_then(|v| serde_json::from_slice::<HostView>(v).ok())
            .map_or(0, |v| v.seq)
    }

    /// Publishes this host's view of a replica and tells the other nodes.
    /// A view that takes the replica out of service returns only once no
    /// other host can still read it: every host confirmed the nudge, or
    /// the read leases of those that did not are over (`revoke`).
    pub fn publish(&self, rec: &ReplicaRecord) {
        let behind;
        let rec = match self.published_state(rec) {
            Some(r) => {
                behind = r;
                &behind
            }
            None => rec,
        };
        let key = self.replica_key(&rec.id, self.host.as_str());
        if rec.state != ReplicaState::InSync {
            // Unsettled until the others are told (paths recorded
            // meanwhile say their writes may not be acknowledged).
            self.unsettled.lock().insert(rec.id);
            self.all_settled.store(false, Ordering::SeqCst);
        }
        let view = HostView {
            state: rec.state.to_string(),
            since: rec
                .since
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            cause: rec.cause.clone(),
            seq: self.next_seq(&key),
        };
        let Ok(bytes) = serde_json::to_vec(&view) else {
            return;
        };
        if rec.state != ReplicaState::InSync {
            // A new degraded spell: paths must be recorded again.
            self.recorded.lock().clear();
        }
        let published = self.put(key.clone(), Some(bytes.clone()));
        if !published {
            tracing::warn!(
                "ring: cannot publish that replica {} is {} (no quorum); kept to publish later",
                rec.id,
                rec.state
            );
            // The nudge below carries the view itself: the hosts that can
            // be reached learn it now all the same.
        }
        let version =
            Dvv::new_write(&Context::new(), Some(bytes.clone())).update(&Dvv::default(), "nudge");
        let missing = self
            .block(self.node.nudge_all(&key, &version))
            .unwrap_or_default();
        let unconfirmed = missing.clone();
        let missing: Vec<&NodeId> = missing.iter().filter(|n| self.node.is_alive(n)).collect();
        if !missing.is_empty() {
            tracing::warn!(
                "ring: hosts {missing:?} did not confirm that replica {} is {}",
                rec.id,
                rec.state
            );
        }
        let settled = rec.state == ReplicaState::InSync
            || (published && unconfirmed.is_empty())
            || self.revoke(&key, &bytes, published, &unconfirmed, &rec.id);
        let mut unsettled = self.unsettled.lock();
        if settled {
            // Writes that miss it are acknowledged from now on (their path
            // records say so: `record_write` writes again when the answer
            // changes).
            unsettled.remove(&rec.id);
        } else {
            unsettled.insert(rec.id);
        }
        self.all_settled
            .store(unsettled.is_empty(), Ordering::SeqCst);
    }

    /// What this host publishes for `rec` if not `rec` itself: a replica
    /// in sync but missing paths here (`set_behind`) is published as
    /// resyncing: no other host reads it, and their changes reach it after
    /// the other replicas (this host copies into it).
    fn published_state(&self, rec: &ReplicaRecord) -> Option<ReplicaRecord> {
        (rec.state == ReplicaState::InSync && self.behind.lock().contains(&rec.id)).then(|| {
            ReplicaRecord {
                state: ReplicaState::Resyncing,
                cause: "copying paths it missed while in sync".into(),
                ..rec.clone()
            }
        })
    }

    /// Notes (`on`) or forgets that replica `id`, in sync here, misses
    /// paths this host will copy; true if that changed. The caller then
    /// publishes its record again.
    pub fn set_behind(&self, id: &ReplicaId, on: bool) -> bool {
        let mut b = self.behind.lock();
        if on { b.insert(*id) } else { b.remove(id) }
    }

    /// Whether replica `id` is published as behind (`set_behind`).
    pub fn is_behind(&self, id: &ReplicaId) -> bool {
        self.behind.lock().contains(id)
    }

    /// Whether no other host may read replica `id` while this host has it
    /// out of service: true unless the view saying so could not be
    /// published and the others' read leases revoked (`publish`).
    pub fn is_settled(&self, id: &ReplicaId) -> bool {
        self.all_settled.load(Ordering::SeqCst) || !self.unsettled.lock().contains(id)
    }

    /// The replicas `is_settled` is false for.
    pub fn unsettled(&self) -> Vec<ReplicaId> {
        self.unsettled.lock().iter().copied().collect()
    }

    /// A bound on how long `publish` of a view taking a replica out of
    /// service takes: its write and nudge, then `revoke` (which may find,
    /// just before it gives up, a lease that has a whole term left), each
    /// ring call bounded by `block`.
    pub fn revoke_bound(&self) -> Duration {
        let term = self.lease_term + crate::ring::lease::margin(self.lease_term);
        term * 2 + self.timeout * 13
    }

    /// Makes sure no other host reads replica `id` any more before a view
    /// taking it out of service (`bytes`, under `key`) is acknowledged:
    /// the view must be in the ring (a host that renews its lease later
    /// reads it there; retried if it was not), and no host of `hosts` (they
    /// did not confirm the nudge) may hold a read lease: a majority of the
    /// ring says how long their grants have left, and this host waits that
    /// long plus the drift margin. Their leases needed a majority too, so
    /// the two meet on some node. Returns whether that was done. If this
    /// host cannot get there (it is cut off from the majority), it gives up
    /// after a lease term and a ring timeout: false, and the writes that
    /// miss the replica answer EIO until a later `publish` settles it
    /// (DESIGN.md section 7).
    fn revoke(
        &self,
        key: &[u8],
        bytes: &[u8],
        mut published: bool,
        hosts: &[NodeId],
        id: &ReplicaId,
    ) -> bool {
        if self.node.layout_version() == 0 {
            return true; // no layout: nobody holds a lease
        }
        let start = std::time::Instant::now();
        let give_up = self.lease_term + crate::ring::lease::margin(self.lease_term) + self.timeout;
        loop {
            if !published {
                published = self.put(key.to_vec(), Some(bytes.to_vec()));
            }
            if published && hosts.is_empty() {
                return true;
            }
            if published && let Some(Some(until)) = self.block(self.node.lease_left_round(hosts)) {
                let left = until.saturating_sub(self.node.now_ns());
                if left > 0 {
                    tracing::info!(
                        "ring: waiting {:.1}s for the read leases of {hosts:?} to run out before replica {id} is out of service for them too",
                        left as f64 / 1e9
                    );
                    sleep_until_ns(&self.node, until);
                }
                return true;
            }
            if start.elapsed() >= give_up {
                tracing::warn!(
                    "ring: cannot reach a majority of the ring to publish that replica {id} is out of service and revoke the read leases of {hosts:?}; writes that miss it answer EIO until this host's view is published"
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// If this host may serve reads now, until when (`clock::boot_ns`;
    /// `u64::MAX` while no lease is needed: no layout yet). A lease is
    /// needed from the moment this node knows a layout, before the first
    /// renewal that sees it. With `wait`, if renewals work (the last one
    /// succeeded, or none ended yet), waits up to a third of the term for
    /// the next one.
    pub fn read_lease_until(&self, wait: bool) -> Option<u64> {
        let bound = self.lease_term / 3 + Duration::from_millis(50);
        let start = std::time::Instant::now();
        loop {
            if !self.lease.required.load(Ordering::Acquire) && self.node.layout_version() > 0 {
                self.lease.required.store(true, Ordering::Release);
            }
            if let Some(u) = self.lease.valid_until() {
                return Some(u);
            }
            if !wait || !self.lease.renewing.load(Ordering::Acquire) || start.elapsed() >= bound {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// This host's read lease for `chironctl status`: `None` while no
    /// lease is needed (no layout yet).
    pub fn read_lease_state(&self) -> Option<String> {
        let held = self.read_lease_until(false);
        if !self.lease.required.load(Ordering::Acquire) {
            return None;
        }
        if let Some(by) = self.fenced_by.lock().clone() {
            return Some(format!(
                "fenced by {by}: it took this host for dead and is healing for it; no reads or changes until it is done"
            ));
        }
        Some(match held {
            Some(until) => format!(
                "held, {:.1}s left",
                until.saturating_sub(crate::clock::boot_ns()) as f64 / 1e9
            ),
            None => "lost: no majority of the ring renews it; file contents, listings, symlinks and changes answer EIO"
                .to_string(),
        })
    }

    /// This host's read lease.
    pub fn read_lease(&self) -> &ReadLease {
        &self.lease
    }

    /// The term of the read lease this host asks for.
    pub fn lease_term(&self) -> Duration {
        self.lease_term
    }

    /// Asks a majority of the ring for a read lease. Returns when it would
    /// end (`clock::boot_ns`), counted from before the request left; it
    /// takes effect only through `settle_lease`, once the views have been
    /// read after it was granted. `None`: not granted, or no layout yet.
    pub fn renew_read_lease(&self) -> Option<u64> {
        if self.node.layout_version() == 0 {
            return None;
        }
        let sent = crate::clock::boot_ns();
        let granted = self.block(self.node.grant_round(self.lease_term))??;
        Some(crate::ring::lease::holder_expiry(sent, granted))
    }

    /// Extends the read lease to `expiry` if it was granted and every view
    /// was read after the grant (`views_complete`): a host that failed a
    /// replica before the grant had published its view by then, and one
    /// that fails it later waits for this lease to end.
    pub fn settle_lease(&self, expiry: Option<u64>, views_complete: bool) {
        if self.node.layout_version() == 0 {
            return;
        }
        self.lease.required.store(true, Ordering::Release);
        let fenced = self.fenced_by.lock().clone();
        if let Some(by) = fenced {
            if self.lease.renewing.swap(false, Ordering::AcqRel) {
                tracing::warn!(
                    "ring: host {by} took this host for dead and is healing for it: no reads or changes here until it is done (its fence is lifted)"
                );
            }
            return;
        }
        match expiry {
            Some(e) if views_complete => {
                self.lease.extend(e);
                if !self.lease.renewing.swap(true, Ordering::AcqRel) {
                    tracing::info!("ring: read lease renewed; serving reads again");
                }
            }
            _ => {
                if self.lease.renewing.swap(false, Ordering::AcqRel) {
                    tracing::warn!(
                        "ring: cannot renew the read lease ({}); file contents answer EIO once it runs out",
                        if expiry.is_none() {
                            "no majority of the ring granted it"
                        } else {
                            "the other hosts' views could not be read"
                        }
                    );
                }
            }
        }
    }

    /// Refreshes the other hosts' views of `ids` from the ring and
    /// publishes what this host owes. Called periodically. Returns whether
    /// every view was read.
    pub fn refresh(&self, ids: &[ReplicaId]) -> bool {
        let mut complete = true;
        let hosts: Vec<String> = self
            .node
            .layout()
            .addresses()
            .into_keys()
            .filter(|h| *h != self.host)
            .map(|h| h.to_string())
            .collect();
        let mut fresh: HashMap<ReplicaId, BTreeMap<String, HostView>> = HashMap::new();
        for id in ids {
            for h in &hosts {
                match self.get(&self.replica_key(id, h)) {
                    Ok((values, _)) => {
                        if let Some(v) = latest_view(&values) {
                            fresh.entry(*id).or_default().insert(h.clone(), v);
                        }
                    }
                    Err(e) => {
                        // Keep what we knew.
                        complete = false;
                        tracing::debug!("ring: view of {id} by {h}: {e}");
                        if let Some(v) = self.views.read().get(id).and_then(|m| m.get(h)) {
                            fresh.entry(*id).or_default().insert(h.clone(), v.clone());
                        }
                    }
                }
            }
        }
        if !self.read_fence() {
            complete = false;
        }
        if !self.check_own_views(ids) {
            complete = false;
        }
        self.publish_pending();
        // A nudge that arrived while this refresh read the ring is newer
        // than what the refresh read: per host, the later view wins. A
        // view known here that the ring does not hold (yet: its host could
        // not publish it and nudged it) is kept too.
        let changed = {
            let mut views = self.views.write();
            for id in ids {
                let Some(known) = views.get(id) else {
                    continue;
                };
                for h in &hosts {
                    let Some(k) = known.get(h) else {
                        continue;
                    };
                    let slot = fresh.entry(*id).or_default();
                    match slot.get(h) {
                        Some(v) if v.order() >= k.order() => {}
                        _ => {
                            slot.insert(h.clone(), k.clone());
                        }
                    }
                }
            }
            let changed = *views != fresh;
            *views = fresh;
            changed
        };
        if !self.outbox.lock().is_empty() {
            self.block(self.flush_outbox());
        }
        if changed {
            self.changed();
        }
        complete
    }

    fn changed(&self) {
        let f = self.on_change.read().clone();
        if let Some(f) = f {
            f();
        }
    }

    /// Publishes this host's intent marks if they changed since the last
    /// time (marks that live shorter than the watcher's interval are never
    /// seen: what matters is files held open for writing).
    fn publish_pending(&self) {
        let (snapshot, generation) = {
            let p = self.pending.lock();
            if p.1 == p.2 {
                return;
            }
            (p.0.clone(), p.1)
        };
        let published = if snapshot.len() > MAX_PUBLISHED_PENDING {
            PublishedPending {
                paths: Vec::new(),
                overflow: true,
            }
        } else {
            PublishedPending {
                paths: snapshot.into_iter().collect(),
                overflow: false,
            }
        };
        let Ok(bytes) = serde_json::to_vec(&published) else {
            return;
        };
        let key = self.key(format!("pending/{}", self.host).as_bytes());
        if self.put(key, Some(bytes)) {
            let mut p = self.pending.lock();
            p.2 = p.2.max(generation);
        }
    }

    /// The intent marks host `h` published (paths it was changing).
    pub fn pending_of(&self, h: &str) -> std::result::Result<PublishedPending, String> {
        let key = self.key(format!("pending/{h}").as_bytes());
        let (values, ctx) = self.get(&key)?;
        self.contexts.lock().insert(key, ctx);
        let mut all = PublishedPending::default();
        for v in values {
            if let Ok(p) = serde_json::from_slice::<PublishedPending>(&v) {
                all.overflow |= p.overflow;
                all.paths.extend(p.paths);
            }
        }
        all.paths.sort();
        all.paths.dedup();
        Ok(all)
    }

    /// Forgets host `h`'s intent marks once another host healed them.
    pub fn healed_pending_of(&self, h: &str) {
        let key = self.key(format!("pending/{h}").as_bytes());
        if self.contexts.lock().contains_key(&key) {
            self.put(key, None);
        }
    }

    /// Hosts of the ring other than this one that the failure detector
    /// has believed dead for at least `takeover_after`, that do not answer
    /// now, while this host reaches a quorum. Whoever acts in their name
    /// fences them first (`fence`).
    pub fn dead_hosts(&self) -> Vec<String> {
        self.long_dead()
    }

    fn long_dead(&self) -> Vec<String> {
        let now = std::time::Instant::now();
        let mut dead = self.dead_since.lock();
        let members: Vec<NodeId> = self
            .node
            .layout()
            .current
            .nodes
            .into_keys()
            .filter(|n| *n != self.host)
            .collect();
        dead.retain(|n, _| members.contains(n) && !self.node.is_alive(n));
        let long_dead: Vec<NodeId> = members
            .into_iter()
            .filter(|n| !self.node.is_alive(n))
            .filter(|n| now.duration_since(*dead.entry(n.clone()).or_insert(now)) >= self.takeover)
            .collect();
        drop(dead);
        // The detector lags behind a network that came back: a host taken
        // for dead must also fail to answer now, and this host must reach a
        // quorum of the ring (the minority side of a partition takes over
        // nothing).
        long_dead
            .into_iter()
            .filter(|n| self.block(self.node.answers(n)) == Some(false))
            .filter(|_| self.node_reaches_quorum())
            .map(|n| n.to_string())
            .collect()
    }

    /// Fences host `h` before this host does anything in its name (called
    /// while holding the resync lease): records it here, writes
    /// `fence/<h>/<this host>` to a quorum, then waits until no read lease
    /// granted to `h` can still run (a majority says how long their grants
    /// to it have left, as `revoke`). From then on `h` neither reads nor
    /// changes anything: changes need its lease, and its renewals read its
    /// fences (`read_fence`) after their grant, so a grant after this wait
    /// gives it no lease. Each call writes and waits again (another host,
    /// or `h` itself, may have lifted an earlier fence). False if a step
    /// failed.
    pub fn fence(&self, h: &str) -> bool {
        let Ok(node) = NodeId::new(h) else {
            return false;
        };
        // Recorded first, so that the fence is lifted even if this call
        // fails after its write reached the ring.
        let first = self.fenced_by_me.lock().insert(h.to_string());
        let fence = Fence {
            by: self.host.to_string(),
            at: now_ms(),
        };
        let Ok(bytes) = serde_json::to_vec(&fence) else {
            return false;
        };
        let key = self.fence_key(h, self.host.as_str());
        if self.block(self.put_async(key, Some(bytes))) != Some(true) {
            tracing::warn!("ring: cannot fence host {h} (no quorum); not taking over for it yet");
            return false;
        }
        let Some(Some(until)) = self.block(self.node.lease_left_round(&[node])) else {
            tracing::warn!(
                "ring: cannot learn how long host {h}'s read lease runs; not taking over for it yet"
            );
            return false;
        };
        sleep_until_ns(&self.node, until);
        if first {
            tracing::warn!(
                "ring: host {h} is fenced: it serves nothing until this host has healed what it left"
            );
        }
        true
    }

    fn fence_key(&self, fenced: &str, by: &str) -> Vec<u8> {
        self.key(format!("fence/{fenced}/{by}").as_bytes())
    }

    /// The hosts this host has fenced (`fence`) and not lifted yet.
    pub fn fenced_by_me(&self) -> Vec<String> {
        self.fenced_by_me.lock().iter().cloned().collect()
    }

    /// Finds the fences this host wrote before it restarted (they are
    /// lifted as any other).
    pub fn recall_fences(&self) {
        let hosts: Vec<NodeId> = self.node.layout().addresses().into_keys().collect();
        for h in hosts.iter().filter(|h| **h != self.host) {
            let key = self.fence_key(h.as_str(), self.host.as_str());
            if let Ok((values, ctx)) = self.get(&key)
                && !values.is_empty()
            {
                self.contexts.lock().insert(key, ctx);
                self.fenced_by_me.lock().insert(h.to_string());
            }
        }
    }

    /// Lifts this host's fence on `h` if `h` answers again (the caller
    /// says nothing it does in `h`'s name is under way).
    pub fn lift_fence(&self, h: &str) -> bool {
        let Ok(node) = NodeId::new(h) else {
            return false;
        };
        if self.block(self.node.answers(&node)) != Some(true) {
            return false; // still gone: the fence stays
        }
        let key = self.fence_key(h, self.host.as_str());
        if self.block(self.put_async(key, None)) == Some(true) {
            tracing::info!("ring: host {h} is back; this host's fence on it is lifted");
            self.fenced_by_me.lock().remove(h);
            return true;
        }
        false
    }

    /// Reads this host's own view of each replica from the ring and notes
    /// those that say another state than this host's record
    /// (`take_mismatched`).
    fn check_own_views(&self, ids: &[ReplicaId]) -> bool {
        let Ok(records) = self.local.list_replicas() else {
            return false;
        };
        let mut found = Vec::new();
        for id in ids {
            let Some(rec) = records.iter().find(|r| r.id == *id) else {
                continue;
            };
            let Ok((values, _)) = self.get(&self.replica_key(id, self.host.as_str())) else {
                *self.mismatched.lock() = found;
                return false;
            };
            let state = self
                .published_state(rec)
                .map_or(rec.state, |r| r.state)
                .to_string();
            if latest_view(&values).is_some_and(|v| v.state != state) {
                found.push(*id);
            }
        }
        *self.mismatched.lock() = found;
        true
    }

    /// The replicas `check_own_views` last found published otherwise than
    /// this host has them (each returned once).
    pub fn take_mismatched(&self) -> Vec<ReplicaId> {
        std::mem::take(&mut *self.mismatched.lock())
    }

    /// Reads this host's fences (`fence/<me>/<each other member>`) after a
    /// lease grant: sets `fenced_by` (no lease while one stands). A fence
    /// whose writer holds no resync lease (everything done in this host's
    /// name runs under it; a writer that takes it again writes its fence
    /// again and waits this host's lease out) and is taken for dead here
    /// is lifted by this host: the writer may be gone for good. False if a
    /// key could not be read (the lease is not extended either).
    fn read_fence(&self) -> bool {
        let hosts: Vec<NodeId> = self.node.layout().addresses().into_keys().collect();
        let mut fencers = Vec::new();
        for f in hosts.iter().filter(|h| **h != self.host) {
            let key = self.fence_key(self.host.as_str(), f.as_str());
            match self.get(&key) {
                Ok((values, ctx)) => {
                    self.contexts.lock().insert(key.clone(), ctx);
                    if values.is_empty() {
                        continue;
                    }
                    if self.long_dead().iter().any(|d| d == f.as_str())
                        && self.lease_held_by(f) == Ok(false)
                    {
                        tracing::warn!(
                            "ring: host {f} fenced this host and is gone itself, holding no resync lease; lifting its fence"
                        );
                        if self.block(self.put_async(key, None)) == Some(true) {
                            continue;
                        }
                    }
                    fencers.push(f.to_string());
                }
                Err(e) => {
                    tracing::debug!("ring: this host's fence by {f}: {e}");
                    return false;
                }
            }
        }
        *self.fenced_by.lock() = fencers.into_iter().next();
        true
    }

    /// Whether this node can reach a majority of the layout's members.
    fn node_reaches_quorum(&self) -> bool {
        let members: Vec<NodeId> = self.node.layout().current.nodes.into_keys().collect();
        let reached = members
            .iter()
            .filter(|n| self.block(self.node.answers(n)) == Some(true))
            .count();
        reached * 2 > members.len()
    }

    /// Whether the failure detector believes host `h` alive.
    pub fn is_host_alive(&self, h: &str) -> bool {
        NodeId::new(h).is_ok_and(|n| self.node.is_alive(&n))
    }

    /// The other hosts that do not see replica `id` in sync, with their view.
    pub fn stale_elsewhere(&self, id: &ReplicaId) -> Vec<(String, HostView)> {
        self.views
            .read()
            .get(id)
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| !v.in_sync())
                    .map(|(h, v)| (h.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Marks another host's view of `id` in sync, after this host resynced
    /// the replica for it (that host was gone).
    pub fn vouch_for(&self, id: &ReplicaId, host: &str) {
        let key = self.replica_key(id, host);
        // Above the dead host's own numbers, so this view replaces its
        // last one; it numbers its next views above this (`next_seq`).
        let Some(seq) = self.highest_seq(&key) else {
            return;
        };
        let view = HostView {
            state: ReplicaState::InSync.to_string(),
            since: now_ms(),
            cause: format!("resynced by {}", self.host),
            seq: seq.saturating_add(1),
        };
        if let Ok(bytes) = serde_json::to_vec(&view) {
            self.put(key, Some(bytes));
        }
    }

    /// Takes (or renews) the resync lease for `ttl`; false if another host
    /// holds it. Each host writes its lease under a key of its own
    /// (`lease/<host>`) and then reads everyone else's from a quorum: of
    /// two hosts taking it at once, at least one sees the other (its write
    /// reached a quorum before the other read one) and backs off, so two
    /// hosts never both hold it. Taking it (not renewing) first asks every
    /// node to publish what it owes, so the resync sees every host's
    /// missed writes.
    pub fn take_lease(&self, ttl: Duration) -> bool {
        if self.node.layout().current.version == 0 {
            // No ring to agree through yet (`chironctl ring apply` was never
            // run): each host resyncs on its own, as without a ring.
            tracing::warn!("ring: no layout yet; resyncing without a lease");
            return true;
        }
        if let Some(other) = self.lease_holder_besides_me() {
            tracing::debug!("ring: {other} holds the resync lease");
            return false;
        }
        let renewing = self.holding.load(std::sync::atomic::Ordering::Acquire);
        if !renewing {
            // Every other node publishes the writes it owes first, so the
            // resync sees every host's missed writes. A node that cannot be
            // reached may still be writing to the replicas: wait for it,
            // unless it has been gone for a long time (it crashed).
            self.block(self.flush_outbox());
            let unreachable = self.block(self.node.flush_all()).unwrap_or_default();
            let mut gone = self.gone_since.lock();
            gone.retain(|n, _| unreachable.contains(n));
            let now = std::time::Instant::now();
            let waiting: Vec<String> = unreachable
                .iter()
                .filter(|n| {
                    now.duration_since(*gone.entry((*n).clone()).or_insert(now)) < self.takeover
                })
                .map(ToString::to_string)
                .collect();
            if !waiting.is_empty() {
                tracing::info!(
                    "ring: resync waits until {waiting:?} publish their writes (or stay unreachable for {}s)",
                    self.takeover.as_secs()
                );
                return false;
            }
        }
        let start = std::time::Instant::now();
        if !self.put_lease(now_ms() + ttl.as_millis() as u64, ttl) {
            return false;
        }
        if let Some(other) = self.lease_holder_besides_me() {
            // Raced with another host: both may have seen each other; both
            // back off, and try again after a random pause.
            tracing::info!("ring: raced {other} for the resync lease; backing off");
            self.holding
                .store(false, std::sync::atomic::Ordering::Release);
            *self.lease_until.lock() = None;
            self.drop_my_lease();
            let mut r = [0u8; 2];
            let _ = getrandom::fill(&mut r);
            std::thread::sleep(Duration::from_millis(
                u64::from(u16::from_le_bytes(r)) % 500,
            ));
            return false;
        }
        *self.lease_until.lock() = Some(start + ttl);
        self.holding
            .store(true, std::sync::atomic::Ordering::Release);
        true
    }

    /// Whether this host's resync lease is still running by its own clock
    /// (a copy stops once it is not, whether or not a renewal is under
    /// way). True with no layout yet (no lease is needed).
    pub fn resync_lease_current(&self) -> bool {
        if self.node.layout().current.version == 0 {
            return true;
        }
        self.holding.load(std::sync::atomic::Ordering::Acquire)
            && self
                .lease_until
                .lock()
                .is_some_and(|u| std::time::Instant::now() < u)
    }

    /// Writes this host's lease record (`until` by its own clock, for
    /// people only). Not through the outbox: a lease published late would
    /// be a lie.
    fn put_lease(&self, until: u64, ttl: Duration) -> bool {
        let mut r = [0u8; 8];
        let _ = getrandom::fill(&mut r);
        let lease = Lease {
            holder: self.host.to_string(),
            until,
            ttl_ms: ttl.as_millis() as u64,
            renewal: u64::from_le_bytes(r),
        };
        let Ok(bytes) = serde_json::to_vec(&lease) else {
            return false;
        };
        let key = self.key(format!("lease/{}", self.host).as_bytes());
        self.block(self.put_async(key, Some(bytes)))
            .unwrap_or(false)
    }

    /// Another host whose lease is unexpired (or that cannot be read:
    /// assume the worst). A record is unexpired while its term (plus a
    /// margin) has not passed since this host first read that renewal, on
    /// this host's monotonic clock: no wall clocks are compared, so a host
    /// whose clock is stepped or skewed neither loses its lease to another
    /// nor keeps the others out for longer than its term.
    fn lease_holder_besides_me(&self) -> Option<String> {
        let hosts: Vec<NodeId> = self.node.layout().addresses().into_keys().collect();
        for h in hosts.iter().filter(|h| **h != self.host) {
            match self.lease_held_by(h) {
                Ok(false) => {}
                Ok(true) => return Some(h.to_string()),
                Err(e) => return Some(format!("{h} (unreadable: {e})")),
            }
        }
        None
    }

    /// Whether host `h`'s resync lease record is unexpired, timed on this
    /// host's clock from when it first read that renewal.
    fn lease_held_by(&self, h: &NodeId) -> std::result::Result<bool, String> {
        let values = self.get(&self.key(format!("lease/{h}").as_bytes()))?.0;
        let now = std::time::Instant::now();
        let mut seen = self.leases_seen.lock();
        // Of siblings, the one renewed last is unknown: any that is
        // unexpired holds.
        let records: Vec<Lease> = values
            .iter()
            .filter_map(|v| serde_json::from_slice::<Lease>(v).ok())
            .collect();
        if records.is_empty() {
            seen.remove(h.as_str());
            return Ok(false);
        }
        let mut held = false;
        for l in &records {
            let ttl = Duration::from_millis(l.ttl_ms);
            // A record of an older version has no term: it is taken as the
            // longest one this version uses.
            let ttl = if l.ttl_ms == 0 { OLD_LEASE_TERM } else { ttl };
            let key = format!("{h}/{}/{}", l.renewal, l.until);
            let (first, term) = *seen.entry(key).or_insert((now, ttl));
            if now.duration_since(first) < term + lease_margin(term) {
                held = true;
            }
        }
        // Records of renewals no longer in the ring are forgotten.
        let live: HashSet<String> = records
            .iter()
            .map(|l| format!("{h}/{}/{}", l.renewal, l.until))
            .collect();
        let prefix = format!("{h}/");
        seen.retain(|k, _| !k.starts_with(&prefix) || live.contains(k));
        Ok(held)
    }

    /// Test hook: writes this host's lease record with the given `until`
    /// (a clock that is off) and term, as `take_lease` would.
    #[cfg(test)]
    pub(super) fn put_lease_record(&self, until: u64, ttl: Duration) -> bool {
        self.put_lease(until, ttl)
    }

    fn drop_my_lease(&self) {
        let key = self.key(format!("lease/{}", self.host).as_bytes());
        let _ = self.block(self.put_async(key, None));
    }

    /// Asks every node to publish what it owes now (before a resync batch
    /// compares paths with the other hosts' recorded writes).
    pub fn gather(&self) {
        self.block(self.flush_outbox());
        self.block(self.node.flush_all());
    }

    /// Gives the lease back (only this host's own; never another's).
    pub fn release_lease(&self) {
        if self
            .holding
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            *self.lease_until.lock() = None;
            self.drop_my_lease();
        }
    }

    /// Records in the ring that this host changed `path`, missing the
    /// replicas `missed`, and whether it acknowledged the change (what
    /// conflict detection compares, `fs::cluster::settle_conflict`). Once
    /// per path per degraded spell, and again when the answer changes
    /// from one change to the next (the latest record of a host counts:
    /// `PathWrite::n`). Published in the background (the watcher flushes
    /// the outbox, and a host taking the resync lease asks for it first):
    /// a degraded write costs no ring round trip.
    pub fn record_write(&self, path: &[u8], missed: &[ReplicaId], acked: bool) {
        if self.recorded.lock().insert(path.to_vec(), acked) == Some(acked) {
            return;
        }
        let key = self.key(&[b"path/".as_slice(), path].concat());
        if key.len() > crate::ring::msg::MAX_KEY {
            tracing::warn!(
                "ring: path too long to record that it missed replicas ({} bytes); a conflict on it will not be detected",
                path.len()
            );
            return;
        }
        let mut missed: Vec<String> = missed.iter().map(ToString::to_string).collect();
        missed.sort();
        let w = PathWrite {
            host: self.host.to_string(),
            missed,
            acked,
            n: (self.record_epoch << 32)
                | (self.record_count.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff),
        };
        if let Ok(bytes) = serde_json::to_vec(&w) {
            self.owe(key, Some(bytes));
        }
    }

    /// The other hosts' recorded writes to `path` that missed replicas.
    pub fn path_writes(&self, path: &[u8]) -> Vec<PathWrite> {
        let key = self.key(&[b"path/".as_slice(), path].concat());
        match self.get(&key) {
            Ok((values, ctx)) => {
                self.contexts.lock().insert(key, ctx);
                let mut w: Vec<PathWrite> = values
                    .iter()
                    .filter_map(|v| serde_json::from_slice(v).ok())
                    .collect();
                w.sort();
                w.dedup();
                w
            }
            Err(_) => Vec::new(),
        }
    }

    /// Forgets the recorded writes to `path` (its replicas agree again).
    pub fn path_settled(&self, path: &[u8]) {
        let key = self.key(&[b"path/".as_slice(), path].concat());
        self.recorded.lock().remove(path);
        if self.contexts.lock().contains_key(&key) {
            self.put(key, None);
        }
    }

    pub fn record_conflict(&self, rec: ConflictRecord) {
        let key = self.key(format!("conflicts/{}", self.host).as_bytes());
        let mut all = match self.get(&key) {
            Ok((values, ctx)) => {
                self.contexts.lock().insert(key.clone(), ctx);
                merge_lists(&values)
            }
            Err(_) => Vec::new(),
        };
        all.push(rec);
        if let Ok(bytes) = serde_json::to_vec(&all) {
            self.put(key, Some(bytes));
        }
    }

    /// Every conflict copy any host made.
    pub fn conflicts(&self) -> std::result::Result<Vec<ConflictRecord>, String> {
        let mut all = Vec::new();
        for h in self.node.layout().addresses().into_keys() {
            let (values, _) = self.get(&self.key(format!("conflicts/{h}").as_bytes()))?;
            all.extend(merge_lists(&values));
        }
        all.sort();
        all.dedup();
        Ok(all)
    }
}

fn merge_lists(values: &[Vec<u8>]) -> Vec<ConflictRecord> {
    let mut all: Vec<ConflictRecord> = values
        .iter()
        .filter_map(|v| serde_json::from_slice::<Vec<ConflictRecord>>(v).ok())
        .flatten()
        .collect();
    all.sort();
    all.dedup();
    all
}

/// Of concurrent views, the latest by number (siblings when a host's
/// earlier write was cut off and published later), never by wall clock.
pub(super) fn latest_view(values: &[Vec<u8>]) -> Option<HostView> {
    values
        .iter()
        .filter_map(|v| serde_json::from_slice::<HostView>(v).ok())
        .max_by_key(HostView::order)
}

impl Listener for SharedStore {
    fn nudged(&self, key: &[u8], version: &Dvv) {
        let Some(rest) = key.strip_prefix(self.prefix.as_bytes()) else {
            return;
        };
        let Some(rest) = rest.strip_prefix(b"replica/") else {
            return;
        };
        let rest = String::from_utf8_lossy(rest);
        let Some((id, host)) = rest.split_once('/') else {
            return;
        };
        let Ok(id) = id.parse::<ReplicaId>() else {
            return;
        };
        let values: Vec<Vec<u8>> = version.values().into_iter().flatten().collect();
        let Some(view) = latest_view(&values) else {
            return;
        };
        let changed = {
            let mut views = self.views.write();
            let m = views.entry(id).or_default();
            let newer = m.get(host).is_none_or(|old| old.order() <= view.order());
            if newer && m.get(host) != Some(&view) {
                m.insert(host.to_string(), view);
                true
            } else {
                false
            }
        };
        if changed {
            self.changed();
        }
    }

    fn flush(&self) -> BoxFuture<'static, ()> {
        let this = self.this.upgrade();
        Box::pin(async move {
            if let Some(s) = this {
                s.flush_outbox().await;
            }
        })
    }
}

impl MetaStore for SharedStore {
    fn get_replica(&self, id: &ReplicaId) -> Result<Option<ReplicaRecord>> {
        self.local.get_replica(id)
    }

    fn put_replica(&self, record: &ReplicaRecord) -> Result<()> {
        self.local.put_replica(record)?;
        self.publish(record);
        Ok(())
    }

    fn list_replicas(&self) -> Result<Vec<ReplicaRecord>> {
        self.local.list_replicas()
    }

    fn mark_pending(&self, path: &[u8]) -> Result<()> {
        self.local.mark_pending(path)?;
        let mut p = self.pending.lock();
        if p.0.insert(path.to_vec()) {
            p.1 += 1;
        }
        Ok(())
    }

    fn clear_pending(&self, path: &[u8]) -> Result<()> {
        self.local.clear_pending(path)?;
        let mut p = self.pending.lock();
        if p.0.remove(path) {
            p.1 += 1;
        }
        Ok(())
    }

    fn pending(&self) -> Result<Vec<Vec<u8>>> {
        self.local.pending()
    }

    fn mark_missed(&self, path: &[u8], id: &ReplicaId) -> Result<()> {
        self.local.mark_missed(path, id)
    }

    fn clear_missed(&self, path: &[u8], id: &ReplicaId) -> Result<()> {
        self.local.clear_missed(path, id)
    }

    fn is_missed(&self, path: &[u8], id: &ReplicaId) -> Result<bool> {
        self.local.is_missed(path, id)
    }

    fn any_missed(&self, path: &[u8]) -> Result<bool> {
        self.local.any_missed(path)
    }

    fn missed(&self, id: &ReplicaId, after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>> {
        self.local.missed(id, after, limit)
    }

    fn missed_count(&self, id: &ReplicaId) -> Result<u64> {
        self.local.missed_count(id)
    }

    fn set_cursor(&self, id: &ReplicaId, cursor: Option<Vec<u8>>) -> Result<()> {
        self.local.set_cursor(id, cursor)
    }

    fn cursor(&self, id: &ReplicaId) -> Result<Option<Vec<u8>>> {
        self.local.cursor(id)
    }

    fn open_session(&self) -> Result<PreviousShutdown> {
        self.local.open_session()
    }

    fn close_session(&self) -> Result<()> {
        self.local.close_session()
    }

    fn sync(&self) -> Result<()> {
        self.local.sync()
    }
}

/// Sleeps until `node`'s lease clock reads `until` (from
/// `Node::lease_left_round`).
fn sleep_until_ns(node: &crate::ring::node::Node, until: u64) {
    loop {
        let left = until.saturating_sub(node.now_ns());
        if left == 0 {
            return;
        }
        std::thread::sleep(Duration::from_nanos(left));
    }
}
