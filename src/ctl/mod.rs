//! The status socket: a line-delimited JSON protocol (versioned) between
//! the daemon and `chironctl`.

mod args;
pub mod client;
pub mod http;
pub mod protocol;
pub mod ring;
pub mod server;

use std::path::{Path, PathBuf};

/// Where a daemon listens unless `ctl=PATH` says otherwise:
/// `/run/chironfs/<fsname>.sock` when the mount has a name of its own (an
/// `fsname` without '/'), else named after the mountpoint ('/' as '-').
/// chironctl finds it from the mountpoint the same way: the fsname is the
/// mount's source in /proc/self/mountinfo.
pub fn default_socket(fsname: Option<&str>, mountpoint: &Path) -> PathBuf {
    let name = match fsname.filter(|n| !n.is_empty() && !n.contains('/')) {
        Some(n) => n.to_string(),
        None => {
            let canon = std::fs::canonicalize(mountpoint).unwrap_or(mountpoint.to_path_buf());
            let s = canon.to_string_lossy().trim_matches('/').replace('/', "-");
            if s.is_empty() { "root".to_string() } else { s }
        }
    };
    PathBuf::from("/run/chironfs").join(format!("{name}.sock"))
}

/// The source (fsname) of the mount at `mountpoint`, from mountinfo.
pub fn mount_source(mountpoint: &Path) -> Option<String> {
    let canon = std::fs::canonicalize(mountpoint).ok()?;
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().rev().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mnt = pre.split(' ').nth(4)?;
        let unescaped = mnt.replace("\\040", " ");
        if Path::new(&unescaped) != canon {
            return None;
        }
        Some(post.split(' ').nth(1)?.to_string())
    })
}

/// The gid of `ctl_group`, if one is configured.
pub fn group_gid(name: Option<&str>) -> Result<Option<u32>, String> {
    let Some(g) = name else { return Ok(None) };
    nix::unistd::Group::from_name(g)
        .ok()
        .flatten()
        .map(|grp| Some(grp.gid.as_raw()))
        .ok_or_else(|| format!("ctl_group '{g}': no such group"))
}
