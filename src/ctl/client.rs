//! `chironctl`: talks to a daemon's status socket.
//!
//!   chironctl status  [MOUNTPOINT|SOCKET] [--json]
//!   chironctl check   [MOUNTPOINT|SOCKET]      Nagios/Icinga plugin
//!   chironctl metrics [MOUNTPOINT|SOCKET]      Prometheus text format
//!   chironctl disable|enable REPLICA [MOUNTPOINT|SOCKET]
//!   chironctl resync REPLICA [--full|--verify] [--wait] [MOUNTPOINT|SOCKET]
//!   chironctl trust REPLICA --confirm [MOUNTPOINT|SOCKET]
//!   chironctl log-level LEVEL [MOUNTPOINT|SOCKET]
//!   chironctl conflicts [MOUNTPOINT|SOCKET] [--json]
//!   chironctl ring status [MOUNTPOINT|SOCKET] [--json]
//!   chironctl ring join NODE HOST:PORT [MOUNTPOINT|SOCKET]
//!   chironctl ring leave NODE [MOUNTPOINT|SOCKET]
//!   chironctl ring quorum N R W [MOUNTPOINT|SOCKET]
//!   chironctl ring apply [MOUNTPOINT|SOCKET]
//!   chironctl ring get KEY [MOUNTPOINT|SOCKET] [--json]
//!   chironctl ring put KEY VALUE [MOUNTPOINT|SOCKET] [--json]
//!
//! The socket is also given with `-s SOCKET` (`--socket SOCKET`): the
//! only way to reach a ring node, which has no mountpoint.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{Request, Response};
use crate::fs::FsStatus;
use crate::meta::ConflictRecord;
use crate::ring::node::RingStatus;

const USAGE: &str = "usage: chironctl [-s SOCKET] status|check|metrics [MOUNTPOINT|SOCKET] [--json]
       chironctl [-s SOCKET] disable|enable REPLICA [MOUNTPOINT|SOCKET]
       chironctl [-s SOCKET] resync REPLICA [--full|--verify] [--wait] [MOUNTPOINT|SOCKET]
       chironctl [-s SOCKET] trust REPLICA --confirm [MOUNTPOINT|SOCKET]
       chironctl [-s SOCKET] log-level error|warn|info|debug|trace [MOUNTPOINT|SOCKET]
       chironctl [-s SOCKET] conflicts [MOUNTPOINT|SOCKET] [--json]
       chironctl [-s SOCKET] ring status [MOUNTPOINT|SOCKET] [--json]
       chironctl [-s SOCKET] ring join NODE HOST:PORT [MOUNTPOINT|SOCKET]
       chironctl [-s SOCKET] ring leave NODE [MOUNTPOINT|SOCKET]
       chironctl [-s SOCKET] ring quorum N R W [MOUNTPOINT|SOCKET]
       chironctl [-s SOCKET] ring apply [MOUNTPOINT|SOCKET]
       chironctl [-s SOCKET] ring get KEY [MOUNTPOINT|SOCKET] [--json]
       chironctl [-s SOCKET] ring put KEY VALUE [MOUNTPOINT|SOCKET] [--json]";

/// Nagios exit codes.
const OK: i32 = 0;
const WARNING: i32 = 1;
const CRITICAL: i32 = 2;
const UNKNOWN: i32 = 3;

fn socket_for(target: Option<&str>) -> Result<PathBuf, String> {
    match target {
        Some(t) => {
            let p = Path::new(t);
            match std::fs::metadata(p) {
                Ok(md) if md.file_type().is_socket() => Ok(p.to_path_buf()),
                Ok(md) if md.is_dir() => {
                    let source = super::mount_source(p);
                    Ok(super::default_socket(source.as_deref(), p))
                }
                Ok(_) => Err(format!("'{t}' is neither a mountpoint nor a socket")),
                Err(e) => Err(format!("'{t}': {e}")),
            }
        }
        None => {
            let socks: Vec<PathBuf> = std::fs::read_dir("/run/chironfs")
                .map(|d| {
                    d.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                        .collect()
                })
                .unwrap_or_default();
            match socks.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err("no chironfs daemon found in /run/chironfs; name a mountpoint".into()),
                _ => Err("several chironfs daemons run; name a mountpoint or socket".into()),
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
    let (word, code) = if in_sync == 0 || in_sync < st.write_quorum {
        ("CRITICAL", CRITICAL)
    } else if in_sync < total {
        ("WARNING", WARNING)
    } else {
        ("OK", OK)
    };
    let detail: Vec<String> = st
        .replicas
        .iter()
        .filter(|r| !good(r))
        .map(|r| {
            if r.state == "in-sync" && !r.stale_for.is_empty() {
                format!("{} out of sync for {}", r.path, r.stale_for.join("; "))
            } else if r.state == "in-sync" {
                format!("{} in sync but for {} paths being copied", r.path, r.missed)
            } else {
                format!("{} {}", r.path, r.state)
            }
        })
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

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition format.
pub fn metrics(st: &FsStatus) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, rows: Vec<(String, f64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, v) in rows {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let l = |r: &crate::fs::status::ReplicaStatus| {
        format!("{{replica=\"{}\",id=\"{}\"}}", label(&r.path), label(&r.id))
    };
    family(
        "chironfs_write_quorum",
        "Replicas a write needs.",
        vec![(String::new(), st.write_quorum as f64)],
    );
    family(
        "chironfs_replica_in_sync",
        "1 if the replica is in sync and serves reads.",
        st.replicas
            .iter()
            .map(|r| (l(r), (r.state == "in-sync") as u8 as f64))
            .collect(),
    );
    family(
        "chironfs_replica_missed_paths",
        "Paths the replica missed and still needs.",
        st.replicas
            .iter()
            .map(|r| (l(r), r.missed as f64))
            .collect(),
    );
    family(
        "chironfs_replica_reads",
        "Read-side operations sent to the replica.",
        st.replicas.iter().map(|r| (l(r), r.reads as f64)).collect(),
    );
    family(
        "chironfs_replica_writes",
        "Mutations sent to the replica.",
        st.replicas
            .iter()
            .map(|r| (l(r), r.writes as f64))
            .collect(),
    );
    family(
        "chironfs_replica_latency_seconds",
        "Mean time a request to the replica took.",
        st.replicas
            .iter()
            .map(|r| (l(r), r.latency_us / 1e6))
            .collect(),
    );
    family(
        "chironfs_pending_paths",
        "Paths with a mutation possibly in flight.",
        vec![(String::new(), st.pending as f64)],
    );
    family(
        "chironfs_replica_in_flight",
        "Requests in flight on the replica.",
        st.replicas
            .iter()
            .map(|r| (l(r), r.in_flight as f64))
            .collect(),
    );
    family(
        "chironfs_resync_bytes_done",
        "Bytes copied by the resync in progress.",
        st.replicas
            .iter()
            .map(|r| (l(r), r.resync.as_ref().map_or(0.0, |p| p.bytes_done as f64)))
            .collect(),
    );
    out
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

/// The command line split into options and words.
struct Args<'a> {
    socket: Option<&'a str>,
    flags: Vec<&'a str>,
    words: Vec<&'a str>,
}

/// Takes `-s SOCKET`, `--socket SOCKET`, `--socket=SOCKET` and the `--x`
/// flags out of the arguments; after `--` everything is a word.
fn split_args(argv: &[String]) -> Result<Args<'_>, String> {
    let mut a = Args {
        socket: None,
        flags: Vec::new(),
        words: Vec::new(),
    };
    let mut it = argv.iter().skip(1).map(String::as_str);
    while let Some(arg) = it.next() {
        match arg {
            "--" => {
                a.words.extend(it.by_ref());
            }
            "-s" | "--socket" => {
                a.socket = Some(it.next().ok_or(format!("{arg} needs a socket path"))?);
            }
            _ if arg.starts_with("--socket=") => a.socket = Some(&arg["--socket=".len()..]),
            _ if arg.starts_with("--") => a.flags.push(arg),
            _ => a.words.push(arg),
        }
    }
    Ok(a)
}

/// Runs chironctl; returns the exit code.
pub fn main(argv: &[String]) -> i32 {
    let a = match split_args(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chironctl: {e}\n{USAGE}");
            return 2;
        }
    };
    let has = |f: &str| a.flags.contains(&f);
    let (json, full, confirm, wait, verify) = (
        has("--json"),
        has("--full"),
        has("--confirm"),
        has("--wait"),
        has("--verify"),
    );
    let Some((&cmd, rest)) = a.words.split_first() else {
        eprintln!("{USAGE}");
        return 2;
    };
    if let Some(bad) = a.flags.iter().find(|f| {
        !matches!(
            **f,
            "--json" | "--full" | "--confirm" | "--wait" | "--verify"
        )
    }) {
        eprintln!("chironctl: unknown option '{bad}'\n{USAGE}");
        return if cmd == "check" { UNKNOWN } else { 2 };
    }
    if cmd == "ring" {
        return ring_main(rest, a.socket, json);
    }
    let (replica, target) = match cmd {
        "disable" | "enable" | "resync" | "trust" | "log-level" => match rest {
            [r, t @ ..] if t.len() <= 1 => (Some(r.to_string()), t.first().copied()),
            _ => {
                eprintln!("chironctl {cmd}: name a replica (path, index or id)\n{USAGE}");
                return 2;
            }
        },
        "status" | "check" | "metrics" | "conflicts" if rest.len() <= 1 => {
            (None, rest.first().copied())
        }
        _ => {
            eprintln!(
                "chironctl: unknown command or arguments '{}'\n{USAGE}",
                argv.iter()
                    .skip(1)
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            return 2;
        }
    };
    let fail = |e: String| {
        if cmd == "check" {
            println!("CHIRONFS UNKNOWN - {e}");
            UNKNOWN
        } else {
            eprintln!("chironctl: {e}");
            1
        }
    };
    let sock = match pick_socket(a.socket, target) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let command = if matches!(cmd, "check" | "metrics") {
        "status"
    } else {
        cmd
    };
    let (replica, level) = if cmd == "log-level" {
        (None, replica)
    } else {
        (replica, None)
    };
    let req = Request {
        replica: replica.clone(),
        full,
        confirm,
        verify,
        level,
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
        if json {
            return print_json(&list);
        }
        print!("{}", render_conflicts(&list));
        return 0;
    }
    let Some(st) = resp.status else {
        if cmd == "resync" && wait {
            return wait_for_resync(&sock, replica.as_deref().unwrap_or(""));
        }
        println!("ok");
        return 0;
    };
    match cmd {
        "status" if json => return print_json(&st),
        "status" => print!("{}", render_table(&st)),
        "check" => {
            let (line, code) = check(&st);
            println!("{line}");
            return code;
        }
        _ => print!("{}", metrics(&st)),
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
fn ring_main(words: &[&str], socket: Option<&str>, json: bool) -> i32 {
    let usage = |why: &str| {
        eprintln!("chironctl ring: {why}\n{USAGE}");
        2
    };
    let Some((&sub, rest)) = words.split_first() else {
        return usage("name a subcommand: status, join, leave, quorum, apply, get or put");
    };
    // Arguments the subcommand takes, then at most one MOUNTPOINT|SOCKET.
    let takes = match sub {
        "status" | "apply" => 0,
        "leave" | "get" => 1,
        "join" | "put" => 2,
        "quorum" => 3,
        other => return usage(&format!("unknown subcommand '{other}'")),
    };
    if rest.len() < takes || rest.len() > takes + 1 {
        let args = match sub {
            "leave" => " NODE",
            "get" => " KEY",
            "join" => " NODE HOST:PORT",
            "put" => " KEY VALUE",
            "quorum" => " N R W",
            _ => "",
        };
        eprintln!("chironctl ring {sub}: expected {sub}{args} [MOUNTPOINT|SOCKET]");
        return 2;
    }
    let (args, target) = (&rest[..takes], rest.get(takes).copied());
    let arg = |i: usize| args.get(i).map(|s| s.to_string());
    let req = match sub {
        "join" => Request {
            node: arg(0),
            addr: arg(1),
            ..Request::new("ring-join")
        },
        "leave" => Request {
            node: arg(0),
            ..Request::new("ring-leave")
        },
        "get" => Request {
            key: arg(0),
            ..Request::new("ring-get")
        },
        "put" => Request {
            key: arg(0),
            value: arg(1),
            ..Request::new("ring-put")
        },
        "quorum" => {
            let num = |i: usize| args[i].parse::<u8>().ok().filter(|v| (1..=7).contains(v));
            let (Some(n), Some(r), Some(w)) = (num(0), num(1), num(2)) else {
                eprintln!(
                    "chironctl ring quorum: N, R and W are numbers from 1 to 7, not '{}'",
                    args.join(" ")
                );
                return 2;
            };
            Request {
                quorum: Some(crate::ring::layout::Quorum { n, r, w }),
                ..Request::new("ring-quorum")
            }
        }
        _ => Request::new(&format!("ring-{sub}")),
    };
    let fail = |e: String| {
        eprintln!("chironctl: {e}");
        1
    };
    let sock = match pick_socket(socket, target) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
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
                return fail(format!("key '{}' not found", args[0]));
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
