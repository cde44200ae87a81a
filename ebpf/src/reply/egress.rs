//! What the egress hooks ask: is this packet a SYN-ACK of a request socket, a packet of an
//! accepted socket, or a UDP answer to a peer that sent first.

use aya_ebpf::programs::sk_buff::SkBuff;
use chokepoint_common::{
    Config, PROTO_TCP, PROTO_UDP, REPLY_WINDOW_NS, ReplyKey, SockTag, reason, verdict,
};

use super::{Hdr, TCP_ACK, TCP_LISTEN, TCP_NEW_SYN_RECV, TCP_SYN, ingress_allows, parse, refuse};
use crate::{
    decide::{Dest, Ident, denied},
    helpers::{now_ns, skb_ancestor_cgroup_id, skb_cgroup_id, skb_sock},
    ident::resolve,
    maps::CP_REPLY,
};

/// A SYN-ACK sent from a request socket of a listener: `None` when the packet's socket is not a
/// request socket, else whether it passes (its peer is admitted by `ingress.allowFrom`). Request
/// sockets exist only for SYNs the kernel received, so a workload cannot make one up.
#[inline(always)]
pub(crate) fn synack(
    cfg: &Config,
    skb: &SkBuff,
    l3: usize,
    ethertype: u16,
    hook_code: u8,
) -> Option<bool> {
    let sk = skb_sock(skb);
    if sk.is_null() {
        return None;
    }
    // At TC the packet's socket is the request socket; `cgroup_skb` runs such packets with the
    // listener in its place. A listening socket sends nothing else (no data, no RST).
    // SAFETY: a non-null socket pointer from the context; the verifier checks the access.
    let state = unsafe { (*sk).state };
    if state != TCP_NEW_SYN_RECV && state != TCP_LISTEN {
        return None;
    }
    // The listener's cgroup (the helper goes from the request socket to its listener).
    let cgid = skb_cgroup_id(skb);
    if cgid == 0 {
        return Some(true);
    }
    let id = resolve(cfg, cgid, |l| skb_ancestor_cgroup_id(skb, l));
    if id.ident == 0 {
        return Some(true);
    }
    let h = parse(skb, l3, ethertype)?;
    if h.proto != PROTO_TCP || h.flags & (TCP_SYN | TCP_ACK) != (TCP_SYN | TCP_ACK) {
        return None;
    }
    if ingress_allows(cfg, &id, h.family, &h.dst) {
        return Some(true);
    }
    // Recorded with the peer as the source, as at ingress.
    let peer_view = Hdr {
        family: h.family,
        proto: h.proto,
        flags: h.flags,
        sport: h.dport,
        dport: h.sport,
        src: h.dst,
        dst: h.src,
        l4: h.l4,
    };
    Some(refuse(cfg, &id, skb, cgid, &peer_view, hook_code))
}

/// The verdict for a packet of an accepted TCP socket to its peer: `None` when the socket is
/// not one, else (verdict, reason, record it). Recorded once per flow; a change of
/// `ingress.allowFrom` (any new epoch) is checked again.
#[inline(always)]
pub(crate) fn passive(
    cfg: &Config,
    id: &Ident,
    t: &mut SockTag,
    d: &Dest,
) -> Option<(u8, u8, bool)> {
    if t.passive != 1 || d.proto != PROTO_TCP {
        return None;
    }
    let epoch = cfg.epoch();
    let same_peer = t.family == d.family && t.dport == d.port && t.daddr == d.addr;
    if same_peer && t.verdict_epoch == epoch && t.reason == reason::REPLY {
        return Some((verdict::ALLOW, reason::REPLY, false));
    }
    if !ingress_allows(cfg, id, d.family, &d.addr) {
        let dec = denied(id, reason::INGRESS_DENIED);
        return Some((dec.verdict, dec.reason, true));
    }
    let first = !(same_peer && t.verdict_epoch != 0 && t.reason == reason::REPLY);
    t.verdict_epoch = epoch;
    t.family = d.family;
    t.proto = d.proto;
    t.dport = d.port;
    t.daddr = d.addr;
    t.verdict = verdict::ALLOW;
    t.reason = reason::REPLY;
    t.rule = 0;
    t.task = 0;
    t.grant_expires_ns = 0;
    Some((verdict::ALLOW, reason::REPLY, first))
}

/// A UDP datagram of socket `cookie` to `d`: `Some(first)` when `d` sent to this socket within
/// [`REPLY_WINDOW_NS`] and `ingress.allowFrom` still admits it (`first`: not recorded yet).
#[inline(always)]
pub(crate) fn udp_reply(cfg: &Config, id: &Ident, cookie: u64, d: &Dest) -> Option<bool> {
    if d.proto != PROTO_UDP {
        return None;
    }
    let key = ReplyKey {
        cookie,
        addr: d.addr,
        port: d.port,
        family: d.family,
        proto: PROTO_UDP,
        _pad: 0,
    };
    let e = CP_REPLY.get_ptr_mut(key)?;
    // SAFETY: a pointer into the map's element, valid during the run (RCU); the fields are
    // plain integers, and a racing update of the same peer's entry writes the same kind of
    // values.
    let e = unsafe { &mut *e };
    if now_ns().saturating_sub(e.seen_ns) > REPLY_WINDOW_NS {
        return None;
    }
    let epoch = cfg.epoch();
    if e.epoch != epoch {
        if !ingress_allows(cfg, id, d.family, &d.addr) {
            return None;
        }
        e.epoch = epoch;
    }
    let first = e.recorded == 0;
    e.recorded = 1;
    Some(first)
}
