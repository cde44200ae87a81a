//! Servers and probes: traffic on connections that others opened to an identity is not egress.
//!
//! - `cp_skb_ingress` (`cgroup_skb/ingress`, 5.7 for the ancestor walk): a SYN to a listener of
//!   an identity from a source outside its `ingress.allowFrom` is dropped (`ingress_denied`);
//!   an admitted SYN is remembered in `CP_ACCEPT` until the child is established. A UDP datagram
//!   from a peer the identity may not send to is admitted the same way and remembered per
//!   (socket, peer) in `CP_REPLY` with its time.
//! - `sockops` `PASSIVE_ESTABLISHED_CB` ([`accepted`]): the child of an admitted SYN is marked
//!   `passive`; a socket that went through connect (simultaneous open) never is.
//! - The egress hooks ask [`passive`], [`synack`] and [`udp_reply`]: a SYN-ACK of a request
//!   socket, an accepted socket's packets, and a UDP datagram to a peer that sent to this socket
//!   within [`REPLY_WINDOW_NS`](chokepoint_common::REPLY_WINDOW_NS) pass as `reply`, recorded once per flow.

mod accept;
mod egress;
mod ingress;

use aya_ebpf::programs::sk_buff::SkBuff;
use chokepoint_common::{Config, LPM_SPACE_INGRESS, PROTO_TCP, PROTO_UDP, reason, verdict};

pub(crate) use self::{
    accept::accepted,
    egress::{passive, synack, udp_reply},
};
use crate::{
    decide::{Decision, Ident, denied, lpm_key},
    helpers::skb_cookie,
    maps::CP_RULES,
    record::record,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TCP_LISTEN: u32 = 10;
const TCP_NEW_SYN_RECV: u32 = 12;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The addresses and ports of a packet (IPv4 in the first four bytes).
struct Hdr {
    family: u8,
    proto: u8,
    flags: u8,
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
    /// Offset of the L4 header in the packet.
    l4: usize,
}

#[inline(always)]
fn parse(skb: &SkBuff, l3: usize, ethertype: u16) -> Option<Hdr> {
    let mut h = Hdr {
        family: 4,
        proto: 0,
        flags: 0,
        sport: 0,
        dport: 0,
        src: [0; 16],
        dst: [0; 16],
        l4: 0,
    };
    let l4;
    if ethertype == ETH_P_IP {
        let vihl: u8 = skb.load(l3).ok()?;
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if vihl >> 4 != 4 || ihl < 20 {
            return None;
        }
        let frag: u16 = u16::from_be(skb.load(l3 + 6).ok()?);
        if frag & 0x1fff != 0 {
            return None;
        }
        h.proto = skb.load(l3 + 9).ok()?;
        let s: [u8; 4] = skb.load(l3 + 12).ok()?;
        let d: [u8; 4] = skb.load(l3 + 16).ok()?;
        h.src[..4].copy_from_slice(&s);
        h.dst[..4].copy_from_slice(&d);
        l4 = l3 + (ihl & 0x3c);
    } else if ethertype == ETH_P_IPV6 {
        let v: u8 = skb.load(l3).ok()?;
        if v >> 4 != 6 {
            return None;
        }
        h.family = 6;
        h.proto = skb.load(l3 + 6).ok()?;
        h.src = skb.load(l3 + 8).ok()?;
        h.dst = skb.load(l3 + 24).ok()?;
        l4 = l3 + 40;
    } else {
        return None;
    }
    h.l4 = l4;
    if h.proto != PROTO_TCP && h.proto != PROTO_UDP {
        return Some(h);
    }
    let ports: [u8; 4] = skb.load(l4).ok()?;
    h.sport = u16::from_be_bytes([ports[0], ports[1]]);
    h.dport = u16::from_be_bytes([ports[2], ports[3]]);
    if h.proto == PROTO_TCP {
        h.flags = skb.load(l4 + 13).ok()?;
    }
    Some(h)
}

/// True when `ingress.allowFrom` of `id` admits `addr` (the ingress key space of the rules
/// trie; an identity without `allowFrom` has `0.0.0.0/0` and `::/0` there).
#[inline(always)]
pub(crate) fn ingress_allows(cfg: &Config, id: &Ident, family: u8, addr: &[u8; 16]) -> bool {
    let key = lpm_key(cfg.slot() as u8, LPM_SPACE_INGRESS, family, addr, id.ident);
    CP_RULES.get(&key).is_some()
}

/// The decision of an allowed reply.
#[inline(always)]
pub(crate) fn reply_decision() -> Decision {
    Decision {
        verdict: verdict::ALLOW,
        reason: reason::REPLY,
        rule: 0,
        task: 0,
        expires_ns: 0,
    }
}

/// Records a peer refused by `ingress.allowFrom` (`src` is the peer); returns true to pass
/// (audit mode).
#[inline(always)]
fn refuse(cfg: &Config, id: &Ident, skb: &SkBuff, cgid: u64, h: &Hdr, hook_code: u8) -> bool {
    let dec = denied(id, reason::INGRESS_DENIED);
    record(dec.verdict, dec.reason, |ev| {
        ev.cookie = skb_cookie(skb);
        ev.cgroup_id = cgid;
        ev.ident = id.ident;
        ev.generation = cfg.generation();
        ev.hook = hook_code;
        ev.mode = id.mode;
        ev.family = h.family;
        ev.proto = h.proto;
        ev.saddr = h.src;
        ev.sport = h.sport;
        ev.daddr = h.dst;
        ev.dport = h.dport;
    });
    dec.verdict != verdict::DENY
}
