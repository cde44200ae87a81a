//! The pinned side of the install under bpffs (links and maps), shared by the daemon and the
//! CLI: which links are pinned, whether anything is installed, and `uninstall`. The CLI reaches
//! the kernel only through this module (and the daemon's API).

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, PinnedLink};
use chokepoint_common::names;

use super::{backstop, pinning::map_path, tc};

/// True when the maps are pinned (enforcement state exists).
pub fn is_installed(bpffs: &Path) -> bool {
    map_path(bpffs, names::CONFIG).exists()
}

/// Pinned links present under `bpffs`: (program, target), clsact filters (`tc/`, and the
/// per-netns backstop's `tc_netns/`) included.
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
    v.extend(
        backstop::pinned(bpffs)
            .into_iter()
            .map(|(p, t)| (p, Some(t))),
    );
    v.sort();
    v
}

/// Detaches and unpins everything under `bpffs`: links first (enforcement stops), then maps.
pub fn uninstall(bpffs: &Path) -> std::io::Result<Vec<PathBuf>> {
    // The clsact filters (kernels without tcx) first, like links: enforcement stops, then maps.
    let mut removed = tc::uninstall(bpffs)?;
    // The per-netns backstop's clsact filters, each in its network namespace.
    removed.extend(backstop::uninstall(bpffs)?);
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
