//! What the proxy learns: answers written into the kernel map, caps recorded, entries expired.

use std::{collections::BTreeMap, net::IpAddr, sync::atomic::Ordering, time::Duration};

use serde_json::json;
use tracing::warn;

use super::{CAP_RECORD_EVERY, Fqdn, IdentView, Learned};
use crate::{
    audit::{self, AuditEvent},
    bpf::fqdn::Allowance,
    policy::fqdn::normalise_name,
    util,
};

impl Fqdn {
    /// Learns what `answer` tells `identity` about `qname` (already normalised); writes the
    /// kernel map before returning. `addrs`: (address, TTL seconds) of the CNAME-followed chain.
    pub(super) fn learn(&self, identity: &str, qname: &str, addrs: &[(IpAddr, u32)]) {
        let mut inner = self.inner.lock().expect("fqdn lock");
        let Some(view) = inner.idents.get(identity).cloned() else {
            return;
        };
        let patterns: Vec<String> = view
            .rules
            .iter()
            .filter(|r| r.pattern.matches(qname))
            .map(|r| r.pattern.to_string())
            .collect();
        if patterns.is_empty() || addrs.is_empty() {
            return;
        }
        let now = util::boot_ns();
        let mut changed = Vec::new();
        let mut capped = 0usize;
        for &(addr, ttl) in addrs {
            let addr = crate::policy::parse::normalise(addr);
            let life = Duration::from_secs(u64::from(ttl))
                .max(self.settings.min_ttl)
                .saturating_add(self.settings.grace);
            let expires = now.saturating_add(u64::try_from(life.as_nanos()).unwrap_or(u64::MAX));
            let table = inner.learned.entry(identity.to_string()).or_default();
            if !table.contains_key(&addr) && table.len() >= self.settings.max_per_identity {
                // Make room from expired entries first.
                let before = table.len();
                table.retain(|_, list| {
                    list.retain(|l| l.expires_boot_ns > now);
                    !list.is_empty()
                });
                let freed = (before - table.len()) as u64;
                self.counters.expired.fetch_add(freed, Ordering::Relaxed);
                if table.len() >= self.settings.max_per_identity {
                    capped += 1;
                    continue;
                }
            }
            let list = table.entry(addr).or_default();
            for p in &patterns {
                if let Some(l) = list.iter_mut().find(|l| &l.pattern == p && l.name == qname) {
                    // Never shortened by a later answer with a smaller TTL.
                    l.expires_boot_ns = l.expires_boot_ns.max(expires);
                } else {
                    {
                        list.push(Learned {
                            identity: identity.to_string(),
                            pattern: p.clone(),
                            name: qname.to_string(),
                            addr,
                            expires_boot_ns: expires,
                        });
                        self.counters.learned.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            changed.push((addr, allowances(&view, list)));
        }
        {
            let mut maps = self.maps.lock().expect("fqdn maps");
            for (addr, list) in &changed {
                if let Err(e) = maps.set(view.id, *addr, list) {
                    warn!(error = %e, %addr, identity, "writing a learned address failed");
                }
            }
        }
        if capped > 0 {
            self.counters
                .cap_reached
                .fetch_add(capped as u64, Ordering::Relaxed);
            let due = inner
                .last_cap_record
                .get(identity)
                .is_none_or(|t| t.elapsed() >= CAP_RECORD_EVERY);
            if due {
                inner
                    .last_cap_record
                    .insert(identity.to_string(), std::time::Instant::now());
                warn!(
                    identity,
                    name = qname,
                    not_learned = capped,
                    cap = self.settings.max_per_identity,
                    "toFQDN cap reached: addresses not learned (connections to them are denied)"
                );
                self.record(json!({
                    "identity": identity,
                    "name": qname,
                    "not_learned": capped,
                    "cap": self.settings.max_per_identity,
                }));
            }
        }
        self.persist(&inner);
    }

    /// Writes an audit-log record.
    fn record(&self, mut v: serde_json::Value) {
        v["schema"] = json!(audit::SCHEMA_VERSION);
        v["time"] = json!(util::rfc3339_ns(util::wall_ns()));
        v["node"] = json!(self.settings.node);
        if let Err(e) = self.settings.audit.write(AuditEvent::FqdnCap, &v) {
            warn!(error = %e, "writing an fqdn_cap record failed");
        }
    }

    /// Removes expired entries from the table and the kernel (the kernel already ignores them).
    pub fn expire(&self) {
        let now = util::boot_ns();
        let mut inner = self.inner.lock().expect("fqdn lock");
        let mut gone: Vec<(String, IpAddr)> = Vec::new();
        let mut rewrite: Vec<(String, IpAddr)> = Vec::new();
        let mut n = 0u64;
        for (ident, addrs) in &mut inner.learned {
            for (addr, list) in addrs.iter_mut() {
                let before = list.len();
                list.retain(|l| l.expires_boot_ns > now);
                if list.len() != before {
                    n += (before - list.len()) as u64;
                    if list.is_empty() {
                        gone.push((ident.clone(), *addr));
                    } else {
                        rewrite.push((ident.clone(), *addr));
                    }
                }
            }
            addrs.retain(|_, l| !l.is_empty());
        }
        inner.learned.retain(|_, a| !a.is_empty());
        if n == 0 {
            return;
        }
        self.counters.expired.fetch_add(n, Ordering::Relaxed);
        {
            let mut maps = self.maps.lock().expect("fqdn maps");
            for (ident, addr) in gone {
                if let Some(v) = inner.idents.get(&ident) {
                    let _ = maps.set(v.id, addr, &[]);
                }
            }
            for (ident, addr) in rewrite {
                if let (Some(v), Some(list)) = (
                    inner.idents.get(&ident),
                    inner.learned.get(&ident).and_then(|a| a.get(&addr)),
                ) {
                    let _ = maps.set(v.id, addr, &allowances(v, list));
                }
            }
        }
        self.persist(&inner);
    }
}

/// The kernel's allowances for one (identity, address): every learned rule's ports, with the
/// latest expiry per rule. Only the rules the address was learned for: another `toFQDN` rule's
/// ports are never added by a name of this one.
pub(super) fn allowances(view: &IdentView, list: &[Learned]) -> Vec<Allowance> {
    let mut per_rule: BTreeMap<u32, u64> = BTreeMap::new();
    for l in list {
        if let Some(r) = view
            .rules
            .iter()
            .find(|r| r.pattern.to_string() == l.pattern)
        {
            let e = per_rule.entry(r.rule).or_default();
            *e = (*e).max(l.expires_boot_ns);
        }
    }
    let mut out = Vec::new();
    for (rule, expires) in per_rule {
        if let Some(r) = view.rules.iter().find(|r| r.rule == rule) {
            for p in &r.ports {
                out.push(Allowance {
                    rule,
                    port_lo: p.lo,
                    port_hi: p.hi,
                    proto: p.proto,
                    expires_boot_ns: expires,
                });
            }
        }
    }
    out
}

/// Normalised question name of a query.
pub(super) fn qname(q: &hickory_proto::op::Message) -> Option<String> {
    Some(normalise_name(&q.queries.first()?.name.to_ascii()))
}
