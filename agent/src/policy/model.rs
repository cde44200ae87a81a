//! The policy document (`apiVersion: chokepoint.dev/v1alpha1`, `kind: EgressPolicy`).
//!
//! Every field is `deny_unknown_fields`; the values a validation error may point at are
//! `Spanned` so errors carry line and column.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// The whole document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDoc {
    pub api_version: Spanned<String>,
    pub kind: Spanned<String>,
    pub metadata: Metadata,
    pub spec: Spec,
}

/// `metadata`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: Spanned<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub gateways: Vec<Gateway>,
    pub identities: Spanned<Vec<Identity>>,
}

/// `spec.gateways[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub name: Spanned<String>,
    pub endpoints: Spanned<Vec<Spanned<String>>>,
}

/// `spec.identities[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub name: Spanned<String>,
    #[serde(default)]
    pub tenant: Option<Spanned<String>>,
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    pub selector: Spanned<Selector>,
    #[serde(default)]
    pub egress: Egress,
    #[serde(default)]
    pub ingress: Option<Spanned<Ingress>>,
}

/// `spec.identities[].ingress`: who may open connections to the workload.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ingress {
    /// Source CIDRs that may open connections; absent means anyone, `[]` means no one.
    #[serde(default)]
    pub allow_from: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `spec.identities[].selector`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub cgroup_path: Option<Spanned<String>>,
    #[serde(default)]
    pub pod: Option<Spanned<PodSelector>>,
}

/// `selector.pod`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSelector {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub service_account: Option<String>,
}

/// `spec.identities[].egress`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    #[serde(default)]
    pub gateways: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow: Vec<Spanned<AllowRule>>,
}

/// `egress.allow[]`: a destination by address (`to`) or by DNS name (`toFQDN`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    #[serde(default)]
    pub to: Option<Spanned<String>>,
    /// A DNS name or `*.suffix`: the addresses the identity learns from its resolver's answers.
    #[serde(default, rename = "toFQDN")]
    pub to_fqdn: Option<Spanned<String>>,
    #[serde(default)]
    pub ports: Vec<Spanned<String>>,
    #[serde(default)]
    pub reason: Option<String>,
}
