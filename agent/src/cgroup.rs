//! cgroup v2: find the mount, map selector paths to cgroup ids and ids back to paths.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The cgroup v2 mount point from `/proc/self/mountinfo` (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn detect_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<PathBuf> = None;
    for line in mounts.lines() {
        let mut halves = line.split(" - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            continue;
        };
        if !right.starts_with("cgroup2 ") {
            continue;
        }
        if let Some(mp) = left.split_whitespace().nth(4) {
            let p = PathBuf::from(mp);
            // Prefer the shortest (outermost) cgroup2 mount.
            if best
                .as_ref()
                .is_none_or(|b| p.as_os_str().len() < b.as_os_str().len())
            {
                best = Some(p);
            }
        }
    }
    best
}

/// The cgroup id of a cgroup directory (its inode number).
pub fn id_of(path: &Path) -> std::io::Result<u64> {
    Ok(fs::metadata(path)?.ino())
}

/// A cache of cgroup id → path under the root, refreshed by a bounded directory walk at most
/// once per second on a miss.
pub struct PathCache {
    root: PathBuf,
    map: HashMap<u64, String>,
    last_scan: Option<Instant>,
}

impl PathCache {
    /// An empty cache of the cgroups under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            map: HashMap::new(),
            last_scan: None,
        }
    }

    /// Path of `id` relative to the root, with a leading `/`.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.map.get(&id) {
            return Some(p.clone());
        }
        if self
            .last_scan
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.scan();
        self.map.get(&id).cloned()
    }

    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        self.map.clear();
        let mut stack = vec![(self.root.clone(), String::new(), 0usize)];
        let mut budget = 100_000usize;
        while let Some((dir, rel, depth)) = stack.pop() {
            if let Ok(md) = fs::metadata(&dir) {
                self.map.insert(
                    md.ino(),
                    if rel.is_empty() {
                        "/".into()
                    } else {
                        rel.clone()
                    },
                );
            }
            if depth >= 32 {
                continue;
            }
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.filter_map(Result::ok) {
                if budget == 0 {
                    return;
                }
                budget -= 1;
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    stack.push((e.path(), format!("{rel}/{name}"), depth + 1));
                }
            }
        }
    }
}
