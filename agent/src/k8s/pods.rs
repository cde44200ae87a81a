//! What the node knows about its pods: a cache filled by watchers of this node's pods (field
//! selector `spec.nodeName`) and of namespaces. kube-runtime's watcher lists, then watches from
//! the list's resource version with bookmarks; on `410 Gone` or a dropped connection it lists
//! again (with backoff), and the cache is replaced whole when that list completes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tracing::{info, warn};

use super::{cgroups, selector::PodInfo};

#[derive(Default)]
struct Inner {
    pods: HashMap<String, Arc<PodInfo>>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    pods_synced: bool,
    namespaces_synced: bool,
}

/// The node's pods and the cluster's namespaces, as last seen.
pub struct PodCache {
    inner: RwLock<Inner>,
    /// Bumped on every change.
    version: AtomicU64,
    /// Watch errors (each followed by a re-list or retry).
    pub errors: AtomicU64,
    /// Completed (re-)lists.
    pub lists: AtomicU64,
    notify: Box<dyn Fn() + Send + Sync>,
}

impl PodCache {
    /// An empty cache; `notify` is called after every change (it wakes the binder).
    pub fn new(notify: impl Fn() + Send + Sync + 'static) -> PodCache {
        PodCache {
            inner: RwLock::new(Inner::default()),
            version: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            lists: AtomicU64::new(0),
            notify: Box::new(notify),
        }
    }

    /// Whether both watchers completed their first list.
    pub fn synced(&self) -> bool {
        let i = self.inner.read().expect("pod cache lock");
        i.pods_synced && i.namespaces_synced
    }

    /// Waits (blocking) up to `t` for [`PodCache::synced`].
    pub fn wait_synced(&self, t: Duration) -> bool {
        let t0 = std::time::Instant::now();
        while !self.synced() {
            if t0.elapsed() > t {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// The pod with this UID, when it is on this node.
    pub fn pod(&self, uid: &str) -> Option<Arc<PodInfo>> {
        self.inner
            .read()
            .expect("pod cache lock")
            .pods
            .get(uid)
            .cloned()
    }

    /// A namespace's labels, when known.
    pub fn namespace_labels(&self, ns: &str) -> Option<BTreeMap<String, String>> {
        self.inner
            .read()
            .expect("pod cache lock")
            .namespaces
            .get(ns)
            .cloned()
    }

    /// The pod a cgroup path (relative to the cgroup root) belongs to.
    pub fn pod_of_cgroup(&self, path: &str) -> Option<Arc<PodInfo>> {
        self.pod(&cgroups::parse(path)?.pod.uid)
    }

    /// Counts for `status`.
    pub fn counts(&self) -> (usize, usize) {
        let i = self.inner.read().expect("pod cache lock");
        (i.pods.len(), i.namespaces.len())
    }

    /// The change counter.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    fn changed(&self) {
        self.version.fetch_add(1, Ordering::Relaxed);
        (self.notify)();
    }

    /// Test and tooling hook: puts a pod in the cache as if the watcher had seen it.
    pub fn insert_pod(&self, p: PodInfo) {
        self.inner
            .write()
            .expect("pod cache lock")
            .pods
            .insert(p.uid.clone(), Arc::new(p));
        self.changed();
    }
}

/// What the cache keeps of a pod.
pub fn pod_info(p: &Pod) -> Option<PodInfo> {
    let uid = p.metadata.uid.clone()?;
    let mut containers = BTreeMap::new();
    if let Some(st) = &p.status {
        for c in st
            .init_container_statuses
            .iter()
            .flatten()
            .chain(st.container_statuses.iter().flatten())
            .chain(st.ephemeral_container_statuses.iter().flatten())
        {
            if let Some((_, id)) = c
                .container_id
                .as_deref()
                .and_then(cgroups::parse_container_id)
            {
                containers.insert(id, c.name.clone());
            }
        }
    }
    Some(PodInfo {
        uid,
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        service_account: p
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        containers,
    })
}

/// Runs both watchers until the process ends.
pub async fn run(client: Client, node: String, cache: Arc<PodCache>) {
    let pods = watch_pods(client.clone(), node, cache.clone());
    let namespaces = watch_namespaces(client, cache);
    futures::join!(pods, namespaces);
}

fn backoff_error(cache: &PodCache, what: &str, e: &watcher::Error) {
    cache.errors.fetch_add(1, Ordering::Relaxed);
    warn!(error = %e, "{what} watch failed; retrying (a re-list follows)");
}

async fn watch_pods(client: Client, node: String, cache: Arc<PodCache>) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .timeout(290);
    let mut buffer: HashMap<String, Arc<PodInfo>> = HashMap::new();
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    loop {
        match stream.try_next().await {
            Ok(Some(ev)) => match ev {
                watcher::Event::Init => buffer.clear(),
                watcher::Event::InitApply(p) => {
                    if let Some(i) = pod_info(&p) {
                        buffer.insert(i.uid.clone(), Arc::new(i));
                    }
                }
                watcher::Event::InitDone => {
                    let n = buffer.len();
                    {
                        let mut i = cache.inner.write().expect("pod cache lock");
                        i.pods = std::mem::take(&mut buffer);
                        i.pods_synced = true;
                    }
                    cache.lists.fetch_add(1, Ordering::Relaxed);
                    info!(pods = n, node, "pods of this node listed");
                    cache.changed();
                }
                watcher::Event::Apply(p) => {
                    if let Some(info) = pod_info(&p) {
                        let mut i = cache.inner.write().expect("pod cache lock");
                        let same = i.pods.get(&info.uid).is_some_and(|o| **o == info);
                        if !same {
                            i.pods.insert(info.uid.clone(), Arc::new(info));
                            drop(i);
                            cache.changed();
                        }
                    }
                }
                watcher::Event::Delete(p) => {
                    if let Some(uid) = &p.metadata.uid {
                        cache
                            .inner
                            .write()
                            .expect("pod cache lock")
                            .pods
                            .remove(uid);
                        cache.changed();
                    }
                }
            },
            Ok(None) => {
                // The stream never ends by itself; start over if it does.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => backoff_error(&cache, "pod", &e),
        }
    }
}

async fn watch_namespaces(client: Client, cache: Arc<PodCache>) {
    let api: Api<Namespace> = Api::all(client);
    let cfg = watcher::Config::default().timeout(290);
    let mut buffer: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    loop {
        match stream.next().await {
            Some(Ok(ev)) => match ev {
                watcher::Event::Init => buffer.clear(),
                watcher::Event::InitApply(ns) => {
                    if let Some(n) = ns.metadata.name.clone() {
                        buffer.insert(n, ns.metadata.labels.clone().unwrap_or_default());
                    }
                }
                watcher::Event::InitDone => {
                    {
                        let mut i = cache.inner.write().expect("pod cache lock");
                        i.namespaces = std::mem::take(&mut buffer);
                        i.namespaces_synced = true;
                    }
                    cache.changed();
                }
                watcher::Event::Apply(ns) => {
                    if let Some(n) = ns.metadata.name.clone() {
                        let labels = ns.metadata.labels.clone().unwrap_or_default();
                        let mut i = cache.inner.write().expect("pod cache lock");
                        if i.namespaces.get(&n) != Some(&labels) {
                            i.namespaces.insert(n, labels);
                            drop(i);
                            cache.changed();
                        }
                    }
                }
                watcher::Event::Delete(ns) => {
                    if let Some(n) = &ns.metadata.name {
                        cache
                            .inner
                            .write()
                            .expect("pod cache lock")
                            .namespaces
                            .remove(n);
                        cache.changed();
                    }
                }
            },
            Some(Err(e)) => backoff_error(&cache, "namespace", &e),
            None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}
