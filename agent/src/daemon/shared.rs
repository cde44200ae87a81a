//! The state every daemon task shares: the active generation, the kernel map handles, the state
//! store, the in-memory record and alert rings and their broadcast channels.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, RwLock, atomic::AtomicBool},
    time::Instant,
};

use tokio::sync::broadcast;

use super::Options;
use crate::{
    alerts::{Alert, WebhookStats},
    audit::{AuditSink, FlowRecord},
    bpf::{IdentBinding, PolicyMaps, Stats},
    metrics::Metrics,
    policy::CompiledPolicy,
    state::StateStore,
};

/// Records and alerts kept in memory for `flows` and `alerts` without `--follow`.
pub(crate) struct Ring<T> {
    pub(crate) items: VecDeque<T>,
    cap: usize,
}

impl<T: Clone> Ring<T> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            items: VecDeque::with_capacity(cap.min(4096)),
            cap: cap.max(1),
        }
    }
    pub(crate) fn push(&mut self, t: T) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(t);
    }
}

/// The active policy and its kernel bindings.
pub(crate) struct Active {
    pub(crate) generation: u32,
    pub(crate) policy: Arc<CompiledPolicy>,
    pub(crate) bindings: Vec<IdentBinding>,
    pub(crate) applied_at: String,
    /// Milliseconds from the start of the apply to the kernel switch (binding cgroups, writing
    /// the inactive slot, the configuration word); 0 for the generation the daemon started with.
    pub(crate) switch_ms: f64,
}

/// Everything the tasks share.
pub struct Shared {
    pub(super) opts: Options,
    pub(super) node: String,
    pub(super) maps: Mutex<PolicyMaps>,
    pub(super) stats: Mutex<Stats>,
    pub(super) attest: Mutex<crate::bpf::maps::Attest>,
    pub(super) store: Mutex<StateStore>,
    pub(super) active: RwLock<Active>,
    /// Every generation seen this run (for enriching records of older generations).
    pub(super) generations: RwLock<BTreeMap<u32, Arc<CompiledPolicy>>>,
    pub(super) tasks: RwLock<HashMap<u64, String>>,
    pub(super) flows: Mutex<Ring<Arc<FlowRecord>>>,
    pub(super) alerts: Mutex<Ring<Arc<Alert>>>,
    pub(super) flow_tx: broadcast::Sender<Arc<FlowRecord>>,
    pub(super) alert_tx: broadcast::Sender<Arc<Alert>>,
    pub(super) metrics: Metrics,
    /// Cgroup names for attestation answers, kept current by the cgroup watcher.
    pub(super) cgroup_names: crate::attest::CgroupNames,
    /// The audit log's one writer (flows, losses, policy changes, grants, revokes).
    pub(super) audit: AuditSink,
    /// The alert log's one writer.
    pub(super) alert_log: AuditSink,
    pub(super) degraded: Vec<(String, String)>,
    /// Kernel features detected at start (`status`'s `kernel`).
    pub(crate) features: crate::bpf::features::Features,
    pub(super) webhook: Arc<WebhookStats>,
    pub(super) shutting_down: AtomicBool,
    /// Gateway host name cache.
    pub(super) dns: crate::dns::DnsCache,
    /// The shadow-integration inventory (persisted in the state dir).
    pub(super) inventory: Mutex<crate::inventory::Inventory>,
    /// The inventory changed since it was last saved.
    pub(super) inventory_dirty: AtomicBool,
    /// Host names the identities resolved (names the inventory's destinations).
    pub(super) host_names: Arc<crate::inventory::names::NameTable>,
    /// DNS answers captured for host names: parsed, not a usable answer, lost (ring full).
    pub(super) dns_answers: DnsAnswerCounts,
    /// `toFQDN` rules: the DNS proxy and the learned addresses.
    pub(super) fqdn: Arc<crate::fqdn::Fqdn>,
    /// eventfd that tells the cgroup watcher to re-arm (the policy changed).
    pub(super) rearm: Arc<std::os::fd::OwnedFd>,
    /// What the per-netns TC backstop covers, per identity name (`None`: it could not start).
    pub(super) backstop: Mutex<Option<BTreeMap<String, Vec<crate::bpf::backstop::NetnsCover>>>>,
    /// Pod identities (with `--kube`).
    pub(super) pods: Option<Arc<crate::k8s::PodBinder>>,
}

/// Compiled generations kept in memory to name identities and rules in records.
pub(crate) const KEEP_GENERATIONS: usize = 3;

/// The empty policy of generation 0 (no identities: nothing is touched).
pub(crate) fn empty_policy() -> CompiledPolicy {
    CompiledPolicy {
        name: "(none)".into(),
        digest: String::new(),
        gateways: Vec::new(),
        identities: Vec::new(),
        resolved: BTreeMap::new(),
        unresolved_pods: crate::policy::compiled::UnresolvedPods::default(),
        source: String::new(),
    }
}

/// Compiles with gateway host names resolved through the daemon's cache (grace for rotations).
pub(crate) fn compile_cached(
    dns: &crate::dns::DnsCache,
    file: &str,
    src: &[u8],
) -> Result<CompiledPolicy, crate::policy::compile::PolicyError> {
    let resolve =
        |h: &str, p: u16| dns.resolve(h, p, &crate::policy::parse::system_resolve, Instant::now());
    crate::policy::compile_source_with(file, src, &resolve)
}

impl Shared {
    /// Identity name and tenant of `ident` under `generation`.
    pub(crate) fn identity_of(
        &self,
        generation: u32,
        ident: u32,
    ) -> Option<(String, Option<String>)> {
        let g = self.generations.read().expect("generations lock");
        let p = g.get(&generation)?;
        let id = p.identities.get(ident.checked_sub(1)? as usize)?;
        Some((id.name.clone(), id.tenant.clone()))
    }

    /// Task name of a numeric task id.
    pub(crate) fn task_name(&self, task: u64) -> Option<String> {
        self.tasks.read().expect("tasks lock").get(&task).cloned()
    }
}

/// Counts of the DNS answers the kernel captured for the inventory's host names.
#[derive(Default)]
pub(crate) struct DnsAnswerCounts {
    /// Answers parsed (whether or not they named an address).
    pub(crate) parsed: std::sync::atomic::AtomicU64,
    /// Captured messages that were not a parseable DNS response.
    pub(crate) unparsed: std::sync::atomic::AtomicU64,
    /// Answers the kernel could not capture (ring full), as last read from `CP_DNSLOST`.
    pub(crate) lost: std::sync::atomic::AtomicU64,
}
