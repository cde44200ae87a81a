//! `sockops` `PASSIVE_ESTABLISHED_CB`: the child socket of an admitted SYN is marked accepted.

use core::ffi::c_void;

use aya_ebpf::programs::SockOpsContext;
use chokepoint_common::FlowKey;

use super::AF_INET;
use crate::{maps::CP_ACCEPT, sktag::sock_tag};

fn v6_bytes(w: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

/// IPv4-mapped IPv6 → IPv4 (first four bytes), returning the family.
fn norm(a: [u8; 16]) -> (u8, [u8; 16]) {
    let mapped = a[..10].iter().all(|&b| b == 0) && a[10] == 0xff && a[11] == 0xff;
    if mapped {
        let mut o = [0u8; 16];
        o[..4].copy_from_slice(&a[12..16]);
        (4, o)
    } else {
        (6, a)
    }
}

/// `sockops` `PASSIVE_ESTABLISHED_CB`: marks the child of an admitted SYN as accepted. A socket
/// that already has a verdict went through connect (a simultaneous open reaches this callback
/// too) and stays an egress socket.
#[inline(always)]
pub(crate) fn accepted(ctx: &SockOpsContext) {
    let mut key = FlowKey {
        peer_port: u16::from_be((ctx.remote_port() >> 16) as u16),
        local_port: ctx.local_port() as u16,
        ..FlowKey::default()
    };
    if ctx.family() == AF_INET {
        key.family = 4;
        key.peer_addr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
        key.local_addr[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
    } else {
        let (f, peer) = norm(v6_bytes(ctx.remote_ip6()));
        let (_, local) = norm(v6_bytes(ctx.local_ip6()));
        key.family = f;
        key.peer_addr = peer;
        key.local_addr = local;
    }
    // SAFETY: plain integers, copied at once; the entry is written only by `cp_skb_ingress` for
    // the SYN of this very 4-tuple.
    let Some(v) = (unsafe { CP_ACCEPT.get(key) }).copied() else {
        return;
    };
    let _ = CP_ACCEPT.remove(key);
    // SAFETY: `ctx.ops` is the program's context pointer, valid for the whole run; `sk` is the
    // member of the union set in an established callback.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    let existing = sock_tag(sk.cast::<c_void>(), false);
    // SAFETY: a non-null socket-storage pointer, valid for the run.
    if !existing.is_null() && unsafe { (*existing).verdict_epoch } != 0 {
        return;
    }
    let tag = sock_tag(sk.cast::<c_void>(), true);
    if tag.is_null() {
        return;
    }
    // SAFETY: a non-null socket-storage pointer, valid for the run; the socket was just
    // established, so its own syscalls do not run meanwhile.
    let t = unsafe { &mut *tag };
    t.cgroup_id = v.cgroup_id;
    t.pid_tgid = v.pid_tgid;
    t.uid_gid = v.uid_gid;
    t.comm = v.comm;
    t.ident = v.ident;
    t.mode = v.mode;
    // Epoch 0: the packet backstop resolves the identity afresh from the socket's cgroup.
    t.ident_epoch = 0;
    t.passive = 1;
}
