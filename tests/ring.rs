//! Guards `chironfs ring-node` and the ring commands of chironctl with real
//! processes on loopback: a layout built with `ring join` + `ring apply`,
//! reads through any node of what was written through another, a node
//! killed and restarted getting its keys back, a node with the wrong secret
//! kept out, a node joining a running ring (a layout transition that ends),
//! and startup errors that are one line naming what was wrong.
//!
//! Every node runs under a [`Ring`] guard that kills it on drop, panics
//! included (and, with PDEATHSIG, if the test process dies); its stderr
//! goes to a log file printed when the test fails.

mod common;

use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{CHIRONFS, Mount, TestRoot, run_with_timeout};
use serde_json::Value;

/// Gossip and anti-entropy sped up so a test takes seconds, not minutes.
const FAST: &str = "gossip_interval = 0.25\nanti_entropy_interval = 1.0\ntimeout = 1.0\n";

/// How long the ring may take to agree on something (a loaded 2-core
/// machine running the other tests of this file at the same time).
const SETTLE: Duration = Duration::from_secs(45);

/// A TCP port that was free a moment ago, whose UDP twin is free too (the
/// ring listens on both).
fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port with a free UDP twin");
}

/// Writes a ring secret file, mode 0600.
fn write_secret(path: &Path, secret: &str) {
    fs::write(path, format!("{secret}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

struct Node {
    name: String,
    port: u16,
    config: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Ring nodes of one test, all killed when it is dropped.
struct Ring {
    root: TestRoot,
    secret: PathBuf,
    nodes: Vec<Node>,
}

impl Ring {
    /// `names` nodes, each seeded with all the others; none started yet.
    fn new(names: &[&str]) -> Ring {
        let root = TestRoot::new();
        let secret = root.path().join("secret");
        write_secret(&secret, "a shared secret of more than 16 bytes");
        let mut ring = Ring {
            root,
            secret,
            nodes: Vec::new(),
        };
        let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
        for (i, name) in names.iter().enumerate() {
            let seeds: Vec<String> = names
                .iter()
                .zip(&ports)
                .filter(|(n, _)| *n != name)
                .map(|(n, p)| format!("\"{n}@127.0.0.1:{p}\""))
                .collect();
            let secret = ring.secret.clone();
            ring.add(name, ports[i], &seeds, &secret);
        }
        ring
    }

    /// Adds node `name` (not started) listening on `port`.
    fn add(&mut self, name: &str, port: u16, seeds: &[String], secret: &Path) {
        let dir = self.root.path();
        let config = dir.join(format!("{name}.toml"));
        let sock = dir.join(format!("{name}.sock"));
        fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\nctl = \"{}\"\n\n[ring]\nnode = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nseeds = [{}]\nsecret_file = \"{}\"\n{FAST}",
                dir.join(format!("{name}.state")).display(),
                sock.display(),
                seeds.join(", "),
                secret.display()
            ),
        )
        .unwrap();
        self.nodes.push(Node {
            name: name.to_string(),
            port,
            config,
            sock,
            log: dir.join(format!("{name}.log")),
            child: None,
        });
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn sock(&self, name: &str) -> &Path {
        &self.node(name).sock
    }

    /// Starts `name` and waits until its status socket answers.
    fn start(&mut self, name: &str) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"));
        assert!(node.child.is_none(), "{name} already runs");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let mut cmd = Command::new(CHIRONFS);
        cmd.arg("ring-node")
            .arg("--config")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // Safe because prctl(PR_SET_PDEATHSIG) is async-signal-safe and
        // touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        node.child = Some(cmd.spawn().unwrap());
        let sock = node.sock.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                return;
            }
            if let Some(st) = self.child_mut(name).try_wait().unwrap() {
                self.dump_logs();
                panic!("{name} exited during startup: {st}");
            }
            assert!(
                Instant::now() < deadline,
                "{name}: no status socket after 20 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_all(&mut self) {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for n in names {
            self.start(&n);
        }
    }

    fn child_mut(&mut self, name: &str) -> &mut Child {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .and_then(|n| n.child.as_mut())
            .unwrap_or_else(|| panic!("{name} is not running"))
    }

    /// SIGKILL, and reaps it.
    fn kill9(&mut self, name: &str) {
        let c = self.child_mut(name);
        c.kill().unwrap();
        c.wait().unwrap();
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap()
            .child = None;
    }

    /// SIGTERM; returns the exit status once it exited (within 15 s).
    fn terminate(&mut self, name: &str) -> std::process::ExitStatus {
        let c = self.child_mut(name);
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let st = loop {
            if let Some(st) = c.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "{name} ignored SIGTERM for 15 s");
            thread::sleep(Duration::from_millis(50));
        };
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap()
            .child = None;
        st
    }

    fn dump_logs(&self) {
        for n in &self.nodes {
            let text = fs::read_to_string(&n.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("---- {} ({}) ----\n{}", n.name, n.addr(), tail.join("\n"));
        }
    }

    /// Stages every node in `names` on `via` and applies.
    fn layout(&self, via: &str, names: &[&str]) {
        for n in names {
            ok(&ctl(
                self.sock(via),
                &["ring", "join", n, &self.node(n).addr()],
            ));
        }
        ok(&ctl(self.sock(via), &["ring", "apply"]));
    }

    /// Waits until each of `names` has layout `version`, no transition, and
    /// sees every member alive.
    fn wait_ready(&self, names: &[&str], version: u64) {
        wait_for(&format!("{names:?} to agree on layout {version}"), || {
            names.iter().all(|n| {
                let st = status(self.sock(n));
                st["layout_version"] == version
                    && st["transition_from"].is_null()
                    && members(&st).iter().all(|m| m["alive"] == true)
            })
        });
    }

    /// Keys stored by `name` (its own share, hints left out).
    fn keys(&self, name: &str) -> u64 {
        status(self.sock(name))["keys"].as_u64().unwrap()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump_logs();
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `chironctl -s SOCK args...`, at most 30 s.
fn ctl(sock: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(CHIRONFS);
    cmd.arg("ctl").arg("-s").arg(sock).args(args);
    run_with_timeout(cmd, Duration::from_secs(30))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "chironctl failed ({}): {}{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// `ring status --json` of the node behind `sock`.
fn status(sock: &Path) -> Value {
    serde_json::from_str(&ok(&ctl(sock, &["ring", "status", "--json"]))).unwrap()
}

fn members(st: &Value) -> Vec<Value> {
    st["members"].as_array().cloned().unwrap_or_default()
}

fn alive(st: &Value, node: &str) -> Option<bool> {
    members(st)
        .iter()
        .find(|m| m["node"] == node)
        .map(|m| m["alive"] == true)
}

/// Polls `cond` every 200 ms until it holds; panics after [`SETTLE`].
#[track_caller]
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE;
    while !cond() {
        assert!(Instant::now() < deadline, "waited {SETTLE:?} for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_nodes_build_a_layout_and_read_anywhere_what_was_written_anywhere() {
    let mut ring = Ring::new(&["n1", "n2", "n3"]);
    ring.start_all();
    let st = stdout(&ctl(ring.sock("n2"), &["ring", "status"]));
    assert!(st.contains("no layout yet"), "{st}");
    // Before any join, the gossip already shows the others as candidates.
    let start = std::time::Instant::now();
    loop {
        let st = stdout(&ctl(ring.sock("n2"), &["ring", "status"]));
        if st.contains("alive but not in the layout: n1") && st.contains("n3 (") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{st}");
        thread::sleep(Duration::from_millis(100));
    }
    // A second node on n1's status socket stops before it starts anything.
    let dup = ring.root.path().join("dup.toml");
    fs::write(
        &dup,
        format!(
            "ctl = \"{}\"\nstate_dir = \"{}\"\n[ring]\nnode = \"dup\"\nlisten = \"127.0.0.1:{}\"\nsecret_file = \"{}\"\n",
            ring.sock("n1").display(),
            ring.root.path().join("dup.state").display(),
            free_port(),
            ring.secret.display()
        ),
    )
    .unwrap();
    assert_fails(&dup, &["another daemon is listening", "n1.sock"]);
    ring.layout("n1", &["n1", "n2", "n3"]);
    ring.wait_ready(&["n1", "n2", "n3"], 1);

    let table = ok(&ctl(ring.sock("n3"), &["ring", "status"]));
    for needle in [
        "layout version 1",
        "N=3 R=2 W=2",
        "n1",
        "127.0.0.1",
        "ALIVE",
    ] {
        assert!(table.contains(needle), "no '{needle}' in:\n{table}");
    }
    ok(&ctl(
        ring.sock("n1"),
        &["ring", "put", "greeting", "hello ring"],
    ));
    assert_eq!(
        ok(&ctl(ring.sock("n2"), &["ring", "get", "greeting"])),
        "hello ring\n"
    );
    let got: Value = serde_json::from_str(&ok(&ctl(
        ring.sock("n3"),
        &["ring", "get", "greeting", "--json"],
    )))
    .unwrap();
    assert_eq!(got["values"], serde_json::json!(["hello ring"]));
    // A put replaces what it read: still one value, not two siblings.
    ok(&ctl(ring.sock("n3"), &["ring", "put", "greeting", "bye"]));
    assert_eq!(
        ok(&ctl(ring.sock("n1"), &["ring", "get", "greeting"])),
        "bye\n"
    );
    let missing = ctl(ring.sock("n1"), &["ring", "get", "nothing-here"]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("not found"),
        "{}",
        stderr(&missing)
    );

    // N, R, W are the layout's: an unsafe quorum is refused when staged,
    // a safe one is committed by `apply` and counted by every node.
    let o = ctl(ring.sock("n2"), &["ring", "quorum", "3", "1", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("N=3 R=1 W=1") && stderr(&o).contains("R + W"),
        "{}",
        stderr(&o)
    );
    let staged = ok(&ctl(ring.sock("n2"), &["ring", "quorum", "3", "1", "3"]));
    assert!(staged.contains("quorum N=3 R=1 W=3"), "{staged}");
    ok(&ctl(ring.sock("n2"), &["ring", "apply"]));
    wait_for("every node counts R=1 W=3", || {
        ["n1", "n2", "n3"].iter().all(|n| {
            let st = status(ring.sock(n));
            st["layout_version"] == 2 && st["r"] == 1 && st["w"] == 3
        })
    });

    // Filesystem commands get a clear refusal from a ring node.
    let o = ctl(ring.sock("n1"), &["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("ring node"), "{}", stderr(&o));

    // SIGTERM: exit 0, socket removed.
    for n in ["n1", "n2", "n3"] {
        let st = ring.terminate(n);
        assert_eq!(st.code(), Some(0), "{n} exited with {st}");
        assert!(!ring.sock(n).exists(), "{n} left its socket behind");
    }
}

#[test]
fn a_node_killed_and_restarted_gets_its_keys_back() {
    let names = ["n1", "n2", "n3", "n4", "n5"];
    let mut ring = Ring::new(&names);
    ring.start_all();
    ring.layout("n1", &names);
    ring.wait_ready(&names, 1);
    let total = |ring: &Ring| names.iter().map(|n| ring.keys(n)).sum::<u64>();

    for i in 0..15 {
        ok(&ctl(
            ring.sock(names[i % 4]),
            &["ring", "put", &format!("before/{i}"), &format!("b{i}")],
        ));
    }
    // N=3: every key on three nodes.
    wait_for("45 copies of 15 keys", || total(&ring) == 45);
    let had = ring.keys("n5");
    let actor = |ring: &Ring| {
        status(ring.sock("n5"))["actor"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // An orderly stop keeps the actor epoch; kill -9 retires it, so that
    // no dot n5 issued before is issued again.
    let first = actor(&ring);
    assert!(first.starts_with("n5:"), "{first}");
    assert!(ring.terminate("n5").success());
    ring.start("n5");
    wait_for("n5 back", || status(ring.sock("n5"))["layout_version"] == 1);
    assert_eq!(actor(&ring), first, "a clean stop keeps the epoch");

    ring.kill9("n5");
    for i in 0..15 {
        let o = ctl(
            ring.sock(names[i % 4]),
            &["ring", "put", &format!("during/{i}"), &format!("d{i}")],
        );
        ok(&o);
    }
    ring.start("n5");
    wait_for("n5 back", || status(ring.sock("n5"))["layout_version"] == 1);
    assert_ne!(actor(&ring), first, "kill -9 must retire the epoch");
    // Hinted handoff and anti-entropy bring back what n5 missed.
    wait_for("90 copies of 30 keys, n5's included", || {
        total(&ring) == 90 && ring.keys("n5") > had
    });
    for i in [0, 7, 14] {
        assert_eq!(
            ok(&ctl(
                ring.sock("n5"),
                &["ring", "get", &format!("during/{i}")]
            )),
            format!("d{i}\n")
        );
    }
    let repaired: u64 = names
        .iter()
        .map(|n| {
            let st = status(ring.sock(n));
            ["hints_delivered", "entries_repaired", "read_repairs"]
                .iter()
                .map(|k| st[k].as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    assert!(repaired > 0, "n5 came back without any repair counted");
}

#[test]
fn a_node_with_the_wrong_secret_never_joins() {
    let mut ring = Ring::new(&["n1", "n2", "n3"]);
    let bad_secret = ring.root.path().join("other-secret");
    write_secret(&bad_secret, "not the ring's secret, but long");
    let port = free_port();
    let seeds: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| format!("\"{n}@{}\"", ring.node(n).addr()))
        .collect();
    ring.add("nx", port, &seeds, &bad_secret);
    ring.start_all();
    // Both sides believe nx is a member; neither can reach the other.
    let all = ["n1", "n2", "n3", "nx"];
    ring.layout("n1", &all);
    ring.layout("nx", &all);
    wait_for("n1..n3 to see each other", || {
        ["n1", "n2", "n3"].iter().all(|n| {
            let st = status(ring.sock(n));
            ["n1", "n2", "n3"]
                .iter()
                .all(|m| alive(&st, m) == Some(true))
        })
    });
    // Many gossip rounds (0.25 s each) later, still apart.
    thread::sleep(Duration::from_secs(3));
    for n in ["n1", "n2", "n3"] {
        let st = status(ring.sock(n));
        assert_eq!(alive(&st, "nx"), Some(false), "{n} sees nx alive: {st}");
    }
    let st = status(ring.sock("nx"));
    for m in ["n1", "n2", "n3"] {
        assert_eq!(alive(&st, m), Some(false), "nx sees {m} alive: {st}");
    }
    let o = ctl(ring.sock("nx"), &["ring", "put", "k", "v"]);
    assert_eq!(o.status.code(), Some(1), "a put through nx succeeded");
    assert!(stderr(&o).contains("quorum"), "{}", stderr(&o));
    // The others do without it.
    ok(&ctl(ring.sock("n2"), &["ring", "put", "k", "v"]));
    assert_eq!(ok(&ctl(ring.sock("n3"), &["ring", "get", "k"])), "v\n");
}

#[test]
fn a_fourth_node_joins_through_a_transition_that_ends() {
    let mut ring = Ring::new(&["n1", "n2", "n3", "n4"]);
    ring.start_all();
    ring.layout("n1", &["n1", "n2", "n3"]);
    ring.wait_ready(&["n1", "n2", "n3"], 1);
    for i in 0..12 {
        ok(&ctl(
            ring.sock("n2"),
            &["ring", "put", &format!("k{i}"), &format!("v{i}")],
        ));
    }
    assert_eq!(ring.keys("n4"), 0);

    ok(&ctl(
        ring.sock("n1"),
        &["ring", "join", "n4", &ring.node("n4").addr()],
    ));
    let staged = ok(&ctl(ring.sock("n1"), &["ring", "status"]));
    assert!(staged.contains("join n4"), "{staged}");
    let applied: Value =
        serde_json::from_str(&ok(&ctl(ring.sock("n1"), &["ring", "apply", "--json"]))).unwrap();
    assert_eq!(applied["layout_version"], 2, "{applied}");
    assert_eq!(applied["transition_from"], 1, "{applied}");
    // The transition lasts until every member has run an anti-entropy
    // round (1 s apart) against the old owners.
    let table = ok(&ctl(ring.sock("n1"), &["ring", "status"]));
    assert!(table.contains("transition from 1"), "{table}");

    ring.wait_ready(&["n1", "n2", "n3", "n4"], 2);
    assert!(ring.keys("n4") > 0, "n4 synced no keys");
    for i in 0..12 {
        assert_eq!(
            ok(&ctl(ring.sock("n4"), &["ring", "get", &format!("k{i}")])),
            format!("v{i}\n")
        );
    }
}

#[test]
fn a_node_added_and_a_node_removed_under_a_write_load_lose_no_acknowledged_write() {
    let mut ring = Ring::new(&["n1", "n2", "n3", "n4"]);
    ring.start_all();
    ring.layout("n1", &["n1", "n2", "n3"]);
    ring.wait_ready(&["n1", "n2", "n3"], 1);
    // Finishing a transition by force is refused without --force, and
    // refused with it when there is none.
    let o = ctl(ring.sock("n1"), &["ring", "finish"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    let o = ctl(ring.sock("n1"), &["ring", "finish", "--force"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not in a transition"), "{}", stderr(&o));

    // Two writers, through n2 and n3, each key written once; only what
    // chironctl reports written counts as acknowledged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = ["n2", "n3"]
        .iter()
        .map(|via| {
            let (sock, stop, via) = (ring.sock(via).to_path_buf(), stop.clone(), via.to_string());
            thread::spawn(move || {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let (k, v) = (format!("{via}/{i}"), format!("v{i}"));
                    if ctl(&sock, &["ring", "put", &k, &v]).status.success() {
                        acked.push((k, v));
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    ok(&ctl(
        ring.sock("n1"),
        &["ring", "join", "n4", &ring.node("n4").addr()],
    ));
    ok(&ctl(ring.sock("n1"), &["ring", "apply"]));
    ring.wait_ready(&["n1", "n2", "n3", "n4"], 2);
    ok(&ctl(ring.sock("n2"), &["ring", "leave", "n1"]));
    ok(&ctl(ring.sock("n2"), &["ring", "apply"]));
    ring.wait_ready(&["n2", "n3", "n4"], 3);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked: Vec<(String, String)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());
    // n1 left: gone for good, nothing may depend on it.
    ring.kill9("n1");
    for (k, v) in &acked {
        assert_eq!(
            ok(&ctl(ring.sock("n4"), &["ring", "get", k])),
            format!("{v}\n"),
            "{k}, acknowledged during the layout changes"
        );
    }
}

#[test]
fn only_a_layout_signed_by_an_operator_key_is_taken() {
    let mut ring = Ring::new(&["n1", "n2", "n3"]);
    let key = ring.root.path().join("operator.key");
    let made = ok(&ctl(
        ring.sock("n1"),
        &["ring", "keygen", key.to_str().unwrap()],
    ));
    let line = made
        .lines()
        .find(|l| l.starts_with("operator_keys = "))
        .unwrap_or_else(|| panic!("no config line in:\n{made}"));
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Never overwritten.
    let again = ctl(ring.sock("n1"), &["ring", "keygen", key.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));
    // n1 and n2 require the operator's signature; n3 goes rogue: it
    // requires nothing and commits a layout of its own.
    for n in ["n1", "n2"] {
        let mut cfg = fs::read_to_string(&ring.node(n).config).unwrap();
        cfg.push_str(line);
        cfg.push('\n');
        fs::write(&ring.node(n).config, cfg).unwrap();
    }
    ring.start_all();
    for n in ["n1", "n2", "n3"] {
        ok(&ctl(
            ring.sock("n1"),
            &["ring", "join", n, &ring.node(n).addr()],
        ));
    }
    let o = ctl(ring.sock("n1"), &["ring", "apply"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("operator_keys") && stderr(&o).contains("--key"),
        "{}",
        stderr(&o)
    );
    // A key file others can read is refused before anything is asked.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let o = ctl(
        ring.sock("n1"),
        &["ring", "apply", "--key", key.to_str().unwrap()],
    );
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    ok(&ctl(
        ring.sock("n1"),
        &["ring", "apply", "--key", key.to_str().unwrap()],
    ));
    ring.wait_ready(&["n1", "n2", "n3"], 1);
    ok(&ctl(ring.sock("n2"), &["ring", "put", "k", "before"]));

    // The rogue takes every partition for itself.
    ok(&ctl(ring.sock("n3"), &["ring", "leave", "n1"]));
    ok(&ctl(ring.sock("n3"), &["ring", "leave", "n2"]));
    ok(&ctl(ring.sock("n3"), &["ring", "apply"]));
    assert_eq!(status(ring.sock("n3"))["layout_version"], 2);
    // n1 and n2 pull layouts every second or so: 5 s to (not) take it.
    thread::sleep(Duration::from_secs(5));
    for n in ["n1", "n2"] {
        let st = status(ring.sock(n));
        assert_eq!(st["layout_version"], 1, "{n} took the rogue's layout: {st}");
        assert_eq!(members(&st).len(), 3, "{n}: {st}");
    }
    let log = fs::read_to_string(&ring.node("n1").log).unwrap_or_default()
        + &fs::read_to_string(&ring.node("n2").log).unwrap_or_default();
    assert!(
        log.contains("refused layout version 2") && log.contains("not signed by an operator key"),
        "no refusal logged:\n{log}"
    );
    // n1 and n2 still make a quorum of the operator's layout.
    ok(&ctl(ring.sock("n1"), &["ring", "put", "k", "after"]));
    assert_eq!(ok(&ctl(ring.sock("n2"), &["ring", "get", "k"])), "after\n");
}

/// Runs `chironfs ring-node --config FILE`; expects exit 1 and one line
/// on stderr containing every needle.
#[track_caller]
fn assert_fails(config: &Path, needles: &[&str]) {
    let mut cmd = Command::new(CHIRONFS);
    cmd.arg("ring-node").arg("--config").arg(config);
    let o = run_with_timeout(cmd, Duration::from_secs(20));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "exit {}: {err}", o.status);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "no '{n}' in: {err}");
    }
}

#[test]
fn bad_config_secret_or_port_fail_with_one_line() {
    let root = TestRoot::new();
    let dir = root.path();
    let good = dir.join("secret");
    write_secret(&good, "a shared secret of more than 16 bytes");
    let config = |name: &str, listen: &str, secret: &Path| {
        let p = dir.join(format!("{name}.toml"));
        fs::write(
            &p,
            format!(
                "state_dir = \"{d}/{name}.state\"\nctl = \"{d}/{name}.sock\"\n\n[ring]\nnode = \"{name}\"\nlisten = \"{listen}\"\nsecret_file = \"{}\"\n",
                secret.display(),
                d = dir.display()
            ),
        )
        .unwrap();
        p
    };

    let no_ring = dir.join("no-ring.toml");
    fs::write(&no_ring, format!("state_dir = \"{}/x\"\n", dir.display())).unwrap();
    assert_fails(&no_ring, &["no [ring] section", "no-ring.toml"]);

    assert_fails(&dir.join("missing.toml"), &["cannot read", "missing.toml"]);

    let typo = dir.join("typo.toml");
    fs::write(
        &typo,
        "[ring]\nlisten = \"127.0.0.1:1\"\nsecret_file = \"/x\"\nn = 9\n",
    )
    .unwrap();
    assert_fails(&typo, &["ring.n", "typo.toml"]);

    let open = dir.join("open-secret");
    write_secret(&open, "a shared secret of more than 16 bytes");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
    let p = config("open", &format!("127.0.0.1:{}", free_port()), &open);
    assert_fails(&p, &["open-secret", "readable by group or others", "0644"]);

    let short = dir.join("short-secret");
    write_secret(&short, "too short");
    let p = config("short", &format!("127.0.0.1:{}", free_port()), &short);
    assert_fails(&p, &["short-secret", "at least 16"]);

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let p = config("taken", &addr, &good);
    assert_fails(&p, &[&format!("cannot listen on {addr}"), "in use"]);
    drop(taken);
}

#[test]
fn mounts_answer_ring_commands_only_with_a_ring_section() {
    let root = TestRoot::new();
    let sock = root.path().join("plain.sock");
    let plain = Mount::builder()
        .root(root)
        .fresh(2)
        .option(&format!("ctl={}", sock.display()))
        .mount();
    let o = ctl(&sock, &["ring", "status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("this mount has no [ring] section"),
        "{}",
        stderr(&o)
    );
    let o = ctl(&sock, &["conflicts"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("[ring]"), "{}", stderr(&o));
    drop(plain);

    // A one-node ring inside a mount.
    let root = TestRoot::new();
    let sock = root.path().join("ring.sock");
    let secret = root.path().join("secret");
    write_secret(&secret, "a shared secret of more than 16 bytes");
    let port = free_port();
    let config = root.path().join("mount.toml");
    fs::write(
        &config,
        format!(
            "[ring]\nnode = \"solo\"\nlisten = \"127.0.0.1:{port}\"\nsecret_file = \"{}\"\nn = 1\nr = 1\nw = 1\n{FAST}",
            secret.display()
        ),
    )
    .unwrap();
    let m = Mount::builder()
        .root(root)
        .fresh(2)
        .option(&format!("ctl={}", sock.display()))
        .arg("--config")
        .arg(&config)
        .mount();
    ok(&ctl(
        &sock,
        &["ring", "join", "solo", &format!("127.0.0.1:{port}")],
    ));
    ok(&ctl(&sock, &["ring", "apply"]));
    let table = ok(&ctl(&sock, &["ring", "status"]));
    assert!(table.contains("node solo, layout version 1"), "{table}");
    ok(&ctl(&sock, &["ring", "put", "operator/note", "hi"]));
    assert_eq!(ok(&ctl(&sock, &["ring", "get", "operator/note"])), "hi\n");
    assert_eq!(ok(&ctl(&sock, &["conflicts"])), "no conflict copies\n");
    let list: Value = serde_json::from_str(&ok(&ctl(&sock, &["conflicts", "--json"]))).unwrap();
    assert_eq!(list, serde_json::json!([]));
    // The filesystem's own commands still work.
    assert!(ok(&ctl(&sock, &["status"])).contains("write quorum"));
    drop(m);
}
