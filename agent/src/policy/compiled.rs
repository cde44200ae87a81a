//! What compiling a policy produces: the identities, gateways and kernel entries of one
//! generation.

use std::collections::BTreeMap;

use chokepoint_common::PortEntry;
use serde::{Deserialize, Serialize};

use super::{
    fqdn::FqdnPattern,
    parse::{Cidr, PortSpec},
};
use crate::k8s::selector::PodMatch;

/// Identity mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Bypasses fail.
    Enforce,
    /// Everything passes; would-be denials are recorded with verdict `audit`.
    Audit,
}

impl Mode {
    /// The kernel's mode code.
    pub fn code(self) -> u8 {
        match self {
            Mode::Enforce => chokepoint_common::MODE_ENFORCE,
            Mode::Audit => chokepoint_common::MODE_AUDIT,
        }
    }
}

/// A compiled identity.
#[derive(Clone, Debug, Serialize)]
pub struct CompiledIdentity {
    /// Kernel identity id (1-based position in the document).
    pub id: u32,
    /// `identities[].name`.
    pub name: String,
    /// `identities[].tenant`.
    pub tenant: Option<String>,
    /// `identities[].mode` (enforce by default).
    pub mode: Mode,
    /// Selector path relative to the cgroup root, without leading or trailing `/` (empty for a
    /// pod selector).
    pub cgroup_path: String,
    /// `selector.pod`, compiled: resolved to pod cgroups by the daemon's pod watcher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodMatch>,
    /// The identity the daemon gives pod cgroups whose pod is not known yet
    /// (`spec.defaults.unresolvedPods`); not written in the document.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unresolved: bool,
    /// Names of the gateways the identity may use (`egress.gateways`).
    pub gateways: Vec<String>,
    /// Labels of the allow rules, by rule index.
    pub rules: Vec<String>,
    /// The `toFQDN` rules.
    pub fqdn: Vec<FqdnRule>,
    /// Single-address resolvers its `53/udp` rules allow (rule index, address): where the DNS
    /// proxy forwards this identity's lookups.
    pub resolvers: Vec<(u32, std::net::IpAddr)>,
    /// Destination prefixes with everything allowed there (ancestors merged in).
    #[serde(skip)]
    pub entries: BTreeMap<Cidr, Vec<PortEntry>>,
    /// `ingress.allowFrom`: the sources that may open connections to the identity; `None`
    /// when anyone may.
    #[serde(rename = "allow_from", skip_serializing_if = "Option::is_none")]
    pub ingress_from: Option<Vec<Cidr>>,
}

impl CompiledIdentity {
    /// The source prefixes written into the ingress key space: `allowFrom`, or everything.
    pub fn ingress_prefixes(&self) -> Vec<Cidr> {
        match &self.ingress_from {
            Some(v) => v.clone(),
            None => vec![
                Cidr {
                    addr: std::net::Ipv4Addr::UNSPECIFIED.into(),
                    bits: 0,
                },
                Cidr {
                    addr: std::net::Ipv6Addr::UNSPECIFIED.into(),
                    bits: 0,
                },
            ],
        }
    }
}

/// A compiled `toFQDN` rule.
#[derive(Clone, Debug, Serialize)]
pub struct FqdnRule {
    /// Rule index within the identity.
    pub rule: u32,
    /// The name or `*.suffix` pattern of `toFQDN`.
    pub pattern: FqdnPattern,
    /// The ports it allows at every learned address.
    #[serde(skip)]
    pub ports: Vec<PortSpec>,
}

/// A compiled policy: what one generation holds.
#[derive(Clone, Debug, Serialize)]
pub struct CompiledPolicy {
    /// `metadata.name`.
    pub name: String,
    /// `sha256:<hex>` of the source text.
    pub digest: String,
    /// Gateway names, by gateway index.
    pub gateways: Vec<String>,
    /// The identities, in document order (position + 1 is the kernel id).
    pub identities: Vec<CompiledIdentity>,
    /// Gateway host names and the addresses compiled in for them.
    pub resolved: BTreeMap<String, Vec<std::net::IpAddr>>,
    /// `spec.defaults.unresolvedPods`.
    pub unresolved_pods: UnresolvedPods,
    /// The document as applied.
    #[serde(skip)]
    pub source: String,
}

/// `spec.defaults.unresolvedPods`: what a pod cgroup may reach before its pod is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnresolvedPods {
    /// The gateways the policy's pod identities use, nothing else.
    #[default]
    GatewayOnly,
    /// Nothing.
    Deny,
    /// Everything (the cgroup is not bound until its pod is known).
    Allow,
}

/// Name of the identity of not-yet-known pods.
pub const UNRESOLVED_IDENTITY: &str = "(unresolved pod)";

impl CompiledPolicy {
    /// Whether any identity selects pods.
    pub fn has_pod_identities(&self) -> bool {
        self.identities.iter().any(|i| i.pod.is_some())
    }
    /// The identity of not-yet-known pods, when the policy binds them.
    pub fn unresolved_identity(&self) -> Option<&CompiledIdentity> {
        self.identities.iter().find(|i| i.unresolved)
    }
    /// Number of destination prefixes across identities.
    pub fn prefix_count(&self) -> usize {
        self.identities.iter().map(|i| i.entries.len()).sum()
    }
    /// Label of the rule behind an allow decision.
    pub fn rule_label(&self, ident: u32, reason: u8, rule: u32) -> Option<String> {
        let id = self.identities.get(ident.checked_sub(1)? as usize)?;
        match reason {
            chokepoint_common::reason::GATEWAY => {
                Some(format!("gateway:{}", self.gateways.get(rule as usize)?))
            }
            chokepoint_common::reason::RULE | chokepoint_common::reason::FQDN => {
                id.rules.get(rule as usize).cloned()
            }
            _ => None,
        }
    }
}
