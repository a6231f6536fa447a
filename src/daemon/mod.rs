//! Startup: check, fork to the background (the parent returns only once the
//! mount is live), open the replicas, mount, serve, and unmount on a signal.

mod bind;
pub mod checks;
pub mod log;
pub mod ring_node;
mod syslog;
mod systemd;

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, fork, pipe, setsid};

use crate::config::Config;
use crate::fs::{ChironFs, FsOptions};
use crate::fuse::Adapter;
use crate::meta::{EmbeddedStore, MetaStore};
use crate::replica::{Replica, ReplicaSpec};
use checks::{CheckedReplica, StartupError};

/// What the command line asked for.
pub struct Invocation {
    pub foreground: bool,
    pub debug: bool,
    pub config: Config,
    pub replicas: Vec<ReplicaSpec>,
    /// The replica list as written, for the default fsname.
    pub source: String,
    pub mountpoint: PathBuf,
}

/// One allocator arena for the whole daemon. glibc gives each busy thread
/// an arena of its own; the inode table's entries, allocated on whichever
/// FUSE thread served the lookup, then pin pages in every arena long after
/// the kernel forgot the inodes (a walk of 300,000 files left 63 MiB
/// resident with the default arenas, 18 MiB with one; src/DESIGN.md
/// section 4). The threads are few and their allocations small.
fn one_malloc_arena() {
    // Safe: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Runs the daemon; returns the process exit code.
pub fn start(inv: Invocation) -> i32 {
    let checked = match checks::check(&inv.replicas, &inv.mountpoint, &inv.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chironfs: {e}");
            return 1;
        }
    };
    if checked.len() == 1 {
        eprintln!(
            "chironfs: warning: only one replica ('{}'): nothing is replicated",
            checked[0].shown
        );
    }
    one_malloc_arena();
    // Block the signals we handle before any thread exists, so every
    // thread inherits the mask and only the signal thread receives them.
    let signals = handled_signals();
    if let Err(e) = signals.thread_block() {
        eprintln!("chironfs: cannot block signals: {e}");
        return 1;
    }
    if inv.foreground {
        return match serve(&inv, checked, &mut None) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("chironfs: {e}");
                1
            }
        };
    }
    let (rx, tx) = match pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("chironfs: cannot create a pipe: {e}");
            return 1;
        }
    };
    // Safe because no other thread exists yet (nothing has spawned one).
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("chironfs: cannot fork: {e}");
            1
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(tx);
            wait_for_child(rx)
        }
        Ok(ForkResult::Child) => {
            drop(rx);
            let _ = setsid();
            let mut tx = Some(std::fs::File::from(tx));
            match serve(&inv, checked, &mut tx) {
                Ok(()) => 0,
                Err(e) => {
                    if let Some(tx) = tx.as_mut() {
                        let _ = write!(tx, "E{e}");
                    }
                    1
                }
            }
        }
    }
}

fn handled_signals() -> SigSet {
    let mut s = SigSet::empty();
    s.add(Signal::SIGTERM);
    s.add(Signal::SIGINT);
    s.add(Signal::SIGHUP);
    s
}

/// The parent's side of startup: 'O' means mounted, 'E' and a message
/// means it failed, end of file means the daemon died.
fn wait_for_child(rx: OwnedFd) -> i32 {
    let mut rx = std::fs::File::from(rx);
    let mut first = [0u8; 1];
    let mut buf = String::new();
    if rx.read_exact(&mut first).is_ok() {
        buf.push(first[0] as char);
        if first[0] == b'E' {
            let _ = rx.read_to_string(&mut buf);
        }
    }
    match buf.chars().next() {
        Some('O') => 0,
        Some('E') => {
            eprintln!("chironfs: {}", &buf[1..]);
            1
        }
        _ => {
            eprintln!("chironfs: the daemon exited during startup (see the system log)");
            1
        }
    }
}

fn serve(
    inv: &Invocation,
    checked: Vec<CheckedReplica>,
    notify: &mut Option<std::fs::File>,
) -> Result<(), StartupError> {
    let cfg = &inv.config;
    let level = if inv.debug {
        crate::config::LogLevel::Debug
    } else {
        cfg.log_level
    };
    let target = match (&cfg.log, inv.foreground) {
        (Some(p), _) => log::Target::File(p),
        (None, true) => log::Target::Stderr,
        (None, false) => log::Target::System,
    };
    log::init(target, level)
        .map_err(|e| StartupError::Other(format!("cannot open the log: {e}")))?;
    // Modes are given exactly by the kernel (which applied the caller's umask).
    nix::sys::stat::umask(Mode::empty());
    raise_fd_limit();

    // Absolute: the store opens files under it for as long as it runs,
    // and a daemon in the background works from "/".
    let state_dir = cfg
        .state_dir
        .clone()
        .unwrap_or_else(|| default_state_dir(cfg.fsname.as_deref(), &inv.mountpoint));
    let state_dir = std::path::absolute(&state_dir).unwrap_or(state_dir);
    let local = EmbeddedStore::open(&state_dir).map_err(|e| StartupError::Other(e.to_string()))?;
    let previous = local
        .open_session()
        .map_err(|e| StartupError::Other(format!("metadata store: {e}")))?;
    let roots = checked
        .iter()
        .map(open_root)
        .collect::<Result<Vec<_>, _>>()?;
    let pairs: Vec<_> = checked
        .iter()
        .zip(roots.iter())
        .map(|(c, r)| (c.spec.path.clone(), r))
        .collect();
    let add: Vec<PathBuf> = cfg
        .add_replica
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    // This mount's name in the ledgers: its ring node's (every host its
    // own), or `local`.
    let writer = crate::replica::ledger::writer_name(&match &cfg.ring {
        Some(r) => crate::ring::service::node_id(r)
            .map_err(StartupError::Other)?
            .to_string(),
        None => "local".to_string(),
    });
    let (bound, ledger_generation) =
        bind::bind(&local, &pairs, &add, previous, &writer).map_err(StartupError::Other)?;
    // With a [ring], the metadata the hosts sharing these replicas must
    // agree on goes to the ring; the rest stays in this host's store.
    let (store, ring, shared): (Arc<dyn MetaStore>, _, _) = match &cfg.ring {
        None => (Arc::new(local), None, None),
        Some(ring_cfg) => {
            let ring = crate::ring::service::RingService::start(ring_cfg, &state_dir.join("ring"))
                .map_err(StartupError::Other)?;
            let ids: Vec<_> = bound.iter().map(|b| b.id).collect();
            let shared = crate::meta::SharedStore::new(
                local,
                ring.node().clone(),
                ring.handle(),
                &ids,
                Duration::from_secs_f64(ring_cfg.timeout),
                Duration::from_secs_f64(ring_cfg.takeover_after),
                Duration::from_secs_f64(ring_cfg.read_lease),
            );
            (
                shared.clone() as Arc<dyn MetaStore>,
                Some(ring),
                Some(shared),
            )
        }
    };
    let mut replicas = Vec::with_capacity(checked.len());
    for (i, ((c, root), b)) in checked.into_iter().zip(roots).zip(bound).enumerate() {
        let mut rep = Replica::new(i, c.spec, root, cfg.replica_threads, b.id, b.state, false)
            .map_err(|e| StartupError::ReplicaSetup(c.shown.clone(), e.to_string()))?;
        rep.local_fs = rep.is_local_fs();
        rep.inline = cfg.replica_io == crate::config::ReplicaIo::Auto && rep.local_fs;
        rep.needs_full
            .store(b.needs_full, std::sync::atomic::Ordering::Relaxed);
        replicas.push(rep);
    }
    let n = replicas.len();
    let opts = FsOptions {
        read_policy: cfg.read_policy,
        needed: cfg.write_quorum.needed(n),
        replica_timeout: Duration::from_secs_f64(cfg.replica_timeout),
        passthrough: cfg.passthrough,
        verify_content: cfg.verify == crate::config::Verify::Content,
        conflict_policy: cfg.conflict_policy,
        ledger_writer: writer,
        ledger_generation,
    };
    let fs = Arc::new(ChironFs::new(replicas, store.clone(), opts));
    if let Some(shared) = shared {
        fs.join_cluster(shared);
        let (watch_fs, every) = (fs.clone(), Duration::from_secs_f64(cfg.probe_interval));
        std::thread::Builder::new()
            .name("ring-watch".into())
            .spawn(move || watch_fs.watch_cluster(every))
            .map_err(|e| StartupError::Other(e.to_string()))?;
    }
    let adapter = Adapter::new(
        fs.clone(),
        Duration::from_secs_f64(cfg.attr_timeout),
        Duration::from_secs_f64(cfg.entry_timeout),
    );
    let fsname = cfg.fsname.clone().unwrap_or_else(|| inv.source.clone());
    let session_cfg = session_config(cfg, fsname.clone());
    // The status socket, metrics and resync worker are up before the mount
    // is visible, so whoever sees the mount can also query it.
    let (worker_fs, probe, bw) = (
        fs.clone(),
        Duration::from_secs_f64(cfg.probe_interval),
        cfg.resync_bandwidth.saturating_mul(1 << 20),
    );
    std::thread::Builder::new()
        .name("resync".into())
        .spawn(move || worker_fs.resync_loop(probe, bw))
        .map_err(|e| StartupError::Other(e.to_string()))?;
    let group = crate::ctl::group_gid(cfg.ctl_group.as_deref()).map_err(StartupError::Other)?;
    let sock = cfg
        .ctl
        .clone()
        .unwrap_or_else(|| crate::ctl::default_socket(Some(&fsname), &inv.mountpoint));
    let sock = std::path::absolute(&sock).unwrap_or(sock);
    let serving_ctl = match crate::ctl::server::start(
        crate::ctl::server::Target::mount(fs.clone(), ring.as_ref()),
        &sock,
        group,
    ) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!("{e}; chironctl will not reach this mount");
            false
        }
    };
    // chironctl finds this socket by mountpoint whatever `ctl=` says: the
    // record is keyed by the canonical mountpoint, resolved now, before the
    // mount hides the directory.
    let record = serving_ctl
        .then(|| {
            let canon = std::fs::canonicalize(&inv.mountpoint).ok()?;
            crate::ctl::write_mount_record(&canon, &sock)
                .map_err(|e| tracing::warn!("{e}; chironctl MOUNTPOINT will not find this mount"))
                .ok()
        })
        .flatten();
    if let Some(addr) = &cfg.metrics_listen {
        crate::ctl::http::start(fs.clone(), addr).map_err(StartupError::Other)?;
    }
    // Absolute, and made so before the mount: the session unmounts by
    // this path after the daemon moved to "/", and once mounted, resolving
    // it would ask the filesystem, which answers only once the session runs.
    let live = std::path::absolute(&inv.mountpoint).unwrap_or(inv.mountpoint.clone());
    let mut session = fuser::Session::new(adapter, &live, &session_cfg).map_err(|e| {
        if let Some(rec) = &record {
            let _ = std::fs::remove_file(rec);
        }
        StartupError::Mount(inv.mountpoint.display().to_string(), e.to_string())
    })?;
    tracing::info!(
        "mounted {} on {} ({} replicas)",
        inv.source,
        inv.mountpoint.display(),
        n
    );
    // Everything is up: only now does `mount` (the parent) return 0.
    if let Some(mut tx) = notify.take() {
        let _ = tx.write_all(b"O");
        drop(tx);
        detach_stdio();
        // A daemon holds no directory busy (every path it keeps is
        // absolute).
        if let Err(e) = nix::unistd::chdir("/") {
            tracing::warn!("cannot chdir to /: {e}");
        }
    }
    // systemd (Type=notify): ready once the mount answers a request.
    systemd::ready_when_answering(live);
    let mut unmounter = session.unmount_callable();
    let mountpoint = inv.mountpoint.clone();
    let grace_store = store.clone();
    let grace_sock = serving_ctl.then(|| sock.clone());
    let grace_record = record.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = handled_signals();
            loop {
                match set.wait() {
                    Ok(Signal::SIGHUP) => log::reopen(),
                    Ok(sig) => {
                        tracing::info!("{sig:?}: unmounting {}", mountpoint.display());
                        systemd::stopping();
                        if let Err(e) = unmounter.unmount() {
                            tracing::error!("unmount failed: {e}");
                            continue;
                        }
                        // The session ends once the kernel lets go of the
                        // mount; if something still holds it after a grace
                        // period, end anyway, with the store closed cleanly.
                        std::thread::sleep(Duration::from_secs(10));
                        tracing::warn!(
                            "{} still busy 10 s after {sig:?}; exiting",
                            mountpoint.display()
                        );
                        if let Err(e) = grace_store.close_session() {
                            tracing::error!("metadata store: {e}");
                        }
                        if let Some(sock) = &grace_sock {
                            let _ = std::fs::remove_file(sock);
                        }
                        if let Some(rec) = &grace_record {
                            let _ = std::fs::remove_file(rec);
                        }
                        std::process::exit(0);
                    }
                    Err(_) => continue,
                }
            }
        })
        .map_err(|e| StartupError::Other(e.to_string()))?;
    let ended = session.run();
    systemd::stopping();
    if serving_ctl {
        let _ = std::fs::remove_file(&sock);
    }
    if let Some(rec) = &record {
        let _ = std::fs::remove_file(rec);
    }
    ended.map_err(|e| StartupError::Other(format!("FUSE session ended: {e}")))?;
    if let Err(e) = store.close_session() {
        tracing::error!("metadata store: cannot record the clean unmount: {e}");
    }
    if let Some(ring) = ring {
        ring.shutdown();
    }
    tracing::info!("unmounted {}", inv.mountpoint.display());
    Ok(())
}

/// /var/lib/chironfs/<fsname>, or the mountpoint with '/' as '-'.
fn default_state_dir(fsname: Option<&str>, mountpoint: &std::path::Path) -> PathBuf {
    let name = match fsname {
        Some(n) => n.replace('/', "-"),
        None => {
            let canon = std::fs::canonicalize(mountpoint).unwrap_or(mountpoint.to_path_buf());
            let s = canon.to_string_lossy().trim_matches('/').replace('/', "-");
            if s.is_empty() { "root".into() } else { s }
        }
    };
    PathBuf::from("/var/lib/chironfs").join(name)
}

fn session_config(cfg: &Config, fsname: String) -> fuser::Config {
    use fuser::MountOption as M;
    let mut c = fuser::Config::default();
    c.mount_options = vec![
        M::FSName(fsname),
        // fuser passes Subtype only to fusermount; the kernel takes it as a
        // plain option, which makes the type `fuse.chironfs` in /proc/mounts.
        M::CUSTOM("subtype=chironfs".into()),
        M::DefaultPermissions,
        if cfg.ro { M::RO } else { M::RW },
        if cfg.noexec { M::NoExec } else { M::Exec },
        if cfg.nosuid { M::NoSuid } else { M::Suid },
        if cfg.nodev { M::NoDev } else { M::Dev },
    ];
    c.acl = if cfg.allow_other {
        fuser::SessionACL::All
    } else if cfg.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    c.n_threads = Some(cfg.threads);
    c.clone_fd = true;
    c
}

/// Opens a replica root. Nothing is written to it here: a replica that
/// turns out not to be what it claims must stay untouched.
fn open_root(c: &CheckedReplica) -> Result<OwnedFd, StartupError> {
    let setup = |e: String| StartupError::ReplicaSetup(c.shown.clone(), e);
    let path =
        CString::new(c.spec.path.as_os_str().as_bytes()).map_err(|e| setup(e.to_string()))?;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::open(path.as_c_str(), flags, Mode::empty())
        // Shown as before: "No such file or directory (os error 2)".
        .map_err(|e| setup(std::io::Error::from(e).to_string()))
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, max)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, max, max);
    }
}

/// Points stdin/stdout/stderr at /dev/null once the daemon is in the background.
fn detach_stdio() {
    use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout};
    let Ok(null) = nix::fcntl::open(c"/dev/null", OFlag::O_RDWR, Mode::empty()) else {
        return;
    };
    let _ = dup2_stdin(&null);
    let _ = dup2_stdout(&null);
    let _ = dup2_stderr(&null);
    if null.as_raw_fd() <= 2 {
        // It is one of the three now (they were closed): keep it open.
        let _ = null.into_raw_fd();
    }
}
