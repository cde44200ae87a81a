//! Loss accounting: a burst of denied sends far beyond the ring buffer's capacity with the
//! consumer deliberately slowed. Every decision the kernel tried to record is either delivered or
//! counted as lost — exactly.

use std::{net::SocketAddr, time::Duration};

use chokepoint_tests::*;

#[test]
fn emitted_equals_delivered_plus_lost() {
    let sb = Sandbox::new();
    let cg = Cgroup::new(&unique("cpt-loss"));
    let mut daemon = Daemon::start(&sb.policy(&[("agent", &cg.rel, "enforce")]), &[]);
    // Restart with the consumer slowed to ~1,000 records/s.
    daemon.kill(libc::SIGTERM);
    daemon.set_env("CHOKEPOINT_CONSUMER_DELAY_MS", "50");
    daemon.spawn(None);
    let dst = SocketAddr::new(sb.forbidden4(), OTHER_UDP).to_string();
    let r = probe(
        Some(&cg.path),
        None,
        &["udp-flood", &dst, "200000"],
        "flood",
    );
    assert_eq!(r["refused"], 200_000, "{r}");
    // Let the slow consumer drain what the ring buffer holds.
    let t0 = std::time::Instant::now();
    let (mut delivered, mut lost, mut emitted) = (0u64, 0u64, 0u64);
    // Under software emulation the consumer drains several times slower (`time_scale`).
    while t0.elapsed() < Duration::from_secs(60 * u64::from(time_scale())) {
        let st = daemon.cli_json(&["status", "--json"]);
        delivered = st["records"]["delivered"].as_u64().unwrap_or(0);
        lost = st["records"]["lost"].as_u64().unwrap_or(0);
        emitted = st["records"]["kernel_decisions"].as_u64().unwrap_or(0);
        if emitted > 0 && delivered + lost == emitted {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(emitted, 200_000, "the kernel counted {emitted} decisions");
    assert!(
        lost > 0,
        "the burst did not overflow the ring buffer (delivered {delivered})"
    );
    assert_eq!(
        delivered + lost,
        emitted,
        "delivered {delivered} + lost {lost} != emitted {emitted}"
    );
    let text = daemon.scrape();
    assert_eq!(
        metric(&text, "chokepoint_records_lost_total"),
        Some(lost as f64)
    );
    // The loss is visible as `lost` records with counts that add up (the audit log keeps all;
    // the in-memory buffer keeps only the newest 10,000 records).
    std::thread::sleep(Duration::from_millis(1000));
    let log = std::fs::read_to_string(&daemon.audit_log).expect("audit log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let lost_records: u64 = lines
        .iter()
        .filter(|f| f["verdict"] == "lost")
        .map(|f| f["count"].as_u64().unwrap_or(0))
        .sum();
    // Flow records (the alerts about them are audit log lines too).
    let denied = lines
        .iter()
        .filter(|f| f["event"] == "flow" && f["verdict"] == "deny")
        .count() as u64;
    assert_eq!(
        denied, delivered,
        "the audit log holds {denied} deny records, {delivered} were delivered"
    );
    assert_eq!(
        lost_records, lost,
        "lost records add up to {lost_records}, counter says {lost}"
    );
}
