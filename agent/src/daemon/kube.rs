//! The daemon's Kubernetes sources (`--kube-node`): the client and the pod cache that binds pod
//! identities, made before anything binds; then the pod watcher and, with `--kube-policy`, the
//! `EgressPolicy` source as supervised tasks.

use std::{os::fd::OwnedFd, sync::Arc};

use anyhow::Context;
use tokio::task::JoinSet;
use tracing::warn;

use super::{Shared, cgroup_watch, shared::compile_cached};
use crate::{
    k8s::{KubeOptions, PodBinder, policy_source::Outcome},
    options::Options,
};

/// The cluster connection and this node's pods.
pub(super) struct Kube {
    client: kube::Client,
    /// Binds pod identities to their cgroups from the pod cache.
    pub(super) binder: Arc<PodBinder>,
}

impl Kube {
    /// The client from the environment and an empty pod cache whose changes wake the cgroup
    /// watcher (`rearm`).
    pub(super) async fn connect(
        opts: &Options,
        k: &KubeOptions,
        rearm: &Arc<OwnedFd>,
    ) -> anyhow::Result<Self> {
        let client = crate::k8s::client().await.context(
            "configuring the Kubernetes client (KUBECONFIG, or the pod's ServiceAccount)",
        )?;
        let wake = rearm.clone();
        let cache = Arc::new(crate::k8s::pods::PodCache::new(move || {
            cgroup_watch::wake(&wake);
        }));
        let binder = PodBinder::new(cache, &opts.cgroup_root, k.cgroup_prefixes.clone());
        Ok(Self {
            client,
            binder: Arc::new(binder),
        })
    }

    /// Starts the pod watcher, waits (bounded) for its first list, and starts the policy source
    /// when policy comes from the cluster.
    pub(super) async fn spawn(&self, set: &mut JoinSet<()>, shared: &Arc<Shared>, k: &KubeOptions) {
        set.spawn(crate::k8s::pods::run(
            self.client.clone(),
            k.node_name.clone(),
            self.binder.cache.clone(),
        ));
        // A policy with pod identities waits for the first list (apply checks it too).
        let t0 = std::time::Instant::now();
        while !self.binder.cache.synced() && t0.elapsed() < crate::k8s::SYNC_TIMEOUT {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if !self.binder.cache.synced() {
            warn!(
                "the pod watcher has not listed this node's pods yet; pod identities bind when it has"
            );
        }
        if let Some(name) = &k.policy {
            let s = shared.clone();
            let apply = Arc::new(move |label: String, doc: String| {
                let p = match compile_cached(&s.dns, &label, doc.as_bytes()) {
                    Ok(p) => p,
                    Err(e) => return Outcome::Rejected(e.to_string()),
                };
                let (generation, digest) = {
                    let a = s.active.read().expect("active lock");
                    (a.generation, a.policy.digest.clone())
                };
                if p.digest == digest {
                    return Outcome::Unchanged(generation);
                }
                match s.apply(p, "kubernetes", &crate::peer::Who::daemon()) {
                    Ok(g) => Outcome::Applied(g),
                    Err(e) => Outcome::Rejected(format!("{e:#}")),
                }
            });
            set.spawn(crate::k8s::policy_source::run(
                self.client.clone(),
                name.clone(),
                k.node_name.clone(),
                apply,
            ));
        }
    }
}
