//! The metadata store: what chironfs must remember across crashes and
//! remounts (DESIGN.md sections 2 and 5).
//!
//! - replica records: identity, state, since when and why;
//! - intent marks (`pending`): a mutation of the path may be in flight;
//! - missed marks: a replica lacks a mutation of the path;
//! - resync cursors: how far a resync through a replica's missed marks got;
//! - the session flag: whether the previous mount ended cleanly.
//!
//! [`MetaStore`] is the filesystem's view; [`EmbeddedStore`] implements it
//! on one host, and the metadata ring (DESIGN.md section 7) will implement
//! it across hosts.
//!
//! Durability contract, for every implementation: a call that writes
//! (everything but [`MetaStore::sync`] and the getters) has reached at least
//! the OS page cache when it returns, so it survives the daemon's own crash
//! (kill -9), not necessarily a machine crash; `sync` makes every write
//! that returned before it durable (fsync). `open_session` tells which of
//! the two happened last time.

// The filesystem wires the store in next; until then most of it (and of
// its re-exports) is unused.
#![allow(dead_code, unused_imports)]

mod codec;
mod embedded;
mod error;
mod id;
mod keys;
pub(crate) mod lock;
mod record;
mod session;
mod shared;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod shared_tests;
#[cfg(test)]
mod tests;

pub use embedded::EmbeddedStore;
pub use error::{Holder, MetaError};
pub use id::{BadReplicaId, ReplicaId};
pub use record::{ReplicaRecord, ReplicaState};
pub use shared::{ConflictRecord, HostView, PathWrite, PublishedPending, SharedStore};

pub type Result<T> = std::result::Result<T, MetaError>;

/// How the previous session on this store ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviousShutdown {
    /// It called `close_session`: every mark is durable and complete.
    Clean,
    /// The daemon died but the machine did not: every write that returned
    /// is in the store, so the pending and missed marks are complete; heal
    /// the pending paths before serving them.
    DaemonCrash,
    /// Nothing vouches for the marks: the machine went down during a
    /// session (or the boot could not be told), or the store is new. Run a
    /// verification pass comparing the replicas.
    Unknown,
}

/// What the filesystem keeps in its metadata store.
///
/// Paths are the filesystem's paths relative to the replica roots, as
/// bytes; they never contain NUL (a path that does is refused with
/// `MetaError::BadPath`). Marks are sets: marking twice is marking once,
/// and clearing an absent mark is a no-op. Every method may be called from
/// any thread.
pub trait MetaStore: Send + Sync {
    /// The record of replica `id`, if the store has one.
    fn get_replica(&self, id: &ReplicaId) -> Result<Option<ReplicaRecord>>;
    /// Creates or replaces the record of `record.id`.
    fn put_replica(&self, record: &ReplicaRecord) -> Result<()>;
    /// Every replica record, ordered by id.
    fn list_replicas(&self) -> Result<Vec<ReplicaRecord>>;

    /// Records that a mutation of `path` may be in flight. Called before the
    /// mutation is issued; the caller coalesces (one mark per path per
    /// open-for-write session) and clears it only when no mutation of the
    /// path is in flight, since the mark is one bit per path.
    fn mark_pending(&self, path: &[u8]) -> Result<()>;
    /// Every replica agrees on `path` again.
    fn clear_pending(&self, path: &[u8]) -> Result<()>;
    /// Every pending path, in byte order (to heal after a crash).
    fn pending(&self) -> Result<Vec<Vec<u8>>>;

    /// Records that replica `id` lacks a mutation of `path`.
    fn mark_missed(&self, path: &[u8], id: &ReplicaId) -> Result<()>;
    /// Replica `id` has caught up on `path`.
    fn clear_missed(&self, path: &[u8], id: &ReplicaId) -> Result<()>;
    fn is_missed(&self, path: &[u8], id: &ReplicaId) -> Result<bool>;
    /// Whether any replica missed `path` (only this path, not its
    /// descendants). A point lookup, cheap enough for every open.
    fn any_missed(&self, path: &[u8]) -> Result<bool>;
    /// Up to `limit` paths that replica `id` missed, in byte order, starting
    /// after `after` (exclusive; `None` starts at the first). Byte order puts
    /// a directory before everything under it. Page through a resync with
    /// `after` = the last path of the previous page.
    fn missed(&self, id: &ReplicaId, after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>>;
    /// How many paths replica `id` missed.
    fn missed_count(&self, id: &ReplicaId) -> Result<u64>;

    /// Sets (`Some`) or removes (`None`) the resync cursor of replica `id`:
    /// the last path the resync finished.
    fn set_cursor(&self, id: &ReplicaId, cursor: Option<Vec<u8>>) -> Result<()>;
    fn cursor(&self, id: &ReplicaId) -> Result<Option<Vec<u8>>>;

    /// Starts a session (once per mount, before the first mark) and tells
    /// how the previous one ended. The new session's record is made durable
    /// before this returns, together with every earlier write.
    fn open_session(&self) -> Result<PreviousShutdown>;
    /// Ends the session cleanly (at unmount, after the last mark): makes
    /// everything durable, then records the clean end durably. Writes after
    /// it are not covered by the next `Clean`.
    fn close_session(&self) -> Result<()>;

    /// Makes every write that returned before this call durable (fsync).
    /// Called when an application calls fsync, fdatasync or syncfs.
    fn sync(&self) -> Result<()>;
}
