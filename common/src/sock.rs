//! The socket tag (socket local storage) and the flow record of the ring buffer.

#[cfg(doc)]
use crate::{hook, names, reason, verdict};
/// Socket local storage ([`names::SKTAG`]): who owns the socket and the cached verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockTag {
    /// cgroup id the socket was created in.
    pub cgroup_id: u64,
    /// Task id of the grant behind the cached verdict, 0 when none.
    pub task: u64,
    /// Grant expiry behind the cached verdict (boot ns), 0 when not a grant.
    pub grant_expires_ns: u64,
    /// pid/tgid of the creator (`bpf_get_current_pid_tgid`).
    pub pid_tgid: u64,
    /// uid/gid of the creator.
    pub uid_gid: u64,
    /// Cached destination address (IPv4 in the first 4 bytes).
    pub daddr: [u8; 16],
    /// Creator's command name.
    pub comm: [u8; 16],
    /// Epoch of `ident`/`mode`.
    pub ident_epoch: u32,
    /// Identity id, 0 for none.
    pub ident: u32,
    /// Epoch of the cached verdict; 0 means no verdict.
    pub verdict_epoch: u32,
    /// Rule index of the cached verdict.
    pub rule: u32,
    /// Cached destination port (host order).
    pub dport: u16,
    /// Identity mode.
    pub mode: u8,
    /// Cached verdict.
    pub verdict: u8,
    /// Cached reason.
    pub reason: u8,
    /// Cached protocol.
    pub proto: u8,
    /// Cached family (4 or 6).
    pub family: u8,
    /// Set once the socket has been tagged by `sock_create`.
    pub tagged: u8,
    /// 1 for a TCP socket accepted from a listener of an identity (set by `sockops` when the
    /// child is established, cleared by any connect): its traffic is a reply.
    pub passive: u8,
    /// Padding.
    pub _pad: [u8; 6],
}

/// A flow decision record as written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns` at the decision.
    pub time_ns: u64,
    /// Socket cookie (0 when unavailable).
    pub cookie: u64,
    /// cgroup id of the socket or task.
    pub cgroup_id: u64,
    /// pid (upper 32 bits: tgid) as `bpf_get_current_pid_tgid` returns it.
    pub pid_tgid: u64,
    /// uid (lower 32 bits) and gid.
    pub uid_gid: u64,
    /// Task id of the grant, 0 when none.
    pub task: u64,
    /// Source address (IPv4 in the first 4 bytes; zero when unknown).
    pub saddr: [u8; 16],
    /// Destination address.
    pub daddr: [u8; 16],
    /// Command name.
    pub comm: [u8; 16],
    /// Identity id.
    pub ident: u32,
    /// Policy generation the decision was made under.
    pub generation: u32,
    /// Rule index (or gateway index) behind an allow.
    pub rule: u32,
    /// Source port (host order).
    pub sport: u16,
    /// Destination port (host order).
    pub dport: u16,
    /// 4 or 6 (0 for non-IP sockets).
    pub family: u8,
    /// IP protocol number; for socket creation the socket type is in `sock_type`.
    pub proto: u8,
    /// [`verdict`] code.
    pub verdict: u8,
    /// [`reason`] code.
    pub reason: u8,
    /// [`hook`] code.
    pub hook: u8,
    /// Socket type for socket-creation records (SOCK_RAW = 3, …), else 0.
    pub sock_type: u8,
    /// Address family number for socket-creation records (AF_PACKET = 17, …), else 0.
    pub sock_family: u8,
    /// Identity mode.
    pub mode: u8,
}

assert_size!(SockTag, 104);
assert_size!(Event, 120);
