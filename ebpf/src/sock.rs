//! Socket creation: `cgroup/sock_create` tags inet sockets of identities and refuses SOCK_RAW;
//! BPF LSM `socket_create` refuses every non-IP family (AF_PACKET, AF_XDP, …) and raw/packet
//! types the cgroup hook never sees.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid},
    macros::{cgroup_sock, lsm},
    programs::{LsmContext, SockContext},
};
use chokepoint_common::{hook, reason, verdict};

use crate::{
    decide::{Ident, denied},
    helpers::{current_ancestor_cgroup_id, current_cgroup_id},
    ident::{config, resolve},
    record::record,
    sktag::sock_tag,
};

const AF_UNIX: i32 = 1;
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const AF_NETLINK: i32 = 16;
const SOCK_STREAM: i32 = 1;
const SOCK_DGRAM: i32 = 2;
const SOCK_SEQPACKET: i32 = 5;
const SOCK_TYPE_MASK: i32 = 0xf;
const EPERM: i32 = 1;

/// Identity of the current task.
#[inline(always)]
fn current_ident(cfg: &chokepoint_common::Config) -> (u64, Ident) {
    let cgid = current_cgroup_id();
    let id = resolve(cfg, cgid, current_ancestor_cgroup_id);
    (cgid, id)
}

/// Record of a refused socket creation.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "flat record fields")]
fn socket_record(
    id: &Ident,
    cgid: u64,
    family: i32,
    ty: i32,
    proto: i32,
    hook_code: u8,
    verdict_code: u8,
    generation: u32,
) {
    record(verdict_code, reason::RAW_SOCKET, |ev| {
        ev.cgroup_id = cgid;
        ev.pid_tgid = bpf_get_current_pid_tgid();
        ev.uid_gid = bpf_get_current_uid_gid();
        ev.comm = bpf_get_current_comm().unwrap_or_default();
        ev.ident = id.ident;
        ev.generation = generation;
        ev.family = match family {
            AF_INET => 4,
            AF_INET6 => 6,
            _ => 0,
        };
        ev.proto = proto as u8;
        ev.hook = hook_code;
        ev.sock_type = ty as u8;
        ev.sock_family = family as u8;
        ev.mode = id.mode;
    });
}

#[cgroup_sock(sock_create)]
fn cp_sock_create(ctx: SockContext) -> i32 {
    let Some(cfg) = config() else { return 1 };
    let (cgid, id) = current_ident(&cfg);
    if id.ident == 0 {
        return 1;
    }
    // SAFETY: `ctx.sock` is the program's context pointer, valid for the whole run.
    let sk = unsafe { &*ctx.sock };
    let (family, ty, proto) = (sk.family as i32, sk.type_ as i32, sk.protocol as i32);
    let tag = sock_tag(ctx.as_ptr(), true);
    if !tag.is_null() {
        // SAFETY: a non-null socket-storage pointer stays valid while the program holds the
        // socket (the whole run); the socket is being created, so nothing else writes it.
        let t = unsafe { &mut *tag };
        t.cgroup_id = cgid;
        t.pid_tgid = bpf_get_current_pid_tgid();
        t.uid_gid = bpf_get_current_uid_gid();
        t.comm = bpf_get_current_comm().unwrap_or_default();
        t.ident_epoch = cfg.epoch();
        t.ident = id.ident;
        t.mode = id.mode;
        t.tagged = 1;
    }
    if ty != SOCK_STREAM && ty != SOCK_DGRAM && ty != SOCK_SEQPACKET {
        let dec = denied(&id, reason::RAW_SOCKET);
        socket_record(
            &id,
            cgid,
            family,
            ty,
            proto,
            hook::SOCK_CREATE,
            dec.verdict,
            cfg.generation(),
        );
        if dec.verdict == verdict::DENY {
            return 0;
        }
    }
    1
}

#[lsm(hook = "socket_create")]
fn cp_lsm_socket(ctx: LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let ty: i32 = ctx.arg::<i32>(1) & SOCK_TYPE_MASK;
    let proto: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    let retval: i32 = ctx.arg(4);
    if retval != 0 {
        // Another LSM program already refused: keep its (negative errno) verdict.
        return if (-4095..0).contains(&retval) {
            retval
        } else {
            -EPERM
        };
    }
    if kern != 0 {
        return 0;
    }
    let allowed_family = match family {
        AF_UNIX | AF_NETLINK => true,
        AF_INET | AF_INET6 => ty == SOCK_STREAM || ty == SOCK_DGRAM || ty == SOCK_SEQPACKET,
        _ => false,
    };
    if allowed_family {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let (cgid, id) = current_ident(&cfg);
    if id.ident == 0 {
        return 0;
    }
    let dec = denied(&id, reason::RAW_SOCKET);
    socket_record(
        &id,
        cgid,
        family,
        ty,
        proto,
        hook::LSM_SOCKET,
        dec.verdict,
        cfg.generation(),
    );
    if dec.verdict == verdict::DENY {
        -EPERM
    } else {
        0
    }
}
