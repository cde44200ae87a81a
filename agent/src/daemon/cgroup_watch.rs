//! The cgroup watcher: inotify on the directories where selected cgroups live, re-armed on every
//! policy change.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
};

use tracing::warn;

use super::Shared;

impl Shared {
    /// Wakes the cgroup watcher so it re-arms for the current selectors.
    pub(crate) fn rearm_watcher(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our eventfd.
        unsafe { libc::write(self.rearm_fd, std::ptr::from_ref(&one).cast(), 8) };
    }

    /// Puts every bound identity cgroup in the attestation name cache; with `changed` (the
    /// watcher saw a cgroup come or go) cached descendants are dropped first, as they may be
    /// stale.
    fn sync_cgroup_names(&self, changed: bool) {
        let paths: Vec<String> = {
            let a = self.active.read().expect("active lock");
            a.policy
                .identities
                .iter()
                .filter(|i| i.pod.is_none() && !i.unresolved)
                .map(|i| i.cgroup_path.clone())
                .collect()
        };
        let bound: Vec<(String, u64)> = paths
            .into_iter()
            .filter_map(|p| {
                let id = crate::cgroup::id_of(&self.opts.cgroup_root.join(&p)).ok()?;
                Some((p, id))
            })
            .collect();
        self.cgroup_names
            .sync(bound.iter().map(|(p, id)| (p.as_str(), *id)), changed);
    }

    /// Directories whose changes can change the bindings: for every selector, the nearest
    /// existing ancestor of the selected cgroup's parent (so creation, deletion and re-creation
    /// of the cgroup are all seen).
    fn watch_dirs(&self) -> Vec<PathBuf> {
        let a = self.active.read().expect("active lock");
        let mut dirs: Vec<PathBuf> = a
            .policy
            .identities
            .iter()
            .filter(|i| i.pod.is_none() && !i.unresolved)
            .map(|i| {
                let mut p = self.opts.cgroup_root.join(&i.cgroup_path);
                p.pop();
                while !p.is_dir() && p.starts_with(&self.opts.cgroup_root) && p.pop() {}
                p
            })
            .collect();
        if a.policy.has_pod_identities()
            && let Some(p) = &self.pods
        {
            dirs.extend(p.watch_dirs(&self.opts.cgroup_root));
        }
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// Watches the directories where selected cgroups live (inotify) and re-binds identities the
/// moment a selected cgroup is created, deleted or recreated: the window between `mkdir` and the
/// first process moving in is microseconds, not the housekeeping period.
pub(crate) fn watch_cgroups(shared: Arc<Shared>) {
    loop {
        if shared.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: inotify_init1 has no preconditions.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            warn!("inotify unavailable; selected cgroups are re-bound every 500 ms only");
            return;
        }
        for d in shared.watch_dirs() {
            let Ok(c) = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: valid fd and C string.
            unsafe {
                libc::inotify_add_watch(
                    fd,
                    c.as_ptr(),
                    libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO | libc::IN_ONLYDIR,
                )
            };
        }
        // Bindings may have changed between the last reconcile and arming the watches.
        shared.reconcile();
        shared.sync_cgroup_names(false);
        let mut pfds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.rearm_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Until a selected cgroup changes, the policy changes (re-arm), or 500 ms pass.
        // SAFETY: poll on our descriptors.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, 500) };
        if n > 0 {
            let mut buf = [0u8; 4096];
            // SAFETY: reads into our buffer drain both descriptors; the contents are not needed.
            unsafe {
                while libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
                while libc::read(shared.rearm_fd, buf.as_mut_ptr().cast(), 8) > 0 {}
            }
            shared.reconcile();
            shared.sync_cgroup_names(true);
        }
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
    }
}
