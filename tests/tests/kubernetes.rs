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
}
