//! The ring with 3 to 5 nodes in one process on the simulated network:
//! kills, partitions, heals, wiped stores and layout changes, checking
//! that no write acknowledged by a quorum is lost, that concurrent writes
//! surface as siblings, and that the nodes converge on their own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::NodeId;
use super::hash;
use super::node::{Node, NodeConfig, Quorum};
use super::sim::World;
use super::version::Context;

pub(super) fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

pub(super) struct Cluster {
    pub(super) world: Arc<World>,
    pub(super) nodes: Vec<Node>,
    pub(super) _dirs: Vec<TempDir>,
}

#[derive(Clone, Copy)]
pub(super) struct Timing {
    pub(super) hints: bool,
    pub(super) anti_entropy: bool,
}

pub(super) const FAST: Timing = Timing {
    hints: true,
    anti_entropy: true,
};

pub(super) fn config(name: &str, t: Timing, seeds: &[&str]) -> NodeConfig {
    let mut c = NodeConfig::new(id(name));
    c.quorum = Quorum { n: 3, r: 2, w: 2 };
    c.hint_interval = t.hints.then_some(Duration::from_millis(100));
    c.anti_entropy_interval = t.anti_entropy.then_some(Duration::from_millis(200));
    c.layout_interval = Duration::from_millis(100);
    c.seeds = seeds.iter().map(|s| id(s)).collect();
    c
}

impl Cluster {
    pub(super) async fn new(names: &[&str], t: Timing) -> Cluster {
        let world = World::new();
        let mut c = Cluster {
            world,
            nodes: Vec::new(),
            _dirs: Vec::new(),
        };
        for name in names {
            c.add(name, t, &[]);
        }
        let first = c.nodes[0].clone();
        for name in names {
            first
                .stage_join(id(name), format!("sim:{name}"))
                .await
                .unwrap();
        }
        first.apply(None).await.unwrap();
        c.wait("everyone has layout 1", || {
            c.nodes.iter().all(|n| n.layout().current.version == 1)
        })
        .await;
        c
    }

    /// Starts a node with an empty store (a new one, or a wiped one).
    pub(super) fn add(&mut self, name: &str, t: Timing, seeds: &[&str]) -> Node {
        let dir = TempDir::new().unwrap();
        let net = self.world.net(&id(name));
        let node = Node::open(config(name, t, seeds), dir.path(), net.clone(), net).unwrap();
        self.world.register(id(name), Arc::new(node.clone()));
        node.start();
        self.nodes.retain(|n| n.id().as_str() != name);
        self.nodes.push(node.clone());
        self._dirs.push(dir);
        node
    }

    pub(super) fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.id().as_str() == name).unwrap()
    }

    pub(super) fn kill(&self, name: &str) {
        self.world.set_down(&id(name), true);
    }

    pub(super) fn revive(&self, name: &str) {
        self.world.set_down(&id(name), false);
    }

    pub(super) async fn wait(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting until {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every owner of every key in `keys` stores it.
    async fn wait_owners_hold(&self, keys: &[String]) {
        self.wait("every owner to hold every acknowledged key", || {
            keys.iter().all(|k| {
                self.owners(k.as_bytes())
                    .iter()
                    .all(|o| self.node(o).local(k.as_bytes()).is_some())
            })
        })
        .await;
    }

    /// Owners of `key` in the current layout.
    pub(super) fn owners(&self, key: &[u8]) -> Vec<String> {
        let l = self.nodes[0].layout();
        l.current
            .owners(hash::partition_of(key))
            .iter()
            .map(|n| n.to_string())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.stop();
        }
    }
}

pub(super) fn val(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_write_reaches_every_owner_and_any_node_reads_it() {
    let c = Cluster::new(&["a", "b", "c"], FAST).await;
    for i in 0..50 {
        let k = format!("k{i}");
        c.node("a")
            .put(k.as_bytes(), val(&format!("v{i}")), &Context::new())
            .await
            .unwrap();
    }
    for n in ["a", "b", "c"] {
        let f = c.node(n).get(b"k7").await.unwrap();
        assert_eq!(f.values(), vec![b"v7".to_vec()], "read through {n}");
    }
    c.wait("every node stores every key", || {
        c.nodes
            .iter()
            .all(|n| (0..50).all(|i| n.local(format!("k{i}").as_bytes()).is_some()))
    })
    .await;
    // A write with the read's context replaces the value.
    let f = c.node("b").get(b"k7").await.unwrap();
    c.node("c")
        .put(b"k7", val("w7"), &f.context())
        .await
        .unwrap();
    assert_eq!(
        c.node("a").get(b"k7").await.unwrap().values(),
        vec![b"w7".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_dead_owner_wait_as_hints_and_are_delivered() {
    // Anti-entropy off: only hinted handoff can bring e up to date.
    let t = Timing {
        hints: true,
        anti_entropy: false,
    };
    let c = Cluster::new(&["a", "b", "c", "d", "e"], t).await;
    c.kill("e");
    let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
    let owned_by_e: Vec<&String> = keys
        .iter()
        .filter(|k| c.owners(k.as_bytes()).contains(&"e".to_string()))
        .collect();
    assert!(!owned_by_e.is_empty());
    for k in &keys {
        c.node("a")
            .put(k.as_bytes(), val(k), &Context::new())
            .await
            .unwrap();
    }
    let hints: u64 = c.nodes.iter().map(Node::hint_count).sum();
    assert!(hints > 0, "stand-ins keep hints for e");
    assert!(
        owned_by_e
            .iter()
            .all(|k| c.node("e").local(k.as_bytes()).is_none())
    );
    c.revive("e");
    c.wait("e received every hint", || {
        owned_by_e
            .iter()
            .all(|k| c.node("e").local(k.as_bytes()).is_some())
    })
    .await;
    c.wait("hints are dropped once delivered", || {
        c.nodes.iter().map(Node::hint_count).sum::<u64>() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_repairs_an_owner_that_missed_the_write() {
    // No hints, no anti-entropy: only the read can bring c up to date.
    let t = Timing {
        hints: false,
        anti_entropy: false,
    };
    let c = Cluster::new(&["a", "b", "c"], t).await;
    c.kill("c");
    c.node("a")
        .put(b"r", val("v"), &Context::new())
        .await
        .unwrap();
    // The put returns once W=2 answered; its write to c may still be on the
    // simulated wire, and would land if c came back first (the read would
    // then have nothing to repair: seen once in a full run).
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.revive("c");
    assert!(c.node("c").local(b"r").is_none());
    // A read asks every owner, waits for R=2 answers and repairs, in the
    // background, every owner that answered with less.
    let start = Instant::now();
    while c.node("c").local(b"r").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "c never repaired"
        );
        assert_eq!(
            c.node("b").get(b"r").await.unwrap().values(),
            vec![b"v".to_vec()]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.node("c").local(b"r").unwrap().values(), vec![val("v")]);
    assert!(c.nodes.iter().any(|n| {
        n.stats()
            .read_repairs
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_missed_writes_and_a_wiped_store() {
    let t = Timing {
        hints: false,
        anti_entropy: true,
    };
    let mut c = Cluster::new(&["a", "b", "c"], t).await;
    c.kill("c");
    for i in 0..100 {
        c.node("a")
            .put(format!("m{i}").as_bytes(), val("x"), &Context::new())
            .await
            .unwrap();
    }
    assert!(c.node("c").local(b"m1").is_none());
    c.revive("c");
    c.wait("c caught up by anti-entropy", || {
        (0..100).all(|i| c.node("c").local(format!("m{i}").as_bytes()).is_some())
    })
    .await;
    // c loses its disk: a new, empty store under the same name. It learns
    // the layout from its seed and anti-entropy refills it.
    c.kill("c");
    c.node("c").stop();
    c.revive("c");
    let fresh = c.add("c", t, &["a"]);
    assert!(fresh.local(b"m1").is_none());
    c.wait("wiped c refilled", || {
        (0..100).all(|i| fresh.local(format!("m{i}").as_bytes()).is_some())
    })
    .await;
    // Its new actor id never reuses an old dot: writes through it work.
    let f = fresh.get(b"m5").await.unwrap();
    fresh.put(b"m5", val("y"), &f.context()).await.unwrap();
    assert_eq!(
        c.node("a").get(b"m5").await.unwrap().values(),
        vec![b"y".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_gives_siblings_and_loses_no_acknowledged_write() {
    let c = Cluster::new(&["a", "b", "c", "d", "e"], FAST).await;
    let left = [id("a"), id("b")];
    let right = [id("c"), id("d"), id("e")];
    // A key that a owns, so that both sides can reach a write quorum.
    let key = (0..)
        .map(|i| format!("contested-{i}"))
        .find(|k| c.owners(k.as_bytes()).contains(&"a".to_string()))
        .unwrap();
    c.node("a")
        .put(key.as_bytes(), val("before"), &Context::new())
        .await
        .unwrap();
    let ctx = c.node("c").get(key.as_bytes()).await.unwrap().context();
    c.world.partition(&left, &right);
    c.node("a")
        .put(key.as_bytes(), val("left"), &ctx)
        .await
        .expect("left side reaches W with a stand-in");
    c.node("d")
        .put(key.as_bytes(), val("right"), &ctx)
        .await
        .expect("right side reaches W");
    // Unique keys written on both sides while partitioned.
    let mut acked = Vec::new();
    for i in 0..60 {
        let (via, k) = if i % 2 == 0 {
            ("b", format!("l{i}"))
        } else {
            ("e", format!("r{i}"))
        };
        if c.node(via)
            .put(k.as_bytes(), val(&k), &Context::new())
            .await
            .is_ok()
        {
            acked.push(k);
        }
    }
    assert!(acked.len() > 20, "most writes reach a sloppy quorum");
    c.world.heal();
    // A sloppy quorum does not overlap the next read quorum: the two
    // versions meet once hints are delivered and anti-entropy has run.
    let mut f = c.node("b").get(key.as_bytes()).await.unwrap();
    let start = Instant::now();
    while f.values().len() < 2 && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        f = c.node("b").get(key.as_bytes()).await.unwrap();
    }
    assert_eq!(
        sorted(f.values()),
        vec![b"left".to_vec(), b"right".to_vec()],
        "concurrent writes are siblings, none lost"
    );
    // The caller merges and writes back with the context: one value.
    c.node("e")
        .put(key.as_bytes(), val("merged"), &f.context())
        .await
        .unwrap();
    assert_eq!(
        c.node("a").get(key.as_bytes()).await.unwrap().values(),
        vec![b"merged".to_vec()]
    );
    // Without intervention every owner ends up holding every key.
    c.wait_owners_hold(&acked).await;
    for k in &acked {
        for n in ["a", "c", "e"] {
            assert_eq!(
                c.node(n).get(k.as_bytes()).await.unwrap().values(),
                vec![k.as_bytes().to_vec()],
                "acknowledged write {k} read through {n}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_and_partitions_lose_no_acknowledged_write() {
    let names = ["a", "b", "c", "d", "e"];
    let c = Cluster::new(&names, FAST).await;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let mut acked = Vec::new();
    for round in 0..8 {
        // One fault per round: a dead node, or a partition into two groups.
        c.world.heal();
        for n in names {
            c.revive(n);
        }
        if round % 2 == 0 {
            c.kill(names[next(5)]);
        } else {
            let cut = 1 + next(3);
            let ids: Vec<NodeId> = names.iter().map(|n| id(n)).collect();
            c.world.partition(&ids[..cut], &ids[cut..]);
        }
        for i in 0..25 {
            let k = format!("rand-{round}-{i}");
            let via = names[next(5)];
            if c.node(via)
                .put(k.as_bytes(), val(&k), &Context::new())
                .await
                .is_ok()
            {
                acked.push(k);
            }
        }
    }
    c.world.heal();
    for n in names {
        c.revive(n);
    }
    assert!(
        acked.len() > 100,
        "only {} of 200 acknowledged",
        acked.len()
    );
    c.wait_owners_hold(&acked).await;
    for k in &acked {
        let via = names[next(5)];
        assert_eq!(
            c.node(via).get(k.as_bytes()).await.unwrap().values(),
            vec![k.as_bytes().to_vec()],
            "acknowledged write {k}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_change_moves_data_without_losing_any() {
    let mut c = Cluster::new(&["a", "b", "c"], FAST).await;
    for i in 0..150 {
        c.node("a")
            .put(format!("lk{i}").as_bytes(), val("1"), &Context::new())
            .await
            .unwrap();
    }
    c.add("d", FAST, &["a"]);
    c.add("e", FAST, &["a"]);
    c.node("b")
        .stage_join(id("d"), "sim:d".into())
        .await
        .unwrap();
    c.node("b")
        .stage_join(id("e"), "sim:e".into())
        .await
        .unwrap();
    let l = c.node("b").apply(None).await.unwrap();
    assert_eq!(l.current.version, 2);
    assert!(l.old.is_some(), "a transition while d and e sync");
    // Writes during the transition reach both the old and new owners.
    for i in 150..200 {
        c.node("c")
            .put(format!("lk{i}").as_bytes(), val("1"), &Context::new())
            .await
            .unwrap();
    }
    c.wait("the transition ends everywhere", || {
        c.nodes
            .iter()
            .all(|n| n.layout().current.version == 2 && n.layout().old.is_none())
    })
    .await;
    for n in ["d", "e"] {
        let held = (0..200)
            .filter(|i| c.node(n).local(format!("lk{i}").as_bytes()).is_some())
            .count();
        assert!(held > 50, "{n} holds only {held} keys after joining");
    }
    // a leaves; once synced, a can disappear without losing anything.
    c.node("d").stage_leave(id("a")).await.unwrap();
    c.node("d").apply(None).await.unwrap();
    c.wait("a's departure synced", || {
        c.nodes.iter().all(|n| {
            let l = n.layout();
            l.current.version == 3 && l.old.is_none()
        })
    })
    .await;
    c.kill("a");
    for i in 0..200 {
        let k = format!("lk{i}");
        assert_eq!(
            c.node("e").get(k.as_bytes()).await.unwrap().values(),
            vec![b"1".to_vec()],
            "{k} after a left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_collected_only_once_every_node_has_them() {
    let c = Cluster::new(&["a", "b", "c"], FAST).await;
    c.node("a")
        .put(b"gone", val("x"), &Context::new())
        .await
        .unwrap();
    c.wait("all hold it", || {
        c.nodes.iter().all(|n| n.local(b"gone").is_some())
    })
    .await;
    c.kill("c");
    let f = c.node("a").get(b"gone").await.unwrap();
    c.node("a").delete(b"gone", &f.context()).await.unwrap();
    assert!(c.node("b").get(b"gone").await.unwrap().values().is_empty());
    // Several anti-entropy rounds with c away: the tombstone stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tombstone = c.node("b").local(b"gone");
    for n in ["a", "b"] {
        assert!(
            c.node(n).local(b"gone").is_some_and(|v| v.is_tombstone()),
            "{n} keeps the tombstone while c lacks it"
        );
    }
    c.revive("c");
    c.wait("the tombstone is collected everywhere", || {
        c.nodes.iter().all(|n| n.local(b"gone").is_none())
    })
    .await;
    assert!(c.node("c").get(b"gone").await.unwrap().values().is_empty());
    // A new write after the collection gets fresh dots: a stale copy of
    // the tombstone arriving late (read repair, anti-entropy) cannot
    // swallow it.
    let stale = c.node("b").local(b"gone");
    assert!(stale.is_none());
    for via in ["a", "b", "c"] {
        c.node(via)
            .put(b"gone", val(&format!("back via {via}")), &Context::new())
            .await
            .unwrap();
    }
    c.wait("the new values everywhere", || {
        c.nodes
            .iter()
            .all(|n| n.local(b"gone").is_some_and(|v| v.values().len() == 3))
    })
    .await;
    if let Some(t) = tombstone {
        assert!(t.is_tombstone());
        for n in &c.nodes {
            let before = n.local(b"gone").unwrap();
            let merged = before.sync(&t);
            assert_eq!(
                merged.values().into_iter().flatten().count(),
                3,
                "a late tombstone swallowed a new write on {}",
                n.id()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_concurrent_writes_are_siblings_and_bad_input_is_refused() {
    let c = Cluster::new(&["a", "b", "c"], FAST).await;
    c.node("a")
        .put(b"k", val("one"), &Context::new())
        .await
        .unwrap();
    c.node("b")
        .put(b"k", val("two"), &Context::new())
        .await
        .unwrap();
    let f = c.node("c").get(b"k").await.unwrap();
    assert_eq!(sorted(f.values()), vec![b"one".to_vec(), b"two".to_vec()]);
    let long = vec![b'x'; super::msg::MAX_KEY + 1];
    assert!(
        c.node("a")
            .put(&long, val("v"), &Context::new())
            .await
            .is_err()
    );
    let big = vec![0u8; super::msg::MAX_VALUE + 1];
    assert!(
        c.node("a")
            .put(b"k2", Some(big), &Context::new())
            .await
            .is_err()
    );
    // A ring without a layout says how to make one.
    let lone = Cluster {
        world: World::new(),
        nodes: Vec::new(),
        _dirs: Vec::new(),
    };
    let mut lone = lone;
    let n = lone.add("solo", FAST, &[]);
    let e = n.get(b"k").await.unwrap_err().to_string();
    assert!(e.contains("chironctl ring join"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_coordinated_on_an_older_layout_is_refused_and_its_sender_catches_up() {
    use super::{Handler, Request, Response};
    let c = Cluster::new(&["a", "b", "c", "d"], FAST).await;
    // d misses layout version 2.
    c.world.partition(&[id("d")], &[id("a"), id("b"), id("c")]);
    c.node("a")
        .stage_quorum(Quorum { n: 3, r: 2, w: 2 })
        .await
        .unwrap();
    assert_eq!(c.node("a").apply(None).await.unwrap().current.version, 2);
    c.wait("a, b and c have version 2", || {
        ["a", "b", "c"]
            .iter()
            .all(|n| c.node(n).layout_version() == 2)
    })
    .await;
    assert_eq!(c.node("d").layout_version(), 1);
    // A replica write coordinated on version 1 is refused, with the layout.
    let req = Request::Write {
        key: b"k".to_vec(),
        version: super::version::Dvv::default(),
        hint_for: None,
        layout: 1,
    };
    match c.node("a").handle(id("d"), req).await {
        Response::StaleLayout(l) => assert_eq!(l.current.version, 2),
        other => panic!("a write on layout 1 was answered {other:?}"),
    }
    // d takes the layout it is given and coordinates again on it.
    c.world.heal();
    let v = c
        .node("d")
        .put(b"after", val("1"), &Context::new())
        .await
        .expect("d's write, after catching up");
    assert_eq!(v.values(), vec![val("1")]);
    assert_eq!(c.node("d").layout_version(), 2);
    // A node behind that is sent a newer version fetches the layout.
    let mut c = c;
    c.world
        .partition(&[id("e")], &[id("a"), id("b"), id("c"), id("d")]);
    let e = c.add("e", FAST, &[]);
    c.world.heal();
    assert_eq!(e.layout_version(), 0);
    let read = Request::Read {
        key: b"after".to_vec(),
        layout: 2,
    };
    let _ = e.handle(id("a"), read).await;
    c.wait("e fetched the sender's layout", || e.layout_version() == 2)
        .await;
}
