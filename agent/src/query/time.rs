//! Times in queries: a duration back from now (`10m`) or an RFC 3339 time.

use super::QueryError;
use crate::util;

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` to wall-clock ns since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: u128 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let end = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        if end == 0 || end > 9 {
            return None;
        }
        nanos = frac[..end].parse::<u128>().ok()? * 10u128.pow(9 - end as u32);
        rest = &frac[end..];
    }
    let offset: i64 = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let oh = num(s.len() - 5..s.len() - 3)?;
            let om = num(s.len() - 2..s.len())?;
            let v = oh * 3600 + om * 60;
            if o.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    // Howard Hinnant's days_from_civil.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    (secs >= 0).then(|| secs as u128 * 1_000_000_000 + nanos)
}

/// A duration back from `now_ns`, or an RFC 3339 time.
pub fn parse_time(flag: &'static str, s: &str, now_ns: u128) -> Result<u128, QueryError> {
    if let Ok(d) = util::parse_duration(s) {
        return Ok(now_ns.saturating_sub(d.as_nanos()));
    }
    parse_rfc3339(s.trim()).ok_or_else(|| QueryError::Time {
        flag,
        value: s.into(),
    })
}
