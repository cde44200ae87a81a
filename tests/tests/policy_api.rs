//! Policy lifecycle against the running daemon and the real kernel: apply, rollback, restart,
//! atomic switches under continuous traffic, and a table of malformed policies and API requests
//! that each get a precise error while the active generation and traffic stay unchanged.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    time::Duration,
};

use chokepoint_tests::*;

fn gw(fx: &Fixture) -> String {
    SocketAddr::new(fx.sb.gateway4(), GATEWAY_PORT).to_string()
}
fn forbidden(fx: &Fixture) -> String {
    SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP).to_string()
}

/// The policy with an extra allow rule for the forbidden host.
fn with_forbidden_allowed(fx: &Fixture) -> String {
    fx.sb.policy(&[("agent", &fx.cg.rel, "enforce")]).replace(
        "            reason: cluster DNS\n",
        &format!("            reason: cluster DNS\n          - to: \"{}/32\"\n            ports: [\"{OTHER_TCP}/tcp\"]\n", fx.sb.forbidden4()),
    )
}

fn generation(fx: &Fixture) -> u64 {
    fx.daemon.cli_json(&["status", "--json"])["generation"]
        .as_u64()
        .expect("generation")
}

#[test]
fn apply_rollback_restart() {
    let mut fx = Fixture::new("enforce");
    assert_eq!(generation(&fx), 1);
    assert!(eperm(&fx.attempt(false, &["tcp", &forbidden(&fx)], "a")));

    let r = fx.daemon.apply(&with_forbidden_allowed(&fx));
    assert_eq!(r["generation"], 2);
    let p = payload("gen2");
    let r = fx.attempt(false, &["tcp", &forbidden(&fx)], &p);
    fx.assert_allowed("generation 2 allows the host", &r, &p);
    let show = fx.daemon.cli_json(&["policy", "show", "--json"]);
    assert_eq!(show["generation"], 2);

    let r = fx.daemon.cli_json(&["policy", "rollback", "--json"]);
    assert_eq!(r["generation"], 3);
    assert_eq!(r["restored"], 1);
    assert!(
        eperm(&fx.attempt(false, &["tcp", &forbidden(&fx)], "b")),
        "rollback did not restore the old policy"
    );
    let h = fx.daemon.cli_json(&["policy", "history", "--json"]);
    assert_eq!(h["history"].as_array().map(Vec::len), Some(3));

    // Restart: same generation, same enforcement; enforcement held while it was down.
    fx.daemon.kill(libc::SIGTERM);
    assert!(
        eperm(&fx.attempt(false, &["tcp", &forbidden(&fx)], "c")),
        "enforcement stopped with the daemon"
    );
    fx.daemon.spawn(None);
    assert_eq!(generation(&fx), 3);
    assert!(eperm(&fx.attempt(false, &["tcp", &forbidden(&fx)], "d")));
    let p = payload("after-restart");
    let r = fx.attempt(false, &["tcp", &gw(&fx)], &p);
    fx.assert_allowed("gateway after restart", &r, &p);
    let st = fx.daemon.cli_json(&["status", "--json"]);
    assert!(
        st["programs"]
            .as_array()
            .expect("programs")
            .iter()
            .filter(|p| p["program"] != "cp_lsm_socket")
            .all(|p| p["attached"] == true),
        "{st}"
    );

    // diff names what would change.
    let f = fx.daemon.dir.join("next.yaml");
    std::fs::write(&f, with_forbidden_allowed(&fx)).expect("write");
    // Exit 1 when there are changes (like `kubectl diff`), with the JSON on stdout.
    let out = std::process::Command::new(chokepoint_bin())
        .args([
            "policy",
            "diff",
            f.to_str().expect("utf8"),
            "--json",
            "--socket",
        ])
        .arg(&fx.daemon.socket)
        .output()
        .expect("cli");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).expect("diff JSON");
    assert!(
        d["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .any(|c| c.as_str().is_some_and(|c| c.contains("+ destination"))),
        "{d}"
    );
}

/// The same document as JSON (YAML's JSON subset: the daemon reads it with its JSON parser).
fn as_json(yaml: &str) -> String {
    let v: serde_json::Value = serde_saphyr::from_str(yaml).expect("YAML");
    serde_json::to_string_pretty(&v).expect("JSON")
}

/// Each apply after the second patches the slot that held the generation before last (only
/// what differs is written): a prefix added, its value changed, removed again, and documents
/// in YAML and JSON alike. Every generation enforces exactly its own rules.
#[test]
fn patched_generations_enforce_exactly_their_rules() {
    let fx = Fixture::new("enforce");
    let base = fx.sb.policy(&[("agent", &fx.cg.rel, "enforce")]);
    let allowed = with_forbidden_allowed(&fx);
    // The forbidden host allowed on another port: same prefix, a different value.
    let other_port = allowed.replace(
        &format!("ports: [\"{OTHER_TCP}/tcp\"]"),
        &format!("ports: [\"{}/tcp\"]", OTHER_TCP + 1),
    );
    assert_ne!(other_port, allowed);
    let steps: [(&str, String, bool); 7] = [
        ("allowed, YAML", allowed.clone(), true),
        ("base, JSON", as_json(&base), false),
        ("allowed, JSON", as_json(&allowed), true),
        ("other port, JSON", as_json(&other_port), false),
        ("allowed, YAML", allowed.clone(), true),
        ("base, YAML", base.clone(), false),
        ("allowed after base, JSON", as_json(&allowed), true),
    ];
    for (i, (what, doc, allows)) in steps.iter().enumerate() {
        let r = fx.daemon.apply(doc);
        assert_eq!(r["generation"], i as u64 + 2, "{what}: {r}");
        let p = payload(&format!("step{i}"));
        let out = fx.attempt(false, &["tcp", &forbidden(&fx)], &p);
        if *allows {
            fx.assert_allowed(what, &out, &p);
        } else {
            assert!(
                eperm(&out),
                "{what}: the forbidden host was reachable: {out:?}"
            );
        }
        let p = payload(&format!("gw{i}"));
        let out = fx.attempt(false, &["tcp", &gw(&fx)], &p);
        fx.assert_allowed(&format!("{what}: gateway"), &out, &p);
        // The other port is a prefix value the patch wrote: allowed there (nothing listens, so
        // refused by the host, not EPERM by policy), denied everywhere else.
        let other = SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP + 1).to_string();
        let out = fx.attempt(false, &["tcp", &other], "x");
        let other_allowed = what.starts_with("other port");
        assert_eq!(
            eperm(&out),
            !other_allowed,
            "{what}: port {}: {out:?}",
            OTHER_TCP + 1
        );
    }
}

#[test]
fn switch_under_continuous_traffic_is_atomic() {
    let fx = Fixture::new("enforce");
    // Two policies that differ in unrelated rules; both allow the gateway and forbid the host.
    let a = fx.sb.policy(&[("agent", &fx.cg.rel, "enforce")]);
    let b = a.replace("            reason: cluster DNS\n", "            reason: cluster DNS\n          - to: \"192.0.2.0/24\"\n            ports: [\"443/tcp\"]\n");
    let (gw, bad) = (gw(&fx), forbidden(&fx));
    let handle = {
        let cg = fx.cg.path.clone();
        std::thread::spawn(move || probe(Some(&cg), None, &["loop", &gw, &bad, "4"], "loop"))
    };
    let mut applied = 0;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(3500) {
        fx.daemon.apply(if applied % 2 == 0 { &b } else { &a });
        applied += 1;
    }
    let r = handle.join().expect("loop");
    assert!(applied >= 5, "only {applied} switches");
    assert_eq!(
        r["good_fail"], 0,
        "an allowed connect was denied during a switch: {r}"
    );
    assert_eq!(
        r["bad_ok"], 0,
        "a forbidden connect got through during a switch: {r}"
    );
    assert!(
        r["good_ok"].as_u64().unwrap_or(0) > 20,
        "too little traffic: {r}"
    );
    assert_eq!(
        fx.sb.received.count(|v| v["local"]
            .as_str()
            .is_some_and(|l| l.starts_with(&fx.sb.forbidden4().to_string()))),
        0
    );
}

/// Sends one raw request line (or bytes) to the API and returns the response line.
fn raw(fx: &Fixture, bytes: &[u8]) -> serde_json::Value {
    let mut s = UnixStream::connect(&fx.daemon.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("response");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad response {line:?}: {e}"))
}

#[test]
fn malformed_policies_and_requests_change_nothing() {
    let fx = Fixture::new("enforce");
    let good = fx.sb.policy(&[("agent", &fx.cg.rel, "enforce")]);
    let dup_identity = good.clone() + &good[good.find("    - name: agent").expect("identity")..];
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "syntax error",
            good.replace("kind: EgressPolicy", "kind: [EgressPolicy"),
            "document",
        ),
        (
            "tab indentation",
            good.replace("  name: sandbox", "\tname: sandbox"),
            "document",
        ),
        (
            "wrong type",
            good.replace("mode: enforce", "mode: [1, 2]"),
            "",
        ),
        ("unknown top field", good.clone() + "extra: 1\n", "extra"),
        (
            "unknown identity field",
            good.replace("tenant: acme", "tenant: acme\n      colour: red"),
            "colour",
        ),
        (
            "unknown egress field",
            good.replace(
                "        gateways: [llm-gateway]",
                "        gateways: [llm-gateway]\n        deny: []",
            ),
            "deny",
        ),
        (
            "wrong apiVersion",
            good.replace("chokepoint.dev/v1alpha1", "chokepoint.dev/v9"),
            "apiVersion",
        ),
        (
            "wrong kind",
            good.replace("kind: EgressPolicy", "kind: IngressPolicy"),
            "kind",
        ),
        (
            "missing metadata",
            good.replace("metadata:\n  name: ", "meta:\n  name: "),
            "meta",
        ),
        ("bad CIDR", good.replace("/32\"", "/33\""), "allow[0].to"),
        (
            "not an IP",
            good.replace(&format!("{}/32", fx.sb.resolver4()), "ten.zero/32"),
            "allow[0].to",
        ),
        (
            "host bits set",
            good.replace(&format!("{}/32", fx.sb.resolver4()), "10.0.0.1/8"),
            "host bits",
        ),
        ("port 0", good.replace("53/udp", "0/udp"), "ports[0]"),
        (
            "port 70000",
            good.replace("53/udp", "70000/udp"),
            "ports[0]",
        ),
        (
            "reversed range",
            good.replace("53/udp", "90-80/udp"),
            "ports[0]",
        ),
        (
            "unknown protocol",
            good.replace("53/udp", "53/xtp"),
            "unknown protocol",
        ),
        (
            "bad endpoint port",
            good.replace(&format!(":{GATEWAY_PORT}/tcp\", \"["), ":0/tcp\", \"["),
            "endpoints[0]",
        ),
        (
            "endpoint without port",
            good.replace(&format!(":{GATEWAY_PORT}/tcp\", \"["), "/tcp\", \"["),
            "endpoints[0]",
        ),
        (
            "unbracketed IPv6 endpoint",
            good.replace(
                &format!("[{}]", fx.sb.gateway6()),
                &fx.sb.gateway6().to_string(),
            ),
            "endpoints[1]",
        ),
        (
            "missing gateway",
            good.replace("gateways: [llm-gateway]", "gateways: [no-such-gateway]"),
            "no gateway named",
        ),
        ("duplicate identity", dup_identity, "duplicate identity"),
        (
            "duplicate gateway",
            good.replace(
                "  identities:\n",
                &format!(
                    "    - name: llm-gateway\n      endpoints: [\"{}:1/tcp\"]\n  identities:\n",
                    fx.sb.gateway4()
                ),
            ),
            "duplicate gateway",
        ),
        (
            "overlapping selectors",
            good.clone()
                + &format!(
                    "    - name: other\n      selector:\n        cgroupPath: \"{}/child\"\n",
                    fx.cg.rel
                ),
            "overlaps",
        ),
        (
            "root selector",
            good.replace(
                &format!("cgroupPath: \"{}\"", fx.cg.rel),
                "cgroupPath: \"/\"",
            ),
            "cgroup root",
        ),
        (
            "dotdot selector",
            good.replace(
                &format!("cgroupPath: \"{}\"", fx.cg.rel),
                "cgroupPath: \"/a/../b\"",
            ),
            "clean",
        ),
        (
            "no selector",
            good.replace(
                &format!("      selector:\n        cgroupPath: \"{}\"\n", fx.cg.rel),
                "      selector: {}\n",
            ),
            "selector",
        ),
        (
            "pod selector",
            good.replace(
                &format!("cgroupPath: \"{}\"", fx.cg.rel),
                "pod: {namespace: agents}",
            ),
            "Kubernetes",
        ),
        (
            "empty identities",
            good[..good.find("  identities:").expect("ids")].to_string() + "  identities: []\n",
            "at least one identity",
        ),
        (
            "empty gateway endpoints",
            good.replace(
                &format!(
                    "endpoints: [\"{}:{GATEWAY_PORT}/tcp\", \"[{}]:{GATEWAY_PORT}/tcp\"]",
                    fx.sb.gateway4(),
                    fx.sb.gateway6()
                ),
                "endpoints: []",
            ),
            "at least one endpoint",
        ),
        (
            "unknown mode",
            good.replace("mode: enforce", "mode: permissive"),
            "unknown mode",
        ),
        ("empty document", String::new(), "empty"),
    ];
    assert!(cases.len() >= 30);
    for (what, doc, needle) in &cases {
        let f = fx.daemon.dir.join("bad.yaml");
        std::fs::write(&f, doc).expect("write");
        let (ok_, _out, err) = fx
            .daemon
            .try_cli(&["policy", "apply", f.to_str().expect("utf8")]);
        assert!(!ok_, "{what}: apply succeeded");
        assert!(
            err.contains("bad.yaml:"),
            "{what}: error does not name the file: {err}"
        );
        assert!(
            err.contains(needle),
            "{what}: error does not mention `{needle}`: {err}"
        );
        // The daemon's own validation gives the same answer (bypassing the CLI's local check).
        let req =
            serde_json::json!({"v": 1, "cmd": "policy_apply", "file": "bad.yaml", "source": doc});
        let r = raw(&fx, format!("{req}\n").as_bytes());
        assert_eq!(r["ok"], false, "{what}: daemon accepted it");
    }
    // Invalid UTF-8 and a 50 MB document.
    let f = fx.daemon.dir.join("bad.yaml");
    std::fs::write(&f, b"apiVersion: \xff\xfe\n").expect("write");
    let (ok_, _, err) = fx
        .daemon
        .try_cli(&["policy", "apply", f.to_str().expect("utf8")]);
    assert!(!ok_ && err.contains("invalid UTF-8"), "{err}");
    let big = "#".repeat(50 << 20);
    std::fs::write(&f, &big).expect("write");
    let (ok_, _, err) = fx
        .daemon
        .try_cli(&["policy", "apply", f.to_str().expect("utf8")]);
    assert!(!ok_ && err.contains("larger than"), "{err}");
    let r = raw(
        &fx,
        format!(
            "{}\n",
            serde_json::json!({"v": 1, "cmd": "policy_apply", "file": "big", "source": big})
        )
        .as_bytes(),
    );
    assert_eq!(r["ok"], false);
    assert!(
        r["error"].as_str().unwrap_or("").contains("larger than"),
        "{r}"
    );

    // Malformed API requests.
    let api_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"hello\n".to_vec(), "not valid JSON"),
        ("truncated", br#"{"v":1,"cmd":"sta"#.to_vec(), "truncated"),
        ("no version", b"{\"cmd\":\"status\"}\n".to_vec(), "protocol version"),
        ("bad version", b"{\"v\":7,\"cmd\":\"status\"}\n".to_vec(), "unsupported protocol version"),
        ("unknown command", b"{\"v\":1,\"cmd\":\"explode\"}\n".to_vec(), "unknown or malformed command"),
        ("missing argument", b"{\"v\":1,\"cmd\":\"revoke\"}\n".to_vec(), "task"),
        ("wrong argument type", b"{\"v\":1,\"cmd\":\"grant\",\"identity\":\"agent\",\"to\":\"1.2.3.4:1\",\"ttl_secs\":\"x\",\"task\":\"t\"}\n".to_vec(), "ttl_secs"),
        ("array", b"[1,2]\n".to_vec(), "JSON object"),
        ("unknown identity grant", b"{\"v\":1,\"cmd\":\"grant\",\"identity\":\"nobody\",\"to\":\"1.2.3.4:1\",\"ttl_secs\":5,\"task\":\"t\"}\n".to_vec(), "no identity named"),
        ("rollback to nowhere", b"{\"v\":1,\"cmd\":\"policy_rollback\",\"generation\":99}\n".to_vec(), "no generation 99"),
    ];
    for (what, bytes, needle) in &api_cases {
        let r = raw(&fx, bytes);
        assert_eq!(r["ok"], false, "{what}: {r}");
        assert!(
            r["error"].as_str().unwrap_or("").contains(needle),
            "{what}: `{needle}` not in {r}"
        );
    }
    // A client that is not root.
    std::fs::set_permissions(
        &fx.daemon.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .expect("chmod");
    let out = std::process::Command::new("python3")
        .args(["-c", "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.sendall(b'{\"v\":1,\"cmd\":\"status\"}\\n')\nprint(s.makefile().readline())", fx.daemon.socket.to_str().expect("utf8")])
        .uid(65534)
        .output()
        .expect("python3");
    std::fs::set_permissions(
        &fx.daemon.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("permission denied") && text.contains("65534"),
        "non-root client: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing changed: generation 1, same enforcement.
    assert_eq!(generation(&fx), 1);
    assert!(eperm(&fx.attempt(false, &["tcp", &forbidden(&fx)], "x")));
    let p = payload("still");
    let r = fx.attempt(false, &["tcp", &gw(&fx)], &p);
    fx.assert_allowed("gateway after the bad inputs", &r, &p);
}

use std::os::unix::process::CommandExt;

#[test]
fn gateway_by_host_name_and_by_cidr() {
    let sb = Sandbox::new();
    let cg = Cgroup::new(&unique("cpt-named"));
    // A gateway on the host's loopback, named `localhost`; a second gateway given as a CIDR.
    let gw = std::net::TcpListener::bind("127.0.0.1:0").expect("gateway");
    gw.set_nonblocking(true).expect("nonblocking");
    let port = gw.local_addr().expect("addr").port();
    let policy = sb.policy(&[("agent", &cg.rel, "enforce")]).replace(
        &format!(
            "endpoints: [\"{}:{GATEWAY_PORT}/tcp\", \"[{}]:{GATEWAY_PORT}/tcp\"]",
            sb.gateway4(),
            sb.gateway6()
        ),
        &format!(
            "endpoints: [\"localhost:{port}/tcp\", \"10.201.{}.0/30:{GATEWAY_PORT}/tcp\"]",
            sb.n
        ),
    );
    let daemon = Daemon::start(&policy, &[]);
    let r = probe(
        Some(&cg.path),
        None,
        &["tcp", &format!("127.0.0.1:{port}")],
        "named",
    );
    assert!(ok(&r), "the named gateway was refused: {r}");
    let rec = daemon.wait_flow(Duration::from_secs(5), |f| {
        f["reason"] == "gateway" && f["dst"] == format!("127.0.0.1:{port}").as_str()
    });
    assert!(rec.is_some(), "{:#?}", daemon.flows());
    // Another loopback port is not the gateway.
    assert!(eperm(&probe(
        Some(&cg.path),
        None,
        &["tcp", &format!("127.0.0.1:{}", port.wrapping_add(1))],
        "x"
    )));
    // The CIDR endpoint covers .2 (the world's gateway address) but not .5.
    let p = payload("cidr");
    let r = probe(
        Some(&cg.path),
        None,
        &[
            "tcp",
            &SocketAddr::new(sb.gateway4(), GATEWAY_PORT).to_string(),
        ],
        &p,
    );
    assert!(ok(&r), "{r}");
    assert!(eperm(&probe(
        Some(&cg.path),
        None,
        &[
            "tcp",
            &SocketAddr::new(sb.other_resolver4(), GATEWAY_PORT).to_string()
        ],
        "y"
    )));
    let show = daemon.cli_json(&["policy", "show", "--json"]);
    assert!(
        show["resolved"]["localhost"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "127.0.0.1")),
        "{show}"
    );
}

#[test]
fn policy_changes_are_audit_records() {
    let fx = Fixture::new("enforce");
    fx.daemon.apply(&with_forbidden_allowed(&fx));
    let t0 = std::time::Instant::now();
    loop {
        let log = std::fs::read_to_string(&fx.daemon.audit_log).unwrap_or_default();
        let changes: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "policy_change")
            .collect();
        if let Some(c) = changes.iter().find(|c| c["policy_generation"] == 2) {
            assert_eq!(c["previous_generation"], 1);
            assert_eq!(c["action"], "apply");
            assert_eq!(c["uid"], 0);
            assert!(
                c["digest"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("sha256:"))
            );
            assert!(
                changes
                    .iter()
                    .any(|c| c["policy_generation"] == 1 && c["action"] == "startup")
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no policy_change record: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A document with several problems, applied through the CLI: the daemon answers with the
/// structured list (file, line, column, field, message), the CLI prints each problem as
/// `file:line:col: field: message` on stderr, and the active generation stays.
#[test]
fn policy_errors_travel_as_a_structured_list() {
    let fx = Fixture::new("enforce");
    let before = generation(&fx);
    let good = fx.sb.policy(&[("agent", &fx.cg.rel, "enforce")]);
    let bad = good
        .replace("kind: EgressPolicy", "kind: Nope")
        .replace("mode: enforce", "mode: permissive");
    let line_of = |needle: &str| {
        bad.lines()
            .position(|l| l.contains(needle))
            .expect("needle") as u64
            + 1
    };
    let f = fx.daemon.dir.join("bad.yaml");
    std::fs::write(&f, &bad).expect("write");
    let name = f.to_str().expect("utf8");

    // The daemon's answer: every problem, positioned.
    let req = serde_json::json!({"v": 1, "cmd": "policy_apply", "file": name, "source": bad});
    let r = raw(&fx, format!("{req}\n").as_bytes());
    assert_eq!(r["ok"], false, "{r}");
    let problems = r["problems"].as_array().expect("problems list");
    assert_eq!(problems.len(), 2, "{r}");
    assert_eq!(problems[0]["file"], name);
    assert_eq!(problems[0]["field"], "kind");
    assert_eq!(problems[0]["line"], line_of("kind: Nope"));
    assert!(problems[0]["column"].as_u64().is_some_and(|c| c > 1), "{r}");
    assert_eq!(problems[1]["field"], "spec.identities[0].mode");
    assert_eq!(problems[1]["line"], line_of("mode: permissive"));
    assert!(
        problems[1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown mode `permissive`")),
        "{r}"
    );

    // The CLI prints them one per line, exactly `file:line:col: field: message`.
    let (ok, out, err) = fx.daemon.try_cli(&["policy", "apply", name]);
    assert!(!ok, "apply succeeded: {out}");
    assert!(out.is_empty(), "stdout: {out}");
    let expected: Vec<String> = problems
        .iter()
        .map(|p| {
            format!(
                "{}:{}:{}: {}: {}",
                p["file"].as_str().expect("file"),
                p["line"],
                p["column"],
                p["field"].as_str().expect("field"),
                p["message"].as_str().expect("message")
            )
        })
        .collect();
    assert_eq!(err, format!("chokepoint: {}\n", expected.join("\n")));
    // The same lines as the local validation prints.
    let (ok, _, local) = fx
        .daemon
        .try_cli(&["policy", "validate", "--offline", name]);
    assert!(!ok);
    assert_eq!(local, err);

    assert_eq!(
        generation(&fx),
        before,
        "a bad document changed the generation"
    );
    let show = fx.daemon.cli_json(&["policy", "show", "--json"]);
    assert_eq!(show["source"], good, "the active source changed");
}
