//! Kernel features the programs depend on, detected at start and reported by `status` and the
//! metrics: whether the BPF LSM is active (and our `socket_create` program attached), and how the
//! TC backstop is attached (tcx or the clsact fallback). Programs without a fallback make the
//! start fail with a message naming the kernel feature they need ([`needs`]).

use std::{fs, path::Path};

use super::tc::TcMode;

/// What this kernel offers the agent.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Features {
    /// `uname -r`.
    pub release: String,
    /// Active LSMs (`/sys/kernel/security/lsm`), empty when securityfs is unreadable.
    pub lsm: Vec<String>,
    /// `bpf` is among the active LSMs.
    pub bpf_lsm_active: bool,
    /// Our `socket_create` LSM program is attached (and, with `bpf_lsm_active`, runs).
    pub lsm_program_attached: bool,
    /// How the TC backstop is attached on the `--tc-iface` interfaces (when there are any; the
    /// per-netns backstop names its mode per namespace in the identities' `backstop.tc_netns`).
    pub tc: Option<TcMode>,
    /// `--tc-mode` when given (`None`: tcx where the kernel has it, else clsact).
    pub tc_mode_forced: Option<TcMode>,
    /// Who refuses or drops packet (AF_PACKET) and other non-IP sockets of identities.
    pub packet_sockets: PacketGuard,
}

/// Coverage of packet sockets.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PacketGuard {
    /// `lsm` (refused at `socket()`), `tc_backstop` (frames dropped on the listed `--tc-iface`
    /// interfaces) or `tc_backstop_netns` (frames dropped on every interface of each network
    /// namespace an identity lives in, through tcx links or clsact filters; see
    /// `bpf/backstop/`).
    pub by: &'static str,
    /// Interfaces whose TC backstop drops identities' frames (`--tc-iface`).
    pub interfaces: Vec<String>,
    /// The compat syscall guard (`cp_compat_sys`): 32-bit `setsockopt` and compat io_uring
    /// rings skip `cgroup/setsockopt`, which keeps packet-socket frames on the TC path.
    pub compat: super::compat::CompatGuard,
}

/// Reads the active LSM list, mounting securityfs when it is not mounted.
fn active_lsms() -> Vec<String> {
    let path = Path::new("/sys/kernel/security/lsm");
    if !path.exists() {
        // Failure leaves the list empty.
        let _ = rustix::mount::mount(
            "securityfs",
            "/sys/kernel/security",
            "securityfs",
            rustix::mount::MountFlags::empty(),
            None,
        );
    }
    fs::read_to_string(path)
        .map(|s| {
            s.trim()
                .split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Features after the programs attached.
pub fn detect(
    lsm_program_attached: bool,
    tc: Option<TcMode>,
    tc_mode_forced: Option<TcMode>,
    tc_ifaces: &[String],
    compat: super::compat::CompatGuard,
) -> Features {
    let lsm = active_lsms();
    let bpf_lsm_active = lsm.iter().any(|l| l == "bpf");
    let by = if lsm_program_attached && bpf_lsm_active {
        "lsm"
    } else if !tc_ifaces.is_empty() {
        "tc_backstop"
    } else {
        // No --tc-iface: the per-netns backstop attaches to every interface of each namespace an
        // identity lives in (`status` lists them per identity under `backstop.tc_netns`).
        "tc_backstop_netns"
    };
    Features {
        release: release(),
        lsm,
        bpf_lsm_active,
        lsm_program_attached,
        tc: if tc_ifaces.is_empty() { None } else { tc },
        tc_mode_forced,
        packet_sockets: PacketGuard {
            by,
            interfaces: if by == "lsm" {
                Vec::new()
            } else {
                tc_ifaces.to_vec()
            },
            compat,
        },
    }
}

/// The kernel feature a program needs (named when it fails to load or attach).
pub fn needs(program: &str) -> &'static str {
    use chokepoint_common::names::{
        PROG_COMPAT_KPROBE, PROG_COMPAT_SYS, PROG_CONNECT4, PROG_CONNECT6, PROG_GETPEER4,
        PROG_LSM_SOCKET, PROG_RECVMSG4, PROG_SENDMSG4, PROG_SENDMSG6, PROG_SETSOCKOPT,
        PROG_SKB_EGRESS, PROG_SKB_INGRESS, PROG_SOCK_CREATE, PROG_SOCK_OPS, PROG_TC_EGRESS,
    };
    match program {
        PROG_SOCK_CREATE => "cgroup/sock_create with socket storage (Linux 5.2+)",
        PROG_LSM_SOCKET => "BPF LSM (CONFIG_BPF_LSM, `bpf` in lsm=, kernel BTF; Linux 5.7+)",
        PROG_CONNECT4 | PROG_CONNECT6 => "cgroup/connect4 and connect6 (Linux 4.17+)",
        PROG_SENDMSG4 | PROG_SENDMSG6 => "cgroup/sendmsg4 and sendmsg6 (Linux 4.18+)",
        PROG_SKB_EGRESS => "cgroup_skb/egress with ancestor cgroup ids (Linux 5.7+)",
        PROG_SKB_INGRESS => "cgroup_skb/ingress with socket storage (Linux 5.7+)",
        PROG_TC_EGRESS => {
            "a TC classifier: tcx (Linux 6.6+) or a clsact qdisc with cls_bpf (sch_ingress, cls_bpf modules)"
        }
        PROG_SOCK_OPS => "sockops with socket storage (Linux 5.10+)",
        PROG_SETSOCKOPT => "cgroup/setsockopt (Linux 5.3+)",
        PROG_COMPAT_SYS => {
            "raw_tracepoint/sys_enter with bpf_send_signal (Linux 5.3+; x86-64 thread_info of 5.11+)"
        }
        PROG_COMPAT_KPROBE => "kprobes (CONFIG_KPROBES) with pinnable perf links (Linux 5.15+)",
        PROG_RECVMSG4 | PROG_GETPEER4 => "cgroup/recvmsg4 and getpeername4 (Linux 5.8+)",
        _ => "a BPF program type of this kernel",
    }
}
