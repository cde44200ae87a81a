//! Stopping a run cleanly: SIGINT and SIGTERM set a flag that every step checks, so the guards
//! on the stack (daemon, namespaces, cgroups, bpf_stats) clean up as the run unwinds.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::bail;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to [`INTERRUPTED`]; the run checks it between steps and unwinds.
pub(crate) fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Fails once a stop was requested, so every guard on the stack cleans up as it unwinds.
pub(crate) fn check() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaned up the daemon, namespaces and cgroups");
    }
    Ok(())
}

/// Sleeps `d` in short steps, stopping early when interrupted.
pub(crate) fn nap(d: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    while t.elapsed() < d {
        check()?;
        std::thread::sleep(Duration::from_millis(50).min(d.saturating_sub(t.elapsed())));
    }
    check()
}

/// `kernel.bpf_stats_enabled` on while it lives (stats add ~2 x 20 ns per run, so only for the
/// per-program pass).
pub(crate) struct BpfStats;

impl BpfStats {
    pub(crate) fn on() -> Self {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
        Self
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}
