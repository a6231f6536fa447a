//! The command lines of `chironfs ring-node` (a metadata-only ring member)
//! and of the hidden `chironfs ring-bench` (a ring client that times
//! puts and gets, for `scripts/bench`).

use std::path::PathBuf;

use clap::Parser;

use crate::daemon::ring_node::RingNodeArgs;

/// A metadata-only ring member: no mount, no replicas; a vote in the
/// metadata ring for hosts that share replicas. Runs in the foreground.
#[derive(Parser, Debug)]
#[command(
    name = "chironfs ring-node",
    version,
    override_usage = "chironfs ring-node [-d] --config FILE"
)]
struct NodeArgs {
    /// TOML config file with a [ring] section.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Debug logging.
    #[arg(short = 'd')]
    debug: bool,
}

/// Times quorum puts and gets against a running ring, as a client that
/// joins its gossip but owns no data.
#[derive(Parser, Debug)]
#[command(name = "chironfs ring-bench")]
struct BenchArgs {
    /// TOML config file with a [ring] section naming the ring's nodes as seeds.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Puts, then as many gets.
    #[arg(long, default_value_t = 5000)]
    ops: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Operations in flight at once (1: one at a time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// Seconds to wait for the ring's layout and every member alive.
    #[arg(long, default_value_t = 30.0)]
    wait: f64,
}

/// Parses argv (`chironfs ring-node ...`, argv[1] included) or prints why
/// not; returns the exit code.
fn parse<T: Parser>(argv: &[String]) -> Result<T, i32> {
    T::try_parse_from(argv.iter().skip(1)).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() { 1 } else { 0 }
    })
}

/// `chironfs ring-node`.
pub fn ring_node(argv: &[String]) -> i32 {
    match parse::<NodeArgs>(argv) {
        Ok(a) => crate::daemon::ring_node::main(RingNodeArgs {
            config: a.config,
            debug: a.debug,
        }),
        Err(code) => code,
    }
}

/// `chironfs ring-bench`.
pub fn ring_bench(argv: &[String]) -> i32 {
    match parse::<BenchArgs>(argv) {
        Ok(a) => super::ring_bench::main(&super::ring_bench::BenchOptions {
            config: a.config,
            ops: a.ops,
            value_size: a.value_size,
            concurrency: a.concurrency as usize,
            wait: std::time::Duration::from_secs_f64(a.wait.clamp(0.0, 3600.0)),
        }),
        Err(code) => code,
    }
}
