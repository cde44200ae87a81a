//! A real Kubernetes control plane for the tests: etcd (Debian's `etcd-server`) and a real
//! kube-apiserver (built once from Debian's `kubernetes` source by
//! `xtask/k8s/build-apiserver.sh` and cached) on loopback, on free ports, with their data in a
//! temporary directory; both are stopped by pid on drop, also when the test panics.
//!
//! Authentication: a static admin token for the tests' own client, and ServiceAccount tokens
//! from the TokenRequest API for the agent (so it runs under the chart's RBAC). TLS: the
//! apiserver's self-signed serving certificate; its bundle (serving cert + its CA) is what the
//! clients trust. No kubelet runs: the tests write what kubelet would (pod status, container
//! IDs) and create the pod cgroups with kubelet's names (`crate::kubelet`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use kube::{
    Client, Config,
    api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::GroupVersionKind,
    discovery::{self, Scope},
};
use serde_json::{Value, json};

use crate::{Proc, free_port, unique};

/// Where `cargo xtask setup --kube` caches the apiserver.
pub const DEFAULT_APISERVER: &str = "/var/cache/chokepoint-k8s/1.20.2/kube-apiserver";

/// The kube-apiserver binary: `$CP_KUBE_APISERVER`, else the cache, when it exists.
pub fn apiserver_bin() -> Option<PathBuf> {
    let p = std::env::var_os("CP_KUBE_APISERVER")
        .map_or_else(|| PathBuf::from(DEFAULT_APISERVER), PathBuf::from);
    p.is_file().then_some(p)
}

/// The apiserver binary, or a panic that says how to get it (never a silent pass).
pub fn require_apiserver() -> PathBuf {
    apiserver_bin().unwrap_or_else(|| {
        panic!(
            "no kube-apiserver at {DEFAULT_APISERVER} (or $CP_KUBE_APISERVER): build it once with \
             `cargo xtask setup --kube` (xtask/k8s/build-apiserver.sh, about 20 minutes); \
             `cargo xtask test` skips these tests, saying so, while it is missing"
        )
    })
}

/// etcd and kube-apiserver, running until drop.
pub struct Cluster {
    /// The directory holding etcd's data, the certificates and the logs.
    pub dir: PathBuf,
    /// The apiserver's secure port on 127.0.0.1.
    pub port: u16,
    etcd_port: u16,
    bin: PathBuf,
    admin_token: String,
    etcd: Option<Proc>,
    apiserver: Option<Proc>,
    rt: tokio::runtime::Runtime,
    /// The admin client.
    pub client: Client,
}

impl Cluster {
    /// Starts etcd and the apiserver and waits until the apiserver is ready (`/readyz`).
    pub fn start() -> Cluster {
        crate::require_privileges();
        let bin = require_apiserver();
        let etcd_bin = Path::new("/usr/bin/etcd");
        assert!(
            etcd_bin.exists(),
            "etcd is not installed (Debian's etcd-server); `cargo xtask setup` installs it"
        );
        let dir = std::env::temp_dir().join(unique("cpk8s"));
        fs::create_dir_all(&dir).expect("cluster dir");
        let (etcd_port, peer_port, port) = (free_port(), free_port(), free_port());
        let log = |name: &str| fs::File::create(dir.join(name)).expect("log file");
        let etcd = Command::new(etcd_bin)
            .arg("--name=t")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!("--initial-cluster=t=http://127.0.0.1:{peer_port}"))
            .stdout(Stdio::null())
            .stderr(log("etcd.log"))
            .spawn()
            .expect("spawn etcd");
        let key = dir.join("sa.key");
        crate::sh(
            "openssl",
            &["genrsa", "-out", key.to_str().expect("utf8"), "2048"],
        );
        let admin_token = unique("admin");
        fs::write(
            dir.join("tokens.csv"),
            format!("{admin_token},admin,admin,system:masters\n"),
        )
        .expect("token file");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut c = Cluster {
            dir,
            port,
            etcd_port,
            bin,
            admin_token,
            etcd: Some(Proc(etcd)),
            apiserver: None,
            rt,
            // Replaced once the apiserver has written its certificate.
            client: placeholder_client(),
        };
        c.spawn_apiserver();
        let kc = c.kubeconfig("admin", &c.admin_token.clone());
        c.client = c.client_from(&kc);
        c.wait_ready();
        c
    }

    fn spawn_apiserver(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("apiserver.log"))
            .expect("apiserver log");
        let key = self.dir.join("sa.key");
        let child = Command::new(&self.bin)
            .arg(format!(
                "--etcd-servers=http://127.0.0.1:{}",
                self.etcd_port
            ))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={}", self.port))
            .arg("--insecure-port=0")
            .arg(format!("--cert-dir={}", self.dir.join("certs").display()))
            .arg(format!(
                "--token-auth-file={}",
                self.dir.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=Node,RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", key.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                key.display()
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/24")
            .arg("--profiling=false")
            // As every real cluster: the agent is a privileged pod.
            .arg("--allow-privileged=true")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kube-apiserver");
        self.apiserver = Some(Proc(child));
        // Its self-signed serving certificate appears in the cert dir at start.
        let t0 = Instant::now();
        while !self.ca().exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "kube-apiserver wrote no certificate:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The CA bundle clients trust (the apiserver's self-signed serving cert and its CA).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("certs/apiserver.crt")
    }

    /// The apiserver URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The end of the apiserver's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let s = fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn wait_ready(&self) {
        let t0 = Instant::now();
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("request");
            if let Ok(body) = self.rt.block_on(self.client.request_text(req))
                && body.trim() == "ok"
            {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "kube-apiserver not ready after 60 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the apiserver (SIGKILL, by pid) and waits for it; etcd keeps the data.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.take();
    }

    /// Starts the apiserver again on the same port, certificate and etcd, and waits for it.
    pub fn start_apiserver(&mut self) {
        assert!(self.apiserver.is_none(), "the apiserver is running");
        self.spawn_apiserver();
        self.wait_ready();
    }

    /// Runs `etcdctl` against this cluster's etcd (Debian's `etcd-client`); returns stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let ep = format!("--endpoints=http://127.0.0.1:{}", self.etcd_port);
        let mut all = vec![ep.as_str()];
        all.extend_from_slice(args);
        let out = Command::new("etcdctl")
            .args(&all)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl (Debian's etcd-client; `cargo xtask setup` installs it)");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Compacts etcd's history up to its current revision: a watch that resumes from an older
    /// resource version gets `410 Gone` and must list again.
    pub fn compact(&self) {
        let st: Value = serde_json::from_str(&self.etcdctl(&["endpoint", "status", "-w", "json"]))
            .expect("endpoint status");
        let rev = st[0]["Status"]["header"]["revision"]
            .as_u64()
            .expect("revision");
        self.etcdctl(&["compact", &rev.to_string()]);
    }

    /// A kubeconfig with the admin token.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.kubeconfig("admin", &self.admin_token.clone())
    }

    /// Writes a kubeconfig for `token` and returns its path.
    pub fn kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url(),
                "certificate-authority": self.ca(),
            }}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": name}}],
            "current-context": "test",
        });
        fs::write(&path, doc.to_string()).expect("kubeconfig");
        path
    }

    /// A client from a kubeconfig file.
    pub fn client_from(&self, kubeconfig: &Path) -> Client {
        let _g = self.rt.enter();
        let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
        let cfg = self
            .rt
            .block_on(Config::from_custom_kubeconfig(
                kc,
                &KubeConfigOptions::default(),
            ))
            .expect("client config");
        Client::try_from(cfg).expect("client")
    }

    /// Runs a future on the cluster's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The dynamic API for `apiVersion`/`kind`, namespaced when the kind is and `ns` is given.
    pub fn api(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let t0 = Instant::now();
        let (ar, caps) = loop {
            match self.block_on(discovery::pinned_kind(&self.client, &gvk)) {
                Ok(r) => break r,
                // A just-created CRD takes a moment to be served.
                Err(e) if t0.elapsed() < Duration::from_secs(20) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{api_version} {kind} is not served: {e}"),
            }
        };
        match (caps.scope, ns) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        }
    }

    fn apply_params(dry_run: bool) -> PatchParams {
        let mut pp = PatchParams::apply("chokepoint-tests").force();
        pp.dry_run = dry_run;
        pp
    }

    /// Server-side applies one object (JSON); returns what the server stored. `Err` carries the
    /// server's message.
    pub fn try_apply(&self, obj: &Value, dry_run: bool) -> Result<Value, String> {
        let av = obj["apiVersion"].as_str().ok_or("no apiVersion")?;
        let kind = obj["kind"].as_str().ok_or("no kind")?;
        let name = obj["metadata"]["name"].as_str().ok_or("no metadata.name")?;
        let api = self.api(av, kind, obj["metadata"]["namespace"].as_str());
        self.block_on(api.patch(name, &Self::apply_params(dry_run), &Patch::Apply(obj)))
            .map(|o| serde_json::to_value(o).expect("json"))
            .map_err(|e| format!("{kind}/{name}: {e}"))
    }

    /// Server-side applies one object; panics on failure.
    pub fn apply(&self, obj: Value) -> Value {
        self.try_apply(&obj, false)
            .unwrap_or_else(|e| panic!("apply failed: {e}"))
    }

    /// Every document of a multi-document YAML stream, as JSON (empty documents dropped).
    pub fn parse_yaml(yaml: &str) -> Vec<Value> {
        yaml.split("\n---")
            .filter_map(|d| {
                let v: Value = serde_saphyr::from_str(d).expect("YAML document");
                (!v.is_null()).then_some(v)
            })
            .collect()
    }

    /// Server-side applies (or, with `dry_run`, validates) every document of a YAML stream;
    /// returns the server's answer for each.
    pub fn apply_yaml(&self, yaml: &str, dry_run: bool) -> Vec<Result<Value, String>> {
        Self::parse_yaml(yaml)
            .iter()
            .map(|d| self.try_apply(d, dry_run))
            .collect()
    }

    /// One object, when it exists.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let api = self.api(api_version, kind, ns);
        self.block_on(api.get_opt(name))
            .expect("get")
            .map(|o| serde_json::to_value(o).expect("json"))
    }

    /// Every object of a kind (in `ns`, or everywhere).
    pub fn list(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Vec<Value> {
        let api = self.api(api_version, kind, ns);
        self.block_on(api.list(&ListParams::default()))
            .expect("list")
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).expect("json"))
            .collect()
    }

    /// Merge-patches an object's `status` subresource (what kubelet or a controller writes).
    pub fn patch_status(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        status: Value,
    ) {
        let api = self.api(api_version, kind, ns);
        self.block_on(api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        ))
        .unwrap_or_else(|e| panic!("status of {kind}/{name}: {e}"));
    }

    /// Deletes an object (no grace period).
    pub fn delete(&self, api_version: &str, kind: &str, ns: Option<&str>, name: &str) {
        let api = self.api(api_version, kind, ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        self.block_on(api.delete(name, &dp))
            .unwrap_or_else(|e| panic!("delete {kind}/{name}: {e}"));
    }

    /// A token for ServiceAccount `ns/name` from the TokenRequest API.
    pub fn token(&self, ns: &str, name: &str) -> String {
        let api = self.api("v1", "ServiceAccount", Some(ns));
        let req = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        });
        let v: Value = self
            .block_on(api.create_subresource("token", name, &PostParams::default(), &req))
            .unwrap_or_else(|e| panic!("token for {ns}/{name}: {e}"));
        v["status"]["token"].as_str().expect("token").to_string()
    }
}

/// A client that is never used (the struct needs one before the apiserver's CA exists).
fn placeholder_client() -> Client {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _g = rt.enter();
    let cfg = Config::new("https://127.0.0.1:1".parse().expect("url"));
    Client::try_from(cfg).expect("client")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Proc's drop kills by pid and reaps: the apiserver first, then etcd.
        self.apiserver.take();
        self.etcd.take();
        if std::thread::panicking() {
            eprintln!("kube-apiserver log (tail):\n{}", self.log_tail());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
