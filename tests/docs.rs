//! Documentation contract: the man pages render without warnings, the
//! example config is accepted by the daemon's own parser, and every `Config`
//! field is documented in the example config and in chironfs.toml(5).
//! Guards against docs that drift from the code (a renamed or added option
//! that nobody documented, an example that no longer parses).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn man_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = fs::read_dir(root().join("man"))
        .expect("man/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    pages.sort();
    assert!(
        pages.len() >= 3,
        "expected chironfs.8, chironfs.toml.5 and mount.chironfs.8 in man/, found {pages:?}"
    );
    pages
}

/// Runs a lint tool on a page; returns its complaints (empty if none).
/// A missing tool fails the test, naming the package that provides it.
fn lint(tool: &str, args: &[&str], page: &Path, package: &str) -> String {
    let out = match Command::new(tool).args(args).arg(page).output() {
        Ok(o) => o,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!(
                "'{tool}' is not installed: install the '{package}' package (apt-get install {package})"
            )
        }
        Err(e) => panic!("cannot run {tool}: {e}"),
    };
    let mut complaints = String::from_utf8_lossy(&out.stderr).into_owned();
    complaints.push_str(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() && complaints.trim().is_empty() {
        complaints = format!("{tool} exited with {}", out.status);
    }
    complaints
}

#[test]
fn man_pages_render_without_warnings() {
    let mut failures = Vec::new();
    for page in man_pages() {
        let groff = lint(
            "groff",
            &["-man", "-Tutf8", "-ww", "-z"],
            &page,
            "groff-base",
        );
        if !groff.trim().is_empty() {
            failures.push(format!("groff, {}:\n{groff}", page.display()));
        }
        let mandoc = lint("mandoc", &["-T", "lint", "-W", "warning"], &page, "mandoc");
        if !mandoc.trim().is_empty() {
            failures.push(format!("mandoc, {}:\n{mandoc}", page.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Runs `chironfs --config FILE /nonexistent-mountpoint`: the config is
/// parsed and validated before the mountpoint is checked, so the only
/// acceptable error is the mountpoint's.
fn assert_config_accepted(config: &Path) {
    let mnt = "/nonexistent-mountpoint";
    assert!(!Path::new(mnt).exists(), "{mnt} exists on this machine");
    let out = Command::new(env!("CARGO_BIN_EXE_chironfs"))
        .arg("--config")
        .arg(config)
        .arg(mnt)
        .output()
        .expect("run chironfs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "chironfs succeeded on {mnt}");
    assert_eq!(
        stderr.trim(),
        format!("chironfs: mountpoint '{mnt}' does not exist"),
        "config {} was not accepted",
        config.display()
    );
}

/// The example config, as shipped and with every commented-out default
/// (`# key = value`) turned on.
#[test]
fn example_config_is_accepted_by_the_daemon() {
    let example = root().join("config/chironfs.toml");
    assert_config_accepted(&example);

    let text = fs::read_to_string(&example).unwrap();
    let mut enabled = 0;
    let uncommented: String = text
        .lines()
        .map(|line| match commented_key(line) {
            Some(_) => {
                enabled += 1;
                format!("{}\n", &line[2..])
            }
            None => format!("{line}\n"),
        })
        .collect();
    assert!(enabled > 10, "expected commented-out defaults in {text}");
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all-keys.toml");
    fs::write(&all, uncommented).unwrap();
    assert_config_accepted(&all);
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// `key = value` → `key`.
fn key_of(line: &str) -> Option<&str> {
    // A table header, `[name]`, documents the table's key.
    if let Some(table) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
        return (!table.is_empty() && table.chars().all(is_key_char)).then_some(table);
    }
    let (key, _) = line.split_once(" = ")?;
    (!key.is_empty() && key.chars().all(is_key_char)).then_some(key)
}

/// `# key = value` → `key`.
fn commented_key(line: &str) -> Option<&str> {
    key_of(line.strip_prefix("# ")?)
}

/// The names of the `pub` fields of `pub struct Config` in src/config/mod.rs.
fn config_fields() -> Vec<String> {
    let src = fs::read_to_string(root().join("src/config/mod.rs")).unwrap();
    let mut lines = src.lines();
    lines
        .by_ref()
        .find(|l| l.trim_start().starts_with("pub struct Config {"))
        .expect("pub struct Config in src/config/mod.rs");
    let mut fields = Vec::new();
    for line in lines {
        if line.trim() == "}" {
            break;
        }
        if let Some(rest) = line.trim().strip_prefix("pub ")
            && let Some((name, _)) = rest.split_once(':')
        {
            fields.push(name.trim().to_string());
        }
    }
    assert!(
        fields.len() > 10 && fields.iter().any(|f| f == "replicas"),
        "could not read the Config fields: {fields:?}"
    );
    fields
}

/// Words set in bold by a `.B` or `.BR` request of a man page.
fn bold_words(page: &str) -> Vec<String> {
    let mut words = Vec::new();
    for line in page.lines() {
        let mut tokens = line.split_whitespace();
        if matches!(tokens.next(), Some(".B") | Some(".BR")) {
            words.extend(
                tokens.map(|t| t.trim_matches(|c| c == '"' || c == ',').replace("\\-", "-")),
            );
        }
    }
    words
}

#[test]
fn every_config_field_is_documented() {
    let fields = config_fields();
    let toml = fs::read_to_string(root().join("config/chironfs.toml")).unwrap();
    let toml_keys: Vec<&str> = toml
        .lines()
        .filter_map(|l| key_of(l).or_else(|| commented_key(l)))
        .collect();
    let man5 = bold_words(&fs::read_to_string(root().join("man/chironfs.toml.5")).unwrap());
    let man8 = bold_words(&fs::read_to_string(root().join("man/chironfs.8")).unwrap());
    let mut missing = Vec::new();
    for f in &fields {
        if !toml_keys.contains(&f.as_str()) {
            missing.push(format!("'{f}' is not a key in config/chironfs.toml"));
        }
        if !man5.contains(f) {
            missing.push(format!("'{f}' is not documented in man/chironfs.toml.5"));
        }
        if !man8.contains(f) {
            missing.push(format!("'{f}' is not listed in man/chironfs.8"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
