//! cgroup names for attestation answers: a cache of cgroup id → path that the cgroup watcher
//! keeps current (every bound identity cgroup is in it after each re-bind; any change it sees
//! starts it over), so an answer never walks the cgroup tree.
//!
//! A connection's cgroup can be a descendant of an identity's cgroup (a container under a pod).
//! Such an id is resolved once, by the kernel: `open_by_handle_at` on the cgroup2 mount with the
//! id as the file handle (a kernfs handle is the node id) and the path read back from
//! `/proc/self/fd` — one lookup whatever the size of the tree; the result is cached.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsRawFd, FromRawFd},
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

/// Entries kept before the cache starts over (ids of removed cgroups are never reused).
const MAX_ENTRIES: usize = 65_536;

/// The kernel's file handle type of kernfs (cgroupfs) nodes: `FILEID_KERNFS`.
const FILEID_KERNFS: i32 = 0xfe;

/// How answers found their cgroup names.
#[derive(Debug, Default)]
pub struct NameStats {
    /// Answered from the cache.
    pub cached: AtomicU64,
    /// Resolved by one kernel lookup (then cached).
    pub resolved: AtomicU64,
    /// Not found (the cgroup is gone, or the lookup is not permitted).
    pub unknown: AtomicU64,
}

/// The cache of cgroup id → path (relative to the cgroup root, with a leading `/`).
#[derive(Debug)]
pub struct CgroupNames {
    root: PathBuf,
    /// The cgroup2 mount, opened once: the mount `open_by_handle_at` resolves in.
    mount: Option<File>,
    map: RwLock<HashMap<u64, Arc<str>>>,
    stats: Arc<NameStats>,
}

impl CgroupNames {
    /// A cache for the cgroup tree mounted at `root`, counting into `stats`.
    pub fn new(root: &Path, stats: Arc<NameStats>) -> Self {
        Self {
            root: root.to_path_buf(),
            mount: File::open(root).ok(),
            map: RwLock::new(HashMap::new()),
            stats,
        }
    }

    /// The path of cgroup `id`, from the cache or resolved once by the kernel.
    pub fn name(&self, id: u64) -> Option<Arc<str>> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.map.read().expect("names lock").get(&id) {
            self.stats.cached.fetch_add(1, Ordering::Relaxed);
            return Some(p.clone());
        }
        let Some(p) = self.resolve(id) else {
            self.stats.unknown.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        self.stats.resolved.fetch_add(1, Ordering::Relaxed);
        let p: Arc<str> = p.into();
        let mut map = self.map.write().expect("names lock");
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(id, p.clone());
        Some(p)
    }

    /// After a re-bind: the bound cgroups (relative paths and ids), known without a lookup.
    /// With `changed`, a cgroup was created, removed or renamed somewhere the watcher looks:
    /// cached descendants may be stale, so the cache starts over from the bound cgroups.
    pub fn sync<'a>(&self, bound: impl IntoIterator<Item = (&'a str, u64)>, changed: bool) {
        let mut map = self.map.write().expect("names lock");
        if changed || map.len() >= MAX_ENTRIES {
            map.clear();
        }
        for (path, id) in bound {
            let p = if path.starts_with('/') {
                path.to_string()
            } else {
                format!("/{path}")
            };
            map.insert(id, p.into());
        }
    }

    /// Entries in the cache.
    pub fn len(&self) -> usize {
        self.map.read().expect("names lock").len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn resolve(&self, id: u64) -> Option<String> {
        let mount = self.mount.as_ref()?;
        #[repr(C)]
        struct Handle {
            bytes: u32,
            kind: i32,
            id: [u8; 8],
        }
        let mut h = Handle {
            bytes: 8,
            kind: FILEID_KERNFS,
            id: id.to_ne_bytes(),
        };
        // SAFETY: `Handle` has `struct file_handle`'s layout with its 8 handle bytes inline; the
        // kernel reads `bytes` bytes after the header and nothing else; the descriptor returned
        // is owned by the `File` below.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                std::ptr::from_mut(&mut h).cast(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        let abs = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()?;
        let rel = abs.strip_prefix(&self.root).ok()?;
        Some(format!("/{}", rel.display()).replace("//", "/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_cgroups_are_named_without_a_lookup() {
        let n = CgroupNames::new(Path::new("/nonexistent"), Arc::default());
        n.sync([("agents/a", 7), ("/agents/b", 8)], false);
        assert_eq!(n.name(7).as_deref(), Some("/agents/a"));
        assert_eq!(n.name(8).as_deref(), Some("/agents/b"));
        assert_eq!(n.name(9), None);
        assert_eq!(n.stats.cached.load(Ordering::Relaxed), 2);
        assert_eq!(n.stats.unknown.load(Ordering::Relaxed), 1);
        n.sync([("agents/a", 7)], true);
        assert_eq!(n.len(), 1);
    }
}
