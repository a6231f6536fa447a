//! `chironfs ring-node --config FILE`: a metadata-only ring member (an
//! arbiter: no mount, no replicas), so that two hosts mounting the same
//! replicas still have a third vote. It runs in the foreground (systemd
//! `Type=simple`, `config/chironfs-ring@.service`): the ring member, its
//! status socket (the mount's server, answering the ring commands), logs
//! to stderr or `log=FILE`, and a clean stop on SIGTERM or SIGINT.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use crate::config::{Config, ConfigError, LogLevel, RingConfig};
use crate::ring::service::{self, RingService};

/// What the command line asked for.
pub struct RingNodeArgs {
    pub config: PathBuf,
    /// `-d`: debug logging.
    pub debug: bool,
}

/// The config file, read and checked; the error names the file.
pub fn load(path: &Path) -> Result<(Config, RingConfig), String> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        }
        .to_string()
    })?;
    let config = Config::build(Some((&shown, &text)), &[]).map_err(|e| match e {
        ConfigError::Parse { .. } | ConfigError::Read { .. } => e.to_string(),
        other => format!("config file '{shown}': {other}"),
    })?;
    let ring = config.ring.clone().ok_or_else(|| {
        format!(
            "config file '{shown}': no [ring] section: a ring node needs one (at least ring.listen and ring.secret_file)"
        )
    })?;
    Ok((config, ring))
}

/// /var/lib/chironfs/ring-<node>.
fn default_state_dir(node: &str) -> PathBuf {
    PathBuf::from("/var/lib/chironfs").join(format!("ring-{node}"))
}

/// /run/chironfs/ring-<node>.sock.
pub fn default_socket(node: &str) -> PathBuf {
    PathBuf::from("/run/chironfs").join(format!("ring-{node}.sock"))
}

/// Runs the ring node until SIGTERM or SIGINT; returns the exit code.
pub fn main(args: RingNodeArgs) -> i32 {
    match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("chironfs: {e}");
            1
        }
    }
}

fn run(args: &RingNodeArgs) -> Result<(), String> {
    let (cfg, ring_cfg) = load(&args.config)?;
    // What RingService::start would find wrong, checked before anything
    // logs, so that a bad start is the one line above.
    let id = service::node_id(&ring_cfg)?;
    service::read_secret(&ring_cfg.secret_file)?;
    let group = crate::ctl::group_gid(cfg.ctl_group.as_deref())?;
    let sock = cfg
        .ctl
        .clone()
        .unwrap_or_else(|| default_socket(id.as_str()));
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        return Err(format!(
            "status socket {}: another daemon is listening",
            sock.display()
        ));
    }
    // Block the signals we handle before any thread exists, so every
    // thread inherits the mask and only this one receives them.
    let signals = super::handled_signals();
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let level = if args.debug {
        LogLevel::Debug
    } else {
        cfg.log_level
    };
    let target = match &cfg.log {
        Some(p) => super::log::Target::File(p),
        None => super::log::Target::Stderr,
    };
    super::log::init(target, level).map_err(|e| format!("cannot open the log: {e}"))?;
    if !cfg.replicas.is_empty() {
        tracing::warn!(
            "{}: a ring node mounts nothing: its replicas are ignored",
            args.config.display()
        );
    }
    let state_dir = cfg
        .state_dir
        .clone()
        .unwrap_or_else(|| default_state_dir(id.as_str()));
    create_private_dir(&state_dir)?;
    let ring = RingService::start(&ring_cfg, &state_dir)?;
    if let Err(e) =
        crate::ctl::server::start(crate::ctl::server::Target::ring_node(&ring), &sock, group)
    {
        ring.shutdown();
        return Err(e);
    }
    tracing::info!(
        "ring node {id} up: ring {}, store {}, status socket {}",
        ring.advertise,
        state_dir.display(),
        sock.display()
    );
    loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => super::log::reopen(),
            Ok(sig) => {
                tracing::info!("{sig:?}: stopping ring node {id}");
                break;
            }
            Err(e) => {
                tracing::error!("waiting for signals: {e}");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
    // No new commands: then the ring, which a command in flight still uses
    // until its timeout.
    let _ = std::fs::remove_file(&sock);
    ring.shutdown();
    tracing::info!("ring node {id} stopped");
    Ok(())
}

/// Creates the store's directory (and its parents), mode 0700.
fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("state_dir '{}': {e}", dir.display()))
}
