//! Messages on the status socket, one JSON object per line.
//!
//! Request:  `{"version":1,"command":"status"}`,
//!           `{"version":1,"command":"disable","replica":"/srv/b"}` (also
//!           `enable`), `{"version":1,"command":"resync","replica":"1","full":true}` (or `"verify":true`),
//!           `{"version":1,"command":"trust","replica":"/srv/b","confirm":true}`,
//!           `{"version":1,"command":"log-level","level":"debug"}`,
//!           `{"version":1,"command":"conflicts"}` (mounts with a `[ring]`).
//!           A replica is named by its path, its index or its id.
//! Ring:     `{"version":1,"command":"ring-status"}`,
//!           `{"version":1,"command":"ring-join","node":"b","addr":"10.0.0.2:7100"}`,
//!           `{"version":1,"command":"ring-leave","node":"b"}`,
//!           `{"version":1,"command":"ring-quorum","quorum":{"n":3,"r":2,"w":2}}`,
//!           `{"version":1,"command":"ring-plan"}` (answers `"plan":{...}`:
//!           the version `ring-apply` would commit, to sign),
//!           `{"version":1,"command":"ring-apply"}` (with
//!           `"signature":{"key":[...],"sig":[...]}`: an operator's of that plan),
//!           `{"version":1,"command":"ring-finish"}` (ends a transition by force),
//!           `{"version":1,"command":"ring-get","key":"k"}`,
//!           `{"version":1,"command":"ring-put","key":"k","value":"v"}` (with
//!           `"context":{...}` from a `ring-get`: replaces what that read saw;
//!           without: reads first and replaces what it finds; `{}`: a blind
//!           write, kept beside any value as a sibling). Served by mounts
//!           with a `[ring]` section and by `chironfs ring-node`.
//! Response: `{"version":1,"ok":true,"status":{...}}`, `{"version":1,"ok":true}`
//!           or `{"version":1,"ok":false,"error":"..."}`; ring commands
//!           answer with `"ring":{...}` (`ring-status`, `-join`, `-leave`,
//!           `-apply`: the status after the change), `"values":[...]` and
//!           `"context":{...}` (`ring-get`, `ring-put`: the siblings, as
//!           UTF-8 text), `conflicts` with `"conflicts":[...]`.

use serde::{Deserialize, Serialize};

use crate::fs::FsStatus;
use crate::meta::ConflictRecord;
use crate::ring::node::RingStatus;
use crate::ring::version::Context;

pub const VERSION: u32 = 1;
/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize, Default)]
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
    /// For `ring-join` and `ring-leave`: the node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// For `ring-join`: HOST:PORT the node's ring listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// For `ring-get` and `ring-put`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For `ring-put`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// For `ring-put`: the context a `ring-get` returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// For `ring-quorum`: the N, R, W to stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<crate::ring::layout::Quorum>,
    /// For `ring-apply`: an operator's signature of the version
    /// `ring-plan` gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::ring::operator::LayoutSignature>,
}

impl Request {
    pub fn new(command: &str) -> Request {
        Request {
            version: VERSION,
            command: command.to_string(),
            ..Request::default()
        }
    }
}

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct Response {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<FsStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<RingStatus>,
    /// The live siblings of a key (`ring-get`, `ring-put`); empty when the
    /// key has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    /// The causal context of those siblings, to give back with a `ring-put`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<Vec<ConflictRecord>>,
    /// The version `ring-apply` would commit (`ring-plan`), to sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::ring::layout::LayoutVersion>,
}

impl Response {
    pub fn ok(status: Option<FsStatus>) -> Response {
        Response {
            version: VERSION,
            ok: true,
            status,
            ..Response::default()
        }
    }

    pub fn error(e: impl Into<String>) -> Response {
        Response {
            version: VERSION,
            ok: false,
            error: Some(e.into()),
            ..Response::default()
        }
    }
}
