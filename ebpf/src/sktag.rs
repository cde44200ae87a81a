//! The socket tag (socket-local storage): who created the socket, and the verdict cached for its
//! last destination.

use core::{ffi::c_void, ptr};

use aya_ebpf::{bindings::BPF_SK_STORAGE_GET_F_CREATE, helpers::generated::bpf_sk_storage_get};
use chokepoint_common::{SockTag, verdict};

use crate::{
    decide::{Decision, Dest},
    maps::CP_SKTAG,
};

/// Gets (optionally creating) the socket tag of `sk` (a `struct bpf_sock *`-compatible pointer).
#[inline(always)]
pub(crate) fn sock_tag(sk: *mut c_void, create: bool) -> *mut SockTag {
    let flags = if create {
        u64::from(BPF_SK_STORAGE_GET_F_CREATE)
    } else {
        0
    };
    let map = ptr::from_ref(&CP_SKTAG).cast_mut().cast::<c_void>();
    // SAFETY: `map` is the socket-storage map this object defines and `sk` a socket pointer the
    // hook got from the kernel (the verifier refuses any other pointer type); no initial value
    // is passed, so the helper zero-fills a created entry.
    unsafe { bpf_sk_storage_get(map, sk, ptr::null_mut(), flags) }.cast::<SockTag>()
}

/// True when the cached verdict in `tag` covers `d` under the current epoch.
#[inline(always)]
pub(crate) fn cache_covers(tag: &SockTag, epoch: u32, d: &Dest, port_known: bool) -> bool {
    tag.verdict_epoch == epoch
        && tag.family == d.family
        && tag.proto == d.proto
        && (!port_known || tag.dport == d.port)
        && tag.daddr == d.addr
}

/// True when `tag` holds an allowed verdict for the same destination (any epoch): a re-decision
/// that now denies is a revocation, and one that still allows is the same flow.
#[inline(always)]
pub(crate) fn same_flow_was_allowed(tag: &SockTag, d: &Dest) -> bool {
    tag.verdict_epoch != 0
        && tag.verdict != verdict::DENY
        && tag.family == d.family
        && tag.proto == d.proto
        && tag.dport == d.port
        && tag.daddr == d.addr
}

/// Stores a decision in the socket's cache.
#[inline(always)]
pub(crate) fn cache_store(tag: &mut SockTag, epoch: u32, d: &Dest, dec: &Decision) {
    tag.verdict_epoch = epoch;
    tag.family = d.family;
    tag.proto = d.proto;
    tag.dport = d.port;
    tag.daddr = d.addr;
    tag.verdict = dec.verdict;
    tag.reason = dec.reason;
    tag.rule = dec.rule;
    tag.task = dec.task;
    tag.grant_expires_ns = dec.expires_ns;
}
