//! `cgroup/connect4`, `connect6`, `sendmsg4`, `sendmsg6`: one decision per destination, EPERM on
//! deny. connect covers TCP (including `sendto(MSG_FASTOPEN)` and io_uring connect, which enter
//! the same kernel path), connected UDP and ping sockets; sendmsg covers unconnected UDP
//! (`sendto`, `sendmsg`, `sendmmsg`).

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use chokepoint_common::{hook, verdict};

use crate::{
    decide::{Dest, Ident, decide, has_ports},
    helpers::{current_ancestor_cgroup_id, current_cgroup_id, sock_addr_cookie},
    ident::{config, resolve},
    maps::CP_SKTAG,
    record::record,
    sktag::{cache_covers, cache_store, same_flow_was_allowed},
};

#[inline(always)]
fn handle(ctx: &SockAddrContext, v6: bool, hook_code: u8) -> i32 {
    let Some(cfg) = config() else { return 1 };
    let epoch = cfg.epoch();
    // SAFETY: `ctx.sock_addr` is the program's context pointer, valid for the whole run.
    let sa = unsafe { &*ctx.sock_addr };
    // SAFETY: the context of a `cgroup/sock_addr` program carries the socket the helper needs.
    let tag_ptr = unsafe { CP_SKTAG.get_ptr_mut(ctx) };
    let cur_cgid = current_cgroup_id();

    // Identity: the socket's tag when it is current; else resolve. A socket created in another
    // cgroup (passed fd) keeps its creator's identity.
    let mut cgid = cur_cgid;
    let id = if tag_ptr.is_null() {
        resolve(&cfg, cur_cgid, current_ancestor_cgroup_id)
    } else {
        // SAFETY: a non-null socket-storage pointer stays valid while the program holds the
        // socket (the whole run); the socket's own syscall is the only writer meanwhile.
        let t = unsafe { &mut *tag_ptr };
        if t.ident_epoch == epoch {
            cgid = t.cgroup_id;
            Ident {
                ident: t.ident,
                mode: t.mode,
            }
        } else if t.tagged == 0 || t.cgroup_id == cur_cgid {
            let id = resolve(&cfg, cur_cgid, current_ancestor_cgroup_id);
            t.ident_epoch = epoch;
            t.ident = id.ident;
            t.mode = id.mode;
            id
        } else {
            // Created elsewhere, stale epoch: keep the creator's identity (sticky), the packet
            // backstop re-resolves from the socket's own cgroup.
            cgid = t.cgroup_id;
            Ident {
                ident: t.ident,
                mode: t.mode,
            }
        }
    };
    if id.ident == 0 {
        return 1;
    }
    let tag_ptr = if tag_ptr.is_null() {
        // SAFETY: as for `get_ptr_mut` above; no initial value, so a new entry is zero-filled.
        let p = unsafe { CP_SKTAG.get_or_insert_ptr_mut(ctx, None) };
        if !p.is_null() {
            // SAFETY: a non-null socket-storage pointer, valid for the run (as above).
            let t = unsafe { &mut *p };
            t.cgroup_id = cur_cgid;
            t.pid_tgid = bpf_get_current_pid_tgid();
            t.uid_gid = bpf_get_current_uid_gid();
            t.comm = bpf_get_current_comm().unwrap_or_default();
            t.ident_epoch = epoch;
            t.ident = id.ident;
            t.mode = id.mode;
        }
        p
    } else {
        tag_ptr
    };

    let proto = sa.protocol as u8;
    let mut d = Dest {
        family: if v6 { 6 } else { 4 },
        proto,
        port: if has_ports(proto) {
            u16::from_be(sa.user_port as u16)
        } else {
            0
        },
        addr: [0; 16],
    };
    if v6 {
        let mut i = 0;
        while i < 4 {
            let w = sa.user_ip6[i].to_ne_bytes();
            d.addr[i * 4] = w[0];
            d.addr[i * 4 + 1] = w[1];
            d.addr[i * 4 + 2] = w[2];
            d.addr[i * 4 + 3] = w[3];
            i += 1;
        }
    } else {
        let w = sa.user_ip4.to_ne_bytes();
        d.addr[0] = w[0];
        d.addr[1] = w[1];
        d.addr[2] = w[2];
        d.addr[3] = w[3];
    }
    d.normalise();

    let mut dec = decide(&cfg, &id, &d);
    let mut first_of_flow = true;
    // A UDP answer to a peer that sent to this socket first.
    let mut reply_first = None;
    if dec.verdict != verdict::ALLOW {
        let cookie = sock_addr_cookie(ctx);
        reply_first = crate::reply::udp_reply(&cfg, &id, cookie, &d);
        if reply_first.is_some() {
            dec = crate::reply::reply_decision();
        }
    }
    // An identity's lookups to its sanctioned resolver go to its DNS proxy (toFQDN rules); the
    // socket caches the destination its packets will carry.
    let sent = if v6 {
        d
    } else {
        crate::fqdn::redirect(ctx, &id, &d, &dec).unwrap_or(d)
    };
    if !tag_ptr.is_null() {
        // SAFETY: a non-null socket-storage pointer, valid for the run (as above).
        let t = unsafe { &mut *tag_ptr };
        // Whatever this socket was, it is now one the workload opens itself.
        t.passive = 0;
        if dec.verdict == verdict::ALLOW
            && (cache_covers(t, epoch, &sent, true) || same_flow_was_allowed(t, &sent))
        {
            first_of_flow = false;
        }
        cache_store(t, epoch, &sent, &dec);
    }
    if let Some(first) = reply_first {
        first_of_flow = first;
    }
    if dec.verdict != verdict::ALLOW || first_of_flow {
        record(dec.verdict, dec.reason, |ev| {
            ev.cookie = sock_addr_cookie(ctx);
            ev.cgroup_id = cgid;
            ev.pid_tgid = bpf_get_current_pid_tgid();
            ev.uid_gid = bpf_get_current_uid_gid();
            ev.task = dec.task;
            ev.daddr = d.addr;
            ev.comm = bpf_get_current_comm().unwrap_or_default();
            ev.ident = id.ident;
            ev.generation = cfg.generation();
            ev.rule = dec.rule;
            ev.dport = d.port;
            ev.family = d.family;
            ev.proto = d.proto;
            ev.hook = hook_code;
            ev.mode = id.mode;
        });
    }
    i32::from(dec.verdict != verdict::DENY)
}

// The entry points are private: aya's macros export them under their own names (`no_mangle`,
// in the program's section), as aya's own test programs do.
#[cgroup_sock_addr(connect4)]
fn cp_connect4(ctx: SockAddrContext) -> i32 {
    handle(&ctx, false, hook::CONNECT4)
}

#[cgroup_sock_addr(connect6)]
fn cp_connect6(ctx: SockAddrContext) -> i32 {
    handle(&ctx, true, hook::CONNECT6)
}

#[cgroup_sock_addr(sendmsg4)]
fn cp_sendmsg4(ctx: SockAddrContext) -> i32 {
    handle(&ctx, false, hook::SENDMSG4)
}

#[cgroup_sock_addr(sendmsg6)]
fn cp_sendmsg6(ctx: SockAddrContext) -> i32 {
    handle(&ctx, true, hook::SENDMSG6)
}
