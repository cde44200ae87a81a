//! Packaging against a real kube-apiserver and the real kernel: the Helm chart installed,
//! upgraded and uninstalled with Helm's own code (helm-sdkpy), the plain manifests equal to its
//! rendering and accepted by a server-side dry run, the ServiceAccount's least privilege, and the
//! image built by `cargo xtask image` running the agent as a privileged podman container with
//! the DaemonSet's host mounts and in-cluster credentials, enforcing a pod started outside it.

use std::{
    io::{Read, Write},
    process::Command,
};

use chokepoint_tests::{kube::Cluster, kube_node::*, kubelet::helm_python, unique};
use serde_json::{Value, json};

/// The Kubernetes releases the manifests are checked against: the oldest whose schemas
/// kubernetes-validate carries and the newest.
const SCHEMA_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];

/// `kubernetes-validate --strict` (Kubernetes' own OpenAPI schemas, from PyPI) of `files` for
/// `version`: its success and what it printed.
fn schema_check(version: &str, files: &[std::path::PathBuf]) -> (bool, String) {
    let bin = helm_python().with_file_name("kubernetes-validate");
    let out = Command::new(&bin)
        .args(["--strict", "--quiet", "-k", version])
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "run {}: {e} (`cargo xtask setup` installs it)",
                bin.display()
            )
        });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Needs no cluster (so it runs in CI, where the apiserver is not built): `helm lint` of the
/// chart, and the plain manifests and the CRD valid, strictly (no unknown fields), against the
/// schemas of the oldest and the newest Kubernetes release. A manifest with an unknown field is
/// refused by the same check, so it is a check that can fail.
#[test]
fn chart_lints_and_the_manifests_validate_against_the_kubernetes_schemas() {
    let lint = Command::new(helm_python())
        .arg(repo("xtask/k8s/helm.py"))
        .args(["-", "lint"])
        .arg(repo("deploy/helm/chokepoint"))
        .output()
        .expect("helm.py lint");
    assert!(
        lint.status.success(),
        "helm lint of deploy/helm/chokepoint failed: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let files = [
        repo(PLAIN),
        repo("deploy/kubernetes/egresspolicies.chokepoint.dev.yaml"),
    ];
    for v in SCHEMA_VERSIONS {
        let (ok, text) = schema_check(v, &files);
        assert!(
            ok,
            "the manifests are not valid for Kubernetes {v}:\n{text}"
        );
    }
    // The same check refuses a DaemonSet with a field Kubernetes does not know.
    let bad = std::env::temp_dir().join(format!("{}.yaml", unique("cp-badds")));
    let broken = manifests().replacen(
        "hostNetwork: true",
        "hostNetwork: true\n      hostNetwrk: true",
        1,
    );
    assert_ne!(
        broken,
        manifests(),
        "the DaemonSet has no hostNetwork line to break"
    );
    std::fs::write(&bad, broken).expect("write");
    let (ok, text) = schema_check(SCHEMA_VERSIONS[1], std::slice::from_ref(&bad));
    let _ = std::fs::remove_file(&bad);
    assert!(
        !ok,
        "an unknown DaemonSet field passed the schema check:\n{text}"
    );
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

const PLAIN_HEADER: &str = "# Rendered by Helm from deploy/helm/chokepoint with its default values; do not edit.\n# Regenerate: CHOKEPOINT_BLESS=1 cargo test -p chokepoint-tests --test kubernetes_chart kube_helm\n# Install: kubectl apply -f deploy/kubernetes/ (docs/kubernetes.md)\n";

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
        "{PLAIN} is not the chart's rendering: run `CHOKEPOINT_BLESS=1 cargo test -p chokepoint-tests --test kubernetes_chart kube_helm`"
    );
    // Installed for real: the CRD (from crds/), the privileged namespace, the DaemonSet.
    assert!(
        exists(
            &cluster,
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
            "egresspolicies.chokepoint.dev"
        ),
        "CustomResourceDefinition egresspolicies.chokepoint.dev missing"
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
        !exists(
            &cluster,
            "chokepoint.dev/v1alpha1",
            "EgressPolicy",
            None,
            "chokepoint"
        ),
        "EgressPolicy chokepoint still there"
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
        "tcMode": "clsact",
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
    assert_eq!(cfg["tcMode"], "clsact", "{cfg}");
    assert!(
        exists(
            &cluster,
            "v1",
            "Service",
            Some("chokepoint-system"),
            "chokepoint-metrics"
        ),
        "Service chokepoint-metrics missing"
    );
    assert!(
        exists(
            &cluster,
            "monitoring.coreos.com/v1",
            "ServiceMonitor",
            Some("chokepoint-system"),
            "chokepoint"
        ),
        "ServiceMonitor chokepoint missing"
    );
    // Bad values are refused by the chart; the release stays where it was.
    let bad = json!({"metrics": {"expose": false, "serviceMonitor": {"enabled": true}}});
    let e = cluster
        .helm(&["upgrade", "chokepoint", chart], Some(&bad))
        .expect_err("a ServiceMonitor without exposed metrics was accepted");
    assert!(e.contains("metrics.expose"), "{e}");
    let e = cluster
        .helm(
            &["upgrade", "chokepoint", chart],
            Some(&json!({"tcMode": "qdisc"})),
        )
        .expect_err("tcMode qdisc was accepted");
    assert!(e.contains("tcMode"), "{e}");
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
        !exists(
            &cluster,
            "apps/v1",
            "DaemonSet",
            Some("chokepoint-system"),
            "chokepoint"
        ),
        "DaemonSet chokepoint still there"
    );
    assert!(
        !exists(
            &cluster,
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            None,
            "chokepoint"
        ),
        "ClusterRole chokepoint still there"
    );
    assert!(
        !exists(
            &cluster,
            "chokepoint.dev/v1alpha1",
            "EgressPolicy",
            None,
            "chokepoint"
        ),
        "EgressPolicy chokepoint still there"
    );
    assert!(
        exists(
            &cluster,
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
            "egresspolicies.chokepoint.dev"
        ),
        "CustomResourceDefinition egresspolicies.chokepoint.dev missing"
    );
}

/// Whether the object `kind` `name` (in `ns`, for namespaced kinds) exists in `cluster`.
fn exists(cluster: &Cluster, api: &str, kind: &str, ns: Option<&str>, name: &str) -> bool {
    cluster.get(api, kind, ns, name).is_some()
}

/// Podman as it works on these hosts (runc: crun refuses hybrid cgroups; file events).
fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args([
        "--runtime",
        "runc",
        "--cgroup-manager=cgroupfs",
        "--events-backend=file",
    ]);
    c
}

/// A container this test started, removed (by name) on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "5", &self.0]).output();
    }
}

#[test]
fn kube_image_runs_the_agent_as_a_privileged_container_enforcing_a_pod_outside_it() {
    let image = std::env::var("CP_IMAGE").unwrap_or_else(|_| "localhost/chokepoint:0.1.0".into());
    assert!(
        podman()
            .args(["image", "exists", &image])
            .status()
            .is_ok_and(|s| s.success()),
        "no image {image}: build it with `cargo xtask image` (`cargo xtask test` does)"
    );
    let gone = chokepoint_tests::sweep::stale_containers(podman, "cpimg");
    if !gone.is_empty() {
        eprintln!(
            "removed containers of interrupted runs: {}",
            gone.join(", ")
        );
    }
    let mut n = Node::new(&["--config", "/etc/chokepoint/config.yaml"]);
    let dir = n.daemon.dir.clone();
    // What the DaemonSet gives the pod: the chart's config file, the ServiceAccount's token and
    // CA at the in-cluster path, and the host directories.
    let cfg = Cluster::parse_yaml(&manifests())
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the chart's ConfigMap");
    let sub = |s: &str| {
        let p = dir.join(s);
        std::fs::create_dir_all(&p).expect("dir");
        p
    };
    std::fs::write(
        sub("etc").join("config.yaml"),
        cfg["data"]["config.yaml"].as_str().expect("config.yaml"),
    )
    .expect("config");
    let sa = sub("sa");
    std::fs::write(
        sa.join("token"),
        n.cluster.token("chokepoint-system", "chokepoint"),
    )
    .expect("token");
    std::fs::copy(n.cluster.ca(), sa.join("ca.crt")).expect("ca");
    std::fs::write(sa.join("namespace"), "chokepoint-system").expect("namespace");
    for d in ["state", "run", "logs"] {
        sub(d);
    }
    let name = unique("cpimg");
    let d = dir.display();
    let wrapper = dir.join("run-in-container.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec podman --runtime runc --cgroup-manager=cgroupfs --events-backend=file run --rm --replace --name {name} \
             --privileged --network host --pid host \
             --ulimit nofile=$(ulimit -Hn):$(ulimit -Hn) --ulimit nproc=4096:4096 \
             -v /sys/fs/bpf:/sys/fs/bpf -v /sys/fs/cgroup:/sys/fs/cgroup \
             -v {d}/state:/var/lib/chokepoint -v {d}/run:/run/chokepoint -v {d}/logs:/var/log/chokepoint \
             -v {d}/etc:/etc/chokepoint:ro -v {d}/sa:/var/run/secrets/kubernetes.io/serviceaccount:ro -v {d}:{d} \
             -e CHOKEPOINT_LOG -e NODE_NAME={node} -e KUBERNETES_SERVICE_HOST=127.0.0.1 -e KUBERNETES_SERVICE_PORT={port} \
             {image} \"$@\"\n",
            node = n.name,
            port = n.cluster.port,
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    n.daemon.bin = wrapper;
    let _container = Container(name.clone());
    // Starts with no policy: the chart's config names the EgressPolicy `chokepoint`.
    n.start(None);
    // The agent runs in the image (a scratch root: its binary and libraries, no shell).
    let pid = String::from_utf8(
        podman()
            .args(["inspect", "-f", "{{.State.Pid}}", &name])
            .output()
            .expect("podman inspect")
            .stdout,
    )
    .expect("utf8");
    let root = std::path::PathBuf::from(format!("/proc/{}/root", pid.trim()));
    assert!(
        root.join("usr/bin/chokepoint").exists(),
        "not the image's root"
    );
    assert!(!root.join("bin/sh").exists(), "the image has a shell");
    let st = n.kube_status();
    assert_eq!(st["synced"], true, "in-cluster credentials: {st}");
    assert_eq!(st["policy"], "chokepoint", "{st}");
    // A pod started outside the container, the policy from the cluster.
    team_a(&n);
    let (_, a) = n.run_pod(&agent_pod("agent-0"));
    n.cluster
        .apply(egress_policy("chokepoint", &n.policy(&[AGENTS], "", "")));
    n.wait_bound("agents", "team-a", "agent-0");
    n.assert_enforced(&a, "agents", "team-a", "agent-0", "default");
    // The chart's probes: /healthz and /readyz on the node's loopback.
    for path in ["/healthz", "/readyz"] {
        let mut s = std::net::TcpStream::connect(n.daemon.metrics).expect("metrics");
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read");
        assert!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp}");
    }
}
