//! The TC backstop's attachment: a tcx link where the kernel has tcx (6.6+), else a `clsact`
//! qdisc with a direct-action `cls_bpf` filter (older kernels such as 6.1).
//!
//! Which one is used is detected, not guessed from the version: the tcx link is tried first and a
//! kernel that does not know the tcx attach type refuses it (`EINVAL`), which selects the clsact
//! fallback.
//!
//! A clsact filter is not a bpf link: it stays in the kernel without any pin, tied to the
//! interface. So it is installed at a fixed priority and handle ([`PRIORITY`], [`HANDLE`]) and
//! the program behind it is pinned at `tc/<program>@<iface spec>` (dots written as `%`, which
//! bpffs accepts and interface names never contain). A restart replaces the filter's program in
//! place (one netlink change, no window without a program); `uninstall` deletes the filter and
//! the pin. The clsact qdisc itself is left in place: other software's filters may live on it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::programs::{
    Link as _, ProgramError, SchedClassifier, TcAttachType,
    links::FdLink,
    loaded_programs,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
};

/// Priority of the agent's clsact filter: first, so no other filter's verdict runs before it.
pub const PRIORITY: u16 = 1;
/// Handle of the agent's clsact filter.
pub const HANDLE: TcHandle = TcHandle::new(0, 0xc0c9);

/// How the TC backstop is attached on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcMode {
    /// tcx bpf links (6.6+), pinned under `links/`.
    Tcx,
    /// clsact qdisc with a direct-action filter (before 6.6), program pinned under `tc/`.
    Clsact,
}

impl TcMode {
    /// The mode's name as the status shows it (`tcx`, `clsact`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Clsact => "clsact",
        }
    }
}

/// `iface[:ingress|:egress]` → (interface, direction); egress when not given.
pub fn parse_spec(spec: &str) -> (&str, TcAttachType) {
    match spec.rsplit_once(':') {
        Some((i, "ingress")) => (i, TcAttachType::Ingress),
        Some((i, "egress")) => (i, TcAttachType::Egress),
        _ => (spec, TcAttachType::Egress),
    }
}

/// Pin of the program behind the clsact filter for `spec`.
pub fn clsact_pin(bpffs: &Path, prog: &str, spec: &str) -> PathBuf {
    bpffs
        .join("tc")
        .join(format!("{prog}@{}", spec.replace('.', "%")))
}

/// The iface spec a `tc/` pin name stands for.
pub fn spec_of_pin(name: &str) -> Option<(&str, String)> {
    let (prog, spec) = name.split_once('@')?;
    Some((prog, spec.replace('%', ".")))
}

/// Outcome of attaching one TC target.
pub enum Attach {
    /// A tcx link, to be pinned by the caller like every other link.
    Tcx(FdLink),
    /// A clsact filter, already installed and its program pinned: `kept`, `replaced`, `attached`.
    Clsact(&'static str),
}

pub(super) fn is_no_tcx(e: &ProgramError) -> bool {
    let io = match e {
        ProgramError::SyscallError(s) => Some(&s.io_error),
        _ => None,
    };
    io.and_then(std::io::Error::raw_os_error).is_some_and(|c| {
        c == libc::EINVAL || c == libc::EOPNOTSUPP || c == 524
    } /* ENOTSUPP */)
}

/// Tag of a pinned program, if the pin exists.
fn pinned_prog_tag(path: &Path) -> Option<u64> {
    let info = aya::programs::ProgramInfo::from_pin(path).ok()?;
    let id = info.id();
    loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| p.tag())
}

/// Attaches `p` to `spec`: tcx when `mode` allows and the kernel has it (the detected mode is
/// written back), else the clsact fallback.
pub fn attach(
    p: &mut SchedClassifier,
    bpffs: &Path,
    prog: &str,
    spec: &str,
    mode: &mut Option<TcMode>,
) -> Result<Attach, ProgramError> {
    let (iface, dir) = parse_spec(spec);
    if *mode != Some(TcMode::Clsact) {
        match p.attach_with_options(
            iface,
            dir,
            TcAttachOptions::TcxOrder(aya::programs::LinkOrder::default()),
        ) {
            Ok(id) => {
                *mode = Some(TcMode::Tcx);
                let link = p.take_link(id)?;
                return FdLink::try_from(link)
                    .map(Attach::Tcx)
                    .map_err(|e| ProgramError::IOError(std::io::Error::other(e.to_string())));
            }
            Err(e) if is_no_tcx(&e) && mode.is_none() => {
                tracing::info!(error = %e, "tcx links unavailable on this kernel: the TC backstop uses a clsact qdisc with a direct-action filter");
                *mode = Some(TcMode::Clsact);
            }
            Err(e) => return Err(e),
        }
    }
    attach_clsact(p, bpffs, prog, spec, iface, dir).map(Attach::Clsact)
}

fn attach_clsact(
    p: &mut SchedClassifier,
    bpffs: &Path,
    prog: &str,
    spec: &str,
    iface: &str,
    dir: TcAttachType,
) -> Result<&'static str, ProgramError> {
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let pin = clsact_pin(bpffs, prog, spec);
    let old_tag = pinned_prog_tag(&pin);
    let new_tag = p.info().map(|i| i.tag()).ok();
    // Replace the program of our filter in place when the filter exists (atomic: the kernel swaps
    // the program of one filter), else create it.
    let existing = SchedClassifierLink::attached(iface, dir, PRIORITY, HANDLE, None)
        .map_err(ProgramError::IOError)?;
    let (id, how) = match p.attach_to_link(existing) {
        Ok(id) if old_tag.is_some() && old_tag == new_tag => (id, "kept"),
        Ok(id) => (id, "replaced"),
        Err(_) => {
            let id = p.attach_with_options(
                iface,
                dir,
                TcAttachOptions::Netlink(NlOptions {
                    priority: PRIORITY,
                    handle: HANDLE,
                    classid: None,
                }),
            )?;
            (id, "attached")
        }
    };
    // The filter must outlive this process: take it from the program and never detach it (the
    // link wrapper detaches on drop).
    std::mem::forget(p.take_link(id)?);
    // Pin the program (new pin first, then rename over the old one).
    fs::create_dir_all(pin.parent().expect("tc dir")).map_err(ProgramError::IOError)?;
    let mut tmp = pin.file_name().unwrap_or_default().to_os_string();
    tmp.push("_new");
    let tmp = pin.with_file_name(tmp);
    let _ = fs::remove_file(&tmp);
    p.pin(&tmp)
        .map_err(|e| ProgramError::IOError(std::io::Error::other(e.to_string())))?;
    fs::rename(&tmp, &pin).map_err(ProgramError::IOError)?;
    Ok(how)
}

/// Clsact filters pinned under `bpffs/tc`: (program, iface spec).
pub fn pinned(bpffs: &Path) -> Vec<(String, String)> {
    let Ok(rd) = fs::read_dir(bpffs.join("tc")) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.ends_with("_new"))
        .filter_map(|n| spec_of_pin(&n).map(|(p, s)| (p.to_string(), s)))
        .collect()
}

/// Deletes the agent's clsact filter of `spec` (in the calling thread's network namespace).
fn delete_filter(spec: &str) {
    let (iface, attach) = parse_spec(spec);
    if let Ok(link) = SchedClassifierLink::attached(iface, attach, PRIORITY, HANDLE, None)
        && let Err(e) = link.detach()
    {
        tracing::warn!(iface, error = %e, "removing the clsact filter failed");
    }
}

/// Deletes the clsact filter of `spec` and its pin when there is one (the target moved to a tcx
/// link).
pub fn remove_clsact(bpffs: &Path, prog: &str, spec: &str) {
    let pin = clsact_pin(bpffs, prog, spec);
    if pin.exists() {
        delete_filter(spec);
        let _ = fs::remove_file(pin);
    }
}

/// Deletes every clsact filter the agent installed under `bpffs` and its pin; returns the pins
/// removed. A filter whose interface is gone went with it.
pub fn uninstall(bpffs: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = bpffs.join("tc");
    let mut removed = Vec::new();
    let Ok(rd) = fs::read_dir(&dir) else {
        return Ok(removed);
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some((_, spec)) = spec_of_pin(&name) {
            delete_filter(&spec);
        }
        fs::remove_file(e.path())?;
        removed.push(e.path());
    }
    fs::remove_dir(&dir)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip() {
        let p = clsact_pin(Path::new("/b"), "cp_tc_egress", "eth0.100:ingress");
        assert_eq!(
            p,
            Path::new("/b/tc/cp_tc_egress@eth0%100:ingress").to_path_buf()
        );
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            spec_of_pin(name),
            Some(("cp_tc_egress", "eth0.100:ingress".to_string()))
        );
        assert_eq!(parse_spec("veth1"), ("veth1", TcAttachType::Egress));
        assert_eq!(
            parse_spec("veth1:ingress"),
            ("veth1", TcAttachType::Ingress)
        );
    }
}
