//! `cp_skb_ingress` (`cgroup_skb/ingress`): who opens connections to an identity, and which UDP
//! peers sent to it.

use core::ffi::c_void;

use aya_ebpf::{
    macros::cgroup_skb,
    programs::{SkBuffContext, sk_buff::SkBuff},
};
use chokepoint_common::{
    AcceptVal, FlowKey, PROTO_TCP, PROTO_UDP, ReplyKey, ReplyVal, hook, verdict,
};

use super::{TCP_ACK, TCP_LISTEN, TCP_SYN, ingress_allows, parse, refuse};
use crate::{
    decide::{Dest, decide},
    dnsans,
    helpers::{now_ns, skb_ancestor_cgroup_id, skb_cgroup_id, skb_cookie, skb_ethertype, skb_sock},
    ident::{config, resolve},
    maps::{CP_ACCEPT, CP_REPLY},
    sktag::{cache_covers, sock_tag},
};

// Private: aya's macro exports the program under its own name (`no_mangle`, in its section).
#[cgroup_skb(ingress)]
fn cp_skb_ingress(ctx: SkBuffContext) -> i32 {
    i32::from(try_ingress(&ctx.skb))
}

#[inline(always)]
fn try_ingress(skb: &SkBuff) -> bool {
    let Some(cfg) = config() else { return true };
    let sk = skb_sock(skb);
    if sk.is_null() {
        return true;
    }
    let cgid = skb_cgroup_id(skb);
    if cgid == 0 {
        return true;
    }
    let id = resolve(&cfg, cgid, |l| skb_ancestor_cgroup_id(skb, l));
    if id.ident == 0 {
        return true;
    }
    let ethertype = skb_ethertype(skb);
    // Inbound traffic that cannot be parsed is not egress: the egress hooks judge any answer.
    let Some(h) = parse(skb, 0, ethertype) else {
        return true;
    };
    if h.proto == PROTO_TCP {
        // SAFETY: a non-null socket pointer from the context; the verifier checks the access.
        if h.flags & (TCP_SYN | TCP_ACK) != TCP_SYN || unsafe { (*sk).state } != TCP_LISTEN {
            return true;
        }
        if !ingress_allows(&cfg, &id, h.family, &h.src) {
            return refuse(&cfg, &id, skb, cgid, &h, hook::SKB_INGRESS);
        }
        let mut val = AcceptVal {
            seen_ns: now_ns(),
            cgroup_id: cgid,
            ident: id.ident,
            mode: id.mode,
            ..AcceptVal::default()
        };
        let tag = sock_tag(sk.cast::<c_void>(), false);
        if !tag.is_null() {
            // SAFETY: a non-null socket-storage pointer stays valid while the program holds
            // the socket (the whole run).
            let t = unsafe { &*tag };
            if t.cgroup_id != 0 {
                val.cgroup_id = t.cgroup_id;
            }
            val.pid_tgid = t.pid_tgid;
            val.uid_gid = t.uid_gid;
            val.comm = t.comm;
        }
        let key = FlowKey {
            family: h.family,
            peer_port: h.sport,
            local_port: h.dport,
            peer_addr: h.src,
            local_addr: h.dst,
            ..FlowKey::default()
        };
        let _ = CP_ACCEPT.insert(key, val, 0);
        return true;
    }
    if h.proto != PROTO_UDP {
        return true;
    }
    let peer = Dest {
        family: h.family,
        proto: PROTO_UDP,
        port: h.sport,
        addr: h.src,
    };
    let tag = sock_tag(sk.cast::<c_void>(), false);
    if !tag.is_null() {
        // SAFETY: a non-null socket-storage pointer, valid for the run (as above).
        let t = unsafe { &*tag };
        if t.verdict == verdict::ALLOW && cache_covers(t, cfg.epoch(), &peer, true) {
            // The answer of a peer this socket is allowed to send to.
            if h.sport == dnsans::DNS_PORT {
                dnsans::capture(skb, &cfg, &id, cgid, h.family, &h.src, h.l4 + 8);
            }
            return true;
        }
    }
    let key = ReplyKey {
        cookie: skb_cookie(skb),
        addr: h.src,
        port: h.sport,
        family: h.family,
        proto: PROTO_UDP,
        _pad: 0,
    };
    if let Some(e) = CP_REPLY.get_ptr_mut(key) {
        // SAFETY: a pointer into the map's element, valid during the run (RCU); a racing
        // writer of the same word can only store another recent time.
        unsafe { (*e).seen_ns = now_ns() };
        return true;
    }
    if decide(&cfg, &id, &peer).verdict == verdict::ALLOW {
        if h.sport == dnsans::DNS_PORT {
            dnsans::capture(skb, &cfg, &id, cgid, h.family, &h.src, h.l4 + 8);
        }
        return true;
    }
    if !ingress_allows(&cfg, &id, h.family, &h.src) {
        return refuse(&cfg, &id, skb, cgid, &h, hook::SKB_INGRESS);
    }
    let val = ReplyVal {
        seen_ns: now_ns(),
        epoch: cfg.epoch(),
        recorded: 0,
        _pad: [0; 3],
    };
    let _ = CP_REPLY.insert(key, val, 0);
    true
}
