//! Where the compat syscall guard attaches. Kprobes on the compat entry functions of exactly the
//! syscalls it judges (`cp_compat_kprobe`, one pinned link per function) cost nothing to any
//! other syscall; `raw_tracepoint/sys_enter` (`cp_compat_sys`) puts every syscall of the host on
//! the kernel's tracepoint path (measured ≈ +24 ns per syscall, docs/benchmarks.md). The start
//! tries the kprobes first and takes them only once [`super::compat::prove`] has seen each
//! judged call killed through them; otherwise (no `CONFIG_KPROBES`, no pinnable perf links before
//! Linux 5.15, a renamed entry) the tracepoint, with the reason in `status`. The hook not in use
//! is unpinned only after the one in use is attached and proven: a restart or an upgrade that
//! moves the guard from one hook to the other leaves no window.

use std::{fs, path::Path};

use aya::{
    Ebpf,
    programs::{KProbe, links::FdLink},
};
use chokepoint_common::names;

use super::{
    Attached,
    pinning::{link_path, pin_replace, pinned_program_tag},
};

/// The compat entry functions (x86-64 syscall wrappers, Linux 4.17+) of the judged calls, per
/// entry. x32 has no wrappers of its own for them: its numbers reach the native ones, so those
/// kprobes also run for native `setsockopt` and `io_uring_setup` (judged by the number: nothing).
pub(super) fn kprobe_targets(entries: &[&str]) -> Vec<&'static str> {
    let mut v = Vec::new();
    for e in entries {
        match *e {
            "ia32" => v.extend([
                "__ia32_sys_setsockopt",
                "__ia32_compat_sys_socketcall",
                "__ia32_sys_io_uring_setup",
            ]),
            "x32" => v.extend(["__x64_sys_setsockopt", "__x64_sys_io_uring_setup"]),
            _ => {}
        }
    }
    v
}

/// Loads `cp_compat_kprobe` and keeps (same program) or attaches a pinned link at each of
/// `targets`. The error names the first failure; links pinned before it stay (the tracepoint
/// replaces them, [`remove_unused`]).
pub(super) fn attach_kprobes(
    bpf: &mut Ebpf,
    bpffs: &Path,
    targets: &[&str],
) -> Result<Vec<Attached>, String> {
    if targets.is_empty() {
        return Err("no compat entry function for this kernel's entries".into());
    }
    // aya falls back to tracefs `kprobe_events` without the PMU; those links cannot be pinned.
    if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        return Err("no kprobe PMU (a kernel without CONFIG_KPROBES)".into());
    }
    let prog: &mut KProbe = bpf
        .program_mut(names::PROG_COMPAT_KPROBE)
        .ok_or("not in the object")?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    prog.load().map_err(|e| format!("load: {e}"))?;
    let tag = prog.info().map(|i| i.tag()).ok();
    let mut out = Vec::new();
    for t in targets {
        let path = link_path(bpffs, names::PROG_COMPAT_KPROBE, Some(t));
        let old = pinned_program_tag(&path);
        let how = match old {
            Some(_) if old == tag => "kept",
            Some(_) => "replaced",
            None => "attached",
        };
        if how != "kept" {
            let id = prog.attach(t, 0).map_err(|e| format!("kprobe {t}: {e}"))?;
            let link = prog.take_link(id).map_err(|e| format!("kprobe {t}: {e}"))?;
            let link = FdLink::try_from(link)
                .map_err(|e| format!("kprobe {t}: no pinnable link (Linux 5.15+): {e}"))?;
            pin_replace(link, &path).map_err(|e| format!("kprobe {t}: {e}"))?;
        }
        out.push(Attached {
            program: names::PROG_COMPAT_KPROBE.into(),
            target: (*t).to_string(),
            pin: path,
            how,
        });
    }
    Ok(out)
}

/// Unpins the links of the hook not in use (`kprobe` in use: the tracepoint's; otherwise every
/// kprobe's), once the one in use is attached.
pub(super) fn remove_unused(bpffs: &Path, in_use: &str) {
    let links = bpffs.join("links");
    if in_use == "kprobe" {
        let _ = fs::remove_file(link_path(bpffs, names::PROG_COMPAT_SYS, None));
        return;
    }
    let prefix = format!("{}@", names::PROG_COMPAT_KPROBE);
    for e in fs::read_dir(&links).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(e.path());
        }
    }
}
