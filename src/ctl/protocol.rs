//! Messages on the status socket, one JSON object per line.
//!
//! Request:  `{"version":1,"command":"status"}`,
//!           `{"version":1,"command":"disable","replica":"/srv/b"}` (also
//!           `enable`), `{"version":1,"command":"resync","replica":"1","full":true}` (or `"verify":true`),
//!           `{"version":1,"command":"trust","replica":"/srv/b","confirm":true}`,
//!           `{"version":1,"command":"log-level","level":"debug"}`.
//!           A replica is named by its path, its index or its id.
//! Response: `{"version":1,"ok":true,"status":{...}}`, `{"version":1,"ok":true}`
//!           or `{"version":1,"ok":false,"error":"..."}`.

use serde::{Deserialize, Serialize};

use crate::fs::FsStatus;

pub const VERSION: u32 = 1;
/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    pub command: String,
    #[serde(default)]
    pub replica: Option<String>,
    #[serde(default)]
    pub full: bool,
    /// `trust` needs it: the operator vouches the replica is identical.
    #[serde(default)]
    pub confirm: bool,
    /// For `resync`: compare file contents too.
    #[serde(default)]
    pub verify: bool,
    /// For `log-level`: error, warn, info, debug or trace.
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<FsStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(status: Option<FsStatus>) -> Response {
        Response {
            version: VERSION,
            ok: true,
            status,
            error: None,
        }
    }

    pub fn error(e: impl Into<String>) -> Response {
        Response {
            version: VERSION,
            ok: false,
            status: None,
            error: Some(e.into()),
        }
    }
}
