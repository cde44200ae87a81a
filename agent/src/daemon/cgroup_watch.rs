//! The cgroup watcher: inotify on the directories where selected cgroups live, re-armed on every
//! policy change.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
};

use rustix::{
    event::{PollFd, PollFlags, Timespec, poll},
    fs::inotify,
};
use tracing::warn;

use super::Shared;

impl Shared {
    /// Wakes the cgroup watcher so it re-arms for the current selectors.
    pub(crate) fn rearm_watcher(&self) {
        wake(&self.rearm);
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
        let Ok(fd) = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
        else {
            warn!("inotify unavailable; selected cgroups are re-bound every 500 ms only");
            return;
        };
        for d in shared.watch_dirs() {
            // A directory that vanished in between is found again on the next round.
            let _ = inotify::add_watch(
                &fd,
                &d,
                inotify::WatchFlags::CREATE
                    | inotify::WatchFlags::DELETE
                    | inotify::WatchFlags::MOVED_TO
                    | inotify::WatchFlags::ONLYDIR,
            );
        }
        // Bindings may have changed between the last reconcile and arming the watches.
        shared.reconcile();
        shared.sync_cgroup_names(false);
        let mut pfds = [
            PollFd::new(&fd, PollFlags::IN),
            PollFd::new(&*shared.rearm, PollFlags::IN),
        ];
        // Until a selected cgroup changes, the policy changes (re-arm), or 500 ms pass.
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: 500_000_000,
        };
        if poll(&mut pfds, Some(&timeout)).is_ok_and(|n| n > 0) {
            // Drain both descriptors; the contents are not needed.
            drain(&fd);
            drain(&shared.rearm);
            shared.reconcile();
            shared.sync_cgroup_names(true);
        }
    }
}

/// Wakes the watcher: adds 1 to its eventfd.
pub(crate) fn wake(eventfd: &OwnedFd) {
    let _ = rustix::io::write(eventfd, &1u64.to_ne_bytes());
}

/// Reads a non-blocking descriptor until it has nothing more.
fn drain(fd: impl AsFd) {
    let mut buf = [0u8; 4096];
    while rustix::io::read(&fd, &mut buf).is_ok_and(|n| n > 0) {}
}
