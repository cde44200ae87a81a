//! Queries over flow records and alerts (`flows` and `alerts` filters): the wire form the CLI
//! sends, and the compiled filter the daemon applies to its buffer and to live streams.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    alerts::Alert,
    audit::FlowRecord,
    policy::parse::{Cidr, parse_cidr},
    util,
};

/// The filters of `flows` and `alerts` as sent to the daemon. Times are strings (a duration back
/// from now, such as `10m`, or RFC 3339) resolved by the daemon's clock.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Query {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Only the most recent N matching entries (with `follow`: the backlog printed first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `CIDR[:PORT]`: `10.0.0.0/8`, `10.0.0.5:443`, `[fd00::/64]:443`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// A query that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("--{flag} `{value}`: expected a duration (30s, 10m, 2h) or an RFC 3339 time")]
    Time { flag: &'static str, value: String },
    #[error("--dst `{0}`: expected CIDR[:PORT], e.g. 10.0.0.0/8, 10.0.0.5:443 or [fd00::/64]:443")]
    Dst(String),
    #[error("--since is after --until")]
    Empty,
    #[error("--last must be at least 1")]
    Last,
}

/// The destination part of a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DstFilter {
    pub net: Cidr,
    pub port: Option<u16>,
}

/// A compiled query.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Wall-clock ns bounds (inclusive).
    pub since_ns: Option<u128>,
    pub until_ns: Option<u128>,
    pub last: Option<usize>,
    pub query: Query,
    pub dst: Option<DstFilter>,
}

/// The fields a filter looks at.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fields<'a> {
    pub time: &'a str,
    pub identity: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub task: Option<&'a str>,
    pub reason: &'a str,
    pub dst: Option<&'a str>,
    pub verdict: &'a str,
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
}

/// Something `flows`/`alerts` can filter.
pub trait Queryable {
    fn fields(&self) -> Fields<'_>;
}

impl Queryable for FlowRecord {
    fn fields(&self) -> Fields<'_> {
        Fields {
            time: &self.time,
            identity: self.identity.as_deref(),
            tenant: self.tenant.as_deref(),
            task: self.task.as_deref(),
            reason: &self.reason,
            dst: self.dst.as_deref(),
            verdict: &self.verdict,
            namespace: self.namespace.as_deref(),
            pod: self.pod.as_deref(),
        }
    }
}

impl Queryable for Alert {
    fn fields(&self) -> Fields<'_> {
        Fields {
            time: &self.time,
            identity: self.identity.as_deref(),
            tenant: self.tenant.as_deref(),
            task: self.task.as_deref(),
            reason: &self.reason,
            dst: self.dst.as_deref(),
            verdict: &self.verdict,
            namespace: self.namespace.as_deref(),
            pod: self.pod.as_deref(),
        }
    }
}

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

/// Parses `CIDR[:PORT]`.
pub fn parse_dst(s: &str) -> Result<DstFilter, QueryError> {
    let t = s.trim();
    let bad = || QueryError::Dst(s.into());
    let (net, port) = if let Some(rest) = t.strip_prefix('[') {
        match rest.split_once(']') {
            Some((net, "")) => (net, None),
            Some((net, p)) => (net, Some(p.strip_prefix(':').ok_or_else(bad)?)),
            None => return Err(bad()),
        }
    } else if t.matches(':').count() == 1 {
        let (n, p) = t.split_once(':').expect("one colon");
        (n, Some(p))
    } else {
        (t, None)
    };
    // Host bits are allowed in a filter (10.1.2.3/24 means 10.1.2.0/24).
    let net = match parse_cidr(net) {
        Ok(c) => c,
        Err(_) => {
            let (ip, bits) = net.split_once('/').ok_or_else(bad)?;
            let addr: IpAddr = ip.parse().map_err(|_| bad())?;
            let bits: u8 = bits.parse().map_err(|_| bad())?;
            if bits > if addr.is_ipv4() { 32 } else { 128 } {
                return Err(bad());
            }
            Cidr { addr, bits }
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
        None => None,
    };
    Ok(DstFilter { net, port })
}

fn split_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, p) = rest.split_once("]:")?;
        (ip, p)
    } else {
        s.rsplit_once(':')?
    };
    Some((ip.parse().ok()?, port.parse().ok()?))
}

fn contains(net: &Cidr, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match (net.addr, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(net.bits)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(net.bits))
                .unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

impl DstFilter {
    /// Whether a record's `dst` (`ip:port` or `[ip]:port`) matches.
    pub fn matches(&self, dst: Option<&str>) -> bool {
        let Some((ip, port)) = dst.and_then(split_endpoint) else {
            return false;
        };
        contains(&self.net, ip) && self.port.is_none_or(|p| p == port)
    }
}

impl Query {
    /// True when no filter is set.
    pub fn is_empty(&self) -> bool {
        *self == Query::default()
    }

    /// Validates and compiles against the clock `now_ns`.
    pub fn compile(&self, now_ns: u128) -> Result<Filter, QueryError> {
        let since_ns = self
            .since
            .as_deref()
            .map(|s| parse_time("since", s, now_ns))
            .transpose()?;
        let until_ns = self
            .until
            .as_deref()
            .map(|s| parse_time("until", s, now_ns))
            .transpose()?;
        if let (Some(a), Some(b)) = (since_ns, until_ns)
            && a > b
        {
            return Err(QueryError::Empty);
        }
        if self.last == Some(0) {
            return Err(QueryError::Last);
        }
        let dst = self.dst.as_deref().map(parse_dst).transpose()?;
        Ok(Filter {
            since_ns,
            until_ns,
            last: self.last,
            query: self.clone(),
            dst,
        })
    }
}

fn eq(want: &Option<String>, have: Option<&str>) -> bool {
    want.as_deref().is_none_or(|w| have == Some(w))
}

impl Filter {
    /// Whether an entry passes every filter but `last`.
    pub fn matches(&self, r: &dyn Queryable) -> bool {
        let f = r.fields();
        let q = &self.query;
        if !(eq(&q.identity, f.identity)
            && eq(&q.tenant, f.tenant)
            && eq(&q.task, f.task)
            && eq(&q.reason, Some(f.reason))
            && eq(&q.verdict, Some(f.verdict))
            && eq(&q.namespace, f.namespace)
            && eq(&q.pod, f.pod))
        {
            return false;
        }
        if let Some(d) = &self.dst
            && !d.matches(f.dst)
        {
            return false;
        }
        if self.since_ns.is_some() || self.until_ns.is_some() {
            let Some(t) = parse_rfc3339(f.time) else {
                return false;
            };
            if self.since_ns.is_some_and(|s| t < s) || self.until_ns.is_some_and(|u| t > u) {
                return false;
            }
        }
        true
    }

    /// The matching entries of a buffer (oldest first), the most recent `last` of them.
    pub fn select<'a, T: Queryable + 'a>(
        &self,
        items: impl DoubleEndedIterator<Item = &'a T>,
    ) -> Vec<&'a T> {
        let mut out: Vec<&T> = match self.last {
            Some(n) => items.rev().filter(|r| self.matches(*r)).take(n).collect(),
            None => items.filter(|r| self.matches(*r)).collect(),
        };
        if self.last.is_some() {
            out.reverse();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        let t = 1_700_000_000_123_456_789u128;
        assert_eq!(parse_rfc3339(&util::rfc3339_ns(t)), Some(t));
        assert_eq!(
            parse_rfc3339("2023-11-15T00:13:20.5+02:00"),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(parse_rfc3339("2023-11-14"), None);
        assert_eq!(parse_rfc3339("2023-13-14T00:00:00Z"), None);
        assert_eq!(
            parse_time("since", "10s", 20_000_000_000),
            Ok(10_000_000_000)
        );
        assert!(parse_time("since", "yesterday", 0).is_err());
    }

    #[test]
    fn destination_filters() {
        let d = parse_dst("10.0.0.0/8:443").unwrap();
        assert!(d.matches(Some("10.1.2.3:443")));
        assert!(!d.matches(Some("10.1.2.3:80")));
        assert!(!d.matches(Some("11.1.2.3:443")));
        assert!(!d.matches(None));
        let d = parse_dst("10.0.0.5").unwrap();
        assert!(d.matches(Some("10.0.0.5:53")));
        let d = parse_dst("[fd00::/64]:443").unwrap();
        assert!(d.matches(Some("[fd00::9]:443")));
        assert!(!d.matches(Some("[fd01::9]:443")));
        let d = parse_dst("fd00::1").unwrap();
        assert!(d.matches(Some("[fd00::1]:1")));
        assert!(parse_dst("10.0.0.0/33").is_err());
        assert!(
            parse_dst("10.0.0.9/24:80")
                .unwrap()
                .matches(Some("10.0.0.1:80"))
        );
        assert!(parse_dst("10.0.0.1:http").is_err());
        assert!(parse_dst("[fd00::1]443").is_err());
    }

    #[test]
    fn filters_and_last() {
        let mk = |i: u32, id: &str, verdict: &str| FlowRecord {
            identity: Some(id.into()),
            verdict: verdict.into(),
            dst: Some(format!("10.0.0.{i}:443")),
            time: util::rfc3339_ns(u128::from(i) * 1_000_000_000),
            ..crate::audit::lost_record("n", 0, "x", 1)
        };
        let recs: Vec<FlowRecord> = (1..=6)
            .map(|i| mk(i, if i % 2 == 0 { "a" } else { "b" }, "deny"))
            .collect();
        let q = Query {
            identity: Some("a".into()),
            last: Some(2),
            ..Query::default()
        };
        let f = q.compile(100_000_000_000).unwrap();
        let got: Vec<_> = f
            .select(recs.iter())
            .iter()
            .map(|r| r.dst.clone())
            .collect();
        assert_eq!(
            got,
            vec![Some("10.0.0.4:443".into()), Some("10.0.0.6:443".into())]
        );
        let q = Query {
            since: Some(util::rfc3339_ns(2_000_000_000)),
            until: Some(util::rfc3339_ns(3_000_000_000)),
            ..Query::default()
        };
        assert_eq!(q.compile(0).unwrap().select(recs.iter()).len(), 2);
        let q = Query {
            since: Some("1970-01-01T00:00:09Z".into()),
            until: Some("1970-01-01T00:00:01Z".into()),
            ..Query::default()
        };
        assert_eq!(q.compile(0).unwrap_err(), QueryError::Empty);
        let q = Query {
            namespace: Some("agents".into()),
            ..Query::default()
        };
        assert!(q.compile(0).unwrap().select(recs.iter()).is_empty());
    }
}
