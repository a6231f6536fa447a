//! Startup contract (tests/CONTRACT.md): guards against a daemon that mounts on
//! a bad command line (e.g. a replica that is the mountpoint, or an unmounted
//! NFS path), prints an unhelpful error, or exits with the wrong code.

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `chironfs ARGS` (no `-f`), and whatever happens makes sure nothing
/// stays mounted at `mountpoint`. Returns the output and whether something had
/// been mounted there.
fn run_unmounting(args: &[&OsStr], mountpoint: &Path) -> (Output, bool) {
    let out = run_chironfs(args, RUN_TIMEOUT);
    let was_mounted = ensure_unmounted(mountpoint);
    (out, was_mounted)
}

/// Asserts a rejected startup: exit code 1, one `chironfs: ` line on stderr
/// containing `needle`, nothing mounted.
fn assert_rejected(args: &[&OsStr], mountpoint: &Path, needle: &str) {
    let (out, was_mounted) = run_unmounting(args, mountpoint);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!(
        "args {args:?}\nstatus {:?}\nstderr {stderr:?}\nstdout {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!was_mounted, "rejected startup mounted anyway\n{ctx}");
    assert_eq!(out.status.code(), Some(1), "exit code must be 1\n{ctx}");
    assert!(
        stderr.contains(needle),
        "stderr must contain {needle:?}\n{ctx}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "stderr must be one line\n{ctx}");
    assert!(
        lines[0].starts_with("chironfs: "),
        "stderr must start with 'chironfs: '\n{ctx}"
    );
}

fn spec(paths: &[&Path]) -> OsString {
    let mut s = OsString::new();
    for (i, p) in paths.iter().enumerate() {
        if i > 0 {
            s.push("=");
        }
        s.push(p);
    }
    s
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Replica dirs a, b and mountpoint mnt under a fresh root.
fn setup() -> (TestRoot, PathBuf, PathBuf, PathBuf) {
    let root = TestRoot::new();
    let a = root.mkdir("a");
    let b = root.mkdir("b");
    let m = root.mkdir("mnt");
    (root, a, b, m)
}

#[test]
fn rejects_missing_replica() {
    let (root, a, _b, m) = setup();
    let missing = root.path().join("does-not-exist");
    let s = spec(&[&a, &missing]);
    assert_rejected(
        &[&s, m.as_os_str()],
        &m,
        &format!("replica '{}' does not exist", missing.display()),
    );
}

#[test]
fn rejects_replica_that_is_not_a_directory() {
    let (root, a, _b, m) = setup();
    let file = root.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let s = spec(&[&a, &file]);
    assert_rejected(
        &[&s, m.as_os_str()],
        &m,
        &format!("replica '{}' is not a directory", file.display()),
    );
}

#[test]
fn rejects_same_directory_twice_by_identity_not_string() {
    let (root, a, _b, m) = setup();
    // Same string twice.
    let s = spec(&[&a, &a]);
    assert_rejected(
        &[&s, m.as_os_str()],
        &m,
        &format!(
            "replicas '{}' and '{}' are the same directory",
            a.display(),
            a.display()
        ),
    );
    // Different strings, same directory (via a symlink and via "./").
    let link = root.path().join("link-to-a");
    symlink(&a, &link).unwrap();
    let s = spec(&[&a, &link]);
    assert_rejected(
        &[&s, m.as_os_str()],
        &m,
        &format!(
            "replicas '{}' and '{}' are the same directory",
            a.display(),
            link.display()
        ),
    );
    let dotted = PathBuf::from(format!("{}/./", a.display()));
    let s = spec(&[&a, &dotted]);
    let (out, was_mounted) = run_unmounting(&[&s, m.as_os_str()], &m);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!was_mounted, "mounted with the same dir twice: {stderr}");
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("are the same directory"),
        "stderr: {stderr}"
    );
}

#[test]
fn rejects_replica_inside_mountpoint() {
    let (root, a, _b, _m) = setup();
    // The mountpoint directory holds a subdirectory used as a replica.
    let m = root.mkdir("mnt2");
    let inner = m.join("inner");
    fs::create_dir(&inner).unwrap();
    let s = spec(&[&a, &inner]);
    assert_rejected(
        &[&s, m.as_os_str()],
        &m,
        &format!("replica '{}' is inside the mountpoint", inner.display()),
    );
    // The mountpoint itself as a replica counts as inside it.
    let s = spec(&[&a, &m]);
    let (out, was_mounted) = run_unmounting(&[&s, m.as_os_str()], &m);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!was_mounted, "mounted over its own replica: {stderr}");
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("is inside the mountpoint") || stderr.contains("is inside replica"),
        "stderr: {stderr}"
    );
}

#[test]
fn rejects_mountpoint_inside_replica() {
    let (_root, a, b, _m) = setup();
    let m = b.join("sub-mnt");
    fs::create_dir(&m).unwrap();
    let s = spec(&[&a, &b]);
    assert_rejected(
        &[&s, m.as_os_str()],
        &m,
        &format!(
            "mountpoint '{}' is inside replica '{}'",
            m.display(),
            b.display()
        ),
    );
}

#[test]
fn rejects_unknown_option() {
    let (_root, a, b, m) = setup();
    let s = spec(&[&a, &b]);
    assert_rejected(
        &[os("-o"), os("bogus_option"), &s, m.as_os_str()],
        &m,
        "unknown option 'bogus_option'",
    );
    // Also inside a list, after valid ones, and with a value.
    assert_rejected(
        &[os("-o"), os("allow_other,frobnicate=3"), &s, m.as_os_str()],
        &m,
        "unknown option 'frobnicate'",
    );
}

#[test]
fn rejects_bad_option_values() {
    let (_root, a, b, m) = setup();
    let s = spec(&[&a, &b]);
    for (opt, name, value) in [
        ("read_policy=sometimes", "read_policy", "sometimes"),
        ("write_quorum=most", "write_quorum", "most"),
        ("log_level=loud", "log_level", "loud"),
        ("attr_timeout=soon", "attr_timeout", "soon"),
        ("entry_timeout=-1", "entry_timeout", "-1"),
        ("threads=many", "threads", "many"),
        ("passthrough=maybe", "passthrough", "maybe"),
    ] {
        assert_rejected(
            &[os("-o"), os(opt), &s, m.as_os_str()],
            &m,
            &format!("bad value '{value}' for option '{name}'"),
        );
    }
}

/// A write quorum no mount of these replicas could ever meet.
#[test]
fn rejects_impossible_write_quorum() {
    let (_root, a, b, m) = setup();
    let s = spec(&[&a, &b]);
    for (opt, value) in [("write_quorum=0", "0"), ("write_quorum=3", "3")] {
        assert_rejected(
            &[os("-o"), os(opt), &s, m.as_os_str()],
            &m,
            &format!("bad value '{value}' for option 'write_quorum'"),
        );
    }
}

/// A bad command line of another kind (no mountpoint) is refused too.
#[test]
fn rejects_missing_mountpoint() {
    let (_root, a, b, m) = setup();
    let s = spec(&[&a, &b]);
    let (out, was_mounted) = run_unmounting(&[&s], &m);
    assert!(!was_mounted);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("chironfs: "),
        "{out:?}"
    );
}

/// Pids of processes whose command line mentions `needle`.
fn pids_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for ent in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = ent.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(cmdline) = fs::read(ent.path().join("cmdline"))
            && cmdline.windows(needle.len()).any(|w| w == needle)
        {
            pids.push(pid);
        }
    }
    pids
}

/// Without -f: returns 0 only once the mount is live, the daemon stays in the
/// background, and exits after `umount`.
#[test]
fn background_mount_is_live_on_return_and_exits_on_umount() {
    let (_root, a, b, m) = setup();
    let s = spec(&[&a, &b]);
    let out = run_chironfs([&s, m.as_os_str()], RUN_TIMEOUT);
    let fstype = mount_fstype(&m);
    if fstype.is_none() {
        panic!(
            "not mounted when chironfs returned: {:?} stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let daemons = pids_mentioning(&m);
    // Check before unmounting, but always unmount.
    let checks = std::panic::catch_unwind(|| {
        assert!(out.status.success(), "{out:?}");
        assert_eq!(fstype.as_deref(), Some("fuse.chironfs"));
        fs::write(m.join("hello"), b"world").unwrap();
        assert_eq!(fs::read(a.join("hello")).unwrap(), b"world");
        assert_eq!(fs::read(b.join("hello")).unwrap(), b"world");
        assert!(!daemons.is_empty(), "no background daemon process found");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains(PIPES_HELD_OPEN),
            "the background daemon keeps the caller's stdout/stderr open \
             (a mount helper or `$(chironfs ...)` would hang)"
        );
    });
    ensure_unmounted(&m);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pids_mentioning(&m).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = pids_mentioning(&m);
    for &pid in &left {
        // Only processes started by this test (their command line names our
        // unique mountpoint).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    if let Err(e) = checks {
        std::panic::resume_unwind(e);
    }
    assert!(left.is_empty(), "daemon {left:?} did not exit after umount");
}

#[test]
fn single_replica_works_with_a_warning() {
    let mount = Mount::builder().fresh(1).mount();
    fs::write(mount.path("f"), b"data").unwrap();
    assert_eq!(fs::read(mount.path("f")).unwrap(), b"data");
    assert_eq!(fs::read(mount.replica_path(0, "f")).unwrap(), b"data");
    let log = mount.log();
    assert!(
        log.to_lowercase().contains("warn"),
        "expected a warning about running with one replica on stderr, got:\n{log}"
    );
    let (status, _root) = mount.unmount();
    assert!(status.success(), "daemon exit status {status}");
}

#[test]
fn low_priority_replica_is_accepted_and_written() {
    let mount = Mount::builder().fresh(3).low_priority(2).mount();
    fs::create_dir(mount.path("d")).unwrap();
    fs::write(mount.path("d/f"), b"low priority too").unwrap();
    for r in &mount.replicas {
        assert_eq!(fs::read(r.join("d/f")).unwrap(), b"low priority too");
    }
    mount.assert_replicas_identical();
    // And a leading ':' on the first replica too.
    let mount2 = Mount::builder().fresh(2).low_priority(0).mount();
    fs::write(mount2.path("g"), b"x").unwrap();
    assert_eq!(fs::read(mount2.replica_path(0, "g")).unwrap(), b"x");
    assert_eq!(fs::read(mount2.replica_path(1, "g")).unwrap(), b"x");
}

/// `fsname` (from `-o` or `--config`) is visible as the mount source, and
/// `allow_other` (ditto) decides whether another user can enter the mount.
fn check_fsname_and_allow_other(mount: &Mount, fsname: Option<&str>, allow_other: bool) {
    let info = mount_at(&mount.mountpoint).expect("mounted");
    assert_eq!(info.fstype, "fuse.chironfs");
    if let Some(fsname) = fsname {
        assert_eq!(info.source, fsname, "fsname not applied: {info:?}");
    }
    fs::write(mount.path("readable"), b"x").unwrap();
    let out = run_as(65534, 65534, "stat", &[mount.path("readable").as_os_str()]);
    assert_eq!(
        out.status.success(),
        allow_other,
        "stat as nobody with allow_other={allow_other}: {out:?}"
    );
}

/// The options parse together and fsname and allow_other apply; each other
/// option's effect has its own test in tests/options.rs.
#[test]
fn options_on_command_line_take_effect() {
    let mount = Mount::builder()
        .fresh(2)
        .option("fsname=cmdline-fs,allow_other")
        .option("read_policy=priority,write_quorum=majority,log_level=info")
        .option("attr_timeout=1,entry_timeout=1.5,threads=2,passthrough=false")
        .option("rw,defaults,nofail,_netdev,noauto")
        .mount();
    check_fsname_and_allow_other(&mount, Some("cmdline-fs"), true);
    let mount2 = Mount::builder().fresh(2).mount();
    check_fsname_and_allow_other(&mount2, None, false);
}

#[test]
fn config_file_with_the_same_keys_works() {
    let root = TestRoot::new();
    let cfg = root.path().join("data.toml");
    fs::write(
        &cfg,
        "fsname = \"toml-fs\"\n\
         allow_other = true\n\
         read_policy = \"round-robin\"\n\
         write_quorum = \"all\"\n\
         log_level = \"info\"\n\
         attr_timeout = 1\n\
         entry_timeout = 1\n\
         threads = 2\n\
         passthrough = true\n",
    )
    .unwrap();
    let mount = Mount::builder()
        .root(root)
        .fresh(2)
        .arg("--config")
        .arg(&cfg)
        .mount();
    check_fsname_and_allow_other(&mount, Some("toml-fs"), true);
    fs::write(mount.path("f"), b"via config").unwrap();
    assert_eq!(fs::read(mount.replica_path(1, "f")).unwrap(), b"via config");
}

fn assert_config_rejected(contents: &str, needles: &[&str]) {
    let (root, a, b, m) = setup();
    let cfg = root.path().join("bad.toml");
    fs::write(&cfg, contents).unwrap();
    let s = spec(&[&a, &b]);
    let (out, was_mounted) =
        run_unmounting(&[os("--config"), cfg.as_os_str(), &s, m.as_os_str()], &m);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !was_mounted,
        "mounted with bad config {contents:?}: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "config {contents:?}: stderr {stderr}"
    );
    assert!(stderr.starts_with("chironfs: "), "stderr {stderr:?}");
    for n in needles {
        let n = n.replace("{cfg}", &cfg.display().to_string());
        assert!(
            stderr.contains(&n),
            "config {contents:?}: stderr must mention {n:?}, got {stderr:?}"
        );
    }
}

#[test]
fn bad_config_files_are_rejected_naming_the_problem() {
    // The message names the offending key (and value).
    assert_config_rejected("bogus_key = 1\n", &["bogus_key"]);
    assert_config_rejected(
        "read_policy = \"sometimes\"\n",
        &["sometimes", "read_policy"],
    );
    // Broken TOML syntax: the message names the file.
    assert_config_rejected("allow_other = = true\n[\n", &["{cfg}"]);
    // A missing config file.
    let (root, a, b, m) = setup();
    let cfg = root.path().join("nope.toml");
    let s = spec(&[&a, &b]);
    let (out, was_mounted) =
        run_unmounting(&[os("--config"), cfg.as_os_str(), &s, m.as_os_str()], &m);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!was_mounted);
    assert_eq!(out.status.code(), Some(1), "stderr {stderr}");
    assert!(
        stderr.contains(&*cfg.to_string_lossy()),
        "stderr {stderr:?}"
    );
}

/// mount.fuse3 passes an fstab source of `config=/path.toml` as the first
/// argument; it must read as `--config /path.toml`.
#[test]
fn config_equals_source_is_a_config_file() {
    let root = TestRoot::new();
    let (a, b, mnt) = (root.mkdir("a"), root.mkdir("b"), root.mkdir("mnt"));
    let conf = root.path().join("c.toml");
    std::fs::write(
        &conf,
        format!(
            "replicas = [{:?}, {:?}]\nstate_dir = {:?}\nctl = {:?}\n",
            a.display().to_string(),
            b.display().to_string(),
            root.path().join("state").display().to_string(),
            root.path().join("ctl.sock").display().to_string(),
        ),
    )
    .unwrap();
    let out = run_chironfs(
        [
            OsString::from(format!("config={}", conf.display())),
            mnt.clone().into(),
        ],
        Duration::from_secs(30),
    );
    let mounted = mount_fstype(&mnt);
    std::fs::write(mnt.join("f"), b"x").ok();
    ensure_unmounted(&mnt);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mounted.as_deref(), Some("fuse.chironfs"));
    assert!(a.join("f").exists() && b.join("f").exists());
}

#[test]
fn check_config_validates_without_mounting() {
    let root = TestRoot::new();
    let (a, b) = (root.mkdir("a"), root.mkdir("b"));
    let check = |text: String| {
        let conf = root.path().join("c.toml");
        std::fs::write(&conf, text).unwrap();
        run_chironfs(
            [OsString::from("--check-config"), conf.into()],
            Duration::from_secs(30),
        )
    };
    let good = check(format!(
        "replicas = [{:?}, {:?}]\nread_policy = \"priority\"\n",
        a.display().to_string(),
        b.display().to_string()
    ));
    assert!(good.status.success(), "{good:?}");
    assert!(String::from_utf8_lossy(&good.stdout).contains("ok"));
    let bad_key = check("replicas = [\"/tmp\"]\nfrobnicate = 1\n".into());
    assert_eq!(bad_key.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_key.stderr).contains("frobnicate"));
    let missing = check(format!(
        "replicas = [{:?}, \"/nonexistent/replica\"]\n",
        a.display().to_string()
    ));
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/replica"));
}

/// logrotate moves the log away and sends SIGHUP: the daemon must write to
/// a fresh file at the configured path.
#[test]
fn log_file_is_reopened_on_sighup() {
    let root = TestRoot::new();
    let log = root.path().join("chironfs.log");
    let m = Mount::builder()
        .root(root)
        .fresh(2)
        .option(&format!("log={}", log.display()))
        .mount();
    assert!(log.exists(), "log=FILE was not created");
    let rotated = log.with_extension("log.1");
    fs::rename(&log, &rotated).unwrap();
    // The daemon is the process whose command line names this mountpoint.
    let out = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(m.mountpoint.as_os_str())
        .output()
        .unwrap();
    let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(!pids.is_empty(), "daemon not found");
    for p in &pids {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::SIGHUP).unwrap();
    }
    // The daemon creates the new file, then writes its "reopened" line:
    // wait for the line, not for the file.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("reopened") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        text.contains("reopened"),
        "nothing written to the new log: {text:?}"
    );
    assert!(m.daemon_alive_check(), "SIGHUP stopped the daemon");
}
