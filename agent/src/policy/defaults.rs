//! `spec.defaults`: the identity of pod cgroups whose pod is not known yet.

use chokepoint_common::kind;

use super::{
    address_set::{RawEntries, capped, merge_ancestors},
    compiled::{CompiledIdentity, Mode, UNRESOLVED_IDENTITY, UnresolvedPods},
    error::Problems,
    gateways::Gateways,
    model::Defaults,
};

/// Reads `spec.defaults.unresolvedPods` and, when pods are bound before they are known, appends
/// their identity to `compiled` (after the document's, so ids stay positions).
pub(super) fn lower_unresolved(
    cx: &mut Problems,
    defaults: Option<&Defaults>,
    gateways: &Gateways,
    compiled: &mut Vec<CompiledIdentity>,
    prefixes: &mut usize,
) -> UnresolvedPods {
    let unresolved_pods = match defaults.and_then(|d| d.unresolved_pods.as_ref()) {
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
        let mut raw = RawEntries::new();
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
                if let Some(&idx) = gateways.index.get(g) {
                    for (c, p) in &gateways.endpoints[idx] {
                        raw.entry(*c)
                            .or_default()
                            .insert((*p, kind::GATEWAY, idx as u32));
                    }
                }
            }
        }
        let entries = merge_ancestors(&raw);
        *prefixes += entries.len();
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
            entries: capped(entries),
        });
    }
    unresolved_pods
}
