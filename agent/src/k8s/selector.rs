//! `selector.pod`, compiled: which pods (by namespace, namespace labels, pod labels and service
//! account) an identity covers. Label selectors follow Kubernetes' semantics (`matchLabels` and
//! `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`, all ANDed).

use std::collections::BTreeMap;

use serde::Serialize;

/// One label requirement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "operator", rename_all = "PascalCase")]
pub enum Requirement {
    /// The label is set to one of `values`.
    In {
        /// The label key.
        key: String,
        /// The values allowed.
        values: Vec<String>,
    },
    /// The label is unset or set to none of `values`.
    NotIn {
        /// The label key.
        key: String,
        /// The values refused.
        values: Vec<String>,
    },
    /// The label is set.
    Exists {
        /// The label key.
        key: String,
    },
    /// The label is not set.
    DoesNotExist {
        /// The label key.
        key: String,
    },
}

impl Requirement {
    /// Builds a requirement from a `matchExpressions` entry.
    pub fn new(key: &str, operator: &str, values: &[String]) -> Result<Requirement, String> {
        validate_key(key)?;
        for v in values {
            validate_value(v)?;
        }
        let key = key.to_string();
        let values = values.to_vec();
        match operator {
            "In" | "NotIn" if values.is_empty() => {
                Err(format!("operator `{operator}` needs at least one value"))
            }
            "In" => Ok(Requirement::In { key, values }),
            "NotIn" => Ok(Requirement::NotIn { key, values }),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                Err(format!("operator `{operator}` takes no values"))
            }
            "Exists" => Ok(Requirement::Exists { key }),
            "DoesNotExist" => Ok(Requirement::DoesNotExist { key }),
            other => Err(format!(
                "unknown operator `{other}` (expected In, NotIn, Exists or DoesNotExist)"
            )),
        }
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn { key, values } => {
                labels.get(key).is_none_or(|v| !values.contains(v))
            }
            Requirement::Exists { key } => labels.contains_key(key),
            Requirement::DoesNotExist { key } => !labels.contains_key(key),
        }
    }
}

/// A label selector: every requirement must hold (empty selects everything).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LabelMatch {
    /// The requirements, ANDed.
    pub requirements: Vec<Requirement>,
}

impl LabelMatch {
    /// From `matchLabels` (each becomes `key In [value]`) and already built expressions.
    pub fn new(
        match_labels: &BTreeMap<String, String>,
        expressions: Vec<Requirement>,
    ) -> Result<LabelMatch, String> {
        let mut requirements = Vec::new();
        for (k, v) in match_labels {
            validate_key(k)?;
            validate_value(v)?;
            requirements.push(Requirement::In {
                key: k.clone(),
                values: vec![v.clone()],
            });
        }
        requirements.extend(expressions);
        Ok(LabelMatch { requirements })
    }

    /// Whether `labels` meet every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// Which namespaces a pod selector covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NamespaceMatch {
    /// The namespace of this name.
    Name(String),
    /// Namespaces whose labels match.
    Selector(LabelMatch),
}

/// A compiled `selector.pod`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMatch {
    /// Which namespaces.
    pub namespace: NamespaceMatch,
    /// The pod labels required.
    pub labels: LabelMatch,
    /// The service account required, if any.
    pub service_account: Option<String>,
}

/// What the matcher needs to know about a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName`.
    pub service_account: String,
    /// Container id → container name (init, regular and ephemeral containers).
    pub containers: BTreeMap<String, String>,
}

impl PodMatch {
    /// Whether the namespace (with its labels, when known) is one this selector covers. With a
    /// namespace selector and unknown labels the answer is no.
    pub fn selects_namespace(
        &self,
        namespace: &str,
        ns_labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        match &self.namespace {
            NamespaceMatch::Name(n) => n == namespace,
            NamespaceMatch::Selector(s) => ns_labels.is_some_and(|l| s.matches(l)),
        }
    }

    /// Whether the pod is selected.
    pub fn matches(&self, pod: &PodInfo, ns_labels: Option<&BTreeMap<String, String>>) -> bool {
        self.selects_namespace(&pod.namespace, ns_labels)
            && self.labels.matches(&pod.labels)
            && self
                .service_account
                .as_ref()
                .is_none_or(|sa| *sa == pod.service_account)
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A namespace or service account name (a DNS-1123 label; service accounts may be subdomains).
pub fn validate_name(what: &str, s: &str, subdomain: bool) -> Result<(), String> {
    let ok = if subdomain {
        s.len() <= 253 && s.split('.').all(is_dns_label)
    } else {
        is_dns_label(s)
    };
    if ok {
        Ok(())
    } else {
        Err(format!("`{s}` is not a valid {what} name"))
    }
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain.
pub fn validate_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns_label));
    if prefix_ok && is_label_name(name) {
        Ok(())
    } else {
        Err(format!("`{k}` is not a valid label key"))
    }
}

/// A label value (empty, or a label name).
pub fn validate_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_label_name(v) {
        Ok(())
    } else {
        Err(format!("`{v}` is not a valid label value"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(ns: &str, kv: &[(&str, &str)], sa: &str) -> PodInfo {
        PodInfo {
            uid: "u".into(),
            namespace: ns.into(),
            name: "p".into(),
            labels: labels(kv),
            service_account: sa.into(),
            containers: BTreeMap::new(),
        }
    }

    #[test]
    fn namespace_labels_and_service_account() {
        let m = PodMatch {
            namespace: NamespaceMatch::Name("agents".into()),
            labels: LabelMatch::new(&labels(&[("app", "research")]), vec![]).unwrap(),
            service_account: Some("research".into()),
        };
        assert!(m.matches(&pod("agents", &[("app", "research")], "research"), None));
        assert!(!m.matches(&pod("other", &[("app", "research")], "research"), None));
        assert!(!m.matches(&pod("agents", &[("app", "web")], "research"), None));
        assert!(!m.matches(&pod("agents", &[("app", "research")], "default"), None));
    }

    #[test]
    fn expressions() {
        let ex = |op: &str, vals: &[&str]| {
            let vals: Vec<String> = vals.iter().map(std::string::ToString::to_string).collect();
            Requirement::new("tier", op, &vals).unwrap()
        };
        let sel = |r| LabelMatch {
            requirements: vec![r],
        };
        let a = labels(&[("tier", "a")]);
        let none = labels(&[]);
        assert!(sel(ex("In", &["a", "b"])).matches(&a));
        assert!(!sel(ex("In", &["b"])).matches(&a));
        assert!(!sel(ex("In", &["a"])).matches(&none));
        assert!(!sel(ex("NotIn", &["a"])).matches(&a));
        assert!(sel(ex("NotIn", &["a"])).matches(&none));
        assert!(sel(ex("Exists", &[])).matches(&a));
        assert!(!sel(ex("DoesNotExist", &[])).matches(&a));
        assert!(sel(ex("DoesNotExist", &[])).matches(&none));
        assert!(Requirement::new("tier", "In", &[]).is_err());
        assert!(Requirement::new("tier", "Exists", &["x".into()]).is_err());
        assert!(Requirement::new("tier", "Gt", &["1".into()]).is_err());
        assert!(Requirement::new("-bad", "Exists", &[]).is_err());
    }

    #[test]
    fn namespace_selector_needs_known_labels() {
        let m = PodMatch {
            namespace: NamespaceMatch::Selector(
                LabelMatch::new(&labels(&[("team", "ml")]), vec![]).unwrap(),
            ),
            labels: LabelMatch::default(),
            service_account: None,
        };
        let p = pod("ns1", &[], "default");
        assert!(m.matches(&p, Some(&labels(&[("team", "ml")]))));
        assert!(!m.matches(&p, Some(&labels(&[("team", "web")]))));
        assert!(!m.matches(&p, None));
    }

    #[test]
    fn label_syntax() {
        assert!(validate_key("app").is_ok());
        assert!(validate_key("app.kubernetes.io/name").is_ok());
        assert!(validate_key("Bad/x").is_err());
        assert!(validate_key("x/").is_err());
        assert!(validate_value("").is_ok());
        assert!(validate_value("v1.2_3").is_ok());
        assert!(validate_value("a b").is_err());
        assert!(validate_name("namespace", "agents", false).is_ok());
        assert!(validate_name("namespace", "Agents", false).is_err());
        assert!(validate_name("service account", "a.b", true).is_ok());
    }
}
