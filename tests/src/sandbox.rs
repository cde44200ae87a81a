//! The world/pod sandbox: two network namespaces joined through the host by veth pairs, a
//! world server answering on the gateway and the forbidden addresses, a host-wide slot.

use std::{
    fs,
    net::{IpAddr, TcpListener},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use crate::{
    COUNTER, DNS, GATEWAY_PORT, Netns, OTHER_TCP, OTHER_UDP, Proc, QUIC, Received, SLOT_DIR,
    host::{forwarding_off, forwarding_on},
    in_cgroup, probe_bin,
    process::collect,
    require_privileges, sh,
};

/// The world/pod sandbox.
pub struct Sandbox {
    /// The slot (1..=250): the third octet of every address.
    pub n: u32,
    /// The world namespace (gateway, forbidden host, resolvers, metadata).
    pub world: Netns,
    /// The pod namespace (a pod-like netns behind the host).
    pub pod: Netns,
    /// Host-side veth toward the world (TC backstop interface).
    pub host_world_if: String,
    /// Host-side veth toward the pod.
    pub host_pod_if: String,
    /// What the world server received.
    pub received: Received,
    server: Option<Proc>,
    /// The host-wide reservation of slot `n` (dropped last, after the topology is gone).
    _slot: fs::File,
}

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
    /// The gateway's IPv4 address.
    pub fn gateway4(&self) -> IpAddr {
        self.v4(2)
    }
    /// An IPv4 address no policy allows.
    pub fn forbidden4(&self) -> IpAddr {
        self.v4(3)
    }
    /// The allowed resolver's IPv4 address.
    pub fn resolver4(&self) -> IpAddr {
        self.v4(4)
    }
    /// A resolver no policy allows.
    pub fn other_resolver4(&self) -> IpAddr {
        self.v4(5)
    }
    /// The gateway's IPv6 address.
    pub fn gateway6(&self) -> IpAddr {
        self.v6(2)
    }
    /// An IPv6 address no policy allows.
    pub fn forbidden6(&self) -> IpAddr {
        self.v6(3)
    }
    /// The cloud metadata address of this sandbox (169.254.n.254).
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
