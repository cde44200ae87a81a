//! `chokepoint daemon`: loads and pins the kernel side, applies policy, consumes records, serves
//! the local API and the metrics endpoint.
//!
//! What a failed task means for enforcement: nothing. Enforcement lives in pinned links and
//! maps; the daemon's tasks only observe and change it. A failed record consumer or API task is
//! logged and ends the daemon (so a supervisor restarts it), and the programs keep enforcing the
//! last applied generation throughout.
//!
//! This file is the supervisor ([`run`]); each job has its own file: [`shared`] (the state the
//! tasks share), [`generations`] (apply, bind, reconcile), [`grants`], [`dns_refresh`],
//! [`cgroup_watch`], [`views`] (status, identities, gauges), [`enrich`], [`records`] (the ring
//! consumer), [`alerting`], [`housekeeping`], [`handlers`] (API commands), [`services`] (what
//! the API, metrics and attestation servers read), [`startup`] (what is opened before the kernel
//! is touched) and [`kube`] (the Kubernetes sources).

mod alerting;
mod backstop;
mod cgroup_watch;
mod dns_answers;
mod dns_refresh;
mod enrich;
mod generations;
mod grants;
mod handlers;
mod housekeeping;
mod kube;
mod records;
mod services;
mod shared;
mod startup;
mod views;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context, bail};
use tokio::sync::{broadcast, mpsc};
use tracing::{error, info, warn};

use self::{
    alerting::{alert_flusher, publish_alert},
    cgroup_watch::watch_cgroups,
    enrich::EnrichNames,
    generations::bind,
    housekeeping::housekeeping,
    records::consume,
    shared::{Active, KEEP_GENERATIONS, Ring, compile_cached},
    startup::{Endpoints, StartGenerations, load_inventory},
};
pub use self::{
    grants::{parse_grant_dest, task_id},
    shared::Shared,
};
pub use crate::options::Options;
use crate::{
    alerts::{Alert, Deduper, WebhookStats, webhook_task},
    bpf::{self, Kernel, StartOptions},
    metrics::Metrics,
    util,
};

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    // Held whole until the daemon returns (the state lock among them); tasks take their parts.
    let ep = Endpoints::open(&opts).await?;
    let dns = crate::dns::DnsCache::new(crate::dns::DEFAULT_GRACE);
    let StartGenerations {
        current,
        start_gen,
        start_policy,
        generations,
    } = StartGenerations::load(&ep.store, &dns, &opts)?;
    // Wakes the cgroup watcher (re-arm on policy and pod changes).
    let rearm = Arc::new(
        rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .context("creating the cgroup watcher's eventfd")?,
    );
    // Kubernetes: the client and the pod cache exist before anything binds.
    let kube = match &opts.kube {
        Some(k) => Some(kube::Kube::connect(&opts, k, &rearm).await?),
        None => None,
    };
    let pods = kube.as_ref().map(|k| k.binder.clone());
    let bindings = bind(&opts.cgroup_root, &start_policy, pods.as_deref());

    // Load/adopt. A fresh install is filled before any program attaches.
    let installed_before = bpf::pins::is_installed(&opts.bpffs);
    let Kernel {
        mut policy,
        attest,
        fqdn,
        events,
        dns_answers,
        stats,
        attached,
        degraded,
        features,
        adopted,
    } = bpf::start(
        &StartOptions {
            bpffs: &opts.bpffs,
            cgroup_root: &opts.cgroup_root,
            tc_ifaces: &opts.tc_ifaces,
            tc_mode: opts.tc_mode,
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

    let inventory = load_inventory(&opts.state_dir);
    let host_names = Arc::new(crate::inventory::names::NameTable::default());
    let fqdn = crate::fqdn::Fqdn::new(
        crate::fqdn::Settings {
            pod_addr: opts.fqdn.pod_addr,
            min_ttl: opts.fqdn.min_ttl,
            grace: opts.fqdn.grace,
            max_per_identity: opts.fqdn.max_per_identity,
            state_file: opts.state_dir.join("fqdn.json"),
            audit: ep.audit.clone(),
            node: util::node_name(),
        },
        fqdn,
        host_names.clone(),
    )?;
    fqdn.on_policy(&start_policy);
    let (flow_tx, _) = broadcast::channel(16_384);
    let (alert_tx, _) = broadcast::channel(1024);
    let metrics = Metrics::default();
    let shared = Arc::new(Shared {
        node: opts
            .kube
            .as_ref()
            .map_or_else(util::node_name, |k| k.node_name.clone()),
        maps: Mutex::new(policy),
        stats: Mutex::new(stats),
        attest: Mutex::new(attest),
        store: Mutex::new(ep.store),
        active: RwLock::new(Active {
            generation: start_gen,
            policy: start_policy.clone(),
            bindings,
            applied_at: util::rfc3339_ns(util::wall_ns()),
            switch_ms: 0.0,
        }),
        generations: RwLock::new(generations),
        tasks: RwLock::new(HashMap::new()),
        flows: Mutex::new(Ring::new(opts.flow_buffer)),
        alerts: Mutex::new(Ring::new(1024)),
        flow_tx,
        alert_tx,
        cgroup_names: crate::attest::CgroupNames::new(
            &opts.cgroup_root,
            metrics.cgroup_names.clone(),
        ),
        metrics,
        audit: ep.audit.clone(),
        alert_log: ep.alert_log.clone(),
        degraded,
        features,
        webhook: Arc::new(WebhookStats::default()),
        shutting_down: AtomicBool::new(false),
        dns,
        inventory: Mutex::new(inventory),
        inventory_dirty: AtomicBool::new(false),
        host_names,
        dns_answers: shared::DnsAnswerCounts::default(),
        fqdn: fqdn.clone(),
        backstop: Mutex::new(None),
        rearm,
        pods: pods.clone(),
        opts: opts.clone(),
    });
    backstop::start(shared.clone()).context("starting the per-netns TC backstop")?;
    shared.sync_grants().context("restoring grants")?;
    {
        let s = shared.clone();
        std::thread::Builder::new()
            .name("cgroup-watch".into())
            .spawn(move || watch_cgroups(s))
            .context("starting the cgroup watcher")?;
    }

    let mut set = tokio::task::JoinSet::new();
    if let (Some(kube), Some(k)) = (&kube, &opts.kube) {
        kube.spawn(&mut set, &shared, k).await;
    }

    // --policy: apply when it differs from the active generation.
    if let Some(path) = &opts.policy {
        let src = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let p = compile_cached(&shared.dns, &path.display().to_string(), &src)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if p.digest != start_policy.digest {
            shared.apply(p, "startup", &crate::peer::Who::daemon())?;
        }
    }

    // Consumers before anything else can produce records for them.
    for (what, sink) in [("audit log", ep.audit), ("alert log", ep.alert_log)] {
        set.spawn(async move {
            if let Err(e) = sink.run_sync().await {
                error!(error = %e, "{what}: fsync failed");
            }
        });
    }
    let (alert_q_tx, alert_q_rx) = mpsc::channel::<Alert>(1024);
    if let Some(hook) = ep.webhook {
        set.spawn(webhook_task(hook, alert_q_rx, shared.webhook.clone(), 5));
    } else {
        drop(alert_q_rx);
    }
    let dedup = Arc::new(Mutex::new(Deduper::new(opts.alert_window)));
    if let Some((ring, lost)) = dns_answers {
        let s = shared.clone();
        set.spawn(async move {
            if let Err(e) = dns_answers::consume(s, ring, lost).await {
                error!(error = %e, "DNS answer consumer failed (the inventory names no new hosts)");
            }
        });
    }
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
            .map_or(0, |s| s.lost);
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
    set.spawn(fqdn.clone().housekeeping());
    {
        let s = shared.clone();
        let listener = ep.listener;
        set.spawn(async move { crate::api::server::serve(s, listener).await });
    }
    {
        let s = shared.clone();
        let listener = crate::httpd::Listener::Unix(ep.attest_listener);
        set.spawn(async move {
            let stats = s.metrics.http_attest.clone();
            crate::attest::serve(s, listener, stats).await;
        });
    }
    if let Some(l) = ep.attest_tcp {
        let s = shared.clone();
        let stats = s.metrics.http_attest.clone();
        set.spawn(
            async move { crate::attest::serve(s, crate::httpd::Listener::Tcp(l), stats).await },
        );
    }
    {
        let s = shared.clone();
        let stats = s.metrics.http_metrics.clone();
        let listener = ep.metrics_listener;
        set.spawn(async move { crate::metrics::server::serve(s, listener, stats).await });
    }
    info!(socket = %opts.socket.display(), metrics = %opts.metrics_addr, webhook = ?opts.alert_webhook, generation = shared.active.read().expect("active lock").generation, "chokepoint daemon ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
        _ = term.recv() => info!("SIGTERM"),
        r = set.join_next() => warn!(?r, "a daemon task ended"),
    }
    stop(&shared, &dedup, &alert_q_tx);
    set.abort_all();
    Ok(())
}

/// The orderly part of a stop: pending alerts flushed, the inventory saved, the audit chain's last
/// span signed, the sockets removed. The programs stay attached.
fn stop(shared: &Arc<Shared>, dedup: &Mutex<Deduper>, alert_q_tx: &mpsc::Sender<Alert>) {
    let opts = &shared.opts;
    shared.shutting_down.store(true, Ordering::Relaxed);
    // Flush pending alerts.
    let pending = dedup.lock().expect("dedup lock").due(true);
    for a in pending {
        publish_alert(shared, a, alert_q_tx);
    }
    shared.save_inventory();
    // The chain's last span is signed before the daemon goes.
    if let Err(e) = shared.audit.write_synced(
        crate::audit::AuditEvent::Checkpoint,
        &crate::audit::chain::checkpoint_record(
            crate::audit::chain::CheckpointReason::Stop,
            &shared.node,
        ),
    ) {
        warn!(error = %e, "writing the stop checkpoint failed");
    }
    let _ = std::fs::remove_file(&opts.socket);
    let _ = std::fs::remove_file(&opts.attest_socket);
    info!(
        "daemon stopping; programs stay attached and keep enforcing generation {}",
        shared.active.read().expect("active lock").generation
    );
}
