//! A real DNS server of the test's own: cp-probe `dns-serve` in a network namespace of its own
//! that the host routes to.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Netns, Proc, Received, in_cgroup, probe_bin, sh};

/// The DNS server's namespace, joined to the host by a veth (`10.203.n.1` ↔ `10.203.n.2`).
pub struct DnsServer {
    _netns: Netns,
    host_if: String,
    _proc: Proc,
    /// `ready` and `query` lines the server printed.
    pub queries: Received,
    /// The server's address (port 53).
    pub addr: String,
}

impl DnsServer {
    /// Starts a server for slot `n` answering `zone` (cp-probe `dns-serve` specs).
    pub fn start(n: u32, zone: &[String]) -> Self {
        let ns = Netns::new(&format!("cpd-{}-{n}", std::process::id()));
        let hif = format!("cpr{n}d");
        let _ = Command::new("ip").args(["link", "del", &hif]).output();
        sh(
            "ip",
            &[
                "link", "add", &hif, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ],
        );
        sh(
            "ip",
            &["addr", "add", &format!("10.203.{n}.1/24"), "dev", &hif],
        );
        sh("ip", &["link", "set", &hif, "up"]);
        let addr = format!("10.203.{n}.2");
        sh(
            "ip",
            &[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ],
        );
        sh("ip", &["-n", &ns.name, "link", "set", "eth0", "up"]);
        sh(
            "ip",
            &[
                "-n",
                &ns.name,
                "route",
                "add",
                "default",
                "via",
                &format!("10.203.{n}.1"),
            ],
        );
        let mut cmd = Command::new(probe_bin());
        cmd.arg("dns-serve")
            .arg(format!("{addr}:53"))
            .args(zone)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = in_cgroup(cmd, None, Some(&ns)).spawn().expect("dns server");
        let out = child.stdout.take().expect("stdout");
        let rec = Received::default();
        let r2 = rec.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    r2.push(v);
                }
            }
        });
        let t0 = Instant::now();
        while rec.count(|v| v["event"] == "ready") == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "dns server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            _netns: ns,
            host_if: hif,
            _proc: Proc(child),
            queries: rec,
            addr,
        }
    }
    /// How many questions for `name` it received.
    pub fn asked(&self, name: &str) -> usize {
        self.queries
            .count(|v| v["event"] == "query" && v["name"] == name)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}
