//! What the store keeps about each replica: its state, since when, and why.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::codec::{Decoder, Encoder};
use super::id::ReplicaId;

/// A replica's state (DESIGN.md section 2). Only `InSync` serves reads;
/// `Resyncing` receives every mutation but serves no reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaState {
    InSync,
    Failed,
    Resyncing,
    /// Taken out by the operator; kept out until enabled again.
    Disabled,
}

impl ReplicaState {
    /// The stored byte. Never renumber: these are on disk.
    fn code(self) -> u8 {
        match self {
            ReplicaState::InSync => 0,
            ReplicaState::Failed => 1,
            ReplicaState::Resyncing => 2,
            ReplicaState::Disabled => 3,
        }
    }

    fn from_code(code: u8) -> Option<ReplicaState> {
        Some(match code {
            0 => ReplicaState::InSync,
            1 => ReplicaState::Failed,
            2 => ReplicaState::Resyncing,
            3 => ReplicaState::Disabled,
            _ => return None,
        })
    }
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicaState::InSync => "in-sync",
            ReplicaState::Failed => "failed",
            ReplicaState::Resyncing => "resyncing",
            ReplicaState::Disabled => "disabled",
        })
    }
}

/// One replica as the store remembers it across remounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    pub id: ReplicaId,
    /// Where the replica was last seen (informational: identity is `id`).
    pub path: PathBuf,
    pub state: ReplicaState,
    /// When it entered `state`.
    pub since: SystemTime,
    /// Why it entered `state` (operation, path, errno...), for the log and status.
    pub cause: String,
}

/// Version byte leading every encoded record, so the layout can change later.
const RECORD_V1: u8 = 1;

impl ReplicaRecord {
    /// The stored value. The id is the key, so it is not repeated here.
    /// Times before 1970 are stored as 1970 (no clock a replica fails under
    /// reads that).
    pub(super) fn encode(&self) -> Vec<u8> {
        let since = self.since.duration_since(UNIX_EPOCH).unwrap_or_default();
        Encoder::default()
            .u8(RECORD_V1)
            .u8(self.state.code())
            .u64(since.as_secs())
            .u32(since.subsec_nanos())
            .bytes(self.path.as_os_str().as_bytes())
            .bytes(self.cause.as_bytes())
            .finish()
    }

    /// Reads a stored value back; `None` if it is malformed.
    pub(super) fn decode(id: ReplicaId, value: &[u8]) -> Option<ReplicaRecord> {
        let mut d = Decoder::new(value);
        if d.u8()? != RECORD_V1 {
            return None;
        }
        let state = ReplicaState::from_code(d.u8()?)?;
        let secs = d.u64()?;
        let nanos = d.u32()?;
        if nanos >= 1_000_000_000 {
            return None;
        }
        let since = UNIX_EPOCH.checked_add(Duration::new(secs, nanos))?;
        let path = PathBuf::from(OsStr::from_bytes(d.bytes()?));
        let cause = String::from_utf8_lossy(d.bytes()?).into_owned();
        d.is_done().then_some(ReplicaRecord {
            id,
            path,
            state,
            since,
            cause,
        })
    }
}
