//! The view and read-lease model: the protocol by which the filesystem's
//! hosts agree which replica each may read (DESIGN.md section 7, "Read
//! leases"), on the real ring nodes, leases and nudges, with the
//! filesystem reduced to its decisions.
//!
//! Three hosts, each a ring member; two replicas, each a version number
//! (the replicas are shared storage, outside the network). One host
//! writes: a write goes to the replicas its views have in sync, and now
//! and then one of them fails during the write. Before it acknowledges a
//! write that missed a replica, it publishes "failed" to a quorum, nudges
//! the other hosts, and waits out the read leases of every host that did
//! not confirm (`lease_left_round`); now and then it copies a failed
//! replica back and publishes it in sync. Every host reads: only while
//! it holds a read lease (asked of a majority, counted from before the
//! request left, extended only once the views were read after the grant),
//! only from a replica all it knows says is in sync, and it counts the
//! read only if the lease held throughout (a process pause may come
//! between the check and the read).
//!
//! The check: no read that started after a write was acknowledged
//! returns an older version.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::super::node::{Listener, Node};
use super::super::version::Dvv;
use super::super::{BoxFuture, NodeId};
use super::net::World;
use super::{Bug, LEASE, Proc, crash, open, store_dir};

const REPLICAS: u64 = 2;
/// How long the hosts write and read, in virtual time.
const RUN: Duration = Duration::from_secs(20);

fn view_key(r: u64) -> Vec<u8> {
    format!("view/r{r}").into_bytes()
}

/// A view: the replica's state (true: in sync) and the writer's count.
fn encode(in_sync: bool, seq: u64) -> Vec<u8> {
    let mut b = vec![u8::from(!in_sync)];
    b.extend_from_slice(&seq.to_le_bytes());
    b
}

/// What a version of a view says: the value with the highest count
/// (no view at all: in sync).
fn decode(v: Option<&Dvv>) -> (bool, u64) {
    let mut best = (true, 0);
    for val in v.map(Dvv::values).unwrap_or_default().into_iter().flatten() {
        if val.len() == 9 {
            let mut n = [0u8; 8];
            n.copy_from_slice(&val[1..]);
            let seq = u64::from_le_bytes(n);
            if seq >= best.1 {
                best = (val[0] == 0, seq);
            }
        }
    }
    best
}

/// One host: its ring process, its read lease, the views it knows.
struct Host {
    id: NodeId,
    proc: Mutex<Option<Proc>>,
    /// When its lease ends, on its node's clock (0: none).
    until: AtomicU64,
    /// Renewals that found the lease already over.
    lapses: AtomicU64,
    views: Mutex<BTreeMap<Vec<u8>, Dvv>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Host {
    fn node(&self) -> Option<Node> {
        self.proc.lock().as_ref().map(|p| p.node.clone())
    }

    fn learn(&self, key: &[u8], v: &Dvv) {
        let mut views = self.views.lock();
        let merged = match views.get(key) {
            Some(old) => old.sync(v),
            None => v.clone(),
        };
        views.insert(key.to_vec(), merged);
    }

    /// The context to write `key` with: what this host knows of it.
    fn context(&self, key: &[u8]) -> super::super::version::Context {
        self.views
            .lock()
            .get(key)
            .map(Dvv::context)
            .unwrap_or_default()
    }

    fn in_sync(&self, r: u64) -> bool {
        decode(self.views.lock().get(&view_key(r))).0
    }

    /// The lease holds now; returns the lapse count to compare later.
    fn lease(&self) -> Option<u64> {
        let node = self.node()?;
        let lapses = self.lapses.load(Ordering::SeqCst);
        (node.now_ns() < self.until.load(Ordering::SeqCst)).then_some(lapses)
    }

    fn extend(&self, node: &Node, until: u64) {
        if node.now_ns() >= self.until.load(Ordering::SeqCst) {
            self.lapses.fetch_add(1, Ordering::SeqCst);
        }
        self.until.fetch_max(until, Ordering::SeqCst);
    }
}

struct HostListener(Arc<Host>);

impl Listener for HostListener {
    fn nudged(&self, key: &[u8], version: &Dvv) {
        self.0.learn(key, version);
    }

    fn flush(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

#[derive(Default)]
struct Model {
    /// Each replica's version.
    data: [u64; REPLICAS as usize],
    /// Acknowledged versions, when (virtual time) and at which step.
    acked: Vec<(u64, Duration, u64)>,
    /// Steps: acknowledgements and starts of reads, in the order they
    /// happened (several happen at one instant of virtual time).
    steps: u64,
    violations: Vec<String>,
}

struct Run {
    world: Arc<World>,
    hosts: Vec<Arc<Host>>,
    writer: usize,
    bug: Bug,
    model: Mutex<Model>,
}

impl Run {
    fn fail(&self, msg: String) {
        self.world.event(format!("VIOLATION {msg}"));
        self.model.lock().violations.push(msg);
    }

    fn start_host(self: &Arc<Self>, h: &Arc<Host>, p: Proc) {
        p.node.set_listener(Arc::new(HostListener(h.clone())));
        *h.proc.lock() = Some(p);
        h.until.store(0, Ordering::SeqCst);
        h.views.lock().clear();
        let mut tasks = h.tasks.lock();
        let (run, host) = (self.clone(), h.clone());
        tasks.push(tokio::spawn(async move { run.renew(host).await }));
        let (run, host) = (self.clone(), h.clone());
        tasks.push(tokio::spawn(async move { run.reader(host).await }));
    }

    async fn renew(self: Arc<Self>, h: Arc<Host>) {
        loop {
            tokio::time::sleep(LEASE / 3).await;
            let Some(node) = h.node() else { return };
            let sent = node.now_ns();
            let Some(granted) = node.grant_round(LEASE).await else {
                continue;
            };
            let mut complete = true;
            for r in 0..REPLICAS {
                match node.get(&view_key(r)).await {
                    Ok(f) => {
                        if let Some(v) = &f.version {
                            h.learn(&view_key(r), v);
                        }
                    }
                    Err(_) => complete = false,
                }
            }
            if complete {
                h.extend(&node, super::super::lease::holder_expiry(sent, granted));
            }
        }
    }

    async fn reader(self: Arc<Self>, h: Arc<Host>) {
        while self.world.elapsed() < RUN {
            let pause = self.world.rng().millis(5, 150);
            tokio::time::sleep(pause).await;
            let r = self.world.rng().below(REPLICAS);
            let start = self.world.elapsed();
            let step = {
                let mut m = self.model.lock();
                m.steps += 1;
                m.steps
            };
            let Some(lapses) = h.lease() else { continue };
            if !h.in_sync(r) {
                continue;
            }
            self.maybe_pause().await;
            let read = self.model.lock().data[r as usize];
            self.maybe_pause().await;
            if h.lease() != Some(lapses) {
                continue; // the lease lapsed meanwhile: EIO
            }
            let due = {
                let m = self.model.lock();
                m.acked
                    .iter()
                    .rev()
                    .find(|(_, _, s)| *s < step)
                    .map(|(v, at, _)| (*v, *at))
            };
            if let Some((v, at)) = due
                && read < v
            {
                self.fail(format!(
                    "host {} read version {read} from replica r{r} in a read that started at {}ms; version {v} was acknowledged at {}ms",
                    h.id,
                    start.as_millis(),
                    at.as_millis()
                ));
            }
        }
    }

    /// A process pause (scheduling, a stop signal) now and then.
    async fn maybe_pause(&self) {
        let pause = {
            let mut r = self.world.rng();
            r.chance(0.05).then(|| r.millis(0, 3000))
        };
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
    }

    async fn writer(self: Arc<Self>) {
        let h = self.hosts[self.writer].clone();
        // Per replica: (in sync, the failure is settled, the view's count).
        let mut state = [(true, true, 0u64); REPLICAS as usize];
        let mut unpublished = [false; REPLICAS as usize];
        let mut version = 0;
        while self.world.elapsed() < RUN {
            let pause = self.world.rng().millis(20, 200);
            tokio::time::sleep(pause).await;
            let Some(node) = h.node() else { return };
            let Some(lapses) = h.lease() else { continue };
            let resync = self.world.rng().chance(0.15);
            if resync {
                self.resync(&h, &node, &mut state, &mut unpublished).await;
                continue;
            }
            let mut settled = true;
            for r in 0..REPLICAS as usize {
                if !state[r].1 {
                    settled &= self.publish_failed(&h, &node, r as u64, &mut state).await;
                }
            }
            if !settled {
                continue; // EIO: a replica's failure is not settled
            }
            version += 1;
            let in_sync: Vec<usize> = (0..REPLICAS as usize).filter(|r| state[*r].0).collect();
            let fail = (in_sync.len() > 1 && self.world.rng().chance(0.2))
                .then(|| in_sync[self.world.rng().below(in_sync.len() as u64) as usize]);
            {
                let mut m = self.model.lock();
                for r in &in_sync {
                    if Some(*r) != fail {
                        m.data[*r] = version;
                    }
                }
            }
            if let Some(r) = fail {
                state[r] = (false, false, state[r].2);
                unpublished[r] = false;
                self.world
                    .event(format!("write {version}: replica r{r} fails during it"));
                if !self.publish_failed(&h, &node, r as u64, &mut state).await {
                    self.world.event(format!("write {version}: EIO"));
                    continue;
                }
            }
            if h.lease() != Some(lapses) {
                self.world
                    .event(format!("write {version}: EIO (lease lapsed)"));
                continue;
            }
            {
                let mut m = self.model.lock();
                m.steps += 1;
                let step = m.steps;
                m.acked.push((version, self.world.elapsed(), step));
            }
            self.world.event(format!("write {version}: acknowledged"));
        }
    }

    /// Publishes that replica `r` failed, nudges, and waits out the
    /// leases of hosts that did not confirm: then no host reads it.
    async fn publish_failed(
        &self,
        h: &Host,
        node: &Node,
        r: u64,
        state: &mut [(bool, bool, u64); REPLICAS as usize],
    ) -> bool {
        let key = view_key(r);
        let seq = state[r as usize].2 + 1;
        let ctx = h.context(&key);
        // A write that was not acknowledged may still land: the next
        // view of this replica must count higher.
        state[r as usize].2 = seq;
        let v = match node.put(&key, Some(encode(false, seq)), &ctx).await {
            Ok(v) => v,
            Err(e) => {
                self.world.event(format!("publish r{r} failed: {e}"));
                return false;
            }
        };
        h.learn(&key, &v);
        let missing = node.nudge_all(&key, &v).await;
        if !missing.is_empty() {
            let Some(until) = node.lease_left_round(&missing).await else {
                self.world.event(format!(
                    "r{r} failed: no majority says how long {missing:?} hold leases"
                ));
                return false;
            };
            if self.bug != Bug::AckBeforeLeasesEnd {
                loop {
                    let now = node.now_ns();
                    if now >= until {
                        break;
                    }
                    tokio::time::sleep(Duration::from_nanos(until - now)).await;
                }
            }
            self.world
                .event(format!("r{r} failed: waited out the leases of {missing:?}"));
        } else {
            self.world
                .event(format!("r{r} failed: every host confirmed"));
        }
        state[r as usize].1 = true;
        true
    }

    /// Copies a failed, settled replica back and publishes it in sync.
    /// From the copy on, writes go to it (an "in sync" that is not
    /// acknowledged may still land and be read); `unpublished` replicas
    /// are published again on the next resync turn.
    async fn resync(
        &self,
        h: &Host,
        node: &Node,
        state: &mut [(bool, bool, u64); REPLICAS as usize],
        unpublished: &mut [bool; REPLICAS as usize],
    ) {
        let r = match (0..REPLICAS as usize).find(|r| unpublished[*r]) {
            Some(r) => r,
            None => {
                let Some(r) = (0..REPLICAS as usize).find(|r| !state[*r].0 && state[*r].1) else {
                    return;
                };
                let mut m = self.model.lock();
                let newest = m.data.iter().copied().max().unwrap_or(0);
                m.data[r] = newest;
                state[r].0 = true;
                unpublished[r] = true;
                r
            }
        };
        let key = view_key(r as u64);
        let seq = state[r].2 + 1;
        state[r].2 = seq;
        let ctx = h.context(&key);
        match node.put(&key, Some(encode(true, seq)), &ctx).await {
            Ok(v) => {
                unpublished[r] = false;
                h.learn(&key, &v);
                let _ = node.nudge_all(&key, &v).await;
                self.world.event(format!("r{r} copied back, in sync"));
            }
            Err(e) => self.world.event(format!("r{r} in sync not published: {e}")),
        }
    }

    async fn crash_and_restart(self: Arc<Self>, i: usize) {
        let h = self.hosts[i].clone();
        let Some(p) = h.proc.lock().take() else {
            return;
        };
        for t in h.tasks.lock().drain(..) {
            t.abort();
        }
        let copy = match crash(&self.world, &p) {
            Ok(c) => c,
            Err(e) => {
                self.fail(format!("cannot copy {}'s store: {e}", h.id));
                return;
            }
        };
        self.world.event(format!("{}: crashed", h.id));
        super::reap(p);
        let down = self.world.rng().millis(100, 3000);
        tokio::time::sleep(down).await;
        let seeds = [self.hosts[0].id.clone()];
        match open(&self.world, &h.id, copy, &seeds) {
            Ok(p) => {
                self.world.set_down(&h.id, false);
                self.start_host(&h, p);
                self.world.event(format!("{}: restarted", h.id));
            }
            Err(e) => self.fail(format!("{} does not open after a crash: {e}", h.id)),
        }
    }

    async fn faults(self: Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut restarts = Vec::new();
        let names: Vec<NodeId> = self.hosts.iter().map(|h| h.id.clone()).collect();
        while self.world.elapsed() < RUN {
            let pause = self.world.rng().millis(200, 2000);
            tokio::time::sleep(pause).await;
            let choice = self.world.rng().below(6);
            let i = self.world.rng().below(names.len() as u64) as usize;
            let j = self.world.rng().below(names.len() as u64) as usize;
            match choice {
                0 if i != j => {
                    // One host cut off from the others, both ways or one.
                    let both = self.world.rng().chance(0.5);
                    for (k, other) in names.iter().enumerate() {
                        if k != i {
                            self.world.cut(&names[i], other);
                            if both {
                                self.world.cut(other, &names[i]);
                            }
                        }
                    }
                    self.world.event(format!(
                        "{} cut off ({})",
                        names[i],
                        if both { "both ways" } else { "its sends only" }
                    ));
                }
                1 if i != j => {
                    self.world.cut(&names[i], &names[j]);
                    self.world
                        .event(format!("link {} -> {} cut", names[i], names[j]));
                }
                2 => {
                    self.world.heal();
                    self.world.event("network healed");
                }
                3 if i != self.writer && !self.world.is_down(&names[i]) => {
                    restarts.push(tokio::spawn(self.clone().crash_and_restart(i)));
                }
                4 => {
                    let f = self.world.random_faults(25, true);
                    self.world.set_faults(f);
                    self.world.event(format!("message faults {f:?}"));
                }
                _ => {}
            }
        }
        restarts
    }
}

/// One seed of the view model; returns the violations found.
pub async fn run(world: &Arc<World>, bug: Bug) -> Vec<String> {
    let names: Vec<NodeId> = (0..3)
        .filter_map(|i| NodeId::new(&format!("h{i}")).ok())
        .collect();
    let writer = world.rng().below(3) as usize;
    let hosts: Vec<Arc<Host>> = names
        .iter()
        .map(|n| {
            Arc::new(Host {
                id: n.clone(),
                proc: Mutex::new(None),
                until: AtomicU64::new(0),
                lapses: AtomicU64::new(0),
                views: Mutex::new(BTreeMap::new()),
                tasks: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let run = Arc::new(Run {
        world: world.clone(),
        hosts,
        writer,
        bug,
        model: Mutex::new(Model::default()),
    });
    for h in &run.hosts {
        world.add_clock(&h.id, 4000);
        match open(world, &h.id, store_dir(), &names[..1]) {
            Ok(p) => run.start_host(h, p),
            Err(e) => return vec![format!("{} does not open: {e}", h.id)],
        }
    }
    let Some(first) = run.hosts[0].node() else {
        return vec!["no first node".into()];
    };
    for n in &names {
        if let Err(e) = first.stage_join(n.clone(), format!("sim:{n}")).await {
            return vec![format!("stage_join {n}: {e}")];
        }
    }
    if let Err(e) = super::signed_apply(&first).await {
        return vec![format!("apply: {e}")];
    }
    world.event(format!("3 hosts, writer {}", names[writer]));
    let w = tokio::spawn(run.clone().writer());
    let restarts = run.clone().faults().await;
    let _ = w.await;
    for r in restarts {
        let _ = r.await;
    }
    let mut procs = Vec::new();
    for h in &run.hosts {
        for t in h.tasks.lock().drain(..) {
            t.abort();
        }
        procs.extend(h.proc.lock().take());
    }
    super::reap_all(procs);
    std::mem::take(&mut run.model.lock().violations)
}
