//! The session flag: how the previous mount of this state directory ended.
//!
//! `open_session` records "open" with the kernel's boot id, durably;
//! `close_session` records "closed" after making every mark durable. So on
//! the next open:
//! - "closed": the previous session ended cleanly, every mark is on disk;
//! - "open" with this boot's id: the daemon died but the machine did not, so
//!   every write that returned sits in the page cache or on disk (marks are
//!   complete);
//! - "open" with another boot's id (or none readable), or no record at all:
//!   the machine went down under a session, or the store is new; nothing
//!   vouches for the marks.

use super::PreviousShutdown;
use super::codec::{Decoder, Encoder};

/// Where Linux publishes a random id that changes at every boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

const SESSION_V1: u8 = 1;
const OPEN: u8 = 0;
const CLOSED: u8 = 1;

/// The id of the running boot, if the kernel tells it. The environment
/// variable `CHIRONFS_BOOT_ID_FILE` names another file to read it from: the
/// only way a test can stage "the machine went down" without rebooting.
pub fn boot_id() -> Option<String> {
    let path = std::env::var_os("CHIRONFS_BOOT_ID_FILE")
        .map_or_else(|| BOOT_ID_PATH.into(), std::path::PathBuf::from);
    let id = std::fs::read_to_string(path).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// A session record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    Open { boot_id: Option<String> },
    Closed,
}

impl Session {
    pub fn encode(&self) -> Vec<u8> {
        let e = Encoder::default().u8(SESSION_V1);
        match self {
            Session::Open { boot_id } => e
                .u8(OPEN)
                .bytes(boot_id.as_deref().unwrap_or("").as_bytes())
                .finish(),
            Session::Closed => e.u8(CLOSED).finish(),
        }
    }

    /// `None` if the value is malformed.
    pub fn decode(value: &[u8]) -> Option<Session> {
        let mut d = Decoder::new(value);
        if d.u8()? != SESSION_V1 {
            return None;
        }
        let session = match d.u8()? {
            OPEN => {
                let id = String::from_utf8_lossy(d.bytes()?).into_owned();
                Session::Open {
                    boot_id: (!id.is_empty()).then_some(id),
                }
            }
            CLOSED => Session::Closed,
            _ => return None,
        };
        d.is_done().then_some(session)
    }
}

/// How the previous session ended, from its record and the current boot id.
pub fn judge(previous: Option<&Session>, current_boot: Option<&str>) -> PreviousShutdown {
    match previous {
        Some(Session::Closed) => PreviousShutdown::Clean,
        Some(Session::Open {
            boot_id: Some(then),
        }) if Some(then.as_str()) == current_boot => PreviousShutdown::DaemonCrash,
        Some(Session::Open { .. }) | None => PreviousShutdown::Unknown,
    }
}
