//! `chironctl`: talks to a daemon's status socket. The command line is
//! `args.rs`; here, what each command asks and how the answer is shown.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::args::{self, Command, Ring, UNKNOWN};
use super::protocol::{Request, Response};
use crate::fs::FsStatus;
use crate::meta::ConflictRecord;
use crate::ring::node::RingStatus;
use crate::ring::operator::OperatorKey;

/// Nagios exit codes.
const OK: i32 = 0;
const WARNING: i32 = 1;
const CRITICAL: i32 = 2;

fn socket_for(target: Option<&str>) -> Result<PathBuf, String> {
    match target {
        Some(t) => {
            let p = Path::new(t);
            match std::fs::metadata(p) {
                Ok(md) if md.file_type().is_socket() => Ok(p.to_path_buf()),
                Ok(md) if md.is_dir() => socket_of_mount(t),
                Ok(_) => Err(format!("'{t}' is neither a mountpoint nor a socket")),
                Err(e) => Err(format!("'{t}': {e}")),
            }
        }
        None => {
            let mut socks: Vec<PathBuf> = std::fs::read_dir("/run/chironfs")
                .map(|d| {
                    d.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                        .collect()
                })
                .unwrap_or_default();
            // Daemons with `ctl=` elsewhere are found by their records.
            for s in super::recorded_sockets() {
                if is_socket(&s) && !socks.contains(&s) {
                    socks.push(s);
                }
            }
            match socks.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err("no chironfs daemon found in /run/chironfs; name a mountpoint".into()),
                _ => Err("several chironfs daemons run; name a mountpoint or socket".into()),
            }
        }
    }
}

fn is_socket(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|md| md.file_type().is_socket())
}

/// The socket of the daemon serving the mount at directory `t`: the one
/// its daemon recorded under /run/chironfs/mounts (whatever `ctl=` said),
/// else the default socket (a daemon that records nothing).
fn socket_of_mount(t: &str) -> Result<PathBuf, String> {
    let canon = std::fs::canonicalize(t).map_err(|e| format!("'{t}': {e}"))?;
    let Some((fstype, source)) = super::mount_at(&canon) else {
        return Err(format!(
            "'{t}' is not a mountpoint: name a chironfs mountpoint or its socket"
        ));
    };
    if fstype != "fuse.chironfs" && fstype != "fuse" {
        return Err(format!(
            "'{t}' is a {fstype} mount, not chironfs: name a chironfs mountpoint or its socket"
        ));
    }
    let daemon_gone =
        |pid: Option<u32>| pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists());
    match super::read_mount_record(&canon) {
        Some((sock, pid)) if is_socket(&sock) && !daemon_gone(pid) => Ok(sock),
        Some((sock, pid)) => Err(format!(
            "'{t}': stale record {}: its daemon{} is gone or its socket {} is not there \
             (the daemon ended without unmounting?)",
            super::mount_record_path(&canon).display(),
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            sock.display()
        )),
        None => {
            let sock = super::default_socket(Some(&source), &canon);
            if is_socket(&sock) {
                Ok(sock)
            } else {
                Err(format!(
                    "'{t}': no daemon recorded for this mount in {} and no socket at {}",
                    super::MOUNT_RECORDS,
                    sock.display()
                ))
            }
        }
    }
}

fn call(sock: &Path, req: &Request) -> Result<Response, String> {
    let conn = UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(15)));
    let mut w = conn.try_clone().map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    w.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(conn)
        .read_line(&mut reply)
        .map_err(|e| format!("{}: {e}", sock.display()))?;
    serde_json::from_str(&reply).map_err(|e| format!("malformed reply from the daemon: {e}"))
}

fn human_bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

/// The table for people.
pub fn render_table(st: &FsStatus) -> String {
    let mut out = format!(
        "write quorum {}, {} paths pending\n",
        st.write_quorum, st.pending
    );
    if let Some(l) = &st.read_lease {
        out.push_str(&format!("read lease {l}\n"));
    }
    out.push_str(
        "#  STATE      PRIO  MISSED  READS     WRITES    IN-FLIGHT  LATENCY   OPEN  PATH\n",
    );
    for r in &st.replicas {
        out.push_str(&format!(
            "{:<2} {:<10} {:<5} {:<7} {:<9} {:<9} {:<10} {:<9} {:<5} {}\n",
            r.index,
            r.state,
            if r.low_priority { "low" } else { "high" },
            r.missed,
            r.reads,
            r.writes,
            r.in_flight,
            format!("{:.0}us", r.latency_us),
            r.open_handles,
            r.path
        ));
        out.push_str(&format!("   id {}\n", r.id));
        if r.kernel_opens > 0 && r.state != "in-sync" {
            out.push_str(&format!(
                "   {} passthrough opens still read it (until closed)\n",
                r.kernel_opens
            ));
        }
        if let Some(p) = &r.resync {
            let eta = p.eta_seconds.map_or("?".into(), |s| format!("{s:.0}s"));
            out.push_str(&format!(
                "   resync: {} entries, {} done; {} entries, {} left; {}/s, ETA {eta}\n",
                p.files_done,
                human_bytes(p.bytes_done as f64),
                p.files_left,
                human_bytes(p.bytes_left as f64),
                human_bytes(p.bytes_per_sec)
            ));
        }
        if !r.stale_for.is_empty() {
            out.push_str(&format!(
                "   not read here: out of sync for {}\n",
                r.stale_for.join("; ")
            ));
        }
        if !r.cause.is_empty() && r.state != "in-sync" {
            let since = r
                .since
                .map_or(String::new(), |s| format!(" (since {s}, unix time)"));
            out.push_str(&format!("   cause: {}{since}\n", r.cause));
        }
    }
    out
}

/// Nagios status line and exit code.
pub fn check(st: &FsStatus) -> (String, i32) {
    let total = st.replicas.len();
    // A replica another host sees out of sync serves no reads: not in sync.
    // Nor is one with missed paths (it serves the others, not those).
    let good = |r: &&crate::fs::ReplicaStatus| {
        r.state == "in-sync" && r.stale_for.is_empty() && r.missed == 0
    };
    let in_sync = st.replicas.iter().filter(good).count();
    let missed: u64 = st.replicas.iter().map(|r| r.missed).sum();
    // A host without its read lease (lost, or fenced by a host that took
    // it for dead) serves no reads and makes no changes at all.
    let lease_lost = st
        .read_lease
        .as_deref()
        .is_some_and(|l| l.starts_with("lost") || l.starts_with("fenced"));
    let (word, code) = if in_sync == 0 || in_sync < st.write_quorum || lease_lost {
        ("CRITICAL", CRITICAL)
    } else if in_sync < total {
        ("WARNING", WARNING)
    } else {
        ("OK", OK)
    };
    let lease_detail = lease_lost.then(|| match st.read_lease.as_deref() {
        Some(l) if l.starts_with("fenced") => format!("no read lease, {l}"),
        _ => "no read lease: reads and changes answer EIO".to_string(),
    });
    let detail: Vec<String> = lease_detail
        .into_iter()
        .chain(st.replicas.iter().filter(|r| !good(r)).map(|r| {
            if r.state == "in-sync" && !r.stale_for.is_empty() {
                format!("{} out of sync for {}", r.path, r.stale_for.join("; "))
            } else if r.state == "in-sync" {
                format!("{} in sync but for {} paths being copied", r.path, r.missed)
            } else {
                format!("{} {}", r.path, r.state)
            }
        }))
        .collect();
    let extra = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({})", detail.join(", "))
    };
    (
        format!(
            "CHIRONFS {word} - {in_sync}/{total} replicas in sync{extra} | in_sync={in_sync};;;0;{total} missed={missed};;;0"
        ),
        code,
    )
}

/// Follows a resync until the replica is in sync (or failed): a progress
/// bar on a terminal, one plain line per update otherwise.
fn wait_for_resync(sock: &Path, name: &str) -> i32 {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let req = Request::new("status");
    let mut last = String::new();
    loop {
        let st = match call(sock, &req) {
            Ok(Response {
                status: Some(st), ..
            }) => st,
            Ok(r) => {
                eprintln!("chironctl: {}", r.error.unwrap_or_default());
                return 1;
            }
            Err(e) => {
                eprintln!("chironctl: {e}");
                return 1;
            }
        };
        let Some(r) = st
            .replicas
            .iter()
            .find(|r| r.path == name || r.id == name || r.index.to_string() == name)
        else {
            eprintln!("chironctl: no replica '{name}'");
            return 1;
        };
        match r.state.as_str() {
            "in-sync" => {
                if tty {
                    println!();
                }
                println!("{}: in sync", r.path);
                return 0;
            }
            "failed" | "disabled" => {
                if tty {
                    println!();
                }
                eprintln!("chironctl: {} is {}: {}", r.path, r.state, r.cause);
                return 1;
            }
            _ => {}
        }
        let line = match &r.resync {
            Some(p) => {
                let total = p.files_done + p.files_left;
                let frac = if total == 0 {
                    0.0
                } else {
                    p.files_done as f64 / total as f64
                };
                let eta = p.eta_seconds.map_or("?".into(), |s| format!("{s:.0}s"));
                if tty {
                    let filled = (frac * 30.0) as usize;
                    format!(
                        "\r[{}{}] {:>3.0}% {} entries, {} left, {}/s, ETA {eta}   ",
                        "#".repeat(filled),
                        "-".repeat(30 - filled.min(30)),
                        frac * 100.0,
                        p.files_done,
                        p.files_left,
                        human_bytes(p.bytes_per_sec)
                    )
                } else {
                    format!(
                        "{}: {} entries done, {} left, {}/s, ETA {eta}",
                        r.path,
                        p.files_done,
                        p.files_left,
                        human_bytes(p.bytes_per_sec)
                    )
                }
            }
            None => format!("{}: {} ({} paths to resync)", r.path, r.state, r.missed),
        };
        if tty {
            print!("{line}");
            let _ = std::io::stdout().flush();
        } else if line != last {
            println!("{line}");
        }
        last = line;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The ring status for people.
pub fn render_ring(st: &RingStatus) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut out = format!("node {}, ", st.node);
    if st.layout_version == 0 {
        out.push_str(&format!(
            "no layout yet, N={} R={} W={}\n",
            st.n, st.r, st.w
        ));
    } else {
        let transition = st.transition_from.map_or(String::new(), |v| {
            format!(" (transition from {v}: syncing)")
        });
        out.push_str(&format!(
            "layout version {}{transition}, N={} R={} W={}\n",
            st.layout_version, st.n, st.r, st.w
        ));
    }
    if !st.members.is_empty() {
        let w = st
            .members
            .iter()
            .map(|m| m.node.len())
            .max()
            .unwrap_or(0)
            .max(4);
        let aw = st
            .members
            .iter()
            .map(|m| m.addr.len())
            .max()
            .unwrap_or(0)
            .max(7);
        out.push_str(&format!(
            "{:<w$}  {:<aw$}  ALIVE  PARTITIONS  SYNCED\n",
            "NODE", "ADDRESS"
        ));
        for m in &st.members {
            out.push_str(&format!(
                "{:<w$}  {:<aw$}  {:<5}  {:<10}  {}\n",
                m.node,
                m.addr,
                yes(m.alive),
                m.partitions,
                yes(m.synced)
            ));
        }
    }
    if !st.peers.is_empty() {
        let peers: Vec<String> = st.peers.iter().map(|(n, a)| format!("{n} ({a})")).collect();
        out.push_str(&format!(
            "alive but not in the layout: {}\n",
            peers.join(", ")
        ));
    }
    if st.staged_join.is_empty() && st.staged_leave.is_empty() && st.staged_quorum.is_none() {
        if st.layout_version == 0 {
            out.push_str(
                "nothing staged: stage the nodes with `chironctl ring join NODE HOST:PORT`, then `chironctl ring apply`\n",
            );
        }
    } else {
        out.push_str(&format!("staged (not applied): {}\n", staged_summary(st)));
    }
    out.push_str(&format!(
        "keys {}, hints {}, read repairs {}, hints delivered {}, entries repaired {}\n",
        st.keys, st.hints, st.read_repairs, st.hints_delivered, st.entries_repaired
    ));
    out
}

/// Conflict copies for people.
pub fn render_conflicts(list: &[ConflictRecord]) -> String {
    if list.is_empty() {
        return "no conflict copies\n".to_string();
    }
    let pw = list.iter().map(|c| c.path.len()).max().unwrap_or(0).max(4);
    let cw = list.iter().map(|c| c.copy.len()).max().unwrap_or(0).max(4);
    let hw = list.iter().map(|c| c.host.len()).max().unwrap_or(0).max(4);
    let mut out = format!(
        "{:<pw$}  {:<cw$}  {:<hw$}  {:<8}  TIME (UTC)\n",
        "PATH", "COPY", "HOST", "POLICY"
    );
    for c in list {
        out.push_str(&format!(
            "{:<pw$}  {:<cw$}  {:<hw$}  {:<8}  {}\n",
            c.path,
            c.copy,
            c.host,
            c.policy,
            utc(c.at)
        ));
    }
    out
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(ms: u64) -> String {
    let (y, m, d, hh, mm, ss) = crate::clock::utc((ms / 1000) as i64);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}")
}

/// What a filesystem command sends, and how its answer is shown.
#[derive(Default)]
struct Plan {
    cmd: &'static str,
    replica: Option<String>,
    level: Option<String>,
    target: Option<String>,
    json: bool,
    full: bool,
    verify: bool,
    wait: bool,
    confirm: bool,
}

fn plan(command: Command) -> Plan {
    match command {
        Command::Status { target, json } => Plan {
            cmd: "status",
            target: target.target,
            json: json.json,
            ..Plan::default()
        },
        Command::Check { target, .. } => Plan {
            cmd: "check",
            target: target.target,
            ..Plan::default()
        },
        Command::Metrics { target, .. } => Plan {
            cmd: "metrics",
            target: target.target,
            ..Plan::default()
        },
        Command::Disable { replica, target } => Plan {
            cmd: "disable",
            replica: Some(replica),
            target: target.target,
            ..Plan::default()
        },
        Command::Enable { replica, target } => Plan {
            cmd: "enable",
            replica: Some(replica),
            target: target.target,
            ..Plan::default()
        },
        Command::Resync {
            replica,
            full,
            verify,
            wait,
            target,
        } => Plan {
            cmd: "resync",
            replica: Some(replica),
            target: target.target,
            full,
            verify,
            wait,
            ..Plan::default()
        },
        Command::Trust {
            replica,
            confirm,
            target,
        } => Plan {
            cmd: "trust",
            replica: Some(replica),
            target: target.target,
            confirm,
            ..Plan::default()
        },
        Command::LogLevel { level, target } => Plan {
            cmd: "log-level",
            level: Some(level.as_str().to_string()),
            target: target.target,
            ..Plan::default()
        },
        Command::Conflicts { target, json } => Plan {
            cmd: "conflicts",
            target: target.target,
            json: json.json,
            ..Plan::default()
        },
        // Dispatched before.
        Command::Ring(_) | Command::Completions { .. } => Plan::default(),
    }
}

/// Runs chironctl; returns the exit code.
pub fn main(argv: &[String]) -> i32 {
    let cli = match args::parse(argv) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let socket = cli.socket.as_deref();
    let p = match cli.command {
        Command::Completions { shell } => {
            args::completions(shell);
            return 0;
        }
        Command::Ring(r) => return ring_main(r, socket),
        other => plan(other),
    };
    let cmd = p.cmd;
    let fail = |e: String| {
        if cmd == "check" {
            println!("CHIRONFS UNKNOWN - {e}");
            UNKNOWN
        } else {
            eprintln!("chironctl: {e}");
            1
        }
    };
    let sock = match pick_socket(socket, p.target.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let command = if matches!(cmd, "check" | "metrics") {
        "status"
    } else {
        cmd
    };
    let req = Request {
        replica: p.replica.clone(),
        full: p.full,
        confirm: p.confirm,
        verify: p.verify,
        level: p.level,
        ..Request::new(command)
    };
    let resp = match call(&sock, &req) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if !resp.ok {
        return fail(resp.error.unwrap_or_else(|| "the daemon refused".into()));
    }
    if cmd == "conflicts" {
        let list = resp.conflicts.unwrap_or_default();
        if p.json {
            return print_json(&list);
        }
        print!("{}", render_conflicts(&list));
        return 0;
    }
    let Some(st) = resp.status else {
        if cmd == "resync" && p.wait {
            return wait_for_resync(&sock, p.replica.as_deref().unwrap_or(""));
        }
        println!("ok");
        return 0;
    };
    match cmd {
        "status" if p.json => return print_json(&st),
        "status" => print!("{}", render_table(&st)),
        "check" => {
            let (line, code) = check(&st);
            println!("{line}");
            return code;
        }
        _ => print!("{}", super::metrics::prometheus_text(&st)),
    }
    0
}

/// `-s SOCKET`, or the positional MOUNTPOINT|SOCKET, or the one daemon
/// running; both at once is an error.
fn pick_socket(socket: Option<&str>, target: Option<&str>) -> Result<PathBuf, String> {
    match (socket, target) {
        (Some(s), None) => Ok(PathBuf::from(s)),
        (Some(_), Some(t)) => Err(format!("both -s and '{t}' name a daemon: give one of them")),
        (None, t) => socket_for(t),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> i32 {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            println!("{s}");
            0
        }
        Err(e) => {
            eprintln!("chironctl: {e}");
            1
        }
    }
}

/// `chironctl ring ...`.
fn ring_main(ring: Ring, socket: Option<&str>) -> i32 {
    let mut operator: Option<OperatorKey> = None;
    let (sub, mut req, target, json, key) = match ring {
        Ring::Status { target, json } => (
            "status",
            Request::new("ring-status"),
            target,
            json,
            String::new(),
        ),
        Ring::Join {
            node,
            addr,
            target,
            json,
        } => (
            "join",
            Request {
                node: Some(node),
                addr: Some(addr),
                ..Request::new("ring-join")
            },
            target,
            json,
            String::new(),
        ),
        Ring::Leave { node, target, json } => (
            "leave",
            Request {
                node: Some(node),
                ..Request::new("ring-leave")
            },
            target,
            json,
            String::new(),
        ),
        Ring::Apply { key, target, json } => {
            // Read first: a bad key file stops before anything is asked.
            let op = match key.as_deref().map(OperatorKey::load).transpose() {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("chironctl: {e}");
                    return 1;
                }
            };
            operator = op;
            (
                "apply",
                Request::new("ring-apply"),
                target,
                json,
                String::new(),
            )
        }
        Ring::Keygen { file } => return keygen(&file),
        Ring::Finish {
            force,
            target,
            json,
        } => {
            if !force {
                eprintln!(
                    "chironctl: `chironctl ring finish` ends a layout transition without the nodes that did not sync: what only a dead node held is lost, and what a live node did not sync yet is missing from reads until anti-entropy brings it; wait for `chironctl ring status` to show no transition, or say --force"
                );
                return 2;
            }
            (
                "finish",
                Request::new("ring-finish"),
                target,
                json,
                String::new(),
            )
        }
        Ring::Get { key, target, json } => (
            "get",
            Request {
                key: Some(key.clone()),
                ..Request::new("ring-get")
            },
            target,
            json,
            key,
        ),
        Ring::Put {
            key,
            value,
            target,
            json,
        } => (
            "put",
            Request {
                key: Some(key.clone()),
                value: Some(value),
                ..Request::new("ring-put")
            },
            target,
            json,
            key,
        ),
        Ring::Quorum {
            n,
            r,
            w,
            target,
            json,
        } => (
            "quorum",
            Request {
                quorum: Some(crate::ring::layout::Quorum { n, r, w }),
                ..Request::new("ring-quorum")
            },
            target,
            json,
            String::new(),
        ),
    };
    let (target, json) = (target.target, json.json);
    let fail = |e: String| {
        eprintln!("chironctl: {e}");
        1
    };
    let sock = match pick_socket(socket, target.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if let Some(op) = &operator {
        // Signs what the node says the staged changes make; the node
        // commits it only if it still makes exactly that.
        let plan = match call(&sock, &Request::new("ring-plan")) {
            Ok(r) if r.ok => r.plan,
            Ok(r) => return fail(r.error.unwrap_or_else(|| "the daemon refused".into())),
            Err(e) => return fail(e),
        };
        let Some(plan) = plan else {
            return fail("the daemon sent no layout to sign".into());
        };
        req.signature = Some(op.sign(&plan));
    }
    let resp = match call(&sock, &req) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if !resp.ok {
        return fail(resp.error.unwrap_or_else(|| "the daemon refused".into()));
    }
    match sub {
        "get" | "put" => {
            let values = resp.values.unwrap_or_default();
            if json {
                return print_json(&serde_json::json!({
                    "values": values,
                    "context": resp.context.unwrap_or_default(),
                }));
            }
            if sub == "get" && values.is_empty() {
                return fail(format!("key '{key}' not found"));
            }
            if values.len() > 1 {
                eprintln!(
                    "chironctl: {} siblings (concurrent writes); a put replaces them all",
                    values.len()
                );
            }
            for v in values {
                println!("{v}");
            }
            0
        }
        _ => {
            let Some(st) = resp.ring else {
                return fail("the daemon sent no ring status".into());
            };
            if json {
                return print_json(&st);
            }
            match sub {
                "join" | "leave" | "quorum" => {
                    println!(
                        "staged; commit with `chironctl ring apply` (staged now: {})",
                        staged_summary(&st)
                    );
                }
                "finish" => println!(
                    "layout version {}: transition ended by force",
                    st.layout_version
                ),
                "apply" => match st.transition_from {
                    Some(old) => println!(
                        "layout version {} committed; transition from version {old} until the new owners have synced (see `chironctl ring status`)",
                        st.layout_version
                    ),
                    None => println!("layout version {} committed", st.layout_version),
                },
                _ => print!("{}", render_ring(&st)),
            }
            0
        }
    }
}

/// `chironctl ring keygen FILE`.
fn keygen(file: &std::path::Path) -> i32 {
    let made = OperatorKey::generate().and_then(|k| k.save_new(file).map(|()| k));
    match made {
        Ok(k) => {
            println!(
                "operator key saved in {}; whoever can read it can change the ring's layout, so keep it off the ring's nodes (`--key /dev/stdin` reads it from a pipe). List its public half in every node's [ring] section:",
                file.display()
            );
            println!("operator_keys = [\"{}\"]", k.public().to_hex());
            0
        }
        Err(e) => {
            eprintln!("chironctl: {e}");
            1
        }
    }
}

fn staged_summary(st: &RingStatus) -> String {
    let mut v: Vec<String> = st
        .staged_join
        .iter()
        .map(|(n, a)| format!("join {n} at {a}"))
        .collect();
    v.extend(st.staged_leave.iter().map(|n| format!("leave {n}")));
    if let Some(q) = &st.staged_quorum {
        v.push(format!("quorum {q}"));
    }
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}
