//! `cgroup/setsockopt` (5.3): refuses, for enforced identities, the socket options that would
//! take frames past the TC backstop: `PACKET_QDISC_BYPASS` (a packet socket's frames go straight
//! to the driver, skipping TC egress) and every `SOL_XDP` option (an AF_XDP socket needs them to
//! register its memory and rings; its frames skip TC too). Everything else passes untouched.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid},
    macros::cgroup_sockopt,
    programs::SockoptContext,
};
use chokepoint_common::{hook, reason, verdict};

use crate::{
    decide::denied,
    helpers::{current_ancestor_cgroup_id, current_cgroup_id},
    ident::{config, resolve},
    record::record,
};

const SOL_PACKET: i32 = 263;
const SOL_XDP: i32 = 283;
const PACKET_QDISC_BYPASS: i32 = 20;

#[cgroup_sockopt(setsockopt)]
fn cp_setsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: `ctx.sockopt` is the program's context pointer, valid for the whole run.
    let so = unsafe { &*ctx.sockopt };
    let (level, optname) = (so.level, so.optname);
    let skips_tc = (level == SOL_PACKET && optname == PACKET_QDISC_BYPASS) || level == SOL_XDP;
    if !skips_tc {
        return 1;
    }
    let Some(cfg) = config() else { return 1 };
    let cgid = current_cgroup_id();
    let id = resolve(&cfg, cgid, current_ancestor_cgroup_id);
    if id.ident == 0 {
        return 1;
    }
    // SAFETY: `sk` is the only member of this union in `bpf_sockopt` (the context's socket).
    let sk = unsafe { so.__bindgen_anon_1.sk };
    let family = if sk.is_null() {
        0
    } else {
        // SAFETY: a non-null socket pointer from the context; the verifier checks the access.
        unsafe { (*sk).family }
    };
    let dec = denied(&id, reason::RAW_SOCKET);
    record(dec.verdict, dec.reason, |ev| {
        ev.cgroup_id = cgid;
        ev.pid_tgid = bpf_get_current_pid_tgid();
        ev.uid_gid = bpf_get_current_uid_gid();
        ev.comm = bpf_get_current_comm().unwrap_or_default();
        ev.ident = id.ident;
        ev.generation = cfg.generation();
        ev.hook = hook::SETSOCKOPT;
        ev.sock_family = family as u8;
        ev.mode = id.mode;
    });
    i32::from(dec.verdict != verdict::DENY)
}
