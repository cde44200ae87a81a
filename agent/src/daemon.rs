//! `chokepoint daemon`: loads and pins the kernel side, applies policy, consumes records, serves
//! the local API and the metrics endpoint.
//!
//! What a failed task means for enforcement: nothing. Enforcement lives in pinned links and
//! maps; the daemon's tasks only observe and change it. A failed record consumer or API task is
//! logged and ends the daemon (so a supervisor restarts it), and the programs keep enforcing the
//! last applied generation throughout.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chokepoint_common::{Event, names};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, UnixListener, UnixStream},
    sync::{Semaphore, broadcast, mpsc},
};
use tracing::{error, info, warn};

use crate::{
    alerts::{Alert, Deduper, Webhook, WebhookStats, webhook_task},
    api::{self, Request},
    audit::{self, FlowRecord, JsonLines, Names},
    bpf::{self, GrantSpec, IdentBinding, Kernel, PolicyMaps, StartOptions, Stats},
    cgroup::{self, PathCache},
    metrics::{Gauges, Metrics},
    policy::{
        CompiledPolicy,
        parse::{Cidr, parse_cidr},
    },
    state::{GenerationMeta, StateStore, StoredGrant},
    util,
};

/// Daemon options (from the command line or `--config`).
#[derive(Clone, Debug)]
pub struct Options {
    pub policy: Option<PathBuf>,
    pub cgroup_root: PathBuf,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub metrics_addr: String,
    pub audit_log: Option<PathBuf>,
    pub audit_log_max_bytes: u64,
    pub audit_log_keep: usize,
    pub audit_stdout: bool,
    pub tc_ifaces: Vec<String>,
    pub alert_window: Duration,
    pub alert_log: Option<PathBuf>,
    pub alert_webhook: Option<String>,
    pub flow_buffer: usize,
    /// The gateways' read-only attestation socket.
    pub attest_socket: PathBuf,
    /// Its mode (default 0660).
    pub attest_socket_mode: u32,
    /// Its group (gateways run in it), if any.
    pub attest_group: Option<String>,
    /// Optional loopback HTTP address for the attestation endpoint.
    pub attest_addr: Option<String>,
    /// How often gateway host names are re-resolved.
    pub dns_refresh: Duration,
}

/// Records and alerts kept in memory for `flows` and `alerts` without `--follow`.
struct Ring<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T: Clone> Ring<T> {
    fn new(cap: usize) -> Self {
        Self {
            items: VecDeque::with_capacity(cap.min(4096)),
            cap: cap.max(1),
        }
    }
    fn push(&mut self, t: T) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(t);
    }
}

/// The active policy and its kernel bindings.
struct Active {
    generation: u32,
    policy: Arc<CompiledPolicy>,
    bindings: Vec<IdentBinding>,
    applied_at: String,
}

/// Everything the tasks share.
pub struct Shared {
    pub(crate) opts: Options,
    pub(crate) node: String,
    maps: Mutex<PolicyMaps>,
    stats: Mutex<Stats>,
    pub(crate) attest: Mutex<crate::bpf::maps::Attest>,
    store: Mutex<StateStore>,
    active: RwLock<Active>,
    /// Every generation seen this run (for enriching records of older generations).
    generations: RwLock<BTreeMap<u32, Arc<CompiledPolicy>>>,
    tasks: RwLock<HashMap<u64, String>>,
    flows: Mutex<Ring<Arc<FlowRecord>>>,
    alerts: Mutex<Ring<Arc<Alert>>>,
    flow_tx: broadcast::Sender<Arc<FlowRecord>>,
    alert_tx: broadcast::Sender<Arc<Alert>>,
    pub(crate) metrics: Metrics,
    degraded: Vec<(String, String)>,
    webhook: Arc<WebhookStats>,
    shutting_down: AtomicBool,
    /// Gateway host name cache.
    dns: crate::dns::DnsCache,
    /// eventfd that tells the cgroup watcher to re-arm (the policy changed).
    rearm_fd: i32,
}

/// Compiled generations kept in memory to name identities and rules in records.
const KEEP_GENERATIONS: usize = 3;

/// The empty policy of generation 0 (no identities: nothing is touched).
fn empty_policy() -> CompiledPolicy {
    CompiledPolicy {
        name: "(none)".into(),
        digest: String::new(),
        gateways: Vec::new(),
        identities: Vec::new(),
        resolved: BTreeMap::new(),
        source: String::new(),
    }
}

/// Compiles with gateway host names resolved through the daemon's cache (grace for rotations).
fn compile_cached(
    dns: &crate::dns::DnsCache,
    file: &str,
    src: &[u8],
) -> Result<CompiledPolicy, crate::policy::compile::PolicyError> {
    let resolve =
        |h: &str, p: u16| dns.resolve(h, p, &crate::policy::parse::system_resolve, Instant::now());
    crate::policy::compile_source_with(file, src, &resolve)
}

/// Resolves every identity's selector to its cgroup id; missing cgroups are skipped (the
/// reconciler binds them when they appear).
fn bind(root: &Path, policy: &CompiledPolicy) -> Vec<IdentBinding> {
    policy
        .identities
        .iter()
        .filter_map(|id| {
            let path = root.join(&id.cgroup_path);
            cgroup::id_of(&path).ok().map(|cgroup_id| IdentBinding {
                cgroup_id,
                ident: id.id,
                mode: id.mode.code(),
            })
        })
        .collect()
}

fn same_bindings(a: &[IdentBinding], b: &[IdentBinding]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.cgroup_id == y.cgroup_id && x.ident == y.ident && x.mode == y.mode)
}

/// FNV-1a of a task name: its numeric id in the kernel (never 0).
pub fn task_id(task: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in task.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// Parses a grant destination `HOST_OR_CIDR:PORT[/PROTO]`.
pub fn parse_grant_dest(to: &str) -> Result<(Vec<Cidr>, crate::policy::parse::PortSpec), String> {
    let to = to.trim();
    let (host, portproto) = if let Some(rest) = to.strip_prefix('[') {
        rest.split_once("]:")
            .ok_or_else(|| format!("`{to}`: expected `[ipv6 or cidr]:port[/proto]`"))?
    } else {
        to.rsplit_once(':')
            .ok_or_else(|| format!("`{to}`: expected `HOST_OR_CIDR:PORT[/PROTO]`"))?
    };
    let portproto = if portproto.contains('/') {
        portproto.to_string()
    } else {
        format!("{portproto}/tcp")
    };
    let spec = crate::policy::parse::parse_ports(&portproto)?[0];
    let cidrs = match parse_cidr(host) {
        Ok(c) => vec![c],
        Err(_) => {
            let ep =
                crate::policy::parse::parse_endpoint(&format!("{host}:{}/tcp", spec.lo.max(1)))?;
            ep.nets
        }
    };
    Ok((cidrs, spec))
}

impl Shared {
    /// Identity name and tenant of `ident` under `generation`.
    pub(crate) fn identity_of(
        &self,
        generation: u32,
        ident: u32,
    ) -> Option<(String, Option<String>)> {
        let g = self.generations.read().expect("generations lock");
        let p = g.get(&generation)?;
        let id = p.identities.get(ident.checked_sub(1)? as usize)?;
        Some((id.name.clone(), id.tenant.clone()))
    }

    /// Task name of a numeric task id.
    pub(crate) fn task_name(&self, task: u64) -> Option<String> {
        self.tasks.read().expect("tasks lock").get(&task).cloned()
    }

    /// Grants as kernel specs, for the active policy's identity ids (expired ones skipped).
    fn grant_specs(&self, grants: &[StoredGrant]) -> Vec<GrantSpec> {
        let active = self.active.read().expect("active lock");
        let now_wall = util::wall_ns();
        let now_boot = util::boot_ns();
        let mut out = Vec::new();
        for g in grants {
            if g.expires_wall_ns <= now_wall {
                continue;
            }
            let Some(id) = active
                .policy
                .identities
                .iter()
                .find(|i| i.name == g.identity)
            else {
                continue;
            };
            let Ok((cidrs, spec)) = parse_grant_dest(&g.to) else {
                continue;
            };
            let remaining = (g.expires_wall_ns - now_wall) as u64;
            for cidr in cidrs {
                out.push(GrantSpec {
                    ident: id.id,
                    cidr,
                    port_lo: spec.lo,
                    port_hi: spec.hi,
                    proto: spec.proto,
                    task: g.task_id,
                    task_name: g.task.clone(),
                    expires_boot_ns: now_boot + remaining,
                });
            }
        }
        out
    }

    fn sync_grants(&self) -> anyhow::Result<()> {
        let grants = self.store.lock().expect("store lock").grants()?;
        let specs = self.grant_specs(&grants);
        {
            let mut t = self.tasks.write().expect("tasks lock");
            for g in &grants {
                t.insert(g.task_id, g.task.clone());
            }
        }
        self.maps.lock().expect("maps lock").set_grants(&specs)?;
        Ok(())
    }

    /// Compiles, writes and switches to a new generation. Nothing changes on error.
    fn apply(
        &self,
        policy: CompiledPolicy,
        action: &str,
        who: (Option<u32>, Option<u32>),
    ) -> anyhow::Result<u32> {
        let t0 = Instant::now();
        let policy = Arc::new(policy);
        let bindings = bind(&self.opts.cgroup_root, &policy);
        let store = self.store.lock().expect("store lock");
        let mut maps = self.maps.lock().expect("maps lock");
        let previous = self.active.read().expect("active lock").generation;
        let generation = store.last_generation()?.max(previous) + 1;
        maps.apply(&policy, &bindings, generation)?;
        let meta = GenerationMeta {
            generation,
            name: policy.name.clone(),
            digest: policy.digest.clone(),
            applied_at: util::rfc3339_ns(util::wall_ns()),
            by_uid: who.0,
            by_pid: who.1,
            previous: (previous > 0).then_some(previous),
            action: action.into(),
        };
        if let Err(e) = store.commit(&meta, &policy.source) {
            // Put the previous generation back so kernel and state agree.
            let prev = self.active.read().expect("active lock");
            let _ = maps.apply(&prev.policy, &prev.bindings, prev.generation);
            return Err(e).context(
                "recording the new generation failed; the previous generation stays active",
            );
        }
        drop(maps);
        drop(store);
        {
            let mut g = self.generations.write().expect("generations lock");
            g.insert(generation, policy.clone());
            // Records name identities of recent generations only (what the ring buffer may still
            // hold); older compiled policies are dropped, not kept for the daemon's lifetime.
            while g.len() > KEEP_GENERATIONS {
                g.pop_first();
            }
        }
        *self.active.write().expect("active lock") = Active {
            generation,
            policy,
            bindings,
            applied_at: meta.applied_at.clone(),
        };
        // The watcher must watch this generation's selectors.
        self.rearm_watcher();
        // Identity ids may have moved: rewrite grants for the new ids.
        if let Err(e) = self.sync_grants() {
            warn!(error = %e, "re-writing grants after apply failed");
        }
        self.metrics.apply_seconds(t0.elapsed().as_secs_f64());
        // Parsing and compiling a large document leaves freed heap behind: return it.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        info!(generation, action, digest = %meta.digest, by_uid = ?who.0, by_pid = ?who.1, "policy generation active");
        // The change is itself an audit record (who, when, old → new generation, digest).
        if let Some(p) = &self.opts.audit_log
            && let Ok(mut l) =
                JsonLines::open(p, self.opts.audit_log_max_bytes, self.opts.audit_log_keep)
        {
            let rec = json!({
                "schema": audit::SCHEMA_VERSION,
                "event": "policy_change",
                "time": meta.applied_at,
                "node": self.node,
                "action": action,
                "policy_generation": generation,
                "previous_generation": meta.previous,
                "digest": meta.digest,
                "policy": meta.name,
                "uid": who.0,
                "pid": who.1,
            });
            let _ = l.write(&rec).and_then(|_| l.sync());
        }
        Ok(generation)
    }

    /// Re-resolves gateway host names; when the allowed addresses change (a new address, or an
    /// old one past its grace period), the active policy is recompiled as a new generation.
    fn refresh_dns(&self) {
        let policy = self.active.read().expect("active lock").policy.clone();
        if policy.resolved.is_empty() {
            return;
        }
        let changed = policy.resolved.iter().any(|(host, compiled)| {
            match self.dns.resolve(
                host,
                443,
                &crate::policy::parse::system_resolve,
                Instant::now(),
            ) {
                Ok(now) => &now != compiled,
                Err(_) => false,
            }
        });
        if !changed {
            return;
        }
        match compile_cached(&self.dns, "dns-refresh", policy.source.as_bytes()) {
            Ok(p) => match self.apply(p, "dns-refresh", (None, Some(std::process::id()))) {
                Ok(g) => info!(
                    generation = g,
                    "gateway addresses changed; policy recompiled"
                ),
                Err(e) => error!(error = %e, "applying re-resolved gateway addresses failed"),
            },
            Err(e) => {
                warn!(error = %e, "re-resolving gateway host names failed; keeping the active generation")
            }
        }
    }

    /// Re-binds identities whose cgroups appeared, vanished or were recreated.
    fn reconcile(&self) {
        let (policy, generation, old) = {
            let a = self.active.read().expect("active lock");
            (a.policy.clone(), a.generation, a.bindings.clone())
        };
        let now = bind(&self.opts.cgroup_root, &policy);
        if same_bindings(&now, &old) {
            return;
        }
        let mut maps = self.maps.lock().expect("maps lock");
        // The generation may have moved on while we computed: re-check under the maps lock.
        if self.active.read().expect("active lock").generation != generation {
            return;
        }
        match maps.rebind(&old, &now) {
            Ok(_) => {
                info!(generation, cgroups = now.len(), "identity cgroups re-bound");
                self.active.write().expect("active lock").bindings = now;
            }
            Err(e) => error!(error = %e, "re-binding identity cgroups failed"),
        }
    }

    /// Wakes the cgroup watcher so it re-arms for the current selectors.
    fn rearm_watcher(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our eventfd.
        unsafe { libc::write(self.rearm_fd, std::ptr::from_ref(&one).cast(), 8) };
    }

    /// Directories whose changes can change the bindings: for every selector, the nearest
    /// existing ancestor of the selected cgroup's parent (so creation, deletion and re-creation
    /// of the cgroup are all seen).
    fn watch_dirs(&self) -> Vec<PathBuf> {
        let a = self.active.read().expect("active lock");
        let mut dirs: Vec<PathBuf> = a
            .policy
            .identities
            .iter()
            .map(|i| {
                let mut p = self.opts.cgroup_root.join(&i.cgroup_path);
                p.pop();
                while !p.is_dir() && p.starts_with(&self.opts.cgroup_root) && p.pop() {}
                p
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn programs(&self) -> Vec<(String, bool)> {
        let pinned = bpf::pinned_links(&self.opts.bpffs);
        let mut out = Vec::new();
        for p in names::PROGRAMS {
            if p == names::PROG_TC_EGRESS {
                for iface in &self.opts.tc_ifaces {
                    let up = pinned
                        .iter()
                        .any(|(n, t)| n == p && t.as_deref() == Some(iface));
                    out.push((format!("{p}@{iface}"), up));
                }
                continue;
            }
            out.push((
                p.to_string(),
                pinned.iter().any(|(n, t)| n == p && t.is_none()),
            ));
        }
        out
    }

    /// Core programs (the ones every identity depends on) all attached.
    fn core_attached(&self) -> bool {
        let pinned = bpf::pinned_links(&self.opts.bpffs);
        [
            names::PROG_SOCK_CREATE,
            names::PROG_CONNECT4,
            names::PROG_CONNECT6,
            names::PROG_SENDMSG4,
            names::PROG_SENDMSG6,
            names::PROG_SKB_EGRESS,
        ]
        .iter()
        .all(|p| pinned.iter().any(|(n, t)| n == p && t.is_none()))
    }

    fn enforcing(&self) -> Vec<(String, bool)> {
        let core = self.core_attached();
        let current = self
            .maps
            .lock()
            .expect("maps lock")
            .config()
            .map(|c| c.generation())
            .ok();
        let a = self.active.read().expect("active lock");
        let gen_ok = current == Some(a.generation);
        a.policy
            .identities
            .iter()
            .map(|i| {
                let bound = a.bindings.iter().any(|b| b.ident == i.id);
                (i.name.clone(), core && gen_ok && bound)
            })
            .collect()
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            generation: self.active.read().expect("active lock").generation,
            programs: self.programs(),
            enforcing: self.enforcing(),
        }
    }

    fn identities_json(&self) -> serde_json::Value {
        let a = self.active.read().expect("active lock");
        let enforcing: HashMap<String, bool> = self.enforcing().into_iter().collect();
        let list: Vec<serde_json::Value> = a
            .policy
            .identities
            .iter()
            .map(|i| {
                let path = self.opts.cgroup_root.join(&i.cgroup_path);
                let cgroups = count_cgroups(&path);
                json!({
                    "name": i.name,
                    "tenant": i.tenant,
                    "mode": i.mode,
                    "selector": {"cgroupPath": format!("/{}", i.cgroup_path)},
                    "cgroup": path,
                    "cgroup_id": a.bindings.iter().find(|b| b.ident == i.id).map(|b| b.cgroup_id),
                    "cgroups": cgroups,
                    "gateways": i.gateways,
                    "rules": i.rules,
                    "destinations": i.entries.len(),
                    "enforcing": enforcing.get(&i.name).copied().unwrap_or(false),
                })
            })
            .collect();
        json!({"generation": a.generation, "identities": list})
    }

    fn status_json(&self) -> serde_json::Value {
        let programs = self.programs();
        let enforcing = self.enforcing();
        let core = self.core_attached();
        let a = self.active.read().expect("active lock");
        let kernel_gen = self
            .maps
            .lock()
            .expect("maps lock")
            .config()
            .map(|c| c.generation())
            .ok();
        let mut problems: Vec<String> = self
            .degraded
            .iter()
            .map(|(p, why)| format!("{p}: {why}"))
            .collect();
        for (p, up) in &programs {
            if !up {
                problems.push(format!("{p}: not attached"));
            }
        }
        if kernel_gen != Some(a.generation) {
            problems.push(format!(
                "kernel generation {kernel_gen:?} differs from the daemon's {}",
                a.generation
            ));
        }
        for (i, up) in &enforcing {
            if !up {
                problems.push(format!(
                    "identity {i}: not enforcing (cgroup missing or programs detached)"
                ));
            }
        }
        let health = if !core {
            "not_enforcing"
        } else if problems.is_empty() {
            "enforcing"
        } else {
            "degraded"
        };
        let stats = self.stats.lock().expect("stats lock").snapshot().ok();
        json!({
            "generation": a.generation,
            "policy": {"name": a.policy.name, "digest": a.policy.digest, "applied_at": a.applied_at},
            "health": health,
            "enforcing": core && kernel_gen == Some(a.generation),
            "problems": problems,
            "programs": programs.iter().map(|(p, up)| json!({"program": p, "attached": up})).collect::<Vec<_>>(),
            "identities": enforcing.iter().map(|(i, up)| json!({"name": i, "enforcing": up})).collect::<Vec<_>>(),
            "records": {
                "delivered": self.metrics.delivered.load(Ordering::Relaxed),
                "lost": self.metrics.lost_kernel.load(Ordering::Relaxed) + self.metrics.lost_user.load(Ordering::Relaxed),
                "kernel_decisions": stats.as_ref().map(|s| s.emitted()),
            },
            "version": env!("CARGO_PKG_VERSION"),
            "node": self.node,
            "bpffs": self.opts.bpffs,
            "cgroup_root": self.opts.cgroup_root,
            "tc_ifaces": self.opts.tc_ifaces,
        })
    }

    fn policy_json(&self, generation: u32, policy: &CompiledPolicy) -> serde_json::Value {
        json!({
            "generation": generation,
            "name": policy.name,
            "digest": policy.digest,
            "gateways": policy.gateways,
            "identities": policy.identities,
            "resolved": policy.resolved,
            "source": policy.source,
        })
    }
}

fn count_cgroups(path: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        if !d.is_dir() {
            continue;
        }
        n += 1;
        if n > 100_000 {
            break;
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.filter_map(Result::ok) {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    n
}

struct EnrichNames<'a> {
    shared: &'a Shared,
    paths: Option<&'a mut PathCache>,
}

impl Names for EnrichNames<'_> {
    fn identity(&self, generation: u32, ident: u32) -> Option<(String, Option<String>)> {
        let g = self.shared.generations.read().expect("generations lock");
        let p = g.get(&generation)?;
        let id = p.identities.get(ident.checked_sub(1)? as usize)?;
        Some((id.name.clone(), id.tenant.clone()))
    }
    fn rule(&self, generation: u32, ident: u32, reason: u8, rule: u32) -> Option<String> {
        let g = self.shared.generations.read().expect("generations lock");
        g.get(&generation)?.rule_label(ident, reason, rule)
    }
    fn task(&self, task: u64) -> Option<String> {
        self.shared
            .tasks
            .read()
            .expect("tasks lock")
            .get(&task)
            .cloned()
    }
    fn cgroup(&mut self, id: u64) -> Option<String> {
        self.paths.as_mut()?.path(id)
    }
}

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the daemon needs root (CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN)");
    }
    if !opts.cgroup_root.join("cgroup.procs").exists() {
        bail!(
            "--cgroup-root {} is not a cgroup v2 directory (no cgroup.procs)",
            opts.cgroup_root.display()
        );
    }
    let store = StateStore::open(&opts.state_dir)?;
    // The policy to bring up: the state's current generation, then --policy if it differs.
    let current = store.current()?;
    let dns = crate::dns::DnsCache::new(crate::dns::DEFAULT_GRACE);
    let mut generations = BTreeMap::new();
    let (start_gen, start_policy) = match current {
        Some(g) => {
            let src = store.source(g).with_context(|| format!("state dir {}: generation {g} is recorded as current but its source is unreadable; refusing to start (pinned enforcement stays as it is)", opts.state_dir.display()))?;
            let p = compile_cached(
                &dns,
                &format!("{}/generations/{g}.yaml", opts.state_dir.display()),
                &src,
            )
            .map_err(|e| anyhow::anyhow!("stored generation {g} no longer compiles: {e}"))?;
            (g, p)
        }
        None => (0, empty_policy()),
    };
    let history = store.history()?;
    let recent = history.len().saturating_sub(KEEP_GENERATIONS);
    for m in &history[recent..] {
        if m.generation == start_gen {
            continue;
        }
        if let Ok(src) = store.source(m.generation)
            // Older generations only name things in records: no DNS for them.
            && let Ok(p) = crate::policy::compile_source_with("history", &src, &|_, _| Ok(Vec::new()))
        {
            generations.insert(m.generation, Arc::new(p));
        }
    }
    let start_policy = Arc::new(start_policy);
    generations.insert(start_gen, start_policy.clone());
    let bindings = bind(&opts.cgroup_root, &start_policy);

    // Load/adopt. A fresh install is filled before any program attaches.
    let installed_before = bpf::is_installed(&opts.bpffs);
    let Kernel {
        mut policy,
        attest,
        events,
        stats,
        attached,
        degraded,
        adopted,
    } = bpf::start(
        &StartOptions {
            bpffs: &opts.bpffs,
            cgroup_root: &opts.cgroup_root,
            tc_ifaces: &opts.tc_ifaces,
        },
        |maps| maps.apply(&start_policy, &bindings, start_gen).map(|_| ()),
    )?;
    if adopted {
        let kernel_gen = policy.config()?.generation();
        if kernel_gen != start_gen {
            if current.is_none() && kernel_gen != 0 {
                bail!(
                    "pinned enforcement is at generation {kernel_gen} but the state dir {} has no record of it; refusing to reset it (fail closed). Restore the state dir, or `chokepoint uninstall` to start over",
                    opts.state_dir.display()
                );
            }
            warn!(
                kernel_gen,
                state_gen = start_gen,
                "pinned generation differs from state; re-applying the state's generation"
            );
            policy.apply(&start_policy, &bindings, start_gen)?;
        }
    }
    info!(
        adopted,
        installed_before,
        programs = attached.len(),
        "kernel programs in place"
    );
    for a in &attached {
        info!(program = %a.program, target = %a.target, how = a.how, "program");
    }

    let (flow_tx, _) = broadcast::channel(16_384);
    let (alert_tx, _) = broadcast::channel(1024);
    let shared = Arc::new(Shared {
        node: util::node_name(),
        maps: Mutex::new(policy),
        stats: Mutex::new(stats),
        attest: Mutex::new(attest),
        store: Mutex::new(store),
        active: RwLock::new(Active {
            generation: start_gen,
            policy: start_policy.clone(),
            bindings,
            applied_at: util::rfc3339_ns(util::wall_ns()),
        }),
        generations: RwLock::new(generations),
        tasks: RwLock::new(HashMap::new()),
        flows: Mutex::new(Ring::new(opts.flow_buffer)),
        alerts: Mutex::new(Ring::new(1024)),
        flow_tx,
        alert_tx,
        metrics: Metrics::default(),
        degraded,
        webhook: Arc::new(WebhookStats::default()),
        shutting_down: AtomicBool::new(false),
        dns,
        // SAFETY: eventfd has no preconditions; -1 (failure) is handled by the watcher's poll.
        rearm_fd: unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) },
        opts: opts.clone(),
    });
    shared.sync_grants().context("restoring grants")?;
    {
        let s = shared.clone();
        std::thread::Builder::new()
            .name("cgroup-watch".into())
            .spawn(move || watch_cgroups(s))
            .context("starting the cgroup watcher")?;
    }

    // --policy: apply when it differs from the active generation.
    if let Some(path) = &opts.policy {
        let src = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let p = compile_cached(&shared.dns, &path.display().to_string(), &src)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if p.digest != start_policy.digest {
            shared.apply(p, "startup", (Some(0), Some(std::process::id())))?;
        }
    }

    // Consumers before anything else can produce records for them.
    let mut set = tokio::task::JoinSet::new();
    let (alert_q_tx, alert_q_rx) = mpsc::channel::<Alert>(1024);
    if let Some(url) = &opts.alert_webhook {
        let hook = Webhook::parse(url).map_err(|e| anyhow::anyhow!(e))?;
        set.spawn(webhook_task(hook, alert_q_rx, shared.webhook.clone(), 5));
    } else {
        drop(alert_q_rx);
    }
    let dedup = Arc::new(Mutex::new(Deduper::new(opts.alert_window)));
    if let Some(events) = events {
        let s = shared.clone();
        let d = dedup.clone();
        set.spawn(async move {
            if let Err(e) = consume(s, events, d).await {
                error!(error = %e, "record consumer failed");
            }
        });
    }
    {
        let s = shared.clone();
        let d = dedup.clone();
        let q = alert_q_tx.clone();
        set.spawn(async move { alert_flusher(s, d, q).await });
    }
    {
        // Losses since the last reported value (including any while the daemon was down) become a
        // `lost` record on the first housekeeping pass.
        let now_lost = shared
            .stats
            .lock()
            .expect("stats lock")
            .snapshot()
            .map(|s| s.lost)
            .unwrap_or(0);
        let baseline = shared
            .store
            .lock()
            .expect("store lock")
            .lost_reported()
            .unwrap_or(now_lost)
            .min(now_lost);
        let s = shared.clone();
        set.spawn(async move { housekeeping(s, baseline).await });
    }
    let listener = bind_socket(&opts.socket)?;
    {
        let s = shared.clone();
        set.spawn(async move { serve_api(s, listener).await });
    }
    let attest_listener = crate::attest::bind_unix(
        &opts.attest_socket,
        opts.attest_socket_mode,
        opts.attest_group.as_deref(),
    )?;
    {
        let s = shared.clone();
        set.spawn(async move {
            crate::attest::serve(s, crate::attest::Listener::Unix(attest_listener)).await
        });
    }
    if let Some(addr) = &opts.attest_addr {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the attestation endpoint on {addr}"))?;
        let s = shared.clone();
        set.spawn(async move { crate::attest::serve(s, crate::attest::Listener::Tcp(l)).await });
    }
    let metrics_listener = TcpListener::bind(&opts.metrics_addr)
        .await
        .with_context(|| format!("binding metrics on {}", opts.metrics_addr))?;
    {
        let s = shared.clone();
        set.spawn(async move { serve_metrics(s, metrics_listener).await });
    }
    info!(socket = %opts.socket.display(), metrics = %opts.metrics_addr, webhook = ?opts.alert_webhook, generation = shared.active.read().expect("active lock").generation, "chokepoint daemon ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
        _ = term.recv() => info!("SIGTERM"),
        r = set.join_next() => warn!(?r, "a daemon task ended"),
    }
    shared.shutting_down.store(true, Ordering::Relaxed);
    // Flush pending alerts.
    let pending = dedup.lock().expect("dedup lock").due(true);
    for a in pending {
        publish_alert(&shared, a, &alert_q_tx);
    }
    let _ = std::fs::remove_file(&opts.socket);
    let _ = std::fs::remove_file(&opts.attest_socket);
    info!(
        "daemon stopping; programs stay attached and keep enforcing generation {}",
        shared.active.read().expect("active lock").generation
    );
    set.abort_all();
    Ok(())
}

fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // A live daemon answers; a stale socket does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another daemon is listening on {}", path.display());
        }
        std::fs::remove_file(path)?;
    }
    // SAFETY: umask has no preconditions; it makes the socket 0600 from creation on.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

async fn consume(
    shared: Arc<Shared>,
    events: aya::maps::RingBuf<aya::maps::MapData>,
    dedup: Arc<Mutex<Deduper>>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd lives.
    let mut afd = unsafe { tokio::io::unix::AsyncFd::register(events) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer: {}", e.into_parts().1))?;
    let mut paths = PathCache::new(shared.opts.cgroup_root.clone());
    let mut audit_log = match &shared.opts.audit_log {
        Some(p) => Some(JsonLines::open(
            p,
            shared.opts.audit_log_max_bytes,
            shared.opts.audit_log_keep,
        )?),
        None => None,
    };
    // Test knob: slow the consumer down to exercise loss accounting.
    let delay = std::env::var("CHOKEPOINT_CONSUMER_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let limit = if delay.is_some() { 64 } else { 4096 };
    // The kernel wakes us only when we had caught up (adaptive notification). After a wakeup we
    // wait COALESCE before draining, so a busy workload costs at most ~200 wakeups/s and an idle
    // one none.
    const COALESCE: Duration = Duration::from_millis(5);
    // fsync of the audit log: at most every SYNC interval while records flow, and once more when
    // they stop.
    const SYNC: Duration = Duration::from_millis(100);
    let mut last_sync = Instant::now();
    let mut dirty = false;
    let mut drained = true;
    loop {
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        } else if drained {
            let wait = if dirty {
                SYNC
            } else {
                Duration::from_secs(3600)
            };
            match tokio::time::timeout(wait, afd.readable_mut()).await {
                Ok(g) => {
                    g?.clear_ready();
                    tokio::time::sleep(COALESCE).await;
                }
                Err(_) => {
                    if let Some(l) = audit_log.as_mut() {
                        l.sync()?;
                    }
                    dirty = false;
                    last_sync = Instant::now();
                    continue;
                }
            }
        }
        drained = true;
        let mut records = Vec::new();
        {
            let mut names = EnrichNames {
                shared: &shared,
                paths: Some(&mut paths),
            };
            let rb = afd.get_mut();
            while let Some(item) = rb.next() {
                if item.len() >= size_of::<Event>() {
                    // SAFETY: the kernel wrote a whole Event; read_unaligned copes with alignment.
                    let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
                    let r = Arc::new(audit::enrich(&ev, &shared.node, &mut names));
                    // The line reaches the file (page cache) before the ring slot is released
                    // (when `item` drops): a killed daemon loses no consumed record.
                    if let Some(l) = audit_log.as_mut()
                        && let Err(e) = l.write(r.as_ref())
                    {
                        shared.metrics.lost_user.fetch_add(1, Ordering::Relaxed);
                        error!(error = %e, "audit log write failed (record counted as lost)");
                    }
                    records.push(r);
                }
                if records.len() >= limit {
                    drained = false;
                    break;
                }
            }
        }
        if records.is_empty() {
            continue;
        }
        shared
            .metrics
            .delivered
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        deliver(&shared, &records, &dedup);
        dirty = true;
        if last_sync.elapsed() >= SYNC {
            if let Some(l) = audit_log.as_mut() {
                l.sync()?;
            }
            dirty = false;
            last_sync = Instant::now();
        }
    }
}

fn deliver(shared: &Shared, records: &[Arc<FlowRecord>], dedup: &Mutex<Deduper>) {
    let mut d = dedup.lock().expect("dedup lock");
    let mut ring = shared.flows.lock().expect("flows lock");
    // Counted per batch: one metrics update per distinct (identity, verdict, reason).
    let mut counts: HashMap<(&str, &str, &str), u64> = HashMap::new();
    for r in records {
        if shared.opts.audit_stdout
            && let Ok(s) = serde_json::to_string(r.as_ref())
        {
            println!("{s}");
        }
        if r.verdict != "lost" {
            *counts
                .entry((
                    r.identity.as_deref().unwrap_or("unknown"),
                    r.verdict.as_str(),
                    r.reason.as_str(),
                ))
                .or_insert(0) += 1;
            d.observe(r);
        }
        ring.push(r.clone());
        let _ = shared.flow_tx.send(r.clone());
    }
    for ((identity, verdict, reason), n) in counts {
        shared.metrics.decisions(identity, verdict, reason, n);
    }
}

fn publish_alert(shared: &Shared, a: Alert, q: &mpsc::Sender<Alert>) {
    warn!(
        identity = a.identity.as_deref().unwrap_or("-"),
        dst = a.dst.as_deref().unwrap_or("-"),
        reason = %a.reason,
        count = a.count,
        severity = %a.severity,
        "bypass alert"
    );
    shared.metrics.alert(&a.reason);
    if let Some(path) = &shared.opts.alert_log
        && let Ok(mut l) = JsonLines::open(path, 64 << 20, 5)
    {
        let _ = l.write(&a).and_then(|_| l.sync());
    }
    if shared.opts.alert_webhook.is_some() && q.try_send(a.clone()).is_err() {
        shared.webhook.dropped.fetch_add(1, Ordering::Relaxed);
    }
    let a = Arc::new(a);
    shared.alerts.lock().expect("alerts lock").push(a.clone());
    let _ = shared.alert_tx.send(a);
}

async fn alert_flusher(shared: Arc<Shared>, dedup: Arc<Mutex<Deduper>>, q: mpsc::Sender<Alert>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let due = dedup.lock().expect("dedup lock").due(false);
        for a in due {
            publish_alert(&shared, a, &q);
        }
        shared.metrics.webhook_failures.store(
            shared.webhook.failures.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }
}

/// Watches the directories where selected cgroups live (inotify) and re-binds identities the
/// moment a selected cgroup is created, deleted or recreated: the window between `mkdir` and the
/// first process moving in is microseconds, not the housekeeping period.
fn watch_cgroups(shared: Arc<Shared>) {
    loop {
        if shared.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: inotify_init1 has no preconditions.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            warn!("inotify unavailable; selected cgroups are re-bound every 500 ms only");
            return;
        }
        for d in shared.watch_dirs() {
            let Ok(c) = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: valid fd and C string.
            unsafe {
                libc::inotify_add_watch(
                    fd,
                    c.as_ptr(),
                    libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO | libc::IN_ONLYDIR,
                )
            };
        }
        // Bindings may have changed between the last reconcile and arming the watches.
        shared.reconcile();
        let mut pfds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.rearm_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Until a selected cgroup changes, the policy changes (re-arm), or 500 ms pass.
        // SAFETY: poll on our descriptors.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, 500) };
        if n > 0 {
            let mut buf = [0u8; 4096];
            // SAFETY: reads into our buffer drain both descriptors; the contents are not needed.
            unsafe {
                while libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
                while libc::read(shared.rearm_fd, buf.as_mut_ptr().cast(), 8) > 0 {}
            }
            shared.reconcile();
        }
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
    }
}

/// Every 500 ms: kernel loss counters → `lost` records, identity cgroup reconciliation, expired
/// grants pruned from state.
async fn housekeeping(shared: Arc<Shared>, baseline_lost: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_dns = Instant::now();
    let mut last_lost: Option<u64> = Some(baseline_lost);
    loop {
        tick.tick().await;
        let snap = shared.stats.lock().expect("stats lock").snapshot();
        if let Ok(s) = snap {
            shared.metrics.lost_kernel.store(s.lost, Ordering::Relaxed);
            if let Some(prev) = last_lost
                && s.lost > prev
            {
                let g = shared.active.read().expect("active lock").generation;
                let r = Arc::new(audit::lost_record(
                    &shared.node,
                    s.lost - prev,
                    "ring_buffer_full",
                    g,
                ));
                let mut ring = shared.flows.lock().expect("flows lock");
                ring.push(r.clone());
                drop(ring);
                let _ = shared.flow_tx.send(r.clone());
                if let Some(p) = &shared.opts.audit_log
                    && let Ok(mut l) = JsonLines::open(
                        p,
                        shared.opts.audit_log_max_bytes,
                        shared.opts.audit_log_keep,
                    )
                {
                    let _ = l.write(r.as_ref()).and_then(|_| l.sync());
                }
                let _ = shared
                    .store
                    .lock()
                    .expect("store lock")
                    .set_lost_reported(s.lost);
            }
            last_lost = Some(s.lost);
        }
        let reconcile = shared.clone();
        let _ = tokio::task::spawn_blocking(move || reconcile.reconcile()).await;
        if last_dns.elapsed() >= shared.opts.dns_refresh {
            last_dns = Instant::now();
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || s.refresh_dns()).await;
        }
        let prune = {
            let store = shared.store.lock().expect("store lock");
            match store.grants() {
                Ok(g) => {
                    let now = util::wall_ns();
                    let live: Vec<StoredGrant> = g
                        .iter()
                        .filter(|x| x.expires_wall_ns > now)
                        .cloned()
                        .collect();
                    if live.len() != g.len() {
                        let _ = store.set_grants(&live);
                        true
                    } else {
                        false
                    }
                }
                Err(_) => false,
            }
        };
        if prune {
            let _ = shared.sync_grants();
        }
    }
}

async fn serve_metrics(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let s = shared.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (code, ctype, body) = match path {
                "/metrics" => {
                    let s2 = s.clone();
                    let body = tokio::task::spawn_blocking(move || s2.metrics.render(&s2.gauges()))
                        .await
                        .unwrap_or_default();
                    ("200 OK", "text/plain; version=0.0.4", body)
                }
                "/healthz" | "/readyz" => {
                    let st = s.status_json();
                    let healthy = st["health"] != "not_enforcing";
                    (
                        if healthy {
                            "200 OK"
                        } else {
                            "503 Service Unavailable"
                        },
                        "application/json",
                        st.to_string(),
                    )
                }
                _ => ("404 Not Found", "text/plain", "not found\n".into()),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

async fn serve_api(shared: Arc<Shared>, listener: UnixListener) {
    let limit = Arc::new(Semaphore::new(4096));
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            drop(sock);
            continue;
        };
        let s = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle_conn(s, sock).await {
                tracing::debug!(error = %e, "api connection ended");
            }
        });
    }
}

async fn write_line(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    v: &serde_json::Value,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).expect("serialisable");
    line.push(b'\n');
    w.write_all(&line).await
}

fn err_json(msg: impl std::fmt::Display) -> serde_json::Value {
    json!({"ok": false, "error": msg.to_string()})
}

async fn handle_conn(shared: Arc<Shared>, sock: UnixStream) -> anyhow::Result<()> {
    let cred = sock.peer_cred()?;
    let (r, mut w) = sock.into_split();
    let mut reader = BufReader::new(r).take(api::MAX_REQUEST_BYTES as u64 + 1);
    let mut line = Vec::new();
    let read =
        tokio::time::timeout(api::REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    shared.metrics.api_requests.fetch_add(1, Ordering::Relaxed);
    match read {
        Err(_) => {
            write_line(
                &mut w,
                &err_json(format!(
                    "request not received within {}s",
                    api::REQUEST_TIMEOUT.as_secs()
                )),
            )
            .await?;
            return Ok(());
        }
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(_)) => {}
    }
    if line.len() > api::MAX_REQUEST_BYTES {
        write_line(
            &mut w,
            &err_json(format!(
                "request larger than {} bytes",
                api::MAX_REQUEST_BYTES
            )),
        )
        .await?;
        return Ok(());
    }
    if line.last() != Some(&b'\n') {
        write_line(
            &mut w,
            &err_json("truncated request: no terminating newline before the connection closed"),
        )
        .await?;
        return Ok(());
    }
    if cred.uid() != 0 {
        write_line(
            &mut w,
            &err_json(format!(
                "permission denied: uid {} is not root; the local API is for root only",
                cred.uid()
            )),
        )
        .await?;
        return Ok(());
    }
    let req = match api::decode(&line) {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.api_errors.fetch_add(1, Ordering::Relaxed);
            write_line(&mut w, &err_json(e)).await?;
            return Ok(());
        }
    };
    let who = (Some(cred.uid()), cred.pid().map(|p| p as u32));
    match req {
        Request::Flows {
            follow,
            identity,
            verdict,
        } => {
            let matches = |r: &FlowRecord| {
                identity
                    .as_ref()
                    .is_none_or(|i| r.identity.as_deref() == Some(i.as_str()))
                    && verdict.as_ref().is_none_or(|v| &r.verdict == v)
            };
            let mut rx = shared.flow_tx.subscribe();
            let recent: Vec<Arc<FlowRecord>> = shared
                .flows
                .lock()
                .expect("flows lock")
                .items
                .iter()
                .filter(|r| matches(r))
                .cloned()
                .collect();
            if !follow {
                write_line(&mut w, &json!({"ok": true, "result": recent})).await?;
                return Ok(());
            }
            write_line(&mut w, &json!({"ok": true, "result": null})).await?;
            loop {
                match rx.recv().await {
                    Ok(r) if matches(&r) => {
                        write_line(&mut w, &serde_json::to_value(r.as_ref())?).await?
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let g = shared.active.read().expect("active lock").generation;
                        let lost = audit::lost_record(&shared.node, n, "subscriber_lagged", g);
                        write_line(&mut w, &serde_json::to_value(&lost)?).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
        Request::Alerts { follow } => {
            let mut rx = shared.alert_tx.subscribe();
            let recent: Vec<Arc<Alert>> = shared
                .alerts
                .lock()
                .expect("alerts lock")
                .items
                .iter()
                .cloned()
                .collect();
            if !follow {
                write_line(&mut w, &json!({"ok": true, "result": recent})).await?;
                return Ok(());
            }
            write_line(&mut w, &json!({"ok": true, "result": null})).await?;
            loop {
                match rx.recv().await {
                    Ok(a) => write_line(&mut w, &serde_json::to_value(a.as_ref())?).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
        other => {
            let s = shared.clone();
            let resp = tokio::task::spawn_blocking(move || handle_request(&s, other, who))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("internal error: {e}")));
            let v = match resp {
                Ok(result) => json!({"ok": true, "result": result}),
                Err(e) => {
                    shared.metrics.api_errors.fetch_add(1, Ordering::Relaxed);
                    err_json(format!("{e:#}"))
                }
            };
            write_line(&mut w, &v).await?;
        }
    }
    Ok(())
}

fn handle_request(
    shared: &Shared,
    req: Request,
    who: (Option<u32>, Option<u32>),
) -> anyhow::Result<serde_json::Value> {
    match req {
        Request::Status => Ok(shared.status_json()),
        Request::Identities => Ok(shared.identities_json()),
        Request::PolicyShow => {
            let a = shared.active.read().expect("active lock");
            Ok(shared.policy_json(a.generation, &a.policy))
        }
        Request::PolicyApply { file, source } => {
            let p = compile_cached(&shared.dns, &file, source.as_bytes())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let previous = shared.active.read().expect("active lock").generation;
            let g = shared.apply(p, "apply", who)?;
            let a = shared.active.read().expect("active lock");
            Ok(json!({"generation": g, "previous": previous, "digest": a.policy.digest}))
        }
        Request::PolicyDiff { file, source } => {
            let p = compile_cached(&shared.dns, &file, source.as_bytes())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let a = shared.active.read().expect("active lock");
            Ok(crate::cli::diff_policies(&a.policy, &p))
        }
        Request::PolicyHistory => {
            let h = shared.store.lock().expect("store lock").history()?;
            let g = shared.active.read().expect("active lock").generation;
            Ok(json!({"generation": g, "history": h}))
        }
        Request::PolicyRollback { generation } => {
            let (current, target) = {
                let store = shared.store.lock().expect("store lock");
                let hist = store.history()?;
                let cur = shared.active.read().expect("active lock").generation;
                let target = match generation {
                    Some(g) => g,
                    None => hist
                        .iter()
                        .find(|m| m.generation == cur)
                        .and_then(|m| m.previous)
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "generation {cur} has no previous generation to roll back to"
                            )
                        })?,
                };
                if target == 0 || !hist.iter().any(|m| m.generation == target) {
                    bail!("no generation {target} in the history");
                }
                (cur, target)
            };
            let src = shared.store.lock().expect("store lock").source(target)?;
            let p = compile_cached(&shared.dns, &format!("generation {target}"), &src)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let g = shared.apply(p, &format!("rollback to {target}"), who)?;
            Ok(json!({"generation": g, "previous": current, "restored": target}))
        }
        Request::Grant {
            identity,
            to,
            ttl_secs,
            task,
        } => {
            if task.trim().is_empty() || task.len() > 256 {
                bail!("--task must be 1 to 256 characters");
            }
            if ttl_secs == 0 || ttl_secs > 7 * 86_400 {
                bail!("--ttl must be between 1s and 7d");
            }
            if !shared
                .active
                .read()
                .expect("active lock")
                .policy
                .identities
                .iter()
                .any(|i| i.name == identity)
            {
                bail!("no identity named `{identity}` in the active policy");
            }
            let (cidrs, spec) = parse_grant_dest(&to).map_err(|e| anyhow::anyhow!(e))?;
            let store = shared.store.lock().expect("store lock");
            let mut grants = store.grants()?;
            let now = util::wall_ns();
            let g = StoredGrant {
                identity: identity.clone(),
                to: to.clone(),
                task: task.clone(),
                task_id: task_id(&task),
                expires_wall_ns: now + ttl_secs as u128 * 1_000_000_000,
                granted_at: util::rfc3339_ns(now),
            };
            grants.retain(|x| x.expires_wall_ns > now);
            grants.push(g.clone());
            let specs = shared.grant_specs(&grants);
            shared
                .tasks
                .write()
                .expect("tasks lock")
                .insert(g.task_id, task.clone());
            shared.maps.lock().expect("maps lock").set_grants(&specs)?;
            if let Err(e) = store.set_grants(&grants) {
                grants.pop();
                let specs = shared.grant_specs(&grants);
                let _ = shared.maps.lock().expect("maps lock").set_grants(&specs);
                return Err(e.into());
            }
            info!(identity, to, task, ttl_secs, by_uid = ?who.0, "grant added");
            Ok(json!({
                "identity": identity, "to": to, "task": task,
                "destinations": cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                "ports": spec.to_string(),
                "expires_at": util::rfc3339_ns(g.expires_wall_ns),
            }))
        }
        Request::Revoke { task } => {
            let store = shared.store.lock().expect("store lock");
            let mut grants = store.grants()?;
            let before = grants.len();
            grants.retain(|g| g.task != task);
            let removed = before - grants.len();
            let specs = shared.grant_specs(&grants);
            store.set_grants(&grants)?;
            shared.maps.lock().expect("maps lock").set_grants(&specs)?;
            info!(task, removed, by_uid = ?who.0, "task revoked");
            Ok(json!({"task": task, "revoked": removed}))
        }
        Request::Attest { peer, local } => {
            crate::attest::answer(shared, &peer, &local).map_err(|(_, e)| anyhow::anyhow!(e))
        }
        Request::Flows { .. } | Request::Alerts { .. } => unreachable!("streamed above"),
    }
}
