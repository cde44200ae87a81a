//! Validation and compilation of a policy document into kernel entries.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
};

use chokepoint_common::{MAX_PORT_ENTRIES, PROTO_UDP, PortEntry, kind};
use serde::Serialize;
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use crate::k8s::selector::{self, LabelMatch, NamespaceMatch, PodMatch, Requirement};

use super::{
    fqdn::{FqdnPattern, parse_pattern},
    model::{LabelExpression, PodSelector, PolicyDoc},
    parse::{
        Cidr, PortSpec, Resolver, parse_cidr, parse_endpoint_with, parse_ports, system_resolve,
    },
};

/// Largest accepted document.
pub const MAX_DOCUMENT_BYTES: usize = 16 << 20;
/// Most identities in one policy.
pub const MAX_IDENTITIES: usize = 4096;
/// Most destination prefixes in one generation (all identities).
pub const MAX_PREFIXES: usize = (chokepoint_common::MAX_RULES / 2) as usize;

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub line: u32,
    pub column: u32,
    pub field: String,
    pub message: String,
}

/// Every problem of a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, p.line, p.column, p.field, p.message
            )?;
        }
        Ok(())
    }
}

/// Identity mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
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
    pub name: String,
    pub tenant: Option<String>,
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
    pub pattern: FqdnPattern,
    /// The ports it allows at every learned address.
    #[serde(skip)]
    pub ports: Vec<PortSpec>,
}

/// A compiled policy: what one generation holds.
#[derive(Clone, Debug, Serialize)]
pub struct CompiledPolicy {
    pub name: String,
    /// `sha256:<hex>` of the source text.
    pub digest: String,
    /// Gateway names, by gateway index.
    pub gateways: Vec<String>,
    pub identities: Vec<CompiledIdentity>,
    /// Gateway host names and the addresses compiled in for them.
    pub resolved: BTreeMap<String, Vec<std::net::IpAddr>>,
    /// `spec.defaults.unresolvedPods`.
    pub unresolved_pods: UnresolvedPods,
    #[serde(skip)]
    pub source: String,
}

/// `spec.defaults.unresolvedPods`: what a pod cgroup may reach before its pod is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
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

struct Ctx<'a> {
    problems: Vec<Problem>,
    _src: &'a str,
}

impl Ctx<'_> {
    fn at<T>(&mut self, s: &Spanned<T>, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: s.referenced.line() as u32,
            column: s.referenced.column() as u32,
            field: field.into(),
            message: message.into(),
        });
    }
}

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
            let line = upto.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
            let col = upto.iter().rev().take_while(|&&b| b != b'\n').count() as u32 + 1;
            return Err(fail(line, col, "document", format!("invalid UTF-8: {e}")));
        }
    };
    if text.trim().is_empty() {
        return Err(fail(1, 1, "document", "the document is empty".into()));
    }
    // The parser's default budget (250k nodes) is below what MAX_PREFIXES rules need; the
    // document size cap above bounds the work instead.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 4_000_000;
    budget.max_events = 8_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let doc: PolicyDoc = match serde_saphyr::from_str_with_options(text, options) {
        Ok(d) => d,
        Err(e) => {
            let (line, col) = e
                .location()
                .map(|l| (l.line() as u32, l.column() as u32))
                .unwrap_or((1, 1));
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid document").to_string();
            return Err(fail(line, col, "document", first));
        }
    };
    compile_doc(file, doc, text, resolve)
}

fn norm_cgroup_path(p: &str) -> Result<String, String> {
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

fn is_ancestor_or_same(a: &str, b: &str) -> bool {
    a == b || b.starts_with(&format!("{a}/"))
}

fn compile_doc(
    file: &str,
    doc: PolicyDoc,
    text: &str,
    resolve: Resolver<'_>,
) -> Result<CompiledPolicy, PolicyError> {
    let mut resolved: BTreeMap<String, Vec<std::net::IpAddr>> = BTreeMap::new();
    let mut cx = Ctx {
        problems: Vec::new(),
        _src: text,
    };
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

    // Gateways.
    let mut gw_index: HashMap<String, usize> = HashMap::new();
    let mut gw_endpoints: Vec<Vec<(Cidr, PortSpec)>> = Vec::new();
    let mut gw_names = Vec::new();
    for (gi, gw) in doc.spec.gateways.iter().enumerate() {
        let field = format!("spec.gateways[{gi}]");
        let name = gw.name.value.trim().to_string();
        if name.is_empty() {
            cx.at(&gw.name, format!("{field}.name"), "must not be empty");
        } else if gw_index.insert(name.clone(), gi).is_some() {
            cx.at(
                &gw.name,
                format!("{field}.name"),
                format!("duplicate gateway name `{name}`"),
            );
        }
        if gw.endpoints.value.is_empty() {
            cx.at(
                &gw.endpoints,
                format!("{field}.endpoints"),
                "a gateway needs at least one endpoint",
            );
        }
        let mut eps = Vec::new();
        for (ei, ep) in gw.endpoints.value.iter().enumerate() {
            match parse_endpoint_with(&ep.value, resolve) {
                Ok(e) => {
                    if let Some(h) = &e.host {
                        let list = resolved.entry(h.clone()).or_default();
                        list.extend(e.nets.iter().map(|c| c.addr));
                        list.sort();
                        list.dedup();
                    }
                    for c in e.nets {
                        eps.push((
                            c,
                            PortSpec {
                                lo: e.port,
                                hi: e.port,
                                proto: e.proto,
                            },
                        ));
                    }
                }
                Err(m) => cx.at(ep, format!("{field}.endpoints[{ei}]"), m),
            }
        }
        gw_endpoints.push(eps);
        gw_names.push(name);
    }

    // Identities.
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
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut paths: Vec<(String, usize, &Spanned<String>)> = Vec::new();
    let mut compiled = Vec::new();
    let mut prefixes = 0usize;
    for (ii, id) in idents.value.iter().enumerate() {
        let field = format!("spec.identities[{ii}]");
        let name = id.name.value.trim().to_string();
        if name.is_empty() {
            cx.at(&id.name, format!("{field}.name"), "must not be empty");
        } else if name == UNRESOLVED_IDENTITY {
            cx.at(
                &id.name,
                format!("{field}.name"),
                format!("`{UNRESOLVED_IDENTITY}` is reserved for pods not known yet"),
            );
        } else if let Some(prev) = names.insert(name.clone(), ii) {
            cx.at(
                &id.name,
                format!("{field}.name"),
                format!("duplicate identity name `{name}` (first at spec.identities[{prev}])"),
            );
        }
        let mode = match id.mode.as_ref().map(|m| m.value.as_str()) {
            None | Some("enforce") => Mode::Enforce,
            Some("audit") => Mode::Audit,
            Some(other) => {
                let m = id.mode.as_ref().expect("mode present");
                cx.at(
                    m,
                    format!("{field}.mode"),
                    format!("unknown mode `{other}` (expected enforce or audit)"),
                );
                Mode::Enforce
            }
        };
        let sel = &id.selector;
        let mut cgroup_path = String::new();
        let mut pod = None;
        match (&sel.value.cgroup_path, &sel.value.pod) {
            (Some(p), None) => match norm_cgroup_path(&p.value) {
                Ok(n) => {
                    for (other, oi, _) in &paths {
                        if is_ancestor_or_same(other, &n) || is_ancestor_or_same(&n, other) {
                            cx.at(p, format!("{field}.selector.cgroupPath"), format!(
                                "selector `/{n}` overlaps `/{other}` of spec.identities[{oi}]: one cgroup would have two identities"
                            ));
                        }
                    }
                    paths.push((n.clone(), ii, p));
                    cgroup_path = n;
                }
                Err(m) => cx.at(p, format!("{field}.selector.cgroupPath"), m),
            },
            (None, Some(p)) => match compile_pod_selector(&p.value) {
                Ok(m) => pod = Some(m),
                Err((what, m)) => cx.at(p, format!("{field}.selector.pod{what}"), m),
            },
            (Some(p), Some(_)) => cx.at(
                p,
                format!("{field}.selector"),
                "give either cgroupPath or pod, not both",
            ),
            (None, None) => cx.at(
                sel,
                format!("{field}.selector"),
                "a selector needs cgroupPath or pod",
            ),
        }

        let mut raw: BTreeMap<Cidr, BTreeSet<(PortSpec, u8, u32)>> = BTreeMap::new();
        let mut gws = Vec::new();
        for (gi, g) in id.egress.gateways.iter().enumerate() {
            match gw_index.get(g.value.trim()) {
                Some(&idx) => {
                    gws.push(g.value.trim().to_string());
                    for (c, p) in &gw_endpoints[idx] {
                        raw.entry(*c)
                            .or_default()
                            .insert((*p, kind::GATEWAY, idx as u32));
                    }
                }
                None => cx.at(
                    g,
                    format!("{field}.egress.gateways[{gi}]"),
                    format!("no gateway named `{}` in spec.gateways", g.value),
                ),
            }
        }
        let mut rules = Vec::new();
        let mut fqdn_rules = Vec::new();
        let mut resolvers = Vec::new();
        for (ri, rs) in id.egress.allow.iter().enumerate() {
            let r = &rs.value;
            let rf = format!("{field}.egress.allow[{ri}]");
            let mut pattern = None;
            let cidr = match (&r.to, &r.to_fqdn) {
                (Some(to), None) => match parse_cidr(&to.value) {
                    Ok(c) => Some(c),
                    Err(m) => {
                        cx.at(to, format!("{rf}.to"), m);
                        None
                    }
                },
                (None, Some(f)) => {
                    match parse_pattern(&f.value) {
                        Ok(p) => pattern = Some(p),
                        Err(m) => cx.at(f, format!("{rf}.toFQDN"), m),
                    }
                    None
                }
                (Some(to), Some(_)) => {
                    cx.at(
                        to,
                        rf.clone(),
                        "give either `to` (an address or CIDR) or `toFQDN` (a DNS name), not both",
                    );
                    None
                }
                (None, None) => {
                    cx.at(
                        rs,
                        rf.clone(),
                        "a rule needs `to` (an address or CIDR) or `toFQDN` (a DNS name)",
                    );
                    None
                }
            };
            let mut specs = Vec::new();
            if r.ports.is_empty() {
                specs.push(PortSpec::ANY);
            }
            for (pi, p) in r.ports.iter().enumerate() {
                match parse_ports(&p.value) {
                    Ok(v) => specs.extend(v),
                    Err(m) => cx.at(p, format!("{rf}.ports[{pi}]"), m),
                }
            }
            let what = pattern
                .as_ref()
                .map(|p| format!(" toFQDN {p}"))
                .unwrap_or_default();
            let label = match &r.reason {
                Some(reason) => format!("allow[{ri}]{what}: {reason}"),
                None => format!("allow[{ri}]{what}"),
            };
            rules.push(label);
            if let Some(p) = pattern {
                fqdn_rules.push(FqdnRule {
                    rule: ri as u32,
                    pattern: p,
                    ports: specs.clone(),
                });
            }
            if let Some(c) = cidr
                && c.bits == if c.addr.is_ipv4() { 32 } else { 128 }
                && specs
                    .iter()
                    .any(|s| s.lo <= 53 && s.hi >= 53 && (s.proto == PROTO_UDP || s.proto == 0))
            {
                resolvers.push((ri as u32, c.addr));
            }
            if let Some(c) = cidr {
                for s in specs {
                    raw.entry(c).or_default().insert((s, kind::RULE, ri as u32));
                }
            }
        }
        if let Some(first) = fqdn_rules.first()
            && resolvers.is_empty()
        {
            let r = &id.egress.allow[first.rule as usize];
            if let Some(f) = &r.value.to_fqdn {
                cx.at(f, format!("{field}.egress.allow[{}].toFQDN", first.rule),
                    "toFQDN rules learn from the identity's sanctioned resolver: add a rule `to: <resolver address>` (one address) with ports [\"53/udp\"]");
            }
        }
        let mut ingress_from = None;
        if let Some(ing) = &id.ingress
            && let Some(list) = &ing.value.allow_from
        {
            let mut v = BTreeSet::new();
            for (ai, a) in list.value.iter().enumerate() {
                match parse_cidr(&a.value) {
                    Ok(c) => {
                        v.insert(c);
                    }
                    Err(m) => cx.at(a, format!("{field}.ingress.allowFrom[{ai}]"), m),
                }
            }
            prefixes += v.len();
            ingress_from = Some(v.into_iter().collect());
        }
        let entries = merge_ancestors(&raw);
        for (c, v) in &entries {
            if v.len() > MAX_PORT_ENTRIES {
                cx.at(&id.name, format!("{field}.egress"), format!(
                    "destination {c} gathers {} port entries from its rules and enclosing rules; the limit is {MAX_PORT_ENTRIES} (use port ranges or fewer overlapping rules)",
                    v.len()
                ));
            }
        }
        prefixes += entries.len();
        compiled.push(CompiledIdentity {
            id: ii as u32 + 1,
            name,
            tenant: id.tenant.as_ref().map(|t| t.value.clone()),
            mode,
            cgroup_path,
            pod,
            unresolved: false,
            gateways: gws,
            rules,
            fqdn: fqdn_rules,
            resolvers,
            entries: entries
                .into_iter()
                .map(|(c, v)| (c, v.into_iter().take(MAX_PORT_ENTRIES).collect()))
                .collect(),
            ingress_from,
        });
    }
    // Pods not known yet: an extra identity after the document's (ids stay positions).
    let unresolved_pods = match doc
        .spec
        .defaults
        .as_ref()
        .and_then(|d| d.unresolved_pods.as_ref())
    {
        None => UnresolvedPods::GatewayOnly,
        Some(v) => match v.value.as_str() {
            "gateway-only" => UnresolvedPods::GatewayOnly,
            "deny" => UnresolvedPods::Deny,
            "allow" => UnresolvedPods::Allow,
            other => {
                cx.at(
                    v,
                    "spec.defaults.unresolvedPods",
                    format!("unknown value `{other}` (expected gateway-only, deny or allow)"),
                );
                UnresolvedPods::GatewayOnly
            }
        },
    };
    if unresolved_pods != UnresolvedPods::Allow && compiled.iter().any(|i| i.pod.is_some()) {
        let mut gws: Vec<String> = Vec::new();
        let mut raw: BTreeMap<Cidr, BTreeSet<(PortSpec, u8, u32)>> = BTreeMap::new();
        if unresolved_pods == UnresolvedPods::GatewayOnly {
            for g in compiled
                .iter()
                .filter(|i| i.pod.is_some())
                .flat_map(|i| &i.gateways)
            {
                if gws.contains(g) {
                    continue;
                }
                gws.push(g.clone());
                if let Some(&idx) = gw_index.get(g) {
                    for (c, p) in &gw_endpoints[idx] {
                        raw.entry(*c)
                            .or_default()
                            .insert((*p, kind::GATEWAY, idx as u32));
                    }
                }
            }
        }
        let entries = merge_ancestors(&raw);
        prefixes += entries.len();
        compiled.push(CompiledIdentity {
            id: compiled.len() as u32 + 1,
            name: UNRESOLVED_IDENTITY.into(),
            tenant: None,
            mode: Mode::Enforce,
            cgroup_path: String::new(),
            pod: None,
            unresolved: true,
            ingress_from: None,
            fqdn: Vec::new(),
            resolvers: Vec::new(),
            gateways: gws,
            rules: Vec::new(),
            entries: entries
                .into_iter()
                .map(|(c, v)| (c, v.into_iter().take(MAX_PORT_ENTRIES).collect()))
                .collect(),
        });
    }
    if prefixes > MAX_PREFIXES {
        cx.at(
            idents,
            "spec.identities",
            format!("{prefixes} destination prefixes exceed the limit of {MAX_PREFIXES}"),
        );
    }
    if !cx.problems.is_empty() {
        cx.problems.sort_by_key(|p| (p.line, p.column));
        const MAX_REPORTED: usize = 100;
        if cx.problems.len() > MAX_REPORTED {
            let more = cx.problems.len() - MAX_REPORTED;
            let last = cx.problems[MAX_REPORTED - 1].clone();
            cx.problems.truncate(MAX_REPORTED);
            cx.problems.push(Problem {
                line: last.line,
                column: last.column,
                field: "document".into(),
                message: format!("… and {more} more problems"),
            });
        }
        return Err(PolicyError {
            file: file.to_string(),
            problems: cx.problems,
        });
    }
    let digest = format!("sha256:{:x}", Sha256::digest(text.as_bytes()));
    Ok(CompiledPolicy {
        name: doc.metadata.name.value,
        digest,
        gateways: gw_names,
        identities: compiled,
        resolved,
        unresolved_pods,
        source: text.to_string(),
    })
}

fn compile_expressions(
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
fn compile_pod_selector(p: &PodSelector) -> Result<PodMatch, (String, String)> {
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

/// Adds to every prefix the entries of every enclosing prefix, so the kernel's longest-prefix
/// match alone finds everything allowed for an address.
fn merge_ancestors(
    raw: &BTreeMap<Cidr, BTreeSet<(PortSpec, u8, u32)>>,
) -> BTreeMap<Cidr, Vec<PortEntry>> {
    let lengths: BTreeSet<(u8, u8)> = raw.keys().map(|c| (c.family(), c.bits)).collect();
    let mut out = BTreeMap::new();
    for (cidr, own) in raw {
        let mut all: BTreeSet<(PortSpec, u8, u32)> = own.clone();
        for &(fam, bits) in &lengths {
            if fam != cidr.family() || bits >= cidr.bits {
                continue;
            }
            if let Some(parent) = raw.get(&cidr.truncate(bits)) {
                all.extend(parent.iter().copied());
            }
        }
        // Gateways first, then rules; within each by port.
        let mut v: Vec<(PortSpec, u8, u32)> = all.into_iter().collect();
        v.sort_by_key(|(p, k, r)| (*k, *r, *p));
        v.dedup_by_key(|(p, k, _)| (*p, *k));
        out.insert(
            *cidr,
            v.into_iter()
                .map(|(p, k, r)| PortEntry {
                    port_lo: p.lo,
                    port_hi: p.hi,
                    proto: p.proto,
                    kind: k,
                    _pad: 0,
                    rule: r,
                })
                .collect(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"apiVersion: chokepoint.dev/v1alpha1
kind: EgressPolicy
metadata:
  name: ai-agents
spec:
  gateways:
    - name: llm-gateway
      endpoints: ["10.77.0.1:8080/tcp", "[fd77::1]:8080/tcp"]
  identities:
    - name: research-agent
      tenant: acme
      mode: enforce
      selector:
        cgroupPath: "/agents/research"
      egress:
        gateways: [llm-gateway]
        allow:
          - to: "10.77.0.53/32"
            ports: ["53/udp", "53/tcp"]
            reason: cluster DNS
          - to: "10.0.0.0/8"
            ports: ["443/tcp"]
"#;

    #[test]
    fn compiles_the_design_example() {
        let p = compile_source("p.yaml", GOOD.as_bytes()).unwrap();
        assert_eq!(p.identities.len(), 1);
        let id = &p.identities[0];
        assert_eq!(id.cgroup_path, "agents/research");
        // gateway v4 + v6, dns /32, the /8
        assert_eq!(id.entries.len(), 4);
        // The /32 DNS prefix inherits 443/tcp from the enclosing /8.
        let dns = id.entries.get(&parse_cidr("10.77.0.53").unwrap()).unwrap();
        assert!(dns.iter().any(|e| e.port_lo == 443));
        assert!(dns.iter().any(|e| e.port_lo == 53 && e.proto == 17));
        // The gateway /32 inside 10/8 inherits 443 too, and keeps its own 8080.
        let gw = id.entries.get(&parse_cidr("10.77.0.1").unwrap()).unwrap();
        assert!(
            gw.iter()
                .any(|e| e.port_lo == 8080 && e.kind == kind::GATEWAY)
        );
        assert!(gw.iter().any(|e| e.port_lo == 443 && e.kind == kind::RULE));
    }

    fn err(doc: &str) -> PolicyError {
        compile_source("p.yaml", doc.as_bytes()).unwrap_err()
    }

    #[test]
    fn ingress_allow_from() {
        let p = compile_source("p.yaml", GOOD.as_bytes()).unwrap();
        assert_eq!(p.identities[0].ingress_from, None);
        // Without allowFrom anyone may open connections: both families' whole space.
        assert_eq!(p.identities[0].ingress_prefixes().len(), 2);
        let doc = format!(
            "{GOOD}      ingress:\n        allowFrom: [\"10.0.0.0/8\", \"fd00::/8\", \"10.0.0.0/8\"]\n"
        );
        let p = compile_source("p.yaml", doc.as_bytes()).unwrap();
        let from = p.identities[0].ingress_from.as_ref().unwrap();
        assert_eq!(from.len(), 2, "duplicates merge: {from:?}");
        let doc = format!("{GOOD}      ingress:\n        allowFrom: []\n");
        let p = compile_source("p.yaml", doc.as_bytes()).unwrap();
        assert!(
            p.identities[0].ingress_prefixes().is_empty(),
            "[] admits no one"
        );
        let doc =
            format!("{GOOD}      ingress:\n        allowFrom: [\"10.0.0.0/8\", \"not-a-cidr\"]\n");
        let line = doc.lines().position(|l| l.contains("not-a-cidr")).unwrap() as u32 + 1;
        let e = err(&doc);
        assert_eq!(
            e.problems[0].field,
            "spec.identities[0].ingress.allowFrom[1]"
        );
        assert_eq!(e.problems[0].line, line);
        assert!(e.problems[0].column > 20, "{e}");
        let e = err(&format!("{GOOD}      ingress:\n        allowFom: []\n"));
        assert!(e.to_string().contains("allowFom"), "{e}");
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = err(&GOOD.replace("10.77.0.53/32", "10.77.0.53/40"));
        assert_eq!(e.problems[0].field, "spec.identities[0].egress.allow[0].to");
        assert_eq!(e.problems[0].line, 18);
        let e = err(&GOOD.replace("53/udp", "70000/udp"));
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = err(&GOOD.replace("gateways: [llm-gateway]", "gateways: [nope]"));
        assert!(e.to_string().contains("no gateway named `nope`"), "{e}");
        let e = err(&GOOD.replace("tenant: acme", "tenant: acme\n      colour: red"));
        assert!(e.to_string().contains("colour"), "{e}");
        let e = err(&GOOD.replace("mode: enforce", "mode: yes-please"));
        assert!(e.to_string().contains("unknown mode"), "{e}");
    }

    #[test]
    fn fqdn_rules_compile_and_errors_are_positioned() {
        let doc = GOOD.replace(
            "          - to: \"10.0.0.0/8\"\n            ports: [\"443/tcp\"]\n",
            "          - toFQDN: \"API.github.com\"\n            ports: [\"443/tcp\"]\n          - toFQDN: \"*.example.com\"\n",
        );
        let p = compile_source("p.yaml", doc.as_bytes()).unwrap();
        let id = &p.identities[0];
        assert_eq!(id.fqdn.len(), 2);
        assert_eq!(id.fqdn[0].rule, 1);
        assert_eq!(id.fqdn[0].pattern.to_string(), "api.github.com");
        assert_eq!(id.fqdn[1].ports, vec![PortSpec::ANY]);
        assert!(
            id.rules[1].contains("toFQDN api.github.com"),
            "{:?}",
            id.rules
        );
        assert_eq!(id.resolvers, vec![(0, "10.77.0.53".parse().unwrap())]);
        // No CIDR entry comes from a toFQDN rule.
        assert_eq!(id.entries.len(), 3);

        let e = err(&doc.replace("*.example.com", "a.*.example.com"));
        assert_eq!(
            e.problems[0].field,
            "spec.identities[0].egress.allow[2].toFQDN"
        );
        assert_eq!(e.problems[0].line, 23);
        assert!(e.to_string().contains("wildcard"), "{e}");
        let e = err(&doc.replace("ports: [\"53/udp\", \"53/tcp\"]", "ports: [\"53/tcp\"]"));
        assert!(e.to_string().contains("sanctioned resolver"), "{e}");
        assert_eq!(
            e.problems[0].field,
            "spec.identities[0].egress.allow[1].toFQDN"
        );
        let e = err(&doc.replace("API.github.com", "bad..name"));
        assert!(e.to_string().contains("empty label"), "{e}");
        let e = err(&doc.replace("toFQDN: \"API.github.com\"", "reason: nothing"));
        assert_eq!(e.problems[0].field, "spec.identities[0].egress.allow[1]");
        assert!(e.to_string().contains("needs `to`"), "{e}");
        let e = err(&doc.replace(
            "toFQDN: \"API.github.com\"",
            "toFQDN: \"API.github.com\"\n            to: \"10.0.0.1\"",
        ));
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn overlapping_selectors_and_duplicates() {
        let two = GOOD.to_string()
            + r#"    - name: research-agent
      selector:
        cgroupPath: "/agents/research/sub"
"#;
        let e = err(&two);
        let s = e.to_string();
        assert!(s.contains("duplicate identity name"), "{s}");
        assert!(s.contains("overlaps"), "{s}");
    }

    #[test]
    fn compiles_a_hundred_thousand_rules() {
        let mut doc = GOOD.to_string();
        for i in 0..100_000u32 {
            let a = std::net::Ipv4Addr::from((100u32 << 24) | (64 << 16) | (i + 1));
            doc += &format!("          - to: \"{a}/32\"\n            ports: [\"443/tcp\"]\n");
        }
        let p = compile_source("big.yaml", doc.as_bytes()).unwrap();
        assert!(p.prefix_count() > 100_000);
    }

    #[test]
    fn rejects_bad_bytes_and_sizes() {
        let e = compile_source("p.yaml", b"apiVersion: \xff\xfe").unwrap_err();
        assert!(e.to_string().contains("invalid UTF-8"));
        let big = vec![b'#'; MAX_DOCUMENT_BYTES + 1];
        assert!(
            compile_source("p.yaml", &big)
                .unwrap_err()
                .to_string()
                .contains("larger than")
        );
    }
}
