//! Key layout of the embedded store, designed for prefix scans.
//!
//! Each kind of record lives in its own partition (an LSM tree of its own):
//!
//! | partition        | key                     | value         |
//! |------------------|-------------------------|---------------|
//! | `replicas`       | id (16 bytes)           | ReplicaRecord |
//! | `pending`        | `/` ++ path             | empty         |
//! | `missed`         | id ++ path              | empty         |
//! | `missed_by_path` | path ++ 0x00 ++ id      | empty         |
//! | `cursors`        | id                      | cursor path   |
//! | `session`        | `SESSION_KEY`           | session state |
//! | `session`        | `VIEW_SEQ_KEY`          | u64, big-endian |
//!
//! `missed` pages through one replica's marks in path order (prefix = id);
//! `missed_by_path` answers "did any replica miss this path" with a scan
//! of prefix `path ++ 0x00`, which matches that path only, never its
//! descendants. Both are written in one atomic batch, so they always agree.
//! Paths are the filesystem's relative paths as bytes: they never contain
//! NUL, which is what makes 0x00 a safe separator. The root is the empty
//! path; the engine refuses empty keys (it panics), hence the `/` leading
//! every `pending` key. Every other key starts with a 16-byte id or ends
//! with a 0x00, so none is empty, and `MAX_PATH` keeps all of them under
//! the engine's 64 KiB key limit (which it also enforces by panicking).

use super::error::MetaError;
use super::id::ReplicaId;

pub const REPLICAS: &str = "replicas";
pub const PENDING: &str = "pending";
pub const MISSED: &str = "missed";
pub const MISSED_BY_PATH: &str = "missed_by_path";
pub const CURSORS: &str = "cursors";
pub const SESSION: &str = "session";
/// Ring writes a host with a `[ring]` owes (see `shared`): ring key ->
/// 0 (delete) or 1 ++ value.
pub const OUTBOX: &str = "outbox";

pub const SESSION_KEY: &[u8] = b"session";
/// In `session`: the last number given to a replica view this host
/// published (`shared`), 8 bytes big-endian.
pub const VIEW_SEQ_KEY: &[u8] = b"view_seq";

/// Longest path the store keys: the engine's keys hold at most 65535 bytes,
/// and `missed_by_path` adds 17. Far above PATH_MAX.
pub const MAX_PATH: usize = 65_000;

/// Rejects paths the key layout cannot represent.
pub fn check_path(step: &'static str, path: &[u8]) -> Result<(), MetaError> {
    if path.len() > MAX_PATH {
        return Err(MetaError::BadPath {
            step,
            reason: "longer than 65000 bytes",
        });
    }
    if path.contains(&0) {
        return Err(MetaError::BadPath {
            step,
            reason: "contains a NUL byte",
        });
    }
    Ok(())
}

/// `pending` key: `/` ++ path.
pub fn pending(path: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + path.len());
    key.push(b'/');
    key.extend_from_slice(path);
    key
}

/// The path of a `pending` key; `None` if the key is malformed.
pub fn pending_path(key: &[u8]) -> Option<&[u8]> {
    key.strip_prefix(b"/")
}

/// `missed` key: id ++ path.
pub fn missed(id: &ReplicaId, path: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(ReplicaId::LEN + path.len());
    key.extend_from_slice(id.as_bytes());
    key.extend_from_slice(path);
    key
}

/// `missed_by_path` prefix of one path: path ++ 0x00.
pub fn by_path_prefix(path: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(path.len() + 1 + ReplicaId::LEN);
    key.extend_from_slice(path);
    key.push(0);
    key
}

/// `missed_by_path` key: path ++ 0x00 ++ id.
pub fn by_path(path: &[u8], id: &ReplicaId) -> Vec<u8> {
    let mut key = by_path_prefix(path);
    key.extend_from_slice(id.as_bytes());
    key
}

/// A key shown in an error message: printable bytes as is, others escaped.
pub fn show(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}
