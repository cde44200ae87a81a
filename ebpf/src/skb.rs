//! The per-packet backstop: `cgroup_skb/egress` (every socket of the host, any netns) and a TC
//! egress classifier attached through tcx to the interfaces named by `--tc-iface`. O(1) per packet
//! when the socket's cached verdict covers the packet under the current epoch; a full decision
//! otherwise (sockets created before the agent started, raw senders, revoked or changed policy).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::__sk_buff,
    macros::{cgroup_skb, classifier},
    programs::{SkBuffContext, TcContext, sk_buff::SkBuff},
};
use chokepoint_common::{Config, SockTag, hook, reason, verdict};

use crate::{
    decide::{
        Dest, Ident, cache_covers, cache_store, config, decide, denied, has_ports, record, resolve,
        same_flow_was_allowed, sock_tag,
    },
    helpers::{now_ns, skb_ancestor_cgroup_id, skb_cgroup_id, skb_cookie, skb_ethertype, skb_sock},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;

/// Parsed packet: destination, source, and whether ports were read.
struct Pkt {
    dst: Dest,
    saddr: [u8; 16],
    sport: u16,
    port_known: bool,
}

#[inline(always)]
fn parse(skb: &SkBuff, l3: usize, ethertype: u16) -> Option<Pkt> {
    let mut p = Pkt {
        dst: Dest {
            family: 4,
            proto: 0,
            port: 0,
            addr: [0; 16],
        },
        saddr: [0; 16],
        sport: 0,
        port_known: false,
    };
    let l4;
    let mut first_fragment = true;
    if ethertype == ETH_P_IP {
        let vihl: u8 = skb.load(l3).ok()?;
        if vihl >> 4 != 4 {
            return None;
        }
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            return None;
        }
        let frag: u16 = u16::from_be(skb.load(l3 + 6).ok()?);
        if frag & 0x1fff != 0 {
            first_fragment = false;
        }
        p.dst.proto = skb.load(l3 + 9).ok()?;
        let s: [u8; 4] = skb.load(l3 + 12).ok()?;
        let d: [u8; 4] = skb.load(l3 + 16).ok()?;
        p.saddr[..4].copy_from_slice(&s);
        p.dst.addr[..4].copy_from_slice(&d);
        l4 = l3 + (ihl & 0x3c);
    } else if ethertype == ETH_P_IPV6 {
        let v: u8 = skb.load(l3).ok()?;
        if v >> 4 != 6 {
            return None;
        }
        p.dst.family = 6;
        p.dst.proto = skb.load(l3 + 6).ok()?;
        p.saddr = skb.load(l3 + 8).ok()?;
        p.dst.addr = skb.load(l3 + 24).ok()?;
        l4 = l3 + 40;
    } else {
        return None;
    }
    if first_fragment && has_ports(p.dst.proto) {
        let ports: [u8; 4] = skb.load(l4).ok()?;
        p.sport = u16::from_be_bytes([ports[0], ports[1]]);
        p.dst.port = u16::from_be_bytes([ports[2], ports[3]]);
        p.port_known = true;
    }
    p.dst.normalise();
    Some(p)
}

/// Reads `N` bytes at `p`.
///
/// # Safety
///
/// `[p, p + N)` lies in the packet's linear data: the caller has compared it against
/// `data_end` (which the verifier also checks for every access).
#[inline(always)]
unsafe fn bytes<const N: usize>(p: usize) -> [u8; N] {
    // SAFETY: in bounds by the caller's contract; unaligned, as packet headers are.
    unsafe { core::ptr::read_unaligned(p as *const [u8; N]) }
}

/// [`parse`] by direct packet access (no helper call): `None` when the headers are not all in the
/// linear part of the packet or anything is unusual, and the caller then takes the helper path,
/// which decides every such packet exactly as before.
#[inline(always)]
fn parse_direct(skb: &SkBuff, l3: usize, ethertype: u16) -> Option<Pkt> {
    let raw: *mut __sk_buff = skb.skb;
    // SAFETY: `raw` is the program's context pointer, valid for the whole run.
    let start = unsafe { (*raw).data } as usize;
    // SAFETY: as above.
    let end = unsafe { (*raw).data_end } as usize;
    let mut p = Pkt {
        dst: Dest {
            family: 4,
            proto: 0,
            port: 0,
            addr: [0; 16],
        },
        saddr: [0; 16],
        sport: 0,
        port_known: false,
    };
    let l4;
    if ethertype == ETH_P_IP {
        if start + l3 + 20 > end {
            return None;
        }
        let h = start + l3;
        // SAFETY: `h + 20 <= end` was checked above.
        let [vihl] = unsafe { bytes::<1>(h) };
        if vihl >> 4 != 4 {
            return None;
        }
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            return None;
        }
        // SAFETY: within the 20 bytes checked above.
        let frag = u16::from_be_bytes(unsafe { bytes::<2>(h + 6) });
        if frag & 0x1fff != 0 {
            // Not a first fragment: no ports; the helper path handles it.
            return None;
        }
        // SAFETY: within the 20 bytes checked above.
        let [proto] = unsafe { bytes::<1>(h + 9) };
        p.dst.proto = proto;
        // SAFETY: within the 20 bytes checked above.
        let s: [u8; 4] = unsafe { bytes(h + 12) };
        // SAFETY: within the 20 bytes checked above.
        let d: [u8; 4] = unsafe { bytes(h + 16) };
        p.saddr[..4].copy_from_slice(&s);
        p.dst.addr[..4].copy_from_slice(&d);
        l4 = h + (ihl & 0x3c);
    } else if ethertype == ETH_P_IPV6 {
        if start + l3 + 40 > end {
            return None;
        }
        let h = start + l3;
        // SAFETY: `h + 40 <= end` was checked above.
        let [v] = unsafe { bytes::<1>(h) };
        if v >> 4 != 6 {
            return None;
        }
        p.dst.family = 6;
        // SAFETY: within the 40 bytes checked above.
        let [proto] = unsafe { bytes::<1>(h + 6) };
        p.dst.proto = proto;
        // SAFETY: bytes 8..24, within the 40 checked above.
        p.saddr = unsafe { bytes(h + 8) };
        // SAFETY: bytes 24..40, within the 40 checked above.
        p.dst.addr = unsafe { bytes(h + 24) };
        l4 = h + 40;
    } else {
        return None;
    }
    if has_ports(p.dst.proto) {
        if l4 + 4 > end {
            return None;
        }
        // SAFETY: `l4 + 4 <= end` was checked just above.
        let ports: [u8; 4] = unsafe { bytes(l4) };
        p.sport = u16::from_be_bytes([ports[0], ports[1]]);
        p.dst.port = u16::from_be_bytes([ports[2], ports[3]]);
        p.port_known = true;
    }
    p.dst.normalise();
    Some(p)
}

/// What to do with a packet and whether to record it.
struct Outcome {
    verdict: u8,
    reason: u8,
    rule: u32,
    task: u64,
    emit: bool,
}

/// Decides one packet. Returns true to pass it.
#[inline(always)]
fn handle(skb: &SkBuff, l3: usize, ethertype: u16, hook_code: u8) -> bool {
    let Some(cfg) = config() else { return true };
    let sk = skb_sock(skb);
    if sk.is_null() {
        // Not from a local socket (forwarded, or kernel-generated without a socket).
        return true;
    }
    if let Some(pass) = crate::reply::synack(&cfg, skb, l3, ethertype, hook_code) {
        return pass;
    }
    let epoch = cfg.epoch();
    let mut tag_ptr = sock_tag(sk.cast::<c_void>(), false);
    // SAFETY: a non-null socket-storage pointer stays valid while the program holds the socket
    // (the whole run).
    let id = if !tag_ptr.is_null() && unsafe { (*tag_ptr).ident_epoch } == epoch {
        // SAFETY: as above.
        let t = unsafe { &*tag_ptr };
        Ident {
            ident: t.ident,
            mode: t.mode,
        }
    } else {
        let cgid = skb_cgroup_id(skb);
        if cgid == 0 {
            return true;
        }
        let id = resolve(&cfg, cgid, |l| skb_ancestor_cgroup_id(skb, l));
        if id.ident == 0 {
            return true;
        }
        if tag_ptr.is_null() {
            tag_ptr = sock_tag(sk.cast::<c_void>(), true);
        }
        if !tag_ptr.is_null() {
            // SAFETY: a non-null socket-storage pointer, valid for the run (as above).
            let t = unsafe { &mut *tag_ptr };
            if t.cgroup_id == 0 {
                t.cgroup_id = cgid;
            }
            t.ident_epoch = epoch;
            t.ident = id.ident;
            t.mode = id.mode;
        }
        id
    };
    if id.ident == 0 {
        return true;
    }

    let pkt = match parse_direct(skb, l3, ethertype) {
        Some(p) => Some(p),
        None => parse(skb, l3, ethertype),
    };
    let out = match &pkt {
        // Unparseable egress of an identity: fail closed.
        None => {
            let dec = denied(&id, reason::MALFORMED);
            Outcome {
                verdict: dec.verdict,
                reason: dec.reason,
                rule: 0,
                task: 0,
                emit: true,
            }
        }
        Some(p) => judge(&cfg, &id, tag_ptr, p, skb),
    };
    if out.emit {
        record(out.verdict, out.reason, |ev| {
            ev.cookie = skb_cookie(skb);
            ev.ident = id.ident;
            ev.generation = cfg.generation();
            ev.rule = out.rule;
            ev.task = out.task;
            ev.hook = hook_code;
            ev.mode = id.mode;
            if !tag_ptr.is_null() {
                // SAFETY: a non-null socket-storage pointer, valid for the run.
                let t = unsafe { &*tag_ptr };
                ev.cgroup_id = t.cgroup_id;
                ev.pid_tgid = t.pid_tgid;
                ev.uid_gid = t.uid_gid;
                ev.comm = t.comm;
            }
            if let Some(p) = &pkt {
                ev.daddr = p.dst.addr;
                ev.saddr = p.saddr;
                ev.dport = p.dst.port;
                ev.sport = p.sport;
                ev.family = p.dst.family;
                ev.proto = p.dst.proto;
            }
        });
    }
    out.verdict != verdict::DENY
}

/// The verdict for a parsed packet: the socket's cached verdict when it covers the packet under
/// the current epoch, a full decision otherwise.
#[inline(always)]
fn judge(cfg: &Config, id: &Ident, tag_ptr: *mut SockTag, pkt: &Pkt, skb: &SkBuff) -> Outcome {
    let epoch = cfg.epoch();
    if !tag_ptr.is_null() {
        // SAFETY: a non-null socket-storage pointer stays valid while the program holds the
        // socket (the whole run).
        let t = unsafe { &mut *tag_ptr };
        if let Some((verdict, reason, emit)) = crate::reply::passive(cfg, id, t, &pkt.dst) {
            return Outcome {
                verdict,
                reason,
                rule: 0,
                task: 0,
                emit,
            };
        }
        // A cached UDP reply holds only while its peer's window is open.
        let reply_open = t.reason != reason::REPLY
            || crate::reply::udp_reply(cfg, id, skb_cookie(skb), &pkt.dst).is_some();
        if reply_open && cache_covers(t, epoch, &pkt.dst, pkt.port_known) {
            if t.verdict == verdict::ALLOW {
                if t.reason == reason::GRANT && t.grant_expires_ns <= now_ns() {
                    let dec = denied(id, reason::EXPIRED);
                    t.verdict = dec.verdict;
                    t.reason = dec.reason;
                    return Outcome {
                        verdict: dec.verdict,
                        reason: dec.reason,
                        rule: 0,
                        task: t.task,
                        emit: true,
                    };
                }
                return Outcome {
                    verdict: verdict::ALLOW,
                    reason: t.reason,
                    rule: t.rule,
                    task: t.task,
                    emit: false,
                };
            }
            // A cached audit passes silently (recorded once per flow); a cached deny is recorded
            // on every packet.
            return Outcome {
                verdict: t.verdict,
                reason: t.reason,
                rule: 0,
                task: 0,
                emit: t.verdict == verdict::DENY,
            };
        }
    }
    let mut dec = decide(cfg, id, &pkt.dst);
    let mut first_of_flow = true;
    let mut reply_first = None;
    if dec.verdict != verdict::ALLOW {
        reply_first = crate::reply::udp_reply(cfg, id, skb_cookie(skb), &pkt.dst);
        if reply_first.is_some() {
            dec = crate::reply::reply_decision();
        }
    }
    if !tag_ptr.is_null() {
        // SAFETY: a non-null socket-storage pointer, valid for the run (as above).
        let t = unsafe { &mut *tag_ptr };
        if same_flow_was_allowed(t, &pkt.dst) {
            if dec.verdict == verdict::ALLOW {
                first_of_flow = false;
            } else {
                dec.reason = if t.reason == reason::GRANT && t.grant_expires_ns <= now_ns() {
                    reason::EXPIRED
                } else {
                    reason::REVOKED
                };
            }
        }
        if pkt.port_known {
            cache_store(t, epoch, &pkt.dst, &dec);
        }
    }
    if let Some(first) = reply_first {
        first_of_flow = first;
    }
    Outcome {
        verdict: dec.verdict,
        reason: dec.reason,
        rule: dec.rule,
        task: dec.task,
        emit: dec.verdict != verdict::ALLOW || first_of_flow,
    }
}

// The entry points are private: aya's macros export them under their own names (`no_mangle`,
// in the program's section), as aya's own test programs do.
#[cgroup_skb(egress)]
fn cp_skb_egress(ctx: SkBuffContext) -> i32 {
    let proto = skb_ethertype(&ctx.skb);
    i32::from(handle(&ctx.skb, 0, proto, hook::SKB))
}

#[classifier]
fn cp_tc_egress(ctx: TcContext) -> i32 {
    let Ok(ethertype) = ctx.skb.load::<u16>(12) else {
        return TC_ACT_UNSPEC;
    };
    if handle(&ctx.skb, 14, u16::from_be(ethertype), hook::TC) {
        TC_ACT_UNSPEC
    } else {
        TC_ACT_SHOT
    }
}
