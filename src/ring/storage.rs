//! One node's share of the ring, on fjall (the engine of the single-host
//! store), in `<dir>/ring/`, locked against a second opener.
//!
//! | partition | key                                   | value           |
//! |-----------|---------------------------------------|-----------------|
//! | `kv`      | ring partition (u16 BE) ++ key        | Dvv (postcard)  |
//! | `hints`   | len(owner) (u8) ++ owner ++ key       | Dvv (postcard)  |
//! | `sys`     | `layout.v4` (older: `layout_v1`)      | postcard        |
//! | `sys`     | `actor`, `shutdown`, `retired`        | see `epoch`     |
//! | `sys`     | `member_since`                        | u64 BE, see `membership` |
//! | `purged`  | as `kv`                               | the counters of a collected tombstone |
//!
//! `kv` keys start with the ring partition, so a partition is one range
//! scan (for Merkle trees and anti-entropy). Every change to one key goes
//! through a striped lock, so a read-merge-write is atomic per key.
//!
//! Durability: each write reaches the OS before the call returns (it
//! survives kill -9) and hands back a [`Ticket`]; a caller that
//! acknowledges the write to anyone first waits for it ([`Storage::durable`]),
//! which group-commits an fsync of the journal (`commit`). `close` is the
//! orderly end: everything synced, then the clean-shutdown flag. A store
//! opened without that flag takes a new actor epoch (`epoch`).

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use std::sync::Arc;

use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use parking_lot::{Mutex, RwLock};

use super::NodeId;
use super::commit::{GroupCommit, Ticket};
use super::epoch;
use super::hash::{self, Partition};
use super::layout::{LayoutHistory, Quorum};
use super::version::Dvv;
use crate::meta::lock::StateLock;

const STRIPES: usize = 64;

/// The layout, with N, R and W and an operator's signature in each
/// version, and the nodes' acknowledgements.
const LAYOUT: &str = "layout.v4";
/// A layout stored before versions carried a signature.
const LAYOUT_V3: &str = "layout.v3";
/// A layout stored before the acknowledgements were part of it.
const LAYOUT_V2: &str = "layout.v2";
/// A layout stored before N, R and W were (read once, replaced at the
/// next save).
const LAYOUT_V1: &str = "layout";
/// The layout version since which this node has been a member (u64 BE).
const MEMBER_SINCE: &str = "member_since";

#[derive(Debug, thiserror::Error)]
#[error("ring store: {step}: {reason}")]
pub struct StorageError {
    pub step: &'static str,
    pub reason: String,
}

pub(super) fn err(step: &'static str) -> impl Fn(fjall::Error) -> StorageError {
    move |e| StorageError {
        step,
        reason: e.to_string(),
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

pub struct Storage {
    kv: PartitionHandle,
    /// What a collected tombstone's clock had reached: a write to the key
    /// afterwards continues from there, so no dot is ever issued twice
    /// (a reused dot would let the old tombstone, still on a node that has
    /// not collected it, swallow the new write).
    purged: PartitionHandle,
    hints: PartitionHandle,
    sys: PartitionHandle,
    journal: Arc<Journal>,
    commit: GroupCommit,
    /// Set by `close`: writes are refused from then on. Every write holds
    /// it shared, so none lands between the last sync and the flag.
    closed: RwLock<bool>,
    stripes: Vec<Mutex<()>>,
    actor: RwLock<String>,
    node: NodeId,
    dice: super::Dice,
    _lock: StateLock,
}

/// What makes the store durable: fjall's journal.
struct Journal {
    keyspace: Keyspace,
    /// The active journal as far as the last completed sync covered it:
    /// what a power loss leaves (`power_loss_copy`).
    #[cfg(test)]
    durable: Mutex<Option<(std::path::PathBuf, Vec<u8>)>>,
    #[cfg(test)]
    dir: std::path::PathBuf,
}

impl Journal {
    /// Makes every write that returned before the call durable.
    fn persist(&self, mode: PersistMode) -> Result<()> {
        #[cfg(test)]
        let before = super::power_loss::active_journal(&self.dir);
        self.keyspace.persist(mode).map_err(err("sync"))?;
        #[cfg(test)]
        if let Some(j) = before {
            *self.durable.lock() = Some(j);
        }
        Ok(())
    }
}

fn kv_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(&hash::partition_of(key).to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn hint_key(owner: &NodeId, key: &[u8]) -> Vec<u8> {
    let o = owner.as_str().as_bytes();
    let mut k = Vec::with_capacity(1 + o.len() + key.len());
    // NodeIds are at most 64 bytes.
    k.push(o.len() as u8);
    k.extend_from_slice(o);
    k.extend_from_slice(key);
    k
}

fn decode(step: &'static str, bytes: &[u8]) -> Result<Dvv> {
    postcard::from_bytes(bytes).map_err(|e| StorageError {
        step,
        reason: format!("malformed stored version: {e}"),
    })
}

fn encode(v: &Dvv) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_stdvec(v).unwrap_or_default()
}

impl Storage {
    /// Opens (creating it, mode 0700) the store in `dir`. `node` names the
    /// node; the actor id that node's writes carry in version vectors is
    /// `node:EPOCH`, with an epoch drawn when the store is created and
    /// again whenever it was not closed cleanly (`epoch`), so no dot it
    /// issued before a crash, or before its store was wiped, is issued
    /// again.
    pub fn open(dir: &Path, node: &NodeId) -> Result<Storage> {
        Self::open_with(dir, node, false, super::Dice::os())
    }

    /// [`Storage::open`]; with `inline_sync`, writes are synced by their
    /// waiters rather than a `ring-sync` thread (`GroupCommit::inline`);
    /// actor epochs are drawn from `dice`.
    pub fn open_with(
        dir: &Path,
        node: &NodeId,
        inline_sync: bool,
        dice: super::Dice,
    ) -> Result<Storage> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StorageError {
                step: "create directory",
                reason: format!("{}: {e}", dir.display()),
            })?;
        let lock = StateLock::acquire(dir).map_err(|e| StorageError {
            step: "lock",
            reason: e.to_string(),
        })?;
        let keyspace = fjall::Config::new(dir.join("ring"))
            .manual_journal_persist(false)
            .flush_workers(1)
            .compaction_workers(1)
            .cache_size(8 << 20)
            .max_write_buffer_size(32 << 20)
            .max_journaling_size(64 << 20)
            .open()
            .map_err(err("open"))?;
        let open = |name: &str| {
            let opts = PartitionCreateOptions::default()
                .manual_journal_persist(false)
                .max_memtable_size(4 << 20);
            keyspace.open_partition(name, opts).map_err(err("open"))
        };
        let journal = Arc::new(Journal {
            keyspace: keyspace.clone(),
            #[cfg(test)]
            durable: Mutex::new(None),
            #[cfg(test)]
            dir: dir.to_path_buf(),
        });
        let sys = open("sys")?;
        let actor = epoch::begin(&sys, node, &dice)?;
        // The actor and the "open" flag are durable before any write that
        // could carry them.
        journal.persist(PersistMode::SyncAll)?;
        let j = journal.clone();
        let sync: super::commit::SyncFn =
            Box::new(move || j.persist(PersistMode::SyncData).map_err(|e| e.to_string()));
        let commit = if inline_sync {
            GroupCommit::inline(sync)
        } else {
            GroupCommit::start(sync).map_err(|e| StorageError {
                step: "start the sync thread",
                reason: e.to_string(),
            })?
        };
        Ok(Storage {
            kv: open("kv")?,
            purged: open("purged")?,
            hints: open("hints")?,
            sys,
            journal,
            commit,
            closed: RwLock::new(false),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            actor: RwLock::new(actor),
            node: node.clone(),
            dice,
            _lock: lock,
        })
    }

    /// The orderly end: refuses writes from now on, makes everything
    /// durable, then records the clean shutdown that lets the next open
    /// keep the actor epoch. Idempotent.
    pub fn close(&self) -> Result<()> {
        let mut closed = self.closed.write();
        if *closed {
            return Ok(());
        }
        *closed = true;
        self.journal.persist(PersistMode::SyncAll)?;
        self.commit.settle_all();
        self.commit.stop();
        epoch::end(&self.sys)?;
        self.journal.persist(PersistMode::SyncAll)
    }

    /// Shared hold on the store for one write; refused once closed.
    fn writing(&self) -> Result<parking_lot::RwLockReadGuard<'_, bool>> {
        let g = self.closed.read();
        if *g {
            return Err(StorageError {
                step: "write",
                reason: "the store is closed".into(),
            });
        }
        Ok(g)
    }

    /// Waits, without blocking the thread, until the write that gave
    /// `t` is durable. Call before acknowledging it.
    pub async fn durable(&self, t: Ticket) -> Result<()> {
        self.commit.wait(t).await.map_err(|reason| StorageError {
            step: "sync",
            reason,
        })
    }

    /// The actor id this node's coordinated writes carry.
    pub fn actor(&self) -> String {
        self.actor.read().clone()
    }

    fn stripe(&self, key: &[u8]) -> parking_lot::MutexGuard<'_, ()> {
        self.stripes[(hash::stable(key) % STRIPES as u64) as usize].lock()
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Dvv>> {
        match self.kv.get(kv_key(key)).map_err(err("read"))? {
            Some(b) => decode("read", &b).map(Some),
            None => Ok(None),
        }
    }

    /// Merges `incoming` into the stored version of `key`; returns the
    /// result, whether the store changed, and the ticket to wait for
    /// before saying the store holds it (also when nothing changed: what
    /// it holds may be another writer's change, not yet durable).
    ///
    /// A key whose tombstone was collected merges from what the tombstone
    /// had seen (its `purged` record): a late copy of a value it deleted
    /// (read repair, anti-entropy, a hint delivered) changes nothing.
    pub fn merge(&self, key: &[u8], incoming: &Dvv) -> Result<(Dvv, bool, Ticket)> {
        let _w = self.writing()?;
        let _g = self.stripe(key);
        let current = match self.get(key)? {
            Some(v) => v,
            None => self.purged(key)?.unwrap_or_default(),
        };
        let merged = current.sync(incoming);
        if merged == current {
            return Ok((merged, false, self.commit.latest()));
        }
        self.kv
            .insert(kv_key(key), encode(&merged))
            .map_err(err("write"))?;
        Ok((merged, true, self.commit.issue()))
    }

    /// The coordinator's step, atomic per key: `make` computes the new
    /// version from the stored one, which it replaces.
    pub fn update(&self, key: &[u8], make: impl FnOnce(&Dvv) -> Dvv) -> Result<(Dvv, Ticket)> {
        let _w = self.writing()?;
        let _g = self.stripe(key);
        let current = match self.get(key)? {
            Some(v) => v,
            None => self.purged(key)?.unwrap_or_default(),
        };
        let new = make(&current);
        self.kv
            .insert(kv_key(key), encode(&new))
            .map_err(err("write"))?;
        Ok((new, self.commit.issue()))
    }

    /// What the collected tombstone of `key` had seen, if it was purged.
    fn purged(&self, key: &[u8]) -> Result<Option<Dvv>> {
        match self.purged.get(kv_key(key)).map_err(err("read"))? {
            Some(b) => decode("read", &b).map(Some),
            None => Ok(None),
        }
    }

    /// Deletes `key` if it holds exactly `version`; true if it did. The
    /// hints it keeps on the key, for any owner (in the layout or not: a
    /// node added back gets its hints), lose what the tombstone deleted
    /// (a hint holding nothing newer is dropped), so no hint delivered
    /// later brings a deleted value back.
    pub fn purge(&self, key: &[u8], version: &Dvv) -> Result<bool> {
        let _w = self.writing()?;
        if !self.purge_key(key, version)? {
            return Ok(false);
        }
        // After the key's stripe is released (a hint's stripe may be the
        // same one): `hint` filters against the record from now on.
        for owner in self.hint_owners()? {
            let k = hint_key(&owner, key);
            let _g = self.stripe(&k);
            let Some(b) = self.hints.get(&k).map_err(err("read hint"))? else {
                continue;
            };
            let hint = decode("read hint", &b)?;
            match self.without_purged(key, &hint)? {
                None => self.hints.remove(&k).map_err(err("purge"))?,
                Some(kept) if kept != hint => {
                    self.hints.insert(&k, encode(&kept)).map_err(err("purge"))?;
                }
                Some(_) => {}
            }
        }
        Ok(true)
    }

    /// `v` without what the collected tombstone of `key` deleted; `None`
    /// if nothing is left.
    fn without_purged(&self, key: &[u8], v: &Dvv) -> Result<Option<Dvv>> {
        let Some(purged) = self.purged(key)? else {
            return Ok(Some(v.clone()));
        };
        let kept = purged.sync(v);
        Ok((!kept.values().is_empty()).then_some(kept))
    }

    fn purge_key(&self, key: &[u8], version: &Dvv) -> Result<bool> {
        let _g = self.stripe(key);
        if self.get(key)?.as_ref() != Some(version) {
            return Ok(false);
        }
        let counters = Dvv {
            entries: version
                .entries
                .iter()
                .map(|e| super::version::Entry {
                    actor: e.actor.clone(),
                    counter: e.counter,
                    values: Vec::new(),
                })
                .collect(),
            anonymous: Vec::new(),
        };
        self.purged
            .insert(kv_key(key), encode(&counters))
            .map_err(err("purge"))?;
        self.kv.remove(kv_key(key)).map_err(err("purge"))?;
        Ok(true)
    }

    /// Every key and version of ring partition `p`, in key order.
    pub fn scan(&self, p: Partition) -> Result<Vec<(Vec<u8>, Dvv)>> {
        let mut out = Vec::new();
        for item in self.kv.prefix(p.to_be_bytes()) {
            let (k, v) = item.map_err(err("scan"))?;
            out.push((k[2..].to_vec(), decode("scan", &v)?));
        }
        Ok(out)
    }

    /// How many keys this node holds.
    pub fn key_count(&self) -> Result<u64> {
        let mut n = 0;
        for item in self.kv.keys() {
            item.map_err(err("count"))?;
            n += 1;
        }
        Ok(n)
    }

    /// Keeps `version` of `key` for `owner`, which is down; the ticket
    /// says when the hint is durable.
    ///
    /// What a collected tombstone of the key deleted is left out: a hint
    /// holding nothing else is not kept.
    pub fn hint(&self, owner: &NodeId, key: &[u8], version: &Dvv) -> Result<Ticket> {
        let _w = self.writing()?;
        let k = hint_key(owner, key);
        let _g = self.stripe(&k);
        let current = match self.hints.get(&k).map_err(err("read hint"))? {
            Some(b) => decode("read hint", &b)?,
            None => Dvv::default(),
        };
        let Some(merged) = self.without_purged(key, &current.sync(version))? else {
            if self.hints.get(&k).map_err(err("read hint"))?.is_some() {
                self.hints.remove(&k).map_err(err("write hint"))?;
            }
            return Ok(self.commit.latest());
        };
        if merged == current {
            return Ok(self.commit.latest());
        }
        self.hints
            .insert(&k, encode(&merged))
            .map_err(err("write hint"))?;
        Ok(self.commit.issue())
    }

    /// The hint kept for `owner` on `key`.
    pub fn hint_for(&self, owner: &NodeId, key: &[u8]) -> Result<Option<Dvv>> {
        match self
            .hints
            .get(hint_key(owner, key))
            .map_err(err("read hint"))?
        {
            Some(b) => decode("read hint", &b).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` hints: (owner, key, version). Hints whose owner field
    /// does not parse (never written by this code) are skipped.
    pub fn hints(&self, limit: usize) -> Result<Vec<(NodeId, Vec<u8>, Dvv)>> {
        let mut out = Vec::new();
        for item in self.hints.iter() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(err("scan hints"))?;
            let len = k.first().copied().unwrap_or(0) as usize;
            let Some(owner) = k.get(1..1 + len) else {
                continue;
            };
            let Ok(owner) = NodeId::new(&String::from_utf8_lossy(owner)) else {
                continue;
            };
            out.push((owner, k[1 + len..].to_vec(), decode("scan hints", &v)?));
        }
        Ok(out)
    }

    /// Up to `limit` hints kept for `owner`: (key, version).
    pub fn hints_for(&self, owner: &NodeId, limit: usize) -> Result<Vec<(Vec<u8>, Dvv)>> {
        let prefix = hint_key(owner, b"");
        let mut out = Vec::new();
        for item in self.hints.prefix(&prefix).take(limit) {
            let (k, v) = item.map_err(err("scan hints"))?;
            out.push((k[prefix.len()..].to_vec(), decode("scan hints", &v)?));
        }
        Ok(out)
    }

    /// Every owner this node keeps hints for (one seek per owner).
    pub fn hint_owners(&self) -> Result<Vec<NodeId>> {
        let mut owners = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        while let Some(item) = self.hints.range(from.clone()..).next() {
            let (k, _) = item.map_err(err("scan hints"))?;
            let len = k.first().copied().unwrap_or(0) as usize;
            let Some(prefix) = k.get(..1 + len) else {
                break;
            };
            if let Ok(o) = NodeId::new(&String::from_utf8_lossy(&prefix[1..])) {
                owners.push(o);
            }
            // The first key past every key with this prefix.
            let mut next = prefix.to_vec();
            while next.last() == Some(&0xff) {
                next.pop();
            }
            match next.last_mut() {
                Some(b) => *b += 1,
                None => break,
            }
            from = next;
        }
        Ok(owners)
    }

    pub fn hint_count(&self) -> Result<u64> {
        let mut n = 0;
        for item in self.hints.keys() {
            item.map_err(err("count hints"))?;
            n += 1;
        }
        Ok(n)
    }

    /// Drops the hint for `owner` on `key` if it is still `delivered`.
    pub fn hint_delivered(&self, owner: &NodeId, key: &[u8], delivered: &Dvv) -> Result<()> {
        let _w = self.writing()?;
        let k = hint_key(owner, key);
        let _g = self.stripe(&k);
        if let Some(b) = self.hints.get(&k).map_err(err("read hint"))?
            && decode("read hint", &b)? == *delivered
        {
            self.hints.remove(&k).map_err(err("drop hint"))?;
        }
        Ok(())
    }

    /// The stored layout. One stored before N, R and W were part of the
    /// layout takes its R and W from `configured` (`layout_v1`).
    pub fn load_layout(&self, configured: Quorum) -> Result<Option<LayoutHistory>> {
        let bad = |reason: String| StorageError {
            step: "read layout",
            reason,
        };
        if let Some(b) = self.sys.get(LAYOUT).map_err(err("read layout"))? {
            return postcard::from_bytes(&b)
                .map(Some)
                .map_err(|e| bad(format!("malformed stored layout: {e}")));
        }
        if let Some(b) = self.sys.get(LAYOUT_V3).map_err(err("read layout"))? {
            return super::layout_v1::decode_v3(&b).map(Some).map_err(bad);
        }
        if let Some(b) = self.sys.get(LAYOUT_V2).map_err(err("read layout"))? {
            return super::layout_v1::decode_v2(&b).map(Some).map_err(bad);
        }
        match self.sys.get(LAYOUT_V1).map_err(err("read layout"))? {
            Some(b) => super::layout_v1::decode(&b, configured)
                .map(Some)
                .map_err(bad),
            None => Ok(None),
        }
    }

    pub fn save_layout(&self, layout: &LayoutHistory) -> Result<()> {
        let bytes = postcard::to_stdvec(layout).map_err(|e| StorageError {
            step: "write layout",
            reason: e.to_string(),
        })?;
        {
            let _w = self.writing()?;
            self.sys
                .insert(LAYOUT, bytes)
                .map_err(err("write layout"))?;
            for old in [LAYOUT_V3, LAYOUT_V2, LAYOUT_V1] {
                self.sys.remove(old).map_err(err("write layout"))?;
            }
        }
        self.sync()
    }

    /// The layout version since which this node has been a member, as
    /// it last recorded it (`membership`).
    pub fn member_since(&self) -> Result<Option<u64>> {
        match self.sys.get(MEMBER_SINCE).map_err(err("read membership"))? {
            Some(b) => <[u8; 8]>::try_from(&*b)
                .map(|a| Some(u64::from_be_bytes(a)))
                .map_err(|_| StorageError {
                    step: "read membership",
                    reason: format!("malformed stored membership ({} bytes)", b.len()),
                }),
            None => Ok(None),
        }
    }

    /// Records `since` durably.
    pub fn set_member_since(&self, since: u64) -> Result<()> {
        {
            let _w = self.writing()?;
            self.sys
                .insert(MEMBER_SINCE, since.to_be_bytes())
                .map_err(err("write membership"))?;
        }
        self.sync()
    }

    /// Drops every key this node stores as an owner (not the hints it
    /// keeps for others, nor the records of collected tombstones), durably.
    pub fn drop_owned(&self) -> Result<u64> {
        let mut n = 0;
        {
            let _w = self.writing()?;
            let keys: Vec<_> = self
                .kv
                .keys()
                .collect::<std::result::Result<_, _>>()
                .map_err(err("drop keys"))?;
            for k in keys {
                self.kv.remove(k).map_err(err("drop keys"))?;
                n += 1;
            }
            // Numbering from the emptied store would issue its dots again.
            *self.actor.write() = epoch::renew(&self.sys, &self.node, &self.dice)?;
        }
        self.sync()?;
        Ok(n)
    }

    /// Stores a layout as a version before N, R and W were part of it
    /// did (tests).
    #[cfg(test)]
    pub fn save_layout_v1(&self, bytes: &[u8]) -> Result<()> {
        self.sys
            .insert(LAYOUT_V1, bytes)
            .map_err(err("write layout"))?;
        for newer in [LAYOUT, LAYOUT_V3, LAYOUT_V2] {
            self.sys.remove(newer).map_err(err("write layout"))?;
        }
        self.sync()
    }

    /// Makes every write that returned durable, blocking the thread.
    pub fn sync(&self) -> Result<()> {
        let t = {
            let _w = self.writing()?;
            self.commit.issue()
        };
        self.commit.wait_blocking(t).map_err(|reason| StorageError {
            step: "sync",
            reason,
        })
    }

    /// Copies the store to `to` as a power loss would leave it: every file
    /// as it is, but the active journal only as far as the last completed
    /// sync reached (the page cache's unsynced tail lost). Assumes no
    /// journal rotation and no memtable flush since that sync (tests
    /// write far less than a memtable).
    #[cfg(test)]
    pub fn power_loss_copy(&self, to: &Path) -> std::io::Result<()> {
        self.power_loss_at(self.power_loss_point(), to)
    }

    /// What a power loss now would leave of the journal (tests): pass it
    /// to `power_loss_at` to copy the store as of this instant.
    #[cfg(test)]
    pub fn power_loss_point(&self) -> super::power_loss::Point {
        super::power_loss::Point(self.journal.durable.lock().clone())
    }

    #[cfg(test)]
    pub fn power_loss_at(&self, p: super::power_loss::Point, to: &Path) -> std::io::Result<()> {
        super::power_loss::copy(&self.journal.dir, to, p.0)
    }
}
