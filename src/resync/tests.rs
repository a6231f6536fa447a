//! Tests of the copy engine on real replica directories (run as root: they
//! chown, mknod and set trusted.* xattrs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::replica::{Name, RelPath, Replica, ReplicaId, ReplicaSpec, State, identity, ops};

// ---------------------------------------------------------------- helpers

struct TestReplica {
    dir: tempfile::TempDir,
    rep: Replica,
}

impl TestReplica {
    fn new(index: usize) -> TestReplica {
        let dir = tempfile::tempdir().unwrap();
        let root: OwnedFd = fs::File::open(dir.path()).unwrap().into();
        let id = ReplicaId::random();
        identity::write(ops::fd_of(&root), &id).unwrap();
        // Something of the replica's own in its internal entry, different
        // on each replica: it must never be compared, copied or removed.
        fs::write(
            dir.path().join(".chironfs/private"),
            format!("replica {index}"),
        )
        .unwrap();
        let spec = ReplicaSpec {
            path: dir.path().to_path_buf(),
            low_priority: false,
        };
        let rep = Replica::new(index, spec, root, 1, id, State::InSync, false).unwrap();
        TestReplica { dir, rep }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

fn rel(s: &str) -> RelPath {
    let mut p = RelPath::root();
    for c in s.split('/').filter(|c| !c.is_empty()) {
        p = p.join(&Name::new(OsStr::new(c)).unwrap());
    }
    p
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    use nix::sys::time::TimeSpec;
    let (atime, mtime) = (TimeSpec::new(sec - 1000, nsec), TimeSpec::new(sec, nsec));
    let flag = nix::sys::stat::UtimensatFlags::NoFollowSymlink;
    let r = nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, p, &atime, &mtime, flag);
    assert_eq!(r, Ok(()), "utimensat {}", p.display());
}

/// Gives `to` the mtime of `from` (both not followed).
fn copy_mtime(from: &Path, to: &Path) {
    let m = fs::symlink_metadata(from).unwrap();
    set_mtime(to, m.mtime(), m.mtime_nsec());
}

fn lsetxattr(p: &Path, name: &str, value: &[u8]) {
    let r = rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty());
    assert_eq!(r, Ok(()), "lsetxattr {name} on {}", p.display());
}

fn lremovexattr(p: &Path, name: &str) {
    assert_eq!(rustix::fs::lremovexattr(p, name), Ok(()));
}

fn lxattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut names[..]);
    let n = n.unwrap_or_else(|e| panic!("llistxattr {}: {e}", p.display()));
    names.truncate(n);
    let mut out = BTreeMap::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        let k = rustix::fs::lgetxattr(p, cn.as_c_str(), &mut v[..]).unwrap();
        v.truncate(k);
        out.insert(name.to_vec(), v);
    }
    out
}

fn mknod(p: &Path, mode: u32, dev: u64) -> bool {
    use nix::sys::stat::{Mode, SFlag};
    let kind = SFlag::from_bits_retain(mode & libc::S_IFMT);
    let perm = Mode::from_bits_retain(mode & !libc::S_IFMT);
    nix::sys::stat::mknod(p, kind, perm, dev).is_ok()
}

fn have_setfacl() -> bool {
    Command::new("setfacl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn setfacl(args: &[&str], p: &Path) {
    let st = Command::new("setfacl").args(args).arg(p).status().unwrap();
    assert!(st.success(), "setfacl {args:?} {}", p.display());
}

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every entry below `root` (not following symlinks, without the internal
/// entry), as paths relative to `root`, sorted.
fn walk(root: &Path) -> Vec<String> {
    fn rec(root: &Path, rel: &str, out: &mut Vec<String>) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            if rel.is_empty() && n == INTERNAL_NAME {
                continue;
            }
            let r = if rel.is_empty() {
                n
            } else {
                format!("{rel}/{n}")
            };
            let is_dir = fs::symlink_metadata(root.join(&r)).unwrap().is_dir();
            out.push(r.clone());
            if is_dir {
                rec(root, &r, out);
            }
        }
    }
    let mut out = Vec::new();
    rec(root, "", &mut out);
    out
}

/// An independent description of a tree, to check the engine's result
/// with code that shares nothing with it: every entry's type, mode, owner,
/// size, mtime, device, link count and link group, xattrs, symlink target
/// and content.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut groups: HashMap<u64, String> = HashMap::new();
    let mut all = vec![String::new()];
    all.extend(walk(root));
    for r in all {
        let p = if r.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&r)
        };
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let mut d = format!(
            "type={:o} uid={} gid={} mtime={}.{:09}",
            m.mode() & libc::S_IFMT,
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec()
        );
        if !ft.is_symlink() {
            d += &format!(" mode={:o}", m.mode() & 0o7777);
        }
        if !ft.is_dir() {
            d += &format!(" nlink={}", m.nlink());
            if m.nlink() > 1 {
                let g = groups.entry(m.ino()).or_insert_with(|| r.clone());
                d += &format!(" group={g}");
            }
        }
        if ft.is_file() {
            let content = fs::read(&p).unwrap();
            d += &format!(" size={} content={:?}", m.size(), digest(&content));
        }
        if ft.is_symlink() {
            d += &format!(" target={:?}", fs::read_link(&p).unwrap());
        }
        if ft.is_char_device() || ft.is_block_device() {
            d += &format!(" rdev={}", m.rdev());
        }
        d += &format!(" xattrs={:?}", lxattrs(&p));
        out.insert(r, d);
    }
    out
}

use std::os::unix::fs::FileTypeExt;

/// A cheap content fingerprint (FNV-1a), enough to tell copies apart.
fn digest(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

fn assert_same_trees(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    for (k, v) in &sa {
        assert_eq!(Some(v), sb.get(k), "entry {k:?} differs");
    }
    for k in sb.keys() {
        assert!(sa.contains_key(k), "extra entry {k:?} on the copy");
    }
}

fn diffs(src: &TestReplica, dst: &TestReplica, root: &str, verify: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut order = Vec::new();
    diff_tree(&src.rep, &dst.rep, &rel(root), verify, &mut |p| {
        let s = p.to_string();
        order.push(s.clone());
        assert!(out.insert(s), "{p} reported twice");
    })
    .unwrap();
    out.into_iter()
        .map(|s| s.trim_start_matches('/').to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const SPARSE_LEN: u64 = 5 << 20;
const DENSE_LEN: usize = (7 << 20) / 2;

/// A varied tree: nested directories, empty/small/large dense/large sparse
/// files, symlinks, a FIFO, a socket, a char device, hard links, user
/// xattrs, POSIX ACLs, set-id/sticky modes, other owners, and set mtimes.
/// Returns whether a char device could be made.
fn populate(root: &Path) -> bool {
    let p = |r: &str| root.join(r);
    for d in [
        "a",
        "a/b",
        "a/b/c",
        "sgid",
        "sticky",
        "empty",
        "sub",
        "sub/deeper",
        "deep",
        "deep/x",
        "deep/x/y",
    ] {
        fs::create_dir(p(d)).unwrap();
    }
    fs::write(p("empty.txt"), b"").unwrap();
    fs::write(p("small.txt"), b"hello world\n").unwrap();
    fs::write(p("a/small2.txt"), b"second\n").unwrap();
    fs::write(p("a/b/c/leaf.txt"), b"leaf").unwrap();
    fs::write(p("deep/x/y/z.txt"), b"zzz").unwrap();
    fs::write(p("sub/inner.txt"), b"inner").unwrap();
    fs::write(p("sub/deeper/f.txt"), b"deeper").unwrap();
    fs::write(p("dense.bin"), noise(DENSE_LEN, 7)).unwrap();
    let f = fs::File::create(p("sparse.bin")).unwrap();
    f.set_len(SPARSE_LEN).unwrap();
    f.write_all_at(&noise(4096, 1), 0).unwrap();
    f.write_all_at(&noise(100, 2), 2 << 20).unwrap();
    f.write_all_at(b"the end!!!", SPARSE_LEN - 10).unwrap();
    drop(f);

    // Owners and modes (chown first: it clears set-id bits).
    fs::write(p("setuid.bin"), b"#!/bin/true\n").unwrap();
    lchown(p("setuid.bin"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(p("setuid.bin"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(p("owned.txt"), b"owned").unwrap();
    lchown(p("owned.txt"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(p("owned.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(p("empty.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    lchown(p("sgid"), Some(0), Some(100)).unwrap();
    fs::set_permissions(p("sgid"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(p("sgid/inherit.txt"), b"group 100").unwrap();
    fs::set_permissions(p("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(p("sticky/t.txt"), b"t").unwrap();

    // Links of all kinds.
    symlink("small.txt", p("link_rel")).unwrap();
    symlink("/nonexistent/x", p("dangling")).unwrap();
    symlink("/tmp", p("link_abs")).unwrap();
    symlink("../small.txt", p("a/up")).unwrap();
    lchown(p("link_abs"), Some(0), Some(0)).unwrap();
    fs::write(p("a/h1"), b"linked three times").unwrap();
    fs::hard_link(p("a/h1"), p("a/b/h2")).unwrap();
    fs::hard_link(p("a/h1"), p("h3")).unwrap();
    fs::write(p("pair_a"), b"a pair").unwrap();
    fs::hard_link(p("pair_a"), p("sub/pair_b")).unwrap();

    // Special files.
    assert!(mknod(&p("fifo"), libc::S_IFIFO | 0o640, 0));
    assert!(mknod(&p("sock"), libc::S_IFSOCK | 0o755, 0));
    let have_dev = mknod(&p("null_dev"), libc::S_IFCHR | 0o666, libc::makedev(1, 3));

    // Extended attributes and ACLs.
    lsetxattr(&p("small.txt"), "user.color", b"blue");
    lsetxattr(&p("small.txt"), "user.empty", b"");
    fs::write(p("xattr.txt"), b"x").unwrap();
    lsetxattr(&p("xattr.txt"), "user.one", b"1");
    lsetxattr(&p("xattr.txt"), "user.two", b"2");
    lsetxattr(&p("a"), "user.dir", b"yes");
    lsetxattr(&p("link_rel"), "trusted.on_link", b"t");
    lsetxattr(&p("dense.bin"), "user.big", &noise(3000, 9));
    fs::write(p("acl.txt"), b"acl").unwrap();
    if have_setfacl() {
        setfacl(&["-m", "u:1000:rw"], &p("acl.txt"));
        setfacl(&["-d", "-m", "g:100:rx"], &p("sgid"));
    }

    // Times last, deepest first, the root at the very end.
    let mut all = walk(root);
    all.sort_by_key(|r| std::cmp::Reverse(r.matches('/').count()));
    for (i, r) in all.iter().enumerate() {
        set_mtime(
            &root.join(r),
            1_600_000_000 + i as i64,
            123_456_789 + i as i64,
        );
    }
    set_mtime(root, 1_650_000_000, 42);
    have_dev
}

// ---------------------------------------------------------------- tests

#[test]
fn identical_trees_have_no_differences() {
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    populate(src.root());
    populate(dst.root());
    assert_same_trees(src.root(), dst.root());
    assert_eq!(diffs(&src, &dst, "", true), set(&[]));
    assert_eq!(diffs(&src, &dst, "a", true), set(&[]));
}

#[test]
fn copy_into_an_empty_replica() {
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    populate(src.root());
    let mut expected: BTreeSet<String> = set(&[""]);
    assert_eq!(diffs(&src, &dst, "", false), expected);
    let ctl = CopyControl::new(0);
    let stats = sync_path(&src.rep, &dst.rep, &RelPath::root(), SyncMode::Tree, &ctl).unwrap();
    assert_same_trees(src.root(), dst.root());
    expected.clear();
    assert_eq!(diffs(&src, &dst, "", true), expected);

    // Progress is both returned and live in ctl.
    let entries = walk(src.root()).len() as u64 + 1;
    assert_eq!(stats.files, entries);
    assert_eq!(ctl.files_done.load(Ordering::Relaxed), entries);
    assert_eq!(ctl.bytes_done.load(Ordering::Relaxed), stats.bytes);
    // Holes are not copied as data.
    assert!(stats.bytes >= DENSE_LEN as u64 && stats.bytes < DENSE_LEN as u64 + (1 << 20));
    let sparse = fs::metadata(dst.p("sparse.bin")).unwrap();
    assert_eq!(sparse.len(), SPARSE_LEN);
    assert!(
        sparse.blocks() * 512 < 256 << 10,
        "{} blocks",
        sparse.blocks()
    );
    // Hard links: one inode for the three names.
    let h1 = fs::metadata(dst.p("a/h1")).unwrap();
    assert_eq!(h1.nlink(), 3);
    assert_eq!(h1.ino(), fs::metadata(dst.p("h3")).unwrap().ino());
    // The destination's internal entry is its own.
    assert_eq!(
        fs::read_to_string(dst.p(".chironfs/private")).unwrap(),
        "replica 1"
    );
}

#[test]
fn every_kind_of_difference_is_found_and_repaired() {
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    let have_dev = populate(src.root());
    populate(dst.root());
    let outside = tempfile::Builder::new()
        .prefix("outside-")
        .tempdir()
        .unwrap();
    fs::write(outside.path().join("keep.txt"), b"outside").unwrap();
    let outside_before = snapshot(outside.path());
    let d = |r: &str| dst.p(r);
    let s = |r: &str| src.p(r);

    // Presence.
    fs::remove_file(d("a/small2.txt")).unwrap(); // missing file -> a
    fs::write(d("a/b/extra.txt"), b"extra").unwrap(); // extra file -> a/b
    fs::create_dir_all(d("extra_dir/x/y")).unwrap(); // extra tree -> root
    fs::write(d("extra_dir/x/y/f"), b"f").unwrap();
    fs::remove_dir_all(d("deep/x")).unwrap(); // missing tree -> deep
    // Content with the same size and mtime: only a verifying diff sees it.
    fs::write(d("small.txt"), b"HELLO WORLD\n").unwrap();
    copy_mtime(&s("small.txt"), &d("small.txt"));
    let f = fs::OpenOptions::new()
        .write(true)
        .open(d("dense.bin"))
        .unwrap();
    f.write_all_at(b"0123456789", 5 << 19).unwrap();
    drop(f);
    copy_mtime(&s("dense.bin"), &d("dense.bin"));
    // Attributes.
    fs::set_permissions(d("empty.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    lchown(d("owned.txt"), Some(0), Some(0)).unwrap();
    set_mtime(&d("a/b/c/leaf.txt"), 1_700_000_000, 5);
    lremovexattr(&d("xattr.txt"), "user.one");
    lsetxattr(&d("xattr.txt"), "user.two", b"3");
    lsetxattr(&d("xattr.txt"), "user.three", b"3");
    lsetxattr(&d("empty"), "user.extra", b"on a dir");
    fs::set_permissions(d("sgid"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(d("fifo"), fs::Permissions::from_mode(0o600)).unwrap();
    lchown(d("link_abs"), Some(1000), Some(1000)).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(d("setuid.bin"))
        .unwrap();
    f.set_len(3).unwrap();
    drop(f);
    copy_mtime(&s("setuid.bin"), &d("setuid.bin"));
    // Data where the source has holes, same size: only verifying sees it.
    fs::write(d("sparse.bin"), noise(SPARSE_LEN as usize, 99)).unwrap();
    copy_mtime(&s("sparse.bin"), &d("sparse.bin"));
    // Types and targets.
    fs::remove_dir_all(d("sticky")).unwrap(); // a file where a dir should be
    fs::write(d("sticky"), b"not a dir").unwrap();
    fs::remove_file(d("link_rel")).unwrap(); // another target
    symlink("other.txt", d("link_rel")).unwrap();
    fs::remove_dir_all(d("sub")).unwrap(); // a symlink out of the replica
    symlink(outside.path(), d("sub")).unwrap();
    // A broken hard link: a/b/h2 becomes a copy of its own.
    fs::remove_file(d("a/b/h2")).unwrap();
    fs::write(d("a/b/h2"), b"linked three times").unwrap();
    copy_mtime(&s("a/b/h2"), &d("a/b/h2"));
    let mut expected = vec![
        "",
        "a",
        "a/b",
        "deep",
        "empty.txt",
        "owned.txt",
        "a/b/c/leaf.txt",
        "xattr.txt",
        "empty",
        "sgid",
        "fifo",
        "link_abs",
        "setuid.bin",
        "sticky",
        "link_rel",
        "sub",
        "a/h1",
        "a/b/h2",
        "h3",
        "pair_a", // its other name went with "sub"
    ];
    if have_dev {
        fs::remove_file(d("null_dev")).unwrap();
        assert!(mknod(
            &d("null_dev"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 5)
        ));
        copy_mtime(&s("null_dev"), &d("null_dev"));
        expected.push("null_dev");
    }
    if have_setfacl() {
        setfacl(&["-b"], &d("acl.txt"));
        expected.push("acl.txt");
    }

    let mut expected = set(&expected);
    assert_eq!(diffs(&src, &dst, "", false), expected);
    expected.extend(set(&["small.txt", "dense.bin", "sparse.bin"]));
    assert_eq!(diffs(&src, &dst, "", true), expected);
    // A diff of a subtree reports only what is beneath it.
    assert_eq!(
        diffs(&src, &dst, "a", false),
        set(&["a", "a/b", "a/b/c/leaf.txt", "a/h1", "a/b/h2"])
    );
    assert_eq!(
        diffs(&src, &dst, "a/b/c/leaf.txt", false),
        set(&["a/b/c/leaf.txt"])
    );
    assert_eq!(diffs(&src, &dst, "deep/x", false), set(&["deep/x"]));
    assert_eq!(
        diffs(&src, &dst, "a/b/extra.txt", false),
        set(&["a/b/extra.txt"])
    );

    let ctl = CopyControl::new(0);
    sync_path(&src.rep, &dst.rep, &RelPath::root(), SyncMode::Tree, &ctl).unwrap();
    assert_eq!(diffs(&src, &dst, "", true), set(&[]));
    assert_same_trees(src.root(), dst.root());
    // The source's holes are holes again.
    let sparse = fs::metadata(d("sparse.bin")).unwrap();
    assert!(
        sparse.blocks() * 512 < 256 << 10,
        "{} blocks",
        sparse.blocks()
    );
    // The planted symlink was replaced, never followed.
    assert!(fs::symlink_metadata(d("sub")).unwrap().is_dir());
    assert_eq!(snapshot(outside.path()), outside_before);
    assert_eq!(
        fs::read_to_string(d(".chironfs/private")).unwrap(),
        "replica 1"
    );
}

#[test]
fn diff_reports_then_entries_syncs_converge() {
    // The way a full pass runs: diff, then sync each report with Entries.
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    populate(src.root());
    populate(dst.root());
    fs::remove_file(dst.p("a/b/h2")).unwrap();
    fs::write(dst.p("a/b/h2"), b"linked three times").unwrap();
    fs::remove_dir_all(dst.p("deep/x")).unwrap();
    fs::write(dst.p("a/b/junk"), b"junk").unwrap();
    fs::write(dst.p("small.txt"), b"HELLO WORLD\n").unwrap();
    fs::set_permissions(dst.p("a"), fs::Permissions::from_mode(0o700)).unwrap();
    let mut reported = Vec::new();
    diff_tree(&src.rep, &dst.rep, &RelPath::root(), true, &mut |p| {
        reported.push(p)
    })
    .unwrap();
    assert!(!reported.is_empty());
    let ctl = CopyControl::new(0);
    for p in &reported {
        sync_path(&src.rep, &dst.rep, p, SyncMode::Entries, &ctl).unwrap();
    }
    assert_eq!(diffs(&src, &dst, "", true), set(&[]));
    assert_same_trees(src.root(), dst.root());
}

#[test]
fn planted_symlinks_are_replaced_never_followed() {
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    let outside: Vec<tempfile::TempDir> = (0..4)
        .map(|_| {
            let t = tempfile::Builder::new()
                .prefix("outside-")
                .tempdir()
                .unwrap();
            fs::write(t.path().join("keep.txt"), b"outside").unwrap();
            fs::write(t.path().join("f.txt"), b"outside file").unwrap();
            t
        })
        .collect();
    let before: Vec<_> = outside.iter().map(|t| snapshot(t.path())).collect();
    fs::create_dir_all(src.p("sub/deeper")).unwrap();
    fs::write(src.p("sub/f.txt"), b"mine").unwrap();
    fs::write(src.p("sub/deeper/g.txt"), b"mine too").unwrap();
    fs::create_dir_all(src.p("sub2/inner")).unwrap();
    fs::write(src.p("sub2/inner/file.txt"), b"inner").unwrap();
    fs::write(src.p("plain.txt"), b"plain").unwrap();
    // dst: directories replaced by symlinks to outside, a file replaced by a
    // symlink to a file outside, and an extra symlink.
    symlink(outside[0].path(), dst.p("sub")).unwrap();
    symlink(outside[1].path(), dst.p("sub2")).unwrap();
    symlink(outside[2].path().join("f.txt"), dst.p("plain.txt")).unwrap();
    symlink(outside[3].path(), dst.p("extra")).unwrap();

    let ctl = CopyControl::new(0);
    sync_path(&src.rep, &dst.rep, &rel("sub"), SyncMode::Entries, &ctl).unwrap();
    // A path beneath the planted link: its parents are brought over first.
    sync_path(
        &src.rep,
        &dst.rep,
        &rel("sub2/inner/file.txt"),
        SyncMode::Entries,
        &ctl,
    )
    .unwrap();
    sync_path(&src.rep, &dst.rep, &rel("plain.txt"), SyncMode::Tree, &ctl).unwrap();
    // Extras removed by a directory's Entries sync: the link, not its target.
    sync_path(
        &src.rep,
        &dst.rep,
        &RelPath::root(),
        SyncMode::Entries,
        &ctl,
    )
    .unwrap();
    for r in ["sub", "sub2", "sub2/inner"] {
        assert!(fs::symlink_metadata(dst.p(r)).unwrap().is_dir(), "{r}");
    }
    assert!(fs::symlink_metadata(dst.p("plain.txt")).unwrap().is_file());
    assert!(fs::symlink_metadata(dst.p("extra")).is_err());
    assert_same_trees(src.root(), dst.root());
    for (t, b) in outside.iter().zip(&before) {
        assert_eq!(&snapshot(t.path()), b, "{} was touched", t.path().display());
    }
}

#[test]
fn entries_mode_reconciles_names_and_leaves_existing_files_alone() {
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    fs::create_dir_all(src.p("d/sub")).unwrap();
    fs::write(src.p("d/a.txt"), b"new file").unwrap();
    fs::write(src.p("d/b.txt"), b"good").unwrap();
    fs::write(src.p("d/sub/x.txt"), b"x").unwrap();
    fs::write(src.p("d/kind"), b"a file on src").unwrap();
    fs::create_dir_all(dst.p("d/extra_sub/deeper")).unwrap();
    fs::write(dst.p("d/extra_sub/deeper/y"), b"y").unwrap();
    fs::write(dst.p("d/b.txt"), b"bad!").unwrap();
    fs::write(dst.p("d/c.txt"), b"extra").unwrap();
    fs::create_dir(dst.p("d/kind")).unwrap();
    // Same size, same mtime: an entry Entries mode takes as equal (set
    // explicitly: two writes in one clock tick would give the same mtime
    // only sometimes).
    set_mtime(&src.p("d/b.txt"), 1_400_000_000, 7);
    set_mtime(&dst.p("d/b.txt"), 1_400_000_000, 7);
    set_mtime(&src.p("d"), 1_500_000_000, 1);
    fs::set_permissions(src.p("d"), fs::Permissions::from_mode(0o750)).unwrap();

    let ctl = CopyControl::new(0);
    let st = sync_path(&src.rep, &dst.rep, &rel("d"), SyncMode::Entries, &ctl).unwrap();
    assert_eq!(fs::read(dst.p("d/a.txt")).unwrap(), b"new file");
    assert_eq!(fs::read(dst.p("d/sub/x.txt")).unwrap(), b"x");
    assert_eq!(fs::read(dst.p("d/b.txt")).unwrap(), b"bad!");
    assert_eq!(fs::read(dst.p("d/kind")).unwrap(), b"a file on src");
    assert!(!dst.p("d/c.txt").exists());
    assert!(!dst.p("d/extra_sub").exists());
    let m = fs::metadata(dst.p("d")).unwrap();
    assert_eq!(
        (m.mtime(), m.mtime_nsec(), m.mode() & 0o7777),
        (1_500_000_000, 1, 0o750)
    );
    // a.txt, sub, sub/x.txt, kind, d itself.
    assert_eq!(st.files, 5);
    // c.txt, extra_sub, deeper, y and the directory "kind".
    assert_eq!(st.removed, 5);
    // Tree mode then fixes the content.
    sync_path(&src.rep, &dst.rep, &rel("d"), SyncMode::Tree, &ctl).unwrap();
    assert_eq!(fs::read(dst.p("d/b.txt")).unwrap(), b"good");
    assert_eq!(diffs(&src, &dst, "d", true), set(&[]));
}

#[test]
fn absent_on_source_is_removed_from_destination() {
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    fs::write(dst.p("gone.txt"), b"gone").unwrap();
    fs::create_dir_all(dst.p("gone_dir/a/b")).unwrap();
    fs::write(dst.p("gone_dir/a/b/f"), b"f").unwrap();
    symlink("/", dst.p("gone_dir/a/root_link")).unwrap();
    let ctl = CopyControl::new(0);
    sync_path(
        &src.rep,
        &dst.rep,
        &rel("gone.txt"),
        SyncMode::Entries,
        &ctl,
    )
    .unwrap();
    let st = sync_path(&src.rep, &dst.rep, &rel("gone_dir"), SyncMode::Tree, &ctl).unwrap();
    assert_eq!(st.removed, 5);
    // Absent on both, even the parent: nothing to do.
    sync_path(
        &src.rep,
        &dst.rep,
        &rel("no/such/path"),
        SyncMode::Tree,
        &ctl,
    )
    .unwrap();
    assert_eq!(walk(dst.root()), Vec::<String>::new());
    assert!(fs::metadata("/").unwrap().is_dir());
}

#[test]
fn a_vanished_source_never_empties_the_destination() {
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    fs::write(dst.p("precious.txt"), b"keep me").unwrap();
    fs::create_dir(dst.p("dir")).unwrap();
    // The source's root is deleted under the open replica: it lists empty.
    fs::remove_dir_all(src.root()).unwrap();
    let ctl = CopyControl::new(0);
    assert!(sync_path(&src.rep, &dst.rep, &RelPath::root(), SyncMode::Tree, &ctl).is_err());
    assert!(
        sync_path(
            &src.rep,
            &dst.rep,
            &rel("precious.txt"),
            SyncMode::Tree,
            &ctl
        )
        .is_err()
    );
    assert!(sync_path(&src.rep, &dst.rep, &rel("dir"), SyncMode::Tree, &ctl).is_err());
    assert_eq!(fs::read(dst.p("precious.txt")).unwrap(), b"keep me");
    assert!(dst.p("dir").is_dir());

    // A destination that vanished: an error, not a walk of failures.
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    for i in 0..20 {
        fs::write(src.p(&format!("f{i}")), b"f").unwrap();
    }
    fs::remove_dir_all(dst.root()).unwrap();
    let e = sync_path(&src.rep, &dst.rep, &RelPath::root(), SyncMode::Tree, &ctl).unwrap_err();
    assert_eq!(e, Errno::ENOENT);
    assert_eq!(ctl.files_done.load(Ordering::Relaxed), 0);
}

#[test]
fn the_internal_entry_is_out_of_reach() {
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    let ctl = CopyControl::new(0);
    for p in [".chironfs", ".chironfs/private", ".chironfs/id"] {
        let e = sync_path(&src.rep, &dst.rep, &rel(p), SyncMode::Tree, &ctl).unwrap_err();
        assert_eq!(e, Errno::EINVAL);
        let e = diff_tree(&src.rep, &dst.rep, &rel(p), true, &mut |_| {}).unwrap_err();
        assert_eq!(e, Errno::EINVAL);
    }
    // A deeper ".chironfs" is an ordinary name.
    fs::create_dir(src.p("a")).unwrap();
    fs::write(src.p("a/.chironfs"), b"ordinary").unwrap();
    sync_path(&src.rep, &dst.rep, &RelPath::root(), SyncMode::Tree, &ctl).unwrap();
    assert_eq!(fs::read(dst.p("a/.chironfs")).unwrap(), b"ordinary");
    assert_eq!(
        fs::read_to_string(dst.p(".chironfs/private")).unwrap(),
        "replica 1"
    );
    assert_eq!(
        fs::read_to_string(src.p(".chironfs/private")).unwrap(),
        "replica 0"
    );
}

#[test]
fn throttle_limits_the_copy_rate() {
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    fs::write(src.p("big"), noise(8 << 20, 3)).unwrap();
    let ctl = CopyControl::new(16 << 20);
    let start = Instant::now();
    let st = sync_path(&src.rep, &dst.rep, &rel("big"), SyncMode::Tree, &ctl).unwrap();
    let took = start.elapsed();
    assert_eq!(st.bytes, 8 << 20);
    assert!(
        took >= Duration::from_millis(400),
        "8 MiB at 16 MiB/s took {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(
        fs::read(dst.p("big")).unwrap(),
        fs::read(src.p("big")).unwrap()
    );
}

#[test]
fn verifying_writes_only_the_chunks_that_differ() {
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    let data = noise(DENSE_LEN, 11);
    fs::write(src.p("f"), &data).unwrap();
    let mut other = data.clone();
    other[(5 << 20) / 2] ^= 0xff;
    fs::write(dst.p("f"), &other).unwrap();
    let ctl = CopyControl::new(0).verifying(true);
    let st = sync_path(&src.rep, &dst.rep, &rel("f"), SyncMode::Tree, &ctl).unwrap();
    assert_eq!(st.bytes, DENSE_LEN as u64);
    assert_eq!(st.written, CHUNK as u64);
    assert_eq!(fs::read(dst.p("f")).unwrap(), data);
    let st = sync_path(&src.rep, &dst.rep, &rel("f"), SyncMode::Tree, &ctl).unwrap();
    assert_eq!(st.written, 0);
}

#[test]
fn cancel_stops_a_copy() {
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    fs::write(src.p("big"), noise(8 << 20, 5)).unwrap();
    let ctl = Arc::new(CopyControl::new(4 << 20));
    let c2 = ctl.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        c2.cancel();
    });
    let start = Instant::now();
    let e = sync_path(&src.rep, &dst.rep, &rel("big"), SyncMode::Tree, &ctl).unwrap_err();
    t.join().unwrap();
    assert_eq!(e, Errno(libc::ECANCELED));
    assert!(start.elapsed() < Duration::from_secs(1));
}

/// The filesystem's per-file lock, as a test double: a flag and a condvar.
#[derive(Default)]
struct FileLock {
    held: Mutex<bool>,
    cv: Condvar,
}

struct Held(Arc<FileLock>);

impl FileLock {
    fn lock(self: &Arc<Self>) -> Held {
        let mut h = self.held.lock().unwrap();
        while *h {
            h = self.cv.wait(h).unwrap();
        }
        *h = true;
        Held(self.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        *self.0.held.lock().unwrap() = false;
        self.0.cv.notify_one();
    }
}

#[test]
fn live_writes_during_a_copy_are_never_lost() {
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    fs::write(src.p("live"), noise(6 << 20, 21)).unwrap();
    fs::write(dst.p("live"), noise(1 << 20, 22)).unwrap();
    let lock = Arc::new(FileLock::default());
    let guards = Arc::new(AtomicUsize::new(0));
    let (l2, g2) = (lock.clone(), guards.clone());
    let ctl = CopyControl::new(24 << 20).with_chunk_guard(move |p, _| {
        assert_eq!(p.to_string(), "/live");
        g2.fetch_add(1, Ordering::Relaxed);
        Box::new(l2.lock())
    });
    // A writer that, like the filesystem, updates every replica under the lock.
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, sp, dp) = (stop.clone(), src.p("live"), dst.p("live"));
    let l3 = lock.clone();
    let writer = std::thread::spawn(move || {
        let open = |p: &Path| fs::OpenOptions::new().write(true).open(p).unwrap();
        let (sf, df) = (open(&sp), open(&dp));
        let mut n = 0u64;
        while !s2.load(Ordering::Relaxed) {
            n += 1;
            let buf = noise(4096, n + 100);
            let _h = l3.lock();
            let len = sf.metadata().unwrap().len();
            // Mostly overwrites, sometimes an append past the end.
            let off = if n.is_multiple_of(10) {
                len
            } else {
                (n * 7_919 * 4096) % len
            };
            sf.write_all_at(&buf, off).unwrap();
            df.write_all_at(&buf, off).unwrap();
            drop(_h);
            std::thread::sleep(Duration::from_millis(1));
        }
        n
    });
    std::thread::sleep(Duration::from_millis(20));
    sync_path(&src.rep, &dst.rep, &rel("live"), SyncMode::Tree, &ctl).unwrap();
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 10, "only {writes} writes");
    assert!(guards.load(Ordering::Relaxed) >= 6);
    assert!(
        fs::read(src.p("live")).unwrap() == fs::read(dst.p("live")).unwrap(),
        "a write was lost"
    );
}

#[test]
fn hard_links_across_calls_of_one_pass() {
    // Incremental resync of two names of one inode, one call each.
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    fs::create_dir(src.p("x")).unwrap();
    fs::create_dir(dst.p("x")).unwrap();
    fs::write(src.p("x/one"), b"shared").unwrap();
    fs::hard_link(src.p("x/one"), src.p("two")).unwrap();
    // On dst the names are linked to the wrong partners.
    fs::write(dst.p("x/one"), b"wrong").unwrap();
    fs::hard_link(dst.p("x/one"), dst.p("other")).unwrap();
    fs::write(src.p("other"), b"separate").unwrap();
    let ctl = CopyControl::new(0);
    sync_path(&src.rep, &dst.rep, &rel("x/one"), SyncMode::Entries, &ctl).unwrap();
    sync_path(&src.rep, &dst.rep, &rel("two"), SyncMode::Entries, &ctl).unwrap();
    sync_path(&src.rep, &dst.rep, &rel("other"), SyncMode::Entries, &ctl).unwrap();
    let one = fs::metadata(dst.p("x/one")).unwrap();
    assert_eq!(one.ino(), fs::metadata(dst.p("two")).unwrap().ino());
    assert_eq!(one.nlink(), 2);
    assert_eq!(fs::read(dst.p("other")).unwrap(), b"separate");
    assert_eq!(fs::metadata(dst.p("other")).unwrap().nlink(), 1);
    sync_path(&src.rep, &dst.rep, &rel("x"), SyncMode::Entries, &ctl).unwrap();
    sync_path(
        &src.rep,
        &dst.rep,
        &RelPath::root(),
        SyncMode::Entries,
        &ctl,
    )
    .unwrap();
    assert_eq!(diffs(&src, &dst, "", true), set(&[]));
}

#[test]
fn a_first_copy_copied_again_keeps_the_names_linked_to_it() {
    // Checker seed 4 (60 s): one pass copied a directory (its three-link
    // file's first name was made there, a second name linked to it), then
    // that first name's own mark. Its copy had fewer links than the source
    // (the third name not linked yet), so it was made anew: the name linked
    // so far kept the old inode, split from the group for good.
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    for t in [&src, &dst] {
        fs::create_dir(t.p("d")).unwrap();
        fs::create_dir(t.p("e")).unwrap();
    }
    fs::write(src.p("d/f2"), b"the group").unwrap();
    fs::hard_link(src.p("d/f2"), src.p("d/f1")).unwrap();
    fs::hard_link(src.p("d/f2"), src.p("e/f3")).unwrap();
    let ctl = CopyControl::new(0);
    for p in ["d/f2", "d", "d/f1", "d/f2", "e/f3"] {
        sync_path(&src.rep, &dst.rep, &rel(p), SyncMode::Entries, &ctl).unwrap();
    }
    let ino = |p: &str| fs::metadata(dst.p(p)).unwrap().ino();
    assert_eq!(ino("d/f1"), ino("d/f2"), "d/f1 split from d/f2");
    assert_eq!(ino("e/f3"), ino("d/f2"), "e/f3 split from d/f2");
    assert_eq!(fs::metadata(dst.p("d/f2")).unwrap().nlink(), 3);
    // (Not the root: made in setup, its times may differ by a clock tick.)
    for d in ["d", "e"] {
        assert_eq!(diffs(&src, &dst, d, true), set(&[]));
    }
}

#[test]
fn a_name_linked_to_a_first_copy_brings_a_later_write() {
    // Checker seed 4 (60 s), after the fix above: the pass copied a group's
    // first name; then a write through another name reached the source
    // alone (the destination was still behind for that name) and marked
    // it; that name's copy only linked it to the first copy, whose content
    // was older, and its mark was cleared.
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    fs::write(src.p("a"), noise(20_000, 1)).unwrap();
    fs::hard_link(src.p("a"), src.p("b")).unwrap();
    let ctl = CopyControl::new(0);
    sync_path(&src.rep, &dst.rep, &rel("a"), SyncMode::Entries, &ctl).unwrap();
    let f = fs::OpenOptions::new().write(true).open(src.p("b")).unwrap();
    f.write_all_at(b"written through the other name", 12_345)
        .unwrap();
    drop(f);
    sync_path(&src.rep, &dst.rep, &rel("b"), SyncMode::Entries, &ctl).unwrap();
    assert_eq!(
        fs::metadata(dst.p("a")).unwrap().ino(),
        fs::metadata(dst.p("b")).unwrap().ino()
    );
    assert!(
        fs::read(dst.p("b")).unwrap() == fs::read(src.p("b")).unwrap(),
        "b's write is missing"
    );
    assert_eq!(diffs(&src, &dst, "", true), set(&[]));
}

#[test]
fn a_marked_name_linked_to_a_first_copy_is_copied_even_with_equal_stamps() {
    // Review of the fix above: a write through b reached the source alone
    // (size unchanged), then a change through another name set one mtime
    // on both replicas. The first copy then has the source's size and
    // mtime, but not b's bytes: b, the marked path, must still be copied.
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    fs::write(src.p("a"), noise(20_000, 2)).unwrap();
    fs::hard_link(src.p("a"), src.p("b")).unwrap();
    let ctl = CopyControl::new(0);
    sync_path(&src.rep, &dst.rep, &rel("a"), SyncMode::Entries, &ctl).unwrap();
    let f = fs::OpenOptions::new().write(true).open(src.p("b")).unwrap();
    f.write_all_at(b"through b, on the source alone", 100)
        .unwrap();
    drop(f);
    set_mtime(&src.p("a"), 1_700_000_000, 5);
    set_mtime(&dst.p("a"), 1_700_000_000, 5);
    sync_path(&src.rep, &dst.rep, &rel("b"), SyncMode::Entries, &ctl).unwrap();
    assert!(
        fs::read(dst.p("b")).unwrap() == fs::read(src.p("b")).unwrap(),
        "b's write is missing"
    );
    assert_eq!(diffs(&src, &dst, "", true), set(&[]));
}

#[test]
fn swapped_link_partners_are_found_and_fixed() {
    // Same link counts, same content, same times: only the link structure
    // tells {p1,p2},{q1,q2} on src from {p1,q1},{p2,q2} on dst.
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    for (t, pairs) in [
        (&src, [("p1", "p2"), ("q1", "q2")]),
        (&dst, [("p1", "q1"), ("p2", "q2")]),
    ] {
        for (a, b) in pairs {
            fs::write(t.p(a), b"same").unwrap();
            set_mtime(&t.p(a), 1_600_000_000, 0);
            fs::hard_link(t.p(a), t.p(b)).unwrap();
        }
        set_mtime(t.root(), 1_600_000_000, 0);
    }
    let mut reported = Vec::new();
    diff_tree(&src.rep, &dst.rep, &RelPath::root(), false, &mut |p| {
        reported.push(p.to_string())
    })
    .unwrap();
    assert_eq!(reported, ["/p1", "/p2", "/q1", "/q2"]);
    let ctl = CopyControl::new(0);
    for p in &reported {
        sync_path(&src.rep, &dst.rep, &rel(p), SyncMode::Entries, &ctl).unwrap();
    }
    assert_eq!(diffs(&src, &dst, "", true), set(&[]));
    assert_same_trees(src.root(), dst.root());
}

/// Rough throughput against `cp -a` (run by hand: `-- --ignored`).
#[test]
#[ignore]
fn speed_against_cp() {
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    for d in 0..50 {
        fs::create_dir(src.p(&format!("d{d}"))).unwrap();
        for f in 0..100 {
            fs::write(src.p(&format!("d{d}/f{f}")), noise(4096, f)).unwrap();
        }
    }
    fs::write(src.p("big"), noise(256 << 20, 1)).unwrap();
    let cp_dst = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.root().display()))
        .arg(cp_dst.path())
        .status()
        .unwrap();
    assert!(st.success());
    let cp = start.elapsed();
    let start = Instant::now();
    let ctl = CopyControl::new(0);
    sync_path(&src.rep, &dst.rep, &rel("big"), SyncMode::Tree, &ctl).unwrap();
    let big = start.elapsed();
    sync_path(
        &src.rep,
        &dst.rep,
        &RelPath::root(),
        SyncMode::Entries,
        &ctl,
    )
    .unwrap();
    let ours = start.elapsed();
    eprintln!("big file {big:?}");
    let start = Instant::now();
    let mut n = 0;
    diff_tree(&src.rep, &dst.rep, &RelPath::root(), false, &mut |_| n += 1).unwrap();
    let diff = start.elapsed();
    eprintln!("cp -a {cp:?}, sync_path {ours:?}, diff_tree {diff:?} ({n} diffs)");
}

#[test]
fn every_entry_the_copy_leaves_on_the_destination_is_told() {
    // The filesystem keeps a name's inode number across a resync that
    // made the name anew on a replica only if it is told the new inode
    // (checker seed 6: ENOENT after a renumbered name). Every kind: a
    // file made anew (a link group the destination had and the source
    // left), a name linked to a first copy, a directory, a symlink; and
    // an entry kept in place (checker seed 17: a directory a rename
    // failed to replace on the destination alone is kept by the copy,
    // another inode than the one the filesystem knew there).
    let (src, dst) = (TestReplica::new(0), TestReplica::new(1));
    for t in [&src, &dst] {
        fs::write(t.p("anew"), b"old").unwrap();
        fs::hard_link(t.p("anew"), t.p("other")).unwrap();
        fs::write(t.p("inplace"), b"old").unwrap();
    }
    fs::remove_file(src.p("other")).unwrap();
    fs::write(src.p("anew"), b"new").unwrap();
    fs::write(src.p("inplace"), b"new content").unwrap();
    fs::create_dir(src.p("d")).unwrap();
    fs::write(src.p("d/g"), b"g").unwrap();
    fs::hard_link(src.p("d/g"), src.p("g2")).unwrap();
    symlink("anew", src.p("s")).unwrap();
    let told: Arc<Mutex<BTreeSet<(usize, String, u64)>>> = Arc::default();
    let t = told.clone();
    let ctl = CopyControl::new(0).with_made(move |i, p, st| {
        let p = p.to_string().trim_start_matches('/').to_string();
        t.lock().unwrap().insert((i, p, st.st_ino));
    });
    for p in ["anew", "d", "g2", "inplace", "s", "other"] {
        sync_path(&src.rep, &dst.rep, &rel(p), SyncMode::Entries, &ctl).unwrap();
    }
    assert_eq!(diffs(&src, &dst, "", true), set(&[]));
    let ino = |p: &str| fs::symlink_metadata(dst.p(p)).unwrap().ino();
    let want: BTreeSet<(usize, String, u64)> = ["anew", "d", "d/g", "g2", "inplace", "s"]
        .iter()
        .map(|p| (1, p.to_string(), ino(p)))
        .collect();
    assert_eq!(*told.lock().unwrap(), want);
}

#[test]
fn a_first_copy_copied_again_from_another_source_is_kept() {
    // Checker seed 10 (60 s, fdd9db6): one resync pass copied a link group
    // from replica 1, then (replica 1 taken out) the group's first name
    // again from replica 2. The claim of the first copy named replica 1's
    // inode, so the copy from replica 2 took it for another file and made
    // it anew: the names linked to it so far were split off, and an open
    // made through one of them in that window wrote the old inode.
    let (a, dst, b) = (
        TestReplica::new(0),
        TestReplica::new(1),
        TestReplica::new(2),
    );
    for t in [&a, &b] {
        fs::write(t.p("f1"), b"the group").unwrap();
        fs::hard_link(t.p("f1"), t.p("f2")).unwrap();
    }
    let ctl = CopyControl::new(0);
    for p in ["f1", "f2"] {
        sync_path(&a.rep, &dst.rep, &rel(p), SyncMode::Entries, &ctl).unwrap();
    }
    let ino = |p: &str| fs::metadata(dst.p(p)).unwrap().ino();
    let first = ino("f1");
    assert_eq!(ino("f2"), first);
    sync_path(&b.rep, &dst.rep, &rel("f1"), SyncMode::Entries, &ctl).unwrap();
    assert_eq!(ino("f1"), first, "the first copy was made anew");
    assert_eq!(ino("f2"), first, "f2 split from f1");
    for f in ["f1", "f2"] {
        assert_eq!(diffs(&b, &dst, f, true), set(&[]));
    }
}

/// Another host creates an entry in a directory being copied, on the
/// source first and then on the destination (its changes reach a replica
/// being copied into last), between the copy's listing of the source and
/// of the destination: the entry looks extra on the destination, and the
/// copy must not remove it there (it would be gone from that replica
/// alone, both in sync).
#[test]
fn an_entry_another_host_creates_during_a_directory_copy_is_kept() {
    let src = TestReplica::new(0);
    let dst = TestReplica::new(1);
    fs::create_dir(src.p("d")).unwrap();
    fs::create_dir(dst.p("d")).unwrap();
    fs::write(src.p("d/a"), b"a").unwrap();
    let (s, d) = (src.p("d/x"), dst.p("d/x"));
    let ctl = CopyControl::new(0)
        .rechecking_source(true)
        .with_listed(move |p| {
            if p.to_string() == "/d" && !s.exists() {
                fs::write(&s, b"made elsewhere").unwrap();
                fs::write(&d, b"made elsewhere").unwrap();
            }
        });
    sync_path(&src.rep, &dst.rep, &rel("/d"), SyncMode::Tree, &ctl).unwrap();
    assert_eq!(fs::read(dst.p("d/x")).unwrap(), b"made elsewhere");
    assert_eq!(fs::read(dst.p("d/a")).unwrap(), b"a");
}
