//! Flow records, metrics and alerts: every field of a record checked against what the test did,
//! the Prometheus exposition scraped and parsed, and a webhook receiver on loopback that gets one
//! deduplicated alert with the right count (after refusing the first delivery).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use chokepoint_tests::*;

#[test]
fn every_verdict_produces_a_complete_record() {
    let fx = Fixture::new("enforce");
    let gw = SocketAddr::new(fx.sb.gateway4(), GATEWAY_PORT).to_string();
    let dns = SocketAddr::new(fx.sb.resolver4(), DNS).to_string();
    let bad = SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP).to_string();
    let granted = SocketAddr::new(fx.sb.forbidden4(), QUIC).to_string();
    fx.daemon.cli_json(&[
        "grant",
        "--identity",
        "agent",
        "--to",
        &format!("{granted}/tcp"),
        "--ttl",
        "5m",
        "--task",
        "T-rec",
        "--json",
    ]);
    // The probes print their own pid in the payload; the records must carry it.
    let cases: [(&str, &[&str], &str, &str, &str); 4] = [
        (
            "gateway",
            &["tcp", &gw],
            "allow",
            "gateway",
            "gateway:llm-gateway",
        ),
        (
            "rule",
            &["udp-sendto", &dns],
            "allow",
            "rule",
            "allow[0]: cluster DNS",
        ),
        ("grant", &["tcp", &granted], "allow", "grant", ""),
        ("deny", &["tcp", &bad], "deny", "not_gateway", ""),
    ];
    for (what, args, verdict, reason, rule) in cases {
        let mut cmd = Command::new(probe_bin());
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env("CP_PAYLOAD", what);
        let child = in_cgroup(cmd, Some(&fx.cg.path), None)
            .spawn()
            .expect("probe");
        let pid = child.id();
        let _ = child.wait_with_output();
        let dst = args[1];
        let rec = fx
            .daemon
            .wait_flow(Duration::from_secs(5), |f| {
                f["pid"] == pid && f["dst"] == dst
            })
            .unwrap_or_else(|| panic!("{what}: no record for pid {pid}: {:#?}", fx.daemon.flows()));
        assert_eq!(rec["verdict"], verdict, "{what}: {rec}");
        assert_eq!(rec["reason"], reason, "{what}: {rec}");
        assert_eq!(rec["identity"], "agent");
        assert_eq!(rec["tenant"], "acme");
        assert_eq!(rec["uid"], 0);
        assert_eq!(rec["comm"], "cp-probe");
        assert_eq!(rec["family"], 4);
        assert_eq!(rec["cgroup"], fx.cg.rel);
        assert_eq!(rec["policy_generation"], 1);
        assert_eq!(rec["schema"], 1);
        assert!(
            rec["socket_cookie"].as_u64().is_some_and(|c| c > 0),
            "{rec}"
        );
        assert!(
            rec["time"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() == 30),
            "{rec}"
        );
        assert!(rec["node"].as_str().is_some_and(|n| !n.is_empty()));
        if !rule.is_empty() {
            assert_eq!(rec["rule"], rule, "{what}: {rec}");
        }
        if what == "grant" {
            assert_eq!(rec["task"], "T-rec");
        } else {
            assert!(rec["task"].is_null(), "{what}: {rec}");
        }
    }
    // Audit verdict, in a second identity in audit mode.
    let audit_cg = Cgroup::new(&unique("cpt-audit"));
    let policy = fx.sb.policy(&[
        ("agent", &fx.cg.rel, "enforce"),
        ("watcher", &audit_cg.rel, "audit"),
    ]);
    assert_eq!(fx.daemon.apply(&policy)["generation"], 2);
    let r = probe(Some(&audit_cg.path), None, &["tcp", &bad], "audit");
    assert!(ok(&r), "{r}");
    let rec = fx
        .daemon
        .wait_flow(Duration::from_secs(5), |f| f["identity"] == "watcher")
        .unwrap_or_else(|| panic!("no audit record: {:#?}", fx.daemon.flows()));
    assert_eq!(rec["verdict"], "audit");
    assert_eq!(rec["reason"], "not_gateway");
    assert_eq!(rec["policy_generation"], 2);
    assert_eq!(rec["dst"], bad);
    // The same records are in the audit log file.
    let log = std::fs::read_to_string(&fx.daemon.audit_log).expect("audit log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["identity"] == "watcher" && l["verdict"] == "audit")
    );
    assert!(
        lines
            .iter()
            .any(|l| l["reason"] == "grant" && l["task"] == "T-rec")
    );
}

#[test]
fn metrics_match_the_traffic() {
    let fx = Fixture::new("enforce");
    let bad = SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP).to_string();
    let gw = SocketAddr::new(fx.sb.gateway4(), GATEWAY_PORT).to_string();
    for _ in 0..5 {
        assert!(eperm(&fx.attempt(false, &["tcp", &bad], "m")));
    }
    for _ in 0..3 {
        assert!(ok(&fx.attempt(false, &["tcp", &gw], "m")));
    }
    let t0 = std::time::Instant::now();
    let text = loop {
        let t = fx.daemon.scrape();
        // Deny and allow records come from different hooks: wait for both counts.
        let denied = metric(
            &t,
            "chokepoint_decisions_total{identity=\"agent\",verdict=\"deny\",reason=\"not_gateway\"}",
        );
        let allowed = metric(
            &t,
            "chokepoint_decisions_total{identity=\"agent\",verdict=\"allow\",reason=\"gateway\"}",
        );
        if (denied == Some(5.0) && allowed == Some(3.0)) || t0.elapsed() > Duration::from_secs(10) {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        metric(
            &text,
            "chokepoint_decisions_total{identity=\"agent\",verdict=\"deny\",reason=\"not_gateway\"}"
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "chokepoint_decisions_total{identity=\"agent\",verdict=\"allow\",reason=\"gateway\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "chokepoint_bypass_attempts_total{identity=\"agent\",reason=\"not_gateway\"}"
        ),
        Some(5.0)
    );
    assert_eq!(metric(&text, "chokepoint_records_lost_total"), Some(0.0));
    assert_eq!(metric(&text, "chokepoint_policy_generation"), Some(1.0));
    assert_eq!(
        metric(&text, "chokepoint_enforcing{identity=\"agent\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "chokepoint_programs_attached{program=\"cp_connect4\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "chokepoint_programs_attached{program=\"cp_skb_egress\"}"
        ),
        Some(1.0)
    );
    assert!(metric(&text, "process_resident_memory_bytes").is_some_and(|v| v > 0.0));
    assert!(text.contains("# TYPE chokepoint_policy_apply_seconds histogram"));
    // No label carries an address.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !l.contains(&fx.sb.forbidden4().to_string()),
            "address in a label: {l}"
        );
    }
    // The identity's cgroup disappears: not enforcing any more, and the metric says so.
    let gone = Cgroup::new(&unique("cpt-gone"));
    let policy = fx.sb.policy(&[
        ("agent", &fx.cg.rel, "enforce"),
        ("gone", &gone.rel, "enforce"),
    ]);
    fx.daemon.apply(&policy);
    drop(gone);
    std::thread::sleep(Duration::from_millis(1200));
    let text = fx.daemon.scrape();
    assert_eq!(
        metric(&text, "chokepoint_enforcing{identity=\"gone\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "chokepoint_enforcing{identity=\"agent\"}"),
        Some(1.0)
    );
}

/// What a webhook receiver got (bodies) and how many deliveries it saw.
type Received = (
    SocketAddr,
    Arc<Mutex<Vec<serde_json::Value>>>,
    Arc<Mutex<usize>>,
);

/// A webhook receiver: refuses the first `refuse` deliveries with 500, then accepts.
fn receiver(refuse: usize) -> Received {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let got = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(Mutex::new(0usize));
    let (g, a) = (got.clone(), attempts.clone());
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut r = BufReader::new(c.try_clone().expect("clone"));
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                eprintln!("receiver: {line:?}");
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            let n = {
                let mut a = a.lock().expect("lock");
                *a += 1;
                *a
            };
            if n <= refuse {
                let _ =
                    c.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n");
                continue;
            }
            g.lock()
                .expect("lock")
                .push(serde_json::from_slice(&body).unwrap_or_default());
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (addr, got, attempts)
}

#[test]
fn webhook_gets_one_deduplicated_alert_after_a_retry() {
    let (addr, got, attempts) = receiver(1);
    let url = format!("http://{addr}/alerts");
    let fx = Fixture::with_args("enforce", &["--alert-webhook", &url]);
    let bad = SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP).to_string();
    for _ in 0..12 {
        assert!(eperm(&fx.attempt(false, &["tcp", &bad], "burst")));
    }
    let t0 = std::time::Instant::now();
    while got.lock().expect("lock").is_empty() && t0.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let alerts = got.lock().expect("lock").clone();
    assert_eq!(
        alerts.len(),
        1,
        "expected one deduplicated alert: {alerts:#?} after {} attempts\n{}",
        attempts.lock().expect("lock"),
        fx.daemon.log_text()
    );
    let a = &alerts[0];
    assert_eq!(a["count"], 12, "{a}");
    assert_eq!(a["identity"], "agent");
    assert_eq!(a["tenant"], "acme");
    assert_eq!(a["dst"], bad);
    assert_eq!(a["reason"], "not_gateway");
    assert_eq!(a["severity"], "high");
    assert!(*attempts.lock().expect("lock") >= 2, "no retry happened");
    let text = fx.daemon.scrape();
    assert_eq!(
        metric(&text, "chokepoint_alerts_total{reason=\"not_gateway\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(metric(&text, "chokepoint_webhook_failures_total").is_some_and(|v| v >= 1.0));
    let (ok_, out, _) = fx.daemon.try_cli(&["alerts", "--json"]);
    assert!(ok_);
    assert!(out.lines().any(|l| l.contains("\"count\":12")), "{out}");
}
