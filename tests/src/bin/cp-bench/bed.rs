//! The bench's topology: a client and a server network namespace joined by veth, the server
//! process, the enforced and the unrelated cgroup; the policies and nft rulesets of a size.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Context;
use chokepoint_tests::{Cgroup, Netns, Proc, in_cgroup, sh, unique};
use serde_json::Value;

use super::{CLIENT, PORT, SERVER};

pub(super) fn padding(n: usize) -> Vec<String> {
    // Unrelated /32s in 100.64.0.0/10 (never the server's address).
    (0..n)
        .map(|i| {
            let v = (100u32 << 24) | (64 << 16) | (i as u32 + 1);
            format!("{}", Ipv4Addr::from(v))
        })
        .collect()
}

pub(super) fn policy(cg: &str, pad: &[String]) -> String {
    let mut s = format!(
        "apiVersion: chokepoint.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: bench\nspec:\n  gateways:\n    - name: gw\n      endpoints: [\"{SERVER}:{PORT}/tcp\"]\n  identities:\n    - name: bench-agent\n      selector:\n        cgroupPath: \"{cg}\"\n      egress:\n        gateways: [gw]\n        allow:\n          - to: \"{SERVER}/32\"\n            ports: [\"{PORT}/udp\"]\n"
    );
    for p in pad {
        let _ = write!(
            s,
            "          - to: \"{p}/32\"\n            ports: [\"443/tcp\"]\n"
        );
    }
    s
}

pub(super) fn nft_ruleset(pad: &[String]) -> String {
    let mut s = String::from(
        "table inet cpbench {\n  set pad { type ipv4_addr; flags interval; elements = { ",
    );
    s += &pad.join(", ");
    s += " } }\n  chain linear {\n";
    for p in pad {
        let _ = writeln!(s, "    ip daddr {p} drop");
    }
    s += "  }\n  chain viaset {\n    ip daddr @pad drop\n  }\n  chain out {\n    type filter hook output priority 0; policy accept;\n  }\n}\n";
    s
}

pub(super) struct Bed {
    pub(super) client: Netns,
    _server: Netns,
    _srv: Proc,
    pub(super) enforced: Cgroup,
    /// A cgroup no policy selects: its sockets belong to no identity.
    pub(super) unrelated: Cgroup,
    pub(super) probe: std::path::PathBuf,
}

impl Bed {
    pub(super) fn new(probe: &Path) -> anyhow::Result<Self> {
        let client = Netns::new(&format!("cpbc-{}", std::process::id()));
        let server = Netns::new(&format!("cpbs-{}", std::process::id()));
        ip(
            &client,
            &[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &server.name,
            ],
        );
        for (ns, addr) in [(&client, CLIENT), (&server, SERVER)] {
            ip(ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        }
        ip(&client, &["link", "set", "eth0", "up"]);
        // Thousands of short connections per second: reuse TIME_WAIT ports (per-netns sysctls).
        for setting in [
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=1024 65535",
        ] {
            netns_exec(&client, &["sysctl", "-qw", setting]);
        }
        ip(&server, &["link", "set", "eth0", "up"]);
        let mut cmd = Command::new(probe);
        cmd.args(["bench-serve", &PORT.to_string()])
            .env("CP_CPU", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut srv = in_cgroup(cmd, None, Some(&server))
            .spawn()
            .context("bench server")?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(srv.stdout.as_mut().expect("stdout")),
            &mut line,
        )?;
        Ok(Self {
            client,
            _server: server,
            _srv: Proc(srv),
            enforced: Cgroup::new(&unique("cpbench-agent")),
            unrelated: Cgroup::new(&unique("cpbench-other")),
            probe: probe.to_path_buf(),
        })
    }

    pub(super) fn run(&self, mode: &str, dst: &str, secs: f64) -> Value {
        self.run_in(&self.enforced.path, mode, dst, secs)
    }

    pub(super) fn run_in(&self, cgroup: &Path, mode: &str, dst: &str, secs: f64) -> Value {
        let mut cmd = Command::new(&self.probe);
        cmd.args(["bench", mode, dst, &secs.to_string()])
            .env("CP_CPU", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let out = in_cgroup(cmd, Some(cgroup), Some(&self.client))
            .output()
            .expect("bench client");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or(Value::Null)
    }

    pub(super) fn nft(&self, chain: Option<&str>) {
        netns_exec(
            &self.client,
            &["nft", "flush", "chain", "inet", "cpbench", "out"],
        );
        if let Some(c) = chain {
            netns_exec(
                &self.client,
                &["nft", "add", "rule", "inet", "cpbench", "out", "jump", c],
            );
        }
    }
}

/// `ip -n <ns> <args>`.
fn ip(ns: &Netns, args: &[&str]) {
    let mut all = vec!["-n", ns.name.as_str()];
    all.extend_from_slice(args);
    sh("ip", &all);
}

/// `ip netns exec <ns> <cmd>`.
fn netns_exec(ns: &Netns, cmd: &[&str]) {
    let mut all = vec!["netns", "exec", ns.name.as_str()];
    all.extend_from_slice(cmd);
    sh("ip", &all);
}
