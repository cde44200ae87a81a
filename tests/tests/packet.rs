//! Packet sockets everywhere, without any `--tc-iface`: an identity's AF_PACKET sockets send
//! nothing, from a pod netns, from the host netns, and from a netns created after the daemon
//! started; `PACKET_QDISC_BYPASS` (frames past TC) is refused; the per-netns backstop covers each
//! netns an identity lives in and is released when no identity lives there any more.
//!
//! Which layer refuses depends on the kernel, and each test says which and proves it: where the
//! BPF LSM is active (the guest kernels of `cargo xtask test --kernel`), `socket()` fails with
//! EPERM and the record is the LSM's (`lsm_socket_create`, the attempt's pid), so no frame ever
//! exists; without it (this host refuses trampolines) the socket opens and the per-netns TC
//! backstop drops the frames (record hook `tc`, the frame's destination). Either way nothing
//! arrives, and the same send from outside any identity does arrive, so the test can fail.
//!
//! How the per-netns backstop attaches is checked against the kernel too: tcx links from 6.6 on,
//! a clsact qdisc with a direct-action filter before (the 6.1 guest), and the clsact fallback
//! forced with `--tc-mode clsact` on any kernel, so this host runs the real fallback as well: the
//! kernel's own filter list (`tc filter show`) must hold the filter while covered, across a
//! daemon restart, and must lose it (and the qdisc the agent added) on release and `uninstall`.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chokepoint_tests::*;
use serde_json::Value;

fn mac_of(netns: Option<&str>, iface: &str) -> String {
    let out = match netns {
        Some(ns) => sh("ip", &["-n", ns, "-j", "link", "show", iface]),
        None => sh("ip", &["-j", "link", "show", iface]),
    };
    let v: Value = serde_json::from_str(&out).expect("ip -j");
    v[0]["address"].as_str().expect("mac").to_string()
}

/// The running kernel has tcx (Linux 6.6+).
fn kernel_has_tcx() -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut it = rel
        .trim()
        .split(['.', '-'])
        .map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (major, minor) >= (6, 6)
}

/// `tc` in the network namespace `netns`.
fn tc(netns: &str, args: &[&str]) -> String {
    let mut a = vec!["-n", netns];
    a.extend_from_slice(args);
    sh("tc", &a)
}

/// The kernel's egress filters of `iface` in `netns` with the per-netns backstop's handle.
fn backstop_filters(netns: &str, iface: &str) -> Vec<String> {
    tc(netns, &["filter", "show", "dev", iface, "egress"])
        .lines()
        .filter(|l| l.contains("handle 0xc0ca"))
        .map(str::to_string)
        .collect()
}

/// The interface has a clsact qdisc.
fn has_clsact(netns: &str, iface: &str) -> bool {
    tc(netns, &["qdisc", "show", "dev", iface])
        .lines()
        .any(|l| l.starts_with("qdisc clsact"))
}

/// The backstop's pins of the netns `ino` (tcx links and clsact program pins).
fn netns_pins(bpffs: &Path, ino: u64) -> Vec<String> {
    ["links", "tc_netns"]
        .iter()
        .flat_map(|d| std::fs::read_dir(bpffs.join(d)).into_iter().flatten())
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|p| p.contains(&format!("@ns{ino}_")))
        .collect()
}

/// A sandbox, an identity cgroup and a daemon with no `--tc-iface`.
struct Bare {
    daemon: Daemon,
    cg: Cgroup,
    sb: Sandbox,
    /// Packet sockets of identities are refused at `socket()` by the BPF LSM (else the TC
    /// backstop drops their frames).
    by_lsm: bool,
    /// How the per-netns backstop must attach here: `tcx` or `clsact`.
    mode: &'static str,
}

impl Bare {
    fn new() -> Self {
        Self::with_args(&[])
    }

    /// With more daemon flags (`--tc-mode clsact`).
    fn with_args(extra: &[&str]) -> Self {
        let sb = Sandbox::new();
        let cg = Cgroup::new(&unique("cpt-pkt"));
        let policy = sb.policy(&[("agent", &cg.rel, "enforce")]);
        let mut args = vec!["--alert-window", "1s"];
        args.extend_from_slice(extra);
        let mode = if extra.windows(2).any(|w| w == ["--tc-mode", "clsact"]) || !kernel_has_tcx() {
            "clsact"
        } else {
            "tcx"
        };
        let daemon = Daemon::start(&policy, &args);
        let st = daemon.cli_json(&["status", "--json"]);
        let k = &st["kernel"];
        let by_lsm = k["packet_sockets"]["by"] == "lsm";
        // The daemon's word is checked against the kernel's own LSM list.
        assert_eq!(
            by_lsm,
            k["lsm_program_attached"] == true && bpf_lsm_in_kernel(),
            "status disagrees with /sys/kernel/security/lsm: {k}"
        );
        if bpf_lsm_required() {
            assert!(
                by_lsm,
                "this run requires the BPF LSM, the daemon reports: {k}"
            );
        }
        eprintln!(
            "packet sockets of identities: {}; per-netns backstop through {mode}",
            if by_lsm {
                "refused at socket() by the BPF LSM"
            } else {
                "no BPF LSM: frames dropped by the per-netns TC backstop"
            }
        );
        Self {
            daemon,
            cg,
            sb,
            by_lsm,
            mode,
        }
    }

    /// The netns entries of the identity's TC backstop in `status`.
    fn covered(&self) -> Vec<Value> {
        let st = self.daemon.cli_json(&["status", "--json"]);
        st["identities"][0]["backstop"]["tc_netns"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until the backstop covers the netns `ino` on `iface`, attached the way this kernel
    /// (or `--tc-mode`) calls for, and the metric says so.
    fn wait_covered(&self, ino: u64, iface: &str) {
        let t0 = Instant::now();
        loop {
            let c = self.covered();
            if c.iter().any(|n| {
                n["netns"] == ino
                    && n["mode"] == self.mode
                    && n["ifaces"]
                        .as_array()
                        .is_some_and(|i| i.iter().any(|x| x == iface))
            }) {
                let m = self.daemon.scrape();
                let up = metric(
                    &m,
                    &format!(
                        "chokepoint_tc_backstop_netns_interfaces{{netns=\"{ino}\",mode=\"{}\",state=\"attached\"}}",
                        self.mode
                    ),
                );
                assert!(
                    up.is_some_and(|n| n >= 1.0),
                    "metric of netns {ino} ({}): {up:?}\n{m}",
                    self.mode
                );
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

    /// The identity's send `r` (toward `dst`, carrying `payload`) was refused by the layer this
    /// kernel has, and nothing arrived. With the BPF LSM: EPERM at `socket()` and an
    /// `lsm_socket_create` record with the attempt's pid. Without: the socket opened and a `tc`
    /// deny record names `dst`. Returns the record.
    fn assert_refused(&self, what: &str, r: &Value, payload: &str, dst: &str) -> Value {
        let pid = r["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: the attempt did not run: {r}"));
        if self.by_lsm {
            assert!(eperm(r), "{what}: the BPF LSM did not refuse socket(): {r}");
        } else {
            // Never EPERM here: the socket opens and the frame is handed to the device.
            assert!(
                ok(r) || r["errno"] == libc::ENOBUFS,
                "{what}: expected the frame to reach the backstop: {r}"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            self.sb.received.with_payload(payload),
            0,
            "{what}: the frame left: {:?}",
            self.sb.received.all()
        );
        let by_lsm = self.by_lsm;
        let rec = self.daemon.wait_flow(Duration::from_secs(5), |f| {
            f["verdict"] == "deny"
                && f["identity"] == "agent"
                && if by_lsm {
                    f["hook"] == "lsm_socket_create"
                        && f["reason"] == "raw_socket"
                        && f["pid"].as_u64() == Some(pid)
                } else {
                    f["hook"] == "tc" && f["dst"] == dst
                }
        });
        rec.unwrap_or_else(|| {
            panic!(
                "{what}: no deny record of this attempt (by LSM: {by_lsm}, dst {dst}): {:#?}",
                self.daemon.flows()
            )
        })
    }
}

fn netns_ino_of_pid(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .expect("ns")
        .ino()
}

/// A resident process of the identity (a pod's long-lived container) in `netns`.
fn resident(cg: &Path, netns: Option<&Netns>) -> (Proc, u64) {
    // 60 s here; longer under software emulation (a test outliving it would see a release).
    let secs = (60 * time_scale()).to_string();
    let (p, rec) = spawn_probe(Some(cg), netns, &["idle", &secs]);
    let pid = rec.all()[0]["pid"].as_u64().expect("pid") as u32;
    (p, netns_ino_of_pid(pid))
}

/// One packet-socket send from `cgroup`/`netns` with `env` set.
fn packet_send(
    cgroup: Option<&Path>,
    netns: Option<&Netns>,
    args: &[&str],
    payload: &str,
    env: &[(&str, &str)],
) -> Value {
    let mut cmd = Command::new(probe_bin());
    cmd.arg("packet")
        .args(args)
        .env("CP_PAYLOAD", payload)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = in_cgroup(cmd, cgroup, netns)
        .output()
        .expect("packet probe");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or(Value::Null)
}

#[test]
fn packet_frames_from_a_pod_netns_drop_without_tc_iface() {
    let b = Bare::new();
    let (_res, ino) = resident(&b.cg.path, Some(&b.sb.pod));
    b.wait_covered(ino, "eth0");
    let dst = SocketAddr::new(b.sb.forbidden4(), OTHER_UDP).to_string();
    let node_mac = mac_of(None, &b.sb.host_pod_if);
    let pod4 = b.sb.pod4().to_string();
    let args = ["eth0", node_mac.as_str(), pod4.as_str(), dst.as_str()];
    let p = payload("pkt-pod-bare");
    let r = packet_send(Some(&b.cg.path), Some(&b.sb.pod), &args, &p, &[]);
    b.assert_refused("AF_PACKET from the pod netns", &r, &p, &dst);
    // The same frame from outside the identity, same netns, arrives: the test can fail.
    let p = payload("pkt-pod-outside");
    let r = packet_send(None, Some(&b.sb.pod), &args, &p, &[]);
    assert!(ok(&r), "{r}");
    assert!(
        b.sb.wait_for(Duration::from_secs(5), |rec| rec.with_payload(&p) > 0),
        "the control frame never arrived: {:?}",
        b.sb.received.all()
    );
}

#[test]
fn packet_qdisc_bypass_is_refused() {
    let b = Bare::new();
    let (_res, ino) = resident(&b.cg.path, Some(&b.sb.pod));
    b.wait_covered(ino, "eth0");
    let dst = SocketAddr::new(b.sb.forbidden4(), OTHER_UDP).to_string();
    let node_mac = mac_of(None, &b.sb.host_pod_if);
    let pod4 = b.sb.pod4().to_string();
    let args = ["eth0", node_mac.as_str(), pod4.as_str(), dst.as_str()];
    let p = payload("pkt-bypass");
    let r = packet_send(
        Some(&b.cg.path),
        Some(&b.sb.pod),
        &args,
        &p,
        &[("CP_QDISC_BYPASS", "1")],
    );
    assert!(eperm(&r), "PACKET_QDISC_BYPASS was not refused: {r}");
    let pid = r["pid"].as_u64().expect("pid");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.sb.received.with_payload(&p), 0);
    // With the BPF LSM there is no socket to set the option on: the refusal is at socket().
    let hook = if b.by_lsm {
        "lsm_socket_create"
    } else {
        "setsockopt"
    };
    let rec = b.daemon.wait_flow(Duration::from_secs(5), |f| {
        f["hook"] == hook
            && f["reason"] == "raw_socket"
            && f["verdict"] == "deny"
            && f["pid"].as_u64() == Some(pid)
    });
    assert!(rec.is_some(), "no {hook} record: {:#?}", b.daemon.flows());
    // Outside identities the option works (and the frame arrives, past TC).
    let p = payload("pkt-bypass-outside");
    let r = packet_send(
        None,
        Some(&b.sb.pod),
        &args,
        &p,
        &[("CP_QDISC_BYPASS", "1")],
    );
    assert!(ok(&r), "{r}");
    assert!(b.sb.wait_for(Duration::from_secs(5), |rec| rec.with_payload(&p) > 0));
}

#[test]
fn packet_frames_from_the_host_netns_drop_without_tc_iface() {
    let b = Bare::new();
    let (_res, ino) = resident(&b.cg.path, None);
    b.wait_covered(ino, &b.sb.host_world_if);
    let dst = SocketAddr::new(b.sb.forbidden4(), OTHER_UDP).to_string();
    let world_mac = mac_of(Some(&b.sb.world.name), "eth0");
    let host4 = b.sb.host4().to_string();
    let args = [
        b.sb.host_world_if.as_str(),
        world_mac.as_str(),
        host4.as_str(),
        dst.as_str(),
    ];
    let p = payload("pkt-host-bare");
    let r = packet_send(Some(&b.cg.path), None, &args, &p, &[]);
    b.assert_refused("AF_PACKET from the host netns", &r, &p, &dst);
    let p = payload("pkt-host-outside");
    let r = packet_send(None, None, &args, &p, &[]);
    assert!(ok(&r), "{r}");
    assert!(b.sb.wait_for(Duration::from_secs(5), |rec| rec.with_payload(&p) > 0));
}

#[test]
fn a_netns_created_after_the_daemon_started_is_covered_then_released() {
    late_netns_covered_then_released(&Bare::new());
}

/// The same through the clsact fallback (forced where the kernel has tcx): the release enters
/// the namespace and deletes the filter and the qdisc the agent added.
#[test]
fn a_late_netns_is_covered_then_released_through_clsact() {
    late_netns_covered_then_released(&Bare::with_args(&["--tc-mode", "clsact"]));
}

fn late_netns_covered_then_released(b: &Bare) {
    let n = b.sb.n;
    let late = Netns::new(&unique("cpl"));
    // A veth pair between the new netns (`eth0`, 10.203.N.2) and the world netns (10.203.N.1);
    // it goes with either namespace.
    let world_if = format!("cpl{n}x");
    sh(
        "ip",
        &[
            "link",
            "add",
            &world_if,
            "netns",
            &b.sb.world.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &late.name,
        ],
    );
    let w = b.sb.world.name.clone();
    sh(
        "ip",
        &[
            "-n",
            &w,
            "addr",
            "add",
            &format!("10.203.{n}.1/24"),
            "dev",
            &world_if,
        ],
    );
    sh("ip", &["-n", &w, "link", "set", &world_if, "up"]);
    sh(
        "ip",
        &[
            "-n",
            &late.name,
            "addr",
            "add",
            &format!("10.203.{n}.2/24"),
            "dev",
            "eth0",
        ],
    );
    sh("ip", &["-n", &late.name, "link", "set", "eth0", "up"]);
    let (res, ino) = resident(&b.cg.path, Some(&late));
    b.wait_covered(ino, "eth0");
    b.wait_covered(ino, "lo");
    if b.mode == "clsact" {
        for iface in ["eth0", "lo"] {
            let f = backstop_filters(&late.name, iface);
            assert!(
                f.len() == 1 && f[0].contains("cp_tc_egress") && f[0].contains("direct-action"),
                "{iface}: the kernel lists no backstop filter: {f:?}\n{}",
                b.daemon.log_text()
            );
        }
    }
    let dst = SocketAddr::new(b.sb.forbidden4(), OTHER_UDP).to_string();
    let peer_mac = mac_of(Some(&w), &world_if);
    let src = format!("10.203.{n}.2");
    let args = ["eth0", peer_mac.as_str(), src.as_str(), dst.as_str()];
    let p = payload("pkt-late");
    let r = packet_send(Some(&b.cg.path), Some(&late), &args, &p, &[]);
    b.assert_refused("AF_PACKET from a late netns", &r, &p, &dst);
    let p = payload("pkt-late-outside");
    let r = packet_send(None, Some(&late), &args, &p, &[]);
    assert!(ok(&r), "{r}");
    assert!(
        b.sb.wait_for(Duration::from_secs(5), |rec| rec.with_payload(&p) > 0),
        "the control frame never arrived: {:?}",
        b.sb.received.all()
    );
    // The identity leaves that netns: the backstop there is released.
    drop(res);
    let t0 = Instant::now();
    while b.covered().iter().any(|c| c["netns"] == ino) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still covered after the identity left: {:?}",
            b.covered()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pins = netns_pins(&b.daemon.bpffs, ino);
    assert!(pins.is_empty(), "pins left: {pins:?}");
    // The kernel's side: nothing of the agent's is left on the namespace's interfaces.
    for iface in ["eth0", "lo"] {
        let f = backstop_filters(&late.name, iface);
        assert!(f.is_empty(), "{iface}: filters left: {f:?}");
        assert!(
            !has_clsact(&late.name, iface),
            "{iface}: the qdisc the agent added was left"
        );
    }
}

/// The clsact fallback (forced here where the kernel has tcx) end to end: the kernel lists the
/// direct-action filter on the pod's interfaces; the identity's frames are dropped (or, with the
/// BPF LSM, its packet socket refused) and the same frame from outside arrives; with the daemon
/// stopped the filter stays and still drops; a restart replaces the filter's program in place (one
/// filter, a new program id); `uninstall` enters the namespace and deletes the filter and the qdisc.
#[test]
fn the_clsact_fallback_drops_survives_a_restart_and_uninstall_removes_it() {
    let mut b = Bare::with_args(&["--tc-mode", "clsact"]);
    let (_res, ino) = resident(&b.cg.path, Some(&b.sb.pod));
    b.wait_covered(ino, "eth0");
    b.wait_covered(ino, "lo");
    let pod = b.sb.pod.name.clone();
    let before = backstop_filters(&pod, "eth0");
    assert!(
        before.len() == 1
            && before[0].contains("cp_tc_egress")
            && before[0].contains("direct-action"),
        "the kernel lists no backstop filter on eth0: {before:?}"
    );
    assert!(has_clsact(&pod, "eth0"));
    // No tcx link was made for it; the program pins are the clsact ones.
    let pins = netns_pins(&b.daemon.bpffs, ino);
    assert!(
        !pins.is_empty()
            && pins
                .iter()
                .all(|p| b.daemon.bpffs.join("tc_netns").join(p).exists()),
        "pins of the netns in clsact mode: {pins:?}"
    );
    let dst = SocketAddr::new(b.sb.forbidden4(), OTHER_UDP).to_string();
    let node_mac = mac_of(None, &b.sb.host_pod_if);
    let pod4 = b.sb.pod4().to_string();
    let args = ["eth0", node_mac.as_str(), pod4.as_str(), dst.as_str()];
    let p = payload("pkt-clsact");
    let r = packet_send(Some(&b.cg.path), Some(&b.sb.pod), &args, &p, &[]);
    b.assert_refused("AF_PACKET through the clsact filter", &r, &p, &dst);
    let p = payload("pkt-clsact-outside");
    let r = packet_send(None, Some(&b.sb.pod), &args, &p, &[]);
    assert!(ok(&r), "{r}");
    assert!(
        b.sb.wait_for(Duration::from_secs(5), |rec| rec.with_payload(&p) > 0),
        "the control frame never arrived: {:?}",
        b.sb.received.all()
    );
    // The daemon stops: the filter keeps enforcing.
    b.daemon.kill(libc::SIGTERM);
    assert_eq!(
        backstop_filters(&pod, "eth0"),
        before,
        "the filter went with the daemon:\n{}",
        b.daemon.log_text()
    );
    let p = payload("pkt-clsact-stopped");
    let r = packet_send(Some(&b.cg.path), Some(&b.sb.pod), &args, &p, &[]);
    assert!(r["pid"].as_u64().is_some(), "the attempt did not run: {r}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        b.sb.received.with_payload(&p),
        0,
        "a frame left while the daemon was stopped"
    );
    // A restart loads the program anew and puts it into the same filter.
    let policy = b.daemon.dir.join("policy.yaml");
    b.daemon.spawn(Some(&policy));
    let t0 = Instant::now();
    loop {
        let now = backstop_filters(&pod, "eth0");
        if now.len() == 1 && now != before {
            break;
        }
        assert!(
            now.len() <= 1 && t0.elapsed() < Duration::from_secs(10),
            "the filter was not replaced in place: {before:?} → {now:?}\n{}",
            b.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    b.wait_covered(ino, "eth0");
    let p = payload("pkt-clsact-restarted");
    let r = packet_send(Some(&b.cg.path), Some(&b.sb.pod), &args, &p, &[]);
    b.assert_refused("AF_PACKET after the restart", &r, &p, &dst);
    // `uninstall` (the daemon stopped, the identity still there) enters the namespace.
    b.daemon.kill(libc::SIGTERM);
    let out = Command::new(chokepoint_bin())
        .arg("uninstall")
        .arg("--bpffs")
        .arg(&b.daemon.bpffs)
        .output()
        .expect("uninstall");
    assert!(out.status.success(), "uninstall: {out:?}");
    for iface in ["eth0", "lo"] {
        let f = backstop_filters(&pod, iface);
        assert!(f.is_empty(), "{iface}: filters left after uninstall: {f:?}");
        assert!(
            !has_clsact(&pod, iface),
            "{iface}: the qdisc the agent added was left after uninstall"
        );
    }
}
