//! Errors of the metadata store, each naming the step that failed.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::errno::Errno;

/// An engine's own error, kept opaque so the trait stays engine-neutral.
pub type EngineError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("cannot create state directory '{path}': {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock state directory '{path}': {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another daemon holds the state directory's lock.
    #[error("state directory '{path}' is in use by another chironfs (pid {pid})")]
    Locked { path: PathBuf, pid: Holder },
    #[error("cannot open metadata store in '{path}': {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: EngineError,
    },
    /// A read, write or sync of the store failed; `step` names the operation.
    #[error("metadata store: {step}: {source}")]
    Store {
        step: &'static str,
        #[source]
        source: EngineError,
    },
    /// A stored value could not be decoded.
    #[error("metadata store: {step}: malformed stored value for key {key}")]
    Corrupt { step: &'static str, key: String },
    /// A path the store cannot key (it contains a NUL byte or is too long).
    #[error("metadata store: {step}: path cannot be stored ({reason})")]
    BadPath {
        step: &'static str,
        reason: &'static str,
    },
}

/// Who holds a state directory's lock, as far as its lock file tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder(pub Option<u32>);

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "{pid}"),
            None => f.write_str("unknown"),
        }
    }
}

impl MetaError {
    /// Wraps an engine error for the step `step`.
    pub(super) fn store(step: &'static str, e: impl Into<EngineError>) -> MetaError {
        MetaError::Store {
            step,
            source: e.into(),
        }
    }
}

/// The filesystem reports any store failure to the application as EIO.
impl From<MetaError> for Errno {
    fn from(_: MetaError) -> Errno {
        Errno::EIO
    }
}
