//! Wall-clock time as the admin console shows it.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, now.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Now, on the timeline of [`unix_micros_at`]: compare it with values from there (a wait
/// computed from two different clocks would move with every wall-clock step).
pub fn anchored_now() -> u64 {
    unix_micros_at(Instant::now())
}

/// Microseconds since the Unix epoch at `at`, from a monotonic reading the caller already has
/// (hot paths read the clock once per step). Anchored once per process; wall-clock steps
/// after that are not followed, which is fine for SHOW CLIENTS' request times.
pub fn unix_micros_at(at: Instant) -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let &(base, base_unix) = ANCHOR.get_or_init(|| (Instant::now(), unix_micros()));
    match at.checked_duration_since(base) {
        Some(d) => base_unix + d.as_micros() as u64,
        None => base_unix.saturating_sub(base.duration_since(at).as_micros() as u64),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for µs since the Unix epoch (as SHOW CLIENTS prints times).
pub fn format_utc(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic_readings_map_to_wall_clock() {
        let before = super::unix_micros();
        let now = std::time::Instant::now();
        let at = super::unix_micros_at(now);
        let after = super::unix_micros();
        // Anchored in this call or earlier: within the readings around it (1 ms slack).
        assert!(
            at + 1000 >= before && at <= after + 1000,
            "{before} {at} {after}"
        );
        let later = super::unix_micros_at(now + std::time::Duration::from_secs(2));
        // Truncation to whole µs on either side of the anchor: off by at most one.
        assert!((later - at).abs_diff(2_000_000) <= 1, "{}", later - at);
    }

    #[test]
    fn formats_utc() {
        assert_eq!(super::format_utc(0), "1970-01-01 00:00:00 UTC");
        // 2026-11-24 21:47:46 UTC
        assert_eq!(
            super::format_utc(1_795_556_866 * 1_000_000),
            "2026-11-24 21:47:46 UTC"
        );
    }
}
