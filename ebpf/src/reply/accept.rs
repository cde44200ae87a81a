//! `sockops` `PASSIVE_ESTABLISHED_CB`: the child socket of an admitted SYN is marked accepted.

use core::ffi::c_void;

use aya_ebpf::programs::SockOpsContext;

use crate::{
    maps::CP_ACCEPT,
    sktag::sock_tag,
    sock_ops::{End, flow_key},
};

/// `sockops` `PASSIVE_ESTABLISHED_CB`: marks the child of an admitted SYN as accepted. A socket
/// that already has a verdict went through connect (a simultaneous open reaches this callback
/// too) and stays an egress socket.
#[inline(always)]
pub(crate) fn accepted(ctx: &SockOpsContext) {
    let key = flow_key(ctx, End::This);
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
