//! The per-packet backstop: `cgroup_skb/egress` (every socket of the host, any netns) and a TC
//! egress classifier attached through tcx to the interfaces named by `--tc-iface`. O(1) per packet
//! when the socket's cached verdict covers the packet under the current epoch; a full decision
//! otherwise (sockets created before the agent started, raw senders, revoked or changed policy).

mod judge;
mod parse;

use core::ffi::c_void;

use aya_ebpf::{
    macros::{cgroup_skb, classifier},
    programs::{SkBuffContext, TcContext, sk_buff::SkBuff},
};
use chokepoint_common::{hook, reason, verdict};

use self::{
    judge::{Outcome, judge},
    parse::{parse, parse_direct},
};
use crate::{
    decide::{Ident, denied},
    helpers::{skb_ancestor_cgroup_id, skb_cgroup_id, skb_cookie, skb_ethertype, skb_sock},
    ident::{config, resolve},
    record::record,
    sktag::sock_tag,
};

const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;

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
