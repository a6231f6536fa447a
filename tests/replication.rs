//! Replication through real FUSE: guards against mutations that reach only
//! some replicas or reach them differently (content, metadata, xattrs/ACLs,
//! links, timestamps), against ChironFS's `rm -rf` readdir bug, against
//! ownership and permission mistakes with several users, and against the
//! daemon touching anything outside a replica root.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{
    DirEntryExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt, symlink,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::sys::{self, errno};
use common::*;

const MIB: usize = 1 << 20;
const NOBODY: u32 = 65534;

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

fn assert_content(p: &Path, expected: &[u8]) {
    let got = read(p);
    if got != expected {
        let first = got
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        panic!(
            "{}: content differs from expected (got {} bytes, expected {}; first difference at {first})",
            p.display(),
            got.len(),
            expected.len()
        );
    }
}

fn write_in_chunks(p: &Path, data: &[u8], chunk: usize) {
    let mut f = File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    for c in data.chunks(chunk) {
        f.write_all(c).unwrap();
    }
}

fn fsync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

/// Expected contents of the regular files the workload leaves behind,
/// relative to the mountpoint.
type Model = BTreeMap<&'static str, Vec<u8>>;

/// The mixed workload of issue 2, run through the mount. Every step is checked
/// through the mount as it goes; returns the expected file contents.
fn mixed_workload(m: &Mount) -> Model {
    let p = |rel: &str| m.path(rel);
    let mut model: Model = BTreeMap::new();

    // Files of various sizes, written in odd-sized chunks.
    let sizes: [(&'static str, usize); 10] = [
        ("s0", 0),
        ("s1", 1),
        ("s4095", 4095),
        ("s4096", 4096),
        ("s4097", 4097),
        ("s64k", 65536 + 7),
        ("s1m", MIB),
        ("s1m1", MIB + 1),
        ("s3m", 3 * MIB + 123),
        ("s5m", 5 * MIB - 17),
    ];
    for (i, (name, len)) in sizes.iter().enumerate() {
        let data = pattern(i as u64, *len);
        write_in_chunks(&p(name), &data, 100_003);
        assert_content(&p(name), &data);
        model.insert(name, data);
    }

    // Overwrite in the middle (pwrite) across a 1 MiB boundary, and append.
    {
        let f = OpenOptions::new().write(true).open(p("s3m")).unwrap();
        let patch = pattern(100, 300_000);
        f.write_all_at(&patch, (MIB - 1000) as u64).unwrap();
        let e = model.get_mut("s3m").unwrap();
        e[MIB - 1000..MIB - 1000 + patch.len()].copy_from_slice(&patch);
        assert_content(&p("s3m"), &model["s3m"]);

        let mut f = OpenOptions::new().append(true).open(p("s4097")).unwrap();
        let more = pattern(101, 10_000);
        f.write_all(&more).unwrap();
        f.sync_data().unwrap();
        model.get_mut("s4097").unwrap().extend_from_slice(&more);
        assert_content(&p("s4097"), &model["s4097"]);

        // Full overwrite with shorter content (O_TRUNC).
        let short = pattern(102, 777);
        fs::write(p("s64k"), &short).unwrap();
        model.insert("s64k", short);
        assert_content(&p("s64k"), &model["s64k"]);
    }

    // Nested directories with files.
    fs::create_dir_all(p("d1/d2/d3/d4")).unwrap();
    for (rel, seed) in [("d1/f", 200), ("d1/d2/f", 201), ("d1/d2/d3/d4/f", 202)] {
        let data = pattern(seed, 5000 + seed as usize);
        fs::write(p(rel), &data).unwrap();
        model.insert(rel, data);
    }
    assert!(lstat(&p("d1/d2/d3/d4")).is_dir());

    // Symlinks (relative, absolute, dangling) and readlink.
    symlink("../s1", p("d1/rel-link")).unwrap();
    symlink("/nonexistent/absolute/target", p("abs-link")).unwrap();
    symlink("d1/d2", p("dir-link")).unwrap();
    assert_eq!(fs::read_link(p("d1/rel-link")).unwrap(), Path::new("../s1"));
    assert_eq!(
        fs::read_link(p("abs-link")).unwrap(),
        Path::new("/nonexistent/absolute/target")
    );
    assert_content(&p("d1/rel-link"), &model["s1"]);
    assert!(lstat(&p("dir-link")).file_type().is_symlink());

    // Hard link: same st_ino through the mount, st_nlink 2.
    fs::hard_link(p("s4096"), p("d1/hard")).unwrap();
    let (a, b) = (lstat(&p("s4096")), lstat(&p("d1/hard")));
    assert_eq!(a.ino(), b.ino(), "hard links must share st_ino");
    assert_eq!(a.nlink(), 2, "st_nlink of a file with two links");
    assert_eq!(b.nlink(), 2);
    model.insert("d1/hard", model["s4096"].clone());
    // A write through one link shows through the other.
    {
        let f = OpenOptions::new().write(true).open(p("d1/hard")).unwrap();
        f.write_all_at(b"LINKED", 10).unwrap();
        for k in ["s4096", "d1/hard"] {
            model.get_mut(k).unwrap()[10..16].copy_from_slice(b"LINKED");
        }
        assert_content(&p("s4096"), &model["s4096"]);
    }

    // Renames: plain, over an existing file, of a directory.
    fs::write(p("ren-a"), b"rename me").unwrap();
    fs::rename(p("ren-a"), p("ren-b")).unwrap();
    assert!(fs::symlink_metadata(p("ren-a")).is_err());
    assert_content(&p("ren-b"), b"rename me");
    model.insert("ren-b", b"rename me".to_vec());

    fs::write(p("victim"), b"old victim").unwrap();
    fs::write(p("winner"), b"new content wins").unwrap();
    let winner_ino = lstat(&p("winner")).ino();
    fs::rename(p("winner"), p("victim")).unwrap();
    assert_content(&p("victim"), b"new content wins");
    assert_eq!(
        lstat(&p("victim")).ino(),
        winner_ino,
        "rename keeps the inode"
    );
    model.insert("victim", b"new content wins".to_vec());

    fs::rename(p("d1/d2"), p("moved-d2")).unwrap();
    assert!(fs::symlink_metadata(p("d1/d2")).is_err());
    let v = model.remove("d1/d2/f").unwrap();
    model.insert("moved-d2/f", v);
    let v = model.remove("d1/d2/d3/d4/f").unwrap();
    model.insert("moved-d2/d3/d4/f", v);
    assert_content(&p("moved-d2/d3/d4/f"), &model["moved-d2/d3/d4/f"]);

    // renameat2: RENAME_NOREPLACE onto an existing name -> EEXIST, nothing moves.
    fs::write(p("nr-src"), b"noreplace source").unwrap();
    let r = sys::renameat2(&p("nr-src"), &p("victim"), libc::RENAME_NOREPLACE);
    assert_eq!(errno(&r), Some(libc::EEXIST), "RENAME_NOREPLACE: {r:?}");
    assert_content(&p("nr-src"), b"noreplace source");
    assert_content(&p("victim"), b"new content wins");
    sys::renameat2(&p("nr-src"), &p("nr-dst"), libc::RENAME_NOREPLACE).unwrap();
    assert!(fs::symlink_metadata(p("nr-src")).is_err());
    model.insert("nr-dst", b"noreplace source".to_vec());

    // RENAME_EXCHANGE: two files, then a file and a directory.
    fs::write(p("ex-1"), b"first").unwrap();
    fs::write(p("ex-2"), b"second, longer").unwrap();
    sys::renameat2(&p("ex-1"), &p("ex-2"), libc::RENAME_EXCHANGE).unwrap();
    assert_content(&p("ex-1"), b"second, longer");
    assert_content(&p("ex-2"), b"first");
    model.insert("ex-1", b"second, longer".to_vec());
    model.insert("ex-2", b"first".to_vec());
    fs::create_dir(p("ex-dir")).unwrap();
    fs::write(p("ex-dir/inner"), b"inner").unwrap();
    fs::write(p("ex-file"), b"was a file").unwrap();
    sys::renameat2(&p("ex-dir"), &p("ex-file"), libc::RENAME_EXCHANGE).unwrap();
    assert!(lstat(&p("ex-file")).is_dir());
    assert_content(&p("ex-file/inner"), b"inner");
    assert_content(&p("ex-dir"), b"was a file");
    model.insert("ex-file/inner", b"inner".to_vec());
    model.insert("ex-dir", b"was a file".to_vec());

    // chmod (incl. setuid and sticky), chown/lchown to other ids.
    fs::set_permissions(p("s1"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(p("s4095"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(p("d1"), fs::Permissions::from_mode(0o1777)).unwrap();
    assert_eq!(lstat(&p("s1")).mode() & 0o7777, 0o640);
    assert_eq!(lstat(&p("s4095")).mode() & 0o7777, 0o4755);
    assert_eq!(lstat(&p("d1")).mode() & 0o7777, 0o1777);
    std::os::unix::fs::chown(p("s0"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(p("abs-link"), Some(4321), Some(8765)).unwrap();
    std::os::unix::fs::chown(p("moved-d2"), Some(NOBODY), Some(NOBODY)).unwrap();
    let md = lstat(&p("s0"));
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let md = lstat(&p("abs-link"));
    assert_eq!((md.uid(), md.gid()), (4321, 8765));

    // truncate up (sparse) and down.
    {
        let f = OpenOptions::new().write(true).open(p("s1m")).unwrap();
        f.set_len((2 * MIB + 3) as u64).unwrap();
        model.get_mut("s1m").unwrap().resize(2 * MIB + 3, 0);
        assert_content(&p("s1m"), &model["s1m"]);
        let f = OpenOptions::new().write(true).open(p("s1m1")).unwrap();
        f.set_len(100).unwrap();
        model.get_mut("s1m1").unwrap().truncate(100);
        assert_content(&p("s1m1"), &model["s1m1"]);
        // truncate(2) by path too.
        let c = std::ffi::CString::new(p("s4097").as_os_str().as_encoded_bytes()).unwrap();
        // Safe because the path is NUL-terminated.
        assert_eq!(unsafe { libc::truncate(c.as_ptr(), 5000) }, 0);
        model.get_mut("s4097").unwrap().truncate(5000);
        assert_content(&p("s4097"), &model["s4097"]);
    }

    // utimensat: explicit times with nanoseconds, UTIME_NOW/UTIME_OMIT, and on
    // a symlink itself.
    sys::utimensat(
        &p("s4095"),
        (1_000_000_000, 111),
        (1_234_567_890, 123_456_789),
        0,
    )
    .unwrap();
    let md = lstat(&p("s4095"));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_234_567_890, 123_456_789));
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 111));
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    sys::utimensat(&p("ren-b"), (0, libc::UTIME_OMIT), (0, libc::UTIME_NOW), 0).unwrap();
    let md = lstat(&p("ren-b"));
    assert!(
        md.mtime() >= before - 1,
        "UTIME_NOW set mtime {}",
        md.mtime()
    );
    sys::utimensat(&p("ren-b"), (2_000_000_000, 5), (0, libc::UTIME_OMIT), 0).unwrap();
    let md2 = lstat(&p("ren-b"));
    assert_eq!(
        (md2.mtime(), md2.mtime_nsec()),
        (md.mtime(), md.mtime_nsec()),
        "UTIME_OMIT changed mtime"
    );
    assert_eq!((md2.atime(), md2.atime_nsec()), (2_000_000_000, 5));
    sys::utimensat(
        &p("dir-link"),
        (1_500_000_000, 1),
        (1_500_000_001, 2),
        libc::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let md = lstat(&p("dir-link"));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_001, 2));
    sys::utimensat(
        &p("moved-d2/d3"),
        (1_600_000_000, 0),
        (1_600_000_000, 42),
        0,
    )
    .unwrap();

    // xattrs: user.* set, replace, remove; on a file and a directory.
    sys::setxattr(&p("s4096"), "user.plain", b"value", 0).unwrap();
    sys::setxattr(&p("s4096"), "user.binary", &[0, 1, 2, 255, 0, 7], 0).unwrap();
    sys::setxattr(&p("s4096"), "user.big", &pattern(300, 3000), 0).unwrap();
    sys::setxattr(&p("s4096"), "user.gone", b"soon removed", 0).unwrap();
    sys::setxattr(&p("s4096"), "user.plain", b"replaced", libc::XATTR_REPLACE).unwrap();
    let r = sys::setxattr(&p("s4096"), "user.plain", b"x", libc::XATTR_CREATE);
    assert_eq!(errno(&r), Some(libc::EEXIST), "XATTR_CREATE on existing");
    sys::removexattr(&p("s4096"), "user.gone").unwrap();
    let r = sys::getxattr(&p("s4096"), "user.gone");
    assert_eq!(errno(&r), Some(libc::ENODATA), "removed xattr still there");
    assert_eq!(
        sys::getxattr(&p("s4096"), "user.plain").unwrap(),
        b"replaced"
    );
    assert_eq!(
        sys::getxattr(&p("d1/hard"), "user.binary").unwrap(),
        [0, 1, 2, 255, 0, 7],
        "xattr through the other hard link"
    );
    sys::setxattr(&p("d1"), "user.dir-attr", b"on a directory", 0).unwrap();
    let names = list_xattrs(&p("s4096")).unwrap();
    let names: BTreeSet<String> = names
        .keys()
        .map(|k| k.to_string_lossy().into_owned())
        .collect();
    for n in ["user.plain", "user.binary", "user.big"] {
        assert!(names.contains(n), "listxattr lacks {n}: {names:?}");
    }
    assert!(!names.contains("user.gone"));

    // POSIX ACLs with setfacl: an access ACL, and a default ACL inherited by
    // a new file.
    let out = Command::new("setfacl")
        .args(["-m", "u:65534:rw,g:65534:r,u:1234:-,m::rw"])
        .arg(p("s4097"))
        .output()
        .unwrap();
    assert!(out.status.success(), "setfacl: {out:?}");
    let acl = sys::getxattr(&p("s4097"), "system.posix_acl_access").unwrap();
    assert!(!acl.is_empty());
    let out = Command::new("getfacl")
        .arg("-n")
        .arg(p("s4097"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("user:65534:rw-"), "getfacl: {text}");
    fs::create_dir(p("acl-dir")).unwrap();
    let out = Command::new("setfacl")
        .args(["-d", "-m", "u:65534:rwx,g::r-x"])
        .arg(p("acl-dir"))
        .output()
        .unwrap();
    assert!(out.status.success(), "setfacl -d: {out:?}");
    fs::write(p("acl-dir/inherits"), b"acl").unwrap();
    model.insert("acl-dir/inherits", b"acl".to_vec());
    let out = Command::new("getfacl")
        .arg("-n")
        .arg(p("acl-dir/inherits"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("user:65534:"),
        "default ACL not inherited: {text}"
    );

    // Special files: fifo, socket, char and block devices (as root).
    sys::mknod(&p("fifo"), libc::S_IFIFO | 0o644, 0, 0).unwrap();
    sys::mknod(&p("sock"), libc::S_IFSOCK | 0o600, 0, 0).unwrap();
    sys::mknod(&p("chr"), libc::S_IFCHR | 0o600, 1, 3).unwrap();
    sys::mknod(&p("blk"), libc::S_IFBLK | 0o600, 7, 200).unwrap();
    assert!(lstat(&p("fifo")).file_type().is_fifo());
    let md = lstat(&p("chr"));
    assert_eq!(md.mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(md.rdev(), libc::makedev(1, 3));
    let md = lstat(&p("blk"));
    assert_eq!(md.mode() & libc::S_IFMT, libc::S_IFBLK);
    assert_eq!(md.rdev(), libc::makedev(7, 200));
    let out = Command::new("mkfifo").arg(p("fifo2")).output().unwrap();
    assert!(out.status.success());

    // unlink, rmdir (and their errors).
    fs::write(p("doomed"), b"x").unwrap();
    fs::remove_file(p("doomed")).unwrap();
    assert!(fs::symlink_metadata(p("doomed")).is_err());
    fs::remove_file(p("fifo2")).unwrap();
    fs::remove_file(p("d1/rel-link")).unwrap();
    fs::create_dir(p("empty-dir")).unwrap();
    fs::remove_dir(p("empty-dir")).unwrap();
    let r = fs::remove_dir(p("moved-d2"));
    assert_eq!(errno(&r), Some(libc::ENOTEMPTY), "rmdir of a non-empty dir");
    let r = fs::remove_file(p("nothing-here"));
    assert_eq!(errno(&r), Some(libc::ENOENT));
    let r = fs::create_dir(p("d1"));
    assert_eq!(errno(&r), Some(libc::EEXIST));
    // Unlinking one hard link leaves the other with nlink 1.
    fs::hard_link(p("ren-b"), p("ren-b-link")).unwrap();
    fs::remove_file(p("ren-b-link")).unwrap();
    assert_eq!(lstat(&p("ren-b")).nlink(), 1);

    // fallocate: extend, keep-size preallocation, punch a hole.
    {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(p("falloc"))
            .unwrap();
        let data = pattern(400, 300_000);
        f.write_all_at(&data, 0).unwrap();
        sys::fallocate(&f, 0, 0, (MIB + 5) as i64).unwrap();
        assert_eq!(f.metadata().unwrap().len(), (MIB + 5) as u64);
        sys::fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, (4 * MIB) as i64).unwrap();
        assert_eq!(f.metadata().unwrap().len(), (MIB + 5) as u64);
        sys::fallocate(
            &f,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            8192,
            65536,
        )
        .unwrap();
        let mut expect = data.clone();
        expect.resize(MIB + 5, 0);
        expect[8192..8192 + 65536].fill(0);
        f.sync_all().unwrap();
        assert_content(&p("falloc"), &expect);
        model.insert("falloc", expect);
    }

    // fsync / fdatasync on files, fsync on directories.
    {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(p("nr-dst"))
            .unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(b" + synced").unwrap();
        f.sync_data().unwrap();
        f.sync_all().unwrap();
        model
            .get_mut("nr-dst")
            .unwrap()
            .extend_from_slice(b" + synced");
        let mut s = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "noreplace source + synced");
        fsync_dir(&m.mountpoint);
        fsync_dir(&p("moved-d2"));
    }

    // Give the last regular file a fixed mtime too (the rest carry whatever
    // the daemon recorded, which must simply agree everywhere).
    sys::utimensat(
        &p("falloc"),
        (0, libc::UTIME_OMIT),
        (1_700_000_000, 999_999_999),
        0,
    )
    .unwrap();
    model
}

/// All regular files under `dir` (relative paths), not following symlinks.
fn regular_files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(dir.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                if !(rel.as_os_str().is_empty() && e.file_name() == INTERNAL_DIR) {
                    stack.push(r);
                }
            } else if ft.is_file() {
                out.insert(r);
            }
        }
    }
    out
}

/// Checks the model through the mount, the mount against the replicas, and
/// the replicas against each other.
fn verify(m: &Mount, model: &Model) {
    for (rel, data) in model {
        assert_content(&m.path(rel), data);
    }
    let expected: BTreeSet<PathBuf> = model.keys().map(PathBuf::from).collect();
    assert_eq!(
        regular_files(&m.mountpoint),
        expected,
        "regular files seen through the mount"
    );
    // The mount itself must show what the replicas hold ...
    assert_replicas_identical(&[&m.mountpoint, &m.replicas[0]]);
    // ... and the replicas must be identical.
    m.assert_replicas_identical();
}

fn mixed_workload_on(n: usize) {
    // Replicas in our own root, so they outlive the first mount.
    let root = TestRoot::new();
    let replicas: Vec<PathBuf> = (0..n).map(|i| root.mkdir(&format!("replica{i}"))).collect();
    let mount_replicas = |replicas: &[PathBuf]| {
        let mut b = Mount::builder();
        for r in replicas {
            b = b.replica(r);
        }
        b.mount()
    };
    let m = mount_replicas(&replicas);
    let model = mixed_workload(&m);
    verify(&m, &model);
    // Still identical and intact after a clean unmount and a fresh mount.
    let (status, _) = m.unmount();
    assert!(
        status.success(),
        "daemon exit status after umount: {status}"
    );
    let m2 = mount_replicas(&replicas);
    for (rel, data) in &model {
        assert_content(&m2.path(rel), data);
    }
    verify(&m2, &model);
}

#[test]
fn mixed_workload_two_replicas() {
    mixed_workload_on(2);
}

#[test]
fn mixed_workload_three_replicas() {
    mixed_workload_on(3);
}

/// Drops dentries and inodes so the kernel sends FORGET for everything unused.
fn drop_kernel_inode_cache() {
    fs::write("/proc/sys/vm/drop_caches", b"2").expect("drop_caches");
}

#[test]
fn inode_numbers_are_stable() {
    let m = Mount::new(2);
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/file"), b"x").unwrap();
    fs::write(m.path("other"), b"y").unwrap();
    let file_ino = lstat(&m.path("dir/file")).ino();
    let dir_ino = lstat(&m.path("dir")).ino();
    let root_ino = lstat(&m.mountpoint).ino();
    // Other activity: many new files, renames, deletions, cache drops.
    for i in 0..300 {
        fs::write(m.path(format!("dir/n{i}")), b"z").unwrap();
    }
    for i in 0..300 {
        if i % 2 == 0 {
            fs::remove_file(m.path(format!("dir/n{i}"))).unwrap();
        } else {
            fs::rename(m.path(format!("dir/n{i}")), m.path(format!("m{i}"))).unwrap();
        }
    }
    drop_kernel_inode_cache();
    assert_eq!(lstat(&m.path("dir/file")).ino(), file_ino, "inode changed");
    assert_eq!(lstat(&m.path("dir")).ino(), dir_ino);
    assert_eq!(lstat(&m.mountpoint).ino(), root_ino);
    // Rename keeps the inode; so does a hard link.
    fs::rename(m.path("dir/file"), m.path("renamed")).unwrap();
    drop_kernel_inode_cache();
    assert_eq!(
        lstat(&m.path("renamed")).ino(),
        file_ino,
        "rename changed st_ino"
    );
    fs::hard_link(m.path("renamed"), m.path("dir/link")).unwrap();
    drop_kernel_inode_cache();
    assert_eq!(lstat(&m.path("dir/link")).ino(), file_ino);
    // Distinct files have distinct inode numbers.
    let mut seen = BTreeMap::new();
    for e in fs::read_dir(&m.mountpoint).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        if let Some(prev) = seen.insert(md.ino(), e.file_name())
            && md.nlink() < 2
        {
            panic!("{prev:?} and {:?} share st_ino {}", e.file_name(), md.ino());
        }
        // readdir's d_ino agrees with stat's st_ino.
        assert_eq!(e.ino(), md.ino(), "d_ino vs st_ino of {:?}", e.file_name());
    }
    m.assert_replicas_identical();
}

#[test]
fn rm_rf_of_ten_thousand_entries() {
    let m = Mount::new(2);
    let big = m.path("big");
    fs::create_dir(&big).unwrap();
    let mut names = BTreeSet::new();
    for i in 0..9000 {
        let name = format!("file-with-a-longish-name-{i:05}");
        File::create(big.join(&name)).unwrap();
        names.insert(name);
    }
    for d in 0..100 {
        let name = format!("sub{d:03}");
        fs::create_dir(big.join(&name)).unwrap();
        for j in 0..9 {
            fs::write(big.join(&name).join(format!("f{j}")), b"data").unwrap();
        }
        names.insert(name);
    }
    // readdir through the mount lists each of the 9100 names exactly once.
    let listed: Vec<String> = fs::read_dir(&big)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        listed_set.len(),
        "readdir returned duplicates"
    );
    assert_eq!(listed_set, names, "readdir through the mount");

    let out = Command::new("rm").arg("-rf").arg(&big).output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "rm -rf failed: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r = fs::symlink_metadata(&big);
    assert_eq!(errno(&r), Some(libc::ENOENT), "big still visible: {r:?}");
    for (i, r) in m.replicas.iter().enumerate() {
        assert!(
            fs::symlink_metadata(r.join("big")).is_err(),
            "replica {i} still has big/ with {:?} entries",
            fs::read_dir(r.join("big")).map(|d| d.count())
        );
    }
    m.assert_replicas_identical();
}

fn sh_as_nobody(script: &str) -> std::process::Output {
    run_as(
        NOBODY,
        NOBODY,
        "sh",
        &[OsStr::new("-c"), OsStr::new(script)],
    )
}

#[test]
fn files_of_other_users_belong_to_them_on_every_replica() {
    let m = Mount::builder().fresh(2).option("allow_other").mount();
    fs::create_dir(m.path("pub")).unwrap();
    fs::set_permissions(m.path("pub"), fs::Permissions::from_mode(0o777)).unwrap();
    let pubdir = m.path("pub");
    let out = sh_as_nobody(&format!(
        "set -e; cd {d}; echo hello > file; mkdir dir; echo x > dir/inner; ln -s file link; mkfifo fifo; ln file hard",
        d = pubdir.display()
    ));
    assert!(out.status.success(), "as nobody: {out:?}");
    for rel in [
        "pub/file",
        "pub/dir",
        "pub/dir/inner",
        "pub/link",
        "pub/fifo",
        "pub/hard",
    ] {
        for (i, md) in std::iter::once(lstat(&m.path(rel)))
            .chain(m.replicas.iter().map(|r| lstat(&r.join(rel))))
            .enumerate()
        {
            assert_eq!(
                (md.uid(), md.gid()),
                (NOBODY, NOBODY),
                "{rel}: owner on {} (0 = the mount, then replicas)",
                i
            );
        }
    }
    assert_content(&m.path("pub/file"), b"hello\n");

    // Nothing a user does exceeds what the permissions allow.
    fs::create_dir(m.path("rootonly")).unwrap();
    fs::write(m.path("rootfile"), b"root's").unwrap();
    fs::set_permissions(m.path("rootfile"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(m.path("sticky")).unwrap();
    fs::set_permissions(m.path("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(m.path("sticky/roots"), b"keep").unwrap();
    let mp = m.mountpoint.display().to_string();
    for (what, script) in [
        (
            "create in a root 0755 dir",
            format!("echo x > {mp}/rootonly/f"),
        ),
        ("write a root 0644 file", format!("echo x >> {mp}/rootfile")),
        ("chmod a root file", format!("chmod 666 {mp}/rootfile")),
        ("chown a file to self", format!("chown 65534 {mp}/rootfile")),
        (
            "unlink root's file in a sticky dir",
            format!("rm -f {mp}/sticky/roots && test ! -e {mp}/sticky/roots"),
        ),
        ("chown own file to root", format!("chown 0 {mp}/pub/file")),
        (
            "set a trusted xattr",
            format!("setfattr -n trusted.x -v 1 {mp}/pub/file"),
        ),
    ] {
        let out = sh_as_nobody(&script);
        assert!(!out.status.success(), "nobody could {what}: {out:?}");
    }
    for r in &m.replicas {
        assert!(!r.join("rootonly/f").exists());
        assert_eq!(read(&r.join("rootfile")), b"root's");
        assert_eq!(lstat(&r.join("rootfile")).mode() & 0o7777, 0o644);
        assert_eq!(lstat(&r.join("rootfile")).uid(), 0);
        assert_eq!(read(&r.join("sticky/roots")), b"keep");
        assert_eq!(lstat(&r.join("pub/file")).uid(), NOBODY);
    }
    m.assert_replicas_identical();
}

#[test]
fn setgid_directory_passes_its_group_on() {
    let m = Mount::builder().fresh(2).option("allow_other").mount();
    let sg = m.path("sg");
    fs::create_dir(&sg).unwrap();
    std::os::unix::fs::chown(&sg, Some(0), Some(1234)).unwrap();
    fs::set_permissions(&sg, fs::Permissions::from_mode(0o2777)).unwrap();
    assert_eq!(lstat(&sg).mode() & 0o7777, 0o2777);
    // As root (gid 0) and as nobody (gid 65534).
    fs::write(sg.join("by-root"), b"r").unwrap();
    fs::create_dir(sg.join("dir-by-root")).unwrap();
    let out = sh_as_nobody(&format!(
        "set -e; cd {}; echo n > by-nobody; mkdir dir-by-nobody; echo m > dir-by-nobody/deeper",
        sg.display()
    ));
    assert!(out.status.success(), "as nobody: {out:?}");
    let views: Vec<PathBuf> = std::iter::once(m.mountpoint.clone())
        .chain(m.replicas.iter().cloned())
        .collect();
    for v in &views {
        for (rel, uid) in [
            ("sg/by-root", 0),
            ("sg/dir-by-root", 0),
            ("sg/by-nobody", NOBODY),
            ("sg/dir-by-nobody", NOBODY),
            ("sg/dir-by-nobody/deeper", NOBODY),
        ] {
            let md = lstat(&v.join(rel));
            assert_eq!(
                md.gid(),
                1234,
                "{}: group must be the setgid dir's",
                v.join(rel).display()
            );
            assert_eq!(md.uid(), uid, "{}: owner", v.join(rel).display());
            if md.is_dir() {
                assert_ne!(
                    md.mode() & 0o2000,
                    0,
                    "{}: subdirectory must inherit setgid",
                    v.join(rel).display()
                );
            }
        }
    }
    m.assert_replicas_identical();
}

/// One entry of a [`snapshot`]: mode, owner, size, mtime and content.
type Snap = BTreeMap<PathBuf, (u32, u32, u32, u64, i64, i64, Vec<u8>)>;

/// Everything below `dir` (not following symlinks), for "nothing changed"
/// checks.
fn snapshot(dir: &Path) -> Snap {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = fs::symlink_metadata(&d).unwrap();
        let content = if md.is_file() { read(&d) } else { Vec::new() };
        let entry = (
            md.mode(),
            md.uid(),
            md.gid(),
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
            content,
        );
        out.insert(d.clone(), entry);
        if md.is_dir() {
            for e in fs::read_dir(&d).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

/// Panics listing every entry that appeared, vanished or changed.
fn assert_unchanged(before: &Snap, after: &Snap, what: &str) {
    let mut diffs = Vec::new();
    for (p, b) in before {
        match after.get(p) {
            None => diffs.push(format!("{} vanished", p.display())),
            Some(a) if a != b => diffs.push(format!(
                "{} changed: mode {:o} -> {:o}, owner {}:{} -> {}:{}, size {} -> {}, mtime {}.{} -> {}.{}, content {}",
                p.display(),
                b.0,
                a.0,
                b.1,
                b.2,
                a.1,
                a.2,
                b.3,
                a.3,
                b.4,
                b.5,
                a.4,
                a.5,
                if a.6 == b.6 { "same" } else { "changed" }
            )),
            _ => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        diffs.push(format!("{} appeared", p.display()));
    }
    assert!(diffs.is_empty(), "{what}:\n  {}", diffs.join("\n  "));
}

#[test]
fn internal_directory_is_invisible_and_untouchable() {
    let m = Mount::new(2);
    for (i, r) in m.replicas.iter().enumerate() {
        assert!(
            lstat(&r.join(INTERNAL_DIR)).is_dir(),
            "replica {i} has no {INTERNAL_DIR} directory"
        );
    }
    // The daemon may update its own files in there; what it held before must
    // survive, with the directory's mode and owner.
    let before: Vec<_> = m
        .replicas
        .iter()
        .map(|r| {
            (
                lstat(&r.join(INTERNAL_DIR)),
                snapshot(&r.join(INTERNAL_DIR)),
            )
        })
        .collect();
    let names: Vec<_> = fs::read_dir(&m.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !names.iter().any(|n| n == INTERNAL_DIR),
        "readdir shows it: {names:?}"
    );
    let out = Command::new("ls")
        .arg("-a")
        .arg(&m.mountpoint)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(INTERNAL_DIR));

    let internal = m.path(INTERNAL_DIR);
    assert_eq!(
        errno(&fs::symlink_metadata(&internal)),
        Some(libc::ENOENT),
        "lookup"
    );
    assert_eq!(errno(&File::open(&internal)), Some(libc::ENOENT));
    assert_eq!(errno(&fs::read_dir(&internal)), Some(libc::ENOENT));
    // Anything inside it is unreachable too, whatever the daemon keeps there.
    for r in &m.replicas {
        for e in fs::read_dir(r.join(INTERNAL_DIR)).unwrap() {
            let name = e.unwrap().file_name();
            let r = fs::symlink_metadata(internal.join(&name));
            assert!(
                r.is_err(),
                "{name:?} inside {INTERNAL_DIR} reachable through the mount"
            );
        }
    }
    // Cannot be created, removed, renamed to/from, linked, or given xattrs.
    fs::write(m.path("plain"), b"x").unwrap();
    fs::create_dir(m.path("adir")).unwrap();
    let attempts: Vec<(&str, std::io::Result<()>)> = vec![
        ("mkdir", fs::create_dir(&internal)),
        ("create", File::create(&internal).map(|_| ())),
        ("symlink", symlink("plain", &internal)),
        ("link", fs::hard_link(m.path("plain"), &internal)),
        ("mknod", sys::mknod(&internal, libc::S_IFIFO | 0o644, 0, 0)),
        (
            "rename file onto it",
            fs::rename(m.path("plain"), &internal),
        ),
        ("rename dir onto it", fs::rename(m.path("adir"), &internal)),
        ("rename it away", fs::rename(&internal, m.path("stolen"))),
        (
            "exchange with it",
            sys::renameat2(&m.path("adir"), &internal, libc::RENAME_EXCHANGE),
        ),
        ("rmdir", fs::remove_dir(&internal)),
        ("unlink", fs::remove_file(&internal)),
        ("rm -rf", fs::remove_dir_all(&internal)),
        ("setxattr", sys::setxattr(&internal, "user.x", b"1", 0)),
        (
            "chmod",
            fs::set_permissions(&internal, fs::Permissions::from_mode(0o777)),
        ),
    ];
    for (what, r) in &attempts {
        assert!(
            r.is_err(),
            "{what} of {INTERNAL_DIR} through the mount succeeded"
        );
    }
    let _ = Command::new("rm")
        .arg("-rf")
        .arg(&internal)
        .output()
        .unwrap();
    for (r, (md, snap)) in m.replicas.iter().zip(&before) {
        let internal = r.join(INTERNAL_DIR);
        let now = lstat(&internal);
        assert!(
            now.is_dir(),
            "{} is no longer a directory",
            internal.display()
        );
        assert_eq!(
            (now.mode(), now.uid(), now.gid(), now.ino()),
            (md.mode(), md.uid(), md.gid(), md.ino()),
            "{} was replaced or changed",
            internal.display()
        );
        let after = snapshot(&internal);
        for p in snap.keys() {
            assert!(
                after.contains_key(p),
                "{} was removed through the mount",
                p.display()
            );
        }
        assert!(
            !list_xattrs(&internal)
                .unwrap()
                .contains_key(std::ffi::OsStr::new("user.x")),
            "xattr set on {}",
            internal.display()
        );
    }
    assert_content(&m.path("plain"), b"x");
    assert!(lstat(&m.path("adir")).is_dir());
    assert!(fs::symlink_metadata(m.path("stolen")).is_err());
    // A subdirectory's `.chironfs` is an ordinary name.
    fs::create_dir(m.path("adir/.chironfs")).unwrap();
    fs::write(m.path("adir/.chironfs/f"), b"ordinary").unwrap();
    assert_content(&m.path("adir/.chironfs/f"), b"ordinary");
    m.assert_replicas_identical();
}

/// Symlinks planted directly in one replica (as a racing local user could)
/// must never be followed out of the replica by the daemon.
#[test]
fn symlinks_planted_in_a_replica_are_never_followed_out_of_it() {
    // Long entry/attr timeouts and pinned fds keep the kernel's view of `a/sub`
    // (a directory) and `a/f` (a file) as they were before the swap, so the
    // kernel itself never follows the planted symlinks: any escape is the
    // daemon resolving a path on replica 0.
    let m = Mount::builder()
        .fresh(2)
        .option("entry_timeout=3600,attr_timeout=3600")
        .mount();
    let outside = m.root().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), b"outside victim").unwrap();
    fs::set_permissions(outside.join("victim"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(outside.join("file-target"), b"outside file").unwrap();
    fs::set_permissions(
        outside.join("file-target"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let before = snapshot(&outside);

    // Build the tree through the mount, so the daemon knows it.
    fs::create_dir_all(m.path("a/sub")).unwrap();
    fs::write(m.path("a/sub/victim"), b"inside victim").unwrap();
    fs::write(m.path("a/f"), b"inside f").unwrap();
    assert!(lstat(&m.path("a/sub")).is_dir());
    assert!(lstat(&m.path("a/sub/victim")).is_file());
    assert!(lstat(&m.path("a/f")).is_file());
    let pin_sub = File::open(m.path("a/sub")).unwrap();
    let pin_f = File::open(m.path("a/f")).unwrap();
    use std::os::fd::AsRawFd;
    let by_fd = |f: &File| PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));

    // On replica 0 only: swap the directory component and the final
    // component for symlinks that point outside.
    let r0 = &m.replicas[0];
    fs::rename(r0.join("a/sub"), r0.join("a/sub.moved")).unwrap();
    symlink(&outside, r0.join("a/sub")).unwrap();
    fs::rename(r0.join("a/f"), r0.join("a/f.moved")).unwrap();
    symlink(outside.join("file-target"), r0.join("a/f")).unwrap();

    // Operations through the mount on both swapped paths. Their results do
    // not matter (replica 0 may be failed, the other may serve them); the
    // outside tree must not change.
    let sub = by_fd(&pin_sub);
    let f = by_fd(&pin_f);
    let _ = fs::write(sub.join("file"), b"escaped!");
    let _ = fs::create_dir(sub.join("newdir"));
    let _ = symlink("x", sub.join("newlink"));
    let _ = sys::mknod(&sub.join("newfifo"), libc::S_IFIFO | 0o644, 0, 0);
    let _ = fs::write(sub.join("victim"), b"overwritten!");
    let _ = OpenOptions::new()
        .write(true)
        .open(sub.join("victim"))
        .map(|f| f.set_len(0));
    let _ = fs::set_permissions(sub.join("victim"), fs::Permissions::from_mode(0o666));
    let _ = std::os::unix::fs::chown(sub.join("victim"), Some(NOBODY), Some(NOBODY));
    let _ = sys::setxattr(&sub.join("victim"), "user.escaped", b"1", 0);
    let _ = sys::utimensat(&sub.join("victim"), (1, 0), (1, 0), 0);
    let _ = fs::hard_link(sub.join("victim"), m.path("a/stolen-link"));
    let _ = fs::rename(sub.join("victim"), m.path("a/stolen"));
    let _ = fs::remove_file(sub.join("victim"));
    // The final component, by its (cached) path and by the pinned inode.
    for target in [m.path("a/f"), f.clone()] {
        let _ = fs::write(&target, b"escaped through f");
        let _ = OpenOptions::new()
            .write(true)
            .open(&target)
            .map(|f| f.set_len(0));
        let _ = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TRUNC)
            .open(&target)
            .map(|mut f| f.write_all(b"escaped again"));
        let _ = fs::set_permissions(&target, fs::Permissions::from_mode(0o666));
        let _ = std::os::unix::fs::chown(&target, Some(NOBODY), Some(NOBODY));
        let _ = sys::setxattr(&target, "user.escaped", b"1", 0);
        let _ = sys::utimensat(&target, (1, 0), (1, 0), 0);
        let _ = pin_f.set_len(1);
    }
    let _ = fs::remove_file(m.path("a/f"));
    let _ = fs::remove_dir_all(m.path("a/sub"));
    drop((pin_sub, pin_f));

    let after = snapshot(&outside);
    assert_unchanged(
        &before,
        &after,
        &format!(
            "the daemon modified {} outside the replicas",
            outside.display()
        ),
    );
    for p in [outside.join("victim"), outside.join("file-target")] {
        assert!(
            list_xattrs(&p).unwrap().is_empty(),
            "xattr set on {}",
            p.display()
        );
        let md = lstat(&p);
        assert_eq!((md.uid(), md.gid()), (0, 0), "{} re-owned", p.display());
    }
    // The planted symlinks themselves are still there (the daemon did not
    // "repair" replica 0 by writing through them either).
    assert!(lstat(&r0.join("a/sub")).file_type().is_symlink() || !r0.join("a/sub").exists());
}

#[test]
fn mount_survives_a_busy_reader_while_writing() {
    // Reads through one handle while another handle writes: both see
    // consistent data and the replicas agree afterwards.
    let m = Mount::new(2);
    let data = pattern(7, 2 * MIB);
    fs::write(m.path("rw"), &data).unwrap();
    let reader = File::open(m.path("rw")).unwrap();
    let writer = OpenOptions::new().write(true).open(m.path("rw")).unwrap();
    let mut expect = data.clone();
    for i in 0..64 {
        let off = (i * 31_337) % (2 * MIB - 4096);
        let chunk = pattern(1000 + i as u64, 4096);
        writer.write_all_at(&chunk, off as u64).unwrap();
        expect[off..off + 4096].copy_from_slice(&chunk);
        let mut buf = vec![0u8; 4096];
        reader.read_exact_at(&mut buf, off as u64).unwrap();
        assert_eq!(buf, chunk, "read after write at {off}");
    }
    drop(writer);
    drop(reader);
    assert_content(&m.path("rw"), &expect);
    m.assert_replicas_identical();
}

/// Write-then-rename right away (the close's RELEASE may reach the daemon
/// after the RENAME): the renamed files' mtimes must still agree everywhere.
#[test]
fn files_renamed_right_after_writing_keep_identical_mtimes() {
    let m = Mount::new(2);
    fs::create_dir(m.path("src")).unwrap();
    fs::create_dir(m.path("dst")).unwrap();
    for i in 0..1000 {
        let from = m.path(format!("src/f{i}"));
        fs::write(&from, pattern(i, 100 + i as usize)).unwrap();
        fs::rename(&from, m.path(format!("dst/f{i}"))).unwrap();
    }
    // Same for a file held open (written) across the rename.
    let mut f = File::create(m.path("src/held")).unwrap();
    f.write_all(b"before rename").unwrap();
    fs::rename(m.path("src/held"), m.path("dst/held")).unwrap();
    f.write_all(b", after rename").unwrap();
    drop(f);
    assert_content(&m.path("dst/held"), b"before rename, after rename");
    m.assert_replicas_identical();
}
