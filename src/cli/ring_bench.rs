//! `chironfs ring-bench --config FILE --ops N`: a ring client for
//! `scripts/bench`. It starts a ring member of its own (its `[ring]`
//! section names the ring's nodes as seeds; it is in no layout, so it owns
//! nothing), waits until it has the layout and sees every member alive,
//! then times N quorum puts of fresh keys and N quorum gets of them, one at
//! a time, and prints one line per operation:
//!
//! `put ops=N seconds=S ops_per_sec=X p50_us=A p99_us=B errors=E`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::ring::node::Node;
use crate::ring::service::RingService;

pub struct BenchOptions {
    pub config: PathBuf,
    pub ops: usize,
    pub value_size: usize,
    pub wait: Duration,
}

/// Runs the benchmark; returns the exit code (1 if any operation failed).
pub fn main(opts: &BenchOptions) -> i32 {
    match run(opts) {
        Ok(0) => 0,
        Ok(errors) => {
            eprintln!("chironfs ring-bench: {errors} operations failed");
            1
        }
        Err(e) => {
            eprintln!("chironfs ring-bench: {e}");
            1
        }
    }
}

fn run(opts: &BenchOptions) -> Result<usize, String> {
    let (cfg, ring_cfg) = crate::daemon::ring_node::load(&opts.config)?;
    crate::daemon::log::init(
        crate::daemon::log::Target::Stderr,
        crate::config::LogLevel::Warn,
    )
    .map_err(|e| format!("cannot set up logging: {e}"))?;
    let (dir, temporary) = match &cfg.state_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("chironfs-ring-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("state_dir '{}': {e}", dir.display()))?;
    let ring = RingService::start(&ring_cfg, &dir)?;
    let result = bench(&ring, opts);
    ring.shutdown();
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn bench(ring: &RingService, opts: &BenchOptions) -> Result<usize, String> {
    let node = ring.node().clone();
    let waited = wait_ready(&node, opts.wait)?;
    let st = node.status();
    println!(
        "ring layout version {}, {} members, N={} R={} W={}; all alive after {:.1} s",
        st.layout_version,
        st.members.len(),
        st.n,
        st.r,
        st.w,
        waited.as_secs_f64()
    );
    // Keys of this run only: a put of an existing key would add a sibling.
    let mut salt = [0u8; 8];
    let _ = getrandom::fill(&mut salt);
    let prefix = format!("ring-bench/{:016x}/", u64::from_le_bytes(salt));
    let key = |i: usize| format!("{prefix}{i}").into_bytes();
    let value = |i: usize| {
        let mut v = format!("{i}:").into_bytes();
        v.resize(opts.value_size.max(v.len()), b'x');
        v
    };
    let (puts, put_errors) = ring.block_on(async {
        let (mut times, mut errors) = (Vec::with_capacity(opts.ops), 0);
        for i in 0..opts.ops {
            let t = Instant::now();
            let ok = node.put(&key(i), Some(value(i)), &Default::default()).await;
            times.push(t.elapsed());
            if let Err(e) = ok {
                errors += 1;
                if errors <= 3 {
                    eprintln!("put {i}: {e}");
                }
            }
        }
        (times, errors)
    });
    report("put", &puts, put_errors);
    let (gets, get_errors) = ring.block_on(async {
        let (mut times, mut errors) = (Vec::with_capacity(opts.ops), 0);
        for i in 0..opts.ops {
            let t = Instant::now();
            let got = node.get(&key(i)).await;
            times.push(t.elapsed());
            let why = match got {
                Ok(f) if f.values() == vec![value(i)] => continue,
                Ok(f) => format!("read {} siblings, not the value written", f.values().len()),
                Err(e) => e.to_string(),
            };
            errors += 1;
            if errors <= 3 {
                eprintln!("get {i}: {why}");
            }
        }
        (times, errors)
    });
    report("get", &gets, get_errors);
    Ok(put_errors + get_errors)
}

/// Waits until this node has a layout and sees each of its members alive.
fn wait_ready(node: &Node, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let st = node.status();
        if st.layout_version > 0 && st.members.iter().all(|m| m.alive) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(if st.layout_version == 0 {
                format!(
                    "no layout from the seeds after {} s (are the nodes up, with the same secret, and a layout applied?)",
                    limit.as_secs()
                )
            } else {
                let dead: Vec<&str> = st
                    .members
                    .iter()
                    .filter(|m| !m.alive)
                    .map(|m| m.node.as_str())
                    .collect();
                format!(
                    "members not alive after {} s: {}",
                    limit.as_secs(),
                    dead.join(", ")
                )
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One result line: throughput over the whole run, latency percentiles.
fn report(op: &str, times: &[Duration], errors: usize) {
    let total: Duration = times.iter().sum();
    let mut us: Vec<u128> = times.iter().map(Duration::as_micros).collect();
    us.sort_unstable();
    let pct = |p: f64| {
        if us.is_empty() {
            return 0;
        }
        let i = ((us.len() as f64 * p).ceil() as usize).clamp(1, us.len()) - 1;
        us[i]
    };
    let secs = total.as_secs_f64();
    println!(
        "{op} ops={} seconds={secs:.3} ops_per_sec={:.1} p50_us={} p99_us={} errors={errors}",
        times.len(),
        if secs > 0.0 {
            times.len() as f64 / secs
        } else {
            0.0
        },
        pct(0.50),
        pct(0.99)
    );
}
