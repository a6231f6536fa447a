//! Rate limits for log lines that a peer, or anyone who can send packets,
//! can cause at will (refused connections, dropped datagrams): at most one
//! line per key (a source address) per period, saying how many went
//! unlogged since, so that a flood cannot fill the log.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Keys tracked one by one; beyond that (a flood from many addresses),
/// the others share one window.
pub const MAX_KEYS: usize = 256;

/// One line per key per `every`.
pub struct LogLimiter<K> {
    every: Duration,
    by_key: HashMap<K, Window>,
    /// Shared by the keys that do not fit in `by_key`.
    overflow: Window,
}

#[derive(Default)]
struct Window {
    since: Option<Instant>,
    suppressed: u64,
}

impl Window {
    fn hit(&mut self, every: Duration, now: Instant) -> Option<u64> {
        match self.since {
            Some(since) if now.saturating_duration_since(since) < every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.since = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

impl<K: Hash + Eq + Clone> LogLimiter<K> {
    pub fn new(every: Duration) -> LogLimiter<K> {
        LogLimiter {
            every,
            by_key: HashMap::new(),
            overflow: Window::default(),
        }
    }

    /// `Some(n)`: log this one, `n` earlier ones of `key` went unlogged.
    /// `None`: do not log it (it is counted).
    pub fn note(&mut self, key: &K, now: Instant) -> Option<u64> {
        let every = self.every;
        if !self.by_key.contains_key(key) && self.by_key.len() >= MAX_KEYS {
            self.by_key.retain(|_, w| {
                w.since
                    .is_some_and(|s| now.saturating_duration_since(s) < every)
            });
        }
        if let Some(w) = self.by_key.get_mut(key) {
            return w.hit(every, now);
        }
        if self.by_key.len() < MAX_KEYS {
            return self.by_key.entry(key.clone()).or_default().hit(every, now);
        }
        self.overflow.hit(every, now)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn one_line_per_key_per_period_and_bounded() {
        let every = Duration::from_secs(10);
        let mut log = LogLimiter::new(every);
        let t0 = Instant::now();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(log.note(&addr, t0), Some(0));
        for i in 1..=100 {
            assert_eq!(log.note(&addr, t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.note(&addr, t0 + every), Some(100));
        // Another key has its own window.
        let other: SocketAddr = "127.0.0.1:10".parse().unwrap();
        assert_eq!(log.note(&other, t0 + every), Some(0));
        // Many keys: the map stays bounded, the rest share a window.
        for port in 0..10_000u16 {
            log.note(&SocketAddr::from(([127, 0, 0, 2], port)), t0);
        }
        assert!(log.tracked() <= MAX_KEYS);
        // Once their windows are over, old keys make room for new ones.
        let later = t0 + 3 * every;
        assert_eq!(
            log.note(&SocketAddr::from(([127, 0, 0, 3], 1)), later),
            Some(0)
        );
        assert!(log.tracked() <= 2);
    }
}
