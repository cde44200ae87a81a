//! Kubernetes against real components: etcd and a real kube-apiserver (started and stopped by
//! each test), the agent under the chart's ServiceAccount and ClusterRole with a token from the
//! TokenRequest API, pods created through the API with `spec.nodeName` (or bound to the node
//! the way the scheduler does), their status written as kubelet would, and pod cgroups created
//! with kubelet's names for both cgroup drivers holding real processes in the sandbox's pod
//! network namespace. Enforcement, records, the unresolved-pod default, re-lists after the
//! apiserver restarts and a probe of a server in a pod are checked against the real kernel (the
//! `EgressPolicy` resource: kubernetes_policy.rs; the chart, manifests and image:
//! kubernetes_chart.rs).
//!
//! The tests' names start with `kube_`: `cargo xtask test` skips them, saying so, when the
//! apiserver has not been built on this machine (`cargo xtask setup --kube`).

use std::time::{Duration, Instant};

use chokepoint_tests::{
    kube_node::*,
    kubelet::{Driver, Runtime, container_id},
    *,
};
use serde_json::json;

const TRAINERS: (&str, &str, &str) = (
    "trainers",
    "enforce",
    "{namespaceSelector: {matchLabels: {tier: ml}}, serviceAccount: trainer, matchExpressions: [{key: track, operator: In, values: [gpu, cpu]}]}",
);

#[test]
fn kube_pod_identities_from_the_api_server_are_enforced_per_pod() {
    let mut n = Node::new(&[]);
    let policy = n.policy(&[AGENTS, TRAINERS], "", "");
    n.start(Some(&policy));
    // Namespaces and ServiceAccounts arrive after the daemon started (watch events).
    n.cluster.namespace("team-a", json!({}));
    n.cluster.namespace("ml-prod", json!({"tier": "ml"}));
    n.cluster.namespace("ml-dev", json!({"tier": "dev"}));
    for (ns, sa) in [
        ("team-a", "default"),
        ("team-a", "builder"),
        ("ml-prod", "trainer"),
        ("ml-prod", "default"),
        ("ml-dev", "trainer"),
    ] {
        n.cluster.service_account(ns, sa);
    }
    // cgroupfs driver, containerd, Burstable: selected by namespace + labels.
    let (uid_a, a) = n.run_pod(&PodSpec {
        ns: "team-a",
        name: "agent-0",
        labels: json!({"app": "agent"}),
        sa: "builder",
        qos: "Burstable",
        driver: Driver::Cgroupfs,
        runtime: Runtime::Containerd,
    });
    // systemd driver, CRI-O, Guaranteed: selected by namespace labels + ServiceAccount + an
    // expression.
    let (_, t) = n.run_pod(&PodSpec {
        ns: "ml-prod",
        name: "trainer-0",
        labels: json!({"track": "gpu"}),
        sa: "trainer",
        qos: "Guaranteed",
        driver: Driver::Systemd,
        runtime: Runtime::Crio,
    });
    // systemd driver, containerd, BestEffort: same labels, other ServiceAccount: no identity.
    let (_, other) = n.run_pod(&PodSpec {
        ns: "ml-prod",
        name: "notebook-0",
        labels: json!({"track": "gpu"}),
        sa: "default",
        qos: "BestEffort",
        driver: Driver::Systemd,
        runtime: Runtime::Containerd,
    });
    // A namespace whose labels do not match: no identity either.
    let (_, dev) = n.run_pod(&PodSpec {
        ns: "ml-dev",
        name: "trainer-0",
        labels: json!({"track": "cpu"}),
        sa: "trainer",
        qos: "BestEffort",
        driver: Driver::Cgroupfs,
        runtime: Runtime::Crio,
    });
    let b = n.wait_bound("agents", "team-a", "agent-0");
    assert_eq!(b["service_account"], "builder", "{b}");
    assert_eq!(
        b["cgroup"],
        format!("/{}", n.cg.pod_path(Driver::Cgroupfs, "Burstable", &uid_a)),
        "bound at the pod-level cgroup: {b}"
    );
    n.wait_bound("trainers", "ml-prod", "trainer-0");
    n.assert_enforced(&a, "agents", "team-a", "agent-0", "builder");
    n.assert_enforced(&t, "trainers", "ml-prod", "trainer-0", "trainer");
    // The unselected pods (known to the node, matched by nothing) are not enforced.
    for (cg, what) in [(&other, "ml-prod/notebook-0"), (&dev, "ml-dev/trainer-0")] {
        let p = payload("free");
        let r = n.tcp(cg, n.sb.forbidden4(), OTHER_TCP, &p);
        assert!(ok(&r), "{what} is not selected yet was refused: {r}");
    }
    // Relabeling the namespace (a watch event) moves the dev pod under `trainers`.
    n.cluster.namespace("ml-dev", json!({"tier": "ml"}));
    n.wait_bound("trainers", "ml-dev", "trainer-0");
    n.assert_enforced(&dev, "trainers", "ml-dev", "trainer-0", "trainer");
    let st = n.kube_status();
    assert_eq!(st["synced"], true, "{st}");
    assert_eq!(st["node"], n.name.as_str(), "{st}");
    assert_pod_queries_alerts_and_schema(&n);
}

/// `flows`/`alerts --namespace/--pod` against the pods' real records, an alert per pod naming
/// it, and every line of the real audit log (pod fields included) valid against
/// docs/records.schema.json.
fn assert_pod_queries_alerts_and_schema(n: &Node) {
    let q = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        n.daemon.cli_json(&a).as_array().cloned().expect("an array")
    };
    let a0 = q(&["flows", "--namespace", "team-a", "--pod", "agent-0"]);
    assert!(
        !a0.is_empty()
            && a0
                .iter()
                .all(|f| f["pod"] == "agent-0" && f["namespace"] == "team-a"),
        "{a0:#?}"
    );
    let ml = q(&["flows", "--namespace", "ml-prod", "--verdict", "deny"]);
    assert!(
        !ml.is_empty() && ml.iter().all(|f| f["pod"] == "trainer-0"),
        "{ml:#?}"
    );
    assert!(q(&["flows", "--namespace", "team-a", "--pod", "trainer-0"]).is_empty());
    // Alerts (one per pod, not one per identity) carry the pod and filter on it.
    let t0 = Instant::now();
    let alerts = loop {
        let a = q(&["alerts", "--namespace", "ml-dev"]);
        if !a.is_empty() && !q(&["alerts", "--pod", "agent-0"]).is_empty() {
            break a;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no alert naming the pods: {:#?}",
            q(&["alerts"])
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        alerts.iter().all(|a| a["pod"] == "trainer-0"
            && a["service_account"] == "trainer"
            && a["identity"] == "trainers"),
        "{alerts:#?}"
    );
    let a = q(&["alerts", "--pod", "agent-0"]);
    assert!(
        a.iter()
            .all(|a| a["namespace"] == "team-a" && a["service_account"] == "builder"),
        "{a:#?}"
    );
    // The audit log: flows and alerts with pod fields match the published schema.
    let path = repo("docs/records.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("schema")).expect("JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let t0 = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&n.daemon.audit_log).expect("audit log");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        if lines
            .iter()
            .any(|v| v["event"] == "alert" && v["namespace"] == "ml-dev")
        {
            break lines;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no pod alert in the audit log"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for kind in ["flow", "alert"] {
        assert!(
            lines
                .iter()
                .any(|v| v["event"] == kind && v["pod"] == "agent-0"),
            "no {kind} line naming agent-0"
        );
    }
    for v in &lines {
        let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{v}\ndoes not match the schema: {errors:#?}"
        );
    }
}

#[test]
fn kube_unresolved_pod_cgroup_is_gateway_only_until_the_pod_reaches_the_node() {
    let mut n = Node::new(&[]);
    // The real identity may also reach forbidden:OTHER_TCP, so its arrival is visible.
    let allow = format!(
        "[{{to: \"{}/32\", ports: [\"{OTHER_TCP}/tcp\"], reason: known pods only}}]",
        n.sb.forbidden4()
    );
    let policy = n.policy(
        &[AGENTS],
        "  defaults:\n    unresolvedPods: gateway-only\n",
        &allow,
    );
    n.start(Some(&policy));
    team_a(&n);
    // The pod exists in the API but is not scheduled: this node's watcher cannot know it.
    let uid = n.cluster.pod(
        "team-a",
        "agent-0",
        json!({"app": "agent"}),
        "default",
        None,
    );
    let id = container_id();
    let cg =
        n.cg.container(Driver::Systemd, Runtime::Containerd, "Burstable", &uid, &id);
    // At once, before any API event about the pod: the gateway passes, the rest is refused.
    let p = payload("early-bypass");
    let r = n.tcp(&cg, n.sb.forbidden4(), OTHER_TCP, &p);
    assert!(
        eperm(&r),
        "the unresolved pod's bypass was not refused: {r}"
    );
    let p2 = payload("early-gw");
    let r2 = n.tcp(&cg, n.sb.gateway4(), GATEWAY_PORT, &p2);
    assert!(ok(&r2), "the unresolved pod's gateway failed: {r2}");
    let pid = r["pid"].as_u64().expect("pid");
    let rec = n
        .daemon
        .wait_flow(Duration::from_secs(5), |f| {
            f["verdict"] == "deny" && f["pid"].as_u64() == Some(pid)
        })
        .unwrap_or_else(|| panic!("no deny record: {:#?}", n.daemon.flows()));
    assert_eq!(rec["identity"], "(unresolved pod)", "{rec}");
    assert_eq!(n.sb.received.with_payload(&p), 0, "the bypass arrived");
    // The scheduler binds it to this node, kubelet reports it running: the real identity
    // replaces the default.
    n.cluster.bind("team-a", "agent-0", &n.name);
    n.cluster.pod_running(
        "team-a",
        "agent-0",
        "Burstable",
        &format!("containerd://{id}"),
    );
    n.wait_bound("agents", "team-a", "agent-0");
    let p3 = payload("allowed-now");
    let r3 = n.tcp(&cg, n.sb.forbidden4(), OTHER_TCP, &p3);
    assert!(ok(&r3), "the known pod's allow rule does not apply: {r3}");
    let pid3 = r3["pid"].as_u64().expect("pid");
    let rec = n
        .daemon
        .wait_flow(Duration::from_secs(5), |f| {
            f["verdict"] == "allow" && f["pid"].as_u64() == Some(pid3)
        })
        .unwrap_or_else(|| panic!("no allow record: {:#?}", n.daemon.flows()));
    assert_eq!(rec["identity"], "agents", "{rec}");
    assert_eq!(rec["pod"], "agent-0", "{rec}");
    assert_eq!(rec["namespace"], "team-a", "{rec}");
}

#[test]
fn kube_watcher_relists_after_the_apiserver_restarts_and_enforcement_holds_meanwhile() {
    let mut n = Node::new(&[]);
    let policy = n.policy(&[AGENTS], "", "");
    n.start(Some(&policy));
    team_a(&n);
    let (_, a) = n.run_pod(&agent_pod("agent-0"));
    let (_, gone) = n.run_pod(&agent_pod("agent-gone"));
    n.wait_bound("agents", "team-a", "agent-0");
    n.wait_bound("agents", "team-a", "agent-gone");
    let before = n.kube_status();
    n.cluster.stop_apiserver();
    // Down: what is bound stays enforced (fail closed), records still name the pod.
    n.assert_enforced(&a, "agents", "team-a", "agent-0", "default");
    // While it is down, a pod goes away without the node seeing the event, more writes happen
    // and etcd compacts its history: the watch cannot resume (410 Gone) and must list again.
    n.cluster
        .etcdctl(&["del", "/registry/pods/team-a/agent-gone"]);
    for i in 0..5 {
        n.cluster.etcdctl(&["put", &format!("/cp-test/{i}"), "x"]);
    }
    n.cluster.compact();
    n.cluster.start_apiserver();
    // Up again: a pod created now is seen (the watch is back) and enforced.
    let (_, b) = n.run_pod(&agent_pod("agent-1"));
    n.wait_bound("agents", "team-a", "agent-1");
    n.assert_enforced(&b, "agents", "team-a", "agent-1", "default");
    n.assert_enforced(&a, "agents", "team-a", "agent-0", "default");
    // The re-list replaced the node's view whole: the pod deleted during the outage is no longer
    // known, so its cgroup falls back to the unresolved-pod default (still gateway-only).
    let t0 = Instant::now();
    loop {
        let v = n.daemon.cli_json(&["identities", "--json"]).to_string();
        if !v.contains("\"agent-gone\"") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "agent-gone is still known after the re-list: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = n.tcp(&gone, n.sb.forbidden4(), OTHER_TCP, &payload("gone"));
    assert!(eperm(&r), "the forgotten pod's cgroup is open: {r}");
    let after = n.kube_status();
    assert!(
        after["lists"].as_u64() > before["lists"].as_u64(),
        "no re-list: {before} -> {after}\n{}",
        n.daemon.log_text()
    );
    assert!(
        after["watch_errors"].as_u64() > before["watch_errors"].as_u64(),
        "the outage was not noticed: {before} -> {after}"
    );
    // A pod deleted from the API while the daemon watches leaves the identity too.
    n.cluster.delete("v1", "Pod", Some("team-a"), "agent-1");
    let t0 = Instant::now();
    loop {
        let v = n.daemon.cli_json(&["identities", "--json"]).to_string();
        if !v.contains("\"agent-1\"") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "agent-1 still bound: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "lists {} -> {}, watch errors {} -> {}",
        before["lists"], after["lists"], before["watch_errors"], after["watch_errors"]
    );
}

#[test]
fn kube_probe_of_a_server_in_the_pod_gets_its_answer() {
    let mut n = Node::new(&[]);
    let policy = n.policy(&[AGENTS], "", "");
    n.start(Some(&policy));
    team_a(&n);
    let (_, a) = n.run_pod(&agent_pod("agent-0"));
    n.wait_bound("agents", "team-a", "agent-0");
    let (_srv, _) = spawn_probe(
        Some(&a),
        Some(&n.sb.pod),
        &["echo-serve", "8081", "8082", ""],
    );
    // Kubelet probes from the host network namespace.
    let dst = format!("{}:8081", n.sb.pod4());
    let r = probe(
        None,
        None,
        &["tcp-rr", &dst, "-", "1"],
        "GET /healthz HTTP/1.1\r\nHost: pod\r\n\r\n",
    );
    assert!(
        ok(&r),
        "the probe got no answer: {r}\n{}",
        n.daemon.log_text()
    );
    assert!(
        r["answers"][0]
            .as_str()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "{r}"
    );
    let udp = format!("{}:8082", n.sb.pod4());
    let r = probe(None, None, &["udp-rr", &udp, "-", "1"], "ping");
    assert!(ok(&r), "the UDP answer was refused: {r}");
    let rec = n.daemon.wait_flow(Duration::from_secs(5), |f| {
        f["reason"] == "reply" && f["identity"] == "agents" && f["pod"] == "agent-0"
    });
    assert!(
        rec.is_some(),
        "no reply record naming the pod: {:#?}",
        n.daemon.flows()
    );
    // The pod still cannot open its own way out.
    n.assert_enforced(&a, "agents", "team-a", "agent-0", "default");
    assert_pod_packet_sockets_send_nothing(&n, &a);
}

/// The pod identity's AF_PACKET frames never leave the pod's network namespace: with the BPF
/// LSM `socket()` is refused, else the per-netns TC backstop (which `status` says covers the
/// pod's netns, found from the pod cgroup the API server's pod resolved to) drops them; the
/// same frame sent from the pod's netns outside any identity arrives, so the check can fail.
fn assert_pod_packet_sockets_send_nothing(n: &Node, cg: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(format!("/run/netns/{}", n.sb.pod.name))
        .expect("the pod netns")
        .ino();
    let status = || n.daemon.cli_json(&["status", "--json"]);
    let by_lsm = status()["kernel"]["packet_sockets"]["by"] == "lsm";
    if !by_lsm {
        let t0 = Instant::now();
        loop {
            let st = status();
            let ident = st["identities"]
                .as_array()
                .and_then(|v| v.iter().find(|i| i["name"] == "agents").cloned())
                .unwrap_or_default();
            let covered = ident["backstop"]["tc_netns"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x["netns"] == ino));
            if covered {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the pod's netns {ino} is not covered by the backstop: {ident:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mac = {
        let v: serde_json::Value =
            serde_json::from_str(&sh("ip", &["-j", "link", "show", &n.sb.host_pod_if]))
                .expect("ip -j");
        v[0]["address"].as_str().expect("mac").to_string()
    };
    let dst = std::net::SocketAddr::new(n.sb.forbidden4(), OTHER_UDP).to_string();
    let pod4 = n.sb.pod4().to_string();
    let send = |cgroup: Option<&std::path::Path>, p: &str| -> serde_json::Value {
        let mut cmd = std::process::Command::new(probe_bin());
        cmd.args(["packet", "eth0", &mac, &pod4, &dst])
            .env("CP_PAYLOAD", p)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let out = in_cgroup(cmd, cgroup, Some(&n.sb.pod))
            .output()
            .expect("packet probe");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or_default()
    };
    let p = payload("pod-packet");
    let r = send(Some(cg), &p);
    if by_lsm {
        assert!(
            eperm(&r),
            "the BPF LSM did not refuse the pod's socket(): {r}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        n.sb.received.with_payload(&p),
        0,
        "the pod's AF_PACKET frame left: {r}"
    );
    let rec = n.daemon.wait_flow(Duration::from_secs(5), |f| {
        f["verdict"] == "deny"
            && f["identity"] == "agents"
            && (f["hook"] == "tc" || f["hook"] == "lsm_socket_create")
    });
    assert!(rec.is_some(), "no deny record of the pod's packet socket");
    let p = payload("pod-packet-outside");
    let r = send(None, &p);
    assert!(ok(&r), "{r}");
    assert!(
        n.sb.wait_for(Duration::from_secs(5), |rec| rec.with_payload(&p) > 0),
        "the control frame from outside the identity never arrived"
    );
}
