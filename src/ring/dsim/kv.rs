//! The key-value model: clients on every node read a few keys and write
//! them back with the context they read (or delete them), while the
//! network and the nodes fail; then everything heals and the checker
//! reads the history.
//!
//! Checks:
//! - no acknowledged write is lost: every acknowledged value is in the
//!   final state, or a write that had read it (and so replaced it) is kept
//!   (transitively; a deletion counts as kept: its tombstone may be
//!   collected). Concurrent acknowledged writes are siblings, so this is
//!   also "no sibling lost";
//! - no dot is reused: no two different values ever carry the same
//!   (actor, counter), in any answer seen during the run or any store at
//!   the end;
//! - the ring converges: every owner of a key stores the same version and
//!   every member reads the same values.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::super::NodeId;
use super::super::hash;
use super::super::node::Node;
use super::super::version::Dvv;
use super::net::{Faults, World};
use super::{Proc, crash, open, store_dir};

const KEYS: u64 = 3;
/// How long clients write, in virtual time.
const RUN: Duration = Duration::from_secs(8);

struct Write {
    key: u64,
    /// `None`: a deletion.
    value: Option<u64>,
    /// The values its read returned: what it replaces.
    replaces: Vec<u64>,
    acked: bool,
}

#[derive(Default)]
struct History {
    writes: Vec<Write>,
    /// (key, actor, counter) -> the value seen with that dot.
    dots: BTreeMap<(u64, String, u64), Option<Vec<u8>>>,
    /// Acknowledged puts: (key, the dot their value got, the step at
    /// which the acknowledgement came, the value).
    acks: Vec<(u64, (String, u64), u64, u64)>,
    /// Acknowledgements and starts of reads, in order (several happen at
    /// one instant of virtual time).
    steps: u64,
    violations: Vec<String>,
}

/// The dot `version` gave value `v`.
fn dot_of(version: &Dvv, v: &[u8]) -> Option<(String, u64)> {
    version.entries.iter().find_map(|e| {
        let i = e.values.iter().position(|x| x.as_deref() == Some(v))?;
        Some((e.actor.clone(), e.counter - i as u64))
    })
}

impl History {
    fn observe(&mut self, k: u64, v: Option<&Dvv>) {
        let Some(v) = v else { return };
        for e in &v.entries {
            for (i, val) in e.values.iter().enumerate() {
                let dot = (k, e.actor.clone(), e.counter - i as u64);
                match self.dots.get(&dot) {
                    Some(seen) if seen != val => {
                        let msg = format!(
                            "dot reused: k{} {}:{} carries {} and {}",
                            dot.0,
                            dot.1,
                            dot.2,
                            show(seen),
                            show(val)
                        );
                        if !self.violations.contains(&msg) {
                            self.violations.push(msg);
                        }
                    }
                    Some(_) => {}
                    None => {
                        self.dots.insert(dot, val.clone());
                    }
                }
            }
        }
    }
}

fn show(v: &Option<Vec<u8>>) -> String {
    match v {
        Some(b) => String::from_utf8_lossy(b).into_owned(),
        None => "a deletion".into(),
    }
}

fn ids(values: &[Vec<u8>]) -> Vec<u64> {
    values
        .iter()
        .filter_map(|v| std::str::from_utf8(v).ok()?.strip_prefix('v')?.parse().ok())
        .collect()
}

fn key(k: u64) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

struct Run {
    world: Arc<World>,
    /// Reads are checked for freshness (`check_fresh`).
    strict: bool,
    names: Vec<NodeId>,
    procs: Mutex<BTreeMap<NodeId, Proc>>,
    clients: Mutex<BTreeMap<NodeId, tokio::task::JoinHandle<()>>>,
    history: Mutex<History>,
}

impl Run {
    fn node(&self, n: &NodeId) -> Option<Node> {
        self.procs.lock().get(n).map(|p| p.node.clone())
    }

    fn spawn_client(self: &Arc<Self>, n: &NodeId) {
        let (run, name) = (self.clone(), n.clone());
        let h = tokio::spawn(async move { run.client(name).await });
        if let Some(old) = self.clients.lock().insert(n.clone(), h) {
            old.abort();
        }
    }

    async fn client(self: Arc<Self>, me: NodeId) {
        while self.world.elapsed() < RUN {
            let pause = self.world.rng().millis(0, 80);
            tokio::time::sleep(pause).await;
            let Some(node) = self.node(&me) else { return };
            let k = self.world.rng().below(KEYS);
            let start = {
                let mut h = self.history.lock();
                h.steps += 1;
                h.steps
            };
            let found = match node.get(&key(k)).await {
                Ok(f) => f,
                Err(e) => {
                    self.world.event(format!("{me}: get k{k}: {e}"));
                    continue;
                }
            };
            let replaces = ids(&found.values());
            self.history.lock().observe(k, found.version.as_ref());
            if self.strict {
                self.check_fresh(&me, k, start, &found.context());
            }
            let delete = self.world.rng().chance(0.15);
            let id = {
                let mut h = self.history.lock();
                let next = h.writes.len() as u64;
                h.writes.push(Write {
                    key: k,
                    value: (!delete).then_some(next),
                    replaces: replaces.clone(),
                    acked: false,
                });
                h.writes.len() - 1
            };
            let r = if delete {
                node.delete(&key(k), &found.context()).await
            } else {
                let v = format!("v{id}").into_bytes();
                node.put(&key(k), Some(v), &found.context()).await
            };
            let what = if delete {
                format!("delete k{k} (#{id})")
            } else {
                format!("put k{k}=v{id}")
            };
            match r {
                Ok(v) => {
                    let mut h = self.history.lock();
                    h.writes[id].acked = true;
                    h.observe(k, Some(&v));
                    h.steps += 1;
                    let step = h.steps;
                    if !delete && let Some(dot) = dot_of(&v, format!("v{id}").as_bytes()) {
                        h.acks.push((k, dot, step, id as u64));
                    }
                    drop(h);
                    self.world
                        .event(format!("{me}: {what} over {replaces:?}: acknowledged"));
                }
                Err(e) => self.world.event(format!("{me}: {what}: {e}")),
            }
        }
    }

    async fn crash_and_restart(self: Arc<Self>, n: NodeId) {
        let Some(p) = self.procs.lock().remove(&n) else {
            return;
        };
        let actor = p.node.actor();
        if let Some(c) = self.clients.lock().remove(&n) {
            c.abort();
        }
        let copy = match crash(&self.world, &p) {
            Ok(c) => c,
            Err(e) => {
                self.fail(format!(
                    "cannot copy {n}'s store as a power loss leaves it: {e}"
                ));
                return;
            }
        };
        self.world
            .event(format!("{n}: crashed (unsynced writes lost)"));
        super::reap(p);
        let down = self.world.rng().millis(100, 2500);
        tokio::time::sleep(down).await;
        match open(&self.world, &n, copy, &self.names[..1]) {
            Ok(p) => {
                let kept = p.node.actor() == actor;
                self.world.event(format!(
                    "{n}: restarted, {}",
                    if kept {
                        "same actor"
                    } else {
                        "new actor epoch"
                    }
                ));
                self.procs.lock().insert(n.clone(), p);
                self.world.set_down(&n, false);
                if self.world.elapsed() < RUN {
                    self.spawn_client(&n);
                }
            }
            Err(e) => self.fail(format!("{n} does not open after a crash: {e}")),
        }
    }

    /// With every node an owner of every key (three nodes, N = 3: no
    /// stand-in, no layout change), R + W > N: a read that started after
    /// a put was acknowledged sees its value or what replaced it, i.e. its
    /// context covers the value's dot.
    fn check_fresh(&self, me: &NodeId, k: u64, start: u64, ctx: &super::super::version::Context) {
        let stale: Vec<String> = self
            .history
            .lock()
            .acks
            .iter()
            .filter(|(key, (actor, counter), step, _)| {
                *key == k && *step < start && ctx.get(actor).copied().unwrap_or(0) < *counter
            })
            .map(|(_, (actor, counter), _, id)| {
                format!("{me} read k{k} without v{id} ({actor}:{counter}), acknowledged before the read began")
            })
            .collect();
        for s in stale {
            self.fail(format!("stale read: {s}"));
        }
    }

    fn fail(&self, msg: String) {
        self.world.event(format!("VIOLATION {msg}"));
        self.history.lock().violations.push(msg);
    }

    async fn faults(self: Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut restarts = Vec::new();
        while self.world.elapsed() < RUN {
            let pause = self.world.rng().millis(100, 1200);
            tokio::time::sleep(pause).await;
            let n = self.names.len() as u64;
            let choice = self.world.rng().below(8);
            let pick = |w: &World| self.names[w.rng().below(n) as usize].clone();
            match choice {
                0 => {
                    // A symmetric partition: a random side against the rest.
                    let side: Vec<NodeId> = self
                        .names
                        .iter()
                        .filter(|_| self.world.rng().chance(0.5))
                        .cloned()
                        .collect();
                    for a in &side {
                        for b in self.names.iter().filter(|b| !side.contains(b)) {
                            self.world.cut(a, b);
                            self.world.cut(b, a);
                        }
                    }
                    self.world.event(format!("partition {side:?} | rest"));
                }
                1 => {
                    let (a, b) = (pick(&self.world), pick(&self.world));
                    if a != b {
                        self.world.cut(&a, &b);
                        self.world.event(format!("link {a} -> {b} cut (one way)"));
                    }
                }
                2 => {
                    self.world.heal();
                    self.world.event("network healed");
                }
                3 => {
                    let a = pick(&self.world);
                    if !self.world.is_down(&a) {
                        restarts.push(tokio::spawn(self.clone().crash_and_restart(a)));
                    }
                }
                4 => {
                    let f = self.world.random_faults(20, false);
                    self.world.set_faults(f);
                    self.world.event(format!(
                        "messages: {:.0}% lost, {:.0}% duplicated, {:.0}% late",
                        f.loss * 100.0,
                        f.dup * 100.0,
                        f.late * 100.0
                    ));
                }
                5 => {
                    let p = self.world.rng().below(10) as f64 / 100.0;
                    self.world.set_faults(Faults {
                        fd_mistakes: p,
                        ..self.world.faults()
                    });
                    self.world.event(format!(
                        "failure detector wrong {:.0}% of the time",
                        p * 100.0
                    ));
                }
                6 => {
                    self.world.heal();
                    self.world.set_faults(Faults::default());
                    self.world.event("network healed, no message faults");
                }
                _ => self.change_layout().await,
            }
        }
        restarts
    }

    /// A layout change in the middle of the run, committed through a live
    /// member: a node that is not a member joins, or (above three
    /// members) a member leaves; it may join again later.
    async fn change_layout(&self) {
        let layout = match self.names.first().and_then(|n| self.node(n)) {
            Some(n) => n.layout(),
            None => return,
        };
        let members: Vec<NodeId> = layout.current.nodes.keys().cloned().collect();
        let outside: Vec<NodeId> = self
            .names
            .iter()
            .filter(|n| !members.contains(n))
            .cloned()
            .collect();
        let live: Vec<NodeId> = members
            .iter()
            .filter(|n| !self.world.is_down(n))
            .cloned()
            .collect();
        if live.is_empty() || layout.old.is_some() {
            return;
        }
        let (by, join) = {
            let mut r = self.world.rng();
            let by = live[r.below(live.len() as u64) as usize].clone();
            let join = !outside.is_empty() && (members.len() <= 3 || r.chance(0.5));
            (by, join)
        };
        let Some(node) = self.node(&by) else { return };
        let what = if join {
            let n = outside[self.world.rng().below(outside.len() as u64) as usize].clone();
            let r = node.stage_join(n.clone(), format!("sim:{n}")).await;
            (format!("join {n}"), r.map(|_| ()))
        } else if members.len() > 3 {
            let n = members[self.world.rng().below(members.len() as u64) as usize].clone();
            let r = node.stage_leave(n.clone()).await;
            (format!("leave {n}"), r.map(|_| ()))
        } else {
            return;
        };
        let applied = match what.1 {
            Ok(()) => super::signed_apply(&node).await.map(|l| l.current.version),
            Err(e) => Err(e),
        };
        match applied {
            Ok(v) => self
                .world
                .event(format!("layout {v}: {} (through {by})", what.0)),
            Err(e) => self.world.event(format!("layout change {}: {e}", what.0)),
        }
    }

    /// Delivers hints and runs anti-entropy everywhere until every owner
    /// stores the same version of every key (or gives up: a violation).
    async fn settle(&self) -> Result<(), String> {
        let mut why = String::new();
        for _ in 0..40 {
            let nodes: Vec<Node> = self.procs.lock().values().map(|p| p.node.clone()).collect();
            for n in &nodes {
                n.pull_layout().await;
                n.deliver_hints().await;
                n.anti_entropy_round().await;
            }
            match self.converged(&nodes) {
                Ok(()) => return Ok(()),
                Err(e) => why = e,
            }
        }
        Err(why)
    }

    fn converged(&self, nodes: &[Node]) -> Result<(), String> {
        for n in nodes {
            if n.hint_count() > 0 {
                return Err(format!("{} still holds {} hints", n.id(), n.hint_count()));
            }
            let l = n.layout();
            if let Some(old) = &l.old {
                return Err(format!(
                    "{} is still in the transition from layout {} to {} (synced: {:?})",
                    n.id(),
                    old.version,
                    l.current.version,
                    l.synced
                ));
            }
        }
        let layout = nodes[0].layout();
        for k in 0..KEYS {
            let p = hash::partition_of(&key(k));
            let owners = layout.current.owners[p as usize].clone();
            let versions: BTreeSet<Option<Vec<u8>>> = nodes
                .iter()
                .filter(|n| owners.contains(n.id()))
                .map(|n| n.local(&key(k)).and_then(|v| postcard::to_stdvec(&v).ok()))
                .collect();
            if versions.len() != 1 {
                return Err(format!(
                    "the owners {owners:?} of k{k} store different versions"
                ));
            }
        }
        Ok(())
    }
}

/// One seed of the key-value model; returns the violations found.
pub async fn run(world: &Arc<World>) -> Vec<String> {
    let count = 3 + world.rng().below(3);
    let names: Vec<NodeId> = (0..count)
        .filter_map(|i| NodeId::new(&format!("n{i}")).ok())
        .collect();
    let run = Arc::new(Run {
        world: world.clone(),
        strict: count == 3,
        names: names.clone(),
        procs: Mutex::new(BTreeMap::new()),
        clients: Mutex::new(BTreeMap::new()),
        history: Mutex::new(History::default()),
    });
    for n in &names {
        world.add_clock(n, 4000);
        match open(world, n, store_dir(), &names[..1]) {
            Ok(p) => {
                run.procs.lock().insert(n.clone(), p);
            }
            Err(e) => return vec![format!("{n} does not open: {e}")],
        }
    }
    let Some(first) = run.node(&names[0]) else {
        return vec!["no first node".into()];
    };
    // Some nodes may start outside the layout (they join later).
    let spare = world.rng().below(count - 2);
    for n in &names[..(count - spare) as usize] {
        if let Err(e) = first.stage_join(n.clone(), format!("sim:{n}")).await {
            return vec![format!("stage_join {n}: {e}")];
        }
    }
    if let Err(e) = super::signed_apply(&first).await {
        return vec![format!("apply: {e}")];
    }
    for _ in 0..100 {
        if run
            .procs
            .lock()
            .values()
            .all(|p| p.node.layout_version() == 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.event(format!("{count} nodes, {} in layout 1", count - spare));
    for n in &names {
        run.spawn_client(n);
    }
    let restarts = run.clone().faults().await;
    let clients: Vec<_> = std::mem::take(&mut *run.clients.lock())
        .into_values()
        .collect();
    for c in clients {
        let _ = c.await;
    }
    for r in restarts {
        let _ = r.await;
    }
    world.heal();
    world.set_faults(Faults::default());
    world.event("the end: network healed, every node up");
    if let Err(why) = run.settle().await {
        run.fail(format!(
            "the ring does not converge after everything healed: {why}"
        ));
    }
    check(&run).await;
    let procs = std::mem::take(&mut *run.procs.lock());
    super::reap_all(procs.into_values().collect());
    std::mem::take(&mut run.history.lock().violations)
}

async fn check(run: &Run) {
    let nodes: Vec<Node> = run.procs.lock().values().map(|p| p.node.clone()).collect();
    let mut finals: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for k in 0..KEYS {
        let mut seen: Option<Vec<u64>> = None;
        for n in &nodes {
            run.history.lock().observe(k, n.local(&key(k)).as_ref());
            match n.get(&key(k)).await {
                Ok(f) => {
                    let mut v = ids(&f.values());
                    v.sort_unstable();
                    match &seen {
                        Some(s) if *s != v => {
                            run.fail(format!("k{k}: {} reads {v:?}, another node {s:?}", n.id()))
                        }
                        _ => seen = Some(v),
                    }
                }
                Err(e) => run.fail(format!("k{k}: {} cannot read at the end: {e}", n.id())),
            }
        }
        finals.insert(k, seen.unwrap_or_default().into_iter().collect());
    }
    let lost: Vec<String> = {
        let h = run.history.lock();
        // kept[i]: write i's value is in the final state or was replaced
        // by a write that is kept (deletions count as kept).
        let mut kept = vec![false; h.writes.len()];
        for (i, w) in h.writes.iter().enumerate() {
            kept[i] = match w.value {
                Some(v) => finals.get(&w.key).is_some_and(|f| f.contains(&v)),
                None => true,
            };
        }
        // Replacers come after what they replace: one pass backwards.
        for i in (0..h.writes.len()).rev() {
            if kept[i] {
                for r in &h.writes[i].replaces {
                    if let Some(k) = kept.get_mut(*r as usize) {
                        *k = true;
                    }
                }
            }
        }
        h.writes
            .iter()
            .enumerate()
            .filter(|(i, w)| w.acked && w.value.is_some() && !kept[*i])
            .map(|(i, w)| {
                format!(
                    "acknowledged write v{i} of k{} lost: the end reads {:?}",
                    w.key,
                    finals.get(&w.key)
                )
            })
            .collect()
    };
    for l in lost {
        run.fail(l);
    }
}
