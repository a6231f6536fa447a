//! The system log of a daemon in the background: journald, with the
//! event's fields as journal fields, where systemd's journal socket exists;
//! syslog(3) elsewhere. Either way each line carries the severity of its
//! level (`severity`), so `journalctl -p err` or a syslog filter on
//! `LOG_ERR` shows a replica failure and nothing routine. A daemon in the
//! foreground whose standard error is the journal (a systemd unit) logs to
//! journald too.

use std::io::{self, Write};
use std::path::Path;

use nix::syslog::Severity;
use tracing::{Level, Metadata};
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::fmt::MakeWriter;

/// Where journald listens, when systemd runs.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The syslog severity of a tracing level.
pub fn severity(level: &Level) -> Severity {
    match *level {
        Level::ERROR => Severity::LOG_ERR,
        Level::WARN => Severity::LOG_WARNING,
        Level::INFO => Severity::LOG_INFO,
        _ => Severity::LOG_DEBUG,
    }
}

/// The same mapping for journald (whose crate maps INFO to "notice" and
/// DEBUG to "info" unless told otherwise).
fn journal_priorities() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// A journald layer with fields under their own names (`REPLICA`, `OP`,
/// `PATH`, and `ERRNO`, the journal's standard field), or None when
/// journald is not there.
pub fn journald() -> Option<tracing_journald::Layer> {
    if !Path::new(JOURNAL_SOCKET).exists() {
        return None;
    }
    match tracing_journald::layer() {
        Ok(l) => Some(
            l.with_field_prefix(None)
                .with_syslog_identifier("chironfs".into())
                .with_priority_mappings(journal_priorities()),
        ),
        Err(e) => {
            eprintln!("chironfs: journald at {JOURNAL_SOCKET} unusable ({e}); logging to syslog");
            None
        }
    }
}

/// Whether standard error is systemd's journal stream (the daemon runs in
/// the foreground in a unit): `$JOURNAL_STREAM` names its device and inode.
/// Lines written there would all get the unit's default severity, so the
/// daemon then logs to journald directly.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(io::stderr()) else {
        return false;
    };
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
}

/// Opens the syslog connection (ident `chironfs`, facility daemon).
pub fn open() {
    use nix::syslog::{Facility, LogFlags};
    // Fails only for an ident with a NUL in it.
    let _ = nix::syslog::openlog(Some(c"chironfs"), LogFlags::LOG_PID, Facility::LOG_DAEMON);
}

/// Sends one line at one severity: syslog(3), or a test's capture.
pub type Sink = fn(Severity, &str);

fn to_syslog(severity: Severity, line: &str) {
    // syslog(3) with "%s"; the facility is openlog's (daemon).
    let _ = nix::syslog::syslog(severity, line.replace('\0', " ").as_str());
}

/// Makes, for each event, a writer that sends its lines at the event's
/// severity.
pub struct SyslogMaker {
    sink: Sink,
}

impl SyslogMaker {
    pub fn new() -> SyslogMaker {
        SyslogMaker { sink: to_syslog }
    }

    #[cfg(test)]
    fn with_sink(sink: Sink) -> SyslogMaker {
        SyslogMaker { sink }
    }
}

pub struct SyslogWriter {
    sink: Sink,
    priority: Severity,
}

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        for line in text.lines().filter(|l| !l.is_empty()) {
            (self.sink)(self.priority, line);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SyslogMaker {
    type Writer = SyslogWriter;
    fn make_writer(&'a self) -> SyslogWriter {
        SyslogWriter {
            sink: self.sink,
            priority: Severity::LOG_INFO,
        }
    }
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SyslogWriter {
        SyslogWriter {
            sink: self.sink,
            priority: severity(meta.level()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errno::Errno;
    use crate::replica::RelPath;
    use std::sync::Mutex;

    #[test]
    fn levels_map_to_syslog_severities() {
        assert_eq!(severity(&Level::ERROR) as libc::c_int, libc::LOG_ERR);
        assert_eq!(severity(&Level::WARN) as libc::c_int, libc::LOG_WARNING);
        assert_eq!(severity(&Level::INFO) as libc::c_int, libc::LOG_INFO);
        assert_eq!(severity(&Level::DEBUG) as libc::c_int, libc::LOG_DEBUG);
        assert_eq!(severity(&Level::TRACE) as libc::c_int, libc::LOG_DEBUG);
    }

    #[test]
    fn journald_gets_the_same_severities() {
        let m = journal_priorities();
        for (level, p) in [
            (Level::ERROR, m.error),
            (Level::WARN, m.warn),
            (Level::INFO, m.info),
            (Level::DEBUG, m.debug),
            (Level::TRACE, m.trace),
        ] {
            assert_eq!(
                (p as u8 - b'0') as libc::c_int,
                severity(&level) as libc::c_int,
                "{level}"
            );
        }
    }

    static CAPTURED: Mutex<Vec<(Severity, String)>> = Mutex::new(Vec::new());

    fn capture(priority: Severity, line: &str) {
        CAPTURED.lock().unwrap().push((priority, line.to_string()));
    }

    /// What the background daemon sends to syslog for a replica failure
    /// and for a routine line.
    #[test]
    fn a_replica_failure_goes_to_syslog_at_err_with_its_fields() {
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(SyslogMaker::with_sink(capture))
            .finish();
        let path = RelPath::from_bytes(b"dir/file").unwrap();
        tracing::subscriber::with_default(subscriber, || {
            crate::replica::log_failure(Path::new("/srv/b"), "write", &path, Errno::EIO);
            tracing::info!("mounted");
        });
        let lines = std::mem::take(&mut *CAPTURED.lock().unwrap());
        assert_eq!(lines.len(), 2, "{lines:?}");
        let (priority, line) = &lines[0];
        assert_eq!(*priority, Severity::LOG_ERR, "{line}");
        for field in [
            "replica=/srv/b",
            "op=\"write\"",
            "path=/dir/file",
            "errno=5",
        ] {
            assert!(line.contains(field), "{field} missing from {line}");
        }
        assert!(
            line.contains("replica /srv/b failed: write /dir/file: EIO"),
            "{line}"
        );
        assert_eq!(lines[1].0, Severity::LOG_INFO, "{:?}", lines[1]);
    }
}
