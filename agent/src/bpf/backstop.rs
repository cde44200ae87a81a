//! The per-netns TC backstop: frames of packet sockets never pass `cgroup_skb`, and without the
//! BPF LSM nothing refuses those sockets, so the TC program must sit where their frames pass. For
//! every network namespace a process of an identity lives in (found from the processes in the
//! identity's cgroups via `/proc/PID/ns/net`), the TC egress program is attached through tcx to
//! every interface of that namespace, `lo` included (a frame written on `lo` comes back in as
//! ingress: a forged "reply" source would open `CP_REPLY`/`CP_ACCEPT` paths), pinned as `links/cp_tc_egress@ns<INODE>_<IFACE>`
//! (so it keeps enforcing when the daemon stops), re-armed as namespaces, interfaces and processes
//! come, and unpinned when no identity lives there any more.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, links::FdLink, tc::TcAttachOptions};
use chokepoint_common::names;
use tracing::{info, warn};

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
    /// Interfaces with the TC program attached.
    pub ifaces: Vec<String>,
    /// Interfaces where attaching failed, with why.
    pub failed: Vec<String>,
}

/// Attaches the TC program per network namespace.
pub struct Backstop {
    bpffs: PathBuf,
    prog: SchedClassifier,
    /// Pins this process created (pins found at start are re-attached once with this build).
    ours: HashSet<PathBuf>,
    covers: BTreeMap<u64, NetnsCover>,
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

/// Interface names of the calling thread's network namespace (`if_nameindex` asks netlink of
/// the current namespace; sysfs would show the mount's namespace instead).
fn interfaces() -> Vec<String> {
    nix::net::if_::if_nameindex()
        .map(|list| {
            list.iter()
                .map(|i| i.name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

impl Backstop {
    /// Opens the TC program pinned by [`super::start`].
    pub fn open(bpffs: &Path) -> Result<Self, BackstopError> {
        let path = super::prog_path(bpffs, names::PROG_TC_EGRESS);
        let prog = SchedClassifier::from_pin(&path).map_err(|source| BackstopError::Program {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            bpffs: bpffs.to_path_buf(),
            prog,
            ours: HashSet::new(),
            covers: BTreeMap::new(),
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
        let mut wanted: HashSet<PathBuf> = HashSet::new();
        let mut covers = BTreeMap::new();
        for (&ino, (pid, _)) in &spaces {
            let Ok(ns) = fs::File::open(format!("/proc/{pid}/ns/net")) else {
                // The process left; the next pass sees where its cgroup lives now.
                if let Some(c) = self.covers.get(&ino) {
                    for i in &c.ifaces {
                        wanted.insert(self.bpffs.join("links").join(pin_name(ino, i)));
                    }
                    covers.insert(ino, c.clone());
                }
                continue;
            };
            let cover = self.cover(ino, &ns);
            for i in &cover.ifaces {
                wanted.insert(self.bpffs.join("links").join(pin_name(ino, i)));
            }
            covers.insert(ino, cover);
        }
        // Detach what no identity needs any more (a namespace gone, or empty of identities).
        let links = self.bpffs.join("links");
        let prefix = format!("{}@{PREFIX}", names::PROG_TC_EGRESS);
        if let Ok(rd) = fs::read_dir(&links) {
            for e in rd.filter_map(Result::ok) {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) && !n.ends_with("_new") && !wanted.contains(&e.path()) {
                    info!(pin = %n, "TC backstop detached: no identity lives in that network namespace");
                    let _ = fs::remove_file(e.path());
                    self.ours.remove(&e.path());
                }
            }
        }
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

    /// Attaches the program to every interface of the namespace `ns` not yet covered by a pin of
    /// this process. Runs on a thread of its own that enters the namespace.
    fn cover(&mut self, ino: u64, ns: &fs::File) -> NetnsCover {
        let links = self.bpffs.join("links");
        let prog = &mut self.prog;
        let ours = &self.ours;
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                let mut cover = NetnsCover {
                    netns: ino,
                    ifaces: Vec::new(),
                    failed: Vec::new(),
                };
                let mut made = Vec::new();
                // setns on this thread only (it ends with the scope).
                if let Err(e) = rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                ) {
                    cover.failed.push(format!("setns: {e}"));
                    return (cover, made);
                }
                for iface in interfaces() {
                    let path = links.join(pin_name(ino, &iface));
                    if ours.contains(&path) && path.exists() {
                        cover.ifaces.push(iface);
                        continue;
                    }
                    match attach(prog, &iface, &path) {
                        Ok(()) => {
                            info!(netns = ino, iface = %iface, "TC backstop attached");
                            made.push(path);
                            cover.ifaces.push(iface);
                        }
                        Err(e) => {
                            warn!(netns = ino, iface = %iface, error = %e, "TC backstop attach failed");
                            cover.failed.push(format!("{iface}: {e}"));
                        }
                    }
                }
                (cover, made)
            })
            .join()
        });
        match result {
            Ok((cover, made)) => {
                self.ours.extend(made);
                cover
            }
            Err(_) => NetnsCover {
                netns: ino,
                ifaces: Vec::new(),
                failed: vec!["attach thread panicked".into()],
            },
        }
    }
}

/// Why the per-netns backstop cannot attach on a kernel without tcx (named in `status`).
const NO_TCX: &str = "tcx links unavailable (Linux 6.6+): the per-netns TC backstop needs them; \
     packet sockets are covered here by the BPF LSM where it is active, or by --tc-iface \
     (clsact) on the interfaces it names";

/// Attaches `prog` to `iface` (TC egress, tcx) and pins the link at `path`, replacing an older
/// pin only once the new link is in place.
fn attach(
    prog: &mut SchedClassifier,
    iface: &str,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // tcx explicitly: aya would fall back to a netlink filter without a clsact qdisc, and that
    // filter (unlike a link) is not detached by unpinning.
    let id = match prog.attach_with_options(
        iface,
        TcAttachType::Egress,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    ) {
        Ok(id) => id,
        Err(e) if super::tc::is_no_tcx(&e) => return Err(NO_TCX.into()),
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
