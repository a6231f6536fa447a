//! Everything checked before anything is mounted. Each failure is one line
//! naming what was wrong.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, WriteQuorum};
use crate::replica::ReplicaSpec;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(
        "no replicas given: expected [:]PATH=[:]PATH[=...] MOUNTPOINT or replicas in the config file"
    )]
    NoReplicas,
    #[error("replica '{0}' does not exist")]
    ReplicaMissing(String),
    #[error("replica '{0}' is not a directory")]
    ReplicaNotDir(String),
    #[error("replica '{0}': {1}")]
    ReplicaUnusable(String, String),
    #[error("replicas '{0}' and '{1}' are the same directory")]
    SameReplica(String, String),
    #[error("mountpoint '{0}' does not exist")]
    MountpointMissing(String),
    #[error("mountpoint '{0}' is not a directory")]
    MountpointNotDir(String),
    #[error("mountpoint '{0}': {1}")]
    MountpointUnusable(String, String),
    #[error("replica '{0}' is inside the mountpoint '{1}'")]
    ReplicaInsideMountpoint(String, String),
    #[error("mountpoint '{0}' is inside replica '{1}'")]
    MountpointInsideReplica(String, String),
    #[error("replica '{0}': cannot prepare it: {1}")]
    ReplicaSetup(String, String),
    #[error("cannot mount on '{0}': {1}")]
    Mount(String, String),
    #[error("{0}")]
    Other(String),
}

/// A replica that passed the checks.
pub struct CheckedReplica {
    pub spec: ReplicaSpec,
    /// As the user wrote it, for messages.
    pub shown: String,
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

fn check_dir(
    p: &Path,
    missing: fn(String) -> StartupError,
    not_dir: fn(String) -> StartupError,
    other: fn(String, String) -> StartupError,
) -> Result<(fs::Metadata, PathBuf), StartupError> {
    let md = match fs::metadata(p) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing(show(p))),
        Err(e) => return Err(other(show(p), e.to_string())),
    };
    if !md.is_dir() {
        return Err(not_dir(show(p)));
    }
    let canon = fs::canonicalize(p).map_err(|e| other(show(p), e.to_string()))?;
    Ok((md, canon))
}

/// Validates replicas and mountpoint against each other and the config.
pub fn check(
    specs: &[ReplicaSpec],
    mountpoint: &Path,
    config: &Config,
) -> Result<Vec<CheckedReplica>, StartupError> {
    if specs.is_empty() {
        return Err(StartupError::NoReplicas);
    }
    if let WriteQuorum::Count(n) = config.write_quorum
        && n > specs.len()
    {
        return Err(ConfigError::BadValue {
            key: "write_quorum".into(),
            value: n.to_string(),
            reason: format!("only {} replicas are configured", specs.len()),
        }
        .into());
    }
    let (_, mnt) = check_dir(
        mountpoint,
        StartupError::MountpointMissing,
        StartupError::MountpointNotDir,
        StartupError::MountpointUnusable,
    )?;
    let mut seen: Vec<(u64, u64, String, PathBuf)> = Vec::new();
    let mut out = Vec::new();
    for spec in specs {
        let shown = show(&spec.path);
        if spec.path.as_os_str().is_empty() {
            return Err(StartupError::ReplicaMissing(shown));
        }
        let (md, canon) = check_dir(
            &spec.path,
            StartupError::ReplicaMissing,
            StartupError::ReplicaNotDir,
            StartupError::ReplicaUnusable,
        )?;
        if let Some((_, _, other, _)) = seen
            .iter()
            .find(|(d, i, _, _)| *d == md.dev() && *i == md.ino())
        {
            return Err(StartupError::SameReplica(other.clone(), shown));
        }
        if canon.starts_with(&mnt) {
            return Err(StartupError::ReplicaInsideMountpoint(
                shown,
                show(mountpoint),
            ));
        }
        if mnt.starts_with(&canon) {
            return Err(StartupError::MountpointInsideReplica(
                show(mountpoint),
                shown,
            ));
        }
        seen.push((md.dev(), md.ino(), shown.clone(), canon.clone()));
        out.push(CheckedReplica {
            spec: ReplicaSpec {
                path: canon,
                low_priority: spec.low_priority,
            },
            shown,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(p: &Path) -> ReplicaSpec {
        ReplicaSpec {
            path: p.to_path_buf(),
            low_priority: false,
        }
    }

    #[test]
    fn rejections_name_the_problem() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, m) = (t.path().join("a"), t.path().join("b"), t.path().join("m"));
        for d in [&a, &b, &m] {
            fs::create_dir(d).unwrap();
        }
        let cfg = Config::default();
        let file = t.path().join("f");
        fs::write(&file, b"x").unwrap();
        let e = |specs: &[ReplicaSpec], m: &Path| check(specs, m, &cfg).err().unwrap().to_string();

        assert!(e(&[spec(&t.path().join("nope"))], &m).contains("does not exist"));
        assert!(e(&[spec(&file)], &m).contains("is not a directory"));
        std::os::unix::fs::symlink(&a, t.path().join("alias")).unwrap();
        assert!(e(&[spec(&a), spec(&t.path().join("alias"))], &m).contains("same directory"));
        let inner = m.join("r");
        fs::create_dir(&inner).unwrap();
        assert!(e(&[spec(&a), spec(&inner)], &m).contains("inside the mountpoint"));
        let m2 = a.join("mnt");
        fs::create_dir(&m2).unwrap();
        assert!(e(&[spec(&a), spec(&b)], &m2).contains("is inside replica"));
        assert!(e(&[], &m).contains("no replicas"));
        assert!(check(&[spec(&a), spec(&b)], &m, &cfg).is_ok());
    }
}
