//! Safe wrappers over the kernel helpers and context reads that several programs share, so the
//! reason each call is sound is written once. All are inlined into their program.

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_socket_cookie,
        bpf_ktime_get_boot_ns, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
    },
    programs::{SockAddrContext, sk_buff::SkBuff},
};

/// The boot-clock time in ns.
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: the helper takes no arguments and only reads the clock.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// The cgroup (v2) id of the current task.
#[inline(always)]
pub(crate) fn current_cgroup_id() -> u64 {
    // SAFETY: the helper takes no arguments and only reads the current task's cgroup.
    unsafe { bpf_get_current_cgroup_id() }
}

/// The id of the current task's cgroup ancestor at `level` (0 past the cgroup's depth).
#[inline(always)]
pub(crate) fn current_ancestor_cgroup_id(level: i32) -> u64 {
    // SAFETY: a plain integer argument; the helper answers 0 for a level out of range.
    unsafe { bpf_get_current_ancestor_cgroup_id(level) }
}

/// The cgroup id of the socket that sends or receives `skb` (0 without one).
#[inline(always)]
pub(crate) fn skb_cgroup_id(skb: &SkBuff) -> u64 {
    // SAFETY: `skb.skb` is the program's context pointer, valid for the whole run; the helper
    // only reads the socket attached to it.
    unsafe { bpf_skb_cgroup_id(skb.skb) }
}

/// The id of the ancestor at `level` of the cgroup of `skb`'s socket (0 past its depth).
#[inline(always)]
pub(crate) fn skb_ancestor_cgroup_id(skb: &SkBuff, level: i32) -> u64 {
    // SAFETY: `skb.skb` is the program's context pointer, valid for the whole run; the level is
    // a plain integer the helper range-checks.
    unsafe { bpf_skb_ancestor_cgroup_id(skb.skb, level) }
}

/// The socket cookie of `skb`'s socket.
#[inline(always)]
pub(crate) fn skb_cookie(skb: &SkBuff) -> u64 {
    // SAFETY: `skb.skb` is the program's context pointer, valid for the whole run (the helper's
    // skb variant takes the context itself).
    unsafe { bpf_get_socket_cookie(skb.skb.cast()) }
}

/// The socket `skb` belongs to (null when it has none: forwarded or kernel-made).
#[inline(always)]
pub(crate) fn skb_sock(skb: &SkBuff) -> *mut bpf_sock {
    // SAFETY: `skb.skb` is the program's context pointer, valid for the whole run; the verifier
    // rewrites this field read into a checked load of the skb's socket.
    unsafe { (*skb.skb).__bindgen_anon_2.sk }
}

/// `skb`'s ethertype (host order).
#[inline(always)]
pub(crate) fn skb_ethertype(skb: &SkBuff) -> u16 {
    // SAFETY: `skb.skb` is the program's context pointer, valid for the whole run.
    u16::from_be(unsafe { (*skb.skb).protocol } as u16)
}

/// The cookie of the socket a `cgroup/sock_addr` program runs for.
#[inline(always)]
pub(crate) fn sock_addr_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: `ctx.sock_addr` is the program's context pointer, valid for the whole run (the
    // helper's sock_addr variant takes the context itself).
    unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) }
}
