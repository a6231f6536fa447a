//! Quorum rules (DESIGN.md section 7): every node counts the N, R, W of
//! the committed layout, whatever it is configured with; a node refuses to
//! start with a quorum that breaks R + W > N or W > N/2; and a stand-in
//! for a dead owner counts toward R only if it holds something for the
//! key, so a read never misses an acknowledged write by counting "not
//! found" from nodes that were never asked to keep it.

use tempfile::TempDir;

use super::layout::Quorum;
use super::layout_v1::{HistoryV1, StagedV1, VersionV1};
use super::node::{Node, RingError};
use super::sim::World;
use super::storage::Storage;
use super::tests::{Cluster, Timing, config, id, val};
use super::version::Context;

/// Hints kept but never delivered, no anti-entropy: only the operations
/// themselves move data.
const STILL: Timing = Timing {
    hints: false,
    anti_entropy: false,
};

/// A key whose owners are, in order, three of the cluster's nodes; the
/// other two are its stand-ins.
fn key_and_owners(c: &Cluster) -> (String, Vec<String>, Vec<String>) {
    let k = "quorum-key".to_string();
    let owners = c.owners(k.as_bytes());
    let others = c
        .nodes
        .iter()
        .map(|n| n.id().to_string())
        .filter(|n| !owners.contains(n))
        .collect();
    (k, owners, others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stand_in_that_holds_nothing_does_not_count_toward_r() {
    let c = Cluster::new(&["a", "b", "c", "d", "e"], STILL).await;
    let (k, o, s) = key_and_owners(&c);
    let k = k.as_bytes();
    c.node(&o[1])
        .put(k, val("v1"), &Context::new())
        .await
        .unwrap();
    c.wait("every owner holds v1", || {
        o.iter().all(|n| c.node(n).local(k).is_some())
    })
    .await;
    // v2 reaches two owners only: the third and both stand-ins are down.
    for n in [&o[0], &s[0], &s[1]] {
        c.kill(n);
    }
    let f = c.node(&o[1]).get(k).await.unwrap();
    c.node(&o[1]).put(k, val("v2"), &f.context()).await.unwrap();
    for n in [&o[0], &s[0], &s[1]] {
        c.revive(n);
    }
    // Now the two owners that have v2 are down. A read through a stand-in
    // finds v1 on one owner and nothing on the stand-ins, which were never
    // asked to keep v2: that is no quorum, not v1.
    c.kill(&o[1]);
    c.kill(&o[2]);
    match c.node(&s[0]).get(k).await {
        Err(RingError::NoQuorum {
            needed: 2, got: 1, ..
        }) => {}
        Ok(f) => panic!("read {:?} with two of three owners down", f.values()),
        Err(e) => panic!("unexpected error {e}"),
    }
    // With one of them back, the read meets v2.
    c.revive(&o[1]);
    let f = c.node(&s[0]).get(k).await.unwrap();
    assert!(f.values().contains(&b"v2".to_vec()), "{:?}", f.values());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stand_in_that_holds_a_hint_counts_toward_r() {
    let c = Cluster::new(&["a", "b", "c", "d", "e"], STILL).await;
    let (k, o, s) = key_and_owners(&c);
    let k = k.as_bytes();
    // Two owners down: the write reaches W through hints on stand-ins.
    c.kill(&o[1]);
    c.kill(&o[2]);
    c.node(&o[0])
        .put(k, val("h"), &Context::new())
        .await
        .unwrap();
    let hints: u64 = s.iter().map(|n| c.node(n).hint_count()).sum();
    assert!(hints > 0, "the stand-ins keep hints");
    let f = c.node(&s[0]).get(k).await.unwrap();
    assert_eq!(f.values(), vec![b"h".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_counts_the_quorum_of_the_layout_not_its_own() {
    let c = Cluster::new(&["a", "b", "c"], STILL).await;
    // Staging checks the rules.
    let e = c
        .node("a")
        .stage_quorum(Quorum { n: 3, r: 1, w: 2 })
        .await
        .unwrap_err();
    assert!(e.contains("N=3 R=1 W=2") && e.contains("R + W"), "{e}");
    // R=1, W=3 (configured everywhere: 3/2/2).
    c.node("b")
        .stage_quorum(Quorum { n: 3, r: 1, w: 3 })
        .await
        .unwrap();
    c.node("b").apply(None).await.unwrap();
    c.wait("everyone has layout 2, synced", || {
        c.nodes.iter().all(|n| {
            let l = n.layout();
            l.current.version == 2 && l.current.quorum() == Quorum { n: 3, r: 1, w: 3 }
        })
    })
    .await;
    for n in ["a", "b", "c"] {
        c.node(n)
            .put(b"all", val("x"), &Context::new())
            .await
            .unwrap();
    }
    c.kill("c");
    // W=3 of 3 owners: no write while one is down, through any node.
    for n in ["a", "b"] {
        assert!(
            matches!(
                c.node(n).put(b"k", val("y"), &Context::new()).await,
                Err(RingError::NoQuorum { .. }) | Err(RingError::Refused(_))
            ),
            "a write through {n} with W=3 and an owner down"
        );
    }
    // R=1: a read needs one owner.
    let f = c.node("a").get(b"all").await.unwrap();
    assert_eq!(f.values().len(), 3, "three blind writes, three siblings");
    assert_eq!(c.node("a").status().r, 1);
}

fn open(name: &str, dir: &std::path::Path, q: Quorum) -> Result<Node, String> {
    let world = World::new();
    let net = world.net(&id(name));
    let mut cfg = config(name, STILL, &[]);
    cfg.quorum = q;
    Node::open(cfg, dir, net.clone(), net)
}

#[test]
fn a_node_refuses_to_start_with_an_unsafe_quorum() {
    let dir = TempDir::new().unwrap();
    for (q, rule) in [
        (Quorum { n: 3, r: 1, w: 1 }, "R + W"),
        (Quorum { n: 4, r: 3, w: 2 }, "W = 2 must exceed N/2"),
    ] {
        let e = open("a", dir.path(), q).err().unwrap();
        assert!(e.contains(&q.to_string()) && e.contains(rule), "{e}");
    }
    open("a", dir.path(), Quorum::default()).unwrap();
}

#[test]
fn a_layout_stored_before_quorums_were_kept_takes_the_configured_r_and_w() {
    let dir = TempDir::new().unwrap();
    let nodes: std::collections::BTreeMap<_, _> = ["a", "b", "c"]
        .iter()
        .map(|n| (id(n), format!("sim:{n}")))
        .collect();
    let owners: Vec<Vec<_>> = (0..super::hash::PARTITIONS)
        .map(|_| vec![id("a"), id("b"), id("c")])
        .collect();
    let old = HistoryV1 {
        current: VersionV1 {
            version: 2,
            n: 3,
            nodes,
            owners,
        },
        old: None,
        synced: Default::default(),
        staged: StagedV1::default(),
    };
    {
        let s = Storage::open(dir.path(), &id("a")).unwrap();
        s.save_layout_v1(&postcard::to_stdvec(&old).unwrap())
            .unwrap();
        s.close().unwrap();
    }
    // Configured R and W that break the rules with the stored N: refused,
    // naming them.
    let e = open("a", dir.path(), Quorum { n: 1, r: 1, w: 1 })
        .err()
        .unwrap();
    assert!(e.contains("r = 1") && e.contains("N=3 R=1 W=1"), "{e}");
    let n = open("a", dir.path(), Quorum { n: 5, r: 3, w: 3 }).unwrap();
    let l = n.layout();
    assert_eq!(l.current.version, 2);
    assert_eq!(l.current.quorum(), Quorum { n: 3, r: 3, w: 3 });
    // Saved in the new format at the next change, read back as it is.
    let l2 = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(n.stage_leave(id("c"))).unwrap()
    };
    n.stop();
    drop(n);
    let n = open("a", dir.path(), Quorum::default()).unwrap();
    assert_eq!(n.layout(), l2);
}
