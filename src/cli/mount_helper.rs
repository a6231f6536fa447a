//! `mount.chironfs SRC MOUNTPOINT [-sfnv] [-o OPTS] [-t TYPE]`: what mount(8)
//! and fstab call.
//!
//! mount(8) runs `/sbin/mount.chironfs` for `-t chironfs` and for fstab lines
//! of type `chironfs`. The helper turns its command line into an ordinary
//! `chironfs` one, which then starts the daemon without `-f`: the daemon
//! forks to the background only once the mount is live, so mount(8) returns 0
//! exactly when the filesystem works, and non-zero with the reason otherwise.
//!
//! SRC is the replica list (`[:]A=[:]B...`, optionally written ChironFS-style
//! as `chironfs#[:]A=[:]B`) or `config=/path/to.toml`, which becomes
//! `--config /path/to.toml`.
//!
//! The mount(8) flags `-s` (sloppy), `-f` (fake), `-n` (no mtab) and `-v`
//! (verbose) are dropped: `-f` means "fake" to mount(8), never chironfs's
//! "foreground". `-t TYPE` is accepted and checked to be a chironfs type.

/// Turns a mount(8) helper command line into the `chironfs` command line.
pub fn to_chironfs_args(argv: &[String]) -> Result<Vec<String>, String> {
    let me = "mount.chironfs";
    let usage = format!(
        "usage: {me} [:]PATH=[:]PATH[=...] MOUNTPOINT [-sfnv] [-o OPTIONS]\n       \
         {me} config=/path/to/config.toml MOUNTPOINT [-sfnv] [-o OPTIONS]"
    );
    let mut positional: Vec<&str> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut only_positional = false;
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let a = arg.as_str();
        if only_positional || !a.starts_with('-') || a == "-" {
            positional.push(a);
            continue;
        }
        if a == "--" {
            only_positional = true;
            continue;
        }
        if a == "-h" || a == "--help" {
            return Err(usage);
        }
        // A cluster of short flags, possibly ending in -o/-t with the value
        // attached (`-ofoo`) or in the next argument.
        let flags = &a[1..];
        for (i, c) in flags.char_indices() {
            match c {
                's' | 'f' | 'n' | 'v' => {}
                'o' | 't' | 'N' => {
                    let rest = &flags[i + 1..];
                    let value = if rest.is_empty() {
                        match args.next() {
                            Some(v) => v.as_str(),
                            None => {
                                return Err(format!("{me}: option '-{c}' needs a value\n{usage}"));
                            }
                        }
                    } else {
                        rest
                    };
                    match c {
                        'o' if !value.is_empty() => options.push(value.to_string()),
                        't' => check_type(value)?,
                        // An empty -o, or -N NAMESPACE: newer mount(8) may
                        // pass the target namespace; the helper already runs
                        // in it.
                        _ => {}
                    }
                    break;
                }
                _ => {
                    return Err(format!("{me}: unknown flag '-{c}' in '{a}'\n{usage}"));
                }
            }
        }
    }
    let (src, mountpoint) = match positional.as_slice() {
        [src, mnt] => (*src, *mnt),
        [] => return Err(format!("{me}: missing source and mountpoint\n{usage}")),
        [one] => return Err(format!("{me}: missing mountpoint after '{one}'\n{usage}")),
        [_, _, extra, ..] => {
            return Err(format!("{me}: unexpected argument '{extra}'\n{usage}"));
        }
    };
    if mountpoint.is_empty() {
        return Err(format!("{me}: empty mountpoint"));
    }
    let src = src.strip_prefix("chironfs#").unwrap_or(src);
    let mut out: Vec<String> = vec!["chironfs".to_string()];
    for o in options {
        out.push("-o".to_string());
        out.push(o);
    }
    if let Some(path) = src.strip_prefix("config=") {
        if path.is_empty() {
            return Err(format!(
                "{me}: bad source 'config=': expected config=/path/to/config.toml"
            ));
        }
        out.push("--config".to_string());
        out.push(path.to_string());
        out.push("--".to_string());
        out.push(mountpoint.to_string());
    } else {
        check_replica_list(src)?;
        out.push("--".to_string());
        out.push(src.to_string());
        out.push(mountpoint.to_string());
    }
    Ok(out)
}

/// `-t chironfs` or `-t fuse.chironfs` (anything else is a mistake in fstab).
fn check_type(t: &str) -> Result<(), String> {
    match t {
        "chironfs" | "fuse.chironfs" => Ok(()),
        _ => Err(format!(
            "mount.chironfs: wrong filesystem type '{t}' (expected chironfs or fuse.chironfs)"
        )),
    }
}

/// The replica list must name at least one directory and no empty one.
fn check_replica_list(src: &str) -> Result<(), String> {
    let expected = "expected [:]PATH=[:]PATH[=...] or config=/path/to/config.toml";
    if src.is_empty() {
        return Err(format!("mount.chironfs: empty source: {expected}"));
    }
    for part in src.split('=') {
        if part.is_empty() || part == ":" {
            return Err(format!(
                "mount.chironfs: bad source '{src}': empty replica path ({expected})"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::to_chironfs_args;

    fn conv(args: &[&str]) -> Result<Vec<String>, String> {
        let v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        to_chironfs_args(&v)
    }

    fn ok(args: &[&str]) -> Vec<String> {
        conv(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn err(args: &[&str]) -> String {
        match conv(args) {
            Ok(v) => panic!("{args:?}: expected an error, got {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn replica_list_and_options() {
        assert_eq!(
            ok(&[
                "/sbin/mount.chironfs",
                "/srv/a=:/srv/b",
                "/mnt/data",
                "-o",
                "rw,allow_other"
            ]),
            [
                "chironfs",
                "-o",
                "rw,allow_other",
                "--",
                "/srv/a=:/srv/b",
                "/mnt/data"
            ]
        );
    }

    #[test]
    fn no_options() {
        assert_eq!(
            ok(&["mount.chironfs", "/a=/b", "/m"]),
            ["chironfs", "--", "/a=/b", "/m"]
        );
    }

    #[test]
    fn mount_flags_are_dropped_never_foreground() {
        let v = ok(&[
            "mount.chironfs",
            "/a=/b",
            "/m",
            "-s",
            "-f",
            "-n",
            "-v",
            "-o",
            "allow_other",
        ]);
        assert_eq!(v, ["chironfs", "-o", "allow_other", "--", "/a=/b", "/m"]);
        let v = ok(&["mount.chironfs", "-fnsv", "/a=/b", "/m"]);
        assert_eq!(v, ["chironfs", "--", "/a=/b", "/m"]);
        assert!(!v.iter().any(|a| a == "-f"));
    }

    #[test]
    fn options_attached_repeated_and_clustered() {
        assert_eq!(
            ok(&[
                "mount.chironfs",
                "/a=/b",
                "/m",
                "-oallow_other",
                "-vo",
                "ro",
                "-o",
                ""
            ]),
            [
                "chironfs",
                "-o",
                "allow_other",
                "-o",
                "ro",
                "--",
                "/a=/b",
                "/m"
            ]
        );
    }

    #[test]
    fn type_flag_accepted() {
        assert_eq!(
            ok(&["mount.chironfs", "/a=/b", "/m", "-t", "fuse.chironfs"]),
            ["chironfs", "--", "/a=/b", "/m"]
        );
        assert_eq!(
            ok(&["mount.chironfs", "/a=/b", "/m", "-tchironfs"]),
            ["chironfs", "--", "/a=/b", "/m"]
        );
        let e = err(&["mount.chironfs", "/a=/b", "/m", "-t", "ext4"]);
        assert!(e.contains("'ext4'"), "{e}");
    }

    #[test]
    fn config_source() {
        assert_eq!(
            ok(&[
                "mount.chironfs",
                "config=/etc/chironfs/data.toml",
                "/mnt/data",
                "-o",
                "defaults"
            ]),
            [
                "chironfs",
                "-o",
                "defaults",
                "--config",
                "/etc/chironfs/data.toml",
                "--",
                "/mnt/data"
            ]
        );
        let e = err(&["mount.chironfs", "config=", "/m"]);
        assert!(e.contains("bad source 'config='"), "{e}");
    }

    #[test]
    fn chironfs_hash_source() {
        assert_eq!(
            ok(&["mount.chironfs", "chironfs#/a=/b", "/m"]),
            ["chironfs", "--", "/a=/b", "/m"]
        );
        assert_eq!(
            ok(&["mount.chironfs", "chironfs#config=/c.toml", "/m"]),
            ["chironfs", "--config", "/c.toml", "--", "/m"]
        );
    }

    #[test]
    fn source_starting_with_colon_or_dash_stays_positional() {
        assert_eq!(
            ok(&["mount.chironfs", ":/a=/b", "/m"]),
            ["chironfs", "--", ":/a=/b", "/m"]
        );
        assert_eq!(
            ok(&["mount.chironfs", "--", "-a=/b", "/m"]),
            ["chironfs", "--", "-a=/b", "/m"]
        );
    }

    #[test]
    fn missing_arguments() {
        let e = err(&["mount.chironfs"]);
        assert!(e.contains("missing source and mountpoint"), "{e}");
        assert!(e.contains("usage:"), "{e}");
        let e = err(&["mount.chironfs", "/a=/b"]);
        assert!(e.contains("missing mountpoint after '/a=/b'"), "{e}");
        let e = err(&["mount.chironfs", "/a=/b", "/m", "-o"]);
        assert!(e.contains("'-o' needs a value"), "{e}");
        let e = err(&["mount.chironfs", "/a=/b", "/m", "/x"]);
        assert!(e.contains("unexpected argument '/x'"), "{e}");
    }

    #[test]
    fn bad_sources_and_flags() {
        for src in ["", "/a==/b", "/a=", "=/b", "/a=:"] {
            let e = err(&["mount.chironfs", src, "/m"]);
            assert!(e.contains("source"), "{src:?}: {e}");
        }
        let e = err(&["mount.chironfs", "/a=/b", "/m", "-x"]);
        assert!(e.contains("unknown flag '-x'"), "{e}");
        let e = err(&["mount.chironfs", "/a=/b", ""]);
        assert!(e.contains("empty mountpoint"), "{e}");
    }
}
