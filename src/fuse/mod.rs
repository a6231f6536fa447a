//! The fuser adapter: decode a request, call the filesystem core, encode
//! the reply. No filesystem logic lives here.

mod convert;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, Errno as FErrno, FileHandle, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags,
    PollEvents, PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyBmap, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

use crate::errno::Errno;
use crate::fs::{ChironFs, IoMode, Opened};
use convert::{file_attr, file_type, owner, set_time, unprivileged};

pub struct Adapter {
    fs: Arc<ChironFs>,
    attr_ttl: Duration,
    entry_ttl: Duration,
    /// Passthrough backing files by inode, with the number of open handles
    /// naming each (the kernel wants one backing file per inode), and the
    /// handles that do.
    backing: Mutex<Backing>,
}

#[derive(Default)]
struct Backing {
    by_inode: HashMap<u64, (BackingId, usize)>,
    holders: HashMap<u64, u64>,
}

impl Adapter {
    /// Runs a read of file contents, directory entries or a symlink target,
    /// or a change, under this host's read lease (DESIGN.md section 7,
    /// "Read leases"): EIO if it is not held when the call begins, or if it
    /// ran out at any moment before the call ended (the replica answered
    /// late, this thread stalled, renewals failed); a call that outlasts a
    /// term is fine while renewals keep the lease. A change answered EIO
    /// may have reached replicas: it is not acknowledged, as for any write
    /// that fails.
    fn under_lease<T>(
        &self,
        f: impl FnOnce() -> crate::errno::Result<T>,
    ) -> crate::errno::Result<T> {
        let ticket = self.fs.lease_ticket().ok_or(Errno::EIO)?;
        let v = f()?;
        if !self.fs.lease_kept(ticket) {
            return Err(Errno::EIO);
        }
        Ok(v)
    }

    /// A change that creates an entry (and an open): the lease is checked
    /// before it only, since an entry or handle made and then refused
    /// would be lost to the kernel. (A host whose lease is held when such a
    /// change begins is not yet taken for dead: takeovers wait out the
    /// lease, DESIGN.md section 7, "Dead hosts".)
    fn with_lease(&self) -> crate::errno::Result<()> {
        self.fs.lease_ticket().map(|_| ()).ok_or(Errno::EIO)
    }
}

fn err(e: Errno) -> FErrno {
    FErrno::from_i32(e.0)
}

impl Adapter {
    pub fn new(fs: Arc<ChironFs>, attr_ttl: Duration, entry_ttl: Duration) -> Adapter {
        Adapter {
            fs,
            attr_ttl,
            entry_ttl,
            backing: Mutex::new(Backing::default()),
        }
    }

    /// How long the kernel may keep what it is told about `st`: `base`,
    /// except for a file with several links, which the kernel may know by
    /// more than one inode number (its names read from replicas that
    /// number it differently): a size or page it cached under one would
    /// not see a change made through another (src/DESIGN.md section 4);
    /// and a setuid or setgid file, whose mode the daemon may change on a
    /// write (src/DESIGN.md section 3, "Privileges"): the kernel must not
    /// run it, or show it, with the bits a write removed.
    fn ttl(base: Duration, st: &crate::replica::ops::Stat) -> Duration {
        let file = st.st_mode & libc::S_IFMT != libc::S_IFDIR;
        if file && (st.st_nlink > 1 || st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0) {
            Duration::ZERO
        } else {
            base
        }
    }

    fn entry(&self, reply: ReplyEntry, r: crate::errno::Result<crate::fs::Entry>) {
        match r {
            Ok(e) => reply.entry(
                &Self::ttl(self.entry_ttl, &e.attr),
                &file_attr(e.ino, &e.attr),
                Generation(0),
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    /// Answers an open: passthrough opens (and opens of an inode already in
    /// passthrough mode) name the inode's one backing file, registered with
    /// the kernel on first use; everything else is a plain open.
    fn reply_open(&self, ino: u64, opened: &Opened, reply: OpenReply) {
        let fh = FileHandle(opened.fh);
        let mut guard = self.backing.lock();
        let Backing {
            by_inode: map,
            holders,
        } = &mut *guard;
        let direct = match &opened.io {
            IoMode::Cached => None,
            IoMode::ShareBacking => Some(FopenFlags::FOPEN_DIRECT_IO),
            IoMode::Passthrough(fd) => {
                if let std::collections::hash_map::Entry::Vacant(v) = map.entry(ino) {
                    match reply.open_backing(fd) {
                        Ok(id) => {
                            v.insert((id, 0));
                        }
                        Err(e) => {
                            tracing::debug!("passthrough refused for inode {ino}: {e}");
                            self.fs.passthrough_refused(opened.fh);
                        }
                    }
                }
                map.contains_key(&ino).then_some(FopenFlags::empty())
            }
        };
        match (direct, map.get_mut(&ino)) {
            (Some(flags), Some((id, users))) => {
                *users += 1;
                holders.insert(opened.fh, ino);
                reply.passthrough(fh, flags, id);
            }
            _ => {
                let keep = if opened.keep_cache {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.plain(fh, keep);
            }
        }
    }

    fn release_backing(&self, fh: u64) {
        let mut b = self.backing.lock();
        let Some(ino) = b.holders.remove(&fh) else {
            return;
        };
        if let Some((_, users)) = b.by_inode.get_mut(&ino) {
            *users -= 1;
            if *users == 0 {
                b.by_inode.remove(&ino);
            }
        }
    }
}

impl Filesystem for Adapter {
    // No FUSE_ATOMIC_O_TRUNC: with it the kernel forwards O_TRUNC before its
    // own ETXTBSY check, and an open(O_RDONLY|O_TRUNC) of a running program
    // would truncate it on every replica. Without it the kernel checks
    // first and truncates with a setattr.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        for cap in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            // A listing carries each entry's lookup (`readdirplus`): no
            // LOOKUP request per entry for `ls -l` or `find -ls`; the
            // kernel picks plain READDIR where it needs no attributes.
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!("kernel lacks {cap:?}");
            }
        }
        let passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.fs.set_passthrough_available(passthrough);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(reply, self.fs.lookup(parent.0, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(st) => reply.attr(&Self::ttl(self.attr_ttl, &st), &file_attr(ino.0, &st)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = crate::fs::SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            kill_suidgid: size.is_some() && unprivileged(req),
        };
        match self.under_lease(|| self.fs.setattr(ino.0, fh.map(|f| f.0), set)) {
            Ok(st) => reply.attr(&Self::ttl(self.attr_ttl, &st), &file_attr(ino.0, &st)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.under_lease(|| self.fs.readlink(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let made = self
            .with_lease()
            .and_then(|()| self.fs.mknod(parent.0, name, mode, rdev as u64, owner(req)));
        self.entry(reply, made);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let made = self
            .with_lease()
            .and_then(|()| self.fs.mkdir(parent.0, name, mode, owner(req)));
        self.entry(reply, made);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.under_lease(|| self.fs.unlink(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.under_lease(|| self.fs.rmdir(parent.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let made = self.with_lease().and_then(|()| {
            self.fs
                .symlink(parent.0, link_name, target.as_os_str(), owner(req))
        });
        self.entry(reply, made);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.under_lease(|| {
            self.fs
                .rename(parent.0, name, newparent.0, newname, flags.bits())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let made = self
            .with_lease()
            .and_then(|()| self.fs.link(ino.0, newparent.0, newname));
        self.entry(reply, made);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // A read-only open may be answered from pages the kernel cached
        // (keep_cache): it needs the lease, and a writable one (which may
        // truncate) too, as every change.
        if let Err(e) = self.with_lease() {
            reply.error(err(e));
            return;
        }
        match self.fs.open(ino.0, flags.0) {
            Ok(opened) => self.reply_open(ino.0, &opened, OpenReply::Open(reply)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.under_lease(|| self.fs.read(fh.0, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(err(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill_priv = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.under_lease(|| self.fs.write(fh.0, offset, data, kill_priv)) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self.under_lease(|| {
            self.fs.copy_file_range(
                fh_in.0,
                offset_in,
                fh_out.0,
                offset_out,
                len,
                unprivileged(req),
            )
        }) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.fs.flush(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The backing file registration goes first: while the filesystem
        // still counts this open, no new open can pick another replica as
        // the inode's backing one and then be handed this one's file.
        self.release_backing(fh.0);
        let res = self.fs.release(fh.0);
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.under_lease(|| self.fs.readdir(fh.0, offset)) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(e.ino), (i + 1) as u64, file_type(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.fs.fsyncdir(ino.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.under_lease(|| self.fs.setxattr(ino.0, name, value, flags)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr_reply(self.fs.getxattr(ino.0, name), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr_reply(self.fs.listxattr(ino.0), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.under_lease(|| self.fs.removexattr(ino.0, name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permissions are checked by the kernel (default_permissions); this
        // only answers whether the inode exists.
        match self.fs.getattr(ino.0, None) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let made = self
            .with_lease()
            .and_then(|()| self.fs.create(parent.0, name, mode, flags, owner(req)));
        match made {
            Ok((entry, opened)) => {
                let attr = file_attr(entry.ino, &entry.attr);
                let ttl = Self::ttl(self.entry_ttl, &entry.attr);
                let reply = OpenReply::Create(reply, ttl, attr);
                self.reply_open(entry.ino, &opened, reply)
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.under_lease(|| {
            self.fs
                .fallocate(fh.0, offset, length, mode, unprivileged(req))
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(err(e)),
        }
    }

    // What follows the filesystem does not support. fuser's defaults answer
    // the same errors but log a warning for every request, and some come
    // once per open of a file (Python's open() asks isatty, an ioctl): the
    // answers here are silent (DESIGN.md section 6).

    /// No ioctl is supported. ENOTTY is what an ioctl a file does not
    /// know gets (isatty() then says "not a terminal"); the kernel itself
    /// turns ENOSYS into ENOTTY, and asks again each time.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        tracing::trace!("ioctl {cmd:#x}: not supported");
        reply.error(FErrno::from_i32(libc::ENOTTY));
    }

    /// ENOSYS: the kernel stops asking and reports every file always
    /// readable and writable, which a regular file is.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        reply.error(FErrno::ENOSYS);
    }

    // Not sent by the kernel to this filesystem: locks stay local (no
    // FUSE_POSIX_LOCKS) and there is no block device (bmap). Answered
    // quietly should a kernel send them.

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        reply.error(FErrno::ENOSYS);
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(FErrno::ENOSYS);
    }

    /// A listing whose every entry (but `.` and `..`, which the kernel
    /// does not link) is a lookup, counted as the LOOKUP it replaces: the
    /// kernel forgets each one later. An entry the buffer has no room for
    /// is forgotten at once; one gone meanwhile is left out.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.under_lease(|| self.fs.readdir(fh.0, offset)) {
            Ok(e) => e,
            Err(e) => return reply.error(err(e)),
        };
        let mut added = 0;
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let next = (i + 1) as u64;
            let full = if e.name == "." || e.name == ".." {
                let attr = fuser::FileAttr {
                    ino: INodeNo(e.ino),
                    kind: file_type(e.kind),
                    perm: 0o755,
                    nlink: 2,
                    ..dot_attr()
                };
                reply.add(
                    INodeNo(e.ino),
                    next,
                    &e.name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                )
            } else {
                match self.fs.lookup(ino.0, &e.name) {
                    Ok(entry) => {
                        let full = reply.add(
                            INodeNo(entry.ino),
                            next,
                            &e.name,
                            &Self::ttl(self.entry_ttl, &entry.attr),
                            &file_attr(entry.ino, &entry.attr),
                            Generation(0),
                        );
                        if full {
                            self.fs.forget(entry.ino, 1);
                        }
                        full
                    }
                    // Removed since the listing was taken.
                    Err(e) if e == crate::errno::Errno::ENOENT => continue,
                    // What fits so far, or the error if nothing does.
                    Err(_) if added > 0 => break,
                    Err(e) => return reply.error(err(e)),
                }
            };
            if full {
                break;
            }
            added += 1;
        }
        reply.ok()
    }

    fn bmap(&self, _req: &Request, _ino: INodeNo, _blocksize: u32, _idx: u64, reply: ReplyBmap) {
        reply.error(FErrno::ENOSYS);
    }
}

/// open and create answer alike but for the entry that create adds.
enum OpenReply {
    Open(ReplyOpen),
    Create(ReplyCreate, Duration, fuser::FileAttr),
}

impl OpenReply {
    fn open_backing(&self, fd: &std::os::fd::OwnedFd) -> std::io::Result<BackingId> {
        match self {
            OpenReply::Open(r) => r.open_backing(fd),
            OpenReply::Create(r, ..) => r.open_backing(fd),
        }
    }

    fn passthrough(self, fh: FileHandle, flags: FopenFlags, id: &BackingId) {
        match self {
            OpenReply::Open(r) => r.opened_passthrough(fh, flags, id),
            OpenReply::Create(r, ttl, attr) => {
                r.created_passthrough(&ttl, &attr, Generation(0), fh, flags, id)
            }
        }
    }

    fn plain(self, fh: FileHandle, flags: FopenFlags) {
        match self {
            OpenReply::Open(r) => r.opened(fh, flags),
            OpenReply::Create(r, ttl, attr) => r.created(&ttl, &attr, Generation(0), fh, flags),
        }
    }
}

fn xattr_reply(r: crate::errno::Result<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(FErrno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(err(e)),
    }
}

/// Attributes for `.` and `..` in a READDIRPLUS reply: the kernel reads
/// only their type from the entry (it does not link them).
fn dot_attr() -> fuser::FileAttr {
    fuser::FileAttr {
        ino: INodeNo(1),
        size: 0,
        blocks: 0,
        atime: std::time::UNIX_EPOCH,
        mtime: std::time::UNIX_EPOCH,
        ctime: std::time::UNIX_EPOCH,
        crtime: std::time::UNIX_EPOCH,
        kind: fuser::FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
