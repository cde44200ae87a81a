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
mod learn;
mod proxy;
mod views;

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

use learn::{allowances, qname};
pub use proxy::chain_addresses;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
pub use views::print_text;

use crate::{
    audit::AuditSink,
    bpf::fqdn::{Allowance, FqdnMaps},
    policy::CompiledPolicy,
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
    /// Shortest lifetime of a learned address, whatever the answer's TTL.
    pub min_ttl: Duration,
    /// Time a learned address stays allowed after its TTL.
    pub grace: Duration,
    /// Most learned addresses per identity; past it an `fqdn_cap` record is written.
    pub max_per_identity: usize,
    /// `<state-dir>/fqdn.json`.
    pub state_file: PathBuf,
    /// The audit log (cap records).
    pub audit: AuditSink,
    /// This node's name (for the records).
    pub node: String,
}

/// One learned (address, rule, name) of an identity, as kept and persisted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Learned {
    /// The identity that looked the name up.
    pub identity: String,
    /// The `toFQDN` pattern of the rule (rules are matched by pattern after a policy change).
    pub pattern: String,
    /// The name the identity looked up.
    pub name: String,
    /// The address the answer held.
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

/// `SO_NETNS_COOKIE` (Linux 5.14) as a typed option for nix's safe `getsockopt`.
mod netns_cookie {
    use nix::{getsockopt_impl, sockopt_impl};

    sockopt_impl!(
        /// The cookie of the socket's network namespace.
        NetnsCookie,
        GetOnly,
        libc::SOL_SOCKET,
        libc::SO_NETNS_COOKIE,
        u64
    );
}

/// The daemon's network namespace cookie.
fn own_netns_cookie() -> std::io::Result<u64> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(nix::sys::socket::getsockopt(&s, netns_cookie::NetnsCookie)?)
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
                    warn!(file = %settings.state_file.display(), error = %e, "unreadable learned-name table; the kernel's entries stay until their TTL but are not named");
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
                    let port = sock.local_addr().map_or(0, |a| a.port());
                    let me = self.clone();
                    let n2 = name.clone();
                    let task = tokio::spawn(async move { proxy::serve(me, n2, sock).await });
                    info!(identity = %name, port, "DNS proxy listening");
                    inner.proxies.insert(name, ProxyHandle { port, task });
                }
                Err(e) => {
                    warn!(identity = %name, error = %e, "DNS proxy bind failed: this identity's lookups get no answer");
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

    /// Runs the expiry loop.
    pub async fn housekeeping(self: Arc<Self>) {
        let mut t = tokio::time::interval(Duration::from_secs(1));
        loop {
            t.tick().await;
            self.expire();
        }
    }
}
