use super::*;

fn opts(s: &str) -> Result<Config, ConfigError> {
    Config::build(None, &[s.to_string()])
}

#[test]
fn defaults_match_the_documentation() {
    let c = opts("").unwrap();
    assert_eq!(c.read_policy, ReadPolicy::RoundRobin);
    assert_eq!(c.write_quorum, WriteQuorum::Count(1));
    assert!(!c.passthrough);
    assert_eq!(c.replica_timeout, 10.0);
}

#[test]
fn options_set_typed_values() {
    let c =
        opts("allow_other,read_policy=least-busy,write_quorum=majority,threads=4,attr_timeout=0.5")
            .unwrap();
    assert!(c.allow_other);
    assert_eq!(c.read_policy, ReadPolicy::LeastBusy);
    assert_eq!(c.write_quorum, WriteQuorum::Majority);
    assert_eq!(c.threads, 4);
    assert_eq!(c.attr_timeout, 0.5);
    assert_eq!(
        opts("write_quorum=all").unwrap().write_quorum,
        WriteQuorum::All
    );
    assert_eq!(opts("verify=content").unwrap().verify, Verify::Content);
    assert!(matches!(
        opts("verify=bytes"),
        Err(ConfigError::BadValue { .. })
    ));
    assert_eq!(
        opts("write_quorum=2").unwrap().write_quorum,
        WriteQuorum::Count(2)
    );
    assert_eq!(opts("attr_timeout=2").unwrap().attr_timeout, 2.0);
}

#[test]
fn unknown_option_is_named() {
    assert_eq!(
        opts("allow_other,bogus=1").err(),
        Some(ConfigError::UnknownOption("bogus".into()))
    );
    assert_eq!(
        opts("frobnicate").err(),
        Some(ConfigError::UnknownOption("frobnicate".into()))
    );
}

#[test]
fn bad_values_are_named() {
    for (o, key) in [
        ("read_policy=fastest", "read_policy"),
        ("write_quorum=0", "write_quorum"),
        ("write_quorum=most", "write_quorum"),
        ("threads=zero", "threads"),
        ("threads=0", "threads"),
        ("attr_timeout=-1", "attr_timeout"),
        ("replica_timeout=0", "replica_timeout"),
        ("allow_other=maybe", "allow_other"),
    ] {
        match opts(o) {
            Err(ConfigError::BadValue { key: k, .. }) => assert_eq!(k, key, "{o}"),
            other => panic!("{o}: expected a bad value error, got {other:?}"),
        }
    }
}

#[test]
fn standard_mount_options_are_accepted() {
    let c = opts("rw,defaults,nofail,_netdev,noauto,x-systemd.requires=foo,noexec").unwrap();
    assert!(c.noexec);
}

#[test]
fn file_and_options_share_names_and_options_win() {
    let text = "replicas = [\"/a\", \":/b\"]\nread_policy = \"priority\"\nwrite_quorum = 2\n";
    let c = Config::build(Some(("x.toml", text)), &["read_policy=least-busy".into()]).unwrap();
    assert_eq!(c.replicas, vec!["/a".to_string(), ":/b".to_string()]);
    assert_eq!(c.read_policy, ReadPolicy::LeastBusy);
    assert_eq!(c.write_quorum, WriteQuorum::Count(2));
}

#[test]
fn bad_file_is_named() {
    let e = Config::build(Some(("/etc/x.toml", "read_policy = \"nope\"")), &[]).unwrap_err();
    assert!(e.to_string().contains("/etc/x.toml"), "{e}");
    let e = Config::build(Some(("/etc/x.toml", "bogus = 1")), &[]).unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    let e = Config::build(Some(("/etc/x.toml", "= = =")), &[]).unwrap_err();
    assert!(e.to_string().contains("/etc/x.toml"), "{e}");
}

#[test]
fn quorum_numbers() {
    assert_eq!(WriteQuorum::Majority.needed(3), 2);
    assert_eq!(WriteQuorum::Majority.needed(2), 2);
    assert_eq!(WriteQuorum::All.needed(3), 3);
    assert_eq!(WriteQuorum::Count(1).needed(3), 1);
    assert_eq!(WriteQuorum::Count(5).needed(3), 3);
}

#[test]
fn ring_section_is_checked_key_by_key() {
    let good = "replicas = [\"/a\", \"/b\"]\n[ring]\nnode = \"h1\"\nlisten = \"127.0.0.1:7100\"\nseeds = [\"h2@127.0.0.1:7101\"]\nsecret_file = \"/etc/chironfs/ring.secret\"\n";
    let c = Config::build(Some(("c.toml", good)), &[]).unwrap();
    let ring = c.ring.unwrap();
    assert_eq!((ring.n, ring.r, ring.w), (3, 2, 2));
    assert_eq!(ring.seeds, vec!["h2@127.0.0.1:7101".to_string()]);
    for (text, key) in [
        ("[ring]\nsecret_file = \"/s\"\n", "ring.listen"),
        ("[ring]\nlisten = \"127.0.0.1:1\"\n", "ring.secret_file"),
        (
            "[ring]\nlisten = \"x:1\"\nsecret_file = \"/s\"\nseeds = [\"nohost\"]\n",
            "ring.seeds",
        ),
        (
            "[ring]\nlisten = \"x:1\"\nsecret_file = \"/s\"\nnode = \"bad name\"\n",
            "ring.node",
        ),
        (
            "[ring]\nlisten = \"x:1\"\nsecret_file = \"/s\"\nn = 2\nw = 3\n",
            "ring.w",
        ),
        // R + W must exceed N, and W must exceed N/2.
        (
            "[ring]\nlisten = \"x:1\"\nsecret_file = \"/s\"\nn = 3\nr = 1\nw = 1\n",
            "ring.r",
        ),
        (
            "[ring]\nlisten = \"x:1\"\nsecret_file = \"/s\"\nn = 4\nr = 3\nw = 2\n",
            "ring.w",
        ),
        // A host is taken for dead only after its read lease ran out.
        (
            "[ring]\nlisten = \"x:1\"\nsecret_file = \"/s\"\nread_lease = 10\ntakeover_after = 11\n",
            "ring.takeover_after",
        ),
        // Operator keys: 64 hex digits of an Ed25519 public key.
        (
            "[ring]\nlisten = \"x:1\"\nsecret_file = \"/s\"\noperator_keys = [\"abc\"]\n",
            "ring.operator_keys",
        ),
    ] {
        let e = Config::build(Some(("c.toml", text)), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{text:?}: {e}");
    }
    let e = Config::build(
        Some(("c.toml", "[ring]\nlisten = \"x:1\"\nbogus = 1\n")),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bogus"), "{e}");
    // The quorum error names the values and the rule.
    let e = Config::build(
        Some((
            "c.toml",
            "[ring]\nlisten = \"x:1\"\nsecret_file = \"/s\"\nn = 3\nr = 1\nw = 1\n",
        )),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("N=3 R=1 W=1") && e.contains("R + W"), "{e}");
    let key = crate::ring::operator::OperatorKey::generate().unwrap();
    let text = format!(
        "[ring]\nlisten = \"x:1\"\nsecret_file = \"/s\"\noperator_keys = [\"{}\"]\n",
        key.public().to_hex()
    );
    let c = Config::build(Some(("c.toml", &text)), &[]).unwrap();
    assert_eq!(c.ring.unwrap().operator_keys.len(), 1);
    let c = Config::build(None, &["conflict_policy=keep-both".into()]).unwrap();
    assert_eq!(c.conflict_policy, ConflictPolicy::KeepBoth);
    assert!(Config::build(None, &["conflict_policy=oldest".into()]).is_err());
}
