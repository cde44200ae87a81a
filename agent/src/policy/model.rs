//! The policy document (`apiVersion: chokepoint.dev/v1alpha1`, `kind: EgressPolicy`).
//!
//! Every field is `deny_unknown_fields`; the values a validation error may point at are
//! `Spanned` so errors carry line and column.

use std::collections::BTreeMap;

use schemars::JsonSchema;
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

/// `spec` (also the `EgressPolicy` custom resource's spec: its CRD schema is generated from
/// these types, see `k8s::crd`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub gateways: Vec<Gateway>,
    #[schemars(with = "Vec<Identity>")]
    pub identities: Spanned<Vec<Identity>>,
    #[serde(default)]
    pub defaults: Option<Defaults>,
}

/// `spec.defaults`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Defaults {
    /// What pods whose identity is not known yet (their cgroup appeared before the pod reached
    /// the node's watcher) may reach: `gateway-only` (default), `deny` or `allow`.
    #[serde(default)]
    #[schemars(with = "Option<UnresolvedPods>")]
    pub unresolved_pods: Option<Spanned<String>>,
}

/// The values of `spec.defaults.unresolvedPods` (for the schema; the compiler reads the string
/// so that a bad value gets a line and column).
#[derive(JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UnresolvedPods {
    GatewayOnly,
    Deny,
    Allow,
}

/// `spec.gateways[]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    #[schemars(with = "Vec<String>")]
    pub endpoints: Spanned<Vec<Spanned<String>>>,
}

/// `spec.identities[]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub tenant: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub mode: Option<Spanned<String>>,
    #[schemars(with = "Selector")]
    pub selector: Spanned<Selector>,
    #[serde(default)]
    pub egress: Egress,
    #[serde(default)]
    #[schemars(with = "Option<Ingress>")]
    pub ingress: Option<Spanned<Ingress>>,
}

/// `spec.identities[].ingress`: who may open connections to the workload.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ingress {
    /// Source CIDRs that may open connections; absent means anyone, `[]` means no one.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub allow_from: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `spec.identities[].selector`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub cgroup_path: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<PodSelector>")]
    pub pod: Option<Spanned<PodSelector>>,
}

/// `selector.pod`: pods on this node, by namespace (or namespace labels), pod labels and
/// service account.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSelector {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
    #[serde(default)]
    pub service_account: Option<String>,
}

/// A Kubernetes label selector (`namespaceSelector`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelExpression {
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// `spec.identities[].egress`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub gateways: Vec<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<AllowRule>")]
    pub allow: Vec<Spanned<AllowRule>>,
}

/// `egress.allow[]`: a destination by address (`to`) or by DNS name (`toFQDN`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub to: Option<Spanned<String>>,
    /// A DNS name or `*.suffix`: the addresses the identity learns from its resolver's answers.
    #[serde(default, rename = "toFQDN")]
    #[schemars(with = "Option<String>")]
    pub to_fqdn: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub ports: Vec<Spanned<String>>,
    #[serde(default)]
    pub reason: Option<String>,
}
