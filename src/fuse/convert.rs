//! Conversions between backing `stat` values and fuser's types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, Request, TimeOrNow};

use crate::fs::{Owner, SetTime};
use crate::replica::ops::Stat;

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec as u32)
    }
}

fn kind_of_mode(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// DT_* to fuser's type.
pub fn file_type(dt: u8) -> FileType {
    match dt {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The attributes of a backing inode, under our inode number.
pub fn file_attr(ino: u64, st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind_of_mode(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

pub fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => {
            let ts = match st.duration_since(UNIX_EPOCH) {
                Ok(d) => libc::timespec {
                    tv_sec: d.as_secs() as i64,
                    tv_nsec: d.subsec_nanos() as i64,
                },
                Err(e) => {
                    // Before 1970: whole seconds down, nanoseconds up.
                    let d = e.duration();
                    let (mut s, mut ns) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                    if ns < 0 {
                        s -= 1;
                        ns += 1_000_000_000;
                    }
                    libc::timespec {
                        tv_sec: s,
                        tv_nsec: ns,
                    }
                }
            };
            SetTime::At(ts)
        }
    }
}

pub fn owner(req: &Request) -> Owner {
    Owner {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// Whether the caller lacks CAP_FSETID, as far as a FUSE request tells:
/// the kernel sends the caller's ids, not its capabilities, so any caller
/// but root is taken as unprivileged (a root process that dropped
/// CAP_FSETID is not told apart). The kernel's own flag says it for writes
/// (FUSE_WRITE_KILL_SUIDGID); fuser does not pass it on for setattr.
pub fn unprivileged(req: &Request) -> bool {
    req.uid() != 0
}
