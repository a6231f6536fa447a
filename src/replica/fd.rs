//! A file descriptor on one replica, closed where a close may block.
//!
//! Closing a file of a hung NFS or FUSE server waits for the server (the
//! kernel sends it a flush). An fd of a pooled replica is therefore closed
//! on that replica's own threads, whoever lets go of it last: a FUSE thread
//! that drops the last reference (an error path, a released handle, a
//! finished call) never waits for a hung replica (src/DESIGN.md, section 3,
//! step 6).

use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::pool::Pool;

/// Where a pooled replica's fds are closed: its pool, and its count of
/// jobs not finished (a close that hangs shows there, as any job does).
#[derive(Clone)]
pub(super) struct Closer {
    pub(super) pool: Pool,
    pub(super) queued: Arc<AtomicU64>,
}

pub struct Fd {
    fd: ManuallyDrop<OwnedFd>,
    /// `None` for a replica whose syscalls run inline (a local filesystem):
    /// its close does not block.
    closer: Option<Closer>,
}

impl Fd {
    pub(super) fn new(fd: OwnedFd, closer: Option<Closer>) -> Fd {
        Fd {
            fd: ManuallyDrop::new(fd),
            closer,
        }
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: `fd` is taken once, here, and never used after.
        let fd = unsafe { ManuallyDrop::take(&mut self.fd) };
        match &self.closer {
            None => drop(fd),
            Some(c) => {
                c.queued.fetch_add(1, Ordering::SeqCst);
                let queued = c.queued.clone();
                c.pool.submit(move || {
                    drop(fd);
                    queued.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    }
}

impl Deref for Fd {
    type Target = OwnedFd;
    fn deref(&self) -> &OwnedFd {
        &self.fd
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl std::fmt::Debug for Fd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fd({})", self.fd.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A pooled replica's fd is closed on the pool: the dropping thread
    /// does not close it, and the pool does.
    #[test]
    fn a_pooled_fd_is_closed_on_its_pool() {
        let pool = Pool::new("fdtest", 1).unwrap();
        let queued = Arc::new(AtomicU64::new(0));
        // Hold the pool's one thread until the fd is dropped.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        pool.submit(move || {
            let _ = wait.recv();
        });
        let file = std::fs::File::open("/dev/null").unwrap();
        let raw = file.as_raw_fd();
        let fd = Fd::new(
            OwnedFd::from(file),
            Some(Closer {
                pool: pool.clone(),
                queued: queued.clone(),
            }),
        );
        drop(fd);
        let open = |raw: RawFd| std::path::Path::new(&format!("/proc/self/fd/{raw}")).exists();
        assert!(open(raw), "closed on the dropping thread");
        assert_eq!(queued.load(Ordering::SeqCst), 1);
        go.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while queued.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(queued.load(Ordering::SeqCst), 0, "the pool never closed it");
    }
}
