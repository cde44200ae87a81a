//! The per-packet backstop (`cgroup_skb/egress`, TC): established flows whose permission is
//! revoked drop on their next packet; sockets that existed before the policy are judged by a full
//! lookup; audit mode lets everything through and records `audit`.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chokepoint_tests::*;

fn ticks(rec: &Received, payload_prefix: &str) -> usize {
    rec.count(|v| {
        v["data"]
            .as_str()
            .is_some_and(|d| d.contains(payload_prefix))
    })
}

/// Starts `cp-probe hold` in the identity cgroup: a TCP connection that sends a tick every 100 ms.
fn hold(fx: &Fixture, pod: bool, dst: SocketAddr, secs: u64) -> Proc {
    let mut cmd = Command::new(probe_bin());
    cmd.args(["hold", &dst.to_string(), &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Proc(
        in_cgroup(cmd, Some(&fx.cg.path), pod.then_some(&fx.sb.pod))
            .spawn()
            .expect("hold"),
    )
}

fn wait_ticks(fx: &Fixture, min: usize) {
    let t0 = Instant::now();
    while ticks(&fx.sb.received, "tick-") < min {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no ticks arrived: {:?}",
            fx.sb.received.all()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn revoked_established_flow_drops_on_next_packet() {
    for pod in [false, true] {
        let fx = Fixture::new("enforce");
        let gw = SocketAddr::new(fx.sb.gateway4(), GATEWAY_PORT);
        let _h = hold(&fx, pod, gw, 20);
        wait_ticks(&fx, 3);
        // New generation: the identity keeps only the resolver rule, no gateway.
        let policy = fx
            .sb
            .policy(&[("agent", &fx.cg.rel, "enforce")])
            .replace("        gateways: [llm-gateway]\n", "");
        let r = fx.daemon.apply(&policy);
        assert_eq!(r["generation"], 2);
        std::thread::sleep(Duration::from_millis(300));
        let after = ticks(&fx.sb.received, "tick-");
        std::thread::sleep(Duration::from_millis(1000));
        assert_eq!(
            ticks(&fx.sb.received, "tick-"),
            after,
            "ticks still arrive after revocation (pod={pod})"
        );
        let rec = fx.daemon.wait_flow(Duration::from_secs(5), |f| {
            f["verdict"] == "deny" && f["reason"] == "revoked"
        });
        let rec = rec.unwrap_or_else(|| panic!("no revoked record: {:#?}", fx.daemon.flows()));
        assert_eq!(rec["policy_generation"], 2);
        assert_eq!(rec["dst"], gw.to_string());
    }
}

#[test]
fn sockets_from_before_the_policy_are_judged_per_packet() {
    let sb = Sandbox::new();
    let cg = Cgroup::new(&unique("cpt-early"));
    // The connection exists before any daemon or policy.
    let mut cmd = Command::new(probe_bin());
    let dst = SocketAddr::new(sb.forbidden4(), OTHER_TCP);
    cmd.args(["hold", &dst.to_string(), "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _h = Proc(in_cgroup(cmd, Some(&cg.path), None).spawn().expect("hold"));
    let t0 = Instant::now();
    while ticks(&sb.received, "tick-") < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no ticks before the policy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let daemon = Daemon::start(&sb.policy(&[("agent", &cg.rel, "enforce")]), &[]);
    std::thread::sleep(Duration::from_millis(300));
    let after = ticks(&sb.received, "tick-");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        ticks(&sb.received, "tick-"),
        after,
        "a pre-existing forbidden flow kept flowing"
    );
    let rec = daemon.wait_flow(Duration::from_secs(5), |f| {
        f["verdict"] == "deny" && f["hook"] == "skb"
    });
    let rec = rec.unwrap_or_else(|| panic!("no skb deny record: {:#?}", daemon.flows()));
    assert_eq!(rec["dst"], dst.to_string());
    assert_eq!(rec["identity"], "agent");
}

#[test]
fn audit_mode_lets_bypasses_through_and_records_them() {
    let fx = Fixture::new("audit");
    for pod in [false, true] {
        let dst = SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP).to_string();
        let p = payload("audit");
        let r = fx.attempt(pod, &["tcp", &dst], &p);
        fx.assert_allowed("audit-mode direct connect", &r, &p);
        let rec = fx.daemon.wait_flow(Duration::from_secs(5), |f| {
            f["verdict"] == "audit" && f["dst"] == dst.as_str()
        });
        let rec = rec.unwrap_or_else(|| panic!("no audit record: {:#?}", fx.daemon.flows()));
        assert_eq!(rec["reason"], "not_gateway");
        assert_eq!(rec["mode"], "audit");
        let p = payload("audit-udp");
        let r = fx.attempt(
            pod,
            &[
                "udp-sendto",
                &SocketAddr::new(fx.sb.other_resolver4(), DNS).to_string(),
            ],
            &p,
        );
        fx.assert_allowed("audit-mode DNS", &r, &p);
        let p = payload("audit-v6");
        let r = fx.attempt(
            pod,
            &[
                "tcp",
                &SocketAddr::new(fx.sb.forbidden6(), OTHER_TCP).to_string(),
            ],
            &p,
        );
        fx.assert_allowed("audit-mode IPv6", &r, &p);
    }
    let r = fx.attempt(false, &["raw-icmp", &fx.sb.forbidden4().to_string()], "x");
    assert!(ok(&r), "audit mode refused a raw socket: {r}");
    assert!(
        fx.daemon
            .wait_flow(Duration::from_secs(5), |f| f["verdict"] == "audit"
                && f["reason"] == "raw_socket")
            .is_some()
    );
}
