//! Start-up before any kernel state is touched: the checks, the state lock, every socket and
//! port, the webhook's configuration, the audit and alert logs; then the generations to bring up.
//! A second daemon, a taken address or a bad option fails here having changed nothing.

use std::{collections::BTreeMap, sync::Arc};

use anyhow::{Context, bail};
use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};

use super::shared::{KEEP_GENERATIONS, compile_cached, empty_policy};
use crate::{
    alerts::Webhook,
    audit::AuditSink,
    dns::DnsCache,
    options::Options,
    policy::CompiledPolicy,
    state::{StateLock, StateStore},
    util,
};

/// What the daemon holds from before the kernel is touched.
pub(super) struct Endpoints {
    /// The exclusive lock on the state dir (held until the daemon exits).
    pub(super) _state_lock: StateLock,
    /// The local API socket.
    pub(super) listener: UnixListener,
    /// The attestation socket.
    pub(super) attest_listener: UnixListener,
    /// The attestation port, with `--attest-addr`.
    pub(super) attest_tcp: Option<TcpListener>,
    /// The metrics port.
    pub(super) metrics_listener: TcpListener,
    /// The alert webhook, with `--alert-webhook`.
    pub(super) webhook: Option<Webhook>,
    /// The state dir.
    pub(super) store: StateStore,
    /// The audit log's one writer.
    pub(super) audit: AuditSink,
    /// The alert log's one writer.
    pub(super) alert_log: AuditSink,
}

impl Endpoints {
    /// Checks the host, takes the lock, binds every socket and port, checks the webhook and opens
    /// the logs.
    pub(super) async fn open(opts: &Options) -> anyhow::Result<Self> {
        if !rustix::process::geteuid().is_root() {
            bail!("the daemon needs root (CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN)");
        }
        if !opts.cgroup_root.join("cgroup.procs").exists() {
            bail!(
                "--cgroup-root {} is not a cgroup v2 directory (no cgroup.procs)",
                opts.cgroup_root.display()
            );
        }
        // One daemon per state: the lock, then every socket and port, before any kernel state is
        // touched, so a second daemon (or a taken address) exits having changed nothing.
        let state_lock = StateLock::acquire(&opts.state_dir)?;
        let listener = crate::api::server::bind(&opts.socket)?;
        let attest_listener = crate::attest::bind_unix(
            &opts.attest_socket,
            opts.attest_socket_mode,
            opts.attest_group.as_deref(),
        )?;
        let attest_tcp = match &opts.attest_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the attestation endpoint on {addr}"))?,
            ),
            None => None,
        };
        let metrics_listener = TcpListener::bind(&opts.metrics_addr)
            .await
            .with_context(|| format!("binding metrics on {}", opts.metrics_addr))?;
        // The webhook's URL, secret and CA file are checked before any kernel state is touched.
        let webhook = match &opts.alert_webhook {
            Some(url) => Some(Webhook::new(&crate::alerts::webhook::WebhookOptions {
                url: url.clone(),
                secret_file: opts.alert_webhook_secret_file.clone(),
                ca_file: opts.alert_webhook_ca.clone(),
            })?),
            None => None,
        };
        let store = StateStore::open(&opts.state_dir)?;
        // The audit and alert logs' one writer each, opened before any kernel state is touched.
        let audit = match &opts.audit_log {
            Some(p) => open_audit_log(p, opts)?,
            None => AuditSink::disabled(),
        };
        let alert_log = match &opts.alert_log {
            Some(p) => AuditSink::open(p, 64 << 20, 5)
                .with_context(|| format!("opening the alert log {}", p.display()))?,
            None => AuditSink::disabled(),
        };
        Ok(Self {
            _state_lock: state_lock,
            listener,
            attest_listener,
            attest_tcp,
            metrics_listener,
            webhook,
            store,
            audit,
            alert_log,
        })
    }
}

/// The generations the daemon starts with.
pub(super) struct StartGenerations {
    /// The state's current generation, if any.
    pub(super) current: Option<u32>,
    /// The generation to bring up (0: the empty policy).
    pub(super) start_gen: u32,
    /// Its compiled policy.
    pub(super) start_policy: Arc<CompiledPolicy>,
    /// The recent generations by number (records of older ones are named by them).
    pub(super) generations: BTreeMap<u32, Arc<CompiledPolicy>>,
}

impl StartGenerations {
    /// Compiles the state's current generation (with DNS) and the recent ones (without).
    pub(super) fn load(store: &StateStore, dns: &DnsCache, opts: &Options) -> anyhow::Result<Self> {
        // The policy to bring up: the state's current generation, then --policy if it differs.
        let current = store.current()?;
        let mut generations = BTreeMap::new();
        let (start_gen, start_policy) = match current {
            Some(g) => {
                let src = store.source(g).with_context(|| format!("state dir {}: generation {g} is recorded as current but its source is unreadable; refusing to start (pinned enforcement stays as it is)", opts.state_dir.display()))?;
                let p = compile_cached(
                    dns,
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
        Ok(Self {
            current,
            start_gen,
            start_policy,
            generations,
        })
    }
}

/// Opens the audit log with its hash chain: the signing key from the state dir (created on first
/// use), the chain continued from the last line of the newest file, and a `start` checkpoint.
pub(super) fn open_audit_log(path: &std::path::Path, opts: &Options) -> anyhow::Result<AuditSink> {
    use crate::audit::chain;
    let sink = AuditSink::open(path, opts.audit_log_max_bytes, opts.audit_log_keep)
        .with_context(|| format!("opening the audit log {}", path.display()))?;
    let key = chain::load_or_create_key(&opts.state_dir)?;
    let head = chain::resume(&chain::log_files(path, opts.audit_log_keep));
    let node = util::node_name();
    sink.set_transform(Box::new(chain::Chain::new(
        key,
        head,
        opts.audit_checkpoint_every,
        &node,
    )));
    sink.write_synced(
        crate::audit::AuditEvent::Checkpoint,
        &chain::checkpoint_record(chain::CheckpointReason::Start, &node),
    )
    .with_context(|| format!("writing the audit log {}", path.display()))?;
    info!(seq = head.next_seq, "audit log chain continued");
    Ok(sink)
}

/// The inventory from the state dir; an unreadable one is moved aside (`inventory.json.corrupt`)
/// and a new one started: it is a report, not enforcement state.
pub(super) fn load_inventory(dir: &std::path::Path) -> crate::inventory::Inventory {
    match crate::inventory::Inventory::load(dir) {
        Ok(i) => i,
        Err(e) => {
            let path = dir.join(crate::inventory::FILE);
            let aside = dir.join(format!("{}.corrupt", crate::inventory::FILE));
            warn!(error = %e, aside = %aside.display(), "inventory unreadable; starting a new one");
            let _ = std::fs::rename(&path, &aside);
            crate::inventory::Inventory::default()
        }
    }
}
