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
//!   within [`REPLY_WINDOW_NS`] pass as `reply`, recorded once per flow.

use core::ffi::c_void;

use aya_ebpf::{
    macros::cgroup_skb,
    programs::{SkBuffContext, SockOpsContext, sk_buff::SkBuff},
};
use chokepoint_common::{
    AcceptVal, Config, FlowKey, LPM_DATA_LEN, LPM_HEADER_BITS, LPM_SPACE_INGRESS, PROTO_TCP,
    PROTO_UDP, REPLY_WINDOW_NS, ReplyKey, ReplyVal, SockTag, hook, reason, verdict,
};

use crate::{
    decide::{
        Decision, Dest, Ident, cache_covers, config, decide, denied, record, resolve, sock_tag,
    },
    dnsans,
    helpers::{now_ns, skb_ancestor_cgroup_id, skb_cgroup_id, skb_cookie, skb_ethertype, skb_sock},
    maps::{CP_ACCEPT, CP_REPLY, CP_RULES},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TCP_LISTEN: u32 = 10;
const TCP_NEW_SYN_RECV: u32 = 12;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const AF_INET: u32 = 2;

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
    let idb = id.ident.to_be_bytes();
    let mut data = [0u8; LPM_DATA_LEN];
    data[0] = cfg.slot() as u8;
    data[1] = family;
    data[2] = LPM_SPACE_INGRESS;
    data[4] = idb[0];
    data[5] = idb[1];
    data[6] = idb[2];
    data[7] = idb[3];
    data[8..24].copy_from_slice(addr);
    let bits = if family == 4 { 32 } else { 128 };
    let key = aya_ebpf::maps::lpm_trie::Key::new(LPM_HEADER_BITS + bits, data);
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
