//! Kernel-attested workload identity for the gateway: the gateway-side server looks up the peer it
//! sees and learns the identity, tenant and task behind the live connection; nothing for
//! processes outside identities or after the connection closes; bad requests never stall it.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chokepoint_tests::*;

/// Starts a held connection in `cg`/`netns` and returns (process, peer, local) as the gateway
/// server saw the connection.
fn held(
    sb: &Sandbox,
    cg: Option<&std::path::Path>,
    netns: Option<&Netns>,
    dst: SocketAddr,
) -> (Proc, String, String) {
    let before = sb.received.count(|v| v["event"] == "accept");
    let mut cmd = Command::new(probe_bin());
    cmd.args(["hold", &dst.to_string(), "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Proc(in_cgroup(cmd, cg, netns).spawn().expect("hold"));
    let t0 = Instant::now();
    loop {
        let accepts: Vec<serde_json::Value> = sb
            .received
            .all()
            .into_iter()
            .filter(|v| v["event"] == "accept")
            .collect();
        if accepts.len() > before {
            let a = &accepts[before];
            return (
                p,
                a["peer"].as_str().expect("peer").into(),
                a["local"].as_str().expect("local").into(),
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the gateway never saw the connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gateway_learns_who_is_behind_each_connection() {
    let sb = Sandbox::new();
    let a = Cgroup::new(&unique("cpt-acme"));
    let b = Cgroup::new(&unique("cpt-globex"));
    let policy = sb.policy(&[
        ("acme-agent", &a.rel, "enforce"),
        ("globex-agent", &b.rel, "enforce"),
    ]);
    // Second identity's tenant.
    let idx = policy
        .find("    - name: globex-agent")
        .expect("second identity");
    let policy = format!(
        "{}{}",
        &policy[..idx],
        policy[idx..].replacen("tenant: acme", "tenant: globex", 1)
    );
    let daemon = Daemon::start(&policy, &[]);
    let gw4 = SocketAddr::new(sb.gateway4(), GATEWAY_PORT);
    let gw6 = SocketAddr::new(sb.gateway6(), GATEWAY_PORT);

    let (pa, peer_a, local_a) = held(&sb, Some(&a.path), Some(&sb.pod), gw4);
    let (pb, peer_b, local_b) = held(&sb, Some(&b.path), None, gw6);
    let (_po, peer_o, local_o) = held(&sb, None, Some(&sb.pod), gw4);

    let (code, v) = attest(&daemon.attest, &peer_a, &local_a);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["identity"], "acme-agent");
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["pid"], pa.0.id());
    assert_eq!(v["cgroup"], a.rel);
    assert_eq!(v["policy_generation"], 1);
    assert!(v["task"].is_null());
    assert!(v["since"].as_str().is_some_and(|s| s.ends_with('Z')));

    let (code, v) = attest(&daemon.attest, &peer_b, &local_b);
    assert_eq!(code, 200, "IPv6 connection of the second identity: {v}");
    assert_eq!(v["identity"], "globex-agent");
    assert_eq!(v["tenant"], "globex");
    assert_eq!(v["pid"], pb.0.id());

    // A process outside any identity: 404.
    let (code, _) = attest(&daemon.attest, &peer_o, &local_o);
    assert_eq!(code, 404);

    // The CLI answers the same from the admin socket.
    let cli = daemon.cli_json(&["attest", "--peer", &peer_a, "--local", &local_a, "--json"]);
    assert_eq!(cli["identity"], "acme-agent");

    // The socket cookie joins the attestation with the flow record.
    let rec = daemon
        .wait_flow(Duration::from_secs(5), |f| {
            f["identity"] == "acme-agent" && f["reason"] == "gateway"
        })
        .expect("flow record");
    let (_, v) = attest(&daemon.attest, &peer_a, &local_a);
    assert_eq!(v["socket_cookie"], rec["socket_cookie"]);

    // After the connection closes: 404.
    drop(pa);
    let t0 = Instant::now();
    while attest(&daemon.attest, &peer_a, &local_a).0 != 404 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "attestation outlived the connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(pb);
    let text = daemon.scrape();
    assert!(
        metric(&text, "chokepoint_attest_lookups_total{result=\"found\"}")
            .is_some_and(|v| v >= 3.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "chokepoint_attest_lookups_total{result=\"not_found\"}"
        )
        .is_some_and(|v| v >= 2.0)
    );
}

#[test]
fn a_grant_task_appears_in_the_attestation() {
    let fx = Fixture::new("enforce");
    let dst = SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP);
    fx.daemon.cli_json(&[
        "grant",
        "--identity",
        "agent",
        "--to",
        &format!("{dst}/tcp"),
        "--ttl",
        "5m",
        "--task",
        "T-attest",
        "--json",
    ]);
    let (_p, peer, local) = held(&fx.sb, Some(&fx.cg.path), Some(&fx.sb.pod), dst);
    let (code, v) = attest(&fx.daemon.attest, &peer, &local);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["task"], "T-attest");
    assert_eq!(v["identity"], "agent");
}

#[test]
fn garbage_oversized_and_slow_requests_get_clear_errors() {
    let fx = Fixture::new("enforce");
    let sock = &fx.daemon.attest;
    let cases: Vec<(&[u8], u16)> = vec![
        (b"POST /v1/attest HTTP/1.1\r\n\r\n", 405),
        (b"GET /v2/who HTTP/1.1\r\n\r\n", 404),
        (b"GET /v1/attest?peer=1.2.3.4:5 HTTP/1.1\r\n\r\n", 400),
        (
            b"GET /v1/attest?peer=nonsense&local=1.2.3.4:80 HTTP/1.1\r\n\r\n",
            400,
        ),
    ];
    for (req, want) in &cases {
        let (code, v) = http_unix(sock, req);
        assert_eq!(code, *want, "{:?}: {v}", String::from_utf8_lossy(req));
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    // Not HTTP at all: the HTTP layer answers 400 (malformed) before any endpoint logic.
    let (code, _) = http_unix(sock, b"\x00\x01\x02garbage\r\n\r\n");
    assert_eq!(code, 400);
    let mut big = b"GET /v1/attest?peer=".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    let (code, _) = http_unix(sock, &big);
    assert_eq!(code, 431);
    // A slow client is cut off, and meanwhile others are answered at once.
    let slow_sock = sock.clone();
    let slow = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&slow_sock).expect("connect");
        let _ = s.write_all(b"GET /v1/att");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp
    });
    let t0 = Instant::now();
    for _ in 0..50 {
        let (code, _) = attest(sock, "10.9.9.9:1234", "10.9.9.8:80");
        assert_eq!(code, 404);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "lookups stalled behind a slow client: {:?}",
        t0.elapsed()
    );
    let resp = slow.join().expect("slow");
    assert!(resp.contains(" 408 "), "slow client: {resp}");
}

#[test]
fn answers_come_from_the_cache_while_the_cgroup_tree_is_large() {
    let sb = Sandbox::new();
    let a = Cgroup::new(&unique("cpt-acme"));
    // A large tree elsewhere: 2,000 cgroups that a walk per request would read.
    let big = Cgroup::new(&unique("cpt-big"));
    for i in 0..40 {
        let d = big.child(&format!("g{i}"));
        for j in 0..49 {
            std::fs::create_dir(d.join(format!("c{j}"))).expect("mkdir cgroup");
        }
    }
    let worker = a.child("worker");
    let policy = sb.policy(&[("acme-agent", &a.rel, "enforce")]);
    let daemon = Daemon::start(&policy, &[]);
    let gw4 = SocketAddr::new(sb.gateway4(), GATEWAY_PORT);
    // One connection from the identity's cgroup, one from a descendant of it.
    let (pa, peer_a, local_a) = held(&sb, Some(&a.path), None, gw4);
    let (pw, peer_w, local_w) = held(&sb, Some(&worker), None, gw4);
    let (code, v) = attest(&daemon.attest, &peer_w, &local_w);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["cgroup"], format!("{}/worker", a.rel), "{v}");
    assert_eq!(v["pid"], pw.0.id());
    let n = 500;
    let t0 = Instant::now();
    for i in 0..n {
        let (peer, local, rel) = if i % 2 == 0 {
            (&peer_a, &local_a, a.rel.clone())
        } else {
            (&peer_w, &local_w, format!("{}/worker", a.rel))
        };
        let (code, v) = attest(&daemon.attest, peer, local);
        assert_eq!(code, 200, "{i}: {v}");
        assert_eq!(v["cgroup"], rel);
    }
    let elapsed = t0.elapsed();
    drop(pa);
    let text = daemon.scrape();
    let names = |source: &str| {
        metric(
            &text,
            &format!("chokepoint_attest_cgroup_names_total{{source=\"{source}\"}}"),
        )
        .unwrap_or_else(|| panic!("no cgroup name counter for {source}:\n{text}"))
    };
    let (cache, kernel, unknown) = (names("cache"), names("kernel"), names("unknown"));
    eprintln!("{n} answers in {elapsed:?}; cgroup names: {cache} cache, {kernel} kernel");
    assert_eq!(unknown, 0.0);
    assert!(cache + kernel >= f64::from(n + 1), "{cache} + {kernel}");
    // No walk per request: a kernel lookup only for a cgroup not seen since the watcher last
    // started over (other tests' cgroups coming and going make it start over).
    assert!(
        kernel / (cache + kernel) < 0.1,
        "{kernel} kernel lookups for {} answers",
        cache + kernel
    );
    drop(big);
}
