//! Kubernetes against real components: etcd and a real kube-apiserver (started and stopped by
//! each test), the agent under the chart's ServiceAccount and ClusterRole with a token from the
//! TokenRequest API, pods created through the API with `spec.nodeName` (or bound to the node
//! the way the scheduler does), their status written as kubelet would, and pod cgroups created
//! with kubelet's names for both cgroup drivers holding real processes in the sandbox's pod
//! network namespace. Enforcement, records, the unresolved-pod default, re-lists after the
//! apiserver restarts, the `EgressPolicy` resource and a probe of a server in a pod are checked
//! against the real kernel.
//!
//! The tests' names start with `kube_`: `cargo xtask test` skips them, saying so, when the
//! apiserver has not been built on this machine (`cargo xtask setup --kube`).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use chokepoint_tests::{
    kube::{Cluster, Driver, KubeletCgroups, Runtime, container_id},
    *,
};
use serde_json::{Value, json};

/// The rendered manifests (from the Helm chart).
fn manifests() -> String {
    std::fs::read_to_string(repo(PLAIN)).expect("deploy/kubernetes/chokepoint.yaml")
}

const PLAIN: &str = "deploy/kubernetes/chokepoint.yaml";

fn crd() -> String {
    std::fs::read_to_string(repo("deploy/kubernetes/egresspolicies.chokepoint.dev.yaml"))
        .expect("CRD")
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A node: the control plane, the chart's RBAC and CRD installed, the sandbox, kubelet's
/// cgroup hierarchy and a daemon (not started yet) whose kubeconfig holds the chart's
/// ServiceAccount token.
struct Node {
    daemon: Daemon,
    cg: KubeletCgroups,
    sb: Sandbox,
    name: String,
    cluster: Cluster,
}

impl Node {
    fn new(extra: &[&str]) -> Node {
        let cluster = Cluster::start();
        for obj in Cluster::parse_yaml(&crd()).into_iter().chain(
            Cluster::parse_yaml(&manifests()).into_iter().filter(|d| {
                matches!(
                    d["kind"].as_str(),
                    Some("Namespace" | "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding")
                )
            }),
        ) {
            cluster.apply(obj);
        }
        let token = cluster.token("chokepoint-system", "chokepoint");
        let kc = cluster.kubeconfig("agent", &token);
        let sb = Sandbox::new();
        let cg = KubeletCgroups::new();
        let name = unique("node");
        let tc = sb.host_world_if.clone();
        let mut args = vec![
            "--kube".to_string(),
            "--node-name".into(),
            name.clone(),
            "--kube-cgroup-prefix".into(),
            cg.flag(),
            "--tc-iface".into(),
            tc,
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut daemon = Daemon::prepare(&args);
        daemon.set_env("KUBECONFIG", kc.to_str().expect("utf8"));
        Node {
            daemon,
            cg,
            sb,
            name,
            cluster,
        }
    }

    fn start(&mut self, policy: Option<&str>) {
        let file = policy.map(|p| {
            let f = self.daemon.dir.join("policy.yaml");
            std::fs::write(&f, p).expect("policy");
            f
        });
        self.daemon.spawn(file.as_deref());
    }

    /// The policy document: the sandbox's gateway for each identity `(name, mode, selector.pod
    /// as a YAML flow mapping)`; `defaults` is a `spec.defaults` block (or empty), `allow` an
    /// `egress.allow` flow sequence added to every identity (or empty).
    fn policy(&self, identities: &[(&str, &str, &str)], defaults: &str, allow: &str) -> String {
        let mut s = format!(
            "apiVersion: chokepoint.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: node\nspec:\n  gateways:\n    - name: llm-gateway\n      endpoints: [\"{g}:{GATEWAY_PORT}/tcp\"]\n{defaults}  identities:\n",
            g = self.sb.gateway4()
        );
        for (name, mode, pod) in identities {
            s += &format!(
                "    - name: {name}\n      tenant: acme\n      mode: {mode}\n      selector:\n        pod: {pod}\n      egress:\n        gateways: [llm-gateway]\n"
            );
            if !allow.is_empty() {
                s += &format!("        allow: {allow}\n");
            }
        }
        s
    }

    /// A running pod on this node: namespace object first (when new), the pod through the API,
    /// its status as kubelet writes it, and its cgroups with kubelet's names. Returns the
    /// container cgroup (where the workload's processes go).
    fn run_pod(&self, p: &PodSpec) -> (String, PathBuf) {
        let uid = self
            .cluster
            .pod(p.ns, p.name, p.labels.clone(), p.sa, Some(&self.name));
        let id = container_id();
        let scheme = match p.runtime {
            Runtime::Containerd => "containerd",
            Runtime::Crio => "cri-o",
        };
        let path = self.cg.container(p.driver, p.runtime, p.qos, &uid, &id);
        self.cluster
            .pod_running(p.ns, p.name, p.qos, &format!("{scheme}://{id}"));
        (uid, path)
    }

    /// Waits until `identities` shows pod `ns/name` under identity `ident`.
    fn wait_bound(&self, ident: &str, ns: &str, name: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.daemon.cli_json(&["identities", "--json"]);
            let list = v
                .as_array()
                .cloned()
                .or_else(|| v["identities"].as_array().cloned());
            let hit = list.unwrap_or_default().into_iter().find_map(|i| {
                (i["name"] == ident)
                    .then(|| {
                        i["pods"].as_array().and_then(|ps| {
                            ps.iter()
                                .find(|p| p["namespace"] == ns && p["pod"] == name)
                                .cloned()
                        })
                    })
                    .flatten()
            });
            if let Some(h) = hit {
                return h;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "pod {ns}/{name} never bound to {ident}: {v:#}\n{}",
                self.daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn tcp(&self, cg: &Path, dst: std::net::IpAddr, port: u16, payload: &str) -> Value {
        probe(
            Some(cg),
            Some(&self.sb.pod),
            &["tcp", &format!("{dst}:{port}")],
            payload,
        )
    }

    /// The gateway answers the pod's process; the bypass is refused with EPERM and recorded
    /// with the pod's namespace, name and ServiceAccount.
    fn assert_enforced(&self, cg: &Path, ident: &str, ns: &str, pod: &str, sa: &str) {
        let p = payload("gw");
        let r = self.tcp(cg, self.sb.gateway4(), GATEWAY_PORT, &p);
        assert!(ok(&r), "{ns}/{pod}: the gateway failed: {r}");
        assert!(
            self.sb
                .wait_for(Duration::from_secs(5), |rec| rec.with_payload(&p) > 0),
            "{ns}/{pod}: the gateway never got the payload"
        );
        let p = payload("bypass");
        let r = self.tcp(cg, self.sb.forbidden4(), OTHER_TCP, &p);
        assert!(eperm(&r), "{ns}/{pod}: the bypass was not refused: {r}");
        let pid = r["pid"].as_u64().expect("pid");
        let rec = self
            .daemon
            .wait_flow(Duration::from_secs(5), |f| {
                f["verdict"] == "deny" && f["pid"].as_u64() == Some(pid)
            })
            .unwrap_or_else(|| {
                panic!(
                    "{ns}/{pod}: no deny record for pid {pid}: {:#?}",
                    self.daemon.flows()
                )
            });
        assert_eq!(rec["identity"], ident, "{rec}");
        assert_eq!(rec["namespace"], ns, "{rec}");
        assert_eq!(rec["pod"], pod, "{rec}");
        assert_eq!(rec["service_account"], sa, "{rec}");
        assert_eq!(self.sb.received.with_payload(&p), 0, "the bypass arrived");
    }

    fn kube_status(&self) -> Value {
        self.daemon.cli_json(&["status", "--json"])["kubernetes"].clone()
    }
}

struct PodSpec<'a> {
    ns: &'a str,
    name: &'a str,
    labels: Value,
    sa: &'a str,
    qos: &'a str,
    driver: Driver,
    runtime: Runtime,
}

const AGENTS: (&str, &str, &str) = (
    "agents",
    "enforce",
    "{namespace: team-a, matchLabels: {app: agent}}",
);
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

/// team-a with its default ServiceAccount.
fn team_a(n: &Node) {
    n.cluster.namespace("team-a", json!({}));
    n.cluster.service_account("team-a", "default");
}

fn agent_pod(name: &str) -> PodSpec<'_> {
    PodSpec {
        ns: "team-a",
        name,
        labels: json!({"app": "agent"}),
        sa: "default",
        qos: "Burstable",
        driver: Driver::Cgroupfs,
        runtime: Runtime::Containerd,
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

/// The spec of a policy document, as the `EgressPolicy` object's spec.
fn egress_policy(name: &str, doc: &str) -> Value {
    let v: Value = serde_saphyr::from_str(doc).expect("policy YAML");
    json!({"apiVersion": "chokepoint.dev/v1alpha1", "kind": "EgressPolicy",
        "metadata": {"name": name}, "spec": v["spec"]})
}

fn accepted(n: &Node, generation: i64) -> Value {
    let t0 = Instant::now();
    loop {
        let o = n
            .cluster
            .get("chokepoint.dev/v1alpha1", "EgressPolicy", None, "main")
            .expect("EgressPolicy main");
        let c = o["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Accepted").cloned());
        if let Some(c) = c
            && c["observedGeneration"] == generation
        {
            return c;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no Accepted condition for generation {generation}: {o:#}\n{}",
            n.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kube_egress_policy_object_is_applied_and_a_bad_one_refused_with_event_and_condition() {
    let mut n = Node::new(&["--kube-policy", "main"]);
    // No policy at start: the daemon runs and waits for the object.
    n.start(None);
    let g0 = n.daemon.cli_json(&["status", "--json"])["generation"].clone();
    team_a(&n);
    let (_, a) = n.run_pod(&agent_pod("agent-0"));
    let doc = n.policy(&[AGENTS], "", "");
    let obj = n.cluster.apply(egress_policy("main", &doc));
    let gen1 = obj["metadata"]["generation"].as_i64().expect("generation");
    let c = accepted(&n, gen1);
    assert_eq!(c["status"], "True", "{c}");
    let active = n.daemon.cli_json(&["status", "--json"])["generation"].clone();
    assert_ne!(active, g0, "no new generation");
    n.wait_bound("agents", "team-a", "agent-0");
    n.assert_enforced(&a, "agents", "team-a", "agent-0", "default");
    // The apiserver itself refuses an object that breaks the CRD schema.
    let mut broken = egress_policy("main", &doc);
    broken["spec"]["identities"] = json!("not-a-list");
    let e = n.cluster.try_apply(&broken, false);
    assert!(e.is_err(), "the CRD schema let a broken spec in: {e:?}");
    // A schema-valid object the compiler refuses: unknown gateway.
    let bad = egress_policy(
        "main",
        &doc.replace("gateways: [llm-gateway]", "gateways: [nowhere]"),
    );
    let obj = n.cluster.apply(bad);
    let gen2 = obj["metadata"]["generation"].as_i64().expect("generation");
    assert!(gen2 > gen1);
    let c = accepted(&n, gen2);
    assert_eq!(c["status"], "False", "{c}");
    assert_eq!(c["reason"], "Invalid", "{c}");
    assert!(
        c["message"].as_str().is_some_and(|m| m.contains("nowhere")),
        "{c}"
    );
    let t0 = Instant::now();
    let event = loop {
        let evs = n.cluster.list("events.k8s.io/v1", "Event", None);
        if let Some(e) = evs.into_iter().find(|e| {
            e["reason"] == "InvalidPolicy"
                && e["regarding"]["name"] == "main"
                && e["regarding"]["kind"] == "EgressPolicy"
        }) {
            break e;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no InvalidPolicy Event\n{}",
            n.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(event["type"], "Warning", "{event}");
    assert!(
        event["note"]
            .as_str()
            .is_some_and(|m| m.contains("active generation stays")),
        "{event}"
    );
    // The active generation stayed, and so did its enforcement.
    let still = n.daemon.cli_json(&["status", "--json"])["generation"].clone();
    assert_eq!(
        still, active,
        "the bad object changed the active generation"
    );
    n.assert_enforced(&a, "agents", "team-a", "agent-0", "default");
    // Fixed: applied again, accepted.
    let obj = n
        .cluster
        .apply(egress_policy("main", &n.policy(&[AGENTS], "", "")));
    let gen3 = obj["metadata"]["generation"].as_i64().expect("generation");
    let c = accepted(&n, gen3);
    assert_eq!(c["status"], "True", "{c}");
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
#[test]
fn kube_manifests_pass_a_server_side_dry_run_and_the_role_is_least_privilege() {
    let cluster = Cluster::start();
    for obj in Cluster::parse_yaml(&crd()) {
        cluster.apply(obj);
    }
    let docs = Cluster::parse_yaml(&manifests());
    assert!(
        docs.iter().any(|d| d["kind"] == "DaemonSet"),
        "no DaemonSet in the manifests"
    );
    // The namespace exists for real (namespaced objects cannot be dry-run into a missing one).
    for d in docs.iter().filter(|d| d["kind"] == "Namespace") {
        cluster.apply(d.clone());
    }
    for d in &docs {
        if let Err(e) = cluster.try_apply(d, true) {
            panic!("the apiserver refused {}: {e}", d["kind"]);
        }
    }
    // Installed for real, the chart's ServiceAccount may read pods, not secrets.
    for d in docs.iter().filter(|d| {
        matches!(
            d["kind"].as_str(),
            Some("ServiceAccount" | "ClusterRole" | "ClusterRoleBinding")
        )
    }) {
        cluster.apply(d.clone());
    }
    let token = cluster.token("chokepoint-system", "chokepoint");
    let agent = cluster.client_from(&cluster.kubeconfig("agent", &token));
    let can = |path: &str| {
        let req = http::Request::get(path).body(Vec::new()).expect("request");
        cluster
            .block_on(agent.request_text(req))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    can("/api/v1/pods?fieldSelector=spec.nodeName%3Dx").expect("list pods");
    can("/api/v1/namespaces").expect("list namespaces");
    can("/apis/chokepoint.dev/v1alpha1/egresspolicies").expect("list egresspolicies");
    let e = can("/api/v1/secrets").expect_err("the agent may list secrets");
    assert!(e.contains("403") || e.contains("forbidden"), "{e}");
    let e = can("/api/v1/configmaps").expect_err("the agent may list configmaps");
    assert!(e.contains("403") || e.contains("forbidden"), "{e}");
}

const PLAIN_HEADER: &str = "# Rendered by Helm from deploy/helm/chokepoint with its default values; do not edit.\n# Regenerate: CHOKEPOINT_BLESS=1 cargo test -p chokepoint-tests --test kubernetes kube_helm\n# Install: kubectl apply -f deploy/kubernetes/ (docs/kubernetes.md)\n";

/// A stand-in for the Prometheus Operator's ServiceMonitor CRD (its schema is not checked).
fn service_monitor_crd() -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
            "names": {"kind": "ServiceMonitor", "plural": "servicemonitors",
                "singular": "servicemonitor", "listKind": "ServiceMonitorList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]}})
}

fn config_of(cluster: &Cluster) -> Value {
    let cm = cluster
        .get(
            "v1",
            "ConfigMap",
            Some("chokepoint-system"),
            "chokepoint-config",
        )
        .expect("config map");
    serde_saphyr::from_str(cm["data"]["config.yaml"].as_str().expect("config.yaml"))
        .expect("config YAML")
}

#[test]
fn kube_helm_chart_installs_upgrades_uninstalls_and_renders_the_plain_manifests() {
    let cluster = Cluster::start();
    let chart = repo("deploy/helm/chokepoint");
    let chart = chart.to_str().expect("utf8");
    let rel = cluster
        .helm(&["install", "chokepoint", chart], None)
        .unwrap_or_else(|e| panic!("helm install: {e}"));
    assert_eq!(rel["info"]["status"], "deployed", "{rel}");
    // The plain manifests are the chart rendered with its defaults.
    let plain = format!(
        "{PLAIN_HEADER}{}",
        rel["manifest"].as_str().expect("manifest")
    );
    if std::env::var_os("CHOKEPOINT_BLESS").is_some() {
        std::fs::write(repo(PLAIN), &plain).expect("write the plain manifests");
    }
    assert!(
        manifests() == plain,
        "{PLAIN} is not the chart's rendering: run `CHOKEPOINT_BLESS=1 cargo test -p chokepoint-tests --test kubernetes kube_helm`"
    );
    // Installed for real: the CRD (from crds/), the privileged namespace, the DaemonSet.
    assert!(
        cluster
            .get(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                "egresspolicies.chokepoint.dev"
            )
            .is_some()
    );
    let ns = cluster
        .get("v1", "Namespace", None, "chokepoint-system")
        .expect("namespace");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
        "{ns}"
    );
    let ds = cluster
        .get(
            "apps/v1",
            "DaemonSet",
            Some("chokepoint-system"),
            "chokepoint",
        )
        .expect("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["containers"][0]["securityContext"]["privileged"], true);
    assert_eq!(
        pod["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/readyz"
    );
    // Defaults: no policy object (the agent starts with none and waits for `chokepoint`),
    // metrics on the node's loopback only, no Service.
    let cfg = config_of(&cluster);
    assert_eq!(cfg["metricsAddr"], "127.0.0.1:9477", "{cfg}");
    assert_eq!(cfg["kubePolicy"], "chokepoint", "{cfg}");
    assert!(
        cluster
            .get(
                "chokepoint.dev/v1alpha1",
                "EgressPolicy",
                None,
                "chokepoint"
            )
            .is_none()
    );
    assert!(
        cluster
            .list("v1", "Service", Some("chokepoint-system"))
            .is_empty()
    );
    // Upgrade: a policy, TC interfaces, exposed metrics with a ServiceMonitor.
    cluster.apply(service_monitor_crd());
    let spec = json!({
        "gateways": [{"name": "llm-gateway", "endpoints": ["10.0.0.10:8080/tcp"]}],
        "identities": [{"name": "agents", "mode": "enforce",
            "selector": {"pod": {"namespace": "team-a", "matchLabels": {"app": "agent"}}},
            "egress": {"gateways": ["llm-gateway"]}}],
    });
    let values = json!({
        "policy": {"spec": spec},
        "tcInterfaces": ["eth0"],
        "metrics": {"expose": true, "serviceMonitor": {"enabled": true}},
    });
    let rel = cluster
        .helm(&["upgrade", "chokepoint", chart], Some(&values))
        .unwrap_or_else(|e| panic!("helm upgrade: {e}"));
    assert_eq!(rel["version"], 2, "{rel}");
    let ep = cluster
        .get(
            "chokepoint.dev/v1alpha1",
            "EgressPolicy",
            None,
            "chokepoint",
        )
        .expect("the chart's EgressPolicy");
    assert_eq!(ep["spec"]["identities"][0]["name"], "agents", "{ep}");
    let cfg = config_of(&cluster);
    assert_eq!(cfg["metricsAddr"], "0.0.0.0:9477", "{cfg}");
    assert_eq!(cfg["tcIfaces"], json!(["eth0"]), "{cfg}");
    assert!(
        cluster
            .get(
                "v1",
                "Service",
                Some("chokepoint-system"),
                "chokepoint-metrics"
            )
            .is_some()
    );
    assert!(
        cluster
            .get(
                "monitoring.coreos.com/v1",
                "ServiceMonitor",
                Some("chokepoint-system"),
                "chokepoint"
            )
            .is_some()
    );
    // Bad values are refused by the chart; the release stays where it was.
    let bad = json!({"metrics": {"expose": false, "serviceMonitor": {"enabled": true}}});
    let e = cluster
        .helm(&["upgrade", "chokepoint", chart], Some(&bad))
        .expect_err("a ServiceMonitor without exposed metrics was accepted");
    assert!(e.contains("metrics.expose"), "{e}");
    let st = cluster
        .helm(&["status", "chokepoint"], None)
        .expect("status");
    assert_eq!(st["version"], 2, "{st}");
    // Uninstall: the chart's objects go; the CRD (and so every EgressPolicy) stays, as Helm
    // does for crds/.
    cluster
        .helm(&["uninstall", "chokepoint"], None)
        .unwrap_or_else(|e| panic!("helm uninstall: {e}"));
    assert!(
        cluster
            .get(
                "apps/v1",
                "DaemonSet",
                Some("chokepoint-system"),
                "chokepoint"
            )
            .is_none()
    );
    assert!(
        cluster
            .get(
                "rbac.authorization.k8s.io/v1",
                "ClusterRole",
                None,
                "chokepoint"
            )
            .is_none()
    );
    assert!(
        cluster
            .get(
                "chokepoint.dev/v1alpha1",
                "EgressPolicy",
                None,
                "chokepoint"
            )
            .is_none()
    );
    assert!(
        cluster
            .get(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                "egresspolicies.chokepoint.dev"
            )
            .is_some()
    );
}
