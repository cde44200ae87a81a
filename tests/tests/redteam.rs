//! Red-team tests: an adversarial workload (CAP_NET_RAW, like a pod) against the reply paths and
//! the packet-socket backstop. Each test fails when the hole it names is open.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chokepoint_tests::*;
use serde_json::Value;

/// A sandbox, an identity cgroup and a daemon with no `--tc-iface`.
struct Bare {
    daemon: Daemon,
    cg: Cgroup,
    sb: Sandbox,
}

impl Bare {
    fn new() -> Self {
        let sb = Sandbox::new();
        let cg = Cgroup::new(&unique("cpt-rt"));
        let policy = sb.policy(&[("agent", &cg.rel, "enforce")]);
        let daemon = Daemon::start(&policy, &["--alert-window", "1s"]);
        Self { daemon, cg, sb }
    }

    /// Waits until the identity's TC backstop covers netns `ino` on `iface`.
    fn wait_covered(&self, ino: u64, iface: &str) {
        let t0 = Instant::now();
        loop {
            let st = self.daemon.cli_json(&["status", "--json"]);
            let c = st["identities"][0]["backstop"]["tc_netns"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if c.iter().any(|n| {
                n["netns"] == ino
                    && n["ifaces"]
                        .as_array()
                        .is_some_and(|i| i.iter().any(|x| x == iface))
            }) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "netns {ino} never covered on {iface}: {c:?}\n{}",
                self.daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn mac_of(netns: Option<&str>, iface: &str) -> String {
    let out = match netns {
        Some(ns) => sh("ip", &["-n", ns, "-j", "link", "show", iface]),
        None => sh("ip", &["-j", "link", "show", iface]),
    };
    let v: Value = serde_json::from_str(&out).expect("ip -j");
    v[0]["address"].as_str().expect("mac").to_string()
}

fn netns_ino_of_pid(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .expect("ns")
        .ino()
}

/// A resident process of the identity in `netns`.
fn resident(cg: &Path, netns: Option<&Netns>) -> (Proc, u64) {
    let (p, rec) = spawn_probe(Some(cg), netns, &["idle", "60"]);
    let pid = rec.all()[0]["pid"].as_u64().expect("pid") as u32;
    (p, netns_ino_of_pid(pid))
}

/// One probe run from `cgroup`/`netns`; its last JSON line.
fn probe(cgroup: Option<&Path>, netns: Option<&Netns>, args: &[&str], payload: &str) -> Value {
    let mut cmd = Command::new(probe_bin());
    cmd.args(args)
        .env("CP_PAYLOAD", payload)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = in_cgroup(cmd, cgroup, netns).output().expect("probe");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or(Value::Null)
}

/// Attack: the workload forges, through an AF_PACKET socket on `lo` (no TC there before the
/// fix), a UDP datagram "from" a forbidden peer to its own UDP socket. `cp_skb_ingress` then
/// remembers that peer in `CP_REPLY`, and the socket's "answer" to the peer passes as `reply`:
/// a full UDP channel to any address. The forged frame must never arrive, and the answer must
/// be refused and never leave.
#[test]
fn a_forged_datagram_on_lo_opens_no_reply_path() {
    let b = Bare::new();
    let (_res, ino) = resident(&b.cg.path, Some(&b.sb.pod));
    b.wait_covered(ino, "lo");
    let peer = SocketAddr::new(b.sb.forbidden4(), OTHER_UDP).to_string();
    let pod4 = b.sb.pod4().to_string();
    // Control, outside any identity: the forged datagram is delivered on this kernel (so the
    // attack is real and the test can fail).
    let p = payload("rt-spoof-outside");
    let r = probe(
        None,
        Some(&b.sb.pod),
        &["spoof-reply", "47011", &pod4, &peer],
        &p,
    );
    assert_eq!(r["received_from"], peer.as_str(), "control: {r}");
    // The identity: same steps.
    let p = payload("rt-spoof");
    let r = probe(
        Some(&b.cg.path),
        Some(&b.sb.pod),
        &["spoof-reply", "47012", &pod4, &peer],
        &p,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        b.sb.received.with_payload(&p),
        0,
        "the answer to a forged peer left the pod: {r}"
    );
    assert!(
        r["received_from"].is_null(),
        "the forged datagram reached the identity's socket: {r}"
    );
    assert!(eperm(&r["answer"]), "the answer was not refused: {r}");
}

/// A probe run with `CP_QDISC_BYPASS=how`: how it ended and its stdout.
fn run_probe(
    cgroup: Option<&Path>,
    netns: Option<&Netns>,
    args: &[&str],
    payload: &str,
    how: &str,
) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(probe_bin());
    cmd.args(args)
        .env("CP_PAYLOAD", payload)
        .env("CP_QDISC_BYPASS", how)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = in_cgroup(cmd, cgroup, netns).output().expect("probe");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn killed(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGKILL)
}

/// Attack: `PACKET_QDISC_BYPASS` through the 32-bit syscall entries (`int 0x80` from a 64-bit
/// process, as any i386 binary the workload execs would make it): the i386 `setsockopt` and
/// `socketcall(SYS_SETSOCKOPT)`. The kernel runs `cgroup/setsockopt` only for native calls
/// (`do_sock_setsockopt` skips it when `in_compat_syscall()`), so the option would be set and the
/// frames would go straight to the driver, past the TC backstop. Without the BPF LSM (this host)
/// the compat guard kills the caller before the syscall's body runs. The control outside any
/// identity proves the attack works on this kernel (the test fails on a build without the guard).
#[test]
fn packet_qdisc_bypass_through_a_compat_syscall_is_refused() {
    let b = Bare::new();
    let st = b.daemon.cli_json(&["status", "--json"]);
    let compat = &st["kernel"]["packet_sockets"]["compat"];
    assert_eq!(compat["guard"], "kill", "status: {compat}");
    // Kprobes on the compat entries where the kernel has them (no other syscall runs the guard),
    // the `sys_enter` tracepoint only where it does not (this 6.18 host: no CONFIG_KPROBES).
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        assert_eq!(compat["hook"], "kprobe", "status: {compat}");
        assert!(
            compat["attach"]
                .as_array()
                .is_some_and(|a| a.iter().any(|f| f == "__ia32_sys_setsockopt")),
            "{compat}"
        );
    } else {
        assert_eq!(compat["hook"], "raw_tracepoint", "status: {compat}");
        assert!(compat["kprobe_unavailable"].is_string(), "{compat}");
    }
    assert!(
        compat["entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x == "ia32")),
        "{compat}"
    );
    assert_eq!(
        st["identities"][0]["backstop"]["compat_syscall"], true,
        "{st}"
    );
    let by_lsm = st["kernel"]["packet_sockets"]["by"] == "lsm";
    assert_eq!(
        metric(
            &b.daemon.scrape(),
            "chokepoint_packet_socket_guard{by=\"compat_syscall_kill\",iface=\"\"}"
        ),
        Some(1.0)
    );
    let (_res, ino) = resident(&b.cg.path, Some(&b.sb.pod));
    b.wait_covered(ino, "eth0");
    let dst = SocketAddr::new(b.sb.forbidden4(), OTHER_UDP).to_string();
    let node_mac = mac_of(None, &b.sb.host_pod_if);
    let pod4 = b.sb.pod4().to_string();
    let args = ["packet", "eth0", &node_mac, &pod4, &dst];
    for how in ["compat", "socketcall"] {
        // Control, outside any identity: the option is set through the 32-bit entry and the frame
        // arrives.
        let p = payload(&format!("rt-{how}-outside"));
        let (status, out) = run_probe(None, Some(&b.sb.pod), &args, &p, how);
        assert!(
            status.success() && out.contains("\"ok\":true"),
            "control {how}: {status} {out}"
        );
        assert!(
            b.sb.wait_for(Duration::from_secs(5), |rec| rec.with_payload(&p) > 0),
            "control {how}: the frame never arrived: {:?}",
            b.sb.received.all()
        );
        // The identity: killed at the syscall, nothing leaves, a deny record says why (where
        // the BPF LSM runs, the packet socket is refused before: then that is the refusal).
        let p = payload(&format!("rt-{how}-bypass"));
        let (status, out) = run_probe(Some(&b.cg.path), Some(&b.sb.pod), &args, &p, how);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            b.sb.received.with_payload(&p),
            0,
            "{how}: a frame left past TC after a compat PACKET_QDISC_BYPASS: {status} {out}"
        );
        if by_lsm && out.contains("\"errno\":1,") {
            continue;
        }
        assert!(
            killed(status),
            "{how}: the caller was not killed: {status} {out}"
        );
        let rec = b.daemon.wait_flow(Duration::from_secs(5), |f| {
            f["hook"] == "compat_syscall"
                && f["reason"] == "raw_socket"
                && f["verdict"] == "deny"
                && f["identity"] == "agent"
        });
        assert!(rec.is_some(), "{how}: no record: {:#?}", b.daemon.flows());
    }
}

/// Attack: a compat io_uring ring (`io_uring_setup` through `int 0x80`), whose
/// `SOCKET_URING_OP_SETSOCKOPT` commands (6.7+) run `do_sock_setsockopt` as compat, skipping
/// `cgroup/setsockopt`. The identity's caller is killed at the ring's creation; outside any
/// identity the same call makes a ring (the entry exists, so the test can fail).
#[test]
fn a_compat_io_uring_ring_is_refused() {
    let b = Bare::new();
    let (status, out) = run_probe(None, None, &["compat-uring"], "-", "");
    assert!(
        status.success() && out.contains("\"ok\":true"),
        "control: {status} {out}"
    );
    let (status, out) = run_probe(Some(&b.cg.path), None, &["compat-uring"], "-", "");
    assert!(killed(status), "the caller was not killed: {status} {out}");
    let rec = b.daemon.wait_flow(Duration::from_secs(5), |f| {
        f["hook"] == "compat_syscall" && f["verdict"] == "deny" && f["identity"] == "agent"
    });
    assert!(rec.is_some(), "no record: {:#?}", b.daemon.flows());
    // And a bypass alert for the identity.
    let t0 = Instant::now();
    loop {
        let a = b.daemon.cli_json(&["alerts", "-o", "json"]);
        let hit = a.as_array().is_some_and(|v| {
            v.iter()
                .any(|x| x["identity"] == "agent" && x["reason"] == "raw_socket")
        });
        if hit {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "no alert: {a}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The guard is pinned like every program: it keeps killing while the daemon is down, a restart
/// keeps it (and proves it again), and only `chokepoint uninstall` removes it.
#[test]
fn the_compat_guard_outlives_the_daemon_and_goes_with_uninstall() {
    let mut b = Bare::new();
    let st = b.daemon.cli_json(&["status", "--json"]);
    let compat = &st["kernel"]["packet_sockets"]["compat"];
    let links = b.daemon.bpffs.join("links");
    let pins: Vec<std::path::PathBuf> = if compat["hook"] == "kprobe" {
        let fns = compat["attach"].as_array().cloned().unwrap_or_default();
        assert!(!fns.is_empty(), "{compat}");
        fns.iter()
            .map(|f| links.join(format!("cp_compat_kprobe@{}", f.as_str().unwrap_or("?"))))
            .collect()
    } else {
        vec![links.join("cp_compat_sys")]
    };
    for pin in &pins {
        assert!(
            pin.exists(),
            "no pinned link at {} ({compat})",
            pin.display()
        );
    }
    b.daemon.kill(libc::SIGKILL);
    let (status, out) = run_probe(Some(&b.cg.path), None, &["compat-uring"], "-", "");
    assert!(killed(status), "daemon down: not killed: {status} {out}");
    b.daemon.spawn(None);
    let st = b.daemon.cli_json(&["status", "--json"]);
    assert_eq!(
        st["kernel"]["packet_sockets"]["compat"]["guard"], "kill",
        "{st}"
    );
    let (status, out) = run_probe(Some(&b.cg.path), None, &["compat-uring"], "-", "");
    assert!(
        killed(status),
        "after a restart: not killed: {status} {out}"
    );
    b.daemon.kill(libc::SIGTERM);
    let out = Command::new(chokepoint_bin())
        .arg("uninstall")
        .arg("--bpffs")
        .arg(&b.daemon.bpffs)
        .output()
        .expect("uninstall");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        pins.iter().all(|p| !p.exists()),
        "the guard's pins are left"
    );
    let (status, out) = run_probe(Some(&b.cg.path), None, &["compat-uring"], "-", "");
    assert!(
        status.success() && out.contains("\"ok\":true"),
        "after uninstall the compat ring is still refused: {status} {out}"
    );
}
