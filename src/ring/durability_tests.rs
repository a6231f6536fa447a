//! Durability of ring writes (DESIGN.md section 7): a write acknowledged
//! survives a power loss of the nodes that acknowledged it, and a node that
//! did not close cleanly never issues a dot again that it may have issued
//! before.
//!
//! A power loss is simulated by `power_loss_copy`: the store's files as
//! they are, but the journal cut back to what the last completed fsync
//! covered.

use std::collections::HashSet;

use tempfile::TempDir;

use super::node::Node;
use super::sim::World;
use super::storage::Storage;
use super::tests::{Cluster, FAST, config, id, val};
use super::version::{Context, Dvv};

/// A coordinator's write of `key` with the context of what it holds; the
/// dot it issued must be new for the key.
fn coordinate(s: &Storage, key: &str, issued: &mut HashSet<(String, String, u64)>) {
    let actor = s.actor().to_string();
    // Not waited for: what the last sync did not cover may be lost.
    let (v, _) = s
        .update(key.as_bytes(), |cur| {
            Dvv::new_write(&cur.context(), val(key)).update(cur, &actor)
        })
        .unwrap();
    let counter = v
        .entries
        .iter()
        .find(|e| e.actor == actor)
        .map(|e| e.counter)
        .unwrap();
    assert!(
        issued.insert((key.to_string(), actor.clone(), counter)),
        "dot ({actor}, {counter}) of {key} issued twice"
    );
}

#[test]
fn a_node_that_drops_its_keys_to_rejoin_takes_a_new_epoch_and_reuses_no_dot() {
    // A node added back to the layout drops what it stored (membership):
    // numbering from the emptied store under the same actor would issue
    // the same dots for other values.
    let dir = TempDir::new().unwrap();
    let me = id("a");
    let mut issued = HashSet::new();
    let s = Storage::open(dir.path(), &me).unwrap();
    let first = s.actor();
    (0..10).for_each(|i| coordinate(&s, &format!("k{}", i % 3), &mut issued));
    s.drop_owned().unwrap();
    assert_ne!(s.actor(), first, "the drop must retire the epoch");
    (0..10).for_each(|i| coordinate(&s, &format!("k{}", i % 3), &mut issued));
    // The new epoch is durable: a crash now keeps no way back to the old.
    let second = s.actor();
    drop(s);
    let s = Storage::open(dir.path(), &me).unwrap();
    assert!(s.actor() != first && s.actor() != second, "{}", s.actor());
}

#[test]
fn a_store_that_was_not_closed_cleanly_takes_a_new_epoch_and_reuses_no_dot() {
    let dir = TempDir::new().unwrap();
    let copy = TempDir::new().unwrap();
    let me = id("a");
    let mut issued = HashSet::new();
    let keys = |round: usize| (0..20).map(move |i| format!("k{}-{round}", i % 5));

    let s = Storage::open(dir.path(), &me).unwrap();
    let first = s.actor().to_string();
    keys(0).for_each(|k| coordinate(&s, &k, &mut issued));
    s.close().unwrap();
    drop(s);

    // An orderly close keeps the epoch: no new actor in every version.
    let s = Storage::open(dir.path(), &me).unwrap();
    assert_eq!(s.actor(), first, "a clean close keeps the epoch");
    keys(1).for_each(|k| coordinate(&s, &k, &mut issued));
    // A crash: the store is dropped without an orderly close.
    drop(s);

    let s = Storage::open(dir.path(), &me).unwrap();
    let second = s.actor().to_string();
    assert_ne!(second, first, "a crash must retire the epoch");
    keys(1).for_each(|k| coordinate(&s, &k, &mut issued));
    // A power loss: what the last sync did not cover is lost, dots of
    // the old epoch included.
    s.sync().unwrap();
    keys(2).for_each(|k| coordinate(&s, &k, &mut issued));
    s.power_loss_copy(copy.path()).unwrap();
    drop(s);

    let s = Storage::open(copy.path(), &me).unwrap();
    let third = s.actor().to_string();
    assert!(
        third != first && third != second,
        "a power loss must retire the epoch ({first}, {second}, then {third})"
    );
    keys(1)
        .chain(keys(2))
        .for_each(|k| coordinate(&s, &k, &mut issued));
    // Reopened cleanly again: the epoch stays.
    s.close().unwrap();
    drop(s);
    let s = Storage::open(copy.path(), &me).unwrap();
    assert_eq!(s.actor(), third);
}

/// Opens a node on a copy of a store, alone on a network of its own.
fn open_copy(name: &str, dir: &std::path::Path) -> Node {
    let world = World::new();
    let net = world.net(&id(name));
    Node::open(config(name, FAST, &[]), dir, net.clone(), net).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_put_survives_a_power_loss_of_its_coordinator() {
    let c = Cluster::new(&["solo"], FAST).await;
    let n = c.node("solo").clone();
    for i in 0..30 {
        n.put(format!("p{i}").as_bytes(), val("v"), &Context::new())
            .await
            .unwrap();
    }
    let copy = TempDir::new().unwrap();
    n.power_loss_copy(copy.path()).unwrap();
    let after = open_copy("solo", copy.path());
    for i in 0..30 {
        assert!(
            after.local(format!("p{i}").as_bytes()).is_some(),
            "acknowledged p{i} lost by a power loss"
        );
    }
    assert_ne!(
        after.actor(),
        n.actor(),
        "an unclean stop retires the epoch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_put_survives_a_power_loss_of_every_node() {
    // Without anti-entropy and hints, only the writes themselves put the
    // values on the nodes.
    let t = super::tests::Timing {
        hints: false,
        anti_entropy: false,
    };
    let c = Cluster::new(&["a", "b", "c"], t).await;
    let writes: Vec<_> = (0..200)
        .map(|i| {
            let n = c.nodes[i % 3].clone();
            tokio::spawn(async move {
                n.put(format!("q{i}").as_bytes(), val("v"), &Context::new())
                    .await
                    .map(|_| i)
            })
        })
        .collect();
    let mut acked = Vec::new();
    for w in writes {
        acked.push(w.await.unwrap().unwrap());
    }
    // Every node loses power at once, as the last write is acknowledged.
    let points: Vec<_> = c.nodes.iter().map(Node::power_loss_point).collect();
    let copies: Vec<TempDir> = c
        .nodes
        .iter()
        .zip(points)
        .map(|(n, p)| {
            let d = TempDir::new().unwrap();
            n.power_loss_at(p, d.path()).unwrap();
            d
        })
        .collect();
    drop(c);
    let after: Vec<Node> = ["a", "b", "c"]
        .iter()
        .zip(&copies)
        .map(|(name, d)| open_copy(name, d.path()))
        .collect();
    for i in acked {
        let k = format!("q{i}");
        let holders = after
            .iter()
            .filter(|n| n.local(k.as_bytes()).is_some())
            .count();
        assert!(
            holders >= 2,
            "{k} acknowledged by W=2 but on {holders} nodes"
        );
    }
}
