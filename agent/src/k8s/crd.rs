//! The `EgressPolicy` custom resource: its CRD generated from the policy model's Rust types (so
//! schema and parser cannot drift; a test compares it with the chart's committed copy), and the
//! conversion of an object back into the policy document the compiler reads.

use schemars::{JsonSchema, generate::SchemaSettings};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::policy::model::Spec;

/// API group.
pub const GROUP: &str = "chokepoint.dev";
/// API version.
pub const VERSION: &str = "v1alpha1";
/// Kind.
pub const KIND: &str = "EgressPolicy";
/// Plural resource name.
pub const PLURAL: &str = "egresspolicies";

/// `status` of an `EgressPolicy`, written by the node agents.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicyStatus {
    /// `metadata.generation` of the object the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: whether the last node that read the object could compile and apply it.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A status condition (the shape of `metav1.Condition`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition type (`Accepted`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason for the status (e.g. `InvalidPolicy`).
    pub reason: String,
    /// What happened, for people.
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    /// The `metadata.generation` the condition is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Rewrites a schemars schema into a Kubernetes structural schema: no `$schema`, `title` or
/// `$defs`; `Option<T>` as `T` with `nullable`; no boolean `additionalProperties` (unknown fields
/// are pruned by the API server and rejected by the compiler); integer formats kept as Kubernetes
/// knows them.
fn structural(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("$schema");
            m.remove("title");
            m.remove("$defs");
            if matches!(m.get("additionalProperties"), Some(Value::Bool(_))) {
                m.remove("additionalProperties");
            }
            if let Some(Value::String(f)) = m.get("format")
                && !matches!(f.as_str(), "int32" | "int64" | "date-time" | "byte")
            {
                m.remove("format");
            }
            // `type: [T, "null"]` → `type: T, nullable: true`.
            if let Some(Value::Array(types)) = m.get("type").cloned() {
                let non_null: Vec<Value> = types
                    .iter()
                    .filter(|t| t.as_str() != Some("null"))
                    .cloned()
                    .collect();
                if non_null.len() == 1 {
                    m.insert("type".into(), non_null[0].clone());
                    if non_null.len() != types.len() {
                        m.insert("nullable".into(), Value::Bool(true));
                    }
                }
            }
            // `anyOf: [S, {type: null}]` (an optional struct) → S with `nullable`.
            if let Some(Value::Array(any)) = m.get("anyOf").cloned() {
                let non_null: Vec<&Value> = any
                    .iter()
                    .filter(|s| s.get("type").and_then(Value::as_str) != Some("null"))
                    .collect();
                if non_null.len() == 1 && any.len() == 2 {
                    m.remove("anyOf");
                    if let Value::Object(inner) = non_null[0].clone() {
                        for (k, val) in inner {
                            m.entry(k).or_insert(val);
                        }
                    }
                    m.insert("nullable".into(), Value::Bool(true));
                }
            }
            // A nullable enum lists null among its values: say `nullable` instead.
            if let Some(Value::Array(vals)) = m.get_mut("enum")
                && vals.contains(&Value::Null)
            {
                vals.retain(|v| !v.is_null());
                m.insert("nullable".into(), Value::Bool(true));
            }
            // An enum of strings needs its type.
            if m.contains_key("enum") && !m.contains_key("type") {
                m.insert("type".into(), Value::String("string".into()));
            }
            // A default of null says nothing.
            if m.get("default") == Some(&Value::Null) {
                m.remove("default");
            }
            for val in m.values_mut() {
                structural(val);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(structural),
        _ => {}
    }
}

fn schema_of<T: JsonSchema>() -> Value {
    let mut settings = SchemaSettings::openapi3();
    settings.inline_subschemas = true;
    settings.meta_schema = None;
    let schema = settings.into_generator().into_root_schema_for::<T>();
    let mut v = serde_json::to_value(schema).expect("a schema serialises");
    structural(&mut v);
    v
}

/// The CRD, as a JSON value.
pub fn crd() -> Value {
    let mut spec = schema_of::<Spec>();
    if let Value::Object(m) = &mut spec {
        m.insert(
            "description".into(),
            Value::String(
                "The egress policy of the identities on every node (the same document as `chokepoint policy apply` takes).".into(),
            ),
        );
    }
    let status = schema_of::<EgressPolicyStatus>();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{PLURAL}.{GROUP}"),
            "labels": {"app.kubernetes.io/name": "chokepoint"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": KIND,
                "listKind": format!("{KIND}List"),
                "plural": PLURAL,
                "singular": "egresspolicy",
                "shortNames": ["egp"],
            },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"},
                    {"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].reason"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "An egress policy for Chokepoint's node agents.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": status,
                    },
                }},
            }],
        },
    })
}

/// The CRD as YAML (what `deploy/helm/chokepoint/crds/` holds).
pub fn crd_yaml() -> String {
    let body = serde_saphyr::to_string(&crd()).expect("the CRD serialises");
    format!(
        "# Generated from the policy model's Rust types; do not edit.\n# `CHOKEPOINT_BLESS=1 cargo test -p chokepoint-agent committed_crd` rewrites it; a test fails when it is stale.\n{body}"
    )
}

/// The policy document of a custom resource object: its `spec` under the document's own
/// `apiVersion`, `kind` and `metadata.name`, as pretty JSON (which the YAML parser reads; line
/// and column of an error point into this text).
pub fn document(name: &str, spec: Option<&Value>) -> String {
    let mut doc = Map::new();
    doc.insert("apiVersion".into(), json!(format!("{GROUP}/{VERSION}")));
    doc.insert("kind".into(), json!(KIND));
    doc.insert("metadata".into(), json!({"name": name}));
    doc.insert("spec".into(), spec.cloned().unwrap_or(json!({})));
    serde_json::to_string_pretty(&Value::Object(doc)).expect("serialisable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_is_the_generated_one() {
        // The chart's copy and the plain manifests' copy.
        for path in [
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/helm/chokepoint/crds/egresspolicies.chokepoint.dev.yaml"
            ),
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/kubernetes/egresspolicies.chokepoint.dev.yaml"
            ),
        ] {
            if std::env::var_os("CHOKEPOINT_BLESS").is_some() {
                std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
                std::fs::write(path, crd_yaml()).unwrap();
            }
            let committed = std::fs::read_to_string(path).unwrap_or_default();
            assert!(
                committed == crd_yaml(),
                "{path} is stale: run `CHOKEPOINT_BLESS=1 cargo test -p chokepoint-agent committed_crd`"
            );
        }
    }

    #[test]
    fn schema_is_structural() {
        let v = crd();
        let text = v.to_string();
        for bad in [
            "$ref",
            "$schema",
            "\"title\"",
            "additionalProperties\":false",
        ] {
            assert!(!text.contains(bad), "{bad} in {text}");
        }
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let ident = &spec["properties"]["identities"]["items"];
        let pod = &ident["properties"]["selector"]["properties"]["pod"];
        assert_eq!(pod["type"], "object");
        assert_eq!(pod["nullable"], true);
        for f in [
            "namespace",
            "namespaceSelector",
            "matchLabels",
            "matchExpressions",
            "serviceAccount",
        ] {
            assert!(pod["properties"].get(f).is_some(), "{f}");
        }
        let d = &spec["properties"]["defaults"]["properties"]["unresolvedPods"];
        assert_eq!(d["enum"], json!(["gateway-only", "deny", "allow"]));
    }

    #[test]
    fn an_object_becomes_a_document_the_compiler_reads() {
        let spec = json!({
            "gateways": [{"name": "gw", "endpoints": ["10.77.0.1:8080/tcp"]}],
            "identities": [{
                "name": "research",
                "selector": {"pod": {"namespace": "agents", "matchLabels": {"app": "research"}}},
                "egress": {"gateways": ["gw"]},
            }],
        });
        let doc = document("ai", Some(&spec));
        let p = crate::policy::compile_source("egresspolicy/ai", doc.as_bytes()).unwrap();
        assert_eq!(p.name, "ai");
        assert!(p.identities[0].pod.is_some());
        // The default for pods not known yet: gateway-only, as an extra identity.
        let u = p.unresolved_identity().unwrap();
        assert_eq!(u.gateways, vec!["gw".to_string()]);
        // A bad value is reported with its field.
        let bad =
            json!({"identities": [{"name": "x", "selector": {"pod": {"namespace": "Bad NS"}}}]});
        let e = crate::policy::compile_source("o", document("ai", Some(&bad)).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.identities[0].selector.pod.namespace"),
            "{e}"
        );
    }
}
