//! `spec.gateways`: names and endpoints, host names resolved.

use std::collections::{BTreeMap, HashMap};

use super::{
    error::Problems,
    model::Gateway,
    parse::{Cidr, PortSpec, Resolver, parse_endpoint_with},
};

/// The gateways of a document, lowered.
pub(super) struct Gateways {
    /// Gateway index by name.
    pub(super) index: HashMap<String, usize>,
    /// Each gateway's prefixes and ports, by gateway index.
    pub(super) endpoints: Vec<Vec<(Cidr, PortSpec)>>,
    /// Gateway names, by gateway index.
    pub(super) names: Vec<String>,
}

/// Lowers `spec.gateways`, recording the addresses of host names in `resolved`.
pub(super) fn lower(
    cx: &mut Problems,
    gateways: &[Gateway],
    resolve: Resolver<'_>,
    resolved: &mut BTreeMap<String, Vec<std::net::IpAddr>>,
) -> Gateways {
    let mut gw_index: HashMap<String, usize> = HashMap::new();
    let mut gw_endpoints: Vec<Vec<(Cidr, PortSpec)>> = Vec::new();
    let mut gw_names = Vec::new();
    for (gi, gw) in gateways.iter().enumerate() {
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
    Gateways {
        index: gw_index,
        endpoints: gw_endpoints,
        names: gw_names,
    }
}
