//! The thread that keeps the per-netns TC backstop ([`crate::bpf::backstop`]) where the
//! identities' processes live: a pass every 500 ms over the active policy's cgroups.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tracing::warn;

use super::Shared;
use crate::bpf::backstop::Backstop;

/// How often namespaces, interfaces and processes are looked at again.
pub(crate) const PERIOD: Duration = Duration::from_millis(500);

/// Opens the pinned TC program and starts the thread. A failure to open it is reported in
/// `status` (no per-netns backstop) and does not stop the daemon.
pub(crate) fn start(shared: Arc<Shared>) -> std::io::Result<()> {
    let mut bs = match Backstop::open(&shared.opts.bpffs, shared.opts.tc_mode) {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "per-netns TC backstop unavailable");
            return Ok(());
        }
    };
    std::thread::Builder::new()
        .name("tc-backstop".into())
        .spawn(move || {
            while !shared.shutting_down.load(Ordering::Relaxed) {
                let identities: Vec<(String, PathBuf)> = {
                    let a = shared.active.read().expect("active lock");
                    let mut v: Vec<(String, PathBuf)> = a
                        .policy
                        .identities
                        .iter()
                        .filter(|i| i.pod.is_none() && !i.unresolved)
                        .map(|i| (i.name.clone(), shared.opts.cgroup_root.join(&i.cgroup_path)))
                        .collect();
                    // Pod identities: each pod cgroup they cover now.
                    if let Some(p) = &shared.pods {
                        for b in p.bindings(&shared.opts.cgroup_root, &a.policy) {
                            if let Some(i) =
                                a.policy.identities.iter().find(|i| i.id == b.binding.ident)
                            {
                                v.push((i.name.clone(), shared.opts.cgroup_root.join(&b.path)));
                            }
                        }
                    }
                    v
                };
                let covers = bs.sync(&identities);
                *shared.backstop.lock().expect("backstop lock") = Some(covers);
                std::thread::sleep(PERIOD);
            }
        })?;
    Ok(())
}
