//! [`MetaStore`] on one host, on the fjall LSM engine.
//!
//! Durability: fjall appends every write to its journal and, with
//! `manual_journal_persist(false)`, flushes the journal's buffer to the OS
//! (`PersistMode::Buffer`, a write(2)) before the call returns: the write
//! survives a kill -9 of the daemon without an fsync. `sync` persists the
//! journal with `PersistMode::SyncAll` (fsync); sealed journals and flushed
//! segments are fsynced by fjall itself when they are written. A torn
//! journal tail after a machine crash is cut at the last whole batch.
//!
//! Layout: see `keys`. On disk, `<state_dir>/lock` (see `lock`) and
//! `<state_dir>/db/` (fjall's keyspace).

use std::collections::HashMap;
use std::ops::Bound;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use parking_lot::Mutex;

use super::error::MetaError;
use super::id::ReplicaId;
use super::keys::{self, check_path};
use super::lock::StateLock;
use super::record::ReplicaRecord;
use super::session::{self, Session};
use super::{MetaStore, PreviousShutdown, Result};

/// Name of the engine's directory inside the state directory.
const DB_DIR: &str = "db";

/// The store is small (marks and records), and the machine is shared with
/// the replicas' I/O: one background worker of each kind, small buffers.
const CACHE_BYTES: u64 = 8 << 20;
const MEMTABLE_BYTES: u32 = 4 << 20;
const WRITE_BUFFER_BYTES: u64 = 32 << 20;
/// fjall's floor is 24 MiB (one journal is at least 16 MiB).
const JOURNAL_BYTES: u64 = 64 << 20;

/// A ring write owed: key and value (`None`: a deletion).
pub type OwedWrite = (Vec<u8>, Option<Vec<u8>>);

pub struct EmbeddedStore {
    // Field order is drop order: the engine closes (its background threads
    // joined) before the lock is released.
    replicas: PartitionHandle,
    pending: PartitionHandle,
    missed: PartitionHandle,
    by_path: PartitionHandle,
    cursors: PartitionHandle,
    session: PartitionHandle,
    outbox: PartitionHandle,
    keyspace: Keyspace,
    /// Missed-mark count per replica, once counted. Invariant: while a
    /// replica is in the map, its count equals its marks in the store,
    /// because every change to missed marks happens under this mutex.
    missed_counts: Mutex<HashMap<ReplicaId, u64>>,
    /// Writes that returned (bumped after each), and the value of
    /// `written` that the last successful fsync covered: `sync` skips the
    /// fsync when no write happened since.
    written: AtomicU64,
    synced: AtomicU64,
    dir: PathBuf,
    _lock: StateLock,
}

impl EmbeddedStore {
    /// Opens (creating it, mode 0700, if needed) the store in `state_dir`,
    /// locked against any other opener until this value is dropped.
    pub fn open(state_dir: &Path) -> Result<EmbeddedStore> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| MetaError::CreateDir {
                path: state_dir.to_path_buf(),
                source,
            })?;
        let lock = StateLock::acquire(state_dir)?;
        let open_err = |e: fjall::Error| MetaError::Open {
            path: state_dir.to_path_buf(),
            source: e.into(),
        };
        let keyspace = fjall::Config::new(state_dir.join(DB_DIR))
            .manual_journal_persist(false)
            .flush_workers(1)
            .compaction_workers(1)
            .cache_size(CACHE_BYTES)
            .max_write_buffer_size(WRITE_BUFFER_BYTES)
            .max_journaling_size(JOURNAL_BYTES)
            .open()
            .map_err(open_err)?;
        let partition = |name: &str| {
            let opts = PartitionCreateOptions::default()
                .manual_journal_persist(false)
                .max_memtable_size(MEMTABLE_BYTES);
            keyspace.open_partition(name, opts).map_err(open_err)
        };
        Ok(EmbeddedStore {
            replicas: partition(keys::REPLICAS)?,
            pending: partition(keys::PENDING)?,
            missed: partition(keys::MISSED)?,
            by_path: partition(keys::MISSED_BY_PATH)?,
            cursors: partition(keys::CURSORS)?,
            session: partition(keys::SESSION)?,
            outbox: partition(keys::OUTBOX)?,
            keyspace,
            missed_counts: Mutex::new(HashMap::new()),
            // Writes of an earlier process may sit in the page cache: the
            // first `sync` always fsyncs.
            written: AtomicU64::new(1),
            synced: AtomicU64::new(0),
            dir: state_dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// Keeps a ring write this host owes (`None`: a deletion), so that it
    /// survives a crash of the daemon (see `shared`).
    pub fn owe(&self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let mut v = Vec::with_capacity(1 + value.map_or(0, <[u8]>::len));
        match value {
            None => v.push(0),
            Some(b) => {
                v.push(1);
                v.extend_from_slice(b);
            }
        }
        self.put("keep an owed ring write", &self.outbox, key, &v)
    }

    /// The owed ring write of `key` was made.
    pub fn paid(&self, key: &[u8]) -> Result<()> {
        self.delete("drop an owed ring write", &self.outbox, key)
    }

    /// Every ring write still owed.
    pub fn owed(&self) -> Result<Vec<OwedWrite>> {
        const STEP: &str = "list owed ring writes";
        let mut out = Vec::new();
        for item in self.outbox.iter() {
            let (k, v) = item.map_err(|e| MetaError::store(STEP, e))?;
            let value = match v.split_first() {
                Some((1, rest)) => Some(rest.to_vec()),
                Some((0, _)) => None,
                _ => {
                    return Err(MetaError::Corrupt {
                        step: STEP,
                        key: String::from_utf8_lossy(&k).into_owned(),
                    });
                }
            };
            out.push((k.to_vec(), value));
        }
        Ok(out)
    }

    /// The next number of this host's published replica views: above every
    /// number it returned before (it is durable before it is returned) and
    /// above `floor` (the highest one seen in the ring).
    pub fn next_view_seq(&self, floor: u64) -> Result<u64> {
        const STEP: &str = "number a replica view";
        let stored = self
            .session
            .get(keys::VIEW_SEQ_KEY)
            .map_err(|e| MetaError::store(STEP, e))?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map_or(0, u64::from_be_bytes);
        let next = stored.max(floor).saturating_add(1);
        self.put(STEP, &self.session, keys::VIEW_SEQ_KEY, &next.to_be_bytes())?;
        self.fsync(STEP)?;
        Ok(next)
    }

    /// The state directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Notes that a write returned, for `sync`.
    fn wrote(&self) {
        self.written.fetch_add(1, Ordering::AcqRel);
    }

    /// Writes `key` = `value` into `p`, for step `step`.
    fn put(&self, step: &'static str, p: &PartitionHandle, key: &[u8], value: &[u8]) -> Result<()> {
        p.insert(key, value)
            .map_err(|e| MetaError::store(step, e))?;
        self.wrote();
        Ok(())
    }

    fn delete(&self, step: &'static str, p: &PartitionHandle, key: &[u8]) -> Result<()> {
        p.remove(key).map_err(|e| MetaError::store(step, e))?;
        self.wrote();
        Ok(())
    }

    fn fsync(&self, step: &'static str) -> Result<()> {
        let target = self.written.load(Ordering::Acquire);
        self.keyspace
            .persist(PersistMode::SyncAll)
            .map_err(|e| MetaError::store(step, e))?;
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// Counts replica `id`'s marks in the store. Caller holds `missed_counts`.
    fn count_missed(&self, id: &ReplicaId) -> Result<u64> {
        let mut n = 0;
        for item in self.missed.prefix(id.as_bytes()) {
            item.map_err(|e| MetaError::store("count missed marks", e))?;
            n += 1;
        }
        Ok(n)
    }
}

/// The exclusive upper bound of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

impl MetaStore for EmbeddedStore {
    fn get_replica(&self, id: &ReplicaId) -> Result<Option<ReplicaRecord>> {
        const STEP: &str = "read replica record";
        let Some(value) = self
            .replicas
            .get(id.as_bytes())
            .map_err(|e| MetaError::store(STEP, e))?
        else {
            return Ok(None);
        };
        ReplicaRecord::decode(*id, &value)
            .map(Some)
            .ok_or_else(|| MetaError::Corrupt {
                step: STEP,
                key: id.to_string(),
            })
    }

    fn put_replica(&self, record: &ReplicaRecord) -> Result<()> {
        self.put(
            "write replica record",
            &self.replicas,
            record.id.as_bytes(),
            &record.encode(),
        )
    }

    fn list_replicas(&self) -> Result<Vec<ReplicaRecord>> {
        const STEP: &str = "list replica records";
        let mut out = Vec::new();
        for item in self.replicas.iter() {
            let (key, value) = item.map_err(|e| MetaError::store(STEP, e))?;
            let record = ReplicaId::from_prefix(&key)
                .filter(|_| key.len() == ReplicaId::LEN)
                .and_then(|id| ReplicaRecord::decode(id, &value))
                .ok_or_else(|| MetaError::Corrupt {
                    step: STEP,
                    key: keys::show(&key),
                })?;
            out.push(record);
        }
        Ok(out)
    }

    fn mark_pending(&self, path: &[u8]) -> Result<()> {
        const STEP: &str = "mark pending";
        check_path(STEP, path)?;
        self.put(STEP, &self.pending, &keys::pending(path), &[])
    }

    fn clear_pending(&self, path: &[u8]) -> Result<()> {
        const STEP: &str = "clear pending";
        check_path(STEP, path)?;
        self.delete(STEP, &self.pending, &keys::pending(path))
    }

    fn pending(&self) -> Result<Vec<Vec<u8>>> {
        const STEP: &str = "list pending";
        let mut out = Vec::new();
        for key in self.pending.keys() {
            let key = key.map_err(|e| MetaError::store(STEP, e))?;
            let path = keys::pending_path(&key).ok_or_else(|| MetaError::Corrupt {
                step: STEP,
                key: keys::show(&key),
            })?;
            out.push(path.to_vec());
        }
        Ok(out)
    }

    fn mark_missed(&self, path: &[u8], id: &ReplicaId) -> Result<()> {
        const STEP: &str = "mark missed";
        check_path(STEP, path)?;
        let key = keys::missed(id, path);
        let mut counts = self.missed_counts.lock();
        if self
            .missed
            .contains_key(&key)
            .map_err(|e| MetaError::store(STEP, e))?
        {
            return Ok(());
        }
        // One batch: the two keys reach the journal together or not at all.
        let mut batch = self.keyspace.batch();
        batch.insert(&self.missed, key, []);
        batch.insert(&self.by_path, keys::by_path(path, id), []);
        batch.commit().map_err(|e| MetaError::store(STEP, e))?;
        self.wrote();
        if let Some(n) = counts.get_mut(id) {
            *n += 1;
        }
        Ok(())
    }

    fn clear_missed(&self, path: &[u8], id: &ReplicaId) -> Result<()> {
        const STEP: &str = "clear missed";
        check_path(STEP, path)?;
        let key = keys::missed(id, path);
        let mut counts = self.missed_counts.lock();
        if !self
            .missed
            .contains_key(&key)
            .map_err(|e| MetaError::store(STEP, e))?
        {
            return Ok(());
        }
        let mut batch = self.keyspace.batch();
        batch.remove(&self.missed, key);
        batch.remove(&self.by_path, keys::by_path(path, id));
        batch.commit().map_err(|e| MetaError::store(STEP, e))?;
        self.wrote();
        if let Some(n) = counts.get_mut(id) {
            *n = n.saturating_sub(1);
        }
        Ok(())
    }

    fn is_missed(&self, path: &[u8], id: &ReplicaId) -> Result<bool> {
        const STEP: &str = "read missed mark";
        check_path(STEP, path)?;
        self.missed
            .contains_key(keys::missed(id, path))
            .map_err(|e| MetaError::store(STEP, e))
    }

    fn any_missed(&self, path: &[u8]) -> Result<bool> {
        const STEP: &str = "read missed marks of a path";
        check_path(STEP, path)?;
        match self.by_path.prefix(keys::by_path_prefix(path)).next() {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(MetaError::store(STEP, e)),
        }
    }

    fn missed(&self, id: &ReplicaId, after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>> {
        const STEP: &str = "list missed marks";
        let start = match after {
            Some(after) => {
                check_path(STEP, after)?;
                Bound::Excluded(keys::missed(id, after))
            }
            None => Bound::Included(id.as_bytes().to_vec()),
        };
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for item in self.missed.range((start, prefix_end(id.as_bytes()))) {
            let (key, _) = item.map_err(|e| MetaError::store(STEP, e))?;
            let Some(path) = key.strip_prefix(id.as_bytes()) else {
                break;
            };
            out.push(path.to_vec());
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn missed_count(&self, id: &ReplicaId) -> Result<u64> {
        let mut counts = self.missed_counts.lock();
        if let Some(n) = counts.get(id) {
            return Ok(*n);
        }
        let n = self.count_missed(id)?;
        counts.insert(*id, n);
        Ok(n)
    }

    fn set_cursor(&self, id: &ReplicaId, cursor: Option<Vec<u8>>) -> Result<()> {
        const STEP: &str = "write resync cursor";
        if let Some(c) = &cursor {
            check_path(STEP, c)?;
        }
        match cursor {
            Some(c) => self.put(STEP, &self.cursors, id.as_bytes(), &c),
            None => self.delete(STEP, &self.cursors, id.as_bytes()),
        }
    }

    fn cursor(&self, id: &ReplicaId) -> Result<Option<Vec<u8>>> {
        self.cursors
            .get(id.as_bytes())
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| MetaError::store("read resync cursor", e))
    }

    fn open_session(&self) -> Result<PreviousShutdown> {
        const STEP: &str = "open session";
        let previous = match self
            .session
            .get(keys::SESSION_KEY)
            .map_err(|e| MetaError::store(STEP, e))?
        {
            None => None,
            Some(value) => Some(Session::decode(&value).ok_or_else(|| MetaError::Corrupt {
                step: STEP,
                key: keys::show(keys::SESSION_KEY),
            })?),
        };
        let boot_id = session::boot_id();
        let verdict = session::judge(previous.as_ref(), boot_id.as_deref());
        let open = Session::Open { boot_id }.encode();
        self.put(STEP, &self.session, keys::SESSION_KEY, &open)?;
        // Durable, with every earlier write: a machine crash from here on
        // finds "open" under an older boot id and reports Unknown.
        self.fsync(STEP)?;
        Ok(verdict)
    }

    fn close_session(&self) -> Result<()> {
        const STEP: &str = "close session";
        // The marks first: "closed" must never reach the disk before them.
        self.fsync(STEP)?;
        self.put(
            STEP,
            &self.session,
            keys::SESSION_KEY,
            &Session::Closed.encode(),
        )?;
        self.fsync(STEP)
    }

    fn sync(&self) -> Result<()> {
        if self.synced.load(Ordering::Acquire) >= self.written.load(Ordering::Acquire) {
            return Ok(());
        }
        self.fsync("sync")
    }
}
