//! Chokepoint kernel programs.
//!
//! | program          | hook                         | minimum kernel |
//! |------------------|------------------------------|----------------|
//! | `cp_sock_create` | `cgroup/sock_create`         | 5.2 (sk storage) |
//! | `cp_lsm_socket`  | BPF LSM `socket_create`      | 5.7            |
//! | `cp_connect4/6`  | `cgroup/connect4`, `connect6`| 4.17           |
//! | `cp_sendmsg4/6`  | `cgroup/sendmsg4`, `sendmsg6`| 4.18           |
//! | `cp_skb_egress`  | `cgroup_skb/egress`          | 5.7 (skb ancestor cgroup id in cgroup_skb) |
//! | `cp_tc_egress`   | TC via tcx, else clsact      | 6.6 (tcx), 4.5 (clsact) |
//! | `cp_sock_ops`    | `sockops` (attestation, accepted sockets) | 5.10 (sk storage in sockops) |
//! | `cp_skb_ingress` | `cgroup_skb/ingress` (who opens connections) | 5.7 |
//! | `cp_setsockopt`  | `cgroup/setsockopt` (options that skip TC) | 5.3 |
//! | `cp_compat_kprobe` | kprobes on the compat syscall entries (32-bit syscalls that skip `cgroup/setsockopt`) | 5.15 (pinnable perf links; x86-64) |
//! | `cp_compat_sys`  | `raw_tracepoint/sys_enter` (the same, where kprobes are missing) | 5.11 (x86-64) |
//! | `cp_recvmsg4`    | `cgroup/recvmsg4` (DNS proxy replies) | 5.2             |
//! | `cp_getpeername4`| `cgroup/getpeername4` (DNS proxy peer) | 5.8            |
//!
//! Every program calls the one decision function in [`decide`]; a program only extracts the
//! destination from its context and applies the verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod compat;
#[cfg(target_arch = "bpf")]
mod decide;
#[cfg(target_arch = "bpf")]
mod dnsans;
#[cfg(target_arch = "bpf")]
mod fqdn;
#[cfg(target_arch = "bpf")]
mod helpers;
#[cfg(target_arch = "bpf")]
mod ident;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod record;
#[cfg(target_arch = "bpf")]
mod reply;
#[cfg(target_arch = "bpf")]
mod skb;
#[cfg(target_arch = "bpf")]
mod sktag;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod sock_addr;
#[cfg(target_arch = "bpf")]
mod sock_ops;
#[cfg(target_arch = "bpf")]
mod sockopt;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// Host builds (cargo check/clippy on the workspace) get an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
