//! The status socket: a line-delimited JSON protocol (versioned) between
//! the daemon and `chironctl`.

pub mod client;
pub mod http;
pub mod protocol;
pub mod server;

use std::path::{Path, PathBuf};

/// Where the daemon of `mountpoint` listens unless `ctl=PATH` says otherwise.
pub fn default_socket(mountpoint: &Path) -> PathBuf {
    let canon = std::fs::canonicalize(mountpoint).unwrap_or(mountpoint.to_path_buf());
    let s = canon.to_string_lossy().trim_matches('/').replace('/', "-");
    let name = if s.is_empty() { "root".to_string() } else { s };
    PathBuf::from("/run/chironfs").join(format!("{name}.sock"))
}
