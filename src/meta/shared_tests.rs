//! SharedStore among three ring members on the simulated network (two
//! hosts and an arbiter): views reach the other host before the failing
//! call returns, path writes owed during a partition are published before
//! anyone resyncs, and the resync lease is exclusive.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tempfile::TempDir;

use super::{
    EmbeddedStore, MetaStore, PathWrite, ReplicaId, ReplicaRecord, ReplicaState, SharedStore,
};
use crate::ring::NodeId;
use crate::ring::node::{Node, NodeConfig};
use crate::ring::sim::World;

struct Hosts {
    rt: tokio::runtime::Runtime,
    world: Arc<World>,
    a: Arc<SharedStore>,
    b: Arc<SharedStore>,
    ids: Vec<ReplicaId>,
    _dirs: Vec<TempDir>,
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn hosts() -> Hosts {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = World::new();
    let ids = vec![ReplicaId::random(), ReplicaId::random()];
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for name in ["arb", "hosta", "hostb"] {
        let dir = TempDir::new().unwrap();
        let net = world.net(&id(name));
        let mut cfg = NodeConfig::new(id(name));
        cfg.hint_interval = Some(Duration::from_millis(100));
        cfg.anti_entropy_interval = Some(Duration::from_millis(300));
        cfg.layout_interval = Duration::from_millis(100);
        cfg.read_lease = Duration::from_secs(1);
        let node = Node::open(cfg, &dir.path().join("ring"), net.clone(), net).unwrap();
        world.register(id(name), Arc::new(node.clone()));
        {
            let _g = rt.enter();
            node.start();
        }
        nodes.push((node, dir));
    }
    rt.block_on(async {
        for name in ["arb", "hosta", "hostb"] {
            nodes[0]
                .0
                .stage_join(id(name), format!("sim:{name}"))
                .await
                .unwrap();
        }
        nodes[0].0.apply(None).await.unwrap();
    });
    let mut stores = Vec::new();
    for (node, dir) in nodes.into_iter().skip(1) {
        let local = EmbeddedStore::open(&dir.path().join("local")).unwrap();
        stores.push(SharedStore::new(
            local,
            node,
            rt.handle().clone(),
            &ids,
            Duration::from_millis(500),
            Duration::from_secs(60),
            Duration::from_secs(1),
        ));
        dirs.push(dir);
    }
    let b = stores.pop().unwrap();
    let a = stores.pop().unwrap();
    let start = std::time::Instant::now();
    while a.node_layout_version() == 0 || b.node_layout_version() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "layout never arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Hosts {
        rt,
        world,
        a,
        b,
        ids,
        _dirs: dirs,
    }
}

fn record(id: ReplicaId, state: ReplicaState) -> ReplicaRecord {
    ReplicaRecord {
        id,
        path: "/r".into(),
        state,
        since: SystemTime::now(),
        cause: "test".into(),
    }
}

#[test]
fn a_failure_seen_by_one_host_reaches_the_other_before_the_call_returns() {
    let h = hosts();
    assert!(h.b.stale_elsewhere(&h.ids[1]).is_empty());
    h.a.put_replica(&record(h.ids[1], ReplicaState::Failed))
        .unwrap();
    // No polling: the nudge delivered it.
    let stale = h.b.stale_elsewhere(&h.ids[1]);
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(stale[0].0, "hosta");
    assert!(h.b.stale_elsewhere(&h.ids[0]).is_empty());
    h.a.put_replica(&record(h.ids[1], ReplicaState::InSync))
        .unwrap();
    assert!(h.b.stale_elsewhere(&h.ids[1]).is_empty());
    // And polling finds the same.
    h.a.put_replica(&record(h.ids[0], ReplicaState::Failed))
        .unwrap();
    h.b.refresh(&h.ids);
    assert_eq!(h.b.stale_elsewhere(&h.ids[0]).len(), 1);
    drop(h.rt);
}

#[test]
fn writes_owed_during_a_partition_are_published_before_a_resync() {
    let h = hosts();
    // b is cut off from everyone: its view and path write cannot reach a
    // quorum and wait in its outbox.
    h.world.partition(&[id("hostb")], &[id("hosta"), id("arb")]);
    h.b.put_replica(&record(h.ids[0], ReplicaState::Failed))
        .unwrap();
    h.b.mark_missed(b"doc", &h.ids[0]).unwrap();
    h.b.record_write(b"doc", &[h.ids[0]], false);
    h.a.put_replica(&record(h.ids[1], ReplicaState::Failed))
        .unwrap();
    h.a.mark_missed(b"doc", &h.ids[1]).unwrap();
    h.a.record_write(b"doc", &[h.ids[1]], true);
    h.a.refresh(&h.ids);
    assert!(
        h.a.stale_elsewhere(&h.ids[0]).is_empty(),
        "a cannot know yet"
    );
    // While b is unreachable (and not yet long gone), nobody resyncs.
    assert!(!h.a.take_lease(Duration::from_secs(30)));
    h.world.heal();
    // Taking the lease makes b publish first.
    assert!(h.a.take_lease(Duration::from_secs(30)));
    let writes = h.a.path_writes(b"doc");
    let hosts: Vec<&str> = writes.iter().map(|w: &PathWrite| w.host.as_str()).collect();
    assert_eq!(hosts, vec!["hosta", "hostb"], "{writes:?}");
    // Each says whether its host acknowledged the change.
    assert!(writes[0].acked && !writes[1].acked, "{writes:?}");
    // The lease is exclusive until released.
    assert!(!h.b.take_lease(Duration::from_secs(30)));
    h.a.release_lease();
    assert!(h.b.take_lease(Duration::from_secs(30)));
    h.a.path_settled(b"doc");
    assert!(h.b.path_writes(b"doc").is_empty());
    drop(h.rt);
}

#[test]
fn two_hosts_racing_for_the_lease_never_both_hold_it() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let h = hosts();
    let holders = Arc::new(AtomicU32::new(0));
    let wins = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = [h.a.clone(), h.b.clone()]
        .into_iter()
        .map(|s| {
            let (holders, wins) = (holders.clone(), wins.clone());
            std::thread::spawn(move || {
                for _ in 0..15 {
                    if s.take_lease(Duration::from_secs(30)) {
                        let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                        assert_eq!(now, 1, "two hosts hold the lease");
                        wins.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        holders.fetch_sub(1, Ordering::SeqCst);
                        s.release_lease();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(wins.load(Ordering::SeqCst) > 0, "nobody ever got the lease");
    drop(h.rt);
}

/// Issue 10: views are ordered by their number, not their time: a host
/// whose clock was stepped back an hour still replaces its "in sync" view
/// with its later "failed" one, by nudge and by poll.
#[test]
fn a_host_whose_clock_steps_back_an_hour_keeps_its_views() {
    let h = hosts();
    h.a.put_replica(&record(h.ids[1], ReplicaState::InSync))
        .unwrap();
    let mut failed = record(h.ids[1], ReplicaState::Failed);
    failed.since = SystemTime::now() - Duration::from_secs(3600);
    h.a.put_replica(&failed).unwrap();
    assert_eq!(h.b.stale_elsewhere(&h.ids[1]).len(), 1, "by nudge");
    h.b.refresh(&h.ids);
    assert_eq!(h.b.stale_elsewhere(&h.ids[1]).len(), 1, "by poll");
    // And back in sync, an hour further back still.
    let mut back = record(h.ids[1], ReplicaState::InSync);
    back.since = SystemTime::now() - Duration::from_secs(7200);
    h.a.put_replica(&back).unwrap();
    assert!(h.b.stale_elsewhere(&h.ids[1]).is_empty());
    h.b.refresh(&h.ids);
    assert!(h.b.stale_elsewhere(&h.ids[1]).is_empty());
    drop(h.rt);
}

#[test]
fn of_sibling_views_the_higher_number_wins_whatever_its_time() {
    let view = |state: &str, since: u64, seq: u64| {
        serde_json::to_vec(&super::HostView {
            state: state.into(),
            since,
            cause: String::new(),
            seq,
        })
        .unwrap()
    };
    let later_but_older_clock = view("failed", 1_000, 7);
    let earlier = view("in-sync", 9_000_000, 6);
    let latest = super::shared::latest_view(&[earlier.clone(), later_but_older_clock.clone()]);
    assert_eq!(latest.map(|v| v.state), Some("failed".to_string()));
    // Views of a version without numbers (0) lose to any numbered one and
    // are ordered by time among themselves.
    let old_a = view("failed", 5_000, 0);
    let old_b = view("in-sync", 6_000, 0);
    let latest = super::shared::latest_view(&[old_a.clone(), old_b.clone()]);
    assert_eq!(latest.map(|v| v.state), Some("in-sync".to_string()));
    let latest = super::shared::latest_view(&[old_b, view("failed", 1, 1)]);
    assert_eq!(latest.map(|v| v.state), Some("failed".to_string()));
}

/// The read lease on the simulated ring: granted by a majority, renewed;
/// a host cut off cannot renew it, and a host that takes a replica out
/// of service while the other cannot be told returns only once the cut-off
/// host's lease is over (its reads answer EIO from then on).
#[test]
fn a_failure_is_acknowledged_only_once_a_cut_off_host_lease_is_over() {
    let h = hosts();
    // With a layout, no read before the first grant.
    assert_eq!(h.b.read_lease_until(false), None);
    // Connected: both hold a lease; a failure costs no wait (the nudge is
    // answered).
    for s in [&h.a, &h.b] {
        let e = s.renew_read_lease();
        assert!(e.is_some(), "a majority grants it");
        s.settle_lease(e, s.refresh(&h.ids));
        assert!(s.read_lease().current());
    }
    let t = std::time::Instant::now();
    h.a.put_replica(&record(h.ids[0], ReplicaState::Failed))
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "no lease to wait for: {:?}",
        t.elapsed()
    );
    assert_eq!(h.b.stale_elsewhere(&h.ids[0]).len(), 1);
    // b renews just before the cut; a must wait it out.
    let e = h.b.renew_read_lease();
    h.b.settle_lease(e, h.b.refresh(&h.ids));
    assert!(h.b.read_lease().current());
    h.world.partition(&[id("hostb")], &[id("hosta"), id("arb")]);
    assert_eq!(h.b.renew_read_lease(), None, "no majority for b");
    h.b.settle_lease(None, false);
    h.a.put_replica(&record(h.ids[1], ReplicaState::Failed))
        .unwrap();
    assert!(
        !h.b.read_lease().current(),
        "a acknowledged while b still held its lease"
    );
    assert!(
        h.b.stale_elsewhere(&h.ids[1]).is_empty(),
        "b could not be told"
    );
    // Healed: b's next lease comes with a's view.
    h.world.heal();
    let e = h.b.renew_read_lease();
    assert!(e.is_some());
    h.b.settle_lease(e, h.b.refresh(&h.ids));
    assert!(h.b.read_lease().current());
    assert_eq!(h.b.stale_elsewhere(&h.ids[1]).len(), 1);
    drop(h.rt);
}

/// Issue 10: the resync lease is timed on the reading host's monotonic
/// clock from when it first reads a renewal, never by comparing the
/// holder's wall clock with its own: a holder whose clock is an hour behind
/// keeps its lease for its term, and one whose clock is an hour ahead,
/// once dead, keeps nobody out for an hour.
#[test]
fn the_resync_lease_is_timed_by_the_reader_whatever_the_holders_clock() {
    use std::time::{Instant, UNIX_EPOCH};
    let h = hosts();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let hour = 3_600_000;
    let term = Duration::from_secs(2);
    assert!(h.a.put_lease_record(now - hour, term));
    let start = Instant::now();
    assert!(
        !h.b.take_lease(Duration::from_secs(30)),
        "a fresh lease from a clock an hour behind was taken as over"
    );
    // Not renewed (its holder died): over once its term has passed since
    // b first read it, not before.
    while !h.b.take_lease(Duration::from_secs(30)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the lease never ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        start.elapsed() >= term,
        "taken over before the holder's term was out"
    );
    h.b.release_lease();
    assert!(h.a.put_lease_record(now + hour, Duration::from_secs(1)));
    assert!(!h.b.take_lease(Duration::from_secs(30)));
    let start = Instant::now();
    while !h.b.take_lease(Duration::from_secs(30)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a dead holder whose clock is an hour ahead kept the lease"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(h.rt);
}

/// The holder's own term: counted on its clock from the start of its last
/// renewal that reached the ring, over without one (its copies stop then,
/// before another host may begin), and over at once when it gives it back.
#[test]
fn the_resync_lease_holder_stops_when_its_own_term_runs_out() {
    let h = hosts();
    let term = Duration::from_millis(1500);
    assert!(h.a.take_lease(term));
    assert!(h.a.resync_lease_current());
    std::thread::sleep(term + Duration::from_millis(200));
    assert!(
        !h.a.resync_lease_current(),
        "the holder still counts a lease it has not renewed for its whole term"
    );
    // Renewed: current again; given back: over.
    assert!(h.a.take_lease(term));
    assert!(h.a.resync_lease_current());
    h.a.release_lease();
    assert!(!h.a.resync_lease_current());
    drop(h.rt);
}

#[test]
fn a_hosts_latest_path_record_says_whether_it_acknowledged_the_change() {
    let h = hosts();
    h.a.record_write(b"doc", &[h.ids[1]], false);
    // The same answer again: nothing new to record.
    h.a.record_write(b"doc", &[h.ids[1]], false);
    h.a.gather();
    assert_eq!(h.b.path_writes(b"doc").len(), 1);
    // Acknowledged now: recorded again, later in this host's order.
    h.a.record_write(b"doc", &[h.ids[1]], true);
    h.a.gather();
    let writes = h.b.path_writes(b"doc");
    assert_eq!(writes.len(), 2, "{writes:?}");
    let latest = writes.iter().max_by_key(|w| w.n).unwrap();
    assert!(latest.acked, "{writes:?}");
    assert!(
        writes.iter().any(|w| !w.acked && w.n < latest.n),
        "{writes:?}"
    );
    drop(h.rt);
}
