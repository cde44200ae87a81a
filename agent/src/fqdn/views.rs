//! What the daemon shows of the learned names: flow-record names, `chokepoint fqdn`, metrics.

use std::{net::IpAddr, sync::atomic::Ordering};

use super::Fqdn;
use crate::{
    api::responses::{FqdnLearned, FqdnProxy, LearnedName},
    util,
};

impl Fqdn {
    /// The name that allowed `addr` for `identity` under rule `rule` (for flow records).
    pub fn name_for(&self, identity: &str, addr: IpAddr, rule: u32) -> Option<String> {
        let inner = self.inner.lock().expect("fqdn lock");
        let view = inner.idents.get(identity)?;
        let pattern = view
            .rules
            .iter()
            .find(|r| r.rule == rule)?
            .pattern
            .to_string();
        let now = util::boot_ns();
        inner
            .learned
            .get(identity)?
            .get(&crate::policy::parse::normalise(addr))?
            .iter()
            .filter(|l| l.pattern == pattern)
            .max_by_key(|l| (l.expires_boot_ns > now, l.expires_boot_ns))
            .map(|l| l.name.clone())
    }

    /// `chokepoint fqdn`: learned names, addresses, ports and remaining TTLs.
    pub fn list(&self, identity: Option<&str>) -> FqdnLearned {
        let inner = self.inner.lock().expect("fqdn lock");
        let now = util::boot_ns();
        let mut out = Vec::new();
        for (ident, addrs) in &inner.learned {
            if identity.is_some_and(|i| i != ident) {
                continue;
            }
            let view = inner.idents.get(ident);
            for (addr, list) in addrs {
                for l in list {
                    let rule = view
                        .and_then(|v| v.rules.iter().find(|r| r.pattern.to_string() == l.pattern));
                    out.push(LearnedName {
                        identity: ident.clone(),
                        rule: rule.map(|r| format!("allow[{}]", r.rule)),
                        pattern: l.pattern.clone(),
                        name: l.name.clone(),
                        addr: addr.to_string(),
                        ports: rule
                            .map(|r| {
                                r.ports
                                    .iter()
                                    .map(std::string::ToString::to_string)
                                    .collect()
                            })
                            .unwrap_or_default(),
                        ttl_remaining_s: l.expires_boot_ns.saturating_sub(now) / 1_000_000_000,
                        expired: l.expires_boot_ns <= now,
                    });
                }
            }
        }
        let proxies = inner
            .proxies
            .iter()
            .map(|(n, p)| FqdnProxy {
                identity: n.clone(),
                port: p.port,
                resolver: inner
                    .idents
                    .get(n)
                    .and_then(|v| v.resolver)
                    .map(|r| r.1.to_string()),
            })
            .collect();
        FqdnLearned {
            learned: out,
            proxies,
        }
    }

    /// The `chokepoint_fqdn_*` metric families.
    pub fn metric_families(&self) -> Vec<crate::metrics::family::Family> {
        use crate::metrics::family::{Family, Value};
        let inner = self.inner.lock().expect("fqdn lock");
        let mut learned = Family::gauge(
            "chokepoint_fqdn_learned",
            "Addresses learned for toFQDN rules, per identity.",
        );
        for name in inner.idents.keys() {
            let n = inner
                .learned
                .get(name)
                .map_or(0, std::collections::BTreeMap::len);
            learned.push(vec![("identity", name.clone())], Value::Int(n as u64));
        }
        let c = &self.counters;
        let mut evictions = Family::counter(
            "chokepoint_fqdn_evictions_total",
            "Learned toFQDN entries removed, by reason.",
        );
        for (why, v) in [
            ("expired", &c.expired),
            ("policy", &c.dropped_policy),
            ("cap", &c.cap_reached),
        ] {
            evictions.push(
                vec![("reason", why.to_string())],
                Value::Int(v.load(Ordering::Relaxed)),
            );
        }
        let mut out = vec![learned, evictions];
        for (name, help, v) in [
            (
                "chokepoint_fqdn_lookups_total",
                "DNS lookups the proxy answered.",
                &c.lookups,
            ),
            (
                "chokepoint_fqdn_learned_total",
                "toFQDN entries learned.",
                &c.learned,
            ),
            (
                "chokepoint_fqdn_upstream_failures_total",
                "Lookups the resolver did not answer (the client got no answer).",
                &c.upstream_failures,
            ),
        ] {
            out.push(
                Family::counter(name, help).with(vec![], Value::Int(v.load(Ordering::Relaxed))),
            );
        }
        out
    }
}

/// Text lines for `chokepoint fqdn` without `-o json`.
pub fn print_text(v: &FqdnLearned) -> String {
    let mut s = String::from("IDENTITY\tRULE\tNAME\tADDRESS\tPORTS\tTTL\n");
    for e in &v.learned {
        s += &format!(
            "{}\t{} {}\t{}\t{}\t{}\t{}\n",
            e.identity,
            e.rule.as_deref().unwrap_or("-"),
            e.pattern,
            e.name,
            e.addr,
            e.ports.join(","),
            if e.expired {
                "expired".to_string()
            } else {
                format!("{}s", e.ttl_remaining_s)
            }
        );
    }
    s
}
