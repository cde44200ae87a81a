//! A Kubernetes node for the tests: the control plane with the chart's CRD and RBAC, the
//! sandbox, kubelet's cgroup hierarchy, and a daemon under the chart's ServiceAccount.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    Daemon, GATEWAY_PORT, OTHER_TCP, Sandbox, eperm,
    kube::Cluster,
    kubelet::{Driver, KubeletCgroups, Runtime, container_id},
    ok, payload, probe, unique,
};

/// An identity for pods labelled app=agent in team-a.
pub const AGENTS: (&str, &str, &str) = (
    "agents",
    "enforce",
    "{namespace: team-a, matchLabels: {app: agent}}",
);

/// The rendered manifests (from the Helm chart).
pub fn manifests() -> String {
    std::fs::read_to_string(repo(PLAIN)).expect("deploy/kubernetes/chokepoint.yaml")
}

/// The plain manifests (the chart rendered with its defaults).
pub const PLAIN: &str = "deploy/kubernetes/chokepoint.yaml";

/// The CRD (the plain manifests' copy).
pub fn crd() -> String {
    std::fs::read_to_string(repo("deploy/kubernetes/egresspolicies.chokepoint.dev.yaml"))
        .expect("CRD")
}

/// A path in the repository.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A node: the control plane, the chart's RBAC and CRD installed, the sandbox, kubelet's
/// cgroup hierarchy and a daemon (not started yet) whose kubeconfig holds the chart's
/// ServiceAccount token.
pub struct Node {
    /// The node's daemon (not started until [`Node::start`]).
    pub daemon: Daemon,
    /// The node's kubelet-style cgroup hierarchy.
    pub cg: KubeletCgroups,
    /// The sandbox pod traffic crosses.
    pub sb: Sandbox,
    /// The node's name.
    pub name: String,
    /// The control plane.
    pub cluster: Cluster,
}

impl Node {
    /// A node with `extra` daemon arguments.
    pub fn new(extra: &[&str]) -> Node {
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
        args.extend(extra.iter().map(std::string::ToString::to_string));
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

    /// Starts the daemon in `--kube` mode, with `policy` as its local policy when given.
    pub fn start(&mut self, policy: Option<&str>) {
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
    pub fn policy(&self, identities: &[(&str, &str, &str)], defaults: &str, allow: &str) -> String {
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
    pub fn run_pod(&self, p: &PodSpec) -> (String, PathBuf) {
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
    pub fn wait_bound(&self, ident: &str, ns: &str, name: &str) -> Value {
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

    /// A TCP probe from cgroup `cg` in the pod netns to `dst:port` carrying `payload`.
    pub fn tcp(&self, cg: &Path, dst: std::net::IpAddr, port: u16, payload: &str) -> Value {
        probe(
            Some(cg),
            Some(&self.sb.pod),
            &["tcp", &format!("{dst}:{port}")],
            payload,
        )
    }

    /// The gateway answers the pod's process; the bypass is refused with EPERM and recorded
    /// with the pod's namespace, name and ServiceAccount.
    pub fn assert_enforced(&self, cg: &Path, ident: &str, ns: &str, pod: &str, sa: &str) {
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

    /// The `kubernetes` part of `status --json`.
    pub fn kube_status(&self) -> Value {
        self.daemon.cli_json(&["status", "--json"])["kubernetes"].clone()
    }
}

/// A pod to run: where, how it is labelled, and how kubelet names its cgroups.
pub struct PodSpec<'a> {
    /// The pod's namespace.
    pub ns: &'a str,
    /// The pod's name.
    pub name: &'a str,
    /// The pod's labels.
    pub labels: Value,
    /// The pod's ServiceAccount.
    pub sa: &'a str,
    /// Its QoS class (`guaranteed`, `burstable`, `besteffort`).
    pub qos: &'a str,
    /// The cgroup driver kubelet names it with.
    pub driver: Driver,
    /// The runtime its containers run in.
    pub runtime: Runtime,
}

/// team-a with its default ServiceAccount.
pub fn team_a(n: &Node) {
    n.cluster.namespace("team-a", json!({}));
    n.cluster.service_account("team-a", "default");
}

/// A Burstable pod labelled app=agent in team-a (cgroupfs driver, containerd).
pub fn agent_pod(name: &str) -> PodSpec<'_> {
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

/// The spec of a policy document, as the `EgressPolicy` object's spec.
pub fn egress_policy(name: &str, doc: &str) -> Value {
    let v: Value = serde_saphyr::from_str(doc).expect("policy YAML");
    json!({"apiVersion": "chokepoint.dev/v1alpha1", "kind": "EgressPolicy",
        "metadata": {"name": name}, "spec": v["spec"]})
}
