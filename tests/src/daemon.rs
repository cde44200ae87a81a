//! A running `chokepoint daemon` under test, its CLI and endpoints, and the fixture that pairs
//! it with a sandbox and an enforced cgroup.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    COUNTER, Cgroup, HttpResponse, Sandbox, chokepoint_bin, free_port, ok, probe,
    process::exit_within, read_response, require_privileges, run_bounded, time_scale, unique,
};

/// A running `chokepoint daemon` with its own bpffs dir, state dir, socket and metrics port.
/// Drop stops it and runs `chokepoint uninstall` on its pins.
pub struct Daemon {
    /// The daemon's bpffs directory (its pins).
    pub bpffs: PathBuf,
    /// The daemon's state directory.
    pub state: PathBuf,
    /// The daemon's API socket.
    pub socket: PathBuf,
    /// The metrics endpoint (loopback, a free port).
    pub metrics: SocketAddr,
    /// The audit log file.
    pub audit_log: PathBuf,
    /// The attestation socket.
    pub attest: PathBuf,
    /// The directory holding everything of this daemon (removed on drop).
    pub dir: PathBuf,
    /// Extra daemon arguments, passed on every start.
    pub extra: Vec<String>,
    env: Vec<(String, String)>,
    /// The daemon binary (another build for upgrade tests).
    pub bin: PathBuf,
    child: Option<Child>,
    /// The daemon's stderr (its logs), kept across restarts.
    pub log: PathBuf,
}

impl Daemon {
    /// Writes `policy` and starts the daemon with it.
    pub fn start(policy: &str, extra: &[&str]) -> Self {
        let mut d = Self::prepare(extra);
        let pfile = d.dir.join("policy.yaml");
        fs::write(&pfile, policy).expect("policy");
        d.spawn(Some(&pfile));
        d
    }

    /// A daemon's directories and flags, not started yet (set its environment, then
    /// [`Daemon::spawn`]).
    pub fn prepare(extra: &[&str]) -> Self {
        require_privileges();
        let name = unique("cpt");
        let dir = std::env::temp_dir().join(&name);
        fs::create_dir_all(&dir).expect("tmp dir");
        Self {
            bpffs: PathBuf::from(format!("/sys/fs/bpf/{name}")),
            state: dir.join("state"),
            socket: dir.join("cp.sock"),
            metrics: format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
            audit_log: dir.join("audit.jsonl"),
            attest: dir.join("attest.sock"),
            log: dir.join("daemon.log"),
            dir,
            extra: extra.iter().map(std::string::ToString::to_string).collect(),
            env: Vec::new(),
            bin: chokepoint_bin(),
            child: None,
        }
    }

    /// Environment for the daemon process (test knobs).
    pub fn set_env(&mut self, k: &str, v: &str) {
        self.env.push((k.into(), v.into()));
    }

    /// Starts (or restarts) the process.
    pub fn spawn(&mut self, policy: Option<&Path>) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("daemon")
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--metrics-addr")
            .arg(self.metrics.to_string())
            .arg("--audit-log")
            .arg(&self.audit_log)
            .arg("--attest-socket")
            .arg(&self.attest)
            .args(&self.extra)
            .env("CHOKEPOINT_LOG", "info,chokepoint::alerts=debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(p) = policy {
            cmd.arg("--policy").arg(p);
        }
        self.child = Some(cmd.spawn().expect("spawn daemon"));
        let t0 = Instant::now();
        loop {
            if self.try_cli(&["status", "--json"]).0 {
                break;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("daemon exited ({st}) during start:\n{}", self.log_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30) * time_scale(),
                "daemon not ready:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the daemon process with `signal` and reaps it (pins stay).
    pub fn kill(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid we started.
            unsafe { libc::kill(c.id() as i32, signal) };
            // Bounded: a daemon that outlives a SIGTERM by this much is a bug (a DaemonSet pod
            // would be SIGKILLed mid-stop); it is killed and the test fails, never hangs.
            let limit = Duration::from_secs(15 * u64::from(time_scale()));
            if exit_within(&mut c, limit).is_none() {
                let _ = c.kill();
                let _ = c.wait();
                assert!(
                    std::thread::panicking(),
                    "the daemon did not exit within {} s of signal {signal}\n{}",
                    limit.as_secs(),
                    self.log_text()
                );
            }
        }
    }

    /// Runs the CLI against this daemon: (success, stdout, stderr).
    pub fn try_cli(&self, args: &[&str]) -> (bool, String, String) {
        let child = Command::new(chokepoint_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cli");
        // Bounded: the CLI gives up after its own 60 s; a CLI that outlives that is a hang.
        let limit = Duration::from_secs(90 * u64::from(time_scale()));
        let (out, killed) = run_bounded(child, limit);
        assert!(
            !killed,
            "chokepoint {} did not finish within {} s\ndaemon log:\n{}",
            args.join(" "),
            limit.as_secs(),
            self.log_text()
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the CLI and parses its JSON output; panics on failure.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let (ok, out, err) = self.try_cli(args);
        assert!(ok, "chokepoint {} failed: {err}", args.join(" "));
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("bad JSON from {}: {e}\n{out}", args.join(" ")))
    }

    /// Flow records currently held by the daemon.
    pub fn flows(&self) -> Vec<Value> {
        let (ok, out, err) = self.try_cli(&["flows", "--json"]);
        assert!(ok, "flows failed: {err}");
        // `flows --json` prints one JSON document: an array.
        serde_json::from_str::<Vec<Value>>(out.trim())
            .unwrap_or_else(|e| panic!("flows --json is not a JSON array: {e}\n{out}"))
    }

    /// Waits until a flow record satisfies `pred`, returning it.
    pub fn wait_flow(&self, t: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let t0 = Instant::now();
        loop {
            if let Some(v) = self.flows().into_iter().find(|v| pred(v)) {
                return Some(v);
            }
            if t0.elapsed() > t {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Scrapes `/metrics` (the classic text format).
    pub fn scrape(&self) -> String {
        let r = self.metrics_get("/metrics", &[]);
        assert_eq!(r.status, 200, "scrape: {r:?}");
        r.body
    }

    /// One GET on the metrics endpoint with extra header lines.
    pub fn metrics_get(&self, path: &str, headers: &[&str]) -> HttpResponse {
        let mut s = std::net::TcpStream::connect(self.metrics).expect("metrics connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
        for h in headers {
            req += h;
            req += "\r\n";
        }
        req += "\r\n";
        use std::io::Write;
        s.write_all(req.as_bytes()).expect("write");
        read_response(&mut s).expect("metrics response")
    }

    /// Applies a new policy through the CLI; returns the JSON answer.
    pub fn apply(&self, policy: &str) -> Value {
        let f = self.dir.join(format!(
            "apply-{}.yaml",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        fs::write(&f, policy).expect("write policy");
        self.cli_json(&["policy", "apply", f.to_str().expect("utf8"), "--json"])
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill(libc::SIGTERM);
        if let Ok(c) = Command::new(chokepoint_bin())
            .arg("uninstall")
            .arg("--bpffs")
            .arg(&self.bpffs)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            let _ = run_bounded(c, Duration::from_secs(30 * u64::from(time_scale())));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Parses one Prometheus sample value: `name{labels} value`.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A sandbox, an identity cgroup and a daemon enforcing it (`mode`: enforce or audit), with the
/// TC backstop on the host's world-facing veth.
pub struct Fixture {
    /// The daemon enforcing `cg`.
    pub daemon: Daemon,
    /// The identity's cgroup.
    pub cg: Cgroup,
    /// The sandbox the identity's traffic crosses.
    pub sb: Sandbox,
}

impl Fixture {
    /// A fixture whose identity is in `mode` (`enforce` or `audit`).
    pub fn new(mode: &str) -> Self {
        Self::with_args(mode, &[])
    }

    /// Like [`Fixture::new`] with extra daemon flags.
    pub fn with_args(mode: &str, extra: &[&str]) -> Self {
        let sb = Sandbox::new();
        let cg = Cgroup::new(&unique("cpt-agent"));
        let policy = sb.policy(&[("agent", &cg.rel, mode)]);
        let tc = sb.host_world_if.clone();
        let tc_pod = format!("{}:ingress", sb.host_pod_if);
        let mut args = vec![
            "--tc-iface",
            &tc,
            "--tc-iface",
            &tc_pod,
            "--alert-window",
            "1s",
        ];
        args.extend_from_slice(extra);
        let daemon = Daemon::start(&policy, &args);
        Self { daemon, cg, sb }
    }

    /// Runs a probe inside the identity's cgroup, in the pod netns when `pod`.
    pub fn attempt(&self, pod: bool, args: &[&str], payload: &str) -> Value {
        probe(
            Some(&self.cg.path),
            pod.then_some(&self.sb.pod),
            args,
            payload,
        )
    }

    /// Runs a probe outside any identity.
    pub fn outside(&self, pod: bool, args: &[&str], payload: &str) -> Value {
        probe(None, pod.then_some(&self.sb.pod), args, payload)
    }

    /// Asserts a bypass attempt ran, failed, reached nothing, and produced a deny record of its
    /// own for `dst` (an `ip:port` or `[ip]:port` string, or just an address prefix) with `reason`
    /// when given. The record is tied to this attempt by the pid cp-probe reports (or, for
    /// crafted frames, by the source address it reports), so records of earlier attempts cannot
    /// satisfy it, and a probe that never made the attempt (spawn or exec failed) fails it.
    pub fn assert_blocked(
        &self,
        what: &str,
        r: &Value,
        payload: &str,
        dst: &str,
        reason: Option<&str>,
    ) {
        let pid = r["pid"].as_u64().unwrap_or_else(|| {
            panic!("{what}: the attempt did not run (cp-probe reported no pid): {r}")
        });
        assert!(!ok(r), "{what}: the attempt succeeded: {r}");
        assert!(
            r.get("errno").is_some() || r["sent_locally"] == true,
            "{what}: the attempt did not reach the kernel (no errno, nothing sent): {r}"
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            self.sb.received.with_payload(payload),
            0,
            "{what}: the world server received the payload: {:?}",
            self.sb.received.all()
        );
        let src = r["src"].as_str();
        let rec = self.daemon.wait_flow(Duration::from_secs(5), |f| {
            f["verdict"] == "deny"
                && f["identity"] == "agent"
                && f["dst"].as_str().is_some_and(|d| d.starts_with(dst))
                && reason.is_none_or(|why| f["reason"] == why)
                && (f["pid"].as_u64() == Some(pid) || src.is_some_and(|s| f["src"] == s))
        });
        assert!(
            rec.is_some(),
            "{what}: no deny record of this attempt (pid {pid}, src {src:?}) for {dst} ({reason:?}); records: {:#?}",
            self.daemon.flows()
        );
    }

    /// Asserts an allowed attempt worked and reached the world server.
    pub fn assert_allowed(&self, what: &str, r: &Value, payload: &str) {
        assert!(
            ok(r),
            "{what}: the attempt failed: {r}\n{}",
            self.daemon.log_text()
        );
        assert!(
            self.sb
                .wait_for(Duration::from_secs(5), |rec| rec.with_payload(payload) > 0),
            "{what}: the world server never received the payload: {:?}",
            self.sb.received.all()
        );
    }
}
