//! The privileged test harness: guards that create kernel state and always remove it (a child
//! cgroup, network namespaces joined by veth pairs, a server in the "world" namespace, a running
//! daemon), and a runner that starts a probe inside a cgroup (and optionally a netns) before it
//! opens any socket.
//!
//! Topology of a [`Sandbox`] `n` (all addresses live in namespaces the test creates):
//!
//! ```text
//!  pod netns (cpp-…)              host netns (this process)           world netns (cpw-…)
//!  10.202.n.2 ── veth ── 10.202.n.1 [forwarding] 10.201.n.1 ── veth ── 10.201.n.2  gateway
//!  fd02:0:0:n::2         fd02:0:0:n::1           fd01:0:0:n::1         10.201.n.3  forbidden
//!                                                                      10.201.n.4  resolver (allowed)
//!                                                                      10.201.n.5  resolver (other)
//!                                                                      169.254.n.254 metadata
//!                                                                      fd01:0:0:n::2/3 gateway/forbidden
//! ```
//!
//! Nothing is skipped silently: a missing privilege is a panic that says what is missing.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr, TcpListener},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

pub mod kube;
pub mod kube_node;
pub mod kubelet;
pub mod sweep;

use serde_json::Value;

pub mod dns_server;

/// Ports the world server listens on.
pub const GATEWAY_PORT: u16 = 8080;
pub const OTHER_TCP: u16 = 9000;
pub const DNS: u16 = 53;
pub const QUIC: u16 = 443;
pub const OTHER_UDP: u16 = 9001;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique `<prefix>-<pid>-<n>` name.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Factor for the harness's waits: `CP_TEST_TIME_SCALE` (set by `cargo xtask test --kernel` for
/// guests under software emulation, where loading the programs alone takes tens of seconds).
pub fn time_scale() -> u32 {
    std::env::var("CP_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

/// Panics with a clear message unless the test runs as root with the kernel features needed.
pub fn require_privileges() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged tests need root (CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN); run them through `cargo xtask test`"
    );
    assert!(
        cgroup_root().join("cgroup.procs").exists(),
        "no cgroup v2 hierarchy found"
    );
    assert!(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "kernel BTF (/sys/kernel/btf/vmlinux) is missing"
    );
    let out = Command::new("ip").arg("-V").output();
    assert!(
        out.is_ok_and(|o| o.status.success()),
        "iproute2 (`ip`) is not installed; `cargo xtask setup` installs it"
    );
    sweep::stale_once();
}

/// The cgroup v2 mount (from /proc/self/mountinfo).
pub fn cgroup_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut best: Option<PathBuf> = None;
    for line in mounts.lines() {
        let mut h = line.split(" - ");
        let (Some(l), Some(r)) = (h.next(), h.next()) else {
            continue;
        };
        if r.starts_with("cgroup2 ")
            && let Some(mp) = l.split_whitespace().nth(4)
        {
            let p = PathBuf::from(mp);
            if best
                .as_ref()
                .is_none_or(|b| p.as_os_str().len() < b.as_os_str().len())
            {
                best = Some(p);
            }
        }
    }
    best.expect("cgroup2 mount")
}

/// Runs a command and panics (with its output) if it fails.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A cgroup under the v2 root, removed (with every process in it killed) on drop.
pub struct Cgroup {
    pub path: PathBuf,
    /// Path relative to the cgroup root, with a leading `/`.
    pub rel: String,
}

impl Cgroup {
    /// Creates `<root>/<name>`.
    pub fn new(name: &str) -> Self {
        let root = cgroup_root();
        let path = root.join(name);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self {
            path,
            rel: format!("/{name}"),
        }
    }

    /// Creates a child cgroup (removed with the parent).
    pub fn child(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).expect("child cgroup");
        p
    }
}

fn remove_cgroup(p: &Path) {
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = fs::write(p.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if fs::remove_dir(p).is_ok() || !p.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
    }
}

/// A network namespace, deleted on drop (which deletes its veth ends).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh("ip", &["netns", "add", name]);
        sh("ip", &["-n", name, "link", "set", "lo", "up"]);
        Self { name: name.into() }
    }
    /// Opens the namespace for `setns`.
    pub fn fd(&self) -> OwnedFd {
        fs::File::open(format!("/run/netns/{}", self.name))
            .expect("netns fd")
            .into()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Host forwarding switched on while any sandbox of any test process lives, restored after the
/// last: each process holds a shared `flock` on one file while it has sandboxes, and the process
/// that can then take it exclusively is the last and restores what the first one saved. (A
/// count inside one process would let one test process switch forwarding off under another.)
static FORWARDING: Mutex<(u32, Option<fs::File>)> = Mutex::new((0, None));

const FORWARD_KNOBS: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];

fn forwarding_file(name: &str) -> fs::File {
    fs::create_dir_all(SLOT_DIR).expect("slot dir");
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{SLOT_DIR}/{name}"))
        .expect("forwarding lock file")
}

fn flock(f: &fs::File, op: i32) -> bool {
    // SAFETY: flock on an fd we own.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

/// Runs `f` holding the host-wide forwarding mutex (a second lock file).
fn forwarding_critical<T>(f: impl FnOnce() -> T) -> T {
    let m = forwarding_file("forwarding.mutex");
    assert!(flock(&m, libc::LOCK_EX), "forwarding mutex");
    f()
    // `m` closes here: the mutex is released.
}

const FORWARDING_SAVED: &str = "/run/chokepoint-tests/forwarding.saved";

fn forwarding_on() {
    let mut f = FORWARDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if f.0 == 0 {
        f.1 = Some(forwarding_critical(|| {
            if !Path::new(FORWARDING_SAVED).exists() {
                let now: Vec<String> = FORWARD_KNOBS
                    .iter()
                    .map(|k| fs::read_to_string(k).unwrap_or_default().trim().to_string())
                    .collect();
                let _ = fs::write(FORWARDING_SAVED, now.join("\n"));
            }
            for k in FORWARD_KNOBS {
                let _ = fs::write(k, "1");
            }
            let users = forwarding_file("forwarding.users");
            assert!(flock(&users, libc::LOCK_SH), "forwarding users lock");
            users
        }));
    }
    f.0 += 1;
}

fn forwarding_off() {
    let mut f = FORWARDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f.0 -= 1;
    if f.0 == 0
        && let Some(users) = f.1.take()
    {
        forwarding_critical(|| {
            drop(users);
            // Another process's shared lock makes this fail: that process restores later.
            let probe = forwarding_file("forwarding.users");
            if flock(&probe, libc::LOCK_EX | libc::LOCK_NB)
                && let Ok(text) = fs::read_to_string(FORWARDING_SAVED)
            {
                for (k, v) in FORWARD_KNOBS.iter().zip(text.lines()) {
                    let _ = fs::write(k, v);
                }
                let _ = fs::remove_file(FORWARDING_SAVED);
            }
        });
    }
}

/// What the world server has received.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<Value>>>);

impl Received {
    /// Adds an event (for servers a test runs itself).
    pub fn push(&self, v: Value) {
        self.0.lock().expect("received lock").push(v);
    }
    /// Everything so far.
    pub fn all(&self) -> Vec<Value> {
        self.0.lock().expect("received lock").clone()
    }
    /// Events whose local address (or, for UDP, payload marker) matches.
    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.all().iter().filter(|v| pred(v)).count()
    }
    /// Events carrying `payload`.
    pub fn with_payload(&self, payload: &str) -> usize {
        self.count(|v| v["data"].as_str().is_some_and(|d| d.contains(payload)))
    }
}

/// A running child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with its stdout collected as JSON lines.
fn collect(mut child: Child) -> (Proc, Received) {
    let out = child.stdout.take().expect("stdout");
    let rec = Received::default();
    let r2 = rec.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                r2.0.lock().expect("received lock").push(v);
            }
        }
    });
    (Proc(child), rec)
}

/// Starts a long-running probe (`serve`, `echo-serve`, …) in `cgroup`/`netns` and collects its
/// JSON lines; waits for its `ready` line.
pub fn spawn_probe(
    cgroup: Option<&Path>,
    netns: Option<&Netns>,
    args: &[&str],
) -> (Proc, Received) {
    let mut cmd = Command::new(probe_bin());
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    let child = in_cgroup(cmd, cgroup, netns).spawn().expect("spawn probe");
    let (p, rec) = collect(child);
    let t0 = Instant::now();
    while rec.count(|v| v["event"] == "ready") == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "probe {args:?} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, rec)
}

/// The probe binary.
pub fn probe_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CP_PROBE_BIN") {
        return PathBuf::from(p);
    }
    // Integration tests run from target/<profile>/deps; the bin sits in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("cp-probe");
    assert!(p.exists(), "cp-probe not built at {}", p.display());
    p
}

/// The chokepoint binary: `CHOKEPOINT_BIN`, else the workspace's debug build.
pub fn chokepoint_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHOKEPOINT_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/chokepoint");
    assert!(
        p.exists(),
        "chokepoint binary not built ({}); run `cargo xtask test`",
        p.display()
    );
    p
}

/// A command that joins `cgroup` and then `netns` before exec (so every socket it opens belongs
/// to the cgroup).
pub fn in_cgroup(mut cmd: Command, cgroup: Option<&Path>, netns: Option<&Netns>) -> Command {
    let procs = cgroup.map(|c| {
        std::ffi::CString::new(c.join("cgroup.procs").to_string_lossy().as_bytes()).expect("path")
    });
    let nsfd = netns.map(Netns::fd);
    // SAFETY: the closure only calls async-signal-safe functions (open, write, close, setns).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(p) = &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                libc::close(fd);
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = &nsfd
                && libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs one probe in `cgroup`/`netns` and returns its last JSON line.
pub fn probe(cgroup: Option<&Path>, netns: Option<&Netns>, args: &[&str], payload: &str) -> Value {
    let mut cmd = Command::new(probe_bin());
    cmd.args(args)
        .env("CP_PAYLOAD", payload)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = in_cgroup(cmd, cgroup, netns).spawn().expect("spawn probe");
    let out = wait_timeout(child, Duration::from_secs(15));
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("{}");
    let mut v: Value = serde_json::from_str(last).unwrap_or(Value::Null);
    if !text.trim().is_empty() {
        v["lines"] = Value::from(
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>(),
        );
    }
    v
}

fn wait_timeout(child: Child, t: Duration) -> std::process::Output {
    run_bounded(child, t).0
}

/// Waits up to `t` for `child` (draining its pipes meanwhile, so a chatty child never blocks on
/// a full pipe), kills it when it outlives `t`, and returns what it printed and whether it had
/// to be killed.
pub fn run_bounded(mut child: Child, t: Duration) -> (std::process::Output, bool) {
    fn drain<R: std::io::Read + Send + 'static>(p: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut v);
            }
            v
        })
    }
    let o = drain(child.stdout.take());
    let e = drain(child.stderr.take());
    let start = Instant::now();
    let mut killed = false;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if start.elapsed() > t {
            killed = true;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = std::process::Output {
        status,
        stdout: o.join().unwrap_or_default(),
        stderr: e.join().unwrap_or_default(),
    };
    (out, killed)
}

/// True when the probe reported success.
pub fn ok(v: &Value) -> bool {
    v["ok"] == true
}

/// True when the probe failed with EPERM.
pub fn eperm(v: &Value) -> bool {
    v["ok"] == false && v["errno"] == 1
}

/// `bpf` is among the kernel's active LSMs (read by the test from securityfs, not taken from the
/// daemon).
pub fn bpf_lsm_in_kernel() -> bool {
    std::fs::read_to_string("/sys/kernel/security/lsm")
        .is_ok_and(|l| l.trim().split(',').any(|x| x == "bpf"))
}

/// The run requires the BPF LSM (`CP_REQUIRE_BPF_LSM=1`, set in the guest kernels of
/// `cargo xtask test --kernel`, which boot with `lsm=...,bpf`).
pub fn bpf_lsm_required() -> bool {
    std::env::var("CP_REQUIRE_BPF_LSM").is_ok_and(|v| v == "1")
}

/// The world/pod sandbox.
pub struct Sandbox {
    pub n: u32,
    pub world: Netns,
    pub pod: Netns,
    /// Host-side veth toward the world (TC backstop interface).
    pub host_world_if: String,
    /// Host-side veth toward the pod.
    pub host_pod_if: String,
    pub received: Received,
    server: Option<Proc>,
    /// The host-wide reservation of slot `n` (dropped last, after the topology is gone).
    _slot: fs::File,
}

/// Where test processes reserve sandbox slots (one lock file per slot).
const SLOT_DIR: &str = "/run/chokepoint-tests";

/// Reserves a free slot 1..=250 host-wide (an exclusive `flock` on its file, released when the
/// process exits however it exits), so concurrent test processes never share addresses or
/// interface names.
fn claim_slot() -> (u32, fs::File) {
    fs::create_dir_all(SLOT_DIR).expect("slot dir");
    let start = std::process::id() * 7 + COUNTER.fetch_add(1, Ordering::SeqCst);
    for i in 0..250 {
        let n = 1 + (start + i) % 250;
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(format!("{SLOT_DIR}/slot-{n}"))
            .expect("slot file");
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return (n, f);
        }
    }
    panic!("all 250 sandbox slots are taken");
}

impl Sandbox {
    /// Builds the topology and starts the world server.
    pub fn new() -> Self {
        require_privileges();
        let (n, slot) = claim_slot();
        let world = Netns::new(&format!("cpw-{}-{n}", std::process::id()));
        let pod = Netns::new(&format!("cpp-{}-{n}", std::process::id()));
        let hw = format!("cpr{n}w");
        let hp = format!("cpr{n}p");
        let _ = Command::new("ip").args(["link", "del", &hw]).output();
        let _ = Command::new("ip").args(["link", "del", &hp]).output();
        forwarding_on();
        let s = Self {
            n,
            world,
            pod,
            host_world_if: hw.clone(),
            host_pod_if: hp.clone(),
            received: Received::default(),
            _slot: slot,
            server: None,
        };
        let w = s.world.name.clone();
        let p = s.pod.name.clone();
        sh(
            "ip",
            &[
                "link", "add", &hw, "type", "veth", "peer", "name", "eth0", "netns", &w,
            ],
        );
        sh(
            "ip",
            &[
                "link", "add", &hp, "type", "veth", "peer", "name", "eth0", "netns", &p,
            ],
        );
        sh(
            "ip",
            &["addr", "add", &format!("10.201.{n}.1/24"), "dev", &hw],
        );
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("fd01:0:0:{n:x}::1/64"),
                "dev",
                &hw,
                "nodad",
            ],
        );
        sh(
            "ip",
            &["addr", "add", &format!("10.202.{n}.1/24"), "dev", &hp],
        );
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("fd02:0:0:{n:x}::1/64"),
                "dev",
                &hp,
                "nodad",
            ],
        );
        sh("ip", &["link", "set", &hw, "up"]);
        sh("ip", &["link", "set", &hp, "up"]);
        sh(
            "ip",
            &["route", "add", &format!("169.254.{n}.254/32"), "dev", &hw],
        );
        for host in 2..=5 {
            sh(
                "ip",
                &[
                    "-n",
                    &w,
                    "addr",
                    "add",
                    &format!("10.201.{n}.{host}/24"),
                    "dev",
                    "eth0",
                ],
            );
        }
        for host in 2..=3 {
            sh(
                "ip",
                &[
                    "-n",
                    &w,
                    "addr",
                    "add",
                    &format!("fd01:0:0:{n:x}::{host}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
        }
        sh(
            "ip",
            &[
                "-n",
                &w,
                "addr",
                "add",
                &format!("169.254.{n}.254/32"),
                "dev",
                "eth0",
            ],
        );
        sh("ip", &["-n", &w, "link", "set", "eth0", "up"]);
        sh(
            "ip",
            &[
                "-n",
                &w,
                "route",
                "add",
                &format!("10.202.{n}.0/24"),
                "via",
                &format!("10.201.{n}.1"),
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &w,
                "route",
                "add",
                &format!("10.201.{n}.0/24"),
                "dev",
                "eth0",
                "src",
                &format!("10.201.{n}.2"),
                "metric",
                "10",
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &w,
                "-6",
                "route",
                "add",
                &format!("fd02:0:0:{n:x}::/64"),
                "via",
                &format!("fd01:0:0:{n:x}::1"),
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &p,
                "addr",
                "add",
                &format!("10.202.{n}.2/24"),
                "dev",
                "eth0",
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &p,
                "addr",
                "add",
                &format!("fd02:0:0:{n:x}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        sh("ip", &["-n", &p, "link", "set", "eth0", "up"]);
        sh(
            "ip",
            &[
                "-n",
                &p,
                "route",
                "add",
                "default",
                "via",
                &format!("10.202.{n}.1"),
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &p,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd02:0:0:{n:x}::1"),
            ],
        );
        let mut s = s;
        let mut cmd = Command::new(probe_bin());
        cmd.args([
            "serve",
            &format!("{GATEWAY_PORT},{OTHER_TCP},{DNS},{QUIC}"),
            &format!("{DNS},{QUIC},{OTHER_UDP}"),
            "icmp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let child = in_cgroup(cmd, None, Some(&s.world))
            .spawn()
            .expect("world server");
        let (proc_, rec) = collect(child);
        s.server = Some(proc_);
        s.received = rec;
        let t0 = Instant::now();
        while s.received.count(|v| v["event"] == "ready") == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "world server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn v4(&self, host: u8) -> IpAddr {
        format!("10.201.{}.{host}", self.n).parse().expect("ip")
    }
    fn v6(&self, host: u8) -> IpAddr {
        format!("fd01:0:0:{:x}::{host}", self.n)
            .parse()
            .expect("ip")
    }
    pub fn gateway4(&self) -> IpAddr {
        self.v4(2)
    }
    pub fn forbidden4(&self) -> IpAddr {
        self.v4(3)
    }
    pub fn resolver4(&self) -> IpAddr {
        self.v4(4)
    }
    pub fn other_resolver4(&self) -> IpAddr {
        self.v4(5)
    }
    pub fn gateway6(&self) -> IpAddr {
        self.v6(2)
    }
    pub fn forbidden6(&self) -> IpAddr {
        self.v6(3)
    }
    pub fn metadata(&self) -> IpAddr {
        format!("169.254.{}.254", self.n).parse().expect("ip")
    }
    /// The pod's own address (source of pod traffic).
    pub fn pod4(&self) -> IpAddr {
        format!("10.202.{}.2", self.n).parse().expect("ip")
    }
    /// The host's address on the world link.
    pub fn host4(&self) -> IpAddr {
        format!("10.201.{}.1", self.n).parse().expect("ip")
    }

    /// A policy document: gateway (v4 and v6), an allowed resolver, for `identities`
    /// (name, cgroup rel path, mode).
    pub fn policy(&self, identities: &[(&str, &str, &str)]) -> String {
        let mut s = format!(
            "apiVersion: chokepoint.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: sandbox-{n}\nspec:\n  gateways:\n    - name: llm-gateway\n      endpoints: [\"{g4}:{GATEWAY_PORT}/tcp\", \"[{g6}]:{GATEWAY_PORT}/tcp\"]\n  identities:\n",
            n = self.n,
            g4 = self.gateway4(),
            g6 = self.gateway6()
        );
        for (name, path, mode) in identities {
            s += &format!(
                "    - name: {name}\n      tenant: acme\n      mode: {mode}\n      selector:\n        cgroupPath: \"{path}\"\n      egress:\n        gateways: [llm-gateway]\n        allow:\n          - to: \"{r}/32\"\n            ports: [\"53/udp\", \"53/tcp\"]\n            reason: cluster DNS\n",
                r = self.resolver4()
            );
        }
        s
    }

    /// Waits until `pred` holds for what the world received, up to `t`.
    pub fn wait_for(&self, t: Duration, pred: impl Fn(&Received) -> bool) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < t {
            if pred(&self.received) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        pred(&self.received)
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.server.take();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_world_if])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_pod_if])
            .output();
        forwarding_off();
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running `chokepoint daemon` with its own bpffs dir, state dir, socket and metrics port.
/// Drop stops it and runs `chokepoint uninstall` on its pins.
pub struct Daemon {
    pub bpffs: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub metrics: SocketAddr,
    pub audit_log: PathBuf,
    /// The attestation socket.
    pub attest: PathBuf,
    pub dir: PathBuf,
    pub extra: Vec<String>,
    env: Vec<(String, String)>,
    /// The daemon binary (another build for upgrade tests).
    pub bin: PathBuf,
    child: Option<Child>,
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
            let t0 = Instant::now();
            while !matches!(c.try_wait(), Ok(Some(_))) {
                if t0.elapsed() > limit {
                    let _ = c.kill();
                    let _ = c.wait();
                    assert!(
                        std::thread::panicking(),
                        "the daemon did not exit within {} s of signal {signal}\n{}",
                        limit.as_secs(),
                        self.log_text()
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
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
    pub daemon: Daemon,
    pub cg: Cgroup,
    pub sb: Sandbox,
}

impl Fixture {
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

/// A payload unique to this attempt.
pub fn payload(what: &str) -> String {
    unique(what)
}

/// An HTTP response as a test reads it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 response: the head, then `Content-Length` bytes of body (or up to the end
/// of the stream without one), so that a keep-alive server need not close the connection.
pub fn read_response(s: &mut impl std::io::Read) -> Option<HttpResponse> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            s.read_exact(&mut body).ok()?;
        }
        None => {
            let _ = s.read_to_end(&mut body);
        }
    }
    Some(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One HTTP request over a Unix socket; returns (status, JSON body).
pub fn http_unix(socket: &Path, request: &[u8]) -> (u16, Value) {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect attest socket");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(request);
    match read_response(&mut s) {
        Some(r) => (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        ),
        None => (0, Value::Null),
    }
}

/// `GET /v1/attest?peer=…&local=…` on the attestation socket.
pub fn attest(socket: &Path, peer: &str, local: &str) -> (u16, Value) {
    let enc = |s: &str| s.replace('[', "%5B").replace(']', "%5D");
    http_unix(
        socket,
        format!(
            "GET /v1/attest?peer={}&local={} HTTP/1.1\r\nHost: chokepoint\r\n\r\n",
            enc(peer),
            enc(local)
        )
        .as_bytes(),
    )
}
