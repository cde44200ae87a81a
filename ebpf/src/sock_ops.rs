//! `sockops`: the kernel-attested record of live gateway connections. When a TCP connection of
//! an identity that was allowed as a gateway connection is established, its 4-tuple (as the
//! gateway sees it) maps to who is behind it; the entry goes when the connection closes. When a
//! connection a peer opened to an identity's listener is established, the child socket is
//! marked accepted ([`crate::reply::accepted`]).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use chokepoint_common::{AttestVal, FlowKey, reason, verdict};

use crate::{helpers::now_ns, ident::config, maps::CP_ATTEST, sktag::sock_tag};

const TCP_CLOSE: u32 = 7;
const AF_INET: u32 = 2;

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

/// Which end of a connection a [`FlowKey`] is seen from.
#[derive(Clone, Copy)]
pub(crate) enum End {
    /// This socket's: it is `local` (`CP_ACCEPT`, an identity's accepted child socket).
    This,
    /// The remote end's: it is `local` (`CP_ATTEST`, the gateway's view of an identity's
    /// connection).
    Remote,
}

/// The connection of the program's socket as a [`FlowKey`] seen from `end` (IPv4-mapped
/// addresses normalised; the family is that of the `peer` address).
pub(crate) fn flow_key(ctx: &SockOpsContext, end: End) -> FlowKey {
    let this_port = ctx.local_port() as u16;
    // `remote_port` holds the big-endian port in its upper 16 bits (sock_ops ABI).
    let remote_port = u16::from_be((ctx.remote_port() >> 16) as u16);
    let mut this = [0u8; 16];
    let mut remote = [0u8; 16];
    let (this_family, remote_family) = if ctx.family() == AF_INET {
        this[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
        remote[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
        (4, 4)
    } else {
        let (tf, t) = norm(v6_bytes(ctx.local_ip6()));
        let (rf, r) = norm(v6_bytes(ctx.remote_ip6()));
        this = t;
        remote = r;
        (tf, rf)
    };
    match end {
        End::This => FlowKey {
            family: remote_family,
            peer_port: remote_port,
            local_port: this_port,
            peer_addr: remote,
            local_addr: this,
            ..FlowKey::default()
        },
        End::Remote => FlowKey {
            family: this_family,
            peer_port: this_port,
            local_port: remote_port,
            peer_addr: this,
            local_addr: remote,
            ..FlowKey::default()
        },
    }
}

#[sock_ops]
fn cp_sock_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        let Some(cfg) = config() else { return 1 };
        // SAFETY: `ctx.ops` is the program's context pointer, valid for the whole run; `sk` is
        // the member of the union set in an established callback.
        let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
        if sk.is_null() {
            return 1;
        }
        let tag = sock_tag(sk.cast::<c_void>(), false);
        if tag.is_null() {
            return 1;
        }
        // SAFETY: a non-null socket-storage pointer stays valid while the program holds the
        // socket (the whole run).
        let t = unsafe { &*tag };
        if t.ident == 0
            || t.verdict != verdict::ALLOW
            || (t.reason != reason::GATEWAY && t.reason != reason::GRANT)
        {
            return 1;
        }
        let val = AttestVal {
            since_ns: now_ns(),
            // SAFETY: the context pointer of a `sockops` program, which the helper takes.
            cookie: unsafe { bpf_get_socket_cookie(ctx.ops.cast()) },
            cgroup_id: t.cgroup_id,
            pid_tgid: t.pid_tgid,
            task: t.task,
            ident: t.ident,
            generation: cfg.generation(),
        };
        let k = flow_key(&ctx, End::Remote);
        let _ = CP_ATTEST.insert(k, val, 0);
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    } else if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        crate::reply::accepted(&ctx);
    } else if op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == TCP_CLOSE {
        let k = flow_key(&ctx, End::Remote);
        let _ = CP_ATTEST.remove(k);
    }
    1
}
