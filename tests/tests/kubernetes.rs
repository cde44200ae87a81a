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
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/chokepoint.yaml"),
    )
    .expect("deploy/kubernetes/chokepoint.yaml")
}

fn crd() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/helm/chokepoint/crds/egresspolicies.chokepoint.dev.yaml"),
    )
    .expect("CRD")
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

    /// The policy document: the sandbox's gateway and resolver for each identity
    /// `(name, mode, selector.pod as YAML flow mapping, extra egress allow rules)`.
    fn policy(&self, identities: &[(&str, &str, &str)], defaults: &str) -> String {
        let mut s = format!(
            "apiVersion: chokepoint.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: node\nspec:\n  gateways:\n    - name: llm-gateway\n      endpoints: [\"{g}:{GATEWAY_PORT}/tcp\"]\n{defaults}  identities:\n",
            g = self.sb.gateway4()
        );
        for (name, mode, pod) in identities {
            s += &format!(
                "    - name: {name}\n      tenant: acme\n      mode: {mode}\n      selector:\n        pod: {pod}\n      egress:\n        gateways: [llm-gateway]\n"
            );
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
            let list = v.as_array().cloned().or_else(|| v["identities"].as_array().cloned());
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
    let policy = n.policy(&[AGENTS, TRAINERS], "");
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
