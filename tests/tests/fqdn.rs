//! `toFQDN` rules against a real DNS server of the test's own (cp-probe `dns-serve`, in a network
//! namespace of its own that the host routes to): real client lookups from inside the identity's
//! cgroup (cp-probe UDP queries, and glibc's `getent hosts` in the pod namespace), then real
//! connections to the world namespace.

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chokepoint_tests::{dns_server::DnsServer, *};
use serde_json::Value;

/// The world's extra addresses the names point at: `10.201.n.(10+i)`.
fn dest(sb: &Sandbox, i: u8) -> String {
    format!("10.201.{}.{}", sb.n, 10 + i)
}

struct Setup {
    daemon: Daemon,
    a: Cgroup,
    b: Cgroup,
    dns: DnsServer,
    sb: Sandbox,
}

/// Two identities: `agent-a` with every toFQDN rule, `agent-b` with `api.test` (never looked
/// up by it) and `shared.test` (an address it shares with `api.test`, other ports).
fn setup(api_ttl: u32, extra: &[&str]) -> Setup {
    let sb = Sandbox::new();
    let n = sb.n;
    for i in 0..5u8 {
        sh(
            "ip",
            &[
                "-n",
                &sb.world.name,
                "addr",
                "add",
                &format!("{}/24", dest(&sb, i)),
                "dev",
                "eth0",
            ],
        );
    }
    let zone = vec![
        format!("api.test=A:{}:{api_ttl}", dest(&sb, 0)),
        format!("shared.test=A:{}:60", dest(&sb, 0)),
        "alias.test=CNAME:lb.test:60".to_string(),
        "lb.test=CNAME:edge.test:60".to_string(),
        format!("edge.test=A:{}:60", dest(&sb, 1)),
        format!("*.wild.test=A:{}:60", dest(&sb, 2)),
        format!("deep.x.wild.test=A:{}:60", dest(&sb, 3)),
        format!("v6.test=AAAA:{}:60", sb.forbidden6()),
    ];
    let dns = DnsServer::start(n, &zone);
    let a = Cgroup::new(&unique("cpt-fqdn-a"));
    let b = Cgroup::new(&unique("cpt-fqdn-b"));
    let ident = |name: &str, cg: &Cgroup, rules: &str| {
        format!(
            "    - name: {name}\n      mode: enforce\n      selector:\n        cgroupPath: \"{}\"\n      egress:\n        gateways: [llm-gateway]\n        allow:\n          - to: \"{}/32\"\n            ports: [\"53/udp\", \"53/tcp\"]\n            reason: sanctioned resolver\n{rules}",
            cg.rel, dns.addr
        )
    };
    let rule = |name: &str, port: &str| {
        format!("          - toFQDN: \"{name}\"\n            ports: [\"{port}\"]\n")
    };
    let policy = format!(
        "apiVersion: chokepoint.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: fqdn-{n}\nspec:\n  gateways:\n    - name: llm-gateway\n      endpoints: [\"{}:{GATEWAY_PORT}/tcp\"]\n  identities:\n{}{}",
        sb.gateway4(),
        ident(
            "agent-a",
            &a,
            &[
                rule("api.test", "9000/tcp"),
                rule("shared.test", "443/tcp"),
                rule("alias.test", "9000/tcp"),
                rule("*.wild.test", "9000/tcp"),
                rule("v6.test", "9000/tcp"),
            ]
            .concat()
        ),
        ident(
            "agent-b",
            &b,
            &[rule("api.test", "9000/tcp"), rule("shared.test", "443/tcp")].concat()
        ),
    );
    let tc = sb.host_world_if.clone();
    let tc_pod = format!("{}:ingress", sb.host_pod_if);
    let pod_addr = format!("10.202.{n}.1");
    let mut args = vec![
        "--tc-iface",
        &tc,
        "--tc-iface",
        &tc_pod,
        "--dns-proxy-pod-addr",
        &pod_addr,
    ];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(&policy, &args);
    Setup {
        daemon,
        a,
        b,
        dns,
        sb,
    }
}

impl Setup {
    fn resolver(&self) -> String {
        format!("{}:53", self.dns.addr)
    }
    /// A real UDP lookup from inside `cg` (connected socket unless `mode` is `sendto`).
    fn lookup(&self, cg: &Cgroup, pod: bool, name: &str, qtype: &str, mode: &str) -> Value {
        probe(
            Some(&cg.path),
            pod.then_some(&self.sb.pod),
            &["dns-query", &self.resolver(), name, qtype, mode],
            "",
        )
    }
    fn connect(&self, cg: &Cgroup, pod: bool, dst: &str, what: &str) -> (Value, String) {
        let p = payload(what);
        (
            probe(
                Some(&cg.path),
                pod.then_some(&self.sb.pod),
                &["tcp", dst],
                &p,
            ),
            p,
        )
    }
    fn assert_reaches(&self, cg: &Cgroup, pod: bool, dst: &str, what: &str) {
        let (r, p) = self.connect(cg, pod, dst, what);
        assert!(
            ok(&r),
            "{what}: {dst} was refused: {r}\n{}",
            self.daemon.log_text()
        );
        assert!(
            self.sb
                .wait_for(Duration::from_secs(5), |rec| rec.with_payload(&p) > 0),
            "{what}: the world never received the payload"
        );
    }
    fn assert_denied(&self, cg: &Cgroup, pod: bool, dst: &str, what: &str) {
        let (r, p) = self.connect(cg, pod, dst, what);
        assert!(eperm(&r), "{what}: {dst} was not refused: {r}");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            self.sb.received.with_payload(&p),
            0,
            "{what}: payload arrived"
        );
    }
}

fn addrs(v: &Value) -> Vec<String> {
    v["addrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect()
}

#[test]
fn named_destinations_follow_the_identitys_own_answers() {
    let s = setup(60, &["--fqdn-grace", "0s"]);
    let api = format!("{}:{OTHER_TCP}", dest(&s.sb, 0));
    let api443 = format!("{}:443", dest(&s.sb, 0));

    // Unresolved: denied.
    s.assert_denied(&s.a, false, &api, "before any lookup");

    // A real lookup from the identity's cgroup: answered, apparently by the resolver itself.
    let r = s.lookup(&s.a, false, "api.test", "A", "connect");
    assert!(ok(&r), "lookup failed: {r}\n{}", s.daemon.log_text());
    assert_eq!(addrs(&r), vec![dest(&s.sb, 0)]);
    assert_eq!(r["from"], s.resolver(), "reply source not restored: {r}");
    assert_eq!(r["peer"], s.resolver(), "getpeername shows the proxy: {r}");
    assert_eq!(s.dns.asked("api.test"), 1, "the proxy did not forward");
    // The very next connect works (the address was in the kernel before the answer).
    s.assert_reaches(&s.a, false, &api, "right after the lookup");
    // That rule's ports only.
    s.assert_denied(&s.a, false, &api443, "another port of the learned address");
    // Another identity with the same rule gains nothing from agent-a's lookup.
    s.assert_denied(&s.b, false, &api, "another identity");

    // A second name on the same address (agent-b, 443 only) does not widen to api.test's port.
    let r = s.lookup(&s.b, false, "shared.test", "A", "sendto");
    assert!(ok(&r), "{r}");
    assert_eq!(r["from"], s.resolver(), "unconnected reply source: {r}");
    s.assert_reaches(&s.b, false, &api443, "shared name's own port");
    s.assert_denied(&s.b, false, &api, "shared address, other name's port");
    // …and agent-a (which only resolved api.test) still has no 443 there.
    s.assert_denied(
        &s.a,
        false,
        &api443,
        "shared address, not looked up by this identity",
    );

    // CNAME chain: alias.test → lb.test → edge.test → address.
    let r = s.lookup(&s.a, false, "alias.test", "A", "connect");
    assert_eq!(addrs(&r), vec![dest(&s.sb, 1)], "{r}");
    s.assert_reaches(
        &s.a,
        false,
        &format!("{}:{OTHER_TCP}", dest(&s.sb, 1)),
        "CNAME target",
    );
    // Single-label wildcard: x.wild.test yes, deep.x.wild.test no.
    let r = s.lookup(&s.a, false, "x.wild.test", "A", "connect");
    assert_eq!(addrs(&r), vec![dest(&s.sb, 2)], "{r}");
    s.assert_reaches(
        &s.a,
        false,
        &format!("{}:{OTHER_TCP}", dest(&s.sb, 2)),
        "wildcard",
    );
    let r = s.lookup(&s.a, false, "deep.x.wild.test", "A", "connect");
    assert_eq!(addrs(&r), vec![dest(&s.sb, 3)], "{r}");
    s.assert_denied(
        &s.a,
        false,
        &format!("{}:{OTHER_TCP}", dest(&s.sb, 3)),
        "two labels under a single-label wildcard",
    );
    // Never looked up.
    s.assert_denied(
        &s.a,
        false,
        &format!("{}:{OTHER_TCP}", dest(&s.sb, 4)),
        "unresolved",
    );
    // AAAA.
    let r = s.lookup(&s.a, false, "v6.test", "AAAA", "connect");
    assert_eq!(addrs(&r), vec![s.sb.forbidden6().to_string()], "{r}");
    s.assert_reaches(
        &s.a,
        false,
        &SocketAddr::new(s.sb.forbidden6(), OTHER_TCP).to_string(),
        "AAAA answer",
    );

    // The record names the rule and the name.
    let f = s
        .daemon
        .wait_flow(Duration::from_secs(5), |f| {
            f["identity"] == "agent-a" && f["reason"] == "fqdn" && f["dst"] == api
        })
        .expect("fqdn flow record");
    assert_eq!(f["verdict"], "allow");
    assert_eq!(f["fqdn"], "api.test", "{f}");
    assert!(
        f["rule"]
            .as_str()
            .is_some_and(|r| r.contains("toFQDN api.test")),
        "{f}"
    );
    // The CLI lists what was learned, per identity.
    let l = s
        .daemon
        .cli_json(&["fqdn", "--identity", "agent-a", "-o", "json"]);
    let learned = l["learned"].as_array().expect("learned");
    assert!(learned.iter().all(|e| e["identity"] == "agent-a"), "{l}");
    let e = learned
        .iter()
        .find(|e| e["name"] == "api.test")
        .expect("api.test listed");
    assert_eq!(e["addr"], dest(&s.sb, 0));
    assert!(
        e["ttl_remaining_s"]
            .as_u64()
            .is_some_and(|t| t > 30 && t <= 60),
        "{e}"
    );
    let m = s.daemon.scrape();
    assert!(
        metric(&m, "chokepoint_fqdn_learned{identity=\"agent-a\"}").is_some_and(|v| v == 4.0),
        "{m}"
    );
    // The inventory names the refused destinations the identity resolved through the proxy
    // (deep.x.wild.test is answered but no rule covers it); an address never answered has no
    // name.
    let host = |v: &Value, addr: &str| -> Option<Value> {
        v["identities"]
            .as_array()?
            .iter()
            .find(|i| i["identity"] == "agent-a")?["destinations"]
            .as_array()?
            .iter()
            .find(|d| d["dst"] == addr)
            .map(|d| d["host"].clone())
    };
    let t0 = Instant::now();
    loop {
        let v = s.daemon.cli_json(&["inventory", "-o", "json"]);
        if host(&v, &dest(&s.sb, 3)) == Some(Value::from("deep.x.wild.test"))
            && host(&v, &dest(&s.sb, 4)) == Some(Value::Null)
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "inventory: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn learned_addresses_expire_in_the_kernel() {
    let s = setup(2, &["--fqdn-grace", "0s"]);
    let api = format!("{}:{OTHER_TCP}", dest(&s.sb, 0));
    let r = s.lookup(&s.a, false, "api.test", "A", "connect");
    assert!(ok(&r), "{r}");
    let t0 = Instant::now();
    s.assert_reaches(&s.a, false, &api, "within the TTL");
    std::thread::sleep(Duration::from_secs(3).saturating_sub(t0.elapsed()));
    s.assert_denied(&s.a, false, &api, "after the TTL");
    let m = s.daemon.scrape();
    let ok_evicted = (0..40).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        metric(
            &s.daemon.scrape(),
            "chokepoint_fqdn_evictions_total{reason=\"expired\"}",
        )
        .is_some_and(|v| v >= 1.0)
    });
    assert!(ok_evicted, "no expiry eviction counted: {m}");
}

#[test]
fn daemon_kill_keeps_learned_addresses_until_their_ttl_and_lookups_fail_closed() {
    let mut s = setup(5, &["--fqdn-grace", "0s"]);
    let api = format!("{}:{OTHER_TCP}", dest(&s.sb, 0));
    let r = s.lookup(&s.a, false, "api.test", "A", "connect");
    assert!(ok(&r), "{r}");
    let learned_at = Instant::now();
    s.daemon.kill(libc::SIGKILL);
    // Enforcement and the learned address go on without the daemon.
    s.assert_reaches(&s.a, false, &api, "learned, daemon killed");
    s.assert_denied(
        &s.a,
        false,
        &format!("{}:{OTHER_TCP}", dest(&s.sb, 1)),
        "not learned, daemon killed",
    );
    // A lookup during the outage gets no answer, and never reaches the resolver unfiltered.
    let before = s.dns.asked("alias.test");
    let r = s.lookup(&s.a, false, "alias.test", "A", "sendto");
    assert!(!ok(&r), "a lookup was answered with the daemon down: {r}");
    let r = s.lookup(&s.a, false, "alias.test", "A", "connect");
    assert!(!ok(&r), "a lookup was answered with the daemon down: {r}");
    assert_eq!(
        s.dns.asked("alias.test"),
        before,
        "the query reached the resolver"
    );
    // No longer than the TTL: the kernel lets it lapse with the daemon still down.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(learned_at.elapsed()));
    s.assert_denied(&s.a, false, &api, "TTL passed, daemon down");

    // Back up: lookups are answered and learned again.
    s.daemon.spawn(None);
    let r = s.lookup(&s.a, false, "api.test", "A", "connect");
    assert!(ok(&r), "after restart: {r}\n{}", s.daemon.log_text());
    s.assert_reaches(&s.a, false, &api, "re-learned after restart");
}

#[test]
fn a_restart_neither_drops_nor_extends_learned_addresses() {
    // The TTL outlasts a restart, which loads every program again (tens of seconds under
    // software emulation: `time_scale`).
    let ttl = 6 * time_scale();
    let mut s = setup(ttl, &["--fqdn-grace", "0s"]);
    let api = format!("{}:{OTHER_TCP}", dest(&s.sb, 0));
    let r = s.lookup(&s.a, false, "api.test", "A", "connect");
    assert!(ok(&r), "{r}");
    let learned_at = Instant::now();
    s.daemon.kill(libc::SIGKILL);
    s.daemon.spawn(None);
    let ttl = Duration::from_secs(u64::from(ttl));
    assert!(
        learned_at.elapsed() < ttl,
        "the restart took longer than the TTL ({ttl:?}): raise CP_TEST_TIME_SCALE"
    );
    s.assert_reaches(&s.a, false, &api, "after restart, within TTL");
    let l = s.daemon.cli_json(&["fqdn", "--json"]);
    assert!(
        l["learned"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["name"] == "api.test")),
        "restarted daemon does not name the learned address: {l}"
    );
    std::thread::sleep((ttl + Duration::from_secs(1)).saturating_sub(learned_at.elapsed()));
    s.assert_denied(&s.a, false, &api, "TTL passed after restart");
}

#[test]
fn pod_namespace_lookups_through_glibc() {
    let s = setup(60, &["--fqdn-grace", "0s"]);
    let api = format!("{}:{OTHER_TCP}", dest(&s.sb, 0));
    s.assert_denied(&s.a, true, &api, "pod, before lookup");
    // The probe's own UDP query from the pod namespace.
    let r = s.lookup(&s.a, true, "alias.test", "A", "connect");
    assert!(ok(&r), "pod lookup: {r}\n{}", s.daemon.log_text());
    assert_eq!(r["from"], s.resolver());
    s.assert_reaches(
        &s.a,
        true,
        &format!("{}:{OTHER_TCP}", dest(&s.sb, 1)),
        "pod, CNAME target",
    );
    // glibc: `getent hosts` with the pod namespace's resolv.conf (ip netns exec bind-mounts it).
    let dir = PathBuf::from(format!("/etc/netns/{}", s.sb.pod.name));
    fs::create_dir_all(&dir).expect("/etc/netns dir");
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    fs::write(
        dir.join("resolv.conf"),
        format!("nameserver {}\noptions timeout:2 attempts:1\n", s.dns.addr),
    )
    .expect("resolv.conf");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &s.sb.pod.name,
        "getent",
        "ahostsv4",
        "api.test",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let out = in_cgroup(cmd, Some(&s.a.path), None)
        .output()
        .expect("getent");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&dest(&s.sb, 0)),
        "getent: {text} {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.daemon.log_text()
    );
    s.assert_reaches(&s.a, true, &api, "pod, after getent");
}

#[test]
fn the_cap_per_identity_is_recorded() {
    let s = setup(60, &["--fqdn-max-per-identity", "1"]);
    let r = s.lookup(&s.a, false, "api.test", "A", "connect");
    assert!(ok(&r), "{r}");
    let r = s.lookup(&s.a, false, "x.wild.test", "A", "connect");
    assert!(ok(&r), "answers still arrive past the cap: {r}");
    s.assert_denied(
        &s.a,
        false,
        &format!("{}:{OTHER_TCP}", dest(&s.sb, 2)),
        "past the cap",
    );
    let log = fs::read_to_string(&s.daemon.audit_log).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("\"fqdn_cap\"") && l.contains("agent-a")),
        "no fqdn_cap record:\n{log}"
    );
    assert!(
        metric(
            &s.daemon.scrape(),
            "chokepoint_fqdn_evictions_total{reason=\"cap\"}"
        )
        .is_some_and(|v| v >= 1.0)
    );
}
