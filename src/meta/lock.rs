//! The state directory's lock: one daemon per state directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno as NixErrno;
use nix::fcntl::{Flock, FlockArg};

use super::error::{Holder, MetaError};

/// Name of the lock file inside the state directory.
pub const LOCK_FILE: &str = "lock";

/// An exclusive `flock` on `<state_dir>/lock`, whose content is the holder's
/// pid (for the error a second daemon prints). The kernel drops the lock
/// when the holder exits, however it exits, so a crashed daemon never
/// leaves a stale lock behind. Released on drop.
pub struct StateLock {
    _file: Flock<File>,
}

impl StateLock {
    /// Takes the lock without waiting; `MetaError::Locked` if another open
    /// file description (another daemon, or another store in this process)
    /// holds it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, MetaError> {
        let path = state_dir.join(LOCK_FILE);
        let lock_err = |source: io::Error| MetaError::Lock {
            path: state_dir.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(lock_err)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, NixErrno::EWOULDBLOCK)) => {
                return Err(MetaError::Locked {
                    path: state_dir.to_path_buf(),
                    pid: Holder(read_pid(&mut file)),
                });
            }
            Err((_, errno)) => return Err(lock_err(io::Error::from(errno))),
        };
        // Not synced: the pid only matters while this process is alive.
        file.set_len(0).map_err(lock_err)?;
        file.rewind().map_err(lock_err)?;
        writeln!(*file, "{}", std::process::id()).map_err(lock_err)?;
        Ok(StateLock { _file: file })
    }
}

/// The pid written by the lock's holder, if it wrote one yet.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}
