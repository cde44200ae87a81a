//! The compat syscall guard's start checks: which 32-bit syscall entries this kernel runs (i386
//! through `int 0x80`, x32), and, once the guard is attached (kprobes `cp_compat_kprobe` or the
//! `cp_compat_sys` tracepoint, [`super::compat_hook`]), proof that it sees them: a child of the
//! daemon makes each judged compat call marked with [`compat::SELFTEST_FD`] and the install's
//! token and must die of `SIGKILL` before the syscall returns. Without a compat entry the guard is
//! not attached.

use chokepoint_common::compat;

/// The compat syscall guard as detected at start (`status`: `kernel.packet_sockets.compat`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CompatGuard {
    /// The compat entries this kernel runs: `ia32`, `x32` (empty: none, the hole does not exist).
    pub entries: Vec<&'static str>,
    /// `kill` (attached and proven: an enforced identity's compat call that would skip
    /// `cgroup/setsockopt` kills the caller), `not_needed` (no compat entry), `failed` (see
    /// `detail`; the daemon reports `degraded`), `unsupported_arch` (not x86-64: not attached).
    pub guard: &'static str,
    /// Where it is attached: `kprobe` (the compat entry functions in `attach`: only those calls
    /// run it) or `raw_tracepoint` (`sys_enter`: every syscall of the host runs it); absent when
    /// not attached.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub hook: &'static str,
    /// The kprobed functions, or `sys_enter`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attach: Vec<String>,
    /// Why the kprobes are not used, when the tracepoint is (e.g. a kernel without
    /// `CONFIG_KPROBES`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kprobe_unavailable: Option<String>,
    /// Why the guard is not in force, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// This install's start-check token (`CP_SELFTEST_TOKEN` of the program), from its bpffs path:
/// stable across restarts (a kept program answers the next daemon's check), different per
/// install, so another install's guard never answers this one's check. Never 0.
pub fn token(bpffs: &std::path::Path) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bpffs.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h | 1
}

/// How a start-check child ended.
#[derive(Debug, PartialEq)]
enum Ended {
    Exited(i32),
    Signaled(i32),
}

/// Runs `f` in a forked child (nothing but a raw syscall and `_exit` there) and waits for it.
fn in_child(f: fn(u32) -> i64, arg: u32) -> std::io::Result<Ended> {
    // SAFETY: the child only makes a raw syscall and calls `_exit` (async-signal-safe), so
    // forking a multi-threaded process is sound.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        let ret = f(arg);
        let code = match ret {
            r if r == -i64::from(rustix::io::Errno::NOSYS.raw_os_error()) => 2,
            r if r < 0 => 1,
            _ => 0,
        };
        // SAFETY: leaves the child at once.
        unsafe { libc::_exit(code) };
    }
    let child = rustix::process::Pid::from_raw(pid).ok_or_else(std::io::Error::last_os_error)?;
    let status = loop {
        match rustix::process::waitpid(Some(child), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => break status,
            Ok(None) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    Ok(match status.terminating_signal() {
        Some(sig) => Ended::Signaled(sig),
        None => Ended::Exited(status.exit_status().unwrap_or(0)),
    })
}

/// A syscall through the i386 entry (`int 0x80`): number and up to four arguments.
#[cfg(target_arch = "x86_64")]
fn int80(nr: u64, a: [u64; 4]) -> i64 {
    let mut ret = nr;
    // SAFETY: a syscall through the compat entry; rbx is saved and restored around it, the
    // argument registers are inputs, and r8-r11 are marked clobbered.
    unsafe {
        std::arch::asm!(
            "xchg {b}, rbx",
            "int 0x80",
            "xchg {b}, rbx",
            b = inout(reg) a[0] => _,
            inlateout("rax") ret,
            in("rcx") a[1],
            in("rdx") a[2],
            in("rsi") a[3],
            in("rdi") 4u64,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
        );
    }
    i64::from(ret as u32 as i32)
}

#[cfg(target_arch = "x86_64")]
fn ia32_getpid(_: u32) -> i64 {
    int80(20, [0; 4])
}

#[cfg(target_arch = "x86_64")]
fn x32_getpid(_: u32) -> i64 {
    // SAFETY: getpid through the x32 numbering; no arguments.
    let r = unsafe { libc::syscall((compat::X32_BIT + 39) as std::ffi::c_long) };
    if r < 0 {
        -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(1))
    } else {
        r
    }
}

#[cfg(target_arch = "x86_64")]
fn ia32_selftest(token: u32) -> i64 {
    // setsockopt(SELFTEST_FD, SOL_PACKET, PACKET_QDISC_BYPASS, token, 4): EBADF if not killed.
    int80(
        compat::I386_SETSOCKOPT,
        [
            u64::from(compat::SELFTEST_FD as u32),
            263,
            20,
            u64::from(token),
        ],
    )
}

#[cfg(target_arch = "x86_64")]
fn ia32_socketcall_selftest(token: u32) -> i64 {
    // socketcall(SYS_SETSOCKOPT, token) with SELFTEST_FD in the unused edx: EFAULT if not killed.
    int80(
        compat::I386_SOCKETCALL,
        [
            compat::SYS_SETSOCKOPT,
            u64::from(token),
            u64::from(compat::SELFTEST_FD as u32),
            0,
        ],
    )
}

#[cfg(target_arch = "x86_64")]
fn ia32_uring_selftest(token: u32) -> i64 {
    // io_uring_setup(SELFTEST_FD, token): EFAULT or EINVAL if not killed.
    int80(
        compat::IO_URING_SETUP,
        [
            u64::from(compat::SELFTEST_FD as u32),
            u64::from(token),
            0,
            0,
        ],
    )
}

#[cfg(target_arch = "x86_64")]
fn x32_uring_selftest(token: u32) -> i64 {
    // SAFETY: io_uring_setup through the x32 numbering with an invalid size and pointer.
    let r = unsafe {
        libc::syscall(
            (compat::X32_BIT + compat::IO_URING_SETUP) as std::ffi::c_long,
            compat::SELFTEST_FD as u32 as usize,
            token as usize,
        )
    };
    if r < 0 { -1 } else { r }
}

#[cfg(target_arch = "x86_64")]
fn x32_selftest(token: u32) -> i64 {
    // SAFETY: setsockopt through the x32 numbering on a descriptor that is never valid.
    let r = unsafe {
        libc::syscall(
            (compat::X32_BIT + compat::X32_SETSOCKOPT) as std::ffi::c_long,
            compat::SELFTEST_FD,
            263,
            20,
            token as usize,
            4,
        )
    };
    if r < 0 { -1 } else { r }
}

/// The compat entries this kernel runs (a child makes `getpid` through each).
pub fn entries() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut v = Vec::new();
        if in_child(ia32_getpid, 0).is_ok_and(|e| e == Ended::Exited(0)) {
            v.push("ia32");
        }
        if in_child(x32_getpid, 0).is_ok_and(|e| e == Ended::Exited(0)) {
            v.push("x32");
        }
        v
    }
    #[cfg(not(target_arch = "x86_64"))]
    Vec::new()
}

/// A start check: one compat call in a child, given the install's token.
type Check = fn(u32) -> i64;

/// With the guard attached: each entry's compat `setsockopt`, `socketcall(SYS_SETSOCKOPT)` (i386)
/// and `io_uring_setup` carrying `token` must be killed, which proves every attach point (a
/// kprobe per call) sees them.
pub fn prove(entries: &[&'static str], token: u32) -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    for e in entries {
        let checks: &[(&str, Check)] = if *e == "x32" {
            &[
                ("setsockopt", x32_selftest),
                ("io_uring_setup", x32_uring_selftest),
            ]
        } else {
            &[
                ("setsockopt", ia32_selftest),
                ("socketcall", ia32_socketcall_selftest),
                ("io_uring_setup", ia32_uring_selftest),
            ]
        };
        for (call, f) in checks {
            match in_child(*f, token) {
                Ok(Ended::Signaled(s)) if s == rustix::process::Signal::KILL.as_raw() => {}
                Ok(other) => {
                    return Err(format!(
                        "a {e} {call} was not stopped by the compat guard ({other:?})"
                    ));
                }
                Err(err) => return Err(format!("start check of the {e} {call}: {err}")),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (entries, token);
    Ok(())
}
