//! Configuration: one struct, the same key names in `-o` and in TOML.
//!
//! `-o key=value` options are turned into a TOML table and deserialized by
//! the same serde code as a config file, so the two can never drift apart.
//! Each `-o` entry is first checked on its own, which lets the error name
//! exactly the option that was wrong.

mod ring;
mod value;

use std::path::PathBuf;

use serde::Deserialize;

pub use ring::RingConfig;
pub use value::{ConflictPolicy, ReadPolicy, WriteQuorum};

/// Everything a mount can be told. Every field has a documented default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Replica directories, in priority order; a leading `:` marks a
    /// low-priority replica. Default: none (given on the command line).
    pub replicas: Vec<String>,
    /// Let users other than the mounting one access the filesystem. Default: false.
    pub allow_other: bool,
    /// Let root access the filesystem besides the mounting user. Default: false.
    pub allow_root: bool,
    /// Mount read-only. Default: false.
    pub ro: bool,
    /// Source name shown in /proc/mounts. Default: the replica list.
    pub fsname: Option<String>,
    /// Which in-sync replica an open binds to. Default: round-robin.
    pub read_policy: ReadPolicy,
    /// How many replicas must succeed for a mutation to succeed. Default: 1.
    pub write_quorum: WriteQuorum,
    /// Log file (ChironFS compatible). Default: stderr in the foreground.
    pub log: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace. Default: info.
    pub log_level: LogLevel,
    /// Seconds the kernel may cache attributes. Default: 1.0.
    pub attr_timeout: f64,
    /// Seconds the kernel may cache name lookups. Default: 1.0.
    pub entry_timeout: f64,
    /// Threads serving FUSE requests. Default: 8.
    pub threads: usize,
    /// Worker threads per replica issuing backing syscalls. Default: 8.
    pub replica_threads: usize,
    /// Seconds a replica may take to answer before it is marked failed. Default: 10.
    pub replica_timeout: f64,
    /// Seconds between probes of failed replicas (and resync rounds). Default: 2.
    pub probe_interval: f64,
    /// What a full resync compares: `metadata` (type, size, mtime, mode,
    /// owner, xattrs, symlink target, hard links) or `content` (also every
    /// byte). Default: metadata.
    pub verify: Verify,
    /// Resync bandwidth limit in MiB/s; 0 means unlimited. Default: 0.
    pub resync_bandwidth: u64,
    /// Status socket path (ChironFS's option name). Default:
    /// /run/chironfs/<mountpoint with '/' as '-'>.sock.
    pub ctl: Option<PathBuf>,
    /// A group whose members may use the status socket (mode 0660). Default: root only.
    pub ctl_group: Option<String>,
    /// Serve Prometheus metrics over HTTP on this ADDR:PORT. Default: off.
    pub metrics_listen: Option<String>,
    /// Where the metadata store lives. Default: /var/lib/chironfs/<fsname,
    /// or the mountpoint with '/' turned into '-'>.
    pub state_dir: Option<PathBuf>,
    /// A new, empty directory to add to an existing replica set; it gets
    /// an identity and is filled by a full resync while the mount serves.
    pub add_replica: Option<PathBuf>,
    /// Where replica syscalls run: `auto` (on the calling thread for local
    /// filesystems, whose calls end with an error if the disk fails; on the
    /// replica's own threads with `replica_timeout` for network and FUSE
    /// filesystems, which can hang), `pooled` (always the latter). Default: auto.
    pub replica_io: ReplicaIo,
    /// Use FUSE passthrough for read-only opens where the kernel supports it. Default: false
    /// (the kernel cannot take a passthrough open away from a replica that leaves service;
    /// src/DESIGN.md, "Passthrough").
    pub passthrough: bool,
    /// Kernel-side permission checks; always on (accepted for compatibility).
    pub default_permissions: bool,
    /// Standard mount flags passed to the kernel. Default: all false.
    pub noexec: bool,
    pub nosuid: bool,
    pub nodev: bool,
    /// What stays on a path that two hosts changed while each reached a
    /// different subset of the replicas: `newest` (the newest version; the
    /// other is kept as NAME.chironfs-conflict-HOST-TIME), `keep-both` (the
    /// newest too, and both versions are kept as conflict copies) or
    /// `manual` (the path keeps the version of the replica being resynced
    /// from; both are kept as conflict copies and the operator decides).
    /// Default: newest.
    pub conflict_policy: ConflictPolicy,
    /// Membership in a metadata ring shared with other hosts that mount
    /// the same replicas (a `[ring]` table). Default: none (this host's
    /// own metadata store).
    pub ring: Option<RingConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            replicas: Vec::new(),
            allow_other: false,
            allow_root: false,
            ro: false,
            fsname: None,
            read_policy: ReadPolicy::RoundRobin,
            write_quorum: WriteQuorum::Count(1),
            log: None,
            log_level: LogLevel::Info,
            attr_timeout: 1.0,
            entry_timeout: 1.0,
            threads: 8,
            replica_threads: 8,
            replica_timeout: 10.0,
            passthrough: false,
            replica_io: ReplicaIo::Auto,
            probe_interval: 2.0,
            verify: Verify::Metadata,
            ctl: None,
            ctl_group: None,
            metrics_listen: None,
            resync_bandwidth: 0,
            state_dir: None,
            add_replica: None,
            default_permissions: true,
            noexec: false,
            nosuid: false,
            nodev: false,
            conflict_policy: ConflictPolicy::Newest,
            ring: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    Metadata,
    Content,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaIo {
    Auto,
    Pooled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("unknown option '{0}'")]
    UnknownOption(String),
    #[error("bad value '{value}' for option '{key}': {reason}")]
    BadValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("cannot read config file '{path}': {reason}")]
    Read { path: String, reason: String },
    #[error("config file '{path}': {reason}")]
    Parse { path: String, reason: String },
}

/// Mount options that mount(8), fstab and systemd pass along and that mean
/// nothing to the daemon itself.
const IGNORED_MOUNT_OPTIONS: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "exec",
    "suid",
    "dev",
    "async",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "nolazytime",
    "loop",
    "silent",
    "loud",
];

fn is_ignored_mount_option(key: &str) -> bool {
    IGNORED_MOUNT_OPTIONS.contains(&key)
        || key.starts_with("x-")
        || key.starts_with("comment")
        || key == "helper"
}

/// Splits `-o` option strings (`a,b=c,d`) into key/value pairs.
pub fn split_options(opts: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    opts.split(',')
        .filter(|s| !s.is_empty())
        .map(|item| match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        })
}

/// The TOML value an `-o` option stands for: a bare flag is `true`; numbers
/// and booleans keep their type; anything else is a string.
fn option_value(key: &str, value: Option<&str>) -> toml::Value {
    let Some(v) = value else {
        return toml::Value::Boolean(true);
    };
    if key == "replicas" {
        return toml::Value::Array(
            v.split('=')
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        );
    }
    if let Ok(b) = v.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = v.parse::<f64>()
        && v.contains('.')
    {
        return toml::Value::Float(f);
    }
    toml::Value::String(v.to_string())
}

impl Config {
    /// Builds a config from an optional TOML text and `-o` option strings;
    /// options override the file.
    pub fn build(file: Option<(&str, &str)>, options: &[String]) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some((path, text)) => {
                let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
                    path: path.to_string(),
                    reason: one_line(&e.to_string()),
                })?;
                // Check the file as a whole first so its errors name the file.
                Config::from_table(table.clone()).map_err(|e| ConfigError::Parse {
                    path: path.to_string(),
                    reason: e,
                })?;
                table
            }
            None => toml::Table::new(),
        };
        for opts in options {
            for (key, value) in split_options(opts) {
                if is_ignored_mount_option(key) {
                    continue;
                }
                let v = option_value(key, value);
                let mut single = toml::Table::new();
                single.insert(key.to_string(), v.clone());
                if let Err(reason) = Config::from_table(single) {
                    if reason.contains("unknown field") {
                        return Err(ConfigError::UnknownOption(key.to_string()));
                    }
                    return Err(ConfigError::BadValue {
                        key: key.to_string(),
                        value: value.unwrap_or("").to_string(),
                        reason,
                    });
                }
                table.insert(key.to_string(), v);
            }
        }
        let config = Config::from_table(table).map_err(|reason| ConfigError::BadValue {
            key: "?".into(),
            value: String::new(),
            reason,
        })?;
        config.validate()?;
        Ok(config)
    }

    fn from_table(table: toml::Table) -> Result<Config, String> {
        Config::deserialize(toml::Value::Table(table)).map_err(|e| one_line(&e.to_string()))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: String, reason: &str| ConfigError::BadValue {
            key: key.into(),
            value,
            reason: reason.into(),
        };
        for (key, v) in [
            ("attr_timeout", self.attr_timeout),
            ("entry_timeout", self.entry_timeout),
        ] {
            if !(0.0..=86400.0).contains(&v) {
                return Err(bad(key, v.to_string(), "expected 0 to 86400 seconds"));
            }
        }
        if !(self.replica_timeout > 0.0 && self.replica_timeout <= 86400.0) {
            return Err(bad(
                "replica_timeout",
                self.replica_timeout.to_string(),
                "expected more than 0 and at most 86400 seconds",
            ));
        }
        if !(self.probe_interval >= 0.05 && self.probe_interval <= 3600.0) {
            return Err(bad(
                "probe_interval",
                self.probe_interval.to_string(),
                "expected 0.05 to 3600 seconds",
            ));
        }
        if !(1..=256).contains(&self.threads) {
            return Err(bad(
                "threads",
                self.threads.to_string(),
                "expected 1 to 256",
            ));
        }
        if !(1..=256).contains(&self.replica_threads) {
            return Err(bad(
                "replica_threads",
                self.replica_threads.to_string(),
                "expected 1 to 256",
            ));
        }
        if let Some(ring) = &self.ring
            && let Err((key, value, reason)) = ring.validate()
        {
            return Err(ConfigError::BadValue { key, value, reason });
        }
        if !self.default_permissions {
            return Err(bad(
                "default_permissions",
                "false".into(),
                "permission checks in the kernel cannot be turned off",
            ));
        }
        Ok(())
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
