//! The status socket: a line-delimited JSON protocol (versioned) between
//! the daemon and `chironctl`.

mod args;
pub mod client;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod ring;
pub mod server;

use std::path::{Path, PathBuf};

/// Where a daemon listens unless `ctl=PATH` says otherwise:
/// `/run/chironfs/<fsname>.sock` when the mount has a name of its own (an
/// `fsname` without '/'), else named after the mountpoint ('/' as '-').
/// chironctl finds a daemon by mountpoint from its record (see
/// `MOUNT_RECORDS`), and failing that here: the fsname is the mount's
/// source in /proc/self/mountinfo.
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

/// Where a daemon records the socket it serves, for chironctl to find it
/// by mountpoint whatever `ctl=` says: one file per mount, named after the
/// canonical mountpoint ('%' and '/' percent-escaped), holding the socket's
/// absolute path on its first line and the daemon's pid on its second.
pub const MOUNT_RECORDS: &str = "/run/chironfs/mounts";

/// The record file of the mount at `mountpoint` (canonical).
pub fn mount_record_path(mountpoint: &Path) -> PathBuf {
    let s = mountpoint
        .to_string_lossy()
        .replace('%', "%25")
        .replace('/', "%2F");
    PathBuf::from(MOUNT_RECORDS).join(s)
}

/// Records `sock` as the socket of the mount at `mountpoint` (canonical);
/// written to a temporary name, then renamed, so a reader never sees half.
pub fn write_mount_record(mountpoint: &Path, sock: &Path) -> Result<PathBuf, String> {
    let rec = mount_record_path(mountpoint);
    let err = |e: std::io::Error| format!("mount record {}: {e}", rec.display());
    std::fs::create_dir_all(MOUNT_RECORDS).map_err(err)?;
    let tmp = rec.with_extension(format!("tmp{}", std::process::id()));
    let body = format!("{}\n{}\n", sock.display(), std::process::id());
    std::fs::write(&tmp, body).map_err(err)?;
    std::fs::rename(&tmp, &rec).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })?;
    Ok(rec)
}

/// The socket recorded for the mount at `mountpoint` (canonical), and the
/// pid of the daemon that recorded it; None when there is no record.
pub fn read_mount_record(mountpoint: &Path) -> Option<(PathBuf, Option<u32>)> {
    let text = std::fs::read_to_string(mount_record_path(mountpoint)).ok()?;
    let mut lines = text.lines();
    let sock = lines.next().filter(|l| !l.is_empty())?;
    let pid = lines.next().and_then(|l| l.trim().parse().ok());
    Some((PathBuf::from(sock), pid))
}

/// Every socket recorded for a mount, for chironctl with no target.
pub fn recorded_sockets() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(MOUNT_RECORDS) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| {
            t.lines()
                .next()
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
        })
        .collect()
}

/// The filesystem type and source of the mount whose mountpoint is exactly
/// `canon` (the last one mounted there), from mountinfo.
pub fn mount_at(canon: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().rev().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mnt = pre.split(' ').nth(4)?;
        if Path::new(&unescape_mountinfo(mnt)) != canon {
            return None;
        }
        let mut f = post.split(' ');
        let fstype = f.next()?.to_string();
        let source = unescape_mountinfo(f.next()?);
        Some((fstype, source))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` (octal).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let d = |k: usize| u32::from(b[i + k] - b'0');
            out.push((d(1) * 64 + d(2) * 8 + d(3)) as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
