//! `chironfs ring-bench --config FILE --ops N`: a ring client for
//! `scripts/bench`. It starts a ring member of its own (its `[ring]`
//! section names the ring's nodes as seeds; it is in no layout, so it owns
//! nothing), waits until it has the layout and sees every member alive,
//! then times N quorum puts of fresh keys and N quorum gets of them, one at
//! a time (or `--concurrency C` at once), and prints one line per operation
//! (ops/s over the wall time of the run):
//!
//! `put ops=N seconds=S ops_per_sec=X p50_us=A p99_us=B errors=E`

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::ring::node::Node;
use crate::ring::service::RingService;

pub struct BenchOptions {
    pub config: PathBuf,
    pub ops: usize,
    pub value_size: usize,
    /// Operations in flight at once.
    pub concurrency: usize,
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
        "ring layout version {}, {} members, N={} R={} W={}; all alive after {:.1} s; {} in flight",
        st.layout_version,
        st.members.len(),
        st.n,
        st.r,
        st.w,
        waited.as_secs_f64(),
        opts.concurrency
    );
    // Keys of this run only: a put of an existing key would add a sibling.
    let mut salt = [0u8; 8];
    let _ = getrandom::fill(&mut salt);
    let prefix = format!("ring-bench/{:016x}/", u64::from_le_bytes(salt));
    let key = std::sync::Arc::new(move |i: usize| format!("{prefix}{i}").into_bytes());
    let size = opts.value_size;
    let value = std::sync::Arc::new(move |i: usize| {
        let mut v = format!("{i}:").into_bytes();
        v.resize(size.max(v.len()), b'x');
        v
    });
    let (k, v, n) = (key.clone(), value.clone(), node.clone());
    let (puts, put_errors) = run_ops(ring, opts, "put", move |i| {
        let (key, value, node) = (k(i), v(i), n.clone());
        async move {
            node.put(&key, Some(value), &Default::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    });
    report("put", &puts, put_errors);
    let (k, v, n) = (key.clone(), value.clone(), node.clone());
    let (gets, get_errors) = run_ops(ring, opts, "get", move |i| {
        let (key, want, node) = (k(i), v(i), n.clone());
        async move {
            match node.get(&key).await {
                Ok(f) if f.values() == vec![want] => Ok(()),
                Ok(f) => Err(format!(
                    "read {} siblings, not the value written",
                    f.values().len()
                )),
                Err(e) => Err(e.to_string()),
            }
        }
    });
    report("get", &gets, get_errors);
    Ok(put_errors + get_errors)
}

/// Runs `op(0..ops)` with `concurrency` operations in flight; returns the
/// wall time, each operation's latency, and the number that failed.
fn run_ops<F, Fut>(ring: &RingService, opts: &BenchOptions, what: &str, op: F) -> (Timed, usize)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let op = std::sync::Arc::new(op);
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let ops = opts.ops;
    let start = Instant::now();
    let results = ring.block_on(async {
        let workers: Vec<_> = (0..opts.concurrency.max(1))
            .map(|_| {
                let (op, next) = (op.clone(), next.clone());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= ops {
                            return out;
                        }
                        let t = Instant::now();
                        let r = op(i).await;
                        out.push((i, t.elapsed(), r));
                    }
                })
            })
            .collect();
        let mut all = Vec::with_capacity(ops);
        for w in workers {
            if let Ok(r) = w.await {
                all.extend(r);
            }
        }
        all
    });
    let wall = start.elapsed();
    let mut errors = ops.saturating_sub(results.len());
    let mut times = Vec::with_capacity(results.len());
    for (i, t, r) in results {
        times.push(t);
        if let Err(e) = r {
            errors += 1;
            if errors <= 3 {
                eprintln!("{what} {i}: {e}");
            }
        }
    }
    ((wall, times), errors)
}

/// Wall time of a run, and the latency of each operation.
type Timed = (Duration, Vec<Duration>);

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

/// One result line: throughput over the run's wall time, latency
/// percentiles.
fn report(op: &str, (total, times): &Timed, errors: usize) {
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
