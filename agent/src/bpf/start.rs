//! Start: load the object, adopt or create the pinned maps, fill a fresh install, attach every
//! program (a replaced link never leaves a window) and report what is attached.

use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Btf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSkbAttachType, Program, links::FdLink},
};
use chokepoint_common::names;
use tracing::{debug, info, warn};

use super::{
    Attached, Kernel, LoadError, MAPS, OBJECT, PolicyMaps, Stats, compat, compat_hook, features,
    fqdn, maps,
    pinning::{
        check_layout, fd_link, link_path, map_path, pin_replace, pinned_program_tag, sockopt_link,
        take,
    },
    prepare_bpffs, prog_path, tc,
};

/// Options for [`start`].
pub struct StartOptions<'a> {
    /// The bpffs directory of the pins.
    pub bpffs: &'a Path,
    /// The cgroup v2 root the cgroup programs attach to.
    pub cgroup_root: &'a Path,
    /// `--tc-iface` interfaces of the TC backstop.
    pub tc_ifaces: &'a [String],
    /// `--tc-mode` (`None`: tcx where the kernel has it, else clsact).
    pub tc_mode: Option<tc::TcMode>,
}

/// Loads the object (reusing pinned maps), fills fresh maps with `fill`, attaches every program
/// (keeping identical pinned links), and pins everything.
pub fn start(
    opts: &StartOptions<'_>,
    fill: impl FnOnce(&mut PolicyMaps) -> Result<(), maps::MapsError>,
) -> Result<Kernel, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    prepare_bpffs(opts.bpffs)?;
    let adopted = check_layout(opts.bpffs)?;
    let btf = Btf::from_sys_fs().ok();
    let mut loader = EbpfLoader::new();
    loader.btf(btf.as_ref());
    let token = compat::token(opts.bpffs);
    loader.override_global("CP_SELFTEST_TOKEN", &token, true);
    if std::env::var_os("CHOKEPOINT_VERIFIER_LOG").is_some() {
        loader.verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
    }
    let pin_paths: Vec<(&str, PathBuf)> =
        MAPS.iter().map(|n| (*n, map_path(opts.bpffs, n))).collect();
    if adopted {
        for (n, p) in &pin_paths {
            loader.map_pin_path(n, p.as_path());
        }
    }
    let mut bpf = loader.load(OBJECT)?;
    if !adopted {
        for (name, path) in &pin_paths {
            let map = bpf.map_mut(name).ok_or_else(|| LoadError::Map {
                name: (*name).into(),
                source: aya::maps::MapError::InvalidName {
                    name: (*name).into(),
                },
            })?;
            let _ = fs::remove_file(path);
            map.pin(path).map_err(|e| LoadError::Pin {
                path: path.clone(),
                source: Box::new(e),
            })?;
        }
    }

    let mut policy = PolicyMaps {
        config: take(&mut bpf, names::CONFIG, Array::try_from)?,
        ident: take(&mut bpf, names::IDENT, HashMap::try_from)?,
        rules: take(&mut bpf, names::RULES, LpmTrie::try_from)?,
        grants: take(&mut bpf, names::GRANTS, LpmTrie::try_from)?,
        written: [None, None],
        holds: [None, None],
    };
    if !adopted {
        fill(&mut policy)?;
    }
    let events = Some(take(&mut bpf, names::EVENTS, RingBuf::try_from)?);
    let dns_answers = Some((
        take(&mut bpf, names::DNSANS, RingBuf::try_from)?,
        take(&mut bpf, names::DNSLOST, PerCpuArray::try_from)?,
    ));
    let stats = Stats {
        map: take(&mut bpf, names::STATS, PerCpuArray::try_from)?,
    };
    let attest = maps::Attest {
        map: take(&mut bpf, names::ATTEST, HashMap::try_from)?,
    };

    let fqdn = fqdn::FqdnMaps {
        learned: take(&mut bpf, names::FQDN, HashMap::try_from)?,
        proxies: take(&mut bpf, names::DNSPX, HashMap::try_from)?,
        cfg: take(&mut bpf, names::DNSCFG, Array::try_from)?,
    };

    let cgroup = fs::File::open(opts.cgroup_root).map_err(|source| LoadError::Cgroup {
        path: opts.cgroup_root.to_path_buf(),
        source,
    })?;
    let mut attached = Vec::new();
    let mut degraded = Vec::new();
    let mut tc_mode: Option<tc::TcMode> = opts.tc_mode;
    let mut compat_guard = compat::CompatGuard::default();
    let btf_ref = btf.as_ref();
    for name in names::PROGRAMS {
        if name == names::PROG_COMPAT_SYS {
            compat_guard.entries = compat::entries();
            if compat_guard.entries.is_empty() {
                // The guard reads x86-64 registers; other architectures' compat entries
                // (aarch32) are not covered, and `status` says so.
                compat_guard.guard = if cfg!(target_arch = "x86_64") {
                    "not_needed"
                } else {
                    "unsupported_arch"
                };
                continue;
            }
            // Kprobes on the judged calls' compat entries first: no other syscall runs them.
            let targets = compat_hook::kprobe_targets(&compat_guard.entries);
            match compat_hook::attach_kprobes(&mut bpf, opts.bpffs, &targets)
                .and_then(|a| compat::prove(&compat_guard.entries, token).map(|()| a))
            {
                Ok(a) => {
                    for x in &a {
                        info!(program = %x.program, target = %x.target, how = x.how, "program attached");
                    }
                    attached.extend(a);
                    compat_guard.guard = "kill";
                    compat_guard.hook = "kprobe";
                    compat_guard.attach = targets.iter().map(|t| (*t).to_string()).collect();
                    compat_hook::remove_unused(opts.bpffs, "kprobe");
                    continue;
                }
                Err(why) => {
                    info!(reason = %why, "compat guard: kprobes not usable, attaching raw_tracepoint/sys_enter (every syscall of the host runs it)");
                    compat_guard.kprobe_unavailable = Some(why);
                }
            }
        }
        // Programs whose failure degrades the daemon instead of stopping the start.
        let optional = name == names::PROG_LSM_SOCKET || name == names::PROG_COMPAT_SYS;
        let targets: Vec<Option<String>> = if name == names::PROG_TC_EGRESS {
            opts.tc_ifaces.iter().cloned().map(Some).collect()
        } else {
            vec![None]
        };
        // The TC program is loaded (and pinned under `progs/`) even without `--tc-iface`: the
        // per-netns backstop attaches it where identities live.
        if targets.is_empty() && name != names::PROG_TC_EGRESS {
            continue;
        }
        let prog = bpf.program_mut(name).ok_or_else(|| LoadError::Program {
            name: name.into(),
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?;
        let perr = |source| LoadError::Program {
            name: name.into(),
            source,
        };
        // Load.
        let load_result = match prog {
            Program::CgroupSock(p) => p.load(),
            Program::CgroupSockAddr(p) => p.load(),
            Program::CgroupSkb(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            Program::CgroupSockopt(p) => p.load(),
            Program::SockOps(p) => p.load(),
            Program::RawTracePoint(p) => p.load(),
            Program::Lsm(p) => {
                if let Some(b) = btf_ref {
                    p.load("socket_create", b)
                } else {
                    degraded.push((name.to_string(), "kernel BTF unavailable".to_string()));
                    continue;
                }
            }
            _ => return Err(perr(aya::programs::ProgramError::UnexpectedProgramType)),
        };
        if let Err(e) = load_result {
            if optional {
                warn!(program = name, error = %e, "program unavailable on this kernel: {}", features::needs(name));
                degraded.push((name.to_string(), format!("load failed: {e}")));
                continue;
            }
            return Err(perr(e));
        }
        // What the verifier walked (Linux 5.16+): the margin to its 1M-instruction limit.
        let verified = prog
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count());
        debug!(program = name, verified_insns = ?verified, "program loaded");
        if let Program::SchedClassifier(p) = prog {
            let path = prog_path(opts.bpffs, name);
            let _ = fs::remove_file(&path);
            p.pin(&path).map_err(|e| LoadError::Pin {
                path: path.clone(),
                source: Box::new(e),
            })?;
        }
        let new_tag = prog.info().map(|i| i.tag()).ok();
        for target in targets {
            let path = link_path(opts.bpffs, name, target.as_deref());
            if let (Program::SchedClassifier(p), Some(spec)) = (&mut *prog, target.as_deref()) {
                let old_tag = pinned_program_tag(&path);
                if old_tag.is_some() && old_tag == new_tag && tc_mode != Some(tc::TcMode::Clsact) {
                    tc_mode.get_or_insert(tc::TcMode::Tcx);
                    attached.push(Attached {
                        program: name.into(),
                        target: spec.to_string(),
                        pin: path,
                        how: "kept",
                    });
                    continue;
                }
                let (pin, how) =
                    match tc::attach(p, opts.bpffs, name, spec, &mut tc_mode).map_err(perr)? {
                        tc::Attach::Tcx(link) => {
                            pin_replace(link, &path)?;
                            // A clsact filter of an earlier `--tc-mode clsact` run goes.
                            tc::remove_clsact(opts.bpffs, name, spec);
                            (
                                path,
                                if old_tag.is_some() {
                                    "replaced"
                                } else {
                                    "attached"
                                },
                            )
                        }
                        tc::Attach::Clsact(how) => {
                            // A tcx link pinned on another kernel went with that kernel.
                            let _ = fs::remove_file(&path);
                            (tc::clsact_pin(opts.bpffs, name, spec), how)
                        }
                    };
                let mode = tc_mode.map_or("?", tc::TcMode::name);
                info!(program = name, target = spec, how, mode, "program attached");
                attached.push(Attached {
                    program: name.into(),
                    target: spec.to_string(),
                    pin,
                    how,
                });
                continue;
            }
            let old_tag = pinned_program_tag(&path);
            let target_name = target
                .clone()
                .unwrap_or_else(|| opts.cgroup_root.display().to_string());
            if old_tag.is_some() && old_tag == new_tag {
                attached.push(Attached {
                    program: name.into(),
                    target: target_name,
                    pin: path,
                    how: "kept",
                });
                continue;
            }
            let link: Result<FdLink, LoadError> = (|| {
                let fd_link: FdLink = match prog {
                    Program::CgroupSock(p) => {
                        let id = p
                            .attach(cgroup.as_fd(), CgroupAttachMode::Single)
                            .map_err(perr)?;
                        fd_link(p.take_link(id).map_err(perr)?, &path)?
                    }
                    Program::CgroupSockAddr(p) => {
                        let id = p
                            .attach(cgroup.as_fd(), CgroupAttachMode::Single)
                            .map_err(perr)?;
                        fd_link(p.take_link(id).map_err(perr)?, &path)?
                    }
                    Program::CgroupSkb(p) => {
                        let dir = if name == names::PROG_SKB_INGRESS {
                            CgroupSkbAttachType::Ingress
                        } else {
                            CgroupSkbAttachType::Egress
                        };
                        let id = p
                            .attach(cgroup.as_fd(), dir, CgroupAttachMode::Single)
                            .map_err(perr)?;
                        fd_link(p.take_link(id).map_err(perr)?, &path)?
                    }
                    Program::SockOps(p) => {
                        let id = p
                            .attach(cgroup.as_fd(), CgroupAttachMode::Single)
                            .map_err(perr)?;
                        fd_link(p.take_link(id).map_err(perr)?, &path)?
                    }
                    Program::CgroupSockopt(p) => {
                        let fd = p.fd().map_err(perr)?;
                        sockopt_link(fd.as_fd(), cgroup.as_fd(), &path)?
                    }
                    Program::Lsm(p) => {
                        let id = p.attach().map_err(perr)?;
                        FdLink::from(p.take_link(id).map_err(perr)?)
                    }
                    Program::RawTracePoint(p) => {
                        let id = p.attach("sys_enter").map_err(perr)?;
                        FdLink::from(p.take_link(id).map_err(perr)?)
                    }
                    _ => return Err(perr(aya::programs::ProgramError::UnexpectedProgramType)),
                };
                Ok(fd_link)
            })();
            let link = match link {
                Ok(l) => l,
                Err(e) if optional => {
                    warn!(program = name, error = %e, "attach failed");
                    degraded.push((name.to_string(), format!("attach failed: {e}")));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let how = if old_tag.is_some() {
                "replaced"
            } else {
                "attached"
            };
            pin_replace(link, &path)?;
            info!(program = name, target = %target_name, how, "program attached");
            attached.push(Attached {
                program: name.into(),
                target: target_name,
                pin: path,
                how,
            });
        }
    }
    // Programs stay loaded through their pinned links; the Ebpf object may go.
    drop(bpf);
    if !compat_guard.entries.is_empty() && compat_guard.hook != "kprobe" {
        let proven = if attached.iter().any(|a| a.program == names::PROG_COMPAT_SYS) {
            compat_guard.hook = "raw_tracepoint";
            compat_guard.attach = vec!["sys_enter".into()];
            compat_hook::remove_unused(opts.bpffs, "raw_tracepoint");
            compat::prove(&compat_guard.entries, token)
        } else {
            Err(degraded
                .iter()
                .find(|(n, _)| n == names::PROG_COMPAT_SYS)
                .map_or_else(|| "not attached".to_string(), |(_, why)| why.clone()))
        };
        match proven {
            Ok(()) => compat_guard.guard = "kill",
            Err(why) => {
                warn!(program = names::PROG_COMPAT_SYS, error = %why, "32-bit setsockopt is not guarded: PACKET_QDISC_BYPASS through a compat syscall would skip TC");
                compat_guard.guard = "failed";
                if !degraded.iter().any(|(n, _)| n == names::PROG_COMPAT_SYS) {
                    degraded.push((names::PROG_COMPAT_SYS.to_string(), why.clone()));
                }
                compat_guard.detail = Some(why);
            }
        }
    }
    let features = features::detect(
        attached.iter().any(|a| a.program == names::PROG_LSM_SOCKET),
        tc_mode,
        opts.tc_mode,
        opts.tc_ifaces,
        compat_guard,
    );
    Ok(Kernel {
        policy,
        attest,
        fqdn,
        events,
        dns_answers,
        stats,
        attached,
        degraded,
        features,
        adopted,
    })
}
