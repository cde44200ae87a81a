//! Query tests: times, destinations, filters and `--last`.

use super::*;
use crate::util;

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
