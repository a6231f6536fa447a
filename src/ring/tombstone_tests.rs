//! Deleted keys stay deleted (DESIGN.md section 7, tombstones): once a
//! tombstone is collected (purged), a late copy of what it deleted (read
//! repair, anti-entropy, a hint) is refused by the merge, purging drops the
//! hints it covers, and a node taken out of the layout and added back
//! later does not bring back what was deleted while it was away.

use tempfile::TempDir;

use super::NodeId;
use super::storage::Storage;
use super::tests::{Cluster, FAST, id, val};
use super::version::{Context, Dvv, Val};

/// A coordinator's write through `s`, with the context of what it holds.
fn write(s: &Storage, key: &[u8], value: Val) -> Dvv {
    let actor = s.actor().to_string();
    let (v, _) = s
        .update(key, |cur| {
            Dvv::new_write(&cur.context(), value).update(cur, &actor)
        })
        .unwrap();
    v
}

fn owners() -> Vec<NodeId> {
    vec![id("b"), id("c")]
}

#[test]
fn a_purged_key_refuses_what_its_tombstone_deleted() {
    let dir = TempDir::new().unwrap();
    let s = Storage::open(dir.path(), &id("a")).unwrap();
    let old = write(&s, b"k", val("old"));
    let tomb = write(&s, b"k", None);
    assert!(tomb.is_tombstone());
    assert!(s.purge(b"k", &tomb).unwrap());
    assert!(s.get(b"k").unwrap().is_none());
    // The value the tombstone deleted, arriving late: refused.
    let (_, changed, _) = s.merge(b"k", &old).unwrap();
    assert!(!changed, "a purged key took back its deleted value");
    assert!(s.get(b"k").unwrap().is_none());
    // So is the tombstone itself.
    let (_, changed, _) = s.merge(b"k", &tomb).unwrap();
    assert!(!changed);
    // A write made after the delete (its dot is newer) is kept, alone.
    let other = Storage::open(TempDir::new().unwrap().path(), &id("x")).unwrap();
    let newer = Dvv::new_write(&tomb.context(), val("new")).update(&tomb, &other.actor());
    let mixed = newer.sync(&old);
    let _ = s.merge(b"k", &mixed).unwrap();
    let got = s.get(b"k").unwrap().unwrap();
    assert_eq!(got.values(), vec![val("new")]);
}

#[test]
fn purging_drops_the_hints_the_tombstone_covers() {
    let dir = TempDir::new().unwrap();
    let s = Storage::open(dir.path(), &id("a")).unwrap();
    let old = write(&s, b"k", val("old"));
    let _ = s.hint(&id("b"), b"k", &old).unwrap();
    let tomb = write(&s, b"k", None);
    let _ = s.hint(&id("c"), b"k", &tomb).unwrap();
    assert!(s.purge(b"k", &tomb).unwrap());
    for o in owners() {
        assert!(
            s.hint_for(&o, b"k").unwrap().is_none(),
            "a hint for {o} outlived the purge"
        );
    }
    // A hint of the deleted value that comes after the purge is refused.
    let _ = s.hint(&id("b"), b"k", &old).unwrap();
    assert!(s.hint_for(&id("b"), b"k").unwrap().is_none());
    // A hint of a newer write survives the next purge of the key.
    let newer = write(&s, b"k", val("new"));
    let _ = s.hint(&id("c"), b"k", &newer).unwrap();
    let tomb2 = Dvv::new_write(&tomb.context(), None).update(&tomb, "x:1");
    assert!(!s.purge(b"k", &tomb2).unwrap(), "not what it holds");
    assert_eq!(
        s.hint_for(&id("c"), b"k").unwrap().map(|h| h.values()),
        Some(vec![val("new")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_back_does_not_bring_back_what_was_deleted_while_it_was_away() {
    let c = Cluster::new(&["a", "b", "c", "d"], FAST).await;
    let keys: Vec<String> = (0..30).map(|i| format!("gone{i}")).collect();
    for k in &keys {
        c.node("a")
            .put(k.as_bytes(), val("x"), &Context::new())
            .await
            .unwrap();
    }
    c.wait("every owner holds every key", || {
        keys.iter().all(|k| {
            c.owners(k.as_bytes())
                .iter()
                .all(|o| c.node(o).local(k.as_bytes()).is_some())
        })
    })
    .await;
    let held_by_d = keys
        .iter()
        .filter(|k| c.node("d").local(k.as_bytes()).is_some())
        .count();
    assert!(held_by_d > 0);
    // d leaves the layout (and keeps its store).
    c.node("a").stage_leave(id("d")).await.unwrap();
    c.node("a").apply(None).await.unwrap();
    c.wait("d's departure synced", || {
        ["a", "b", "c"].iter().all(|n| {
            let l = c.node(n).layout();
            l.current.version == 2 && l.old.is_none()
        })
    })
    .await;
    // Every key deleted, and its tombstone collected, while d is out.
    for k in &keys {
        let f = c.node("b").get(k.as_bytes()).await.unwrap();
        c.node("b")
            .delete(k.as_bytes(), &f.context())
            .await
            .unwrap();
    }
    c.wait("the tombstones collected", || {
        ["a", "b", "c"]
            .iter()
            .all(|n| keys.iter().all(|k| c.node(n).local(k.as_bytes()).is_none()))
    })
    .await;
    // d comes back.
    c.node("c")
        .stage_join(id("d"), "sim:d".into())
        .await
        .unwrap();
    c.node("c").apply(None).await.unwrap();
    c.wait("d's return synced", || {
        c.nodes.iter().all(|n| {
            let l = n.layout();
            l.current.version == 3 && l.old.is_none()
        })
    })
    .await;
    // A few anti-entropy rounds more.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    for k in &keys {
        for n in ["a", "b", "c", "d"] {
            let f = c.node(n).get(k.as_bytes()).await.unwrap();
            assert!(
                f.values().is_empty(),
                "{k}, deleted while d was away, is back through {n}: {:?}",
                f.values()
            );
        }
        assert!(
            c.node("d")
                .local(k.as_bytes())
                .is_none_or(|v| v.is_tombstone()),
            "d still holds {k}"
        );
    }
}
