//! Operator keys on running nodes (`operator`): with `ring.operator_keys`
//! set, a layout version is taken only if an operator key signed it, so a
//! member without the key (a compromised arbiter, say) cannot move the
//! ring's partitions; the operator's own commit signs what the node plans.

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;

use super::node::Node;
use super::operator::{OperatorKey, Operators};
use super::sim::World;
use super::tests::{Cluster, FAST, config, id};

/// Nodes a and b require layouts signed by `key`; c requires nothing
/// (it stands for a member that went rogue).
fn cluster(key: &OperatorKey) -> Cluster {
    let mut c = Cluster {
        world: World::new(),
        nodes: Vec::new(),
        _dirs: Vec::new(),
    };
    for name in ["a", "b", "c"] {
        let dir = TempDir::new().unwrap();
        let net = c.world.net(&id(name));
        let mut cfg = config(name, FAST, &["a"]);
        if name != "c" {
            cfg.operators = Operators::new(vec![key.public()]);
        }
        let node = Node::open(cfg, dir.path(), net.clone(), net).unwrap();
        c.world.register(id(name), Arc::new(node.clone()));
        node.start();
        c.nodes.push(node);
        c._dirs.push(dir);
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_layouts_an_operator_key_signed_are_taken() {
    let key = OperatorKey::generate().unwrap();
    let c = cluster(&key);
    let a = c.node("a").clone();
    for n in ["a", "b", "c"] {
        a.stage_join(id(n), format!("sim:{n}")).await.unwrap();
    }
    // Unsigned: refused, with what to do.
    let e = a.apply(None).await.unwrap_err();
    assert!(e.contains("operator_keys") && e.contains("--key"), "{e}");
    assert_eq!(a.layout().current.version, 0);
    // Another key: refused too.
    let other = OperatorKey::generate().unwrap();
    let plan = a.plan().unwrap();
    let e = a.apply(Some(other.sign(&plan))).await.unwrap_err();
    assert!(e.contains("not in ring.operator_keys"), "{e}");
    // Signed by the operator: committed, and taken everywhere.
    let l = a.apply(Some(key.sign(&plan))).await.unwrap();
    assert_eq!(l.current.version, 1);
    c.wait("every node has version 1", || {
        c.nodes.iter().all(|n| n.layout().current.version == 1)
    })
    .await;

    // The rogue member commits a version of its own that drops a and b.
    let rogue = c.node("c");
    rogue.stage_leave(id("a")).await.unwrap();
    rogue.stage_leave(id("b")).await.unwrap();
    let l = rogue.apply(None).await.unwrap();
    assert_eq!(l.current.version, 2);
    assert_eq!(l.current.nodes.len(), 1);
    // It pushed it at once, and a and b pull layouts every 100 ms: give
    // them 2 s to take it (they must not).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in ["a", "b"] {
        let l = c.node(n).layout();
        assert_eq!(l.current.version, 1, "{n} took the rogue's layout");
        assert_eq!(l.current.nodes.len(), 3, "{n}");
        assert!(l.current.signature.is_some(), "{n}");
    }

    // A signature of a plan the staged changes moved away from is
    // refused; signing the new plan works.
    let stale = a.plan().unwrap();
    c.node("b")
        .stage_quorum(super::layout::Quorum { n: 3, r: 2, w: 3 })
        .await
        .unwrap();
    c.wait("a sees b's staged quorum", || {
        c.node("a").layout().staged.quorum.is_some()
    })
    .await;
    let e = a.apply(Some(key.sign(&stale))).await.unwrap_err();
    assert!(e.contains("does not match") && e.contains("again"), "{e}");
    let fresh = a.plan().unwrap();
    let l = a.apply(Some(key.sign(&fresh))).await.unwrap();
    assert_eq!(l.current.w, 3);
    c.wait("b has the operator's version 2", || {
        let l = c.node("b").layout();
        l.current.version == 2 && l.current.w == 3
    })
    .await;
}
