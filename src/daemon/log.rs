//! Where log lines go: stderr in the foreground, `log=FILE`, or the system
//! log (journald or syslog, `daemon/syslog.rs`) when in the background.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, fmt, reload};

use super::syslog;
use crate::config::LogLevel;

/// Log target chosen at startup.
pub enum Target<'a> {
    Stderr,
    File(&'a Path),
    /// journald where it runs, else syslog.
    System,
}

/// The `log=FILE` target, reopened on SIGHUP (for logrotate).
static LOG_FILE: OnceLock<(PathBuf, Mutex<std::fs::File>)> = OnceLock::new();

fn open_log(p: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(p)
}

struct FileWriter;

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match LOG_FILE.get() {
            Some((_, f)) => match f.lock() {
                Ok(mut f) => f.write(buf),
                Err(_) => Ok(buf.len()),
            },
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct FileMaker;

impl<'a> MakeWriter<'a> for FileMaker {
    type Writer = FileWriter;
    fn make_writer(&'a self) -> FileWriter {
        FileWriter
    }
}

/// Reopens the `log=FILE` file (after logrotate moved it away).
pub fn reopen() {
    if let Some((p, f)) = LOG_FILE.get() {
        match open_log(p) {
            Ok(new) => {
                if let Ok(mut f) = f.lock() {
                    *f = new;
                }
                tracing::info!("log file {} reopened", p.display());
            }
            Err(e) => tracing::error!("cannot reopen log file {}: {e}", p.display()),
        }
    }
}

type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Changes the level of a running daemon (`chironctl log-level`).
static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

fn filter_for(level: &str) -> EnvFilter {
    EnvFilter::new(format!("chironfs={level},fuser=warn"))
}

/// Sets the log level: error, warn, info, debug or trace.
pub fn set_level(level: &str) -> Result<(), String> {
    if !matches!(level, "error" | "warn" | "info" | "debug" | "trace") {
        return Err(format!(
            "bad log level '{level}': expected error, warn, info, debug or trace"
        ));
    }
    let set = SET_LEVEL.get().ok_or("logging is not set up")?;
    set(level)?;
    tracing::info!("log level set to {level}");
    Ok(())
}

pub fn init(target: Target, level: LogLevel) -> io::Result<()> {
    let (filter, handle) = reload::Layer::new(filter_for(level.as_str()));
    let _ = SET_LEVEL.set(Box::new(move |level: &str| {
        handle.reload(filter_for(level)).map_err(|e| e.to_string())
    }));
    let registry = tracing_subscriber::registry().with(filter);
    let res = match target {
        // Colours only on a terminal: a journal or a file gets plain text.
        Target::Stderr => match syslog::stderr_is_journal().then(syslog::journald).flatten() {
            Some(journal) => registry.with(journal).try_init(),
            None => registry
                .with(
                    fmt::layer()
                        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
                        .with_writer(io::stderr),
                )
                .try_init(),
        },
        Target::File(p) => {
            let f = open_log(p)?;
            // Absolute: it is reopened on SIGHUP, after the daemon moved to "/".
            let p = std::path::absolute(p).unwrap_or(p.to_path_buf());
            let _ = LOG_FILE.set((p, Mutex::new(f)));
            registry
                .with(fmt::layer().with_ansi(false).with_writer(FileMaker))
                .try_init()
        }
        Target::System => match syslog::journald() {
            Some(journal) => registry.with(journal).try_init(),
            None => {
                syslog::open();
                registry
                    .with(
                        fmt::layer()
                            .with_ansi(false)
                            .without_time()
                            .with_writer(syslog::SyslogMaker::new()),
                    )
                    .try_init()
            }
        },
    };
    res.map_err(|e| io::Error::other(e.to_string()))
}
