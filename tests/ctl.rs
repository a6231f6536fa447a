//! Guards the status socket and chironctl: status for people and scripts,
//! Nagios exit codes, Prometheus metrics, operator commands, and that bad
//! input or an unprivileged user gets nothing but an error.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Mount, run_as};

const CHIRONFS: &str = env!("CARGO_BIN_EXE_chironfs");

fn ctl(args: &[&str]) -> Output {
    Command::new(CHIRONFS)
        .arg("ctl")
        .args(args)
        .output()
        .unwrap()
}

fn mount_with_socket(opts: &[&str]) -> (Mount, PathBuf) {
    let root = common::TestRoot::new();
    let sock = root.path().join("ctl.sock");
    let mut b = Mount::builder()
        .root(root)
        .fresh(2)
        .option(&format!("ctl={}", sock.display()));
    for o in opts {
        b = b.option(o);
    }
    (b.mount(), sock)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn status_check_and_metrics() {
    let (m, sock) = mount_with_socket(&["probe_interval=0.2"]);
    let s = sock.to_str().unwrap();
    let o = ctl(&["status", s]);
    assert!(o.status.success(), "{o:?}");
    let text = stdout(&o);
    for r in &m.replicas {
        assert!(text.contains(&r.display().to_string()), "{text}");
    }
    assert_eq!(text.matches("in-sync").count(), 2, "{text}");
    let o = ctl(&["status", s, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status --json is JSON");
    assert_eq!(v["replicas"].as_array().unwrap().len(), 2);
    assert_eq!(v["replicas"][0]["state"], "in-sync");

    let o = ctl(&["check", s]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(stdout(&o).starts_with("CHIRONFS OK") && stdout(&o).contains('|'));

    // Prometheus text: HELP/TYPE lines, then `name{labels} value`.
    let o = ctl(&["metrics", s]);
    for line in stdout(&o).lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "{line}"
            );
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
        let base = name.split('{').next().unwrap();
        assert!(
            base.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
    }
    assert!(stdout(&o).contains("chironfs_replica_in_sync{"));
    // And the reference parser (Debian's python3-prometheus-client) reads it.
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families as p\n\
        fams = list(p(sys.stdin.read()))\n\
        assert any(f.name == 'chironfs_replica_in_sync' for f in fams), fams\n";
    let mut parse = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (run scripts/setup)");
    parse.stdin.take().unwrap().write_all(&o.stdout).unwrap();
    let out = parse.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus text parser rejected the metrics (scripts/setup installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Degraded: WARNING; back: OK again after a resync.
    let r1 = m.replicas[1].display().to_string();
    assert!(ctl(&["disable", &r1, s]).status.success());
    let o = ctl(&["check", s]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    std::fs::write(m.path("while-disabled"), b"x").unwrap();
    assert!(
        !m.replica_path(1, "while-disabled").exists(),
        "a disabled replica was written"
    );
    assert!(ctl(&["enable", "1", s]).status.success());
    assert!(
        m.wait_for_log("in sync again", Duration::from_secs(30)),
        "{}",
        m.log()
    );
    assert_eq!(ctl(&["check", s]).status.code(), Some(0));
    m.assert_replicas_identical();
    // Unknown replica / command: errors, not crashes.
    assert!(!ctl(&["disable", "/nope", s]).status.success());
    assert_eq!(ctl(&["frobnicate", s]).status.code(), Some(2));
}

#[test]
fn check_is_critical_below_quorum_and_unknown_without_daemon() {
    let (m, sock) = mount_with_socket(&["write_quorum=all"]);
    let s = sock.to_str().unwrap().to_string();
    assert!(ctl(&["disable", "0", &s]).status.success());
    let o = ctl(&["check", &s]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(stdout(&o).starts_with("CHIRONFS CRITICAL"));
    drop(m);
    let o = ctl(&["check", &s]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(stdout(&o).starts_with("CHIRONFS UNKNOWN"));
}

fn exchange(sock: &Path, line: &[u8]) -> String {
    let mut c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(line).unwrap();
    let mut reply = String::new();
    BufReader::new(c).read_line(&mut reply).unwrap();
    reply
}

#[test]
fn bad_requests_get_errors_and_others_are_unaffected() {
    let (_m, sock) = mount_with_socket(&[]);
    // A client that connects and stalls does not block others.
    let _stalled = UnixStream::connect(&sock).unwrap();
    for bad in [
        &b"{not json\n"[..],
        b"{\"version\":99,\"command\":\"status\"}\n",
        b"{\"version\":1,\"command\":\"nope\"}\n",
        b"{\"version\":1,\"command\":\"disable\"}\n",
        b"\xff\xfe\n",
    ] {
        let r = exchange(&sock, bad);
        let v: serde_json::Value = serde_json::from_str(&r).expect("a JSON error reply");
        assert_eq!(v["ok"], false, "{r}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }
    let huge = vec![b'x'; 200_000];
    let mut c = UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = c.write_all(&huge);
    let mut reply = String::new();
    let _ = BufReader::new(c).read_line(&mut reply);
    assert!(reply.contains("longer than"), "oversized line: {reply:?}");
    // Still serving.
    let r = exchange(&sock, b"{\"version\":1,\"command\":\"status\"}\n");
    assert!(r.contains("\"ok\":true"), "{r}");
}

#[test]
fn socket_is_closed_to_other_users() {
    let (_m, sock) = mount_with_socket(&[]);
    let md = std::fs::metadata(&sock).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    let o = run_as(
        65534,
        65534,
        CHIRONFS,
        &["ctl".as_ref(), "status".as_ref(), sock.as_os_str()],
    );
    assert!(
        !o.status.success(),
        "nobody reached the status socket: {o:?}"
    );
}

#[test]
fn trust_needs_confirmation_and_resync_wait_follows_to_the_end() {
    let (m, sock) = mount_with_socket(&["probe_interval=0.2"]);
    let s = sock.to_str().unwrap();
    assert!(ctl(&["disable", "1", s]).status.success());
    for i in 0..20 {
        std::fs::write(m.path(format!("f{i}")), common::pattern(i, 50_000)).unwrap();
    }
    assert!(ctl(&["enable", "1", s]).status.success());
    // Not a TTY here: plain lines, and the exit code once it is in sync.
    let o = ctl(&["resync", "1", "--wait", s]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("in sync"), "{o:?}");
    m.assert_replicas_identical();

    // trust: refused without --confirm; with it, the replica is in sync
    // again at once, its missed marks dropped.
    assert!(ctl(&["disable", "1", s]).status.success());
    std::fs::write(m.path("missed-by-1"), b"y").unwrap();
    let o = ctl(&["trust", "1", s]);
    assert!(!o.status.success(), "trust without --confirm: {o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("confirm"));
    let o = ctl(&["trust", "1", "--confirm", s]);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value =
        serde_json::from_slice(&ctl(&["status", s, "--json"]).stdout).unwrap();
    assert_eq!(v["replicas"][1]["state"], "in-sync");
    assert_eq!(v["replicas"][1]["missed"], 0);
}

#[test]
fn log_level_changes_at_run_time() {
    let root = common::TestRoot::new();
    let log = root.path().join("d.log");
    let sock = root.path().join("ctl.sock");
    let m = Mount::builder()
        .root(root)
        .fresh(2)
        .option(&format!("ctl={}", sock.display()))
        .option(&format!("log={}", log.display()))
        .mount();
    let s = sock.to_str().unwrap();
    let o = ctl(&["log-level", "loud", s]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("loud"), "{o:?}");
    assert!(ctl(&["log-level", "debug", s]).status.success());
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("log level set to debug")
    );
    // Debug lines now appear (the resync worker and requests log at debug).
    std::fs::write(m.path("x"), b"x").unwrap();
    drop(m);
}

#[test]
fn metrics_are_served_over_http() {
    use std::io::Read;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (_m, _sock) = mount_with_socket(&[&format!("metrics_listen=127.0.0.1:{port}")]);
    let get = |path: &str| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut r = String::new();
        let _ = c.read_to_string(&mut r);
        r
    };
    let r = get("/metrics");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("chironfs_replica_in_sync{"), "{r}");
    assert!(get("/other").starts_with("HTTP/1.1 404"));
    let body = |r: &str| r.split_once("\r\n\r\n").unwrap().1.to_string();
    check_metrics(&body(&r), None, false);
    // A query string is ignored.
    let q = get("/metrics?x");
    assert!(q.starts_with("HTTP/1.1 200"), "{q}");
    assert!(
        q.contains("# TYPE chironfs_replica_writes_total counter"),
        "{q}"
    );
    // HEAD: the headers of a GET, no body.
    let head = |req: &str| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(c, "{req}").unwrap();
        let mut r = String::new();
        let _ = c.read_to_string(&mut r);
        r
    };
    let h = head("HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(h.contains("Content-Length: "), "{h}");
    assert_eq!(body(&h), "", "HEAD sent a body: {h}");
    assert!(head("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    // OpenMetrics for a scraper that asks for it.
    let om = head(
        "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    );
    assert!(
        om.contains("Content-Type: application/openmetrics-text"),
        "{om}"
    );
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    check_metrics(&body(&om), None, true);
    // More idle connections than workers: a scrape still gets through once
    // they are dropped, and the listener did not give up.
    let idle: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    drop(idle);
    assert!(get("/metrics").starts_with("HTTP/1.1 200"));
}

/// Checks Prometheus text with the reference parser (Debian's
/// python3-prometheus-client): every family has a `# TYPE`, counters end in
/// `_total`, and with a second scrape, no counter went down. `openmetrics`:
/// parse as OpenMetrics instead of the classic text format.
fn check_metrics(first: &str, second: Option<&str>, openmetrics: bool) {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::write(&a, first).unwrap();
    std::fs::write(&b, second.unwrap_or(first)).unwrap();
    let script = r##"
import sys
if sys.argv[3] == "om":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as p
else:
    from prometheus_client.parser import text_string_to_metric_families as p
def scrape(path):
    text = open(path).read()
    typed = {l.split()[2] for l in text.splitlines() if l.startswith("# TYPE ")}
    counters = {}
    for f in p(text):
        assert f.type in ("counter", "gauge", "histogram"), (f.name, f.type)
        assert f.samples, f.name
        for s in f.samples:
            if f.type == "counter":
                assert s.name.endswith("_total"), s.name
                counters[(s.name, tuple(sorted(s.labels.items())))] = s.value
    for l in text.splitlines():
        if l and not l.startswith("#"):
            name = l.split("{")[0].split(" ")[0]
            assert any(name == t or name.startswith(t + "_") or (t + "_total") == name
                       for t in typed), "no # TYPE for " + name
    return counters
one, two = scrape(sys.argv[1]), scrape(sys.argv[2])
assert one, "no counters"
for k, v in one.items():
    assert k in two, ("counter gone", k)
    assert two[k] >= v, ("counter went down", k, v, two[k])
print(len(one))
"##;
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(&a)
        .arg(&b)
        .arg(if openmetrics { "om" } else { "text" })
        .output()
        .expect("/usr/bin/python3 (run scripts/setup)");
    assert!(
        out.status.success(),
        "metrics rejected: {}\n--- first ---\n{first}\n--- second ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        second.unwrap_or("")
    );
}

/// Counters are counters (`_total`, never going down), levels are gauges,
/// latency is a per-replica histogram, and the build is labelled.
#[test]
fn metrics_are_typed_and_counters_only_grow() {
    let (m, sock) = mount_with_socket(&[]);
    let s = sock.to_str().unwrap();
    std::fs::write(m.path("before"), b"x").unwrap();
    let first = stdout(&ctl(&["metrics", s]));
    for i in 0..20 {
        std::fs::write(m.path(format!("f{i}")), vec![b'y'; 4096]).unwrap();
        let _ = std::fs::read(m.path(format!("f{i}"))).unwrap();
    }
    let second = stdout(&ctl(&["metrics", s]));
    check_metrics(&first, Some(&second), false);
    for needle in [
        "# TYPE chironfs_replica_writes_total counter",
        "# TYPE chironfs_replica_reads_total counter",
        "# TYPE chironfs_replica_resync_bytes_total counter",
        "# TYPE chironfs_replica_resync_entries_total counter",
        "# TYPE chironfs_replica_in_flight gauge",
        "# TYPE chironfs_replica_missed_paths gauge",
        "# TYPE chironfs_replica_latency_seconds histogram",
        "chironfs_replica_latency_seconds_bucket{",
        "le=\"+Inf\"",
        &format!(
            "chironfs_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(second.contains(needle), "no {needle} in\n{second}");
    }
    // The writes went up between the scrapes.
    let writes = |t: &str| -> f64 {
        t.lines()
            .filter(|l| l.starts_with("chironfs_replica_writes_total{"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum()
    };
    assert!(writes(&second) > writes(&first), "{first}\n{second}");
}

#[test]
fn ctl_group_members_may_connect() {
    let (m, sock) = mount_with_socket(&["ctl_group=nogroup"]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    std::fs::write(m.path("f"), b"x").unwrap();
    let o = run_as(
        65534,
        65534,
        CHIRONFS,
        &[
            "ctl".as_ref(),
            "status".as_ref(),
            "--json".as_ref(),
            sock.as_os_str(),
        ],
    );
    assert!(o.status.success(), "a ctl_group member was refused: {o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Per-replica counters: the write reached both replicas.
    assert!(v["replicas"][0]["writes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["replicas"][1]["writes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["replicas"][0]["latency_us"].as_f64().is_some());
    assert!(v["pending"].as_u64().is_some());
}

#[test]
fn resync_verify_repairs_silent_corruption() {
    let (m, sock) = mount_with_socket(&["probe_interval=0.2"]);
    let s = sock.to_str().unwrap();
    let data = common::pattern(3, 300_000);
    std::fs::write(m.path("f"), &data).unwrap();
    // Flip bytes on replica 1 behind the daemon's back, keeping size and mtime.
    let p = m.replica_path(1, "f");
    let before = std::fs::metadata(&p).unwrap();
    let mut bad = data.clone();
    bad[1000] ^= 0xff;
    std::fs::write(&p, &bad).unwrap();
    let mtime = filetime_of(&before);
    set_mtime(&p, mtime);
    // A metadata-only full compare cannot see it; a verifying one must.
    let o = ctl(&["resync", "1", "--verify", "--wait", s]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        std::fs::read(&p).unwrap(),
        data,
        "--verify left the corruption"
    );
    m.assert_replicas_identical();
}

fn filetime_of(md: &std::fs::Metadata) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (md.mtime(), md.mtime_nsec())
}

fn set_mtime(p: &Path, (sec, nsec): (i64, i64)) {
    common::sys::utimensat(p, (0, libc::UTIME_OMIT), (sec, nsec), 0).unwrap();
}

#[test]
fn sigterm_unmounts_cleanly() {
    let root = common::TestRoot::new();
    let (a, b, mnt) = (root.mkdir("a"), root.mkdir("b"), root.mkdir("mnt"));
    let mut child = Command::new(CHIRONFS)
        .arg("-f")
        .arg("-o")
        .arg(format!("state_dir={}", root.path().join("st").display()))
        .arg("-o")
        .arg(format!("ctl={}", root.path().join("s.sock").display()))
        .arg(format!("{}={}", a.display(), b.display()))
        .arg(&mnt)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while common::mount_fstype(&mnt).is_none() {
        assert!(std::time::Instant::now() < deadline, "never mounted");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(mnt.join("f"), b"x").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            common::ensure_unmounted(&mnt);
            panic!("SIGTERM did not end the daemon");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let still = common::mount_fstype(&mnt);
    common::ensure_unmounted(&mnt);
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(still.is_none(), "still mounted after SIGTERM");
    assert!(a.join("f").exists() && b.join("f").exists());
}

#[test]
fn default_socket_is_named_after_the_fsname_and_found_from_the_mountpoint() {
    let name = format!("chironfs-test-{}", std::process::id());
    let m = Mount::builder()
        .fresh(2)
        .option(&format!("fsname={name}"))
        .mount();
    let sock = PathBuf::from(format!("/run/chironfs/{name}.sock"));
    assert!(sock.exists(), "no socket at {}", sock.display());
    let o = ctl(&["status", m.mountpoint.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "chironctl did not find the socket from the mountpoint: {o:?}"
    );
    let (_, _root) = m.unmount();
    assert!(!sock.exists(), "the socket outlived the daemon");
}

/// `chironctl MOUNTPOINT` finds the daemon whatever `ctl=` says: the
/// daemon records its socket by mountpoint; a directory that is no chironfs
/// mount, or a record whose socket is gone, gives an error naming it.
#[test]
fn mountpoint_finds_the_daemon_whatever_ctl_says() {
    let (m, sock) = mount_with_socket(&[]);
    let mnt = m.mountpoint.to_str().unwrap().to_string();
    let o = ctl(&["status", &mnt]);
    assert!(
        o.status.success(),
        "chironctl did not find the ctl= socket from the mountpoint: {o:?}"
    );
    assert_eq!(stdout(&o).matches("in-sync").count(), 2, "{o:?}");
    // The record is named after the canonical mountpoint (resolved through
    // the parent: the mountpoint itself is the FUSE root now).
    let canon = std::fs::canonicalize(m.mountpoint.parent().unwrap())
        .unwrap()
        .join(m.mountpoint.file_name().unwrap());
    let key = canon
        .to_str()
        .unwrap()
        .replace('%', "%25")
        .replace('/', "%2F");

    // Not a mount at all, and a mount of another type.
    let plain = tempfile::tempdir().unwrap();
    let o = ctl(&["status", plain.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{o:?}");
    assert!(
        err.contains(plain.path().to_str().unwrap()) && err.contains("not a mountpoint"),
        "{err}"
    );
    let o = ctl(&["status", "/proc"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && err.contains("/proc") && err.contains("not chironfs"),
        "{err}"
    );

    // A record whose socket is gone: stale, said so, naming the mountpoint.
    std::fs::remove_file(&sock).unwrap();
    let o = ctl(&["status", &mnt]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && err.contains(&mnt) && err.contains("stale record"),
        "{err}"
    );
    let records = || {
        std::fs::read_dir("/run/chironfs/mounts")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert!(
        records()
            .iter()
            .any(|r| r.file_name().unwrap() == key.as_str()),
        "no record for {mnt}: {:?}",
        records()
    );
    let (_, _root) = m.unmount();
    assert!(
        !records()
            .iter()
            .any(|r| r.file_name().unwrap() == key.as_str()),
        "the record outlived the daemon"
    );
}

/// The command line is clap's: help, completions, usage errors (exit 2),
/// and for `check` the Nagios UNKNOWN (3) with a status line.
#[test]
fn usage_help_and_completions() {
    let o = ctl(&["--help"]);
    assert!(o.status.success(), "{o:?}");
    for word in ["Usage: chironctl", "status", "check", "resync", "ring"] {
        assert!(stdout(&o).contains(word), "--help lacks {word}: {o:?}");
    }
    let o = ctl(&["check", "--bogus"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(stdout(&o).starts_with("CHIRONFS UNKNOWN"), "{o:?}");
    let o = ctl(&["check", "/a", "/b"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let o = ctl(&["status", "--bogus"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--bogus"),
        "{o:?}"
    );
    assert_eq!(ctl(&[]).status.code(), Some(2));
    let o = ctl(&["completions", "bash"]);
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("complete -F _chironctl"), "{o:?}");
}
