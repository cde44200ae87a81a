//! Hook codes carried in records.

/// `cgroup/sock_create`.
pub const SOCK_CREATE: u8 = 1;
/// `cgroup/connect4`.
pub const CONNECT4: u8 = 2;
/// `cgroup/connect6`.
pub const CONNECT6: u8 = 3;
/// `cgroup/sendmsg4`.
pub const SENDMSG4: u8 = 4;
/// `cgroup/sendmsg6`.
pub const SENDMSG6: u8 = 5;
/// `cgroup_skb/egress`.
pub const SKB: u8 = 6;
/// TC egress (tcx).
pub const TC: u8 = 7;
/// LSM `socket_create`.
pub const LSM_SOCKET: u8 = 8;
/// `cgroup_skb/ingress`.
pub const SKB_INGRESS: u8 = 9;
/// `cgroup/setsockopt`.
pub const SETSOCKOPT: u8 = 10;
/// `raw_tracepoint/sys_enter` (the compat syscall guard).
pub const COMPAT_SYSCALL: u8 = 11;

/// Name of a hook code as it appears in records.
pub const fn name(code: u8) -> &'static str {
    match code {
        SOCK_CREATE => "sock_create",
        CONNECT4 => "connect4",
        CONNECT6 => "connect6",
        SENDMSG4 => "sendmsg4",
        SENDMSG6 => "sendmsg6",
        SKB => "skb",
        TC => "tc",
        LSM_SOCKET => "lsm_socket_create",
        SKB_INGRESS => "skb_ingress",
        SETSOCKOPT => "setsockopt",
        COMPAT_SYSCALL => "compat_syscall",
        _ => "unknown",
    }
}
