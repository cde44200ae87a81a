//! The clsact fallback of the per-netns backstop (kernels without tcx, or `--tc-mode clsact`):
//! the pins that remember each filter (`tc_netns/cp_tc_egress@ns<INODE>_<IFACE>[:qdisc]`), the
//! attach or in-place program swap of the filter in a namespace, its release and `uninstall`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::programs::{
    SchedClassifier, TcAttachType,
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError, qdisc_add_clsact},
};
use chokepoint_common::names;
use tracing::{info, warn};

use super::{AttachError, CLSACT_DIR, NETNS_HANDLE, PREFIX, in_netns, open_netns};
use crate::bpf::{tc::PRIORITY, tc_nl};

const OWN_QDISC: &str = ":qdisc";

/// A pin of the clsact fallback: which namespace and interface, and whether the agent added the
/// qdisc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ClsactPin {
    pub(super) netns: u64,
    pub(super) iface: String,
    pub(super) own_qdisc: bool,
}

impl ClsactPin {
    pub(super) fn name(&self) -> String {
        format!(
            "{}@{PREFIX}{}_{}{}",
            names::PROG_TC_EGRESS,
            self.netns,
            self.iface.replace('.', "%"),
            if self.own_qdisc { OWN_QDISC } else { "" }
        )
    }

    /// Interface names never hold `:` or `%` (the kernel expands `%d` templates), so the name
    /// parses back.
    fn parse(name: &str) -> Option<Self> {
        let rest = name
            .strip_prefix(names::PROG_TC_EGRESS)?
            .strip_prefix('@')?;
        let rest = rest.strip_prefix(PREFIX)?;
        let (ino, iface) = rest.split_once('_')?;
        let (iface, own_qdisc) = match iface.strip_suffix(OWN_QDISC) {
            Some(i) => (i, true),
            None => (iface, false),
        };
        if iface.is_empty() {
            return None;
        }
        Some(Self {
            netns: ino.parse().ok()?,
            iface: iface.replace('%', "."),
            own_qdisc,
        })
    }
}

/// The clsact pins under `bpffs`.
pub(super) fn clsact_pins(bpffs: &Path) -> Vec<(PathBuf, ClsactPin)> {
    let Ok(rd) = fs::read_dir(bpffs.join(CLSACT_DIR)) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            if n.ends_with("_new") {
                return None;
            }
            ClsactPin::parse(&n).map(|p| (e.path(), p))
        })
        .collect()
}

/// Per-netns clsact filters pinned under `bpffs`, as `(program, "ns<INODE>_<IFACE>")` for the
/// pin listing.
pub fn pinned(bpffs: &Path) -> Vec<(String, String)> {
    clsact_pins(bpffs)
        .into_iter()
        .map(|(_, p)| {
            (
                names::PROG_TC_EGRESS.to_string(),
                format!("{PREFIX}{}_{}", p.netns, p.iface),
            )
        })
        .collect()
}

/// Our filter among a device's egress filters.
fn our_filter(filters: &[tc_nl::Filter]) -> Option<&tc_nl::Filter> {
    filters
        .iter()
        .find(|f| f.prio == PRIORITY && f.handle == u32::from(NETNS_HANDLE) && f.kind == "bpf")
}

/// Makes sure the clsact filter on `iface` (index `index`) runs `prog` and is pinned; in the
/// calling thread's namespace. Returns `kept`, `replaced` or `attached`.
pub(super) fn cover_clsact(
    prog: &mut SchedClassifier,
    prog_id: u32,
    bpffs: &Path,
    ino: u64,
    iface: &str,
    index: u32,
) -> Result<&'static str, AttachError> {
    let dir = bpffs.join(CLSACT_DIR);
    let earlier: Vec<(PathBuf, ClsactPin)> = clsact_pins(bpffs)
        .into_iter()
        .filter(|(_, p)| p.netns == ino && p.iface == iface)
        .collect();
    let filters = tc_nl::filters(index, tc_nl::EGRESS)?;
    let existing = our_filter(&filters).cloned();
    if existing
        .as_ref()
        .is_some_and(|f| f.prog_id == Some(prog_id))
        && !earlier.is_empty()
    {
        return Ok("kept");
    }
    // The qdisc: added here unless the interface has one; an earlier pin says whether an earlier
    // run of the agent added it.
    let added = match qdisc_add_clsact(iface) {
        Ok(()) => true,
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => false,
        Err(e) => return Err(e.into()),
    };
    let pin = ClsactPin {
        netns: ino,
        iface: iface.to_string(),
        own_qdisc: added || earlier.iter().any(|(_, p)| p.own_qdisc),
    };
    // Replace the program of our filter in place when the filter exists (the kernel swaps the
    // program of one filter: no moment without one), else create it.
    let (id, how) = if existing.is_some() {
        let link = SchedClassifierLink::attached(
            iface,
            TcAttachType::Egress,
            PRIORITY,
            NETNS_HANDLE,
            None,
        )?;
        (prog.attach_to_link(link)?, "replaced")
    } else {
        let id = prog.attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::Netlink(NlOptions {
                priority: PRIORITY,
                handle: NETNS_HANDLE,
                classid: None,
            }),
        )?;
        (id, "attached")
    };
    // The filter must outlive this process: take it from the program and never detach it (the
    // link wrapper detaches on drop).
    std::mem::forget(prog.take_link(id)?);
    fs::create_dir_all(&dir)?;
    let path = dir.join(pin.name());
    let mut tmp = path.file_name().unwrap_or_default().to_os_string();
    tmp.push("_new");
    let tmp = path.with_file_name(tmp);
    let _ = fs::remove_file(&tmp);
    prog.pin(&tmp)?;
    fs::rename(&tmp, &path)?;
    for (p, _) in earlier {
        if p != path {
            let _ = fs::remove_file(p);
        }
    }
    Ok(how)
}

/// Deletes the clsact filter of `pin` (and the qdisc when the agent added it and nothing else is
/// on it) in its namespace, then the pin. A namespace that cannot be found any more took its
/// interfaces (and their filters) with it. Returns what was done.
pub(super) fn release_clsact(
    path: &Path,
    pin: &ClsactPin,
    held: Option<&fs::File>,
) -> Result<&'static str, String> {
    let opened;
    let ns = if let Some(ns) = held {
        ns
    } else if let Some(ns) = open_netns(pin.netns) {
        opened = ns;
        &opened
    } else {
        let _ = fs::remove_file(path);
        return Ok("namespace gone");
    };
    // The program this pin holds is the one our filter runs: a filter at the same place running
    // another program is not this install's (another daemon's, or a namespace that took over a
    // gone namespace's inode number), and stays.
    let pinned = aya::programs::ProgramInfo::from_pin(path)
        .map(|i| i.id())
        .map_err(|e| format!("reading the pin {}: {e}", path.display()))?;
    let what = in_netns(ns, || -> Result<&'static str, String> {
        let Ok(index) = nix::net::if_::if_nametoindex(pin.iface.as_str()) else {
            return Ok("interface gone");
        };
        let egress = tc_nl::filters(index, tc_nl::EGRESS).map_err(|e| e.to_string())?;
        let mut what = "filter already gone";
        if let Some(f) = our_filter(&egress)
            && f.prog_id == Some(pinned)
        {
            tc_nl::delete_filter(index, tc_nl::EGRESS, f).map_err(|e| e.to_string())?;
            what = "filter deleted";
        }
        if pin.own_qdisc {
            let left = tc_nl::filters(index, tc_nl::EGRESS)
                .map_err(|e| e.to_string())?
                .len()
                + tc_nl::filters(index, tc_nl::INGRESS)
                    .map_err(|e| e.to_string())?
                    .len();
            if left == 0 {
                tc_nl::delete_clsact(index).map_err(|e| e.to_string())?;
                what = "filter and qdisc deleted";
            } else {
                what = "filter deleted, qdisc kept (other filters on it)";
            }
        }
        Ok(what)
    })??;
    fs::remove_file(path).map_err(|e| format!("unpin {}: {e}", path.display()))?;
    Ok(what)
}

/// `uninstall`: deletes every per-netns clsact filter (entering each namespace) and its pin;
/// returns the pins removed. tcx links go with the other links.
pub fn uninstall(bpffs: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for (path, pin) in clsact_pins(bpffs) {
        match release_clsact(&path, &pin, None) {
            Ok(what) => {
                info!(netns = pin.netns, iface = %pin.iface, what, "TC backstop (clsact) removed");
                removed.push(path);
            }
            Err(e) => {
                warn!(netns = pin.netns, iface = %pin.iface, error = %e, "removing the TC backstop's clsact filter failed; pin removed anyway");
                fs::remove_file(&path)?;
                removed.push(path);
            }
        }
    }
    let dir = bpffs.join(CLSACT_DIR);
    if let Ok(rd) = fs::read_dir(&dir) {
        for e in rd.filter_map(Result::ok) {
            fs::remove_file(e.path())?;
            removed.push(e.path());
        }
        fs::remove_dir(&dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clsact_pin_names_round_trip() {
        for (pin, name) in [
            (
                ClsactPin {
                    netns: 4_026_532_001,
                    iface: "eth0.100".into(),
                    own_qdisc: true,
                },
                "cp_tc_egress@ns4026532001_eth0%100:qdisc",
            ),
            (
                ClsactPin {
                    netns: 7,
                    iface: "veth_a-b".into(),
                    own_qdisc: false,
                },
                "cp_tc_egress@ns7_veth_a-b",
            ),
        ] {
            assert_eq!(pin.name(), name);
            assert_eq!(ClsactPin::parse(name), Some(pin));
        }
        assert_eq!(ClsactPin::parse("cp_tc_egress@nsX_eth0"), None);
        assert_eq!(ClsactPin::parse("cp_tc_egress@ns7_"), None);
        assert_eq!(ClsactPin::parse("other@ns7_eth0"), None);
    }
}
