//! The compat syscall guard: kprobes on the compat entries of the judged syscalls
//! (`cp_compat_kprobe`, e.g. `__ia32_sys_setsockopt`: only those calls run it) where the kernel
//! has kprobes, else `raw_tracepoint/sys_enter` (`cp_compat_sys`, 4.17; `bpf_send_signal` 5.3;
//! every syscall of the host runs it). Both judge the same way ([`guard`]). The kernel
//! runs `cgroup/setsockopt` only for native syscalls (`do_sock_setsockopt(.., compat, ..)` skips
//! it when `in_compat_syscall()`), so a 32-bit `setsockopt` (the i386 entry through `int 0x80`
//! or `sysenter`, a 32-bit binary, an x32 call) or a socket option set through an io_uring ring
//! created by a compat `io_uring_setup` could set `PACKET_QDISC_BYPASS` or a `SOL_XDP` option and
//! send frames past the TC backstop. A tracepoint cannot refuse a syscall, so for an enforced
//! identity this program kills the caller (`SIGKILL`, queued before the syscall's body runs;
//! the process never returns to user space) and records the attempt (reason `raw_socket`, hook
//! `compat_syscall`); an audit identity is only recorded. Judged without reading user memory
//! (no check-then-use race): the i386 `setsockopt` by its level and option (registers), a compat
//! `socketcall(SYS_SETSOCKOPT)` and a compat `io_uring_setup` always (their arguments live in
//! user memory, or the ring's later use is invisible here).

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_task,
            bpf_send_signal,
        },
    },
    macros::{kprobe, raw_tracepoint},
    programs::{ProbeContext, RawTracePointContext},
};
use chokepoint_common::{compat, hook, reason, verdict};

use crate::{
    decide::denied,
    ident::{config, resolve},
    record::record,
};

const SOL_PACKET: u64 = 263;
const SOL_XDP: u64 = 283;
const PACKET_QDISC_BYPASS: u64 = 20;
const SIGKILL: u32 = 9;
/// `struct pt_regs` (x86-64) offsets of the registers the i386 and x32 entries take arguments in.
const REG_BX: usize = 40;
const REG_CX: usize = 88;
const REG_DX: usize = 96;
const REG_SI: usize = 104;
const REG_DI: usize = 112;
const REG_R10: usize = 56;
/// `struct pt_regs.orig_ax`: the syscall number (with the x32 bit).
const REG_ORIG_AX: usize = 120;
/// `task_struct.thread_info.status` (x86-64: `thread_info` first in `task_struct`, after the
/// `flags` and `syscall_work` words, Linux 5.11+); the daemon's start check proves it.
const TASK_TI_STATUS: usize = 16;
/// `TS_COMPAT`: a 32-bit syscall is active.
const TS_COMPAT: u32 = 0x0002;

/// This install's start-check token (set by the daemon at load from its bpffs path): a start
/// check passes it as the option pointer, so only this install's guard answers its own check.
#[unsafe(no_mangle)]
static CP_SELFTEST_TOKEN: u32 = 0;

/// What a compat syscall would do, judged from its registers.
#[derive(PartialEq)]
enum Risk {
    /// Nothing that skips TC.
    None,
    /// An option that skips TC, or a call whose arguments cannot be judged race-free.
    SkipsTc,
}

#[inline(always)]
fn reg(regs: usize, off: usize) -> u64 {
    // SAFETY: `bpf_probe_read_kernel` checks the address itself and fails (here: `u64::MAX`)
    // on a bad one; `regs` is the syscall's `struct pt_regs *` (the tracepoint's or the wrapper's argument).
    unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.unwrap_or(u64::MAX)
}

#[inline(always)]
fn in_ia32_syscall() -> bool {
    // SAFETY: the helper takes no arguments; the pointer it answers is only read through
    // `bpf_probe_read_kernel` below.
    let task = unsafe { bpf_get_current_task() } as usize;
    if task == 0 {
        return false;
    }
    // Unreadable: judged as compat (the caller then still needs a compat syscall number).
    // SAFETY: a probe read: the helper checks the address and fails on a bad one.
    unsafe { bpf_probe_read_kernel((task + TASK_TI_STATUS) as *const u32) }
        .map_or(true, |s| s & TS_COMPAT != 0)
}

#[inline(always)]
fn sockopt_risk(level: u64, optname: u64) -> Risk {
    let (level, optname) = (level & 0xffff_ffff, optname & 0xffff_ffff);
    if (level == SOL_PACKET && optname == PACKET_QDISC_BYPASS) || level == SOL_XDP {
        Risk::SkipsTc
    } else {
        Risk::None
    }
}

/// The risk of syscall `nr` (with the x32 bit), and the start check's two marks: for a
/// `setsockopt` its descriptor and option pointer; for `io_uring_setup` its two arguments; for
/// `socketcall` the unused third register and the argument pointer (the check proves each
/// attach point with them; a real call is judged the same whatever they hold).
#[inline(always)]
fn classify(nr: u64, regs: usize) -> (Risk, u64, u64) {
    if nr & compat::X32_BIT != 0 {
        return match nr & !compat::X32_BIT {
            compat::X32_SETSOCKOPT => (
                sockopt_risk(reg(regs, REG_SI), reg(regs, REG_DX)),
                reg(regs, REG_DI),
                reg(regs, REG_R10),
            ),
            compat::IO_URING_SETUP => (Risk::SkipsTc, reg(regs, REG_DI), reg(regs, REG_SI)),
            _ => (Risk::None, 0, 0),
        };
    }
    match nr {
        compat::I386_SETSOCKOPT | compat::I386_SOCKETCALL | compat::IO_URING_SETUP => {}
        _ => return (Risk::None, 0, 0),
    }
    if !in_ia32_syscall() {
        return (Risk::None, 0, 0);
    }
    match nr {
        compat::I386_SETSOCKOPT => (
            sockopt_risk(reg(regs, REG_CX), reg(regs, REG_DX)),
            reg(regs, REG_BX),
            reg(regs, REG_SI),
        ),
        compat::I386_SOCKETCALL if reg(regs, REG_BX) & 0xffff_ffff == compat::SYS_SETSOCKOPT => {
            (Risk::SkipsTc, reg(regs, REG_DX), reg(regs, REG_CX))
        }
        compat::IO_URING_SETUP => (Risk::SkipsTc, reg(regs, REG_BX), reg(regs, REG_CX)),
        _ => (Risk::None, 0, 0),
    }
}

// Private: aya's macro exports the program under its own name (`no_mangle`, in its section).
#[raw_tracepoint(tracepoint = "sys_enter")]
fn cp_compat_sys(ctx: RawTracePointContext) -> i32 {
    guard(ctx.arg(1), ctx.arg(0))
}

/// Attached to the syscall wrappers of the compat entries (`__ia32_sys_setsockopt`,
/// `__ia32_compat_sys_socketcall`, `__ia32_sys_io_uring_setup`; with x32 `__x64_sys_setsockopt`
/// and `__x64_sys_io_uring_setup`, which native calls share: their number has no x32 bit). A
/// wrapper's one argument is the syscall's `struct pt_regs *`, `orig_ax` its number.
#[kprobe]
fn cp_compat_kprobe(ctx: ProbeContext) -> u32 {
    let regs: usize = ctx.arg(0).unwrap_or(0);
    if regs == 0 {
        return 0;
    }
    let nr = reg(regs, REG_ORIG_AX);
    if nr == u64::MAX {
        return 0;
    }
    guard(nr, regs) as u32
}

/// Judges syscall `nr` with the registers at `regs`: kills an enforced identity's call that
/// would skip `cgroup/setsockopt` (and the daemon's start check), records it.
#[inline(always)]
fn guard(nr: u64, regs: usize) -> i32 {
    let (risk, fd, optval) = classify(nr, regs);
    if risk == Risk::None {
        return 0;
    }
    // SAFETY: a read of an aligned static the daemon sets at load (before any program runs) and
    // never writes again; volatile so the compiler keeps the load of the patched value.
    let token = unsafe { core::ptr::read_volatile(&raw const CP_SELFTEST_TOKEN) };
    if fd as u32 == compat::SELFTEST_FD as u32 && optval as u32 == token {
        // The daemon's start check (a child of its own asking to be killed): proves that this
        // program sees compat syscalls on this kernel. Any process may ask this of itself only.
        // SAFETY: a plain signal number; the helper signals the current task only.
        unsafe { bpf_send_signal(SIGKILL) };
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    // SAFETY: the helper takes no arguments and only reads the current task's cgroup.
    let cgid = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a plain integer level; the helper answers 0 for one out of range.
    let id = resolve(&cfg, cgid, |l| unsafe {
        bpf_get_current_ancestor_cgroup_id(l)
    });
    if id.ident == 0 {
        return 0;
    }
    let dec = denied(&id, reason::RAW_SOCKET);
    if dec.verdict == verdict::DENY {
        // SAFETY: a plain signal number; the helper signals the current task only.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    record(dec.verdict, dec.reason, |ev| {
        ev.cgroup_id = cgid;
        ev.pid_tgid = bpf_get_current_pid_tgid();
        ev.uid_gid = bpf_get_current_uid_gid();
        ev.comm = bpf_get_current_comm().unwrap_or_default();
        ev.ident = id.ident;
        ev.generation = cfg.generation();
        ev.hook = hook::COMPAT_SYSCALL;
        ev.mode = id.mode;
    });
    0
}
