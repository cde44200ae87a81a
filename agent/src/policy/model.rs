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
    /// `chokepoint.dev/v1alpha1`.
    pub api_version: Spanned<String>,
    /// `EgressPolicy`.
    pub kind: Spanned<String>,
    /// `metadata`.
    pub metadata: Metadata,
    /// `spec`.
    pub spec: Spec,
}

/// `metadata`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The policy's name.
    pub name: Spanned<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `spec` (also the `EgressPolicy` custom resource's spec: its CRD schema is generated from
/// these types, see `k8s::crd`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The sanctioned gateways.
    #[serde(default)]
    pub gateways: Vec<Gateway>,
    /// The workload identities and what each may reach.
    #[schemars(with = "Vec<Identity>")]
    pub identities: Spanned<Vec<Identity>>,
    /// Settings for all identities.
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
// Doc comments on the variants would turn the schema's `enum` into a `oneOf`: the values are
// described on `Defaults::unresolved_pods`.
#[allow(missing_docs)]
pub enum UnresolvedPods {
    GatewayOnly,
    Deny,
    Allow,
}

/// `spec.gateways[]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// The gateway's name (what `egress.gateways` refers to).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Where it listens: `IP:PORT/PROTO`, `CIDR:PORT/PROTO`, `[IPv6]:PORT/PROTO` or
    /// `HOST:PORT/PROTO`.
    #[schemars(with = "Vec<String>")]
    pub endpoints: Spanned<Vec<Spanned<String>>>,
}

/// `spec.identities[]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The identity's name (in records, alerts and metrics).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// A tenant, carried into records and alerts.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub tenant: Option<Spanned<String>>,
    /// `enforce` (default) or `audit`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub mode: Option<Spanned<String>>,
    /// Which processes are the identity: a cgroup path or a pod selector.
    #[schemars(with = "Selector")]
    pub selector: Spanned<Selector>,
    /// What the identity may reach.
    #[serde(default)]
    pub egress: Egress,
    /// Who may open connections to the identity.
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
    /// A cgroup directory under `--cgroup-root`: every process in it or below it.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub cgroup_path: Option<Spanned<String>>,
    /// Pods on this node (needs `chokepoint daemon --kube`).
    #[serde(default)]
    #[schemars(with = "Option<PodSelector>")]
    pub pod: Option<Spanned<PodSelector>>,
}

/// `selector.pod`: pods on this node, by namespace (or namespace labels), pod labels and
/// service account.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSelector {
    /// Only pods of this namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Only pods of namespaces whose labels match.
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// Pod labels that must be set to these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Pod label requirements.
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
    /// Only pods running as this service account.
    #[serde(default)]
    pub service_account: Option<String>,
}

/// A Kubernetes label selector (`namespaceSelector`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must be set to these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Label requirements.
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelExpression {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values (for `In` and `NotIn`).
    #[serde(default)]
    pub values: Vec<String>,
}

/// `spec.identities[].egress`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// Names from `spec.gateways` the identity may use.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub gateways: Vec<Spanned<String>>,
    /// Other destinations the identity may reach.
    #[serde(default)]
    #[schemars(with = "Vec<AllowRule>")]
    pub allow: Vec<Spanned<AllowRule>>,
}

/// `egress.allow[]`: a destination by address (`to`) or by DNS name (`toFQDN`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// An IP or CIDR (v4 or v6).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub to: Option<Spanned<String>>,
    /// A DNS name or `*.suffix`: the addresses the identity learns from its resolver's answers.
    #[serde(default, rename = "toFQDN")]
    #[schemars(with = "Option<String>")]
    pub to_fqdn: Option<Spanned<String>>,
    /// `PORT/PROTO`, `LO-HI/PROTO`, `*/PROTO` or `PORT`; none means every port and protocol.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub ports: Vec<Spanned<String>>,
    /// Why the rule exists (shown in the records' `rule`).
    #[serde(default)]
    pub reason: Option<String>,
}
