//! The results of `status` and `identities`: health, programs, identities and what they are
//! bound to.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::policy::compile::{Mode, UnresolvedPods};

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
