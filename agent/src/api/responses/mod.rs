//! The results of the API's commands, typed: the daemon builds them, the CLI reads them.
//!
//! Each command has one result type; [`Reply`] is what a handler returns. Parts the CLI only
//! passes through to `-o json` (kernel features, compiled identities, backstop coverage, pod
//! selectors) are documents of their own modules and travel as [`serde_json::Value`].

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

pub use crate::{
    inventory::{View as Inventory, ViewEntry as InventoryIdentity},
    policy::diff::PolicyDiff,
};
mod status;

pub use status::{
    BackstopState, Bound, Health, Identities, IdentityState, IdentityView, KubeStatus, PodBinding,
    PolicyRef, ProgramState, RecordCounts, SelectorView, Status,
};

use crate::state::GenerationMeta;

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
    /// Request-to-enforcement timings (absent from daemons before they were reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing_ms: Option<ApplyTiming>,
}

/// `policy_apply`'s timings in milliseconds: what delays enforcement of a change.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ApplyTiming {
    /// Parsing and compiling the document.
    pub compile: f64,
    /// Binding, writing the next slot and switching the kernel's active generation.
    pub switch: f64,
    /// Request to kernel switch: `compile + switch`.
    pub enforced: f64,
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
