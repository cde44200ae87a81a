//! One `spec.identities[i]`: name, mode, selector, egress rules and gateways, ingress sources,
//! lowered into a compiled identity.

use std::collections::{BTreeSet, HashMap};

use chokepoint_common::{MAX_PORT_ENTRIES, PROTO_UDP, kind};

use super::{
    address_set::{RawEntries, capped, merge_ancestors},
    compiled::{CompiledIdentity, FqdnRule, Mode, UNRESOLVED_IDENTITY},
    error::Problems,
    fqdn::parse_pattern,
    gateways::Gateways,
    model::Identity,
    parse::{PortSpec, parse_cidr, parse_ports},
    selector::{compile_pod_selector, is_ancestor_or_same, norm_cgroup_path},
};

/// What earlier identities of the document claimed: names and cgroup paths.
#[derive(Default)]
pub(super) struct Seen {
    names: HashMap<String, usize>,
    paths: Vec<(String, usize)>,
}

/// Lowers identity `ii`; its problems go to `cx`, its prefix count onto `prefixes`.
pub(super) fn lower(
    cx: &mut Problems,
    ii: usize,
    id: &Identity,
    gateways: &Gateways,
    seen: &mut Seen,
    prefixes: &mut usize,
) -> CompiledIdentity {
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
    } else if let Some(prev) = seen.names.insert(name.clone(), ii) {
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
                for (other, oi) in &seen.paths {
                    if is_ancestor_or_same(other, &n) || is_ancestor_or_same(&n, other) {
                        cx.at(p, format!("{field}.selector.cgroupPath"), format!(
                            "selector `/{n}` overlaps `/{other}` of spec.identities[{oi}]: one cgroup would have two identities"
                        ));
                    }
                }
                seen.paths.push((n.clone(), ii));
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

    let mut raw = RawEntries::new();
    let mut gws = Vec::new();
    for (gi, g) in id.egress.gateways.iter().enumerate() {
        match gateways.index.get(g.value.trim()) {
            Some(&idx) => {
                gws.push(g.value.trim().to_string());
                for (c, p) in &gateways.endpoints[idx] {
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
        // The field path is only written out for a problem.
        let rf = || format!("{field}.egress.allow[{ri}]");
        let mut pattern = None;
        let cidr = match (&r.to, &r.to_fqdn) {
            (Some(to), None) => match parse_cidr(&to.value) {
                Ok(c) => Some(c),
                Err(m) => {
                    cx.at(to, format!("{}.to", rf()), m);
                    None
                }
            },
            (None, Some(f)) => {
                match parse_pattern(&f.value) {
                    Ok(p) => pattern = Some(p),
                    Err(m) => cx.at(f, format!("{}.toFQDN", rf()), m),
                }
                None
            }
            (Some(to), Some(_)) => {
                cx.at(
                    to,
                    rf(),
                    "give either `to` (an address or CIDR) or `toFQDN` (a DNS name), not both",
                );
                None
            }
            (None, None) => {
                cx.at(
                    rs,
                    rf(),
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
                Err(m) => cx.at(p, format!("{}.ports[{pi}]", rf()), m),
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
        *prefixes += v.len();
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
    *prefixes += entries.len();
    CompiledIdentity {
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
        entries: capped(entries),
        ingress_from,
    }
}
