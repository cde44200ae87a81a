//! Compiling a policy document: parse, validate every part (collecting every problem with its
//! position) and lower it into the entries of one kernel generation.
//!
//! The parts live beside this file: [`gateways`](super::gateways), each
//! [`identity`](super::identity) with its [`selector`](super::selector), the
//! [`address sets`](super::address_set) and [`spec.defaults`](super::defaults).

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
};

use sha2::{Digest, Sha256};

pub use super::{
    compiled::{
        CompiledIdentity, CompiledPolicy, FqdnRule, Mode, UNRESOLVED_IDENTITY, UnresolvedPods,
    },
    error::{PolicyError, Problem},
};
use super::{
    defaults::lower_unresolved,
    error::Problems,
    gateways,
    identity::{self, Seen},
    model::PolicyDoc,
    parse::{Resolver, system_resolve},
};

/// Largest accepted document.
pub const MAX_DOCUMENT_BYTES: usize = 16 << 20;
/// Most identities in one policy.
pub const MAX_IDENTITIES: usize = 4096;
/// Most destination prefixes in one generation (all identities).
pub const MAX_PREFIXES: usize = (chokepoint_common::MAX_RULES / 2) as usize;

/// Parses, validates and compiles `source` (named `file` in errors), resolving gateway host
/// names with the system resolver.
pub fn compile_source(file: &str, source: &[u8]) -> Result<CompiledPolicy, PolicyError> {
    compile_source_with(file, source, &system_resolve)
}

/// [`compile_source`] with a given resolver for gateway host names.
pub fn compile_source_with(
    file: &str,
    source: &[u8],
    resolve: Resolver<'_>,
) -> Result<CompiledPolicy, PolicyError> {
    let fail = |line: u32, column: u32, field: &str, message: String| PolicyError {
        file: file.to_string(),
        problems: vec![Problem {
            line,
            column,
            field: field.to_string(),
            message,
        }],
    };
    if source.len() > MAX_DOCUMENT_BYTES {
        return Err(fail(
            1,
            1,
            "document",
            format!(
                "document is {} bytes, larger than the limit of {} bytes",
                source.len(),
                MAX_DOCUMENT_BYTES
            ),
        ));
    }
    let text = match std::str::from_utf8(source) {
        Ok(t) => t,
        Err(e) => {
            let upto = &source[..e.valid_up_to()];
            let line = upto.split(|&b| b == b'\n').count() as u32;
            let col = upto.iter().rev().take_while(|&&b| b != b'\n').count() as u32 + 1;
            return Err(fail(line, col, "document", format!("invalid UTF-8: {e}")));
        }
    };
    if text.trim().is_empty() {
        return Err(fail(1, 1, "document", "the document is empty".into()));
    }
    // A JSON document (YAML's JSON subset: what generators and the API write) is read by
    // serde_json first, an order of magnitude faster than the YAML parser; it carries no
    // positions, so a document with a problem is read again by the YAML parser, whose line and
    // column the problems then name. Anything serde_json refuses goes to the YAML parser.
    // Each gateway name is resolved once even when the document is lowered twice.
    let answers = RefCell::new(HashMap::new());
    let resolve_once = |host: &str, port: u16| {
        answers
            .borrow_mut()
            .entry((host.to_string(), port))
            .or_insert_with(|| resolve(host, port))
            .clone()
    };
    if looks_like_json(text)
        && let Ok(doc) = serde_json::from_str::<PolicyDoc>(text)
        && let Ok(policy) = compile_doc(file, doc, text, &resolve_once)
    {
        return Ok(policy);
    }
    let doc = parse_yaml(text).map_err(|(line, col, msg)| fail(line, col, "document", msg))?;
    compile_doc(file, doc, text, &resolve_once)
}

/// True when the first character that is not white space opens a JSON object.
fn looks_like_json(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// The YAML parser's options for policy documents. Its default budget (250k nodes) is below
/// what `MAX_PREFIXES` rules need; the document size cap bounds the work instead.
pub fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 4_000_000;
    budget.max_events = 8_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// The YAML parser, with every value's position: (line, column, first line of the message) on
/// a syntax or shape error.
fn parse_yaml(text: &str) -> Result<PolicyDoc, (u32, u32, String)> {
    serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| {
        let (line, col) = e
            .location()
            .map_or((1, 1), |l| (l.line() as u32, l.column() as u32));
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or("invalid document").to_string();
        (line, col, first)
    })
}

fn compile_doc(
    file: &str,
    doc: PolicyDoc,
    text: &str,
    resolve: Resolver<'_>,
) -> Result<CompiledPolicy, PolicyError> {
    let mut resolved: BTreeMap<String, Vec<std::net::IpAddr>> = BTreeMap::new();
    let mut cx = Problems::new();
    if doc.api_version.value != "chokepoint.dev/v1alpha1" {
        cx.at(
            &doc.api_version,
            "apiVersion",
            format!(
                "unsupported apiVersion `{}` (expected chokepoint.dev/v1alpha1)",
                doc.api_version.value
            ),
        );
    }
    if doc.kind.value != "EgressPolicy" {
        cx.at(
            &doc.kind,
            "kind",
            format!(
                "unsupported kind `{}` (expected EgressPolicy)",
                doc.kind.value
            ),
        );
    }
    if doc.metadata.name.value.trim().is_empty() {
        cx.at(&doc.metadata.name, "metadata.name", "must not be empty");
    }

    let gateways = gateways::lower(&mut cx, &doc.spec.gateways, resolve, &mut resolved);

    let idents = &doc.spec.identities;
    if idents.value.is_empty() {
        cx.at(
            idents,
            "spec.identities",
            "a policy needs at least one identity",
        );
    }
    if idents.value.len() > MAX_IDENTITIES {
        cx.at(
            idents,
            "spec.identities",
            format!(
                "{} identities exceed the limit of {MAX_IDENTITIES}",
                idents.value.len()
            ),
        );
    }
    let mut seen = Seen::default();
    let mut compiled = Vec::new();
    let mut prefixes = 0usize;
    for (ii, id) in idents.value.iter().enumerate() {
        compiled.push(identity::lower(
            &mut cx,
            ii,
            id,
            &gateways,
            &mut seen,
            &mut prefixes,
        ));
    }
    let unresolved_pods = lower_unresolved(
        &mut cx,
        doc.spec.defaults.as_ref(),
        &gateways,
        &mut compiled,
        &mut prefixes,
    );
    if prefixes > MAX_PREFIXES {
        cx.at(
            idents,
            "spec.identities",
            format!("{prefixes} destination prefixes exceed the limit of {MAX_PREFIXES}"),
        );
    }
    if !cx.list.is_empty() {
        cx.list.sort_by_key(|p| (p.line, p.column));
        const MAX_REPORTED: usize = 100;
        if cx.list.len() > MAX_REPORTED {
            let more = cx.list.len() - MAX_REPORTED;
            let last = cx.list[MAX_REPORTED - 1].clone();
            cx.list.truncate(MAX_REPORTED);
            cx.list.push(Problem {
                line: last.line,
                column: last.column,
                field: "document".into(),
                message: format!("… and {more} more problems"),
            });
        }
        return Err(PolicyError {
            file: file.to_string(),
            problems: cx.list,
        });
    }
    let digest = format!("sha256:{:x}", Sha256::digest(text.as_bytes()));
    Ok(CompiledPolicy {
        name: doc.metadata.name.value,
        digest,
        gateways: gateways.names,
        identities: compiled,
        resolved,
        unresolved_pods,
        source: text.to_string(),
    })
}

#[cfg(test)]
mod tests;
