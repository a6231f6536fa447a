//! Crash tests: a child process (this test binary, re-executed) writes to a
//! store without ever syncing and is killed with SIGKILL at a random point;
//! the parent reopens the store and checks that every write whose call had
//! returned is there, and that the session flag says the daemon crashed.
//!
//! The child runs a fixed sequence of operations and prints `DONE k` after
//! operation k returns. A model replays the sequence: after the kill, the
//! store must hold exactly the model's state after the last reported
//! operation, or after the one following it (which may have completed
//! without being reported).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use super::*;

/// Set in the child: the state directory to write into.
const CHILD_DIR: &str = "CHIRONFS_META_CRASH_DIR";
/// Set in the child: the index of the first operation to run.
const CHILD_START: &str = "CHIRONFS_META_CRASH_START";

const READY: &str = "CHIRON-READY";
const DONE: &str = "CHIRON-DONE ";

fn replica() -> ReplicaId {
    ReplicaId::from_bytes(*b"crash-test-repl!")
}

fn path(i: u64) -> Vec<u8> {
    format!("dir{}/file-{i}", i % 7).into_bytes()
}

fn replica_record(k: u64) -> ReplicaRecord {
    ReplicaRecord {
        id: replica(),
        path: PathBuf::from("/srv/b"),
        state: if k.is_multiple_of(2) {
            ReplicaState::Failed
        } else {
            ReplicaState::Resyncing
        },
        since: UNIX_EPOCH + Duration::from_secs(k),
        cause: format!("operation {k}"),
    }
}

/// What the store holds, as far as the test's operations touch it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Model {
    pending: BTreeSet<Vec<u8>>,
    missed: BTreeSet<Vec<u8>>,
    cursor: Option<Vec<u8>>,
    record: Option<ReplicaRecord>,
}

impl Model {
    /// What `self` lacks and has in excess compared with `want`, readably.
    fn diff(&self, want: &Model) -> String {
        let show = |set: &BTreeSet<Vec<u8>>, other: &BTreeSet<Vec<u8>>| {
            set.difference(other)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
        };
        format!(
            "pending lacks {:?} has extra {:?}; missed lacks {:?} has extra {:?}; \
             cursor {:?} want {:?}; record cause {:?} want {:?}",
            show(&want.pending, &self.pending),
            show(&self.pending, &want.pending),
            show(&want.missed, &self.missed),
            show(&self.missed, &want.missed),
            self.cursor.as_deref().map(String::from_utf8_lossy),
            want.cursor.as_deref().map(String::from_utf8_lossy),
            self.record.as_ref().map(|r| &r.cause),
            want.record.as_ref().map(|r| &r.cause),
        )
    }
}

/// Operation k of the sequence, applied to the store or to the model. Every
/// operation is idempotent, so a child may start again at an operation
/// that its killed predecessor possibly completed.
enum Target<'a> {
    Store(&'a EmbeddedStore),
    Model(&'a mut Model),
}

fn apply(k: u64, target: Target<'_>) {
    let i = k / 4;
    let p = path(i);
    match target {
        Target::Store(s) => match k % 4 {
            0 => s.mark_pending(&p).unwrap(),
            1 => s.mark_missed(&p, &replica()).unwrap(),
            2 if i.is_multiple_of(3) => s.clear_pending(&p).unwrap(),
            2 => s.set_cursor(&replica(), Some(p)).unwrap(),
            _ if i.is_multiple_of(5) => s.clear_missed(&p, &replica()).unwrap(),
            _ => s.put_replica(&replica_record(k)).unwrap(),
        },
        Target::Model(m) => match k % 4 {
            0 => drop(m.pending.insert(p)),
            1 => drop(m.missed.insert(p)),
            2 if i.is_multiple_of(3) => drop(m.pending.remove(&p)),
            2 => m.cursor = Some(p),
            _ if i.is_multiple_of(5) => drop(m.missed.remove(&p)),
            _ => m.record = Some(replica_record(k)),
        },
    }
}

fn model_after(last: u64) -> Model {
    let mut m = Model::default();
    for k in 0..=last {
        apply(k, Target::Model(&mut m));
    }
    m
}

fn read_store(store: &EmbeddedStore) -> Model {
    Model {
        pending: store.pending().unwrap().into_iter().collect(),
        missed: store
            .missed(&replica(), None, usize::MAX)
            .unwrap()
            .into_iter()
            .collect(),
        cursor: store.cursor(&replica()).unwrap(),
        record: store.get_replica(&replica()).unwrap(),
    }
}

/// The child's body: runs only when re-executed by `kill_9_keeps_every_returned_write`.
#[test]
#[ignore]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let start: u64 = std::env::var(CHILD_START)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let store = EmbeddedStore::open(Path::new(&dir)).unwrap();
    store.open_session().unwrap();
    // Straight to fd 1 (not the test harness's capture), one line a write.
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{READY}").unwrap();
    out.flush().unwrap();
    for k in start.. {
        apply(k, Target::Store(&store));
        writeln!(out, "{DONE}{k}").unwrap();
        out.flush().unwrap();
    }
}

/// A small xorshift generator, seeded at random: kill points vary per run.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = u64::from_le_bytes(ReplicaId::random().as_bytes()[..8].try_into().unwrap());
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs a child from operation `start`, kills it after at least `ops`
/// reported operations, and returns the last reported operation.
fn run_and_kill(dir: &Path, start: u64, ops: u64) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "meta::crash_tests::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_START, start.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last = None;
    let mut ready = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.trim() == READY {
            ready = true;
            // The child holds the state directory now: a second opener is
            // told who holds it.
            match EmbeddedStore::open(dir) {
                Err(MetaError::Locked { pid, .. }) => assert_eq!(pid, Holder(Some(child.id()))),
                Err(e) => panic!("expected Locked, got {e}"),
                Ok(_) => panic!("opened a state directory held by a live child"),
            }
        } else if let Some(k) = line.strip_prefix(DONE) {
            let k: u64 = k.trim().parse().unwrap();
            last = Some(k);
            if k >= start + ops {
                break;
            }
        }
    }
    assert!(ready, "the child never opened the store");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Lines the child wrote before it died report operations that returned.
    for line in lines {
        if let Some(k) = line.unwrap().strip_prefix(DONE) {
            last = Some(k.trim().parse().unwrap());
        }
    }
    last.expect("the child reported no operation")
}

#[test]
fn kill_9_keeps_every_returned_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new();
    let mut start = 0;
    for round in 0..4 {
        let ops = 50 + rng.below(3000);
        let last = run_and_kill(dir.path(), start, ops);
        let store = EmbeddedStore::open(dir.path()).expect("reopen after kill -9");
        let verdict = store.open_session().unwrap();
        if super::session::boot_id().is_some() {
            assert_eq!(verdict, PreviousShutdown::DaemonCrash, "round {round}");
        }
        let found = read_store(&store);
        println!("round {round}: killed after operation {last}");
        let reported = model_after(last);
        let next = model_after(last + 1);
        assert!(
            found == reported || found == next,
            "round {round}: killed after operation {last}: the store's {}\n\
             (or, counting operation {}: {})",
            found.diff(&reported),
            last + 1,
            found.diff(&next),
        );
        // The missed index agrees with the per-replica marks.
        for p in &found.missed {
            assert!(store.any_missed(p).unwrap());
        }
        assert_eq!(
            store.missed_count(&replica()).unwrap(),
            found.missed.len() as u64
        );
        // Next round: start again at the operation that may or may not have
        // completed (operations are idempotent).
        start = last + 1;
    }
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.open_session().unwrap();
        store.close_session().unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.open_session().unwrap(), PreviousShutdown::Clean);
}
