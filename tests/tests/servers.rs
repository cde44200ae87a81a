//! Servers and probes: a workload in an enforced cgroup (in the pod netns) answers clients
//! outside (in the world netns); its answers are not egress and pass, recorded once per flow
//! with `reason: reply`. A "reply" to a peer that never sent is still denied, and
//! `ingress.allowFrom` decides who may open connections.

use std::{net::SocketAddr, time::Duration};

use chokepoint_tests::*;
use serde_json::Value;

const SERVE_TCP: u16 = 8081;
const SERVE_UDP: u16 = 8082;

/// The identity's server in its cgroup and the pod netns; `also` gets an unasked datagram after
/// every answer.
fn server(fx: &Fixture, also: Option<SocketAddr>) -> (Proc, Received) {
    let also = also.map(|a| a.to_string()).unwrap_or_default();
    spawn_probe(
        Some(&fx.cg.path),
        Some(&fx.sb.pod),
        &[
            "echo-serve",
            &SERVE_TCP.to_string(),
            &SERVE_UDP.to_string(),
            &also,
        ],
    )
}

/// A client in the world netns (outside every identity), from `src` when given.
fn client(fx: &Fixture, proto: &str, src: Option<&str>, n: usize, payload: &str) -> Value {
    let port = if proto == "tcp" { SERVE_TCP } else { SERVE_UDP };
    let dst = SocketAddr::new(fx.sb.pod4(), port).to_string();
    probe(
        None,
        Some(&fx.sb.world),
        &[
            &format!("{proto}-rr"),
            &dst,
            src.unwrap_or("-"),
            &n.to_string(),
        ],
        payload,
    )
}

fn with_allow_from(fx: &Fixture, cidrs: &[String]) {
    let list = cidrs
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let policy = fx.sb.policy(&[("agent", &fx.cg.rel, "enforce")])
        + &format!("      ingress:\n        allowFrom: [{list}]\n");
    fx.daemon.apply(&policy);
}

fn reply_records(fx: &Fixture, proto: &str) -> Vec<Value> {
    fx.daemon
        .flows()
        .into_iter()
        .filter(|f| f["reason"] == "reply" && f["identity"] == "agent" && f["proto"] == proto)
        .collect()
}

#[test]
fn tcp_server_answers_a_client_outside_and_is_recorded_once_per_flow() {
    let fx = Fixture::new("enforce");
    let (_srv, _) = server(&fx, None);
    let r1 = client(&fx, "tcp", None, 3, "hello-tcp");
    assert!(
        ok(&r1),
        "the client got no answer: {r1}\n{}",
        fx.daemon.log_text()
    );
    assert_eq!(r1["answers"][0], "echo:hello-tcp", "{r1}");
    assert_eq!(r1["answers"][2], "echo:hello-tcp", "{r1}");
    let r2 = client(&fx, "tcp", None, 1, "again");
    assert!(ok(&r2), "second connection: {r2}");
    let rec = fx.daemon.wait_flow(Duration::from_secs(5), |f| {
        f["reason"] == "reply" && f["verdict"] == "allow" && f["proto"] == "tcp"
    });
    assert!(rec.is_some(), "no reply record: {:#?}", fx.daemon.flows());
    std::thread::sleep(Duration::from_millis(500));
    let recs = reply_records(&fx, "tcp");
    // Two connections, one record each, whatever the number of packets.
    assert_eq!(recs.len(), 2, "{recs:#?}");
    for f in &recs {
        assert!(
            f["dst"]
                .as_str()
                .is_some_and(|d| d.starts_with(&fx.sb.gateway4().to_string())),
            "{f}"
        );
        assert_eq!(f["src"], format!("{}:{SERVE_TCP}", fx.sb.pod4()), "{f}");
    }
    assert!(
        !fx.daemon
            .flows()
            .iter()
            .any(|f| f["verdict"] == "deny" && f["identity"] == "agent"),
        "a deny for the server's answers: {:#?}",
        fx.daemon.flows()
    );
}

#[test]
fn http_health_probe_gets_its_answer() {
    let fx = Fixture::new("enforce");
    let (_srv, _) = server(&fx, None);
    let r = client(
        &fx,
        "tcp",
        None,
        1,
        "GET /healthz HTTP/1.1\r\nHost: pod\r\n\r\n",
    );
    assert!(ok(&r), "the probe failed: {r}");
    assert!(
        r["answers"][0]
            .as_str()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200 OK")),
        "{r}"
    );
}

#[test]
fn udp_server_reply_passes_and_an_unasked_send_is_denied() {
    let fx = Fixture::new("enforce");
    let unasked = SocketAddr::new(fx.sb.forbidden4(), OTHER_UDP);
    let (_srv, srv) = server(&fx, Some(unasked));
    let r = client(&fx, "udp", None, 3, "hello-udp");
    assert!(
        ok(&r),
        "the client got no answer: {r}\n{}",
        fx.daemon.log_text()
    );
    assert_eq!(r["answers"][2], "echo:hello-udp", "{r}");
    // The server's send to a peer that never sent to it is refused at sendmsg.
    assert!(
        srv.count(|v| v["event"] == "unasked" && v["send"]["errno"] == 1) >= 1,
        "{:?}",
        srv.all()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fx.sb.received.with_payload("unasked:"), 0);
    assert!(
        fx.daemon
            .wait_flow(Duration::from_secs(5), |f| f["verdict"] == "deny"
                && f["dst"] == unasked.to_string())
            .is_some(),
        "{:#?}",
        fx.daemon.flows()
    );
    let recs = reply_records(&fx, "udp");
    assert_eq!(recs.len(), 1, "one socket, one peer, one record: {recs:#?}");
}

#[test]
fn a_reply_looking_send_to_a_peer_that_never_sent_is_denied() {
    let fx = Fixture::new("enforce");
    let dst = SocketAddr::new(fx.sb.forbidden4(), OTHER_UDP);
    let p = payload("fake-reply");
    let r = fx.attempt(
        true,
        &["udp-from", &SERVE_UDP.to_string(), &dst.to_string()],
        &p,
    );
    fx.assert_blocked("udp from a server port", &r, &p, &dst.to_string(), None);
    // And a TCP connect from the workload stays egress.
    let p = payload("fake-tcp");
    let dst = SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP);
    let r = fx.attempt(true, &["tcp", &dst.to_string()], &p);
    fx.assert_blocked("tcp connect", &r, &p, &dst.to_string(), Some("not_gateway"));
}

#[test]
fn allow_from_blocks_an_unlisted_client_and_admits_a_listed_one() {
    let fx = Fixture::new("enforce");
    let listed = fx.sb.gateway4().to_string();
    let unlisted = fx.sb.forbidden4().to_string();
    with_allow_from(&fx, &[format!("{listed}/32")]);
    let (_srv, srv) = server(&fx, None);

    let r = client(&fx, "tcp", Some(&unlisted), 1, "from-unlisted");
    assert!(!ok(&r), "an unlisted client got in: {r}");
    let rec = fx.daemon.wait_flow(Duration::from_secs(5), |f| {
        f["reason"] == "ingress_denied" && f["proto"] == "tcp"
    });
    let rec = rec.unwrap_or_else(|| panic!("no ingress_denied record: {:#?}", fx.daemon.flows()));
    assert!(
        rec["src"]
            .as_str()
            .is_some_and(|s| s.starts_with(&unlisted)),
        "{rec}"
    );
    assert_eq!(rec["verdict"], "deny");
    assert_eq!(srv.count(|v| v["event"] == "accept"), 0, "{:?}", srv.all());

    let r = client(&fx, "udp", Some(&unlisted), 1, "udp-unlisted");
    assert!(!ok(&r), "an unlisted UDP client got an answer: {r}");
    assert_eq!(srv.count(|v| v["proto"] == "udp"), 0, "{:?}", srv.all());
    assert!(
        fx.daemon
            .wait_flow(Duration::from_secs(5), |f| f["reason"] == "ingress_denied"
                && f["proto"] == "udp")
            .is_some()
    );

    let r = client(&fx, "tcp", Some(&listed), 1, "from-listed");
    assert!(ok(&r), "a listed client was refused: {r}");
    assert_eq!(r["answers"][0], "echo:from-listed");
    let r = client(&fx, "udp", Some(&listed), 1, "udp-listed");
    assert!(ok(&r), "a listed UDP client got no answer: {r}");
}

#[test]
fn ipv6_tcp_and_udp_servers_answer() {
    let fx = Fixture::new("enforce");
    let (_srv, _) = server(&fx, None);
    let pod6 = format!("fd02:0:0:{:x}::2", fx.sb.n);
    for (proto, port) in [("tcp", SERVE_TCP), ("udp", SERVE_UDP)] {
        let dst = format!("[{pod6}]:{port}");
        let r = probe(
            None,
            Some(&fx.sb.world),
            &[&format!("{proto}-rr"), &dst, "-", "2"],
            "hello-v6",
        );
        assert!(ok(&r), "{proto} over IPv6: {r}\n{}", fx.daemon.log_text());
        assert_eq!(r["answers"][1], "echo:hello-v6", "{r}");
    }
    std::thread::sleep(Duration::from_millis(300));
    for proto in ["tcp", "udp"] {
        let recs: Vec<Value> = reply_records(&fx, proto)
            .into_iter()
            .filter(|f| f["family"] == 6)
            .collect();
        assert_eq!(recs.len(), 1, "{proto}: {recs:#?}");
    }
}

#[test]
fn narrowing_allow_from_stops_answers_on_an_open_connection() {
    let fx = Fixture::new("enforce");
    let (_srv, _) = server(&fx, None);
    let dst = SocketAddr::new(fx.sb.pod4(), SERVE_TCP).to_string();
    let mut cmd = std::process::Command::new(probe_bin());
    cmd.args(["tcp-rr", &dst, "-", "2"])
        .env("CP_PAYLOAD", "long-lived")
        .env("CP_RR_PAUSE_MS", "2000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let child = in_cgroup(cmd, None, Some(&fx.sb.world))
        .spawn()
        .expect("client");
    // The first exchange happens, then the client pauses; only another address may connect now.
    std::thread::sleep(Duration::from_millis(700));
    with_allow_from(&fx, &[format!("{}/32", fx.sb.forbidden4())]);
    let out = child.wait_with_output().expect("client");
    let text = String::from_utf8_lossy(&out.stdout);
    let last: Value = serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or_default();
    assert!(
        text.contains("\"paused\",\"answers\":1") || text.contains("\"answers\":1,"),
        "the first exchange did not happen before the change: {text}"
    );
    assert!(
        !ok(&last),
        "answers kept flowing after allowFrom dropped the client: {text}"
    );
    let rec = fx.daemon.wait_flow(Duration::from_secs(5), |f| {
        f["reason"] == "ingress_denied" && f["hook"] == "skb"
    });
    assert!(rec.is_some(), "{:#?}", fx.daemon.flows());
}

#[test]
fn audit_mode_lets_an_unlisted_client_in_and_records_it() {
    let fx = Fixture::new("audit");
    let policy = fx.sb.policy(&[("agent", &fx.cg.rel, "audit")])
        + &format!(
            "      ingress:\n        allowFrom: [\"{}/32\"]\n",
            fx.sb.gateway4()
        );
    fx.daemon.apply(&policy);
    let (_srv, _) = server(&fx, None);
    let unlisted = fx.sb.forbidden4().to_string();
    let r = client(&fx, "tcp", Some(&unlisted), 1, "audit-in");
    assert!(ok(&r), "audit mode refused a client: {r}");
    assert!(
        fx.daemon
            .wait_flow(Duration::from_secs(5), |f| f["reason"] == "ingress_denied"
                && f["verdict"] == "audit")
            .is_some(),
        "{:#?}",
        fx.daemon.flows()
    );
}

/// `TcpExtTCPFastOpenPassive` of a netns: connections accepted with data in the SYN.
fn tfo_passive(netns: &str) -> u64 {
    let text = sh("ip", &["netns", "exec", netns, "cat", "/proc/net/netstat"]);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TCPFastOpenPassive")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn tcp_fast_open_clients_get_their_answers() {
    let fx = Fixture::new("enforce");
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &fx.sb.pod.name,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_fastopen=3",
        ],
    );
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &fx.sb.world.name,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_fastopen=3",
        ],
    );
    let (_srv, srv) = server(&fx, None);
    let before = tfo_passive(&fx.sb.pod.name);
    let dst = SocketAddr::new(fx.sb.pod4(), SERVE_TCP).to_string();
    // The first gets a cookie; the next ones carry their data in the SYN (the child socket then
    // sends the SYN-ACK itself).
    for i in 0..3 {
        let p = format!("tfo-{i}");
        let r = probe(None, Some(&fx.sb.world), &["tfo", &dst], &p);
        assert!(ok(&r), "TFO client {i}: {r}\n{}", fx.daemon.log_text());
    }
    assert!(
        tfo_passive(&fx.sb.pod.name) > before,
        "no connection used Fast Open: the test exercised nothing new"
    );
    assert_eq!(
        srv.count(|v| v["event"] == "data" && v["write"]["ok"] == true),
        3,
        "{:?}",
        srv.all()
    );
    assert!(
        !fx.daemon
            .flows()
            .iter()
            .any(|f| f["verdict"] == "deny" && f["identity"] == "agent"),
        "{:#?}",
        fx.daemon.flows()
    );
}
