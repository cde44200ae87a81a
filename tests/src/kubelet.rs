//! What kubelet, the scheduler and Helm would do, for the tests' control plane ([`Cluster`]):
//! namespaces, ServiceAccounts and pods through the API, pod status as kubelet writes it, the
//! scheduler's binding, pod cgroups with kubelet's names for both drivers ([`KubeletCgroups`]),
//! and Helm (through helm-sdkpy) against the cluster.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use kube::api::PostParams;
use serde_json::{Value, json};

use crate::{Cgroup, kube::Cluster, unique};

impl Cluster {
    /// A namespace with labels.
    pub fn namespace(&self, name: &str, labels: Value) {
        self.apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}}));
    }

    /// A ServiceAccount (no controller-manager runs, so not even `default` exists by itself).
    pub fn service_account(&self, ns: &str, name: &str) {
        self.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": ns}}));
    }

    /// Creates a pod (on `node`, or unscheduled when `None`) and returns its UID.
    pub fn pod(&self, ns: &str, name: &str, labels: Value, sa: &str, node: Option<&str>) -> String {
        let mut spec = json!({
            "serviceAccountName": sa,
            "automountServiceAccountToken": false,
            "containers": [{"name": "main", "image": "workload:test"}],
        });
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        let v = self.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": spec}));
        v["metadata"]["uid"].as_str().expect("uid").to_string()
    }

    /// Binds an unscheduled pod to `node`, as the scheduler does (`pods/binding`).
    pub fn bind(&self, ns: &str, name: &str, node: &str) {
        let api = self.api("v1", "Pod", Some(ns));
        let b = json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name}, "target": {"kind": "Node", "name": node}});
        let _: Value = self
            .block_on(api.create_subresource("binding", name, &PostParams::default(), &b))
            .unwrap_or_else(|e| panic!("binding {ns}/{name}: {e}"));
    }

    /// Writes the status kubelet would once the pod runs: phase, QoS class and the main
    /// container's ID (`containerd://<id>` or `cri-o://<id>`).
    pub fn pod_running(&self, ns: &str, name: &str, qos: &str, container_id: &str) {
        let status = json!({
            "phase": "Running",
            "qosClass": qos,
            "containerStatuses": [{
                "name": "main", "ready": true, "restartCount": 0,
                "image": "workload:test", "imageID": "",
                "containerID": container_id,
                "state": {"running": {}},
            }],
        });
        self.patch_status("v1", "Pod", Some(ns), name, status);
    }
}

/// The Python of the helm-sdkpy environment `cargo xtask setup` makes (Helm's Go code as a
/// library, from PyPI): `$CP_HELM_PYTHON`, else the cache.
pub fn helm_python() -> PathBuf {
    let p = std::env::var_os("CP_HELM_PYTHON")
        .map_or_else(|| PathBuf::from(HELM_PYTHON), PathBuf::from);
    assert!(
        p.is_file(),
        "no helm-sdkpy environment at {} (or $CP_HELM_PYTHON): `cargo xtask setup` makes it",
        p.display()
    );
    p
}

/// Where `cargo xtask setup` puts helm-sdkpy.
pub const HELM_PYTHON: &str = "/var/cache/chokepoint-k8s/helm-sdkpy-0.1.32/bin/python";

impl Cluster {
    /// Runs Helm (`xtask/k8s/helm.py`: install, upgrade, uninstall, status) against this
    /// cluster as admin; `Ok` holds the release (its `manifest` is what Helm rendered), `Err`
    /// Helm's message.
    pub fn helm(&self, args: &[&str], values: Option<&Value>) -> Result<Value, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../xtask/k8s/helm.py");
        let kc = self.admin_kubeconfig();
        let mut cmd = Command::new(helm_python());
        cmd.arg(script).arg(&kc).args(args);
        if let Some(v) = values {
            let f = self.dir.join(unique("values") + ".json");
            fs::write(&f, v.to_string()).expect("values");
            cmd.arg(f);
        }
        let out = cmd.output().expect("run helm.py");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("helm.py output: {e}"))
    }
}

/// The kubelet cgroup driver whose names a pod cgroup gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// `kubepods/burstable/pod<uid>`.
    Cgroupfs,
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`.
    Systemd,
}

/// The container runtime whose names a container cgroup gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// `cri-containerd-<id>.scope` (systemd) or `<id>` (cgroupfs).
    Containerd,
    /// `crio-<id>.scope` (systemd) or `crio-<id>` (cgroupfs).
    Crio,
}

/// Pod cgroups with kubelet's names under a kubelet `--cgroup-root` of this test's own
/// (`/<prefix>`), so concurrent tests never see each other's pods. Created like kubelet: the
/// QoS levels first, then `pod<uid>` directories and the runtime's container directories. All
/// removed (processes killed) on drop.
pub struct KubeletCgroups {
    /// The kubelet `--cgroup-root` (no `-`, so both drivers name it the same).
    pub prefix: String,
    _roots: Vec<Cgroup>,
}

impl KubeletCgroups {
    /// The `kubepods` hierarchy of both drivers with its QoS levels, as kubelet creates it at
    /// start.
    pub fn new() -> KubeletCgroups {
        let prefix = unique("cpk").replace('-', "x");
        let fs_root = Cgroup::new(&prefix);
        for q in ["kubepods/burstable", "kubepods/besteffort"] {
            fs_root.child(q);
        }
        let sd_root = Cgroup::new(&format!("{prefix}.slice"));
        for q in ["burstable", "besteffort"] {
            sd_root.child(&format!(
                "{prefix}-kubepods.slice/{prefix}-kubepods-{q}.slice"
            ));
        }
        KubeletCgroups {
            prefix,
            _roots: vec![fs_root, sd_root],
        }
    }

    /// The pod cgroup's path relative to the cgroup root (kubelet's names; `qos` is the
    /// `status.qosClass`).
    pub fn pod_path(&self, driver: Driver, qos: &str, uid: &str) -> String {
        let p = &self.prefix;
        let level = match qos {
            "Guaranteed" => None,
            "Burstable" => Some("burstable"),
            "BestEffort" => Some("besteffort"),
            other => panic!("QoS class {other}"),
        };
        match (driver, level) {
            (Driver::Cgroupfs, None) => format!("{p}/kubepods/pod{uid}"),
            (Driver::Cgroupfs, Some(l)) => format!("{p}/kubepods/{l}/pod{uid}"),
            (Driver::Systemd, None) => format!(
                "{p}.slice/{p}-kubepods.slice/{p}-kubepods-pod{}.slice",
                uid.replace('-', "_")
            ),
            (Driver::Systemd, Some(l)) => format!(
                "{p}.slice/{p}-kubepods.slice/{p}-kubepods-{l}.slice/{p}-kubepods-{l}-pod{}.slice",
                uid.replace('-', "_")
            ),
        }
    }

    /// Creates the pod cgroup, its sandbox (pause) container and container `id`'s cgroup;
    /// returns the container cgroup's absolute path (where the workload's processes go).
    pub fn container(
        &self,
        driver: Driver,
        runtime: Runtime,
        qos: &str,
        uid: &str,
        id: &str,
    ) -> PathBuf {
        let pod = crate::cgroup_root().join(self.pod_path(driver, qos, uid));
        let name = |id: &str| match (driver, runtime) {
            (Driver::Cgroupfs, Runtime::Containerd) => id.to_string(),
            (Driver::Cgroupfs, Runtime::Crio) => format!("crio-{id}"),
            (Driver::Systemd, Runtime::Containerd) => format!("cri-containerd-{id}.scope"),
            (Driver::Systemd, Runtime::Crio) => format!("crio-{id}.scope"),
        };
        fs::create_dir_all(pod.join(name(&container_id()))).expect("sandbox cgroup");
        let c = pod.join(name(id));
        fs::create_dir_all(&c).expect("container cgroup");
        c
    }

    /// The `--kube-cgroup-prefix` flag value for the daemon.
    pub fn flag(&self) -> String {
        format!("/{}", self.prefix)
    }
}

impl Default for KubeletCgroups {
    fn default() -> Self {
        Self::new()
    }
}

/// A fresh 64-hex-digit container ID.
pub fn container_id() -> String {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("time")
        .as_nanos();
    let u = unique("c");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = String::new();
    for round in 0..4u64 {
        for b in format!("{u}{t}{round}").bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        out += &format!("{h:016x}");
    }
    out
}
