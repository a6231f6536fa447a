//! `chironctl`: talks to a daemon's status socket.
//!
//!   chironctl status  [MOUNTPOINT|SOCKET] [--json]
//!   chironctl check   [MOUNTPOINT|SOCKET]      Nagios/Icinga plugin
//!   chironctl metrics [MOUNTPOINT|SOCKET]      Prometheus text format
//!   chironctl disable|enable REPLICA [MOUNTPOINT|SOCKET]
//!   chironctl resync REPLICA [--full|--verify] [--wait] [MOUNTPOINT|SOCKET]
//!   chironctl trust REPLICA --confirm [MOUNTPOINT|SOCKET]
//!   chironctl log-level LEVEL [MOUNTPOINT|SOCKET]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{Request, Response, VERSION};
use crate::fs::FsStatus;

const USAGE: &str = "usage: chironctl status|check|metrics [MOUNTPOINT|SOCKET] [--json]
       chironctl disable|enable REPLICA [MOUNTPOINT|SOCKET]
       chironctl resync REPLICA [--full|--verify] [--wait] [MOUNTPOINT|SOCKET]
       chironctl trust REPLICA --confirm [MOUNTPOINT|SOCKET]
       chironctl log-level error|warn|info|debug|trace [MOUNTPOINT|SOCKET]";

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
    let in_sync = st.replicas.iter().filter(|r| r.state == "in-sync").count();
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
        .filter(|r| r.state != "in-sync")
        .map(|r| format!("{} {}", r.path, r.state))
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
    let req = Request {
        version: VERSION,
        command: "status".into(),
        replica: None,
        full: false,
        confirm: false,
        verify: false,
        level: None,
    };
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

/// Runs chironctl; returns the exit code.
pub fn main(argv: &[String]) -> i32 {
    let args: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    let json = args.contains(&"--json");
    let full = args.contains(&"--full");
    let confirm = args.contains(&"--confirm");
    let wait = args.contains(&"--wait");
    let verify = args.contains(&"--verify");
    let rest: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some((&cmd, rest)) = rest.split_first() else {
        eprintln!("{USAGE}");
        return 2;
    };
    if let Some(bad) = args.iter().find(|a| {
        a.starts_with("--")
            && !matches!(
                **a,
                "--json" | "--full" | "--confirm" | "--wait" | "--verify"
            )
    }) {
        eprintln!("chironctl: unknown option '{bad}'\n{USAGE}");
        return if cmd == "check" { UNKNOWN } else { 2 };
    }
    let (replica, target) = match cmd {
        "disable" | "enable" | "resync" | "trust" | "log-level" => match rest {
            [r, t @ ..] if t.len() <= 1 => (Some(r.to_string()), t.first().copied()),
            _ => {
                eprintln!("chironctl {cmd}: name a replica (path, index or id)\n{USAGE}");
                return 2;
            }
        },
        "status" | "check" | "metrics" if rest.len() <= 1 => (None, rest.first().copied()),
        _ => {
            eprintln!(
                "chironctl: unknown command or arguments '{}'\n{USAGE}",
                args.join(" ")
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
    let sock = match socket_for(target) {
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
        version: VERSION,
        command: command.into(),
        replica: replica.clone(),
        full,
        confirm,
        verify,
        level,
    };
    let resp = match call(&sock, &req) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if !resp.ok {
        return fail(resp.error.unwrap_or_else(|| "the daemon refused".into()));
    }
    let Some(st) = resp.status else {
        if cmd == "resync" && wait {
            return wait_for_resync(&sock, replica.as_deref().unwrap_or(""));
        }
        println!("ok");
        return 0;
    };
    match cmd {
        "status" if json => match serde_json::to_string_pretty(&st) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(e.to_string()),
        },
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
