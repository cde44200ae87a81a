//! The bpffs layout: paths of maps, programs and links, the mount, the layout check of an
//! install, and pinning links (a replaced pin never leaves a window; the raw `cgroup/setsockopt`
//! link aya does not make).

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Map, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};

use super::{ADDED_MAPS, LoadError, MAPS};

pub(super) fn map_path(bpffs: &Path, name: &str) -> PathBuf {
    bpffs.join("maps").join(name)
}

/// Where a program itself is pinned (the TC program, which the per-netns backstop attaches).
pub fn prog_path(bpffs: &Path, prog: &str) -> PathBuf {
    bpffs.join("progs").join(prog)
}

pub(super) fn link_path(bpffs: &Path, prog: &str, target: Option<&str>) -> PathBuf {
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
        rustix::mount::mount(
            "bpf",
            root,
            "bpf",
            rustix::mount::MountFlags::empty(),
            None::<&std::ffi::CStr>,
        )
        .map_err(|e| err(e.into()))?;
    }
    fs::create_dir_all(bpffs.join("maps")).map_err(err)?;
    fs::create_dir_all(bpffs.join("links")).map_err(err)?;
    fs::create_dir_all(bpffs.join("progs")).map_err(err)?;
    Ok(())
}

/// Checks that every pinned map has this build's key and value sizes.
pub(super) fn check_layout(bpffs: &Path) -> Result<bool, LoadError> {
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

pub(super) fn take<T>(
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
pub(super) fn pinned_program_tag(path: &Path) -> Option<u64> {
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
pub(super) fn pin_replace(link: FdLink, path: &Path) -> Result<(), LoadError> {
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
pub(super) fn fd_link<L>(link: L, path: &Path) -> Result<FdLink, LoadError>
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
pub(super) fn sockopt_link(
    prog: std::os::fd::BorrowedFd<'_>,
    cgroup: std::os::fd::BorrowedFd<'_>,
    path: &Path,
) -> Result<FdLink, LoadError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const BPF_OBJ_PIN: std::ffi::c_long = 6;
    const BPF_LINK_CREATE: std::ffi::c_long = 28;
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
