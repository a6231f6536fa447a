//! Open files: open/create, read with fail-over, fanned-out writes, flush,
//! fsync, fallocate, lseek, release.
//!
//! A read-only open reads from one replica chosen by the read policy,
//! through FUSE passthrough when the kernel allows it. A writable open holds
//! an fd on every serving replica; each write goes to all of them in
//! parallel. Writes make mtimes differ by microseconds between replicas;
//! the first replica's mtime is copied to the others when the handle is
//! flushed, synced or released, so replicas end identical.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::fanout;
use super::handles::Mode;
use super::namespace::{Owner, settle_new_entry};
use super::{AUDIT, ChironFs, Entry, audit_inos};
use crate::errno::{Errno, Result};
use crate::replica::ops::{self, At, OMIT, fd_of};
use crate::replica::{Fd, Name, RelPath};

pub struct FileHandle {
    pub ino: u64,
    /// One fd per replica index; read-only handles hold just one.
    fds: Mutex<Vec<Option<Arc<Fd>>>>,
    reader: AtomicUsize,
    dirty: AtomicBool,
    mode: Mutex<Mode>,
    /// The intent mark this open-for-write session holds until release;
    /// set exactly for writable handles.
    session: Option<crate::replica::RelPath>,
    /// The flags a backing open of this handle uses (to open it on a
    /// replica that comes back while it is open).
    oflags: i32,
    /// A writable open the kernel put in passthrough mode: an mmap of it
    /// stores into this replica's file only (see `open`).
    exposed: Option<usize>,
    /// A write through it removed file capabilities already (`write`).
    caps_killed: AtomicBool,
    /// Held shared by each change through this open (from reading its fds
    /// to the end of the fan-out), exclusively by `join_unlinked` while it
    /// copies the file and gives the open a new fd: no change can then
    /// miss both the copy and the new fd. Taken before any path lock.
    gate: parking_lot::RwLock<()>,
}

impl FileHandle {
    pub fn fd(&self, replica: usize) -> Option<Arc<Fd>> {
        self.fds.lock().get(replica).cloned().flatten()
    }

    /// Lets go of the fd on `replica` (see `ChironFs::displace_fn`).
    pub(super) fn drop_fd(&self, replica: usize) -> Option<Arc<Fd>> {
        self.fds.lock().get_mut(replica).and_then(Option::take)
    }

    /// Held shared by a change through this open (see `gate`).
    pub(super) fn change_gate(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.gate.read()
    }

    pub fn reader(&self) -> usize {
        self.reader.load(Ordering::Relaxed)
    }

    pub fn is_writable(&self) -> bool {
        self.session.is_some()
    }

    /// The replica the kernel reads this open's backing file on, if it was
    /// answered with passthrough.
    pub fn kernel_backing(&self) -> Option<usize> {
        match *self.mode.lock() {
            Mode::Passthrough(p) | Mode::ShareBacking(p) => Some(p),
            Mode::Cached => None,
        }
    }

    /// Whether this open lets go of its fd on `replica` when the replica
    /// leaves service: every open but a read-only one in passthrough mode
    /// on it (the kernel reads that backing file without asking).
    pub(super) fn lets_go_of(&self, replica: usize) -> bool {
        self.is_writable() || *self.mode.lock() != Mode::Passthrough(replica)
    }

    pub fn mark_clean(&self) {
        self.dirty.store(false, Ordering::Relaxed);
    }
}

/// How the kernel should do I/O on a new handle.
pub enum IoMode {
    Cached,
    /// FOPEN_PASSTHROUGH to this backing fd (the inode's backing file).
    Passthrough(Arc<Fd>),
    /// FOPEN_PASSTHROUGH naming the inode's existing backing file, with
    /// FOPEN_DIRECT_IO so that reads and writes still come to the daemon.
    ShareBacking,
}

impl IoMode {
    fn of(mode: Mode, fds: &[Option<Arc<Fd>>]) -> Result<IoMode> {
        Ok(match mode {
            Mode::Cached => IoMode::Cached,
            Mode::ShareBacking(_) => IoMode::ShareBacking,
            Mode::Passthrough(p) => IoMode::Passthrough(fds[p].clone().ok_or(Errno::EIO)?),
        })
    }
}

pub struct Opened {
    pub fh: u64,
    pub io: IoMode,
    /// Let the kernel keep cached pages from an earlier open.
    pub keep_cache: bool,
}

/// The flags a backing open keeps from the application's: access mode,
/// truncation and sync semantics. O_APPEND is dropped on purpose: the
/// kernel sends explicit offsets, which must be the same on every replica.
fn backing_flags(flags: i32) -> i32 {
    flags & (libc::O_ACCMODE | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC)
}

impl ChironFs {
    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened> {
        self.open_inner(ino, flags).inspect_err(|e| {
            tracing::trace!(
                target: AUDIT,
                "open ino {ino} ({}) flags {flags:#o}: {e}",
                self.describe(ino)
            );
        })
    }

    fn open_inner(&self, ino: u64, flags: i32) -> Result<Opened> {
        let Some((ppath, name)) = self.locate(ino)? else {
            return Err(Errno::EISDIR);
        };
        let path = ppath.join(&name);
        let oflags = backing_flags(flags);
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writable {
            self.intend("open", std::slice::from_ref(&path))?;
            let opened = self.open_writable(ino, &ppath, &name, oflags);
            if opened.is_err() {
                self.release_intent(std::slice::from_ref(&path));
            }
            return opened;
        }
        let n = self.replicas.len();
        let mut fds: Vec<Option<Arc<Fd>>> = vec![None; n];
        let mut tried = Vec::new();
        let (r, fd) = loop {
            let r = self.choose_reader(&path, &tried).ok_or(Errno::EIO)?;
            let (p, n) = (ppath.clone(), name.clone());
            let opened = self.on_replica(r, move |rep| {
                ops::openat(fd_of(&rep.dir(&p)?), n.as_c(), oflags, 0).map(|fd| rep.hold(fd))
            });
            match opened {
                Ok(fd) => break (r, fd),
                Err(e) if self.is_failure(r, e) => {
                    self.fail(r, "open", &path, e);
                    tried.push(r);
                }
                Err(e) => {
                    tracing::trace!(target: AUDIT, "open {path} on r{r}: {e}");
                    return Err(e);
                }
            }
        };
        fds[r] = Some(Arc::new(fd));
        let want = self.passthrough().then_some(r);
        let mode = self.iomodes.open(ino, want, |i| self.serves(i, &path));
        let mut reader = r;
        if let Mode::Passthrough(p) = mode
            && p != r
        {
            // All passthrough opens of an inode share one backing replica.
            // On its own threads, under `replica_timeout` (it may hang).
            let (pp, nm) = (ppath.clone(), name.clone());
            let opened = self.on_replica(p, move |rep| {
                ops::openat(fd_of(&rep.dir(&pp)?), nm.as_c(), oflags, 0).map(|fd| rep.hold(fd))
            });
            match opened {
                Ok(fd) => {
                    fds[p] = Some(Arc::new(fd));
                    fds[r] = None;
                    reader = p;
                }
                Err(e) => {
                    self.iomodes.release(ino, mode);
                    if !self.is_failure(p, e) {
                        return Err(e);
                    }
                    // Out of service now: opened again without it (it
                    // serves no new passthrough open).
                    self.fail(p, "open", &path, e);
                    drop(fds);
                    return self.open_inner(ino, flags);
                }
            }
        }
        let io = IoMode::of(mode, &fds)?;
        let fh = self.new_handle(Spec {
            ino,
            fds,
            reader,
            mode,
            dirty: false,
            session: None,
            oflags,
            exposed: None,
        });
        // A file with several links: the kernel may know it by another
        // inode number too (src/DESIGN.md section 4), so pages cached
        // under this one are dropped at each open.
        let keep_cache = !self.inodes.read().has_links(ino);
        Ok(Opened { fh, io, keep_cache })
    }

    /// A writable open: an fd on every replica that receives mutations.
    /// The caller holds the session's intent mark.
    fn open_writable(&self, ino: u64, ppath: &RelPath, name: &Name, oflags: i32) -> Result<Opened> {
        let path = ppath.join(name);
        let (p, nm) = (ppath.clone(), name.clone());
        let done = self.mutate("open", &path, move |rep| {
            ops::openat(fd_of(&rep.dir(&p)?), nm.as_c(), oflags, 0).map(|fd| Arc::new(rep.hold(fd)))
        })?;
        let mut fds: Vec<Option<Arc<Fd>>> = vec![None; self.replicas.len()];
        for (i, fd) in done {
            fds[i] = Some(fd);
        }
        let mode = self.iomodes.open(ino, None, |_| true);
        let reader = match mode {
            // Reads go where an mmap of this open stores.
            Mode::ShareBacking(b) if fds[b].is_some() && self.serves(b, &path) => Some(b),
            _ => self
                .readers()
                .into_iter()
                .find(|&i| fds[i].is_some() && self.serves(i, &path)),
        };
        let Some(reader) = reader else {
            self.iomodes.release(ino, mode);
            return Err(Errno::EIO);
        };
        // The kernel sends an mmap of an open in passthrough mode to the
        // backing file itself: its stores reach that replica only. While it
        // is open every read of the file goes there (passthrough opens share
        // that backing file, and this open reads from it); when it is
        // released (after the last munmap: a mapping holds the file) the
        // file is copied from there to the others.
        let exposed = match mode {
            Mode::ShareBacking(b) if fds[b].is_some() && self.serves(b, &path) => Some(b),
            _ => None,
        };
        let io = IoMode::of(mode, &fds)?;
        let fh = self.new_handle(Spec {
            ino,
            fds,
            reader,
            mode,
            dirty: oflags & libc::O_TRUNC != 0,
            session: Some(path),
            oflags,
            exposed,
        });
        Ok(Opened {
            fh,
            io,
            keep_cache: false,
        })
    }

    /// Copies `ino`'s file from `backing`, where an mmap may have changed
    /// it alone, to every other replica in service (only the chunks that
    /// differ are written). A replica the copy fails on is marked.
    fn copy_exposed(&self, ino: u64, backing: usize) {
        let path = self.describe(ino);
        if self.locate(ino).ok().flatten().is_none() {
            return; // unlinked: no name left to copy to
        }
        let ctl = crate::resync::CopyControl::new(0)
            .with_chunk_guard(self.lock_fn(false, None))
            .with_made(self.made_fn())
            .verifying(true);
        let src = &self.replicas[backing];
        for i in self.writers().into_iter().filter(|&i| i != backing) {
            let dst = &self.replicas[i];
            match crate::resync::sync_path(src, dst, &path, crate::resync::SyncMode::Entries, &ctl)
            {
                Ok(_) => {}
                Err(e) if self.is_failure(i, e) => self.fail(i, "copy after mmap", &path, e),
                Err(e) => {
                    tracing::warn!("{path}: cannot copy what an mmap stored: {e}");
                    self.record_missed(&path, i);
                }
            }
        }
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        owner: Owner,
    ) -> Result<(Entry, Opened)> {
        let name = self.new_name(parent, name)?;
        let ppath = self.path(parent)?;
        let path = ppath.join(&name);
        let now = ops::now();
        // O_EXCL always: the kernel only creates after a negative lookup, and
        // an entry that exists after all must never be handed to the caller.
        let oflags = backing_flags(flags) | libc::O_CREAT | libc::O_EXCL;
        let n2 = name.clone();
        self.intend("open", std::slice::from_ref(&path))?;
        let done = self.mutate("create", &path, move |rep| {
            let dir = rep.dir(&ppath)?;
            let fd = ops::openat(fd_of(&dir), n2.as_c(), oflags, mode & 0o7777)?;
            let st = settle_new_entry(fd_of(&dir), &n2, owner, Some(mode), now)?;
            Ok((Arc::new(rep.hold(fd)), st))
        });
        let done = match done {
            Ok(d) if !d.is_empty() => d,
            Ok(_) => {
                self.release_intent(std::slice::from_ref(&path));
                return Err(Errno::EIO);
            }
            Err(e) => {
                self.release_intent(std::slice::from_ref(&path));
                return Err(e);
            }
        };
        let (r0, (_, st0)) = &done[0];
        let entry = self.remember(parent, &name, *r0, st0);
        let mut fds: Vec<Option<Arc<Fd>>> = vec![None; self.replicas.len()];
        for (i, (fd, _)) in done {
            fds[i] = Some(fd);
        }
        // Every replica the create succeeded on holds the same new, empty
        // file (O_EXCL): any of them can serve this handle's reads, even
        // one still marked for the path (an older file of that name) or
        // resyncing; its writes reach them all. Answering EIO here would
        // leave a file the application was told is not there.
        let Some(reader) = self
            .readers()
            .into_iter()
            .find(|&i| fds[i].is_some() && self.serves(i, &path))
            .or_else(|| fds.iter().position(Option::is_some))
        else {
            self.release_intent(std::slice::from_ref(&path));
            return Err(Errno::EIO);
        };
        let mode = self.iomodes.open(entry.ino, None, |_| true);
        let io = IoMode::of(mode, &fds)?;
        // Reopening must not create or truncate again.
        let reopen = oflags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
        let fh = self.new_handle(Spec {
            ino: entry.ino,
            fds,
            reader,
            mode,
            dirty: false,
            session: Some(path),
            oflags: reopen,
            exposed: None,
        });
        Ok((
            entry,
            Opened {
                fh,
                io,
                keep_cache: false,
            },
        ))
    }

    fn new_handle(&self, s: Spec) -> u64 {
        self.inodes.write().opened(s.ino);
        self.replicas[s.reader]
            .bound_handles
            .fetch_add(1, Ordering::Relaxed);
        if s.session.is_some() {
            self.writable_handles.fetch_add(1, Ordering::SeqCst);
        }
        let inos = audit_inos(&self.replicas, &s.fds);
        let (ino, writable, reader) = (s.ino, s.session.is_some(), s.reader);
        let fh = self.files.insert(FileHandle {
            ino: s.ino,
            fds: Mutex::new(s.fds),
            reader: AtomicUsize::new(s.reader),
            dirty: AtomicBool::new(s.dirty),
            mode: Mutex::new(s.mode),
            session: s.session,
            oflags: s.oflags,
            exposed: s.exposed,
            caps_killed: AtomicBool::new(false),
            gate: parking_lot::RwLock::new(()),
        });
        tracing::trace!(
            target: AUDIT,
            "open fh {fh} ino {ino} writable={writable} reader=r{reader} on {inos:?}"
        );
        fh
    }

    /// How many open files the kernel reads on replica `i` directly.
    pub(super) fn kernel_opens(&self, i: usize) -> u64 {
        self.files.all(|h| h.kernel_backing() == Some(i)).len() as u64
    }

    /// The adapter could not register the passthrough backing file; returns
    /// how the open should be answered instead.
    pub fn passthrough_refused(&self, fh: u64) {
        if let Some(h) = self.files.get(fh) {
            *h.mode.lock() = self.iomodes.passthrough_refused(h.ino);
        }
    }

    /// The replica a handle reads from, moved first to a serving one if
    /// its replica stopped serving: a handle never reads a replica that
    /// is out of service or behind.
    pub(super) fn serving_reader(&self, h: &FileHandle) -> Result<usize> {
        let r = h.reader();
        // Every read comes here: the path is built only if some replica
        // has stale paths.
        if self.replicas[r].is_serving()
            && (!self.marks.any_stale() || !self.marks.is_stale(r, &self.describe(h.ino)))
        {
            return Ok(r);
        }
        // Nowhere else to read it (an unlinked file no open reaches on a
        // serving replica): EIO, never what a replica that is behind holds.
        self.fail_over_reader(h, &[r])?;
        Ok(h.reader())
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.files.get(fh).ok_or(Errno::EBADF)?;
        let mut tried = Vec::new();
        loop {
            let (r, fd) = self.reader_fd(&h)?;
            let res = self.on_replica(r, move |_| {
                ops::pread_full(fd.as_fd(), size as usize, offset)
            });
            match res {
                Ok(data) => return Ok(data),
                Err(e) if self.is_failure(r, e) => {
                    self.fail(r, "read", &self.describe(h.ino), e);
                    tried.push(r);
                    self.fail_over_reader(&h, &tried)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves a handle's reads to another serving replica.
    /// The serving reader of `h` and its fd there. An open without one
    /// there (it let go of it when the replica left service, or a resync
    /// replaced its file there) gets one from `fail_over_reader`: on the
    /// replica the read policy picks, this one included (it serves the
    /// file's current name, so that name is the open's file there).
    pub(super) fn reader_fd(&self, h: &FileHandle) -> Result<(usize, Arc<Fd>)> {
        let r = self.serving_reader(h)?;
        if let Some(fd) = h.fd(r) {
            return Ok((r, fd));
        }
        self.fail_over_reader(h, &[])?;
        let r = h.reader();
        h.fd(r).map(|fd| (r, fd)).ok_or(Errno::EIO)
    }

    pub(super) fn fail_over_reader(&self, h: &FileHandle, tried: &[usize]) -> Result<()> {
        let path = self.describe(h.ino);
        let next = self.choose_reader(&path, tried).ok_or(Errno::EIO)?;
        if h.fd(next).is_none() {
            let fd = match self.locate(h.ino) {
                Ok(Some((ppath, name))) => {
                    // A writable open's fds serve its writes too.
                    let flags = if h.is_writable() {
                        h.oflags & !libc::O_TRUNC
                    } else {
                        libc::O_RDONLY
                    };
                    // On the replica's own threads, under `replica_timeout`.
                    let opened = self.on_replica(next, move |rep| {
                        ops::openat(fd_of(&rep.dir(&ppath)?), name.as_c(), flags, 0)
                            .map(|fd| rep.hold(fd))
                    });
                    match opened {
                        Ok(fd) => fd,
                        Err(e) if self.is_failure(next, e) => {
                            self.fail(next, "open", &path, e);
                            let tried: Vec<usize> = tried.iter().copied().chain([next]).collect();
                            return self.fail_over_reader(h, &tried);
                        }
                        // Gone there (unlinked behind a stale name): an I/O
                        // error for this open, never ENOENT on a read.
                        Err(e) => return Err(if e == Errno::ENOENT { Errno::EIO } else { e }),
                    }
                }
                // Unlinked: reopen what another open of the inode holds
                // there. None does: the file is on no serving replica any
                // more, an I/O error for this open (never ENOENT on a read).
                _ => self.reopen_held(h.ino, next).map_err(|_| Errno::EIO)?,
            };
            let mut fds = h.fds.lock();
            // Left service meanwhile (`forget_fds` may have run already):
            // not installed, another replica is tried.
            if !self.replicas[next].is_writable() {
                drop(fds);
                drop(fd);
                let tried: Vec<usize> = tried.iter().copied().chain([next]).collect();
                return self.fail_over_reader(h, &tried);
            }
            if fds[next].is_none() {
                fds[next] = Some(Arc::new(fd));
            }
        }
        let old = h.reader.swap(next, Ordering::Relaxed);
        self.replicas[old]
            .bound_handles
            .fetch_sub(1, Ordering::Relaxed);
        self.replicas[next]
            .bound_handles
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The file `name` in `parent` may be about to lose its last name
    /// (unlink, rename over it): every open of it gets an fd on every
    /// replica that receives changes, while the name still reaches it
    /// there, so that it can fail over (or write everywhere) once nothing
    /// can be opened by name.
    pub(super) fn pin_open(&self, parent: u64, name: &Name) {
        let Some(ino) = self.inodes.read().child(parent, name) else {
            return;
        };
        let held = self.files.all(|h| h.ino == ino);
        if held.is_empty() {
            return;
        }
        let Ok(ppath) = self.path(parent) else {
            return;
        };
        let path = ppath.join(name);
        // A replica behind for the path may hold another file or an older
        // copy there (an open made while it was behind has its fd on that):
        // every open gets a nameless copy of the current file there instead.
        let (behind, targets): (Vec<usize>, Vec<usize>) = self
            .writers()
            .into_iter()
            .partition(|&i| self.marked_at_or_above(i, &path));
        let targets: Vec<usize> = targets
            .into_iter()
            .filter(|&i| held.iter().any(|h| h.fd(i).is_none()))
            .collect();
        if !behind.is_empty() {
            self.pin_copies(&held, &path, &behind);
        }
        if targets.is_empty() {
            return;
        }
        let flags: Vec<i32> = held
            .iter()
            .map(|h| {
                if h.is_writable() {
                    h.oflags & !libc::O_TRUNC
                } else {
                    libc::O_RDONLY
                }
            })
            .collect();
        // On each replica's own threads, under `replica_timeout`: a hung
        // replica must not hold up the FUSE thread (it is failed by the
        // operation that follows, which reaches it too). Only if it is the
        // same kind of file there (the inode numbers differ between
        // replicas); an open that fails leaves that handle without an fd.
        let name2 = name.clone();
        let opened = fanout::run(
            &self.replicas,
            &targets,
            self.opts.replica_timeout,
            fanout::Spread::Light,
            move |rep| {
                let dir = rep.dir(&ppath)?;
                Ok(flags
                    .iter()
                    .map(|&f| {
                        ops::openat(fd_of(&dir), name2.as_c(), f | libc::O_NOFOLLOW, 0)
                            .ok()
                            .map(|fd| Arc::new(rep.hold(fd)))
                    })
                    .collect::<Vec<_>>())
            },
        );
        for (i, fds) in opened {
            let Ok(fds) = fds else { continue };
            for (h, fd) in held.iter().zip(fds) {
                let mut slot = h.fds.lock();
                // Failed meanwhile: `forget_fds` may have run already, and
                // an fd installed now would outlive the failure (writes
                // to a stale inode once the replica is back).
                if slot[i].is_none() && self.replicas[i].is_writable() {
                    slot[i] = fd;
                } else if let Some(fd) = fd {
                    drop(fd);
                }
            }
        }
    }

    /// The writable opens whose file is `ino` or, for a directory, lies
    /// beneath `path` (its name as the inode table has it now): the opens
    /// whose changes mark a path that a rename or unlink of `path` changes.
    pub(super) fn opens_at(&self, ino: Option<u64>, path: &RelPath) -> Vec<Arc<FileHandle>> {
        let mut prefix = path.as_bytes().to_vec();
        prefix.push(b'/');
        self.files
            .all(|h| h.is_writable())
            .into_iter()
            .filter(|h| {
                Some(h.ino) == ino || {
                    let p = self.describe(h.ino);
                    p.as_bytes().starts_with(&prefix)
                }
            })
            .collect()
    }

    /// For `pin_open`: opens of the file at `path` (about to lose its last
    /// name) get, on the replicas in `behind` (marked for the path: what
    /// they have there, and an fd an open took on it, may be an older
    /// file), a nameless copy of it made from a replica not behind, with their
    /// changes and the path's held off meanwhile (gates, then the path's
    /// lock). On each replica's own threads, under `replica_timeout`; a
    /// copy that fails leaves those opens without an fd there (their
    /// changes mark it; `join_unlinked` tries again when it is resynced).
    fn pin_copies(&self, held: &[Arc<FileHandle>], path: &RelPath, behind: &[usize]) {
        let mut held = held.to_vec();
        held.sort_by_key(|h| !h.is_writable());
        // The caller (unlink, rename) holds the opens' gates.
        let locked = self.lock_for_change("open", std::slice::from_ref(path), false);
        let behind: Vec<usize> = behind
            .iter()
            .copied()
            .filter(|i| !locked.stuck.contains(i) && self.replicas[*i].is_writable())
            .collect();
        let behind = &behind[..];
        let Some((s, src)) = held.iter().find_map(|h| {
            self.readers()
                .into_iter()
                .filter(|&s| !self.marked_at_or_above(s, path))
                .find_map(|s| h.fd(s).map(|fd| (s, fd)))
        }) else {
            return;
        };
        // Other names keep it: what a replica behind has under them is
        // copied by name (a nameless copy would take the open's writes
        // away from that inode there).
        if self.nlink_on(s, &src) != Ok(1) {
            return;
        }
        let copies = fanout::run(
            &self.replicas,
            behind,
            self.opts.replica_timeout,
            self.copy_spread(s),
            move |rep| nameless_copy(rep, &src).map(|fd| Arc::new(rep.hold(fd))),
        );
        for (i, fd) in copies {
            let fd = match fd {
                Ok(fd) => fd,
                Err(e) => {
                    // What the opens hold there is an older file (the
                    // replica is behind for the path): they let go of it,
                    // so their writes mark it and reads fail over.
                    tracing::debug!("{path}: no copy of an open file on a replica behind: {e}");
                    for h in &held {
                        if let Some(old) = h.drop_fd(i) {
                            drop(old);
                        }
                    }
                    continue;
                }
            };
            tracing::trace!(
                target: AUDIT,
                "pin {path} r{i}: nameless copy for {:?}",
                held.iter().map(|h| h.ino).collect::<Vec<_>>()
            );
            for h in &held {
                let old = {
                    let mut fds = h.fds.lock();
                    // Failed meanwhile: `forget_fds` may have run already.
                    if self.replicas[i].is_writable() {
                        fds[i].replace(fd.clone())
                    } else {
                        None
                    }
                };
                if let Some(old) = old {
                    drop(old);
                }
            }
            // The last reference, if no open took it: closed on the
            // replica's threads (it may hang).
            drop(fd);
        }
    }

    /// A new read-only fd of inode `ino` on `replica`, through an fd another
    /// open of it holds there (how an unlinked file is reached).
    /// The link count of `fd`, a file of replica `s`, asked on that
    /// replica's threads under `replica_timeout` (callers are FUSE threads,
    /// or hold gates and locks).
    fn nlink_on(&self, s: usize, fd: &Arc<Fd>) -> Result<u64> {
        let fd = fd.clone();
        self.on_replica(s, move |_| ops::fstat(fd.as_fd()).map(|st| st.st_nlink))
    }

    /// How a nameless copy from replica `s` runs: it reads the source, so
    /// if the source may hang, every target runs on its own pool.
    fn copy_spread(&self, s: usize) -> fanout::Spread {
        if self.replicas[s].inline {
            fanout::Spread::Heavy
        } else {
            fanout::Spread::Pooled
        }
    }

    /// On the replica's own threads, under `replica_timeout`.
    fn reopen_held(&self, ino: u64, replica: usize) -> Result<Fd> {
        let held = self
            .files
            .all(|h| h.ino == ino)
            .into_iter()
            .find_map(|h| h.fd(replica))
            .ok_or(Errno::ENOENT)?;
        self.on_replica(replica, move |rep| {
            let link = std::ffi::CString::new(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&*held)
            ))
            .map_err(|_| Errno::EINVAL)?;
            let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC;
            let fd = nix::fcntl::open(link.as_c_str(), flags, nix::sys::stat::Mode::empty())?;
            Ok(rep.hold(fd))
        })
    }

    /// The serving replicas this handle can write to, with their fds.
    fn write_fds(&self, h: &FileHandle) -> (Vec<usize>, Vec<Option<Arc<Fd>>>) {
        let fds = h.fds.lock().clone();
        let targets = self
            .writers()
            .into_iter()
            .filter(|&i| fds[i].is_some())
            .collect();
        (targets, fds)
    }

    /// Runs `f` with the handle's fd on every replica that receives
    /// mutations, as one mutation. A replica the handle has no fd on (it
    /// was out when the file was opened) misses it and is marked.
    fn on_handle<T, F>(
        &self,
        op: &'static str,
        h: &Arc<FileHandle>,
        spread: fanout::Spread,
        f: F,
    ) -> Result<Vec<(usize, T)>>
    where
        T: Send + 'static,
        F: Fn(&OwnedFd) -> Result<T> + Send + Sync + 'static,
    {
        let _gate = h.gate.read();
        let (targets, fds) = self.write_fds(h);
        if targets.is_empty() {
            return Err(Errno::EIO);
        }
        tracing::trace!(target: AUDIT, "{op} through ino {} on {:?}", h.ino, audit_inos(&self.replicas, &fds));
        // The fd each replica's call uses is the handle's when the call
        // runs, under the path's lock, not the one seen before it: a copy
        // the change waited for may have replaced the file there (the fd
        // then given by `join_handles`) or let go of it (`displace_fn`:
        // none, so the replica misses the change and is marked). Checker
        // seed 6: a write that waited for a copy wrote the old inode.
        let h2 = h.clone();
        self.mutate_on(
            op,
            &self.describe(h.ino),
            None,
            &targets,
            self.opts.needed,
            spread,
            move |rep| h2.fd(rep.index).map_or(Err(Errno::EBADF), |fd| f(&fd)),
        )
    }

    /// `kill_priv`: the kernel asks that set-user-ID (and set-group-ID
    /// with group execute) bits and file capabilities be removed, as any
    /// write by an unprivileged user does (FUSE_WRITE_KILL_SUIDGID: the
    /// kernel leaves this to the daemon, FUSE_HANDLE_KILLPRIV_V2). The first
    /// write through an open removes file capabilities whoever writes.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], kill_priv: bool) -> Result<u32> {
        let h = self.files.get(fh).ok_or(Errno::EBADF)?;
        let first = !h.caps_killed.load(Ordering::Relaxed);
        let data: Arc<[u8]> = data.into();
        let len = data.len();
        // Every replica gets the same mtime with the write itself, so the
        // replicas agree even before the handle is flushed.
        let now = ops::now();
        h.dirty.store(true, Ordering::Relaxed);
        let spread = if len >= fanout::HEAVY_WRITE {
            fanout::Spread::Heavy
        } else {
            fanout::Spread::Light
        };
        // The kernel flags every write of a caller without CAP_FSETID,
        // whatever the mode: one fstat each (a chmod through another host
        // is seen at once); capabilities once per open (the kernel removes
        // those set through this mount itself: a security xattr set makes
        // it look again).
        self.on_handle("write", &h, spread, move |fd| {
            if kill_priv {
                kill_suidgid(At::Fd(fd.as_fd()))?;
            }
            if first {
                kill_caps(At::Fd(fd.as_fd()))?;
            }
            let n = ops::pwrite_all(fd.as_fd(), &data, offset)?;
            At::Fd(fd.as_fd()).utimens(&[OMIT, now])?;
            Ok(n)
        })?;
        h.caps_killed.store(true, Ordering::Relaxed);
        Ok(len as u32)
    }

    /// copy_file_range(2) inside the mount: the same copy on every replica
    /// that takes the destination's writes, each from its own copy of the
    /// source (with the same failure marking as a write), so a large `cp`
    /// never passes through the daemon. Every one of those replicas must
    /// serve the source's path (hold its every change); otherwise
    /// EOPNOTSUPP, and the kernel copies through read and write instead.
    /// `kill_priv`: the caller is unprivileged (see `write`).
    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        kill_priv: bool,
    ) -> Result<u32> {
        let h_in = self.files.get(fh_in).ok_or(Errno::EBADF)?;
        let h_out = self.files.get(fh_out).ok_or(Errno::EBADF)?;
        if !h_out.is_writable() {
            return Err(Errno::EBADF);
        }
        // The reply counts bytes in 32 bits; the kernel asks again for more.
        let len = len.min(1 << 30);
        // As `on_handle`: the destination's gate held, and each handle's
        // fd taken when the replica's call runs, under the path's lock.
        // (Only the destination's gate: two gates taken in either order
        // could deadlock with `join_unlinked` waiting on both.)
        let _gate = h_out.gate.read();
        let (targets, _) = self.write_fds(&h_out);
        if targets.is_empty() {
            return Err(Errno::EIO);
        }
        let in_path = self.describe(h_in.ino);
        let in_loc = self.locate(h_in.ino)?;
        let reachable = |i: usize| h_in.fd(i).is_some() || in_loc.is_some();
        if !targets
            .iter()
            .all(|&i| self.serves(i, &in_path) && reachable(i))
        {
            return Err(Errno(libc::EOPNOTSUPP));
        }
        let out_path = self.describe(h_out.ino);
        let now = ops::now();
        h_out.dirty.store(true, Ordering::Relaxed);
        let (h_in2, h_out2) = (h_in.clone(), h_out.clone());
        let done = self.mutate_on(
            "copy_file_range",
            &out_path,
            None,
            &targets,
            self.opts.needed,
            fanout::Spread::Heavy,
            move |rep| {
                let out = h_out2.fd(rep.index).ok_or(Errno::EBADF)?;
                let opened;
                let in_fd = h_in2.fd(rep.index);
                let src = match (&in_fd, &in_loc) {
                    (Some(fd), _) => &**fd,
                    (None, Some((pp, nm))) => {
                        opened = ops::openat(
                            fd_of(&rep.dir(pp)?),
                            nm.as_c(),
                            libc::O_RDONLY | libc::O_NOFOLLOW,
                            0,
                        )?;
                        &opened
                    }
                    (None, None) => return Err(Errno::EBADF),
                };
                if kill_priv {
                    kill_privileges(&out)?;
                } else {
                    kill_caps(At::Fd(out.as_fd()))?;
                }
                let n = ops::copy_range(src.as_fd(), off_in, out.as_fd(), off_out, len)?;
                At::Fd(out.as_fd()).utimens(&[OMIT, now])?;
                Ok(n)
            },
        )?;
        let Some(&(_, n)) = done.first().map(|_| self.answer_of(&done, &out_path)) else {
            return Err(Errno::EIO);
        };
        // Equal sources copy equal counts; a replica that copied another
        // count holds other bytes now.
        for &(i, m) in &done {
            if m != n {
                tracing::warn!(
                    "{out_path}: copy_file_range copied {m} bytes on replica {i}, {n} elsewhere"
                );
                self.record_missed(&out_path, i);
            }
        }
        Ok(n as u32)
    }

    /// Gives every replica the first replica's mtime after writes.
    fn settle_mtime(&self, h: &Arc<FileHandle>) -> Result<()> {
        if !h.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        // As `on_handle`: the gate held, each fd taken when its call runs.
        let _gate = h.gate.read();
        let (targets, fds) = self.write_fds(h);
        let Some(&first) = targets.first() else {
            return Ok(());
        };
        if targets.len() == 1 {
            return Ok(());
        }
        let Some(fd) = fds[first].clone() else {
            return Ok(());
        };
        // Settles of one file run one at a time, each reading the mtime
        // when its turn comes: two handles released together could
        // otherwise copy an older mtime after a newer one, leaving the
        // first replica different from the others (checker seed 4).
        let _turn = self.settling[(h.ino % self.settling.len() as u64) as usize].lock();
        // On the replica's own threads if it has them: it may hang. A write
        // through another request may still be under way (a flush or a
        // release of this handle can overlap it): the first replica's mtime
        // is read again after the others were given it, and given again if
        // that write changed it meanwhile, so the settle never leaves the
        // others an mtime older than the first replica's.
        let path = self.describe(h.ino);
        let mut last: Option<(i64, i64)> = None;
        for _ in 0..4 {
            let fd = fd.clone();
            let st = self.on_replica(first, move |_| ops::fstat(fd.as_fd()))?;
            let seen = (st.st_mtime, st.st_mtime_nsec);
            if last == Some(seen) {
                break;
            }
            last = Some(seen);
            let mtime = libc::timespec {
                tv_sec: st.st_mtime,
                tv_nsec: st.st_mtime_nsec,
            };
            let h2 = h.clone();
            // Copying a timestamp is housekeeping: one success is enough.
            let light = fanout::Spread::Light;
            self.mutate_on(
                "settle-mtime",
                &path,
                None,
                &targets,
                1,
                light,
                move |rep| {
                    if rep.index == first {
                        return Ok(());
                    }
                    let fd = h2.fd(rep.index).ok_or(Errno::EBADF)?;
                    At::Fd(fd.as_fd()).utimens(&[OMIT, mtime])
                },
            )?;
        }
        Ok(())
    }

    pub fn flush(&self, fh: u64) -> Result<()> {
        let h = self.files.get(fh).ok_or(Errno::EBADF)?;
        self.settle_mtime(&h)
    }

    /// Syncs the file on every replica that receives mutations, through
    /// any handle: a read-only one (`sync FILE`) opens it there.
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let h = self.files.get(fh).ok_or(Errno::EBADF)?;
        self.settle_mtime(&h)?;
        // The marks describing this file reach the disk before its data does.
        self.sync_marks()?;
        if h.is_writable() {
            self.on_handle("fsync", &h, fanout::Spread::Heavy, move |fd| {
                ops::fsync(fd.as_fd(), datasync)
            })?;
            return Ok(());
        }
        let fds = h.fds.lock().clone();
        // Unlinked: only what this open holds can be synced (whatever the
        // state of its replicas: a sync changes nothing).
        let Ok(loc) = self.locate(h.ino) else {
            let held: Vec<usize> = (0..fds.len()).filter(|&i| fds[i].is_some()).collect();
            let results = super::fanout::run(
                &self.replicas,
                &held,
                self.opts.replica_timeout,
                super::fanout::Spread::Heavy,
                move |rep| {
                    let fd = fds[rep.index].as_deref().ok_or(Errno::EBADF)?;
                    ops::fsync(fd.as_fd(), datasync)
                },
            );
            // Synced where it could be; a replica that failed to is out of
            // service already, or is failed now.
            let mut synced = false;
            for (i, r) in results {
                match r {
                    Ok(()) => synced = true,
                    Err(e) if self.is_failure(i, e) => self.fail(i, "fsync", &RelPath::root(), e),
                    Err(e) => return Err(e),
                }
            }
            return if synced { Ok(()) } else { Err(Errno::EIO) };
        };
        let path = self.describe(h.ino);
        self.mutate("fsync", &path, move |rep| {
            let fd = match (&fds[rep.index], &loc) {
                (Some(fd), _) => fd.clone(),
                (None, Some((ppath, name))) => Arc::new(rep.hold(ops::openat(
                    fd_of(&rep.dir(ppath)?),
                    name.as_c(),
                    libc::O_RDONLY | libc::O_NOFOLLOW,
                    0,
                )?)),
                (None, None) => return Err(Errno::EBADF),
            };
            ops::fsync(fd.as_fd(), datasync)
        })?;
        Ok(())
    }

    /// `kill_priv`: the caller is unprivileged (see `write`).
    pub fn fallocate(
        &self,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
        kill_priv: bool,
    ) -> Result<()> {
        let h = self.files.get(fh).ok_or(Errno::EBADF)?;
        h.dirty.store(true, Ordering::Relaxed);
        self.on_handle("fallocate", &h, fanout::Spread::Heavy, move |fd| {
            if kill_priv {
                kill_privileges(fd)?;
            } else {
                kill_caps(At::Fd(fd.as_fd()))?;
            }
            ops::fallocate(fd.as_fd(), mode, offset, len)
        })?;
        Ok(())
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.files.get(fh).ok_or(Errno::EBADF)?;
        let (r, fd) = self.reader_fd(&h)?;
        self.on_replica(r, move |_| ops::lseek(fd.as_fd(), offset, whence))
    }

    pub fn release(&self, fh: u64) -> Result<()> {
        let h = self.files.remove(fh).ok_or(Errno::EBADF)?;
        tracing::trace!(target: AUDIT, "release fh {fh} ino {}", h.ino);
        if let Some(b) = h.exposed
            && self.replicas[b].is_writable()
        {
            // What an mmap stored is on `b` alone: copy it to the others,
            // before the inode may leave passthrough mode (and reads go
            // elsewhere).
            self.copy_exposed(h.ino, b);
        }
        let settled = self.settle_mtime(&h);
        let mode = *h.mode.lock();
        self.iomodes.release(h.ino, mode);
        self.replicas[h.reader()]
            .bound_handles
            .fetch_sub(1, Ordering::Relaxed);
        self.inodes.write().closed(h.ino);
        if let Some(s) = &h.session {
            self.writable_handles.fetch_sub(1, Ordering::SeqCst);
            self.release_intent(std::slice::from_ref(s));
        }
        // The handle's last reference may be an in-flight call's; its fds
        // are let go of now (a pooled replica's are closed on its own
        // threads, see `replica::Fd`).
        let fds = {
            let mut g = h.fds.lock();
            let n = g.len();
            std::mem::replace(&mut *g, vec![None; n])
        };
        drop(fds);
        settled?;
        Ok(())
    }

    /// Replica `replica` left service: opens drop their fds on it (what
    /// they point to may be replaced or moved by the time it is back, and
    /// an unlinked file there misses every write made meanwhile; a resync
    /// cannot reach it by name). Writable opens get a fresh fd from
    /// `join_handles` or `join_unlinked`; a read-only one fails over at its
    /// next read. Not a read-only open's passthrough backing file: the
    /// kernel reads it without asking (src/DESIGN.md section 4).
    pub(super) fn forget_fds(&self, replica: usize) {
        for h in self
            .files
            .all(|h| h.fd(replica).is_some() && h.lets_go_of(replica))
        {
            drop(h.drop_fd(replica));
        }
    }

    /// Gives writable handles open on `path` that lack an fd on `replica`
    /// (they were opened while it was out) one there, so their later
    /// writes reach it. Called by the resync, under the path's lock, after
    /// the file was copied to `replica`. Returns whether a handle of `path`
    /// could not be given one (the mark stays).
    pub(super) fn join_handles(&self, path: &RelPath, replica: usize, src: usize) -> bool {
        if self.writable_handles.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let mut held_back = false;
        for h in self.files.all(|h| h.is_writable()) {
            if self.describe(h.ino) != *path {
                continue;
            }
            let Ok(Some((ppath, name))) = self.locate(h.ino) else {
                continue;
            };
            // The path on `replica` was just copied from `src`: it is this
            // open's file only if the path on `src` is the file this open
            // holds there. Every syscall on a replica runs on its own
            // threads under `replica_timeout`: the resync holds the path's
            // lock meanwhile, and a hung replica must not hold up every
            // change of the path with it (checker seed 4: a join on a hung
            // replica stalled the clients for the whole hang).
            let Some(held_src) = h.fd(src) else {
                held_back = true;
                continue;
            };
            let (pp, nm) = (ppath.clone(), name.clone());
            let same_on_src = self.on_replica(src, move |rep| {
                let a = ops::stat_at(fd_of(&rep.dir(&pp)?), nm.as_c())?;
                let b = ops::fstat(held_src.as_fd())?;
                Ok((a.st_dev, a.st_ino) == (b.st_dev, b.st_ino))
            });
            if !matches!(same_on_src, Ok(true)) {
                held_back = true;
                continue;
            }
            let held = h.fd(replica);
            let oflags = h.oflags & !libc::O_TRUNC;
            let (pp, nm, old) = (ppath.clone(), name.clone(), held.clone());
            let joined = self.on_replica(replica, move |rep| {
                let dir = rep.dir(&pp)?;
                if let Some(fd) = &old {
                    // Still the file at the path there (not one the
                    // resync replaced): kept.
                    let now = ops::stat_at(fd_of(&dir), nm.as_c());
                    let held = ops::fstat(fd.as_fd());
                    if let (Ok(a), Ok(b)) = (now, held)
                        && (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
                    {
                        return Ok(None);
                    }
                }
                ops::openat(fd_of(&dir), nm.as_c(), oflags, 0)
                    .map(|fd| Some(Arc::new(rep.hold(fd))))
            });
            let rep = &self.replicas[replica];
            match joined {
                Ok(None) => {}
                Ok(Some(fd)) => {
                    let old = {
                        let mut fds = h.fds.lock();
                        let same = match (&fds[replica], &held) {
                            (Some(now), Some(was)) => Arc::ptr_eq(now, was),
                            (None, None) => true,
                            _ => false,
                        };
                        // Changed meanwhile (the replica left service and
                        // `forget_fds` took it), or out of service now
                        // (`fail` marks it before `forget_fds`, so one of
                        // the two sees the other): left as it is.
                        if same && rep.is_writable() {
                            // An fd on another inode than the path's there
                            // (the resync replaced the file at the path, a
                            // name linked to a first copy made anew): what
                            // was written through it since did not reach
                            // the file, so the mark stays and the next pass
                            // copies the path again (checker seed 10).
                            held_back |= held.is_some();
                            let old = fds[replica].replace(fd.clone());
                            tracing::trace!(
                                target: AUDIT,
                                "join {path} ino {} r{replica}: {:?}",
                                h.ino,
                                audit_inos(&self.replicas, &fds)
                            );
                            old
                        } else {
                            held_back = true;
                            Some(fd)
                        }
                    };
                    if let Some(old) = old {
                        drop(old);
                    }
                }
                Err(e) => {
                    tracing::debug!(
                        "cannot open {path} on a returning replica for a held handle: {e}"
                    );
                    // Whether the fd it holds there is the file's is not
                    // known: its writes skip the replica and mark the path.
                    if let Some(old) = h.drop_fd(replica) {
                        drop(old);
                    }
                    if self.is_failure(replica, e) {
                        self.fail(replica, "open", path, e);
                    }
                    held_back = true;
                }
            }
        }
        held_back
    }
}

impl ChironFs {
    /// Gives open files that lost their last name, and have no fd on
    /// `replica`, a nameless copy there (DESIGN.md section 5, "Open
    /// unlinked files"). They were unlinked while `replica` was out or
    /// behind for their path: the resync copies by name and cannot reach
    /// them, yet once `replica` serves, the replicas their fds are on may
    /// leave service and the open must still read and write its file.
    /// Called by the resync once the replica's marks are copied, before it
    /// is declared in sync. Holds the opens' gates (no change through them
    /// runs between the copy and the new fd, whatever path it locked) and
    /// the root's lock (the path of an unlinked file). An open whose
    /// file no serving replica holds stays as it is (it gets EIO once its
    /// last fd's replica leaves service).
    pub(super) fn join_unlinked(&self, replica: usize) -> Result<()> {
        let orphans = |s: &Self| {
            let mut v: Vec<u64> = s
                .files
                .all(|h| h.fd(replica).is_none())
                .into_iter()
                .map(|h| h.ino)
                .filter(|&ino| s.path(ino).is_err())
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        for ino in orphans(self) {
            let mut held = self.files.all(|h| h.ino == ino);
            // Writable opens first: their fds are dropped when a replica
            // leaves service, so one on a serving replica is current.
            held.sort_by_key(|h| !h.is_writable());
            // Every change through these opens waits (gates before the
            // lock, as a change takes them).
            let _gates = hold_gates(&held);
            let _g = self.lock_for_change("resync", &[RelPath::root()], false);
            let rep = &self.replicas[replica];
            if !rep.is_writable() || held.iter().all(|h| h.fd(replica).is_some()) {
                continue;
            }
            let Some((s, src)) = held.iter().find_map(|h| {
                (0..self.replicas.len())
                    .filter(|&s| s != replica && self.replicas[s].is_serving())
                    .find_map(|s| h.fd(s).map(|fd| (s, fd)))
            }) else {
                continue;
            };
            // A name the inode table never learnt (a hard link) still
            // reaches it: the copy by name covers it.
            if self.nlink_on(s, &src) != Ok(0) {
                continue;
            }
            // On the replica's own threads, under `replica_timeout`: the
            // gates held meanwhile stop every change through these opens.
            let copied = fanout::run(
                &self.replicas,
                &[replica],
                self.opts.replica_timeout,
                self.copy_spread(s),
                move |rep| nameless_copy(rep, &src).map(|fd| Arc::new(rep.hold(fd))),
            )
            .pop()
            .map_or(Err(Errno::EIO), |(_, r)| r);
            let fd = match copied {
                Ok(fd) => fd,
                Err(e) if self.is_failure(replica, e) => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        "replica {}: cannot copy an open unlinked file there: {e}",
                        rep.spec.path.display()
                    );
                    continue;
                }
            };
            tracing::trace!(
                target: AUDIT,
                "unlinked r{replica}: nameless copy for {:?}",
                held.iter().map(|h| h.ino).collect::<Vec<_>>()
            );
            for h in &held {
                let mut fds = h.fds.lock();
                if fds[replica].is_none() {
                    fds[replica] = Some(fd.clone());
                }
            }
            // Left service meanwhile: its fds go, as `forget_fds` does.
            if !rep.is_writable() {
                for h in held.iter().filter(|h| h.lets_go_of(replica)) {
                    if let Some(fd) = h.drop_fd(replica) {
                        drop(fd);
                    }
                }
            }
        }
        Ok(())
    }
}

/// A new file with no name on `rep` holding what `src` holds (content,
/// owner, mode, xattrs, times): O_TMPFILE at the replica's root, or, where
/// the filesystem has none, a file made and unlinked at once in the
/// replica's internal directory.
fn nameless_copy(rep: &crate::replica::Replica, src: &OwnedFd) -> Result<OwnedFd> {
    let st = ops::fstat(src.as_fd())?;
    let root = rep.dir(&RelPath::root())?;
    let fd = match ops::openat(fd_of(&root), c".", libc::O_TMPFILE | libc::O_RDWR, 0o600) {
        Ok(fd) => fd,
        Err(e) if matches!(e.0, libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL) => {
            let internal =
                std::ffi::CString::new(crate::replica::INTERNAL_NAME).map_err(|_| Errno::EIO)?;
            let dir = ops::openat(
                fd_of(&root),
                &internal,
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )?;
            let name =
                std::ffi::CString::new(format!("unlinked-{}-{}", std::process::id(), st.st_ino))
                    .map_err(|_| Errno::EIO)?;
            let fd = ops::openat(
                fd_of(&dir),
                &name,
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
                0o600,
            )?;
            ops::unlinkat(fd_of(&dir), &name, 0)?;
            fd
        }
        Err(e) => return Err(e),
    };
    ops::copy_range(src.as_fd(), 0, fd.as_fd(), 0, st.st_size as u64)?;
    let dst = At::Fd(fd.as_fd());
    if let Err(e) = crate::resync::attrs::copy_attrs(At::Fd(src.as_fd()), &st, dst) {
        // Some filesystems cannot list the xattrs of a file with no name
        // (a FUSE one resolves the inode by path): owner, mode and times
        // still follow.
        tracing::debug!("xattrs of an open unlinked file not copied: {e}");
        dst.chown(st.st_uid, st.st_gid)?;
        dst.chmod(st.st_mode & 0o7777)?;
        dst.utimens(&crate::resync::attrs::times_of(&st))?;
    }
    Ok(fd)
}

/// Holds the gates of `opens` (see [`FileHandle::gate`]): no change
/// through them runs until the guards are dropped. Taken before any path
/// lock.
/// Always in one order (by address), each once: two callers holding
/// overlapping sets never wait on each other in a cycle.
pub(super) fn hold_gates(opens: &[Arc<FileHandle>]) -> Vec<parking_lot::RwLockWriteGuard<'_, ()>> {
    let mut order: Vec<&Arc<FileHandle>> = opens.iter().collect();
    order.sort_by_key(|h| Arc::as_ptr(h) as usize);
    order.dedup_by_key(|h| Arc::as_ptr(h) as usize);
    order.into_iter().map(|h| h.gate.write()).collect()
}

/// What a new handle holds (see [`FileHandle`]).
struct Spec {
    ino: u64,
    fds: Vec<Option<Arc<Fd>>>,
    reader: usize,
    mode: Mode,
    dirty: bool,
    session: Option<RelPath>,
    oflags: i32,
    exposed: Option<usize>,
}

/// Removes set-user-ID, set-group-ID (when group-executable) and the
/// file capability attribute from an open file, as the kernel does when an
/// unprivileged user writes to it.
fn kill_privileges(fd: &OwnedFd) -> Result<()> {
    let at = At::Fd(fd.as_fd());
    kill_suidgid(at)?;
    kill_caps(at)
}

/// Removes set-user-ID and, when group-executable, set-group-ID, as the
/// kernel does when an unprivileged user changes a file's content. Best
/// effort where the file cannot be reached any more (see `gone`).
pub(super) fn kill_suidgid(at: At) -> Result<()> {
    let st = match at.stat() {
        Err(e) if gone(e) => return Ok(()),
        r => r?,
    };
    let mut kill = libc::S_ISUID;
    if st.st_mode & libc::S_IXGRP != 0 {
        kill |= libc::S_ISGID;
    }
    if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_mode & kill != 0 {
        match at.chmod(st.st_mode & 0o7777 & !kill) {
            Err(e) if gone(e) => {}
            r => r?,
        }
    }
    Ok(())
}

/// Removes the file capability attribute, as the kernel does on any change
/// of a file's content (root's included). Best effort where the file cannot
/// be reached any more (see `gone`).
pub(super) fn kill_caps(at: At) -> Result<()> {
    let absent = |e: Errno| e.0 == libc::ENODATA || e.0 == libc::EOPNOTSUPP || gone(e);
    // Asked first, as the kernel does: removing needs CAP_SETFCAP even
    // when there is nothing to remove (EPERM in a user namespace).
    match at.getxattr(c"security.capability") {
        Ok(_) => {}
        Err(e) if absent(e) => return Ok(()),
        Err(e) => return Err(e),
    }
    match at.removexattr(c"security.capability") {
        Err(e) if !absent(e) => Err(e),
        _ => Ok(()),
    }
}

/// The file these calls meant is not reachable as they reach it: its
/// name was renamed or unlinked meanwhile, or the replica is a FUSE or NFS
/// filesystem that finds an open file by its name and it has none left
/// (the checker's faultfs answers ENOENT for an unlinked file's xattrs).
/// The change itself went through: the removal is what the kernel's own
/// check covers (it still looks for capabilities until it finds none).
fn gone(e: Errno) -> bool {
    e.0 == libc::ENOENT || e.0 == libc::ESTALE
}
