//! Unit tests of the store: every trait method, persistence, the lock, the
//! session flag. The crash tests are in `crash_tests`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::session::{self, Session};
use super::*;
use crate::errno::Errno;

fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(dir).expect("open store")
}

fn id(n: u8) -> ReplicaId {
    ReplicaId::from_bytes([n; 16])
}

fn record(id: ReplicaId, state: ReplicaState, cause: &str) -> ReplicaRecord {
    ReplicaRecord {
        id,
        path: PathBuf::from(format!("/srv/replica-{id}")),
        state,
        since: UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        cause: cause.to_string(),
    }
}

fn paths(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|p| p.as_bytes().to_vec()).collect()
}

#[test]
fn replica_id_displays_and_parses_as_uuid() {
    let bytes = [
        0x67, 0xe5, 0x50, 0x44, 0x10, 0xb1, 0x42, 0x6f, 0x92, 0x47, 0xbb, 0x68, 0x0e, 0x5f, 0xe0,
        0xc8,
    ];
    let id = ReplicaId::from_bytes(bytes);
    assert_eq!(id.to_string(), "67e55044-10b1-426f-9247-bb680e5fe0c8");
    assert_eq!("67e55044-10b1-426f-9247-bb680e5fe0c8\n".parse(), Ok(id));
    assert!("not-a-uuid".parse::<ReplicaId>().is_err());
    let a = ReplicaId::random();
    assert_ne!(a, ReplicaId::random());
    assert_eq!(a.to_string().parse(), Ok(a));
    assert_eq!(ReplicaId::from_prefix(&bytes[..15]), None);
}

#[test]
fn record_encoding_round_trips_and_rejects_malformed_values() {
    let r = record(id(1), ReplicaState::Resyncing, "write: EIO on a/b");
    let bytes = r.encode();
    assert_eq!(ReplicaRecord::decode(r.id, &bytes), Some(r.clone()));
    for cut in 0..bytes.len() {
        assert_eq!(
            ReplicaRecord::decode(r.id, &bytes[..cut]),
            None,
            "cut {cut}"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(ReplicaRecord::decode(r.id, &trailing), None);
    let mut bad_version = bytes.clone();
    bad_version[0] = 9;
    assert_eq!(ReplicaRecord::decode(r.id, &bad_version), None);
    let mut bad_state = bytes;
    bad_state[1] = 9;
    assert_eq!(ReplicaRecord::decode(r.id, &bad_state), None);
    for s in [
        ReplicaState::InSync,
        ReplicaState::Failed,
        ReplicaState::Resyncing,
        ReplicaState::Disabled,
    ] {
        let r = record(id(2), s, "");
        assert_eq!(ReplicaRecord::decode(r.id, &r.encode()), Some(r));
    }
}

#[test]
fn session_verdicts() {
    use PreviousShutdown::*;
    let open_in = |b: &str| Session::Open {
        boot_id: Some(b.to_string()),
    };
    assert_eq!(session::judge(None, Some("b1")), Unknown);
    assert_eq!(session::judge(Some(&Session::Closed), Some("b1")), Clean);
    assert_eq!(session::judge(Some(&Session::Closed), None), Clean);
    assert_eq!(
        session::judge(Some(&open_in("b1")), Some("b1")),
        DaemonCrash
    );
    assert_eq!(session::judge(Some(&open_in("b1")), Some("b2")), Unknown);
    assert_eq!(session::judge(Some(&open_in("b1")), None), Unknown);
    let no_boot = Session::Open { boot_id: None };
    assert_eq!(session::judge(Some(&no_boot), None), Unknown);
    for s in [open_in("b1"), no_boot, Session::Closed] {
        assert_eq!(Session::decode(&s.encode()), Some(s));
    }
    assert_eq!(Session::decode(&[1, 7]), None);
}

#[test]
fn replica_records_get_put_list() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.get_replica(&id(1)).unwrap(), None);
    assert!(store.list_replicas().unwrap().is_empty());
    let a = record(id(2), ReplicaState::InSync, "");
    let b = record(id(1), ReplicaState::Failed, "write a/b: EIO");
    store.put_replica(&a).unwrap();
    store.put_replica(&b).unwrap();
    assert_eq!(store.get_replica(&id(2)).unwrap(), Some(a.clone()));
    assert_eq!(store.list_replicas().unwrap(), vec![b.clone(), a.clone()]);
    let b2 = record(id(1), ReplicaState::Resyncing, "probe ok");
    store.put_replica(&b2).unwrap();
    assert_eq!(store.get_replica(&id(1)).unwrap(), Some(b2.clone()));
    assert_eq!(store.list_replicas().unwrap(), vec![b2, a]);
}

#[test]
fn pending_marks_are_a_set() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(store.pending().unwrap().is_empty());
    store.mark_pending(b"b/c").unwrap();
    store.mark_pending(b"a").unwrap();
    store.mark_pending(b"a").unwrap();
    store.mark_pending(b"").unwrap(); // the root
    assert_eq!(store.pending().unwrap(), paths(&["", "a", "b/c"]));
    store.clear_pending(b"a").unwrap();
    store.clear_pending(b"never-marked").unwrap();
    assert_eq!(store.pending().unwrap(), paths(&["", "b/c"]));
    store.mark_pending(b"a").unwrap();
    assert_eq!(store.pending().unwrap(), paths(&["", "a", "b/c"]));
}

#[test]
fn missed_marks_per_replica_and_per_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (id(1), id(2));
    store.mark_missed(b"d/f", &a).unwrap();
    store.mark_missed(b"d/f", &a).unwrap();
    assert!(store.is_missed(b"d/f", &a).unwrap());
    assert!(!store.is_missed(b"d/f", &b).unwrap());
    assert!(store.any_missed(b"d/f").unwrap());
    // Only that path: not its parent, a descendant, or a longer sibling.
    for other in [&b"d"[..], b"d/f/g", b"d/fg", b"d/f.", b""] {
        assert!(!store.any_missed(other).unwrap(), "{other:?}");
    }
    store.mark_missed(b"d/f", &b).unwrap();
    store.clear_missed(b"d/f", &a).unwrap();
    assert!(!store.is_missed(b"d/f", &a).unwrap());
    assert!(store.any_missed(b"d/f").unwrap());
    store.clear_missed(b"d/f", &b).unwrap();
    store.clear_missed(b"d/f", &b).unwrap();
    assert!(!store.any_missed(b"d/f").unwrap());
    store.mark_missed(b"", &a).unwrap();
    assert!(store.any_missed(b"").unwrap());
    assert!(store.is_missed(b"", &a).unwrap());
}

#[test]
fn missed_pages_in_path_order_per_replica() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Neighbouring ids, and one of all 0xff bytes (no prefix successor).
    let (a, b, top) = (id(1), id(2), id(0xff));
    let mine = ["a", "a/b", "a/b/c", "a0", "b", "z/y"];
    for p in mine.iter().rev() {
        store.mark_missed(p.as_bytes(), &a).unwrap();
    }
    store.mark_missed(b"a/x", &b).unwrap();
    store.mark_missed(b"0", &b).unwrap();
    store.mark_missed(b"top", &top).unwrap();
    store.mark_missed(b"top/2", &top).unwrap();

    assert_eq!(store.missed(&a, None, 100).unwrap(), paths(&mine));
    assert_eq!(store.missed(&a, None, 2).unwrap(), paths(&["a", "a/b"]));
    assert_eq!(
        store.missed(&a, Some(b"a/b"), 3).unwrap(),
        paths(&["a/b/c", "a0", "b"])
    );
    // `after` need not be a marked path.
    assert_eq!(
        store.missed(&a, Some(b"a/bb"), 100).unwrap(),
        paths(&["a0", "b", "z/y"])
    );
    assert!(store.missed(&a, Some(b"z/y"), 100).unwrap().is_empty());
    assert!(store.missed(&a, None, 0).unwrap().is_empty());
    assert_eq!(store.missed(&b, None, 100).unwrap(), paths(&["0", "a/x"]));
    assert_eq!(
        store.missed(&top, None, 100).unwrap(),
        paths(&["top", "top/2"])
    );
    assert!(store.missed(&id(3), None, 100).unwrap().is_empty());

    // Paging through everything one at a time visits each mark once.
    let mut seen = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.missed(&a, after.as_deref(), 1).unwrap();
        let Some(last) = page.last().cloned() else {
            break;
        };
        seen.extend(page);
        after = Some(last);
    }
    assert_eq!(seen, paths(&mine));
}

#[test]
fn missed_count_follows_marks() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (id(1), id(2));
    {
        let store = open(dir.path());
        store.mark_missed(b"x", &a).unwrap(); // before the first count
        assert_eq!(store.missed_count(&a).unwrap(), 1);
        assert_eq!(store.missed_count(&b).unwrap(), 0);
        store.mark_missed(b"y", &a).unwrap();
        store.mark_missed(b"y", &a).unwrap();
        store.mark_missed(b"y", &b).unwrap();
        assert_eq!(store.missed_count(&a).unwrap(), 2);
        assert_eq!(store.missed_count(&b).unwrap(), 1);
        store.clear_missed(b"x", &a).unwrap();
        store.clear_missed(b"x", &a).unwrap();
        store.clear_missed(b"never", &a).unwrap();
        assert_eq!(store.missed_count(&a).unwrap(), 1);
        store.mark_missed(b"z", &a).unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.missed_count(&a).unwrap(), 2);
    assert_eq!(store.missed_count(&b).unwrap(), 1);
}

#[test]
fn cursors_set_get_clear() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.cursor(&id(1)).unwrap(), None);
    store.set_cursor(&id(1), Some(b"a/b".to_vec())).unwrap();
    store.set_cursor(&id(2), Some(Vec::new())).unwrap();
    assert_eq!(store.cursor(&id(1)).unwrap(), Some(b"a/b".to_vec()));
    assert_eq!(store.cursor(&id(2)).unwrap(), Some(Vec::new()));
    store.set_cursor(&id(1), Some(b"c".to_vec())).unwrap();
    assert_eq!(store.cursor(&id(1)).unwrap(), Some(b"c".to_vec()));
    store.set_cursor(&id(1), None).unwrap();
    store.set_cursor(&id(3), None).unwrap();
    assert_eq!(store.cursor(&id(1)).unwrap(), None);
    assert_eq!(store.cursor(&id(2)).unwrap(), Some(Vec::new()));
}

#[test]
fn paths_the_keys_cannot_hold_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let long = vec![b'x'; 65_001];
    let max = vec![b'x'; 65_000];
    for bad in [&b"a\0b"[..], &long] {
        assert!(matches!(
            store.mark_pending(bad),
            Err(MetaError::BadPath { .. })
        ));
        assert!(matches!(
            store.mark_missed(bad, &id(1)),
            Err(MetaError::BadPath { .. })
        ));
        assert!(matches!(
            store.any_missed(bad),
            Err(MetaError::BadPath { .. })
        ));
    }
    store.mark_pending(&max).unwrap();
    store.mark_missed(&max, &id(1)).unwrap();
    assert!(store.any_missed(&max).unwrap());
    assert_eq!(store.missed(&id(1), None, 1).unwrap(), vec![max]);
}

#[test]
fn everything_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let r = record(id(7), ReplicaState::Failed, "timeout after 10s: write d/f");
    {
        let store = open(dir.path());
        store.open_session().unwrap();
        store.put_replica(&r).unwrap();
        store.mark_pending(b"p/1").unwrap();
        store.mark_pending(b"p/2").unwrap();
        store.clear_pending(b"p/1").unwrap();
        store.mark_missed(b"m/1", &id(7)).unwrap();
        store.mark_missed(b"m/2", &id(7)).unwrap();
        store.clear_missed(b"m/1", &id(7)).unwrap();
        store.set_cursor(&id(7), Some(b"m/0".to_vec())).unwrap();
        store.sync().unwrap();
        store.sync().unwrap(); // nothing new: no fsync, still fine
    }
    let store = open(dir.path());
    assert_eq!(store.list_replicas().unwrap(), vec![r]);
    assert_eq!(store.pending().unwrap(), paths(&["p/2"]));
    assert_eq!(store.missed(&id(7), None, 10).unwrap(), paths(&["m/2"]));
    assert!(store.any_missed(b"m/2").unwrap());
    assert!(!store.any_missed(b"m/1").unwrap());
    assert_eq!(store.missed_count(&id(7)).unwrap(), 1);
    assert_eq!(store.cursor(&id(7)).unwrap(), Some(b"m/0".to_vec()));
}

#[test]
fn session_flag_tells_clean_from_crash() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        // A new store: nothing vouches for the replicas.
        assert_eq!(store.open_session().unwrap(), PreviousShutdown::Unknown);
        store.close_session().unwrap();
    }
    {
        let store = open(dir.path());
        assert_eq!(store.open_session().unwrap(), PreviousShutdown::Clean);
        store.mark_pending(b"x").unwrap();
        // Dropped without close_session: a daemon that died.
    }
    let store = open(dir.path());
    let expected = if session::boot_id().is_some() {
        PreviousShutdown::DaemonCrash
    } else {
        PreviousShutdown::Unknown
    };
    assert_eq!(store.open_session().unwrap(), expected);
    assert_eq!(store.pending().unwrap(), paths(&["x"]));
}

#[test]
fn second_open_of_a_state_dir_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    first.mark_pending(b"kept").unwrap();
    match EmbeddedStore::open(dir.path()) {
        Err(e @ MetaError::Locked { .. }) => {
            let MetaError::Locked { ref path, pid } = e else {
                unreachable!()
            };
            assert_eq!(path, dir.path());
            assert_eq!(pid, Holder(Some(std::process::id())));
            let msg = e.to_string();
            assert!(msg.contains("is in use by another chironfs"), "{msg}");
            assert!(
                msg.contains(&format!("pid {}", std::process::id())),
                "{msg}"
            );
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second store opened a locked state directory"),
    }
    drop(first);
    let second = open(dir.path());
    assert_eq!(second.pending().unwrap(), paths(&["kept"]));
}

#[test]
fn state_dir_is_created_private() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("var/lib/chironfs/fsname");
    let store = open(&state);
    assert_eq!(store.dir(), state);
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(state.join("lock").is_file());
}

#[test]
fn state_dir_that_cannot_be_created_names_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    match EmbeddedStore::open(&file.join("state")) {
        Err(e @ MetaError::CreateDir { .. }) => {
            assert!(e.to_string().starts_with("cannot create state directory"))
        }
        Err(e) => panic!("expected CreateDir, got {e}"),
        Ok(_) => panic!("opened a store under a regular file"),
    }
}

#[test]
fn store_errors_reach_applications_as_eio() {
    let e = MetaError::BadPath {
        step: "mark pending",
        reason: "contains a NUL byte",
    };
    assert_eq!(
        e.to_string(),
        "metadata store: mark pending: path cannot be stored (contains a NUL byte)"
    );
    assert_eq!(Errno::from(e), Errno::EIO);
}

#[test]
fn store_is_usable_from_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn MetaStore> = std::sync::Arc::new(open(dir.path()));
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let p = format!("t{t}/{i}");
                    store.mark_pending(p.as_bytes()).unwrap();
                    store.mark_missed(p.as_bytes(), &id(t)).unwrap();
                    store.clear_pending(p.as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(store.pending().unwrap().is_empty());
    for t in 0..4 {
        assert_eq!(store.missed_count(&id(t)).unwrap(), 200);
    }
}

/// Cost of the write-path calls. Run with
/// `cargo test --release --bin chironfs meta::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_mark_costs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    const N: usize = 100_000;
    let names: Vec<String> = (0..N)
        .map(|i| format!("home/user/project/src/file-{i:06}.rs"))
        .collect();
    let time = |what: &str, calls: usize, f: &mut dyn FnMut(usize)| {
        let start = Instant::now();
        for i in 0..calls {
            f(i);
        }
        let per = start.elapsed() / calls as u32;
        println!("{what}: {per:?} per iteration ({calls} iterations)");
    };
    time("mark_pending + clear_pending", N, &mut |i| {
        store.mark_pending(names[i].as_bytes()).unwrap();
        store.clear_pending(names[i].as_bytes()).unwrap();
    });
    time("mark_pending + clear_pending, same path", N, &mut |_| {
        store.mark_pending(b"hot/file").unwrap();
        store.clear_pending(b"hot/file").unwrap();
    });
    time("mark_missed (new)", N, &mut |i| {
        store.mark_missed(names[i].as_bytes(), &id(1)).unwrap();
    });
    time("mark_missed (already marked)", N, &mut |i| {
        store.mark_missed(names[i].as_bytes(), &id(1)).unwrap();
    });
    time("any_missed (hit)", N, &mut |i| {
        assert!(store.any_missed(names[i].as_bytes()).unwrap());
    });
    time("any_missed (miss)", N, &mut |i| {
        assert!(!store.any_missed(&names[i].as_bytes()[1..]).unwrap());
    });
    time("clear_missed", N, &mut |i| {
        store.clear_missed(names[i].as_bytes(), &id(1)).unwrap();
    });
    time("mark_pending + sync", 200, &mut |i| {
        store.mark_pending(names[i].as_bytes()).unwrap();
        store.sync().unwrap();
    });
    time("sync with nothing new", N, &mut |_| store.sync().unwrap());
}

#[test]
fn owed_ring_writes_survive_a_reopen_until_paid() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.owe(b"fs/x/path/a", Some(b"{\"host\":\"h\"}")).unwrap();
        s.owe(b"fs/x/path/b", None).unwrap();
        s.owe(b"fs/x/path/c", Some(b"")).unwrap();
        s.paid(b"fs/x/path/c").unwrap();
    }
    let s = open(dir.path());
    assert_eq!(
        s.owed().unwrap(),
        vec![
            (b"fs/x/path/a".to_vec(), Some(b"{\"host\":\"h\"}".to_vec())),
            (b"fs/x/path/b".to_vec(), None),
        ]
    );
}
