//! The deterministic simulation of the ring (DESIGN.md section 7,
//! "Deterministic simulation"): the real nodes, stores, quorums, hints,
//! anti-entropy and read leases, run on one thread under tokio's paused
//! clock, on a simulated network and simulated clocks (`net`), with every
//! random choice drawn from one generator seeded by the seed. One seed
//! replays one run exactly.
//!
//! Two models run per seed: `kv` (reads and writes of a few keys, checked
//! for lost writes, lost siblings, reused dots and convergence) and
//! `views` (the filesystem's view and read-lease protocol, checked for a
//! read of a replica that missed an acknowledged write). Faults: partitions
//! (symmetric and one way), message loss and duplication, reordering (by
//! random latency), clock rate errors, crashes that lose the unsynced
//! tail of a store, failure-detector mistakes, process pauses.
//!
//! `CHIRONFS_SIM_SEEDS` (`1-10000`, or a list `3,17`) picks the seeds of
//! `simulated_histories_are_clean`; without it seeds 1-1000 run.

mod kv;
mod net;
mod views;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;

use super::NodeId;
use super::layout::LayoutHistory;
use super::node::{Dice, Node, NodeConfig, Quorum};
use super::operator::{OperatorKey, Operators};
use net::{SimNet, World};

/// The read lease term of the simulated hosts.
const LEASE: Duration = Duration::from_secs(2);

/// A bug the simulation can be asked to carry, to show that its checker
/// finds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    None,
    /// The writer acknowledges a write that missed a replica without
    /// waiting out the leases of the hosts that did not confirm.
    AckBeforeLeasesEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    Kv,
    Views,
}

/// One ring process: its node, its network, its store.
struct Proc {
    node: Node,
    net: Arc<SimNet>,
    _dir: TempDir,
}

fn store_dir() -> TempDir {
    let shm = Path::new("/dev/shm");
    let b = tempfile::Builder::new()
        .prefix("chironfs-dsim-")
        .tempdir_in(if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        });
    b.expect("a temporary directory for a simulated store")
}

/// The operator key every simulated node requires layouts to be signed
/// by (a fixed one: signatures are deterministic, so runs replay).
fn operator() -> &'static OperatorKey {
    static KEY: std::sync::OnceLock<OperatorKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| OperatorKey::from_seed([7; 32]))
}

/// Commits what `node` has staged, signed as `chironctl ring apply --key`
/// does; fails if the layout moved between the plan and the commit.
async fn signed_apply(node: &Node) -> Result<LayoutHistory, String> {
    let plan = node.plan()?;
    node.apply(Some(operator().sign(&plan))).await
}

/// Opens and starts a node on `dir`, registered in the world.
fn open(world: &Arc<World>, name: &NodeId, dir: TempDir, seeds: &[NodeId]) -> Result<Proc, String> {
    let mut c = NodeConfig::new(name.clone());
    c.quorum = Quorum { n: 3, r: 2, w: 2 };
    c.hint_interval = Some(Duration::from_millis(300));
    c.anti_entropy_interval = Some(Duration::from_millis(1500));
    c.layout_interval = Duration::from_secs(2);
    c.read_lease = LEASE;
    c.seeds = seeds.to_vec();
    c.clock = world.clock(name);
    c.inline_sync = true;
    let w = world.clone();
    c.dice = Dice::from_fn(move || w.rng().next());
    c.operators = Operators::new(vec![operator().public()]);
    let net = world.net(name);
    let node = Node::open(c, dir.path(), net.clone(), net.clone())?;
    world.register(name, Arc::new(node.clone()));
    world.keep(&node);
    node.start();
    Ok(Proc {
        node,
        net,
        _dir: dir,
    })
}

/// Crashes `p` (nothing it has in flight goes on) and returns its store
/// as a power loss now would leave it.
fn crash(world: &World, p: &Proc) -> Result<TempDir, String> {
    world.set_down(p.node.id(), true);
    p.net.kill();
    p.node.crash();
    let copy = store_dir();
    p.node
        .power_loss_copy(copy.path())
        .map_err(|e| e.to_string())?;
    Ok(copy)
}

/// Drops `t` on a thread of its own: a store's close waits up to 250 ms
/// (real time) for fjall's monitor thread, which would otherwise be most
/// of a seed's run time. Nothing in the simulation waits for it.
fn reap<T: Send + 'static>(t: T) {
    if let Ok(h) = std::thread::Builder::new()
        .name("dsim-reap".into())
        .spawn(move || drop(t))
    {
        let mut reapers = REAPERS.lock();
        reapers.push(h);
        // Each store keeps fjall's threads until it is closed: bound how
        // many wait (the oldest are closed by now, or nearly).
        if reapers.len() > MAX_REAPERS {
            let old: Vec<_> = reapers.drain(..MAX_REAPERS / 2).collect();
            drop(reapers);
            for h in old {
                let _ = h.join();
            }
        }
    }
}

const MAX_REAPERS: usize = 64;

static REAPERS: parking_lot::Mutex<Vec<std::thread::JoinHandle<()>>> =
    parking_lot::Mutex::new(Vec::new());

/// Waits until every store is closed and its directory removed (before
/// the test ends, or /dev/shm keeps them).
fn join_reapers() {
    loop {
        let hs = std::mem::take(&mut *REAPERS.lock());
        if hs.is_empty() {
            return;
        }
        for h in hs {
            let _ = h.join();
        }
    }
}

/// Ends every process of a finished run (their loops stop) and closes
/// their stores off the simulation's thread.
fn reap_all(procs: Vec<Proc>) {
    for p in &procs {
        p.net.kill();
        p.node.crash();
    }
    reap(procs);
}

/// What one seed did.
pub struct Outcome {
    pub events: Vec<String>,
    pub messages: u64,
    pub violations: Vec<String>,
}

/// Runs one seed of `model`.
pub fn run(model: Model, seed: u64, bug: Bug) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let (o, nodes) = rt.block_on(async move {
        let world = World::new(seed);
        let violations = match model {
            Model::Kv => kv::run(&world).await,
            Model::Views => views::run(&world, bug).await,
        };
        let o = Outcome {
            events: world.events(),
            messages: world.message_digest(),
            violations,
        };
        (o, world.take_graveyard())
    });
    // Each store on a thread of its own (a close takes up to 250 ms).
    reap(rt);
    for n in nodes {
        reap(n);
    }
    o
}

/// A failing seed's report: what broke, the run's last events, and how to
/// replay it.
fn report(model: Model, seed: u64, o: &Outcome) -> String {
    let tail = o.events.len().saturating_sub(60);
    format!(
        "seed {seed} ({model:?}): {}\n  last events:\n    {}\n  replay: CHIRONFS_SIM_SEEDS={seed} cargo test --release --bin chironfs ring::dsim -- --nocapture",
        o.violations.join("\n  "),
        o.events[tail..].join("\n    ")
    )
}

fn seeds() -> Vec<u64> {
    let Ok(spec) = std::env::var("CHIRONFS_SIM_SEEDS") else {
        return (1..=DEFAULT_SEEDS).collect();
    };
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parsed = match part.split_once('-') {
            Some((a, b)) => a.parse::<u64>().and_then(|a| Ok(a..=b.parse::<u64>()?)),
            None => part.parse::<u64>().map(|a| a..=a),
        };
        match parsed {
            Ok(r) => out.extend(r),
            Err(e) => panic!("CHIRONFS_SIM_SEEDS: '{part}' is not a seed or a range a-b: {e}"),
        }
    }
    out
}

/// Seeds `scripts/test` runs.
const DEFAULT_SEEDS: u64 = 1000;

/// Runs `seeds` of both models on every core; returns the reports of
/// those that failed.
fn run_all(seeds: &[u64], bug: Bug, models: &[Model]) -> Vec<String> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = parking_lot::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(&seed) = seeds.get(i) else { break };
                    for &m in models {
                        let t = std::time::Instant::now();
                        let o = run(m, seed, bug);
                        if std::env::var_os("CHIRONFS_SIM_TIMES").is_some() {
                            eprintln!(
                                "seed {seed} {m:?}: {:.2}s, {} events",
                                t.elapsed().as_secs_f64(),
                                o.events.len()
                            );
                        }
                        if !o.violations.is_empty() {
                            failures.lock().push((seed, report(m, seed, &o)));
                        }
                    }
                }
            });
        }
    });
    join_reapers();
    let mut f = failures.into_inner();
    f.sort();
    f.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn simulated_histories_are_clean() {
    let seeds = seeds();
    let start = std::time::Instant::now();
    let failures = run_all(&seeds, Bug::None, &[Model::Kv, Model::Views]);
    eprintln!(
        "simulation: {} seeds x 2 models in {:.1}s, {} failed",
        seeds.len(),
        start.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn one_seed_replays_exactly() {
    for (model, seed) in [
        (Model::Kv, 7),
        (Model::Kv, 804),
        (Model::Views, 7),
        (Model::Views, 22),
    ] {
        let a = run(model, seed, Bug::None);
        let b = run(model, seed, Bug::None);
        join_reapers();
        let first = a.events.iter().zip(&b.events).position(|(x, y)| x != y);
        assert!(
            first.is_none() && a.events.len() == b.events.len(),
            "{model:?} seed {seed} ran differently twice: first difference at event {first:?}:\n{:?}\n{:?}",
            first.map(|i| &a.events[i]),
            first.map(|i| &b.events[i]),
        );
        assert_eq!(a.messages, b.messages, "{model:?}: the messages differ");
        assert!(a.events.len() > 20, "{model:?}: the run did little");
    }
}

#[test]
fn the_checker_finds_a_write_acknowledged_before_the_leases_ran_out() {
    let seeds: Vec<u64> = (1..=100).collect();
    let failures = run_all(&seeds, Bug::AckBeforeLeasesEnd, &[Model::Views]);
    assert!(
        !failures.is_empty(),
        "100 seeds with the writer not waiting out the other hosts' leases found nothing"
    );
    eprintln!(
        "the injected bug was found by {} of 100 seeds; the first:\n{}",
        failures.len(),
        failures[0]
    );
}
