//! The two external POSIX suites the issue names, run against a real
//! 2-replica chironfs mount:
//!
//! - `pjdfstest_allow_other`: pjdfstest 0.2.2 (every test case, as root, on a
//!   mount with `allow_other` so its switches to the users `nobody` and `tests`
//!   reach the filesystem). Zero failures allowed; the only skips allowed are
//!   the ones a FUSE mount cannot avoid (see [`ALLOWED_SKIPS`]).
//! - `fsx_mmap_100k`: fsx 0.3.2, 100,000 operations with mmap reads/writes on,
//!   fixed seed; must end "A-OK".
//!
//! Both then unmount and require the replicas to be identical.
//!
//! Neither test ever skips: a missing tool, a wrong version, missing users,
//! not being root, or a run that executed no test case is a failure that says
//! how to fix it (`scripts/setup` installs the tools and users).
//!
//! Environment knobs: `PJDFSTEST` / `FSX` (paths to the binaries, else PATH,
//! else `$CARGO_HOME/bin`), `CHIRONFS_FSX_SEED` (another fsx seed),
//! `PJDFSTEST_FILTER` (space-separated pjdfstest name patterns, to rerun a few
//! cases; the minimum-count check is then off).

mod common;

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::{Mount, TestRoot, assert_replicas_identical};

/// The versions the issue pins.
const PJDFSTEST_VERSION: &str = "0.2.2";
const FSX_VERSION: &str = "0.3.2";

/// pjdfstest 0.2.2 registers 398 test cases on Linux; fewer means the run did
/// not do what we think it did.
const PJDFSTEST_MIN_CASES: usize = 398;

/// Skips that are not a defect of the mount. Anything else skipped fails.
const ALLOWED_SKIPS: &[(&str, &str)] = &[
    (
        "Remounts (allow_remount) are not allowed",
        "EROFS cases need a read-only remount (off in tests/pjdfstest.toml)",
    ),
    (
        "Cannot get value for LINK_MAX: filesystem limit is unknown",
        "pathconf(_PC_LINK_MAX) has no per-filesystem value on FUSE (glibc answers 127)",
    ),
];

/// Native pjdfstest takes ~2 s; a slow but correct mount must finish well
/// within this.
const PJDFSTEST_TIMEOUT: Duration = Duration::from_secs(20 * 60);

const FSX_OPS: u64 = 100_000;
/// Fixed so that a failure is reproducible; printed by the test.
const FSX_DEFAULT_SEED: u64 = 20_250_612;
/// fsx with these settings takes ~100 s on a native ext4 directory.
const FSX_TIMEOUT: Duration = Duration::from_secs(30 * 60);

const FSX_OK: &str = "All operations completed A-OK!";

/// Both suites hammer the 2 CPUs and print a lot: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn data_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

// ---------------------------------------------------------------------------
// Preconditions
// ---------------------------------------------------------------------------

/// Finds `name`: `$ENV_VAR`, then PATH, then `$CARGO_HOME/bin` (or
/// `~/.cargo/bin`), where `cargo install` puts it. Panics if absent.
fn find_tool(name: &str, env_var: &str, version: &str) -> PathBuf {
    let hint = format!(
        "{name} {version} is required (the issue's test suite runs it); install it with \
         scripts/setup or `cargo install --locked {name}@{version}`, or point ${env_var} at it"
    );
    if let Some(p) = env::var_os(env_var) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "${env_var}={} is not a file. {hint}",
            p.display()
        );
        return p;
    }
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(c) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(c).join("bin"));
    }
    if let Some(h) = env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found in $PATH or cargo's bin directory. {hint}"))
}

/// Checks that `tool --version` says `<name> <version>`.
fn check_version(tool: &Path, name: &str, version: &str) {
    let out = Command::new(tool)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("run {} --version: {e}", tool.display()));
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        got,
        format!("{name} {version}"),
        "{} is not {name} {version}; install it with `cargo install --locked --force {name}@{version}`",
        tool.display()
    );
}

fn require_root(what: &str) {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "{what} must run as root (FUSE allow_other mount, switching users, device nodes); \
         run the test suite as root (as .ci/run does)"
    );
}

/// pjdfstest's default configuration switches to `nobody` and `tests`, each
/// with its primary group.
fn require_pjdfstest_users() {
    for name in ["nobody", "tests"] {
        let user = nix::unistd::User::from_name(name)
            .unwrap_or_else(|e| panic!("look up user {name}: {e}"));
        let Some(user) = user else {
            panic!(
                "pjdfstest needs the user '{name}' (with its own primary group); run scripts/setup"
            );
        };
        assert!(
            nix::unistd::Group::from_gid(user.gid)
                .ok()
                .flatten()
                .is_some(),
            "user '{name}' has primary gid {} with no group entry; pjdfstest needs one (run scripts/setup)",
            user.gid
        );
    }
}

// ---------------------------------------------------------------------------
// Running a tool with a time limit, echoing its output as it comes
// ---------------------------------------------------------------------------

struct Run {
    /// None if it had to be killed.
    status: Option<ExitStatus>,
    stdout: Vec<String>,
    stderr: String,
    elapsed: Duration,
}

/// Runs `cmd` in its own process group, echoing stdout lines (prefixed) as
/// they come; after `timeout` the whole group is killed (pjdfstest starts
/// helpers such as `sleep` that would keep the pipes open).
fn run_streaming(mut cmd: Command, prefix: &str, echo: bool, timeout: Duration) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;

    let stdout = child.stdout.take().unwrap();
    let prefix = prefix.to_string();
    let out_reader = thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = strip_ansi(&String::from_utf8_lossy(&line));
            if echo {
                println!("{prefix}{line}");
            }
            lines.push(line);
        }
        lines
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        strip_ansi(&String::from_utf8_lossy(&buf))
    });

    let deadline = start + timeout;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                eprintln!("{cmd:?} still running after {timeout:?}: killing its process group");
                // Safe: the group was created for this child (process_group(0)),
                // and the child is not reaped yet, so its pid is still ours.
                unsafe { libc::killpg(pid, libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(100)),
        }
    };
    // The child is gone; helpers it left in its group must not hold the pipes.
    // Safe for the same reason (the group id stays reserved while any member
    // lives; killpg on an empty group just fails with ESRCH).
    unsafe { libc::killpg(pid, libc::SIGKILL) };
    Run {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        elapsed: start.elapsed(),
    }
}

/// Removes ANSI escape sequences (in case a tool colours its output anyway).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, then one final byte @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Runs `f`, turning a panic into its message.
fn catch(f: impl FnOnce()) -> Result<(), String> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic with a non-string payload".to_string())
    })
}

/// A fresh replica directory: 0755, so the users pjdfstest switches to can
/// reach the mount root.
fn replica_dirs(root: &TestRoot, n: usize) -> Vec<PathBuf> {
    (0..n).map(|i| root.mkdir(&format!("replica{i}"))).collect()
}

// ---------------------------------------------------------------------------
// pjdfstest output
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Skipped,
    PassedUnexpectedly,
    FailedAsExpected,
}

#[derive(Debug)]
struct Case {
    name: String,
    outcome: Outcome,
    /// Lines printed after the result line: the panic message (assertion with
    /// expected/got errno) for a failure, the reasons for a skip.
    details: Vec<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    failed: usize,
    skipped: usize,
    passed: usize,
    expected_failures: usize,
    total: usize,
}

/// Parses pjdfstest's report: one `<name> <padding> ok|FAILED|skipped|...`
/// line per case, each followed by tab-indented details, then
/// `Summary: F failed, S skipped, P passed, E expected failures, T total`.
fn parse_pjdfstest(lines: &[String]) -> (Vec<Case>, Option<Summary>) {
    const OUTCOMES: &[(&str, Outcome)] = &[
        ("PASSED UNEXPECTEDLY", Outcome::PassedUnexpectedly),
        ("failed as expected", Outcome::FailedAsExpected),
        ("FAILED", Outcome::Failed),
        ("skipped", Outcome::Skipped),
        ("ok", Outcome::Ok),
    ];
    let mut cases: Vec<Case> = Vec::new();
    let mut summary = None;
    for line in lines {
        let trimmed = line.trim_end();
        if let Some(rest) = trimmed.strip_prefix("Summary:") {
            summary = parse_summary(rest);
            continue;
        }
        if let Some((name, outcome)) = result_line(trimmed, OUTCOMES) {
            cases.push(Case {
                name,
                outcome,
                details: Vec::new(),
            });
            continue;
        }
        if summary.is_none()
            && let Some(case) = cases.last_mut()
        {
            let d = line.trim();
            if !d.is_empty() && d != "Error: Some tests have failed" {
                case.details.push(d.to_string());
            }
        }
    }
    (cases, summary)
}

/// `<name> <padding> <outcome>`: one name without blanks (test names contain
/// `::`), at least one blank, then the outcome word.
fn result_line(line: &str, outcomes: &[(&str, Outcome)]) -> Option<(String, Outcome)> {
    if line.starts_with(char::is_whitespace) || !line.contains("::") {
        return None;
    }
    outcomes.iter().find_map(|(word, outcome)| {
        let head = line.strip_suffix(word)?;
        let name = head.trim_end();
        (name.len() < head.len() && !name.is_empty() && !name.contains(char::is_whitespace))
            .then(|| (name.to_string(), *outcome))
    })
}

fn parse_summary(s: &str) -> Option<Summary> {
    let mut sum = Summary::default();
    let mut seen = 0;
    for part in s.split(',') {
        let part = part.trim();
        let (n, what) = part.split_once(' ')?;
        let n: usize = n.parse().ok()?;
        match what {
            "failed" => sum.failed = n,
            "skipped" => sum.skipped = n,
            "passed" => sum.passed = n,
            "expected failures" => sum.expected_failures = n,
            "total" => sum.total = n,
            _ => return None,
        }
        seen += 1;
    }
    (seen == 5).then_some(sum)
}

/// What is wrong with a pjdfstest run, as report lines (empty: all good).
fn judge_pjdfstest(run: &Run, filtered: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let (cases, summary) = parse_pjdfstest(&run.stdout);

    let Some(status) = run.status else {
        let last = cases.last().map(|c| c.name.as_str()).unwrap_or("(none)");
        problems.push(format!(
            "pjdfstest did not finish within {PJDFSTEST_TIMEOUT:?} and was killed: the case after \
             '{last}' (the last one reported) hangs on the mount"
        ));
        return problems;
    };

    let bad: Vec<&Case> = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Failed | Outcome::PassedUnexpectedly))
        .collect();
    if !bad.is_empty() {
        let mut s = format!("{} pjdfstest case(s) failed on the mount:", bad.len());
        for c in &bad {
            s.push_str(&format!("\n  {}", c.name));
            if c.outcome == Outcome::PassedUnexpectedly {
                s.push_str(" (passed, but listed in expected_failures)");
            }
            for d in &c.details {
                s.push_str(&format!("\n      {d}"));
            }
        }
        problems.push(s);
    }

    let odd_skips: Vec<&Case> = cases
        .iter()
        .filter(|c| c.outcome == Outcome::Skipped)
        .filter(|c| {
            !c.details
                .iter()
                .any(|d| ALLOWED_SKIPS.iter().any(|(reason, _)| d.contains(reason)))
        })
        .collect();
    if !odd_skips.is_empty() {
        let mut s = format!(
            "{} pjdfstest case(s) were skipped for a reason other than the allowed ones:",
            odd_skips.len()
        );
        for c in &odd_skips {
            s.push_str(&format!("\n  {}: {}", c.name, c.details.join(" / ")));
        }
        problems.push(s);
    }

    match &summary {
        None => problems.push(
            "pjdfstest printed no 'Summary:' line (it did not run the suite; see its stderr)"
                .to_string(),
        ),
        Some(sum) => {
            if sum.total != cases.len() {
                problems.push(format!(
                    "pjdfstest's summary counts {} cases but {} result lines were parsed",
                    sum.total,
                    cases.len()
                ));
            }
            if sum.passed == 0 {
                problems.push("pjdfstest passed zero test cases".to_string());
            }
            if !filtered && sum.total < PJDFSTEST_MIN_CASES {
                problems.push(format!(
                    "pjdfstest ran {} cases, expected at least {PJDFSTEST_MIN_CASES}",
                    sum.total
                ));
            }
            if sum.failed > 0 && bad.is_empty() {
                problems.push(format!(
                    "pjdfstest reports {} failure(s) that could not be attributed to a case",
                    sum.failed
                ));
            }
        }
    }

    if !status.success() && problems.is_empty() {
        problems.push(format!("pjdfstest exited with {status}"));
    }
    if !problems.is_empty() && !run.stderr.trim().is_empty() {
        problems.push(format!("pjdfstest stderr:\n{}", run.stderr.trim_end()));
    }
    problems
}

// ---------------------------------------------------------------------------
// pjdfstest
// ---------------------------------------------------------------------------

#[test]
fn pjdfstest_allow_other() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root("pjdfstest");
    let tool = find_tool("pjdfstest", "PJDFSTEST", PJDFSTEST_VERSION);
    check_version(&tool, "pjdfstest", PJDFSTEST_VERSION);
    require_pjdfstest_users();
    let config = data_file("pjdfstest.toml");

    let root = TestRoot::new();
    let replicas = replica_dirs(&root, 2);
    // A directory on another file system than the mount, for the EXDEV cases.
    let secondary = root.mkdir("secondary-fs");

    let mut mount = Mount::builder()
        .replica(&replicas[0])
        .replica(&replicas[1])
        .option("allow_other")
        .watchdog(PJDFSTEST_TIMEOUT + Duration::from_secs(10 * 60))
        .mount();
    let workdir = mount.path("pjdfstest");
    fs::create_dir(&workdir).expect("mkdir pjdfstest in the mount");
    fs::set_permissions(&workdir, fs::Permissions::from_mode(0o755)).expect("chmod 0755");

    let filter: Vec<String> = env::var("PJDFSTEST_FILTER")
        .map(|f| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let mut cmd = Command::new(&tool);
    cmd.arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&workdir)
        .arg("-s")
        .arg(&secondary)
        .args(&filter)
        .current_dir("/")
        .env("NO_COLOR", "1")
        .env("CLICOLOR", "0")
        // Backtraces of an uninstrumented release binary only add noise; the
        // panic message carries the expected and actual errno.
        .env("RUST_BACKTRACE", "0");
    println!(
        "running (as root, mount has allow_other, replicas {} and {}):\n  NO_COLOR=1 {} -c {} -p {} -s {}{}",
        replicas[0].display(),
        replicas[1].display(),
        tool.display(),
        config.display(),
        workdir.display(),
        secondary.display(),
        filter.iter().map(|f| format!(" {f}")).collect::<String>()
    );
    let run = run_streaming(cmd, "pjdfstest| ", true, PJDFSTEST_TIMEOUT);
    println!("pjdfstest finished in {:.1?}", run.elapsed);

    let mut problems = judge_pjdfstest(&run, !filter.is_empty());

    if !mount.daemon_alive() {
        problems.push("the chironfs daemon died during pjdfstest".to_string());
    } else {
        // pjdfstest removes its temporary tree; whatever is left could not be
        // removed through the mount.
        match fs::read_dir(&workdir) {
            Ok(rd) => {
                let left: Vec<OsString> =
                    rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
                if !left.is_empty() {
                    problems.push(format!(
                        "pjdfstest could not clean up {} through the mount; left: {left:?}",
                        workdir.display()
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "readdir {} after pjdfstest: {e}",
                workdir.display()
            )),
        }
    }

    // Unmount (the daemon flushes and exits), then compare what it left on disk.
    if let Err(e) = catch(|| {
        let (status, _mount_root) = mount.unmount();
        assert!(
            status.success(),
            "chironfs exited with {status} after umount"
        );
    }) {
        problems.push(format!("unmount: {e}"));
    }
    if let Err(e) = catch(|| assert_replicas_identical(&replicas)) {
        problems.push(format!("replicas differ after pjdfstest:\n{e}"));
    }

    assert!(
        problems.is_empty(),
        "pjdfstest on a 2-replica chironfs mount (allow_other):\n\n{}",
        problems.join("\n\n")
    );
}

// ---------------------------------------------------------------------------
// fsx
// ---------------------------------------------------------------------------

#[test]
fn fsx_mmap_100k() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tool = find_tool("fsx", "FSX", FSX_VERSION);
    check_version(&tool, "fsx", FSX_VERSION);
    let config = data_file("fsx.toml");
    let seed: u64 = match env::var("CHIRONFS_FSX_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("CHIRONFS_FSX_SEED={s:?} is not a u64")),
        Err(_) => FSX_DEFAULT_SEED,
    };
    let conf_text = fs::read_to_string(&config).expect("read tests/fsx.toml");
    assert!(
        ["mapread", "mapwrite"]
            .iter()
            .all(|w| conf_text
                .lines()
                .any(|l| l.split('=').next().map(str::trim) == Some(*w)
                    && l.split('=').nth(1).map(str::trim) != Some("0"))),
        "tests/fsx.toml must keep mapread and mapwrite on"
    );

    let root = TestRoot::new();
    let replicas = replica_dirs(&root, 2);
    // Outside the mount and kept after the test: fsx writes the expected
    // content (fsx.dat.fsxgood) here on failure, and we add the replicas' copies.
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fsx-seed-{seed}"));
    let _ = fs::remove_dir_all(&artifacts);
    fs::create_dir_all(&artifacts).expect("create artifacts dir");

    let mut mount = Mount::builder()
        .replica(&replicas[0])
        .replica(&replicas[1])
        .watchdog(FSX_TIMEOUT + Duration::from_secs(10 * 60))
        .mount();
    let file = mount.path("fsx.dat");

    let mut cmd = Command::new(&tool);
    cmd.arg("-N")
        .arg(FSX_OPS.to_string())
        .arg("-S")
        .arg(seed.to_string())
        .arg("-f")
        .arg(&config)
        .arg("-P")
        .arg(&artifacts)
        .arg(&file)
        .current_dir("/")
        .env("RUST_BACKTRACE", "1");
    println!(
        "fsx seed {seed} (override with CHIRONFS_FSX_SEED); running:\n  {} -N {FSX_OPS} -S {seed} -f {} -P {} {}",
        tool.display(),
        config.display(),
        artifacts.display(),
        file.display()
    );
    let run = run_streaming(cmd, "fsx| ", true, FSX_TIMEOUT);
    println!("fsx finished in {:.1?}", run.elapsed);

    let mut problems = Vec::new();
    let a_ok = run.stdout.iter().any(|l| l.trim() == FSX_OK);
    match run.status {
        None => problems.push(format!(
            "fsx (seed {seed}) did not finish within {FSX_TIMEOUT:?} and was killed"
        )),
        Some(status) if !status.success() || !a_ok => {
            let mut s = format!(
                "fsx (seed {seed}) failed: exit {status}, {}",
                if a_ok { "printed A-OK" } else { "no A-OK" }
            );
            if !run.stderr.trim().is_empty() {
                s.push_str(&format!("\nfsx stderr:\n{}", run.stderr.trim_end()));
            }
            problems.push(s);
        }
        Some(_) => {}
    }

    // What the mount serves at the end, to compare with the replicas below.
    let served = if mount.daemon_alive() {
        match fs::read(&file) {
            Ok(b) => Some(b),
            Err(e) => {
                problems.push(format!("read {} after fsx: {e}", file.display()));
                None
            }
        }
    } else {
        problems.push("the chironfs daemon died during fsx".to_string());
        None
    };

    // The daemon's log of the run (checked below).
    let log = mount.log();
    if let Err(e) = catch(|| {
        let (status, _mount_root) = mount.unmount();
        assert!(
            status.success(),
            "chironfs exited with {status} after umount"
        );
    }) {
        problems.push(format!("unmount: {e}"));
    }
    if let Some(served) = &served {
        for (i, r) in replicas.iter().enumerate() {
            match fs::read(r.join("fsx.dat")) {
                Ok(b) if b == *served => {}
                Ok(b) => problems.push(format!(
                    "replica {i} fsx.dat ({} bytes) differs from what the mount served ({} bytes){}",
                    b.len(),
                    served.len(),
                    b.iter()
                        .zip(served.iter())
                        .position(|(x, y)| x != y)
                        .map(|o| format!(", first at offset {o:#x}"))
                        .unwrap_or_default()
                )),
                Err(e) => problems.push(format!("read replica {i} fsx.dat: {e}")),
            }
        }
    }
    if let Err(e) = catch(|| assert_replicas_identical(&replicas)) {
        problems.push(format!("replicas differ after fsx:\n{e}"));
    }
    // Nothing is logged per request at info or above (a busy server's
    // syslog must show the line that matters): only the daemon's own
    // lifecycle lines may appear.
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| {
            [" INFO ", " WARN ", " ERROR "]
                .iter()
                .any(|lvl| l.contains(lvl))
        })
        .filter(|l| !l.contains(" chironfs::daemon"))
        .collect();
    if !noisy.is_empty() {
        problems.push(format!(
            "{} log lines at info or above during fsx (none expected), the first: {:?}",
            noisy.len(),
            &noisy[..noisy.len().min(5)]
        ));
    }

    if !problems.is_empty() {
        for (i, r) in replicas.iter().enumerate() {
            let _ = fs::copy(
                r.join("fsx.dat"),
                artifacts.join(format!("fsx.dat.replica{i}")),
            );
        }
        problems.push(format!(
            "artifacts (expected content fsx.dat.fsxgood if fsx wrote it, the replicas' copies): {}",
            artifacts.display()
        ));
    }
    assert!(
        problems.is_empty(),
        "fsx {FSX_OPS} ops (mmap on, seed {seed}) on a 2-replica chironfs mount:\n\n{}",
        problems.join("\n\n")
    );
    let _ = fs::remove_dir_all(&artifacts);
}

// ---------------------------------------------------------------------------
// Unit tests of the report parsing (no mount needed)
// ---------------------------------------------------------------------------

#[test]
fn parses_pjdfstest_report() {
    let text = "\
chmod::eloop_comp                                                             ok
rename::erofs_named                                                      skipped
\tRemounts (allow_remount) are not allowed in the configuration file
\u{1b}[34mopen::interact_2gb\u{1b}[0m                                                        \u{1b}[31mFAILED\u{1b}[0m
\tassertion `left == right` failed
  left: Err(EIO)
 right: Ok(())
a::very::long::test::name::that::is::longer::than::the::padding::width::of::seventy::seven FAILED
\tcalled `Result::unwrap()` on an `Err` value: ENOTSUP

Summary: 2 failed, 1 skipped, 1 passed, 0 expected failures, 4 total
Error: Some tests have failed";
    let lines: Vec<String> = text.lines().map(strip_ansi).collect();
    let (cases, summary) = parse_pjdfstest(&lines);
    let got: Vec<(&str, Outcome)> = cases.iter().map(|c| (c.name.as_str(), c.outcome)).collect();
    assert_eq!(
        got,
        vec![
            ("chmod::eloop_comp", Outcome::Ok),
            ("rename::erofs_named", Outcome::Skipped),
            ("open::interact_2gb", Outcome::Failed),
            (
                "a::very::long::test::name::that::is::longer::than::the::padding::width::of::seventy::seven",
                Outcome::Failed
            ),
        ]
    );
    assert_eq!(
        cases[2].details,
        vec![
            "assertion `left == right` failed",
            "left: Err(EIO)",
            "right: Ok(())"
        ]
    );
    assert_eq!(
        summary,
        Some(Summary {
            failed: 2,
            skipped: 1,
            passed: 1,
            expected_failures: 0,
            total: 4
        })
    );

    let run = Run {
        status: None,
        stdout: lines.clone(),
        stderr: String::new(),
        elapsed: Duration::ZERO,
    };
    assert!(judge_pjdfstest(&run, false)[0].contains("after 'a::very::long"));

    // A run that printed nothing is a failure, never a pass.
    use std::os::unix::process::ExitStatusExt;
    let empty = Run {
        status: Some(ExitStatus::from_raw(0)),
        stdout: Vec::new(),
        stderr: String::new(),
        elapsed: Duration::ZERO,
    };
    assert!(!judge_pjdfstest(&empty, false).is_empty());
    let zero = Run {
        status: Some(ExitStatus::from_raw(0)),
        stdout: vec!["Summary: 0 failed, 0 skipped, 0 passed, 0 expected failures, 0 total".into()],
        stderr: String::new(),
        elapsed: Duration::ZERO,
    };
    assert!(
        judge_pjdfstest(&zero, true)
            .iter()
            .any(|p| p.contains("zero"))
    );
}
