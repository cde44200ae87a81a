//! Kubernetes: pod identities from the API server (a watcher of this node's pods and of
//! namespaces), kubelet's pod cgroup names, and the `EgressPolicy` custom resource.
//!
//! A pod identity is bound at the pod-level cgroup, so every container, init container and
//! exec'd process of the pod is covered (the kernel walks cgroup ancestors).

pub mod cgroups;
pub mod crd;
pub mod pods;
pub mod policy_source;
pub mod selector;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use self::{pods::PodCache, selector::PodInfo};
use crate::{
    bpf::IdentBinding,
    cgroup,
    policy::{CompiledPolicy, compile::CompiledIdentity},
};

/// How long an apply of a policy with pod identities waits for the pod watcher's first list.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// The daemon's Kubernetes options.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// This node's name (`spec.nodeName` of its pods).
    pub node_name: String,
    /// The `EgressPolicy` object to apply, when policy comes from the cluster.
    pub policy: Option<String>,
    /// Kubelet `--cgroup-root` prefixes to search for pod cgroups.
    pub cgroup_prefixes: Vec<Vec<String>>,
}

/// A client from the environment: `KUBECONFIG` or `~/.kube/config`, else the pod's mounted
/// ServiceAccount token and CA (in-cluster).
pub async fn client() -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    kube::Client::try_from(config)
}

/// Default kubelet cgroup prefixes searched for pod cgroups: none (`/kubepods…`) and kind's
/// nested `kubelet`.
pub fn default_prefixes() -> Vec<Vec<String>> {
    vec![Vec::new(), vec!["kubelet".to_string()]]
}

/// Resolves pod identities to pod cgroups.
pub struct PodBinder {
    /// The pods of this node, from the watcher.
    pub cache: Arc<PodCache>,
    prefixes: Vec<Vec<String>>,
    /// The daemon's own cgroup (relative to the root): its pod is never bound.
    own_cgroup: Option<String>,
    /// Pod cgroups that existed when the daemon started: until the first list completes they
    /// keep what the kernel has (a restart opens no window and binds no running pod wrongly).
    at_start: HashSet<String>,
}

/// One pod cgroup and what it is bound to.
#[derive(Clone, Debug)]
pub struct PodBinding {
    /// The identity the cgroup is bound to.
    pub binding: IdentBinding,
    /// Path of the pod cgroup relative to the cgroup root.
    pub path: String,
    /// The pod, when the cache knows it.
    pub pod: Option<Arc<PodInfo>>,
}

/// The daemon's own cgroup v2 path.
fn own_cgroup() -> Option<String> {
    let s = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_matches('/').to_string())
}

impl PodBinder {
    /// A binder over `cache`; pod cgroups are searched under `root` below each of `prefixes`.
    pub fn new(cache: Arc<PodCache>, root: &Path, prefixes: Vec<Vec<String>>) -> PodBinder {
        let at_start = cgroups::scan(root, &prefixes)
            .into_iter()
            .map(|p| p.path)
            .collect();
        PodBinder {
            cache,
            prefixes,
            own_cgroup: own_cgroup(),
            at_start,
        }
    }

    /// The identity a known pod has under `policy`: the first pod identity (in document order)
    /// whose selector matches. A pod whose namespace's labels are not known yet, when some
    /// identity selects by namespace labels, counts as not known.
    fn identity_of<'p>(
        &self,
        policy: &'p CompiledPolicy,
        pod: &PodInfo,
    ) -> Option<&'p CompiledIdentity> {
        let ns = self.cache.namespace_labels(&pod.namespace);
        if ns.is_none()
            && policy.identities.iter().any(|i| {
                matches!(
                    i.pod.as_ref().map(|m| &m.namespace),
                    Some(selector::NamespaceMatch::Selector(_))
                )
            })
        {
            return policy.unresolved_identity();
        }
        policy
            .identities
            .iter()
            .find(|i| i.pod.as_ref().is_some_and(|m| m.matches(pod, ns.as_ref())))
    }

    /// The bindings of `policy`'s pod identities for the pod cgroups that exist now.
    pub fn bindings(&self, root: &Path, policy: &CompiledPolicy) -> Vec<PodBinding> {
        if !policy.has_pod_identities() {
            return Vec::new();
        }
        let synced = self.cache.synced();
        let mut out = Vec::new();
        for pc in cgroups::scan(root, &self.prefixes) {
            if self
                .own_cgroup
                .as_ref()
                .is_some_and(|own| own == &pc.path || own.starts_with(&format!("{}/", pc.path)))
            {
                continue;
            }
            let pod = self.cache.pod(&pc.uid);
            let ident = match &pod {
                Some(p) => self.identity_of(policy, p),
                None if !synced && self.at_start.contains(&pc.path) => continue,
                None => policy.unresolved_identity(),
            };
            let Some(ident) = ident else { continue };
            let Ok(cgroup_id) = cgroup::id_of(&root.join(&pc.path)) else {
                continue;
            };
            out.push(PodBinding {
                binding: IdentBinding {
                    cgroup_id,
                    ident: ident.id,
                    mode: ident.mode.code(),
                },
                path: pc.path,
                pod,
            });
        }
        out
    }

    /// Directories to watch (inotify) for pod cgroups appearing: each QoS directory, or its
    /// nearest existing ancestor.
    pub fn watch_dirs(&self, root: &Path) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for prefix in &self.prefixes {
            let p: Vec<&str> = prefix.iter().map(String::as_str).collect();
            for d in cgroups::qos_dirs(&p) {
                let mut path = root.join(d);
                while !path.is_dir() && path.starts_with(root) && path.pop() {}
                dirs.push(path);
            }
        }
        dirs.sort();
        dirs.dedup();
        dirs
    }
}
