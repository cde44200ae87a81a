//! The results of the API's commands, typed: the daemon builds them, the CLI reads them.
//!
//! Each command has one result type; [`Reply`] is what a handler returns. Parts the CLI only
//! passes through to `-o json` (kernel features, compiled identities, backstop coverage, pod
//! selectors) are documents of their own modules and travel as [`serde_json::Value`].

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::{
    inventory::{View as Inventory, ViewEntry as InventoryIdentity},
    policy::diff::PolicyDiff,
};
use crate::{
    policy::compile::{Mode, UnresolvedPods},
    state::GenerationMeta,
};

/// What a handler answers (serialised as the bare result object).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// `status`.
    Status(Box<Status>),
    /// `identities`.
    Identities(Identities),
    /// `policy_show`.
    PolicyShow(Box<PolicyShow>),
    /// `policy_apply`.
    PolicyApplied(PolicyApplied),
    /// `policy_diff`.
    PolicyDiff(PolicyDiff),
    /// `policy_history`.
    PolicyHistory(PolicyHistory),
    /// `policy_rollback`.
    PolicyRolledBack(PolicyRolledBack),
    /// `grant`.
    Granted(Granted),
    /// `revoke`.
    Revoked(Revoked),
    /// `attest`: the attestation module's answer, as the HTTP endpoint gives it
    /// ([`Attestation`] on the client side).
    Attest(serde_json::Value),
    /// `inventory`.
    Inventory(Inventory),
    /// `fqdn`.
    Fqdn(FqdnLearned),
}

/// `status`: health, programs, identities and record counters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// Active generation.
    pub generation: u32,
    /// The active policy.
    pub policy: PolicyRef,
    /// `enforcing`, `degraded` or `not_enforcing`.
    pub health: Health,
    /// Core programs attached and the kernel on the daemon's generation.
    pub enforcing: bool,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
    /// Every program (TC per interface) and whether its link is pinned.
    pub programs: Vec<ProgramState>,
    /// Every identity of the active policy.
    pub identities: Vec<IdentityState>,
    /// Record counters.
    pub records: RecordCounts,
    /// The daemon's version.
    pub version: String,
    /// This node's name.
    pub node: String,
    /// The bpffs directory of the pins.
    pub bpffs: PathBuf,
    /// The cgroup v2 root.
    pub cgroup_root: PathBuf,
    /// `--tc-iface` interfaces.
    pub tc_ifaces: Vec<String>,
    /// The pod watcher, on Kubernetes.
    pub kubernetes: Option<KubeStatus>,
    /// Kernel features found at start (`bpf::features`).
    pub kernel: serde_json::Value,
}

/// Overall health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Everything attached and current.
    Enforcing,
    /// Core programs attached, something else wrong (see `problems`).
    Degraded,
    /// A core program is missing.
    NotEnforcing,
}

impl Health {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Enforcing => "enforcing",
            Health::Degraded => "degraded",
            Health::NotEnforcing => "not_enforcing",
        }
    }
}

/// Name and digest of a policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyRef {
    /// `metadata.name`.
    pub name: String,
    /// `sha256:<hex>` of the source.
    pub digest: String,
    /// When it became active (RFC 3339).
    pub applied_at: String,
}

/// One program.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgramState {
    /// Program name (`cp_tc_egress@IFACE` per interface).
    pub program: String,
    /// Its link is pinned.
    pub attached: bool,
}

/// One identity in `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentityState {
    /// Identity name.
    pub name: String,
    /// Bound and programs attached.
    pub enforcing: bool,
    /// The per-packet backstops that cover it.
    pub backstop: BackstopState,
}

/// Which per-packet backstops cover an identity.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackstopState {
    /// The BPF LSM program is attached (packet sockets refused).
    pub lsm: bool,
    /// `cgroup/setsockopt` is attached.
    pub setsockopt: bool,
    /// `cp_compat_sys` is attached (32-bit setsockopt of an enforced identity refused).
    pub compat_syscall: bool,
    /// `--tc-iface` interfaces.
    pub tc_ifaces: Vec<String>,
    /// TC per network namespace of its processes (`bpf::backstop`), when that is on.
    pub tc_netns: Option<serde_json::Value>,
}

/// Record counters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordCounts {
    /// Records read from the ring.
    pub delivered: u64,
    /// Records lost in the kernel or in the daemon.
    pub lost: u64,
    /// Decisions the kernel counted, when the stats map is readable.
    pub kernel_decisions: Option<u64>,
}

/// The pod watcher's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KubeStatus {
    /// `--node-name`.
    pub node: Option<String>,
    /// The cluster policy followed, if any.
    pub policy: Option<String>,
    /// The node's pods have been listed.
    pub synced: bool,
    /// Pods known.
    pub pods: usize,
    /// Namespaces known.
    pub namespaces: usize,
    /// Lists done.
    pub lists: u64,
    /// Watch errors.
    pub watch_errors: u64,
    /// `spec.defaults.unresolvedPods` of the active policy.
    pub unresolved_pods: UnresolvedPods,
}

/// `identities`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identities {
    /// Active generation.
    pub generation: u32,
    /// Every identity of the active policy.
    pub identities: Vec<IdentityView>,
}

/// One identity: what selects it, what it covers, what it may reach.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentityView {
    /// Identity name.
    pub name: String,
    /// Tenant.
    pub tenant: Option<String>,
    /// `enforce` or `audit`.
    pub mode: Mode,
    /// The selector as written.
    pub selector: SelectorView,
    /// The cgroup or the pods it is bound to.
    #[serde(flatten)]
    pub bound: Bound,
    /// Cgroups covered.
    pub cgroups: usize,
    /// Gateways it may use.
    pub gateways: Vec<String>,
    /// Labels of its allow rules.
    pub rules: Vec<String>,
    /// Destination prefixes.
    pub destinations: usize,
    /// Bound and programs attached.
    pub enforcing: bool,
}

/// `selector` of an identity.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SelectorView {
    /// `/path` of a cgroup selector.
    #[serde(
        rename = "cgroupPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cgroup_path: Option<String>,
    /// The compiled pod selector (`k8s::selector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<serde_json::Value>,
}

/// What an identity is bound to.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bound {
    /// A cgroup selector: the cgroup and its id when it exists.
    Cgroup {
        /// Absolute cgroup path.
        cgroup: PathBuf,
        /// Its id, when the cgroup exists and is bound.
        cgroup_id: Option<u64>,
    },
    /// A pod selector: the pods it covers now.
    Pods {
        /// The pods, one cgroup each.
        pods: Vec<PodBinding>,
    },
}

/// A pod covered by an identity.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodBinding {
    /// Namespace, when the pod is known.
    pub namespace: Option<String>,
    /// Pod name, when known.
    pub pod: Option<String>,
    /// Service account, when known.
    pub service_account: Option<String>,
    /// The pod-level cgroup (`/…`).
    pub cgroup: String,
    /// Its id.
    pub cgroup_id: u64,
}

/// `policy_show`: the active policy, compiled, with its source.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyShow {
    /// Active generation.
    pub generation: u32,
    /// `metadata.name`.
    pub name: String,
    /// `sha256:<hex>` of the source.
    pub digest: String,
    /// Gateway names.
    pub gateways: Vec<String>,
    /// The compiled identities (`policy::compiled`).
    pub identities: serde_json::Value,
    /// Gateway host names and the addresses compiled in for them.
    pub resolved: BTreeMap<String, Vec<IpAddr>>,
    /// The document as applied.
    pub source: String,
}

/// `policy_apply`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyApplied {
    /// The new active generation.
    pub generation: u32,
    /// The one before.
    pub previous: u32,
    /// Digest of the applied source.
    pub digest: String,
}

/// `policy_history`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyHistory {
    /// Active generation.
    pub generation: u32,
    /// Every stored generation.
    pub history: Vec<GenerationMeta>,
}

/// `policy_rollback`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyRolledBack {
    /// The new active generation.
    pub generation: u32,
    /// The one before.
    pub previous: u32,
    /// The generation whose source was restored.
    pub restored: u32,
}

/// `grant`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Granted {
    /// Identity granted to.
    pub identity: String,
    /// Destination as given.
    pub to: String,
    /// Task the grant belongs to.
    pub task: String,
    /// Prefixes the destination resolved to.
    pub destinations: Vec<String>,
    /// `port/proto`.
    pub ports: String,
    /// Expiry (RFC 3339).
    pub expires_at: String,
}

/// `revoke`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revoked {
    /// The task.
    pub task: String,
    /// Grants removed.
    pub revoked: usize,
}

/// `attest`: who is behind a live gateway connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attestation {
    /// Identity name.
    pub identity: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Task of a grant, if the connection used one.
    pub task: Option<String>,
    /// Process id.
    pub pid: u32,
    /// Cgroup path.
    pub cgroup: Option<String>,
    /// When the connection was established (RFC 3339).
    pub since: String,
    /// Generation that allowed it.
    pub policy_generation: u32,
    /// Socket cookie.
    pub socket_cookie: u64,
    /// This node.
    #[serde(default)]
    pub node: Option<String>,
}

/// `fqdn`: names learned for `toFQDN` rules.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FqdnLearned {
    /// Every learned (identity, address, name).
    pub learned: Vec<LearnedName>,
    /// The DNS proxy of each identity with `toFQDN` rules.
    pub proxies: Vec<FqdnProxy>,
}

/// One learned name and address.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LearnedName {
    /// Identity.
    pub identity: String,
    /// `allow[N]` of the rule, while the rule exists.
    pub rule: Option<String>,
    /// The rule's pattern.
    pub pattern: String,
    /// The name answered.
    pub name: String,
    /// The address.
    pub addr: String,
    /// Ports the rule allows there.
    pub ports: Vec<String>,
    /// Seconds until it expires.
    pub ttl_remaining_s: u64,
    /// Expired (the kernel no longer allows it).
    pub expired: bool,
}

/// An identity's DNS proxy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FqdnProxy {
    /// Identity.
    pub identity: String,
    /// UDP port of its proxy.
    pub port: u16,
    /// Its sanctioned resolver.
    pub resolver: Option<String>,
}
