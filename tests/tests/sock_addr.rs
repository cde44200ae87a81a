//! connect4/connect6/sendmsg4/sendmsg6: one decision per destination. Each bypass class of
//! DESIGN.md §1 that these hooks own, in the host network namespace and in a pod-like namespace,
//! checked at the receiving server; and the gateway and allowed destinations keep working.

use chokepoint_tests::*;

fn a(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

fn both(f: impl Fn(&Fixture, bool)) {
    let fx = Fixture::new("enforce");
    f(&fx, false);
    f(&fx, true);
}

#[test]
fn gateway_v4_and_v6_allowed_with_records() {
    both(|fx, pod| {
        let p = payload("gw4");
        let r = fx.attempt(pod, &["tcp", &a(fx.sb.gateway4(), GATEWAY_PORT)], &p);
        fx.assert_allowed("gateway v4", &r, &p);
        let p = payload("gw6");
        let r = fx.attempt(pod, &["tcp", &a(fx.sb.gateway6(), GATEWAY_PORT)], &p);
        fx.assert_allowed("gateway v6", &r, &p);
    });
    let fx = Fixture::new("enforce");
    let p = payload("gwrec");
    let r = fx.attempt(false, &["tcp", &a(fx.sb.gateway4(), GATEWAY_PORT)], &p);
    fx.assert_allowed("gateway v4", &r, &p);
    let rec = fx
        .daemon
        .wait_flow(std::time::Duration::from_secs(5), |f| {
            f["verdict"] == "allow" && f["reason"] == "gateway"
        })
        .expect("allow record");
    assert_eq!(rec["identity"], "agent");
    assert_eq!(rec["tenant"], "acme");
    assert_eq!(rec["hook"], "connect4");
    assert_eq!(rec["rule"], "gateway:llm-gateway");
    assert_eq!(rec["dst"], a(fx.sb.gateway4(), GATEWAY_PORT));
    assert_eq!(rec["policy_generation"], 1);
    assert!(rec["socket_cookie"].as_u64().is_some());
    assert_eq!(rec["cgroup"], fx.cg.rel);
}

#[test]
fn direct_tcp_connect_blocked() {
    both(|fx, pod| {
        let p = payload("direct");
        let r = fx.attempt(pod, &["tcp", &a(fx.sb.forbidden4(), OTHER_TCP)], &p);
        assert!(eperm(&r), "expected EPERM: {r}");
        fx.assert_blocked(
            "direct TCP",
            &r,
            &p,
            &a(fx.sb.forbidden4(), OTHER_TCP),
            Some("not_gateway"),
        );
        // The gateway's address on another port is not the gateway either.
        let p = payload("gwport");
        let r = fx.attempt(pod, &["tcp", &a(fx.sb.gateway4(), OTHER_TCP)], &p);
        fx.assert_blocked(
            "gateway IP, other port",
            &r,
            &p,
            &a(fx.sb.gateway4(), OTHER_TCP),
            Some("not_gateway"),
        );
    });
}

#[test]
fn ipv6_blocked() {
    both(|fx, pod| {
        let p = payload("v6");
        let r = fx.attempt(pod, &["tcp", &a(fx.sb.forbidden6(), OTHER_TCP)], &p);
        assert!(eperm(&r), "expected EPERM: {r}");
        fx.assert_blocked(
            "IPv6",
            &r,
            &p,
            &a(fx.sb.forbidden6(), OTHER_TCP),
            Some("not_gateway"),
        );
    });
}

#[test]
fn ipv4_mapped_ipv6_blocked() {
    both(|fx, pod| {
        let p = payload("mapped");
        let r = fx.attempt(pod, &["tcp-mapped", &a(fx.sb.forbidden4(), OTHER_TCP)], &p);
        assert!(eperm(&r), "expected EPERM: {r}");
        // Normalised: the record names the IPv4 destination.
        fx.assert_blocked(
            "IPv4-mapped IPv6",
            &r,
            &p,
            &a(fx.sb.forbidden4(), OTHER_TCP),
            Some("not_gateway"),
        );
        // And the mapped form of the gateway is the gateway.
        let p = payload("mappedgw");
        let r = fx.attempt(pod, &["tcp-mapped", &a(fx.sb.gateway4(), GATEWAY_PORT)], &p);
        fx.assert_allowed("IPv4-mapped gateway", &r, &p);
    });
}

#[test]
fn unconnected_udp_sendto_blocked() {
    both(|fx, pod| {
        let p = payload("sendto");
        let r = fx.attempt(pod, &["udp-sendto", &a(fx.sb.forbidden4(), OTHER_UDP)], &p);
        assert!(eperm(&r), "expected EPERM: {r}");
        fx.assert_blocked(
            "UDP sendto",
            &r,
            &p,
            &a(fx.sb.forbidden4(), OTHER_UDP),
            Some("not_gateway"),
        );
        let p = payload("sendto6");
        let r = fx.attempt(pod, &["udp-sendto", &a(fx.sb.forbidden6(), OTHER_UDP)], &p);
        fx.assert_blocked(
            "UDP sendto v6",
            &r,
            &p,
            &a(fx.sb.forbidden6(), OTHER_UDP),
            Some("not_gateway"),
        );
    });
}

#[test]
fn sendmmsg_blocked() {
    both(|fx, pod| {
        let p = payload("mmsg");
        let r = fx.attempt(pod, &["sendmmsg", &a(fx.sb.forbidden4(), OTHER_UDP)], &p);
        fx.assert_blocked(
            "sendmmsg",
            &r,
            &p,
            &a(fx.sb.forbidden4(), OTHER_UDP),
            Some("not_gateway"),
        );
    });
}

#[test]
fn connected_udp_and_quic_blocked() {
    both(|fx, pod| {
        let p = payload("quic");
        let r = fx.attempt(pod, &["udp-connect", &a(fx.sb.forbidden4(), QUIC)], &p);
        assert!(eperm(&r), "expected EPERM: {r}");
        fx.assert_blocked(
            "QUIC to 443",
            &r,
            &p,
            &a(fx.sb.forbidden4(), QUIC),
            Some("not_gateway"),
        );
        // UDP 443 to the gateway's address is not a gateway endpoint (the endpoint is TCP).
        let p = payload("quicgw");
        let r = fx.attempt(pod, &["udp-connect", &a(fx.sb.gateway4(), QUIC)], &p);
        fx.assert_blocked(
            "QUIC to the gateway IP",
            &r,
            &p,
            &a(fx.sb.gateway4(), QUIC),
            Some("not_gateway"),
        );
    });
}

#[test]
fn dns_to_other_resolver_blocked_and_allowed_resolver_works() {
    both(|fx, pod| {
        let p = payload("dnsudp");
        let r = fx.attempt(pod, &["udp-sendto", &a(fx.sb.other_resolver4(), DNS)], &p);
        fx.assert_blocked(
            "DNS over UDP",
            &r,
            &p,
            &a(fx.sb.other_resolver4(), DNS),
            Some("dns_resolver"),
        );
        let p = payload("dnstcp");
        let r = fx.attempt(pod, &["tcp", &a(fx.sb.other_resolver4(), DNS)], &p);
        fx.assert_blocked(
            "DNS over TCP",
            &r,
            &p,
            &a(fx.sb.other_resolver4(), DNS),
            Some("dns_resolver"),
        );
        let p = payload("dnsok");
        let r = fx.attempt(pod, &["udp-sendto", &a(fx.sb.resolver4(), DNS)], &p);
        fx.assert_allowed("DNS to the allowed resolver", &r, &p);
        let p = payload("dnsoktcp");
        let r = fx.attempt(pod, &["tcp", &a(fx.sb.resolver4(), DNS)], &p);
        fx.assert_allowed("DNS over TCP to the allowed resolver", &r, &p);
    });
}

#[test]
fn tcp_fast_open_blocked() {
    both(|fx, pod| {
        let p = payload("tfo");
        let r = fx.attempt(pod, &["tfo", &a(fx.sb.forbidden4(), OTHER_TCP)], &p);
        fx.assert_blocked(
            "sendto(MSG_FASTOPEN)",
            &r,
            &p,
            &a(fx.sb.forbidden4(), OTHER_TCP),
            None,
        );
    });
}

#[test]
fn io_uring_connect_blocked() {
    both(|fx, pod| {
        let p = payload("uring");
        let r = fx.attempt(pod, &["io-uring", &a(fx.sb.forbidden4(), OTHER_TCP)], &p);
        assert!(eperm(&r), "expected EPERM: {r}");
        fx.assert_blocked(
            "IORING_OP_CONNECT",
            &r,
            &p,
            &a(fx.sb.forbidden4(), OTHER_TCP),
            Some("not_gateway"),
        );
        let p = payload("uringgw");
        let r = fx.attempt(pod, &["io-uring", &a(fx.sb.gateway4(), GATEWAY_PORT)], &p);
        fx.assert_allowed("io_uring connect to the gateway", &r, &p);
    });
}

#[test]
fn children_and_exec_blocked() {
    both(|fx, pod| {
        let p = payload("fork");
        let r = fx.attempt(pod, &["fork", &a(fx.sb.forbidden4(), OTHER_TCP)], &p);
        let child = r["lines"]
            .as_array()
            .and_then(|l| l.iter().find(|v| v.get("child").is_some()))
            .cloned()
            .unwrap_or_default();
        fx.assert_blocked(
            "forked child",
            &child["child"],
            &p,
            &a(fx.sb.forbidden4(), OTHER_TCP),
            Some("not_gateway"),
        );
        let p = payload("exec");
        let r = fx.attempt(pod, &["exec", "tcp", &a(fx.sb.forbidden4(), OTHER_TCP)], &p);
        fx.assert_blocked(
            "exec'd binary",
            &r,
            &p,
            &a(fx.sb.forbidden4(), OTHER_TCP),
            Some("not_gateway"),
        );
    });
}

#[test]
fn new_child_cgroup_covered_from_first_packet() {
    let fx = Fixture::new("enforce");
    for pod in [false, true] {
        // Created after the policy was applied; no daemon involvement needed.
        let child = fx.cg.child(&format!("container-{}", u8::from(pod)));
        let grandchild = child.join("nested");
        std::fs::create_dir_all(&grandchild).expect("nested cgroup");
        let p = payload("childcg");
        let r = probe(
            Some(&grandchild),
            pod.then_some(&fx.sb.pod),
            &["tcp", &a(fx.sb.forbidden4(), OTHER_TCP)],
            &p,
        );
        assert!(eperm(&r), "expected EPERM from a new child cgroup: {r}");
        fx.assert_blocked(
            "new child cgroup",
            &r,
            &p,
            &a(fx.sb.forbidden4(), OTHER_TCP),
            Some("not_gateway"),
        );
        let p = payload("childgw");
        let r = probe(
            Some(&grandchild),
            pod.then_some(&fx.sb.pod),
            &["tcp", &a(fx.sb.gateway4(), GATEWAY_PORT)],
            &p,
        );
        fx.assert_allowed("new child cgroup to the gateway", &r, &p);
    }
}

#[test]
fn link_local_metadata_blocked() {
    both(|fx, pod| {
        let p = payload("imds");
        let r = fx.attempt(pod, &["tcp", &a(fx.sb.metadata(), 80)], &p);
        assert!(eperm(&r), "expected EPERM: {r}");
        fx.assert_blocked(
            "link-local metadata",
            &r,
            &p,
            &a(fx.sb.metadata(), 80),
            Some("link_local"),
        );
    });
}

#[test]
fn loopback_relay_blocked() {
    let fx = Fixture::new("enforce");
    // A relay on each of the host's loopbacks, outside any identity.
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let relay = std::net::TcpListener::bind(bind).expect("relay");
        relay.set_nonblocking(true).expect("nonblocking");
        let at = relay.local_addr().expect("addr").to_string();
        let p = payload("loop");
        let r = fx.attempt(false, &["tcp", &at], &p);
        assert!(eperm(&r), "{at}: expected EPERM: {r}");
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            relay.accept().is_err(),
            "{at}: the loopback relay accepted a connection"
        );
        let pid = r["pid"].as_u64().expect("probe pid");
        let rec = fx.daemon.wait_flow(std::time::Duration::from_secs(5), |f| {
            f["verdict"] == "deny" && f["reason"] == "loopback" && f["pid"].as_u64() == Some(pid)
        });
        assert!(
            rec.is_some(),
            "{at}: no loopback deny record of this attempt: {:#?}",
            fx.daemon.flows()
        );
        // The relay is real: outside the identity the same connect reaches it.
        let r = fx.outside(false, &["tcp", &at], &p);
        assert!(
            ok(&r),
            "{at}: the relay is not reachable outside identities: {r}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            relay.accept().is_ok(),
            "{at}: the relay saw no connection from outside identities"
        );
    }
}

#[test]
fn processes_outside_identities_unaffected() {
    let fx = Fixture::new("enforce");
    for pod in [false, true] {
        let p = payload("outside");
        let r = fx.outside(pod, &["tcp", &a(fx.sb.forbidden4(), OTHER_TCP)], &p);
        fx.assert_allowed("outside TCP", &r, &p);
        let p = payload("outsideudp");
        let r = fx.outside(pod, &["udp-sendto", &a(fx.sb.other_resolver4(), DNS)], &p);
        fx.assert_allowed("outside DNS", &r, &p);
        let p = payload("outside6");
        let r = fx.outside(pod, &["tcp", &a(fx.sb.forbidden6(), OTHER_TCP)], &p);
        fx.assert_allowed("outside IPv6", &r, &p);
    }
    assert!(
        fx.daemon
            .flows()
            .iter()
            .all(|f| f["identity"] == "agent" || f["verdict"] == "lost"),
        "records for traffic outside identities"
    );
}

#[test]
fn selected_cgroup_created_after_the_policy_is_bound_when_it_appears() {
    let sb = Sandbox::new();
    let name = unique("cpt-late");
    let rel = format!("/{name}");
    let daemon = Daemon::start(&sb.policy(&[("agent", &rel, "enforce")]), &[]);
    let st = daemon.cli_json(&["status", "--json"]);
    assert!(st["identities"][0]["enforcing"] == false, "{st}");
    for round in 0..3 {
        // The selected cgroup appears (and, from round 1, is recreated with a new id): the daemon
        // binds it on the inotify event, well within the time a runtime takes to start a process
        // in it. (Children of an existing identity cgroup need no binding at all: see
        // new_child_cgroup_covered_from_first_packet.)
        let cg = Cgroup::new(&name);
        let t0 = std::time::Instant::now();
        while daemon.cli_json(&["identities", "--json"])["identities"][0]["enforcing"] != true {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(2),
                "round {round}: not bound after 2 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let bound_in = t0.elapsed();
        let p = payload("late");
        let r = probe(
            Some(&cg.path),
            None,
            &["tcp", &a(sb.forbidden4(), OTHER_TCP)],
            &p,
        );
        assert!(
            eperm(&r),
            "round {round}: a freshly created selected cgroup got out: {r}"
        );
        eprintln!("round {round}: bound in {bound_in:?}");
        drop(cg);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(sb.received.with_payload("late"), 0);
}
