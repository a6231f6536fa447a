//! The `chironfs` command line (ChironFS syntax).

pub mod mount_helper;
pub mod ring;
mod ring_bench;

use std::path::PathBuf;

use clap::Parser;

use crate::config::Config;
use crate::daemon::Invocation;
use crate::replica::ReplicaSpec;

/// A replicated filesystem: every change goes to every replica.
#[derive(Parser, Debug)]
#[command(
    name = "chironfs",
    version,
    about,
    override_usage = "chironfs [OPTIONS] [:]PATH=[:]PATH[=...] MOUNTPOINT\n       chironfs [OPTIONS] --config FILE MOUNTPOINT\n       chironfs ring-node [-d] --config FILE"
)]
struct Args {
    /// Stay in the foreground and log to stderr.
    #[arg(short = 'f')]
    foreground: bool,
    /// Debug logging (implies nothing else).
    #[arg(short = 'd')]
    debug: bool,
    /// Mount and chironfs options, comma separated (same names as the config keys).
    #[arg(short = 'o', value_name = "OPT[,OPT=VAL...]")]
    options: Vec<String>,
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate a TOML config file (syntax, keys, values, replica
    /// directories) and exit without mounting.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// `[:]PATH=[:]PATH[=...] MOUNTPOINT`, or just `MOUNTPOINT` with --config.
    #[arg(
        value_name = "REPLICAS MOUNTPOINT",
        num_args = 1..=2,
        required_unless_present = "check_config"
    )]
    positional: Vec<String>,
}

/// `--check-config FILE`: 0 when the file would be accepted, 1 otherwise.
fn check_config(path: &std::path::Path) -> i32 {
    let shown = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("chironfs: cannot read config file '{shown}': {e}");
            return 1;
        }
    };
    let config = match Config::build(Some((&shown, &text)), &[]) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chironfs: {e}");
            return 1;
        }
    };
    for r in &config.replicas {
        let spec = ReplicaSpec::parse(r);
        match std::fs::metadata(&spec.path) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                eprintln!(
                    "chironfs: {shown}: replica '{}' is not a directory",
                    spec.path.display()
                );
                return 1;
            }
            Err(_) => {
                eprintln!(
                    "chironfs: {shown}: replica '{}' does not exist",
                    spec.path.display()
                );
                return 1;
            }
        }
    }
    println!("{shown}: ok ({} replicas)", config.replicas.len());
    0
}

/// Parses argv; on error prints a one-line reason and returns the exit code.
pub fn parse(argv: Vec<String>) -> Result<Invocation, i32> {
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return Err(code);
        }
    };
    if let Some(p) = &args.check_config {
        return Err(check_config(p));
    }
    // mount.fuse3 runs `chironfs config=/path.toml MNT -o ...` for fstab
    // lines of type fuse.chironfs whose source is a config file.
    let mut args = args;
    if args.config.is_none()
        && args.positional.len() == 2
        && let Some(path) = args.positional[0].strip_prefix("config=")
    {
        args.config = Some(PathBuf::from(path));
        args.positional.remove(0);
    }
    let text = match &args.config {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some((p.display().to_string(), t)),
            Err(e) => {
                let e = crate::config::ConfigError::Read {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                };
                eprintln!("chironfs: {e}");
                return Err(1);
            }
        },
        None => None,
    };
    let config = match Config::build(
        text.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
        &args.options,
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chironfs: {e}");
            return Err(1);
        }
    };
    let (source, mountpoint) = match args.positional.as_slice() {
        [src, mnt] => (src.clone(), mnt.clone()),
        [mnt] => (config.replicas.join("="), mnt.clone()),
        _ => return Err(1),
    };
    if args.positional.len() == 2 && !config.replicas.is_empty() {
        eprintln!("chironfs: replicas given both on the command line and in the config");
        return Err(1);
    }
    let replicas: Vec<ReplicaSpec> = source
        .split('=')
        .filter(|s| !s.is_empty())
        .map(ReplicaSpec::parse)
        .collect();
    Ok(Invocation {
        foreground: args.foreground,
        debug: args.debug,
        config,
        replicas,
        source,
        mountpoint: PathBuf::from(mountpoint),
    })
}
