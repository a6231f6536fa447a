//! A token bucket shared by every thread of a resync: `take(n)` returns once
//! `n` bytes fit within the configured rate, sleeping as needed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How much may be used at once after an idle period, as a fraction of one
/// second's worth of bytes (50 ms): enough to smooth chunk boundaries,
/// small enough that a rate limit holds over short copies too.
const BURST_SECS: f64 = 0.05;

/// Longest single sleep, so a rate change or a cancel is noticed soon.
const MAX_SLEEP: Duration = Duration::from_millis(100);

pub struct Throttle {
    state: Mutex<Bucket>,
}

struct Bucket {
    /// Bytes per second; 0 means unlimited.
    rate: u64,
    /// Available bytes; negative while callers are in debt (a `take`
    /// larger than the burst is allowed and paid for by waiting).
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn burst(&self) -> f64 {
        (self.rate as f64 * BURST_SECS).max(1.0)
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.burst());
    }
}

impl Throttle {
    /// A bucket of `bytes_per_sec` (0 = unlimited), starting full.
    pub fn new(bytes_per_sec: u64) -> Throttle {
        let mut b = Bucket {
            rate: bytes_per_sec,
            tokens: 0.0,
            last: Instant::now(),
        };
        b.tokens = b.burst();
        Throttle {
            state: Mutex::new(b),
        }
    }

    pub fn rate(&self) -> u64 {
        self.state.lock().rate
    }

    /// Changes the rate; takes effect for every waiting and future caller.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        let mut b = self.state.lock();
        b.refill(Instant::now());
        b.rate = bytes_per_sec;
        let burst = b.burst();
        b.tokens = b.tokens.min(burst);
    }

    /// Accounts for `n` bytes, sleeping until the rate allows them.
    pub fn take(&self, n: u64) {
        self.take_or_cancel(n, &AtomicBool::new(false));
    }

    /// Like [`take`](Self::take), but returns early (false) once `cancel` is set.
    pub fn take_or_cancel(&self, n: u64, cancel: &AtomicBool) -> bool {
        // Charge first (possibly into debt), then wait until the debt is
        // paid: concurrent callers queue up behind each other's debt, so
        // the total rate holds across threads.
        let mut wait = {
            let mut b = self.state.lock();
            if b.rate == 0 {
                return true;
            }
            b.refill(Instant::now());
            b.tokens -= n as f64;
            debt_wait(&b)
        };
        while let Some(d) = wait {
            if cancel.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(d.min(MAX_SLEEP));
            let mut b = self.state.lock();
            if b.rate == 0 {
                return true;
            }
            b.refill(Instant::now());
            wait = debt_wait(&b);
        }
        true
    }
}

/// How long until the bucket is out of debt, if it is in debt.
fn debt_wait(b: &Bucket) -> Option<Duration> {
    if b.tokens >= 0.0 {
        return None;
    }
    let secs = -b.tokens / b.rate as f64;
    Some(Duration::try_from_secs_f64(secs.max(0.000_1)).unwrap_or(MAX_SLEEP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn unlimited_never_sleeps() {
        let t = Throttle::new(0);
        let start = Instant::now();
        for _ in 0..1000 {
            t.take(1 << 30);
        }
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn rate_holds_across_threads() {
        // 4 threads x 8 x 64 KiB = 2 MiB at 4 MiB/s: about 0.5 s (less the 50 ms burst).
        let t = Arc::new(Throttle::new(4 << 20));
        let start = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..8 {
                        t.take(64 << 10);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let el = start.elapsed();
        assert!(el >= Duration::from_millis(400), "{el:?}");
        assert!(el < Duration::from_secs(3), "{el:?}");
    }

    #[test]
    fn cancel_interrupts_a_wait() {
        let t = Throttle::new(1024);
        let cancel = AtomicBool::new(true);
        let start = Instant::now();
        assert!(!t.take_or_cancel(1 << 20, &cancel));
        assert!(start.elapsed() < Duration::from_millis(500));
    }
}
