//! chironctl's command line (clap): subcommands, their arguments, usage
//! errors and exit codes, shell completions. What each command does is in
//! `client.rs`.

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum, ValueHint};

/// Query and steer a running chironfs daemon through its status socket.
#[derive(Parser, Debug)]
#[command(
    name = "chironctl",
    bin_name = "chironctl",
    version,
    arg_required_else_help = true,
    after_help = "The daemon is found from MOUNTPOINT, from a SOCKET path (as the last \
                  argument or with -s), or, with neither, as the only socket in /run/chironfs. \
                  A REPLICA is named by its path, its index (0 for the first listed) or its \
                  identity (the UUID in its .chironfs/id).\n\n\
                  Exit status: 0 on success, 1 when the daemon refused or could not be \
                  reached, 2 for a usage error; check: 0 OK, 1 WARNING, 2 CRITICAL, \
                  3 UNKNOWN (a usage error of check included)."
)]
pub struct Cli {
    /// The daemon's status socket (the only way to reach a ring node).
    #[arg(
        short = 's',
        long = "socket",
        global = true,
        value_name = "SOCKET",
        value_hint = ValueHint::FilePath
    )]
    pub socket: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// The daemon to talk to, when `-s` does not name it.
#[derive(Args, Debug)]
pub struct Target {
    /// A chironfs mountpoint, or a daemon's status socket.
    #[arg(value_name = "MOUNTPOINT|SOCKET", value_hint = ValueHint::AnyPath)]
    pub target: Option<String>,
}

#[derive(Args, Debug)]
pub struct Json {
    /// Print JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Replica states, missed paths, requests in flight, resync progress.
    Status {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        json: Json,
    },
    /// Nagios/Icinga plugin: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Check {
        #[command(flatten)]
        target: Target,
        /// Accepted and ignored (the output is the plugin's line).
        #[arg(long, hide = true)]
        json: bool,
    },
    /// The status in the Prometheus text exposition format.
    Metrics {
        #[command(flatten)]
        target: Target,
        /// Accepted and ignored (the output is Prometheus text).
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Take a replica out of service (it stays out until enabled).
    Disable {
        /// Path, index or identity of the replica.
        replica: String,
        #[command(flatten)]
        target: Target,
    },
    /// Put a disabled replica back: probed, then resynced.
    Enable {
        /// Path, index or identity of the replica.
        replica: String,
        #[command(flatten)]
        target: Target,
    },
    /// Resync a replica from what it missed.
    Resync {
        /// Path, index or identity of the replica.
        replica: String,
        /// Compare the whole tree first (type, size, mtime, mode, owner,
        /// xattrs, symlinks, hard links).
        #[arg(long)]
        full: bool,
        /// Compare file contents too (a full compare that reads every byte).
        #[arg(long)]
        verify: bool,
        /// Follow the resync to its end; exit 0 once the replica is in sync.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Declare a replica in sync without copying anything.
    Trust {
        /// Path, index or identity of the replica.
        replica: String,
        /// Required: you vouch that the replica is identical.
        #[arg(long)]
        confirm: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Change the daemon's log level while it runs.
    LogLevel {
        #[arg(value_enum)]
        level: Level,
        #[command(flatten)]
        target: Target,
    },
    /// The conflict copies hosts sharing these replicas made.
    Conflicts {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        json: Json,
    },
    /// The metadata ring: members, layout, keys.
    #[command(subcommand)]
    Ring(Ring),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Ring {
    /// This node, the layout, the members and the ring's counters.
    Status {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        json: Json,
    },
    /// Stage NODE, reachable at HOST:PORT, as a member.
    Join {
        /// The node's `ring.node` name.
        node: String,
        /// Its `ring.listen` or `ring.advertise` address.
        #[arg(value_name = "HOST:PORT")]
        addr: String,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        json: Json,
    },
    /// Stage the removal of NODE.
    Leave {
        node: String,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        json: Json,
    },
    /// Stage new quorum rules: N copies of each key, R of them answer a
    /// read, W acknowledge a write (R + W > N and W > N/2 are checked).
    Quorum {
        #[arg(value_parser = clap::value_parser!(u8).range(1..=7))]
        n: u8,
        #[arg(value_parser = clap::value_parser!(u8).range(1..=7))]
        r: u8,
        #[arg(value_parser = clap::value_parser!(u8).range(1..=7))]
        w: u8,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        json: Json,
    },
    /// Commit what is staged as the next layout version.
    Apply {
        /// Sign the new version with the operator key in FILE (needed
        /// when the ring lists `operator_keys`; see `ring keygen`).
        #[arg(long, value_name = "FILE")]
        key: Option<std::path::PathBuf>,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        json: Json,
    },
    /// End a layout transition that cannot end by itself (a node of it
    /// is dead and will not come back): every node counts as having taken
    /// and synced the new version. Risks: what only the dead node held is
    /// lost, and what a node did not sync yet is missing from reads until
    /// anti-entropy brings it. Needs --force.
    Finish {
        /// Say that you accept the risks above.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        json: Json,
    },
    /// Make a new operator key in FILE (mode 0600; never overwritten)
    /// and print the public half to list in every node's
    /// `ring.operator_keys`. Talks to no daemon.
    Keygen { file: std::path::PathBuf },
    /// A quorum read of KEY.
    Get {
        key: String,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        json: Json,
    },
    /// Write VALUE in place of what KEY holds (a quorum write).
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        json: Json,
    },
}

/// Nagios' UNKNOWN, for a usage error of `check`.
pub const UNKNOWN: i32 = 3;

/// Parses the command line, or says why not and gives the exit code:
/// 0 for `--help` and `--version`, 3 for a usage error of `check` (a
/// monitoring system reads it as UNKNOWN, with a status line on stdout),
/// 2 for any other usage error.
pub fn parse(argv: &[String]) -> Result<Cli, i32> {
    Cli::try_parse_from(argv).map_err(|e| {
        let _ = e.print();
        match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
            _ if command_word(argv) == Some("check") => {
                let first = e.to_string();
                let first = first.lines().next().unwrap_or("usage error");
                println!("CHIRONFS UNKNOWN - {}", first.trim_start_matches("error: "));
                UNKNOWN
            }
            _ => e.exit_code(),
        }
    })
}

/// The subcommand named on a command line clap refused: the first word
/// that is neither an option nor the value of `-s`/`--socket`.
fn command_word(argv: &[String]) -> Option<&str> {
    let mut it = argv.iter().skip(1).map(String::as_str);
    while let Some(a) = it.next() {
        match a {
            "--" => return it.next(),
            "-s" | "--socket" => {
                it.next();
            }
            _ if a.starts_with('-') => {}
            _ => return Some(a),
        }
    }
    None
}

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "chironctl", &mut std::io::stdout());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_go_before_or_after_the_words() {
        let c = Cli::try_parse_from(argv("chironctl resync 1 --wait /mnt --full")).unwrap();
        match c.command {
            Command::Resync {
                replica,
                full,
                verify,
                wait,
                target,
            } => {
                assert_eq!(replica, "1");
                assert!(full && wait && !verify);
                assert_eq!(target.target.as_deref(), Some("/mnt"));
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(argv("chironctl status --socket /s --json")).unwrap();
        assert_eq!(c.socket.as_deref(), Some("/s"));
        assert!(matches!(
            c.command,
            Command::Status {
                json: Json { json: true },
                ..
            }
        ));
        let c = Cli::try_parse_from(argv("chironctl -s /s ring join a 10.0.0.1:7100")).unwrap();
        assert!(matches!(c.command, Command::Ring(Ring::Join { .. })));
    }

    #[test]
    fn check_usage_errors_are_unknown() {
        assert_eq!(parse(&argv("chironctl check /a /b")).err(), Some(UNKNOWN));
        assert_eq!(
            parse(&argv("chironctl -s x check --bogus")).err(),
            Some(UNKNOWN)
        );
        assert_eq!(parse(&argv("chironctl frobnicate")).err(), Some(2));
        assert_eq!(parse(&argv("chironctl status --bogus")).err(), Some(2));
        assert_eq!(parse(&argv("chironctl log-level loud")).err(), Some(2));
        assert_eq!(parse(&argv("chironctl")).err(), Some(2));
        assert_eq!(parse(&argv("chironctl --help")).err(), Some(0));
    }

    #[test]
    fn the_command_word_skips_the_socket_option() {
        assert_eq!(command_word(&argv("c -s check status")), Some("status"));
        assert_eq!(command_word(&argv("c --json check")), Some("check"));
        assert_eq!(command_word(&argv("c -s")), None);
    }
}
