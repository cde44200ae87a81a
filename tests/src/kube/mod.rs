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

mod objects;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
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
