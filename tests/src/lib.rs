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
//!
//! Parts: [`host`](Cgroup) (cgroups, network namespaces, host forwarding), `process` (probes,
//! bounded waits), `sandbox` ([`Sandbox`]), `daemon` ([`Daemon`], [`Fixture`]), `http`, [`sweep`]
//! (leftovers of interrupted runs), and the Kubernetes parts [`kube`], [`kube_node`], [`kubelet`].

#![warn(missing_docs)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

mod daemon;
pub mod dns_server;
mod host;
mod http;
pub mod kube;
pub mod kube_node;
pub mod kubelet;
mod process;
mod sandbox;
pub mod sweep;

pub use daemon::{Daemon, Fixture, metric};
pub use host::{Cgroup, Netns};
pub use http::{HttpResponse, attest, http_unix, read_response};
pub use process::{
    Proc, Received, bpf_lsm_in_kernel, bpf_lsm_required, eperm, in_cgroup, ok, probe, run_bounded,
    spawn_probe,
};
pub use sandbox::{Sandbox, free_port};

/// Where test processes keep host-wide coordination files (sandbox slots, the forwarding count).
pub(crate) const SLOT_DIR: &str = "/run/chokepoint-tests";

/// The gateway's port on the world server.
pub const GATEWAY_PORT: u16 = 8080;
/// A TCP port on the world server that no policy allows.
pub const OTHER_TCP: u16 = 9000;
/// DNS (UDP and TCP) on the world server.
pub const DNS: u16 = 53;
/// QUIC (UDP 443) on the world server.
pub const QUIC: u16 = 443;
/// A UDP port on the world server that no policy allows.
pub const OTHER_UDP: u16 = 9001;

pub(crate) static COUNTER: AtomicU32 = AtomicU32::new(0);

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

/// A payload unique to this attempt.
pub fn payload(what: &str) -> String {
    unique(what)
}
