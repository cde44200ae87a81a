//! Socket creation and non-IP sockets: `cgroup/sock_create` refuses SOCK_RAW for identities;
//! packet (AF_PACKET) sockets and ICMP ping sockets are stopped by the packet backstop
//! (`cgroup_skb/egress` and the TC classifier) even where BPF LSM cannot load.

use chokepoint_tests::*;

fn mac_of(netns: Option<&str>, iface: &str) -> String {
    let out = match netns {
        Some(ns) => sh("ip", &["-n", ns, "-j", "link", "show", iface]),
        None => sh("ip", &["-j", "link", "show", iface]),
    };
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    v[0]["address"].as_str().expect("mac").to_string()
}

#[test]
fn raw_icmp_socket_refused() {
    let fx = Fixture::new("enforce");
    for pod in [false, true] {
        let p = payload("raw");
        let r = fx.attempt(pod, &["raw-icmp", &fx.sb.forbidden4().to_string()], &p);
        assert!(eperm(&r), "SOCK_RAW was not refused: {r}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(
            fx.sb
                .received
                .count(|v| v["proto"] == "icmp" && v["local"] == fx.sb.forbidden4().to_string()),
            0,
            "the world saw an ICMP echo"
        );
        let rec = fx.daemon.wait_flow(std::time::Duration::from_secs(5), |f| {
            f["verdict"] == "deny" && f["reason"] == "raw_socket" && f["proto"] == "raw"
        });
        assert!(
            rec.is_some(),
            "no raw_socket record: {:#?}",
            fx.daemon.flows()
        );
    }
    // Outside identities raw sockets still work.
    let r = fx.outside(false, &["raw-icmp", &fx.sb.forbidden4().to_string()], "x");
    assert!(ok(&r), "raw socket outside identities failed: {r}");
}

/// Packet (AF_PACKET) sockets of identities: refused at `socket()` by the BPF LSM where it runs,
/// else their frames are dropped by the TC backstop. The test says which, and requires the LSM
/// where it is active: in the guest kernels of `cargo xtask test --kernel` (which set
/// `CP_REQUIRE_BPF_LSM=1`) and wherever the daemon attached the LSM program.
#[test]
fn packet_socket_frames_dropped() {
    let fx = Fixture::new("enforce");
    let st = fx.daemon.cli_json(&["status", "--json"]);
    let k = &st["kernel"];
    let attached = k["lsm_program_attached"] == true;
    let by_lsm = attached && bpf_lsm_in_kernel();
    if bpf_lsm_required() {
        assert!(
            by_lsm,
            "this kernel must run the BPF LSM (lsm list has bpf: {}), but the daemon reports: {k}",
            bpf_lsm_in_kernel()
        );
    }
    let guard = if by_lsm { "lsm" } else { "tc_backstop" };
    assert_eq!(k["packet_sockets"]["by"], guard, "status: {k}");
    let metric_iface = if by_lsm {
        String::new()
    } else {
        fx.sb.host_world_if.clone()
    };
    assert_eq!(
        metric(
            &fx.daemon.scrape(),
            &format!("chokepoint_packet_socket_guard{{by=\"{guard}\",iface=\"{metric_iface}\"}}")
        ),
        Some(1.0),
        "the packet-socket guard metric does not say {guard}"
    );
    eprintln!(
        "packet sockets of identities: {}",
        if by_lsm {
            "refused at socket() by the BPF LSM".to_string()
        } else {
            format!(
                "no BPF LSM ({}); frames dropped by the TC backstop on {}",
                st["problems"], k["packet_sockets"]["interfaces"]
            )
        }
    );
    let dst = std::net::SocketAddr::new(fx.sb.forbidden4(), OTHER_UDP).to_string();
    // Host netns: frames straight onto the world link (TC egress).
    let world_mac = mac_of(Some(&fx.sb.world.name), "eth0");
    let host_args = [
        "packet",
        &fx.sb.host_world_if,
        &world_mac,
        &fx.sb.host4().to_string(),
        &dst,
    ];
    // Pod netns: frames onto the pod's link, routed by the node (TC ingress on the host veth).
    let node_mac = mac_of(None, &fx.sb.host_pod_if);
    let pod4 = fx.sb.pod4().to_string();
    let pod_args = ["packet", "eth0", &node_mac, &pod4, &dst];
    for (what, pod, args) in [
        ("AF_PACKET (host netns)", false, &host_args),
        ("AF_PACKET (pod netns)", true, &pod_args),
    ] {
        let p = payload("pkt");
        let r = fx.attempt(pod, &args[..], &p);
        let pid = r["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: no attempt: {r}"));
        if by_lsm {
            // Refused at socket(): the frame was never built, so no backstop could have seen it.
            assert!(
                eperm(&r),
                "{what}: the BPF LSM did not refuse socket(): {r}"
            );
            let rec = fx.daemon.wait_flow(std::time::Duration::from_secs(5), |f| {
                f["verdict"] == "deny"
                    && f["reason"] == "raw_socket"
                    && f["hook"] == "lsm_socket_create"
                    && f["pid"].as_u64() == Some(pid)
            });
            assert!(
                rec.is_some(),
                "{what}: no LSM record of this attempt: {:#?}",
                fx.daemon.flows()
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
            assert_eq!(
                fx.sb.received.with_payload(&p),
                0,
                "{what}: a frame arrived"
            );
        } else {
            // The socket opened (no LSM) and the frame was handed to the device: sendto either
            // returns (queued) or reports the TC drop as ENOBUFS. Never EPERM: that is the LSM.
            assert!(
                ok(&r) || r["errno"] == libc::ENOBUFS,
                "{what}: expected the frame to reach the backstop: {r}"
            );
            let r = if ok(&r) { sent_locally(&r) } else { r };
            fx.assert_blocked(what, &r, &p, &dst, None);
        }
    }
    // The same frame from outside any identity arrives: the test can fail.
    let p = payload("pkt-outside");
    let r = fx.outside(false, &host_args[..], &p);
    fx.assert_allowed("AF_PACKET outside identities", &r, &p);
}

/// A packet socket's `sendto` succeeds locally (the frame is queued) before the backstop drops
/// it; what matters is that nothing arrives. Marks a local success as "attempted, sent".
fn sent_locally(r: &serde_json::Value) -> serde_json::Value {
    let mut r = r.clone();
    r["ok"] = false.into();
    r["sent_locally"] = true.into();
    r
}

#[test]
fn icmp_ping_socket_dropped() {
    let fx = Fixture::new("enforce");
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &fx.sb.pod.name,
            "sysctl",
            "-qw",
            "net.ipv4.ping_group_range=0 2147483647",
        ],
    );
    let p = payload("ping");
    let r = fx.attempt(true, &["ping", &fx.sb.forbidden4().to_string()], &p);
    assert!(!ok(&r), "ping socket send succeeded: {r}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        fx.sb
            .received
            .count(|v| v["proto"] == "icmp" && v["peer"] == fx.sb.pod4().to_string()),
        0,
        "the world saw the pod's ping"
    );
    let rec = fx.daemon.wait_flow(std::time::Duration::from_secs(5), |f| {
        f["verdict"] == "deny" && f["proto"] == "icmp"
    });
    assert!(
        rec.is_some(),
        "no ICMP deny record: {:#?}",
        fx.daemon.flows()
    );
    // From outside the identity the ping arrives.
    let r = fx.outside(true, &["ping", &fx.sb.forbidden4().to_string()], "x");
    assert!(ok(&r), "{r}");
    assert!(fx.sb.wait_for(std::time::Duration::from_secs(3), |rec| {
        rec.count(|v| v["proto"] == "icmp") > 0
    }));
}
