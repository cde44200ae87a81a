//! `toFQDN` rules on the user side: the DNS proxy, what it learns, and the tools around it.
//!
//! An identity with `toFQDN` rules gets a proxy socket of its own (one UDP port per identity, so
//! the port the query arrives on names the identity). The kernel's `connect4`/`sendmsg4` hooks
//! send that identity's lookups to its sanctioned resolver here instead ([`crate::bpf::fqdn`]).
//! For each query the proxy forwards it to the resolver, parses the answer (A/AAAA, CNAME chains
//! followed), writes the addresses that answer a name of one of the identity's `toFQDN` rules into
//! the pinned map with their expiry, and only then sends the answer to the client, so the first
//! connect after a lookup finds the address allowed. Nothing parseable, no answer: the client
//! gets nothing rather than an unfiltered answer.
//!
//! The learned table is kept in memory and in `<state-dir>/fqdn.json` (atomic writes) so a
//! restarted daemon can name what the kernel still allows; the kernel's expiry check is what
//! enforces, so a restart neither drops nor extends a learned address.

pub mod cli;
mod proxy;

pub use proxy::chain_addresses;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use crate::{
    audit::{self, AuditEvent, AuditSink},
    bpf::fqdn::{Allowance, FqdnMaps},
    policy::{CompiledPolicy, fqdn::normalise_name},
    util,
};

/// Default lower bound on a learned address's lifetime.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(0);
/// Default time an address stays allowed after its TTL (clients cache answers a little longer).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Default cap of learned addresses per identity.
pub const DEFAULT_MAX_PER_IDENTITY: usize = 1024;
/// How long the proxy waits for the resolver.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);
/// Cap records per identity are written at most this often.
const CAP_RECORD_EVERY: Duration = Duration::from_secs(10);

/// Settings of the `toFQDN` machinery (daemon flags).
#[derive(Clone)]
pub struct Settings {
    /// An address of this host that pods reach (their namespaces' sockets are redirected there);
    /// `None`: only identities in the daemon's network namespace are served.
    pub pod_addr: Option<Ipv4Addr>,
    pub min_ttl: Duration,
    pub grace: Duration,
    pub max_per_identity: usize,
    /// `<state-dir>/fqdn.json`.
    pub state_file: PathBuf,
    /// The audit log (cap records).
    pub audit: AuditSink,
    pub node: String,
}

/// One learned (address, rule, name) of an identity, as kept and persisted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Learned {
    pub identity: String,
    /// The `toFQDN` pattern of the rule (rules are matched by pattern after a policy change).
    pub pattern: String,
    /// The name the identity looked up.
    pub name: String,
    pub addr: IpAddr,
    /// Boot-clock expiry (ns), as the kernel checks it.
    pub expires_boot_ns: u64,
}

/// The active policy's view of one identity with `toFQDN` rules.
#[derive(Clone, Debug)]
struct IdentView {
    id: u32,
    rules: Vec<crate::policy::compile::FqdnRule>,
    /// (resolver rule index, address) lookups are forwarded to.
    resolver: Option<(u32, IpAddr)>,
}

struct ProxyHandle {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Inner {
    idents: HashMap<String, IdentView>,
    /// identity → address → learned entries.
    learned: BTreeMap<String, BTreeMap<IpAddr, Vec<Learned>>>,
    proxies: HashMap<String, ProxyHandle>,
    last_cap_record: HashMap<String, std::time::Instant>,
}

/// Counters for `/metrics`.
#[derive(Default)]
struct Counters {
    lookups: AtomicU64,
    learned: AtomicU64,
    expired: AtomicU64,
    dropped_policy: AtomicU64,
    cap_reached: AtomicU64,
    upstream_failures: AtomicU64,
}

/// The `toFQDN` machinery of a running daemon.
pub struct Fqdn {
    settings: Settings,
    maps: Mutex<FqdnMaps>,
    inner: Mutex<Inner>,
    counters: Counters,
    /// Every name the proxied identities resolved (the inventory's host names).
    host_names: Arc<crate::inventory::names::NameTable>,
}

/// The daemon's network namespace cookie (`SO_NETNS_COOKIE`, Linux 5.14).
fn own_netns_cookie() -> std::io::Result<u64> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt on our socket into a u64 of the given length.
    let rc = unsafe {
        use std::os::fd::AsRawFd;
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

impl Fqdn {
    /// Takes the maps, writes the proxy's addresses, and loads the persisted table.
    pub fn new(
        settings: Settings,
        mut maps: FqdnMaps,
        host_names: Arc<crate::inventory::names::NameTable>,
    ) -> anyhow::Result<Arc<Self>> {
        let cookie = own_netns_cookie()
            .map_err(|e| anyhow::anyhow!("reading the daemon's network namespace cookie: {e}"))?;
        maps.set_cfg(cookie, settings.pod_addr)?;
        let mut inner = Inner::default();
        if let Ok(text) = std::fs::read(&settings.state_file) {
            match serde_json::from_slice::<Vec<Learned>>(&text) {
                Ok(list) => {
                    for l in list {
                        inner
                            .learned
                            .entry(l.identity.clone())
                            .or_default()
                            .entry(l.addr)
                            .or_default()
                            .push(l);
                    }
                }
                Err(e) => {
                    warn!(file = %settings.state_file.display(), error = %e, "unreadable learned-name table; the kernel's entries stay until their TTL but are not named")
                }
            }
        }
        Ok(Arc::new(Self {
            settings,
            maps: Mutex::new(maps),
            inner: Mutex::new(inner),
            counters: Counters::default(),
            host_names,
        }))
    }

    /// Brings proxies, proxy ports and learned entries in line with a newly active policy: new
    /// identities get a proxy, gone ones lose it, learned entries follow their identity and rule
    /// (by name and pattern) to their new ids and ports, and entries of rules that are gone are
    /// removed from the kernel.
    pub fn on_policy(self: &Arc<Self>, policy: &CompiledPolicy) {
        let mut inner = self.inner.lock().expect("fqdn lock");
        inner.idents = policy
            .identities
            .iter()
            .filter(|i| !i.fqdn.is_empty())
            .map(|i| {
                (
                    i.name.clone(),
                    IdentView {
                        id: i.id,
                        rules: i.fqdn.clone(),
                        resolver: i.resolvers.first().copied(),
                    },
                )
            })
            .collect();
        // Proxies.
        let gone: Vec<String> = inner
            .proxies
            .keys()
            .filter(|n| !inner.idents.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            if let Some(p) = inner.proxies.remove(&n) {
                p.task.abort();
            }
        }
        let names: Vec<String> = inner.idents.keys().cloned().collect();
        for name in names {
            if inner.proxies.contains_key(&name) {
                continue;
            }
            match proxy::bind(self.settings.pod_addr.is_some()) {
                Ok(sock) => {
                    let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
                    let me = self.clone();
                    let n2 = name.clone();
                    let task = tokio::spawn(async move { proxy::serve(me, n2, sock).await });
                    info!(identity = %name, port, "DNS proxy listening");
                    inner.proxies.insert(name, ProxyHandle { port, task });
                }
                Err(e) => {
                    warn!(identity = %name, error = %e, "DNS proxy bind failed: this identity's lookups get no answer")
                }
            }
        }
        let want: Vec<(u32, u16, u32)> = inner
            .idents
            .iter()
            .filter_map(|(n, v)| {
                let p = inner.proxies.get(n)?;
                Some((v.id, p.port, v.resolver.map_or(0, |r| r.0)))
            })
            .collect();
        if let Err(e) = self.maps.lock().expect("fqdn maps").set_proxies(&want) {
            warn!(error = %e, "writing DNS proxy ports failed");
        }
        // Learned entries: keep those whose identity and pattern still exist.
        let now = util::boot_ns();
        let mut dropped = 0u64;
        let idents = inner.idents.clone();
        inner.learned.retain(|ident, addrs| {
            addrs.retain(|_, list| {
                list.retain(|l| {
                    let keep = l.expires_boot_ns > now
                        && idents.get(ident).is_some_and(|v| {
                            v.rules.iter().any(|r| r.pattern.to_string() == l.pattern)
                        });
                    if !keep && l.expires_boot_ns > now {
                        dropped += 1;
                    }
                    keep
                });
                !list.is_empty()
            });
            !addrs.is_empty()
        });
        self.counters
            .dropped_policy
            .fetch_add(dropped, Ordering::Relaxed);
        self.sync_kernel(&inner);
        self.persist(&inner);
    }

    /// Rewrites the kernel map from the table: every wanted key written, every other key removed.
    fn sync_kernel(&self, inner: &Inner) {
        let mut maps = self.maps.lock().expect("fqdn maps");
        let mut want: HashMap<(u32, IpAddr), Vec<Allowance>> = HashMap::new();
        for (ident, addrs) in &inner.learned {
            let Some(v) = inner.idents.get(ident) else {
                continue;
            };
            for (addr, list) in addrs {
                want.insert((v.id, *addr), allowances(v, list));
            }
        }
        for (id, addr, _) in maps.entries() {
            if !want.contains_key(&(id, addr)) {
                let _ = maps.set(id, addr, &[]);
            }
        }
        for ((id, addr), list) in &want {
            if let Err(e) = maps.set(*id, *addr, list) {
                warn!(error = %e, %addr, "writing a learned address failed");
            }
        }
    }

    fn persist(&self, inner: &Inner) {
        let all: Vec<&Learned> = inner
            .learned
            .values()
            .flat_map(|a| a.values().flatten())
            .collect();
        let Ok(text) = serde_json::to_vec(&all) else {
            return;
        };
        if let Err(e) = util::write_atomic(&self.settings.state_file, &text) {
            warn!(error = %e, "persisting the learned-name table failed");
        }
    }

    /// Where an identity's lookups are forwarded.
    fn upstream(&self, identity: &str) -> Option<IpAddr> {
        let inner = self.inner.lock().expect("fqdn lock");
        inner.idents.get(identity)?.resolver.map(|r| r.1)
    }

    /// Learns what `answer` tells `identity` about `qname` (already normalised); writes the
    /// kernel map before returning. `addrs`: (address, TTL seconds) of the CNAME-followed chain.
    fn learn(&self, identity: &str, qname: &str, addrs: &[(IpAddr, u32)]) {
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
            let life = Duration::from_secs(ttl as u64)
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
                match list.iter_mut().find(|l| &l.pattern == p && l.name == qname) {
                    // Never shortened by a later answer with a smaller TTL.
                    Some(l) => l.expires_boot_ns = l.expires_boot_ns.max(expires),
                    None => {
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
        for (ident, addrs) in inner.learned.iter_mut() {
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
    pub fn list_json(&self, identity: Option<&str>) -> serde_json::Value {
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
                    out.push(json!({
                        "identity": ident,
                        "rule": rule.map(|r| format!("allow[{}]", r.rule)),
                        "pattern": l.pattern,
                        "name": l.name,
                        "addr": addr.to_string(),
                        "ports": rule.map(|r| r.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                        "ttl_remaining_s": l.expires_boot_ns.saturating_sub(now) / 1_000_000_000,
                        "expired": l.expires_boot_ns <= now,
                    }));
                }
            }
        }
        let proxies: Vec<serde_json::Value> = inner
            .proxies
            .iter()
            .map(|(n, p)| json!({"identity": n, "port": p.port, "resolver": inner.idents.get(n).and_then(|v| v.resolver).map(|r| r.1.to_string())}))
            .collect();
        json!({"learned": out, "proxies": proxies})
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
            let n = inner.learned.get(name).map_or(0, |a| a.len());
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

    /// Runs the expiry loop.
    pub async fn housekeeping(self: Arc<Self>) {
        let mut t = tokio::time::interval(Duration::from_secs(1));
        loop {
            t.tick().await;
            self.expire();
        }
    }
}

/// The kernel's allowances for one (identity, address): every learned rule's ports, with the
/// latest expiry per rule. Only the rules the address was learned for: another `toFQDN` rule's
/// ports are never added by a name of this one.
fn allowances(view: &IdentView, list: &[Learned]) -> Vec<Allowance> {
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

/// Text lines for `chokepoint fqdn` without `-o json`.
pub fn print_text(v: &serde_json::Value) -> String {
    let mut s = String::from("IDENTITY\tRULE\tNAME\tADDRESS\tPORTS\tTTL\n");
    for e in v["learned"].as_array().into_iter().flatten() {
        let ports: Vec<&str> = e["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str())
            .collect();
        s += &format!(
            "{}\t{} {}\t{}\t{}\t{}\t{}\n",
            e["identity"].as_str().unwrap_or("-"),
            e["rule"].as_str().unwrap_or("-"),
            e["pattern"].as_str().unwrap_or("-"),
            e["name"].as_str().unwrap_or("-"),
            e["addr"].as_str().unwrap_or("-"),
            ports.join(","),
            if e["expired"] == true {
                "expired".to_string()
            } else {
                format!("{}s", e["ttl_remaining_s"])
            }
        );
    }
    s
}

/// Normalised question name of a query.
fn qname(q: &hickory_proto::op::Message) -> Option<String> {
    Some(normalise_name(&q.queries.first()?.name.to_ascii()))
}
