//! Loading, attaching, pinning and adopting the kernel programs.
//!
//! Layout under `--bpffs` (default `/sys/fs/bpf/chokepoint`):
//! `maps/<MAP>` for every map and `links/<program>` (TC: `links/cp_tc_egress@<iface>`) for every
//! link; on kernels without tcx (before 6.6) the TC backstop is a clsact filter whose program is
//! pinned at `tc/cp_tc_egress@<iface>` (see [`tc`]). Pinned links keep enforcing when the daemon exits; only `chokepoint uninstall` removes
//! them. At start the daemon reuses pinned maps (so policy, grants, socket tags and unread
//! records survive), and for every program either keeps the pinned link (same program) or
//! attaches the new program first and then replaces the old link's pin (no window without a
//! program).

pub mod backstop;
mod batch;
pub mod compat;
pub mod features;
pub mod fqdn;
pub mod maps;
pub mod pins;
mod slots;
pub mod tc;

use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkbAttachType, Program,
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use chokepoint_common::names;
use tracing::{debug, info, warn};

pub use self::maps::{GrantSpec, IdentBinding, PolicyMaps, Stats};

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chokepoint"));

/// Every map the agent pins.
pub const MAPS: [&str; 17] = [
    names::CONFIG,
    names::IDENT,
    names::RULES,
    names::GRANTS,
    names::CGCACHE,
    names::SKTAG,
    names::EVENTS,
    names::STATS,
    names::ATTEST,
    names::ACCEPT,
    names::REPLY,
    names::FQDN,
    names::DNSPX,
    names::DNSCFG,
    names::DNSORIG,
    names::DNSANS,
    names::DNSLOST,
];

/// Maps added after the first release: an install pinned without them adopts the rest and
/// gets these created (they hold only short-lived connection state).
const ADDED_MAPS: [&str; 4] = [names::ACCEPT, names::REPLY, names::DNSANS, names::DNSLOST];

/// Errors of the loader.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("this binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild without it")]
    NoObject,
    #[error("cannot prepare bpffs at {path}: {source}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object failed: {0}")]
    Ebpf(#[from] aya::EbpfError),
    #[error("program {name} (needs {}): {source}", features::needs(name))]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the pinned maps under {dir} do not match this build's layout ({what}); refusing to touch them (enforcement stays as pinned). Run `chokepoint uninstall` to remove them"
    )]
    LayoutMismatch { dir: PathBuf, what: String },
    #[error("cgroup root {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the initial policy failed: {0}")]
    Fill(#[from] maps::MapsError),
}

/// State of one attached program.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attached {
    pub program: String,
    pub target: String,
    pub pin: PathBuf,
    /// `kept` (adopted as pinned), `attached` (new), `replaced` (new program, old link replaced).
    pub how: &'static str,
}

/// The loaded kernel side.
pub struct Kernel {
    pub policy: PolicyMaps,
    pub attest: maps::Attest,
    pub fqdn: fqdn::FqdnMaps,
    pub events: Option<RingBuf<MapData>>,
    /// DNS answers of identities (host names for the inventory) and their loss counter.
    pub dns_answers: Option<(RingBuf<MapData>, PerCpuArray<MapData, u64>)>,
    pub stats: Stats,
    pub attached: Vec<Attached>,
    /// Programs that could not attach (e.g. no BPF LSM): name → reason.
    pub degraded: Vec<(String, String)>,
    /// Kernel features detected at start (BPF LSM, TC attach mode, packet socket coverage).
    pub features: features::Features,
    /// True when the maps were adopted from pins (a restart), false on a fresh install.
    pub adopted: bool,
}

fn map_path(bpffs: &Path, name: &str) -> PathBuf {
    bpffs.join("maps").join(name)
}

/// Where a program itself is pinned (the TC program, which the per-netns backstop attaches).
pub fn prog_path(bpffs: &Path, prog: &str) -> PathBuf {
    bpffs.join("progs").join(prog)
}

fn link_path(bpffs: &Path, prog: &str, target: Option<&str>) -> PathBuf {
    match target {
        // bpffs refuses names with a dot (vlan interfaces such as eth0.100).
        Some(t) => bpffs
            .join("links")
            .join(format!("{prog}@{}", t.replace('.', "_"))),
        None => bpffs.join("links").join(prog),
    }
}

/// Mounts bpffs at `/sys/fs/bpf` when it is not mounted, and creates the agent's directories.
pub fn prepare_bpffs(bpffs: &Path) -> Result<(), LoadError> {
    let err = |source| LoadError::Bpffs {
        path: bpffs.to_path_buf(),
        source,
    };
    let mounts = fs::read_to_string("/proc/self/mountinfo").map_err(err)?;
    let has_bpffs = mounts
        .lines()
        .any(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with("bpf ")));
    if !has_bpffs {
        let root = Path::new("/sys/fs/bpf");
        fs::create_dir_all(root).map_err(err)?;
        let src = std::ffi::CString::new("bpf").expect("static");
        let dst = std::ffi::CString::new("/sys/fs/bpf").expect("static");
        // SAFETY: plain mount(2) with valid C strings.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
    }
    fs::create_dir_all(bpffs.join("maps")).map_err(err)?;
    fs::create_dir_all(bpffs.join("links")).map_err(err)?;
    fs::create_dir_all(bpffs.join("progs")).map_err(err)?;
    Ok(())
}

/// True when the maps are pinned (enforcement state exists).
pub fn is_installed(bpffs: &Path) -> bool {
    map_path(bpffs, names::CONFIG).exists()
}

/// Checks that every pinned map has this build's key and value sizes.
fn check_layout(bpffs: &Path) -> Result<bool, LoadError> {
    let present: Vec<&str> = MAPS
        .iter()
        .copied()
        .filter(|n| map_path(bpffs, n).exists())
        .collect();
    if present.is_empty() {
        return Ok(false);
    }
    let dir = bpffs.join("maps");
    let missing: Vec<&str> = MAPS
        .iter()
        .copied()
        .filter(|n| !present.contains(n) && !ADDED_MAPS.contains(n))
        .collect();
    if !missing.is_empty() {
        return Err(LoadError::LayoutMismatch {
            dir,
            what: format!("missing maps: {}", missing.join(", ")),
        });
    }
    use chokepoint_common::{
        Config, FqdnKey, FqdnVal, GrantVal, IdentKey, IdentVal, LpmKey, RuleVal, names,
    };
    let expect: [(&str, u32, u32); 5] = [
        (names::CONFIG, 4, size_of::<Config>() as u32),
        (
            names::IDENT,
            size_of::<IdentKey>() as u32,
            size_of::<IdentVal>() as u32,
        ),
        (
            names::RULES,
            size_of::<LpmKey>() as u32,
            size_of::<RuleVal>() as u32,
        ),
        (
            names::GRANTS,
            size_of::<LpmKey>() as u32,
            size_of::<GrantVal>() as u32,
        ),
        (
            names::FQDN,
            size_of::<FqdnKey>() as u32,
            size_of::<FqdnVal>() as u32,
        ),
    ];
    for (name, k, v) in expect {
        let md = MapData::from_pin(map_path(bpffs, name)).map_err(|source| LoadError::Map {
            name: name.into(),
            source,
        })?;
        let info = md.info().map_err(|source| LoadError::Map {
            name: name.into(),
            source,
        })?;
        if info.key_size() != k || info.value_size() != v {
            return Err(LoadError::LayoutMismatch {
                dir,
                what: format!(
                    "{name}: key {} value {} bytes, this build expects {k} and {v}",
                    info.key_size(),
                    info.value_size()
                ),
            });
        }
    }
    Ok(true)
}

fn take<T>(
    bpf: &mut Ebpf,
    name: &str,
    conv: impl FnOnce(Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, LoadError> {
    let map = bpf.take_map(name).ok_or_else(|| LoadError::Map {
        name: name.into(),
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })?;
    conv(map).map_err(|source| LoadError::Map {
        name: name.into(),
        source,
    })
}

/// Tag of the program behind a pinned link, if the pin exists.
fn pinned_program_tag(path: &Path) -> Option<u64> {
    let link = PinnedLink::from_pin(path).ok()?;
    let fd: FdLink = link.into();
    let prog_id = fd.info().ok()?.program_id();
    loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .map(|p| p.tag())
}

/// Pins `link` at `path`, replacing an existing pin atomically (rename), which releases the old
/// link only after the new one is attached.
fn pin_replace(link: FdLink, path: &Path) -> Result<(), LoadError> {
    // bpffs refuses names containing a dot.
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push("_new");
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let pinned = link.pin(&tmp).map_err(|e| LoadError::Pin {
        path: tmp.clone(),
        source: Box::new(e),
    })?;
    fs::rename(&tmp, path).map_err(|e| LoadError::Pin {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    drop(pinned);
    Ok(())
}

/// Turns a program's link into an `FdLink` (every link this agent makes is fd-based).
fn fd_link<L>(link: L, path: &Path) -> Result<FdLink, LoadError>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    FdLink::try_from(link).map_err(|e| LoadError::Pin {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// A `cgroup/setsockopt` link as an `FdLink` (aya 0.14 offers no conversion for this link
/// type): `BPF_LINK_CREATE` directly, pinned once at a scratch path and reopened.
fn sockopt_link(
    prog: std::os::fd::BorrowedFd<'_>,
    cgroup: std::os::fd::BorrowedFd<'_>,
    path: &Path,
) -> Result<FdLink, LoadError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_CGROUP_SETSOCKOPT: u32 = 22;
    let err = |source: std::io::Error| LoadError::Pin {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags (then zeroes).
    let mut attr = [0u32; 16];
    attr[0] = prog.as_raw_fd() as u32;
    attr[1] = cgroup.as_raw_fd() as u32;
    attr[2] = BPF_CGROUP_SETSOCKOPT;
    // SAFETY: bpf(2) with a zero-padded attribute block of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh link fd we own.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut scratch = path.file_name().unwrap_or_default().to_os_string();
    scratch.push("_raw");
    let scratch = path.with_file_name(scratch);
    let _ = fs::remove_file(&scratch);
    let cpath = std::ffi::CString::new(scratch.as_os_str().as_encoded_bytes())
        .map_err(|e| err(std::io::Error::other(e)))?;
    // obj_pin: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut pin = [0u64; 4];
    pin[0] = cpath.as_ptr() as u64;
    pin[1] = link.as_raw_fd() as u64;
    // SAFETY: bpf(2) with a zero-padded attribute block; cpath outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            pin.as_ptr(),
            std::mem::size_of_val(&pin),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    let pinned = PinnedLink::from_pin(&scratch).map_err(|e| LoadError::Pin {
        path: scratch.clone(),
        source: Box::new(e),
    });
    let _ = fs::remove_file(&scratch);
    Ok(FdLink::from(pinned?))
}

/// Options for [`start`].
pub struct StartOptions<'a> {
    pub bpffs: &'a Path,
    pub cgroup_root: &'a Path,
    pub tc_ifaces: &'a [String],
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
        retired: None,
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
    let mut tc_mode: Option<tc::TcMode> = None;
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
                if old_tag.is_some() && old_tag == new_tag {
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
    if !compat_guard.entries.is_empty() {
        let proven = if attached.iter().any(|a| a.program == names::PROG_COMPAT_SYS) {
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

/// Pinned links present under `bpffs`: (program, target), clsact filters (`tc/`) included.
pub fn pinned_links(bpffs: &Path) -> Vec<(String, Option<String>)> {
    let mut v: Vec<(String, Option<String>)> = fs::read_dir(bpffs.join("links"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.ends_with("_new"))
        .map(|n| match n.split_once('@') {
            Some((p, t)) => (p.to_string(), Some(t.to_string())),
            None => (n, None),
        })
        .collect();
    v.extend(tc::pinned(bpffs).into_iter().map(|(p, t)| (p, Some(t))));
    v.sort();
    v
}

/// Detaches and unpins everything under `bpffs`: links first (enforcement stops), then maps.
pub fn uninstall(bpffs: &Path) -> std::io::Result<Vec<PathBuf>> {
    // The clsact filters (kernels without tcx) first, like links: enforcement stops, then maps.
    let mut removed = tc::uninstall(bpffs)?;
    // The kernel releases an unpinned link after an RCU grace period and a workqueue run, so
    // enforcement can outlive the unlink by a moment: note the links' ids, then wait for them.
    let link_ids: Vec<u32> = fs::read_dir(bpffs.join("links"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| PinnedLink::from_pin(e.path()).ok())
        .filter_map(|l| FdLink::from(l).info().ok().map(|i| i.id()))
        .collect();
    for sub in ["links", "progs", "maps"] {
        let dir = bpffs.join(sub);
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.filter_map(Result::ok) {
                fs::remove_file(e.path())?;
                removed.push(e.path());
            }
            fs::remove_dir(&dir)?;
        }
    }
    if bpffs.exists() {
        let _ = fs::remove_dir(bpffs);
    }
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(10) {
        let live = aya::programs::loaded_links()
            .filter_map(Result::ok)
            .any(|l| link_ids.contains(&l.id()));
        if !live {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(removed)
}
