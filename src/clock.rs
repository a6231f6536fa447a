//! Clocks. Calendar time without a clock library: seconds since the epoch
//! to a UTC date and time (Howard Hinnant's days-to-civil algorithm). And
//! the clock leases are measured on ([`boot_ns`]).

/// Nanoseconds on `CLOCK_BOOTTIME`: monotonic (a step of the wall clock,
/// `date -s` or an NTP step, does not move it), and it counts time the
/// machine spent suspended, so a lease measured on it does not outlive a
/// suspend. Only differences on one host mean anything; never compare
/// values of two hosts.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safe: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on
    // every Linux this runs on (2.6.39+), so the call cannot fail.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // Not reached on Linux; the monotonic clock is the next best.
        return std::time::Instant::now()
            .duration_since(*START.get_or_init(std::time::Instant::now))
            .as_nanos() as u64;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// The monotonic clock a ring node measures leases on: [`boot_ns`], or in
/// the deterministic simulation (ring/dsim) a simulated clock that runs
/// on virtual time at its own rate.
#[derive(Clone)]
pub struct Clock(std::sync::Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The host's CLOCK_BOOTTIME.
    pub fn boot() -> Clock {
        Clock(std::sync::Arc::new(boot_ns))
    }

    /// A clock read through `f` (tests).
    #[cfg(test)]
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Clock {
        Clock(std::sync::Arc::new(f))
    }

    /// Nanoseconds on this clock.
    pub fn now_ns(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// (year, month, day, hour, minute, second) in UTC of `secs` since the epoch.
pub fn utc(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn calendar_dates_in_utc() {
        assert_eq!(super::utc(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(super::utc(1_798_329_600), (2026, 12, 27, 0, 0, 0));
        assert_eq!(super::utc(951_782_400 + 3661), (2000, 2, 29, 1, 1, 1));
        assert_eq!(super::utc(-1), (1969, 12, 31, 23, 59, 59));
    }

    #[test]
    fn boot_clock_never_goes_back() {
        let a = super::boot_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::boot_ns();
        assert!(b >= a + 1_000_000, "{a} then {b}");
    }
}
