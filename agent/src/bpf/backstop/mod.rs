//! The per-netns TC backstop: frames of packet sockets never pass `cgroup_skb`, and without the
//! BPF LSM nothing refuses those sockets, so the TC program must sit where their frames pass. For
//! every network namespace a process of an identity lives in (found from the processes in the
//! identity's cgroups via `/proc/PID/ns/net`, and named by the namespace's inode), the TC egress
//! program is attached to every interface of that namespace, `lo` included (a frame written on
//! `lo` comes back in as ingress: a forged "reply" source would open `CP_REPLY`/`CP_ACCEPT`
//! paths), re-armed as namespaces, interfaces and processes come, and released when no identity
//! lives there any more. Every attach and release runs on a thread that entered the namespace
//! (netlink and interface names are per namespace).
//!
//! Two ways to attach, as for `--tc-iface` ([`super::tc`]):
//! - tcx (Linux 6.6+): a bpf link per interface, pinned as
//!   `links/cp_tc_egress@ns<INODE>_<IFACE>` (so it keeps enforcing when the daemon stops);
//!   unpinning releases it.
//! - clsact (older kernels, or `--tc-mode clsact`): a clsact qdisc (added when the interface has
//!   none) and a direct-action `cls_bpf` filter at priority [`super::tc::PRIORITY`], handle
//!   [`NETNS_HANDLE`] on egress. A filter is no bpf link, so the program behind it is pinned at
//!   `tc_netns/cp_tc_egress@ns<INODE>_<IFACE>` (`.` written as `%`), with `:qdisc` appended when
//!   the agent added the qdisc. Each pass checks through netlink that the filter is there with
//!   the current program (else it is re-created, or its program replaced in place); a release
//!   (and `uninstall`) enters the namespace, deletes the filter, and deletes the qdisc when the
//!   agent added it and no other filter is left on it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fs,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    links::FdLink,
    tc::{TcAttachOptions, TcHandle},
};
use chokepoint_common::names;
use tracing::{info, warn};

mod clsact;

use clsact::{clsact_pins, cover_clsact, release_clsact};
pub use clsact::{pinned, uninstall};

use super::tc::{self, TcMode};

/// Handle of the per-netns clsact filter (apart from `--tc-iface`'s [`tc::HANDLE`], so both can
/// sit on the host's interfaces).
pub const NETNS_HANDLE: TcHandle = TcHandle::new(0, 0xc0ca);

/// Directory (under the bpffs dir) of the clsact filters' program pins.
pub const CLSACT_DIR: &str = "tc_netns";

/// Errors of the backstop.
#[derive(Debug, thiserror::Error)]
pub enum BackstopError {
    /// The pinned TC program could not be opened.
    #[error("the TC program is not pinned at {path}: {source}")]
    Program {
        /// Where it should be pinned.
        path: PathBuf,
        /// Why it could not be opened.
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// What covers one network namespace.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NetnsCover {
    /// Inode of the namespace (`/proc/PID/ns/net`).
    pub netns: u64,
    /// How the program is attached there: `tcx` links or `clsact` filters (unknown until the
    /// first attach decided it).
    pub mode: Option<TcMode>,
    /// Interfaces with the TC program attached.
    pub ifaces: Vec<String>,
    /// Interfaces where attaching failed, with why.
    pub failed: Vec<String>,
    /// The interfaces of `failed` (an attachment made earlier there is kept, not released).
    #[serde(skip)]
    pub failed_ifaces: Vec<String>,
}

impl NetnsCover {
    /// The namespace's attachment of `mode` on `iface` is to stay.
    fn keeps(&self, mode: TcMode, iface: &str) -> bool {
        self.mode == Some(mode)
            && self
                .ifaces
                .iter()
                .chain(&self.failed_ifaces)
                .any(|i| i == iface)
    }

    fn fail(&mut self, iface: &str, why: String) {
        self.failed.push(format!("{iface}: {why}"));
        self.failed_ifaces.push(iface.to_string());
    }
}

/// Attaches the TC program per network namespace.
pub struct Backstop {
    bpffs: PathBuf,
    prog: SchedClassifier,
    /// Kernel id of `prog` (what a clsact filter must run).
    prog_id: u32,
    /// `--tc-mode`, or what the first attach found (tcx refused: clsact).
    mode: Option<TcMode>,
    /// tcx pins this process created or checked → the interface index they were made for (pins
    /// found at start are re-attached once with this build; a re-created interface gets a new
    /// index).
    ours: HashMap<PathBuf, u32>,
    covers: BTreeMap<u64, NetnsCover>,
    /// An open handle of each namespace covered, to enter it again when releasing.
    held: BTreeMap<u64, fs::File>,
    /// Releases that failed once (warned once, retried every pass).
    release_failed: HashSet<String>,
}

const PREFIX: &str = "ns";

fn pin_name(netns: u64, iface: &str) -> String {
    format!(
        "{}@{PREFIX}{netns}_{}",
        names::PROG_TC_EGRESS,
        iface.replace('.', "_")
    )
}

/// Pids of the processes in `dir` and every cgroup below it.
fn pids_below(dir: &Path, out: &mut Vec<u32>, depth: u32) {
    if depth > chokepoint_common::MAX_CGROUP_DEPTH {
        return;
    }
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids_below(&e.path(), out, depth + 1);
            }
        }
    }
}

/// Interfaces (name, index) of the calling thread's network namespace (`if_nameindex` asks
/// netlink of the current namespace; sysfs would show the mount's namespace instead).
fn interfaces() -> Vec<(String, u32)> {
    nix::net::if_::if_nameindex()
        .map(|list| {
            list.iter()
                .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
                .collect()
        })
        .unwrap_or_default()
}

/// Opens the network namespace of inode `ino`: a name under `/run/netns` (ip-netns, CNI) or a
/// process living in it. `None` when no such namespace can be reached (it is gone).
fn open_netns(ino: u64) -> Option<fs::File> {
    let dev = fs::metadata("/proc/self/ns/net").ok()?.dev();
    let is_it = |p: &Path| fs::metadata(p).is_ok_and(|m| m.ino() == ino && m.dev() == dev);
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.filter_map(Result::ok) {
                if is_it(&e.path()) {
                    return fs::File::open(e.path()).ok();
                }
            }
        }
    }
    for e in fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let p = e.path().join("ns/net");
        if is_it(&p) {
            return fs::File::open(p).ok();
        }
    }
    None
}

/// Runs `f` on a thread of its own that entered the namespace `ns` (setns on that thread only;
/// it ends with the call).
fn in_netns<T: Send>(ns: &fs::File, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| format!("setns: {e}"))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err("attach thread panicked".into()))
    })
}

/// Why an attach failed.
enum AttachError {
    /// The kernel has no tcx (before 6.6).
    NoTcx,
    /// Anything else.
    Other(String),
}

impl<E: std::fmt::Display> From<E> for AttachError {
    fn from(e: E) -> Self {
        Self::Other(e.to_string())
    }
}

impl Backstop {
    /// Opens the TC program pinned by [`super::start`]. `mode`: `--tc-mode` (`None`: tcx where
    /// the kernel has it, else clsact).
    pub fn open(bpffs: &Path, mode: Option<TcMode>) -> Result<Self, BackstopError> {
        let path = super::prog_path(bpffs, names::PROG_TC_EGRESS);
        let err = |source| BackstopError::Program {
            path: path.clone(),
            source,
        };
        let prog = SchedClassifier::from_pin(&path).map_err(err)?;
        let prog_id = prog.info().map_err(err)?.id();
        Ok(Self {
            bpffs: bpffs.to_path_buf(),
            prog,
            prog_id,
            mode,
            ours: HashMap::new(),
            covers: BTreeMap::new(),
            held: BTreeMap::new(),
            release_failed: HashSet::new(),
        })
    }

    /// One pass over `identities` (name, cgroup directory): attaches where needed, detaches where
    /// no identity lives any more, and returns what covers each identity.
    pub fn sync(&mut self, identities: &[(String, PathBuf)]) -> BTreeMap<String, Vec<NetnsCover>> {
        // netns inode → (a pid in it, identities living there).
        let mut spaces: BTreeMap<u64, (u32, BTreeSet<String>)> = BTreeMap::new();
        for (name, dir) in identities {
            let mut pids = Vec::new();
            pids_below(dir, &mut pids, 0);
            for pid in pids {
                let Ok(md) = fs::metadata(format!("/proc/{pid}/ns/net")) else {
                    continue;
                };
                spaces
                    .entry(md.ino())
                    .or_insert_with(|| (pid, BTreeSet::new()))
                    .1
                    .insert(name.clone());
            }
        }
        let mut covers = BTreeMap::new();
        for (&ino, (pid, _)) in &spaces {
            let ns = if let Ok(ns) = fs::File::open(format!("/proc/{pid}/ns/net")) {
                ns
            } else if let Some(ns) = self.held.remove(&ino) {
                ns
            } else {
                // The process left; the next pass sees where its cgroup lives now.
                if let Some(c) = self.covers.get(&ino) {
                    covers.insert(ino, c.clone());
                }
                continue;
            };
            let cover = self.cover(ino, &ns);
            self.held.insert(ino, ns);
            covers.insert(ino, cover);
        }
        self.release_unwanted(&covers);
        self.held.retain(|ino, _| covers.contains_key(ino));
        self.covers = covers;
        let mut out: BTreeMap<String, Vec<NetnsCover>> = BTreeMap::new();
        for (ino, (_, idents)) in &spaces {
            if let Some(c) = self.covers.get(ino) {
                for i in idents {
                    out.entry(i.clone()).or_default().push(c.clone());
                }
            }
        }
        out
    }

    /// Detaches what no identity needs any more (a namespace gone, or empty of identities, or an
    /// attachment of the other mode).
    fn release_unwanted(&mut self, covers: &BTreeMap<u64, NetnsCover>) {
        let wanted = |ino: u64, iface: &str, mode: TcMode| {
            covers.get(&ino).is_some_and(|c| c.keeps(mode, iface))
        };
        // tcx links: unpinning releases them.
        let links = self.bpffs.join("links");
        let prefix = format!("{}@{PREFIX}", names::PROG_TC_EGRESS);
        if let Ok(rd) = fs::read_dir(&links) {
            for e in rd.filter_map(Result::ok) {
                let n = e.file_name().to_string_lossy().into_owned();
                if !n.starts_with(&prefix) || n.ends_with("_new") {
                    continue;
                }
                let keep = covers.values().any(|c| {
                    c.ifaces
                        .iter()
                        .chain(&c.failed_ifaces)
                        .any(|i| pin_name(c.netns, i) == n && c.keeps(TcMode::Tcx, i))
                });
                if !keep {
                    info!(pin = %n, "TC backstop (tcx) detached: no identity lives in that network namespace");
                    let _ = fs::remove_file(e.path());
                    self.ours.remove(&e.path());
                }
            }
        }
        // clsact filters: enter the namespace and delete them.
        for (path, pin) in clsact_pins(&self.bpffs) {
            if wanted(pin.netns, &pin.iface, TcMode::Clsact) {
                continue;
            }
            let ns = self.held.get(&pin.netns);
            match release_clsact(&path, &pin, ns) {
                Ok(what) => {
                    info!(netns = pin.netns, iface = %pin.iface, what, "TC backstop (clsact) released: no identity lives in that network namespace");
                    self.release_failed.remove(&pin.name());
                }
                Err(e) => {
                    if self.release_failed.insert(pin.name()) {
                        warn!(netns = pin.netns, iface = %pin.iface, error = %e, "releasing the TC backstop's clsact filter failed (retried)");
                    }
                }
            }
        }
    }

    /// Attaches the program to every interface of the namespace `ns` not yet covered. Runs on a
    /// thread of its own that enters the namespace.
    fn cover(&mut self, ino: u64, ns: &fs::File) -> NetnsCover {
        let bpffs = self.bpffs.clone();
        let prog_id = self.prog_id;
        let prog = &mut self.prog;
        let ours = &self.ours;
        let mut mode = self.mode;
        let result = in_netns(ns, || {
            let mut cover = NetnsCover {
                netns: ino,
                mode,
                ifaces: Vec::new(),
                failed: Vec::new(),
                failed_ifaces: Vec::new(),
            };
            let mut made = Vec::new();
            for (iface, index) in interfaces() {
                if mode != Some(TcMode::Clsact) {
                    let path = bpffs.join("links").join(pin_name(ino, &iface));
                    if ours.get(&path) == Some(&index) && path.exists() {
                        cover.ifaces.push(iface);
                        continue;
                    }
                    match attach_tcx(prog, &iface, &path) {
                        Ok(()) => {
                            info!(netns = ino, iface = %iface, "TC backstop attached (tcx)");
                            mode = Some(TcMode::Tcx);
                            made.push((path, index));
                            cover.ifaces.push(iface);
                            continue;
                        }
                        Err(AttachError::NoTcx) if mode.is_none() => {
                            info!(
                                "tcx links unavailable on this kernel: the per-netns TC backstop uses clsact qdiscs with direct-action filters"
                            );
                            mode = Some(TcMode::Clsact);
                        }
                        Err(AttachError::NoTcx) => {
                            cover.fail(&iface, NO_TCX.into());
                            continue;
                        }
                        Err(AttachError::Other(e)) => {
                            warn!(netns = ino, iface = %iface, error = %e, "TC backstop attach failed");
                            cover.fail(&iface, e);
                            continue;
                        }
                    }
                }
                match cover_clsact(prog, prog_id, &bpffs, ino, &iface, index) {
                    Ok(how) => {
                        if how != "kept" {
                            info!(netns = ino, iface = %iface, how, "TC backstop attached (clsact)");
                        }
                        cover.ifaces.push(iface);
                    }
                    Err(e) => {
                        let e = match e {
                            AttachError::NoTcx => NO_TCX.to_string(),
                            AttachError::Other(e) => e,
                        };
                        warn!(netns = ino, iface = %iface, error = %e, "TC backstop attach failed (clsact)");
                        cover.fail(&iface, format!("clsact: {e}"));
                    }
                }
            }
            cover.mode = mode;
            (cover, made)
        });
        match result {
            Ok((cover, made)) => {
                if cover.mode.is_some() {
                    self.mode = cover.mode;
                }
                self.ours.extend(made);
                cover
            }
            // Nothing could be looked at: what was attached there stays until a pass can.
            Err(e) => NetnsCover {
                netns: ino,
                mode: self.mode,
                ifaces: Vec::new(),
                failed: vec![e],
                failed_ifaces: self
                    .covers
                    .get(&ino)
                    .map(|c| c.ifaces.iter().chain(&c.failed_ifaces).cloned().collect())
                    .unwrap_or_default(),
            },
        }
    }
}

/// Why the per-netns backstop cannot attach through tcx (`--tc-mode tcx` on a kernel without).
const NO_TCX: &str =
    "tcx links unavailable (Linux 6.6+) and --tc-mode tcx forbids the clsact fallback";

/// Attaches `prog` to `iface` (TC egress, tcx) and pins the link at `path`, replacing an older
/// pin only once the new link is in place.
fn attach_tcx(prog: &mut SchedClassifier, iface: &str, path: &Path) -> Result<(), AttachError> {
    // tcx explicitly: aya would fall back to a netlink filter without a clsact qdisc, and that
    // filter (unlike a link) is not detached by unpinning.
    let id = match prog.attach_with_options(
        iface,
        TcAttachType::Egress,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    ) {
        Ok(id) => id,
        Err(e) if tc::is_no_tcx(&e) => return Err(AttachError::NoTcx),
        Err(e) => return Err(e.into()),
    };
    let link = FdLink::try_from(prog.take_link(id)?)?;
    let mut tmp = path.file_name().unwrap_or_default().to_os_string();
    tmp.push("_new");
    let tmp = path.with_file_name(tmp);
    let _ = fs::remove_file(&tmp);
    let pinned = link.pin(&tmp)?;
    fs::rename(&tmp, path)?;
    drop(pinned);
    Ok(())
}
