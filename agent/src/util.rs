//! Small shared helpers: clocks, durations, atomic file writes.

use std::{
    fs,
    io::Write,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// `CLOCK_BOOTTIME` in ns: the clock `bpf_ktime_get_boot_ns` reads.
pub fn boot_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall clock in ns since the epoch.
pub fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// Converts a boot-clock timestamp to wall-clock ns.
pub fn boot_to_wall_ns(boot: u64) -> u128 {
    let now_boot = boot_ns();
    let now_wall = wall_ns();
    now_wall.saturating_sub(u128::from(now_boot.saturating_sub(boot)))
}

/// RFC 3339 with nanoseconds, UTC.
pub fn rfc3339_ns(wall_ns: u128) -> String {
    let secs = (wall_ns / 1_000_000_000) as i64;
    let nanos = (wall_ns % 1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Howard Hinnant's days → civil date.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The longest duration a flag or config value can hold: values beyond it (and numbers too big
/// to represent) saturate to it instead of wrapping. Ten years, well inside what nanosecond
/// clocks (`u64`, 584 years) and `Instant` arithmetic can take.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Parses a duration as `humantime` reads it: `30s`, `10m`, `2h`, `1d`, `500ms`, `1h30m`,
/// `2 days`. Zero is refused; anything longer than [`MAX_DURATION`], including numbers that
/// overflow, saturates to it.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match humantime::parse_duration(s) {
        Ok(d) => d,
        Err(humantime::DurationError::NumberOverflow) => MAX_DURATION,
        Err(e) => {
            return Err(format!(
                "duration `{s}`: {e} (e.g. 500ms, 30s, 10m, 2h, 1d)"
            ));
        }
    };
    if d.is_zero() {
        return Err(format!("duration `{s}` must be positive"));
    }
    Ok(d.min(MAX_DURATION))
}

/// Writes `data` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The node name: `NODE_NAME` (set by the DaemonSet), else the host name.
pub fn node_name() -> String {
    if let Ok(n) = std::env::var("NODE_NAME")
        && !n.is_empty()
    {
        return n;
    }
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339_ns(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_ns(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5parsecs").is_err());
        assert!(parse_duration("").is_err());
        // Too big to hold (the old parser wrapped `n * 86400` to a small value): saturates.
        for huge in [
            "213503982334602d",
            "18446744073709551615s",
            "99999999999999999999999h",
            "500y",
        ] {
            assert_eq!(parse_duration(huge).unwrap(), MAX_DURATION, "{huge}");
        }
    }
}
