//! Identity selectors: clean cgroup paths, overlap checks and `selector.pod` compiled into a
//! pod match.

use super::model::{LabelExpression, PodSelector};
use crate::k8s::selector::{self, LabelMatch, NamespaceMatch, PodMatch, Requirement};

/// A selector path relative to the cgroup root without leading or trailing `/`, or why not.
pub(super) fn norm_cgroup_path(p: &str) -> Result<String, String> {
    let trimmed = p.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Err(
            "the cgroup root itself cannot be an identity (it would cover the node and the agent)"
                .into(),
        );
    }
    for part in trimmed.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!("`{p}` is not a clean relative cgroup path"));
        }
    }
    Ok(trimmed.to_string())
}

/// Whether cgroup path `a` is `b` or one of its ancestors.
pub(super) fn is_ancestor_or_same(a: &str, b: &str) -> bool {
    a == b || b.starts_with(&format!("{a}/"))
}

pub(super) fn compile_expressions(
    what: &str,
    exprs: &[LabelExpression],
) -> Result<Vec<Requirement>, (String, String)> {
    exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Requirement::new(&e.key, &e.operator, &e.values)
                .map_err(|m| (format!("{what}.matchExpressions[{i}]"), m))
        })
        .collect()
}

/// Compiles `selector.pod`; an error names the sub-field (`.namespace`, …) and what is wrong.
pub(super) fn compile_pod_selector(p: &PodSelector) -> Result<PodMatch, (String, String)> {
    let namespace = match (&p.namespace, &p.namespace_selector) {
        (Some(n), None) => {
            selector::validate_name("namespace", n, false).map_err(|m| (".namespace".into(), m))?;
            NamespaceMatch::Name(n.clone())
        }
        (None, Some(s)) => NamespaceMatch::Selector(
            LabelMatch::new(
                &s.match_labels,
                compile_expressions(".namespaceSelector", &s.match_expressions)?,
            )
            .map_err(|m| (".namespaceSelector.matchLabels".into(), m))?,
        ),
        (Some(_), Some(_)) => {
            return Err((
                String::new(),
                "give either namespace or namespaceSelector, not both".into(),
            ));
        }
        (None, None) => {
            return Err((
                String::new(),
                "a pod selector needs namespace or namespaceSelector".into(),
            ));
        }
    };
    let labels = LabelMatch::new(
        &p.match_labels,
        compile_expressions("", &p.match_expressions)?,
    )
    .map_err(|m| (".matchLabels".into(), m))?;
    if let Some(sa) = &p.service_account {
        selector::validate_name("service account", sa, true)
            .map_err(|m| (".serviceAccount".into(), m))?;
    }
    Ok(PodMatch {
        namespace,
        labels,
        service_account: p.service_account.clone(),
    })
}
