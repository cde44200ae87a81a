//! Housekeeping every 500 ms: kernel loss counters become `lost` records, cgroups are reconciled,
//! gateway names re-resolved, expired grants pruned.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use super::Shared;
use crate::{
    audit::{self, AuditEvent},
    state::StoredGrant,
    util,
};

/// How long the audit log is quiet before its open span gets a checkpoint.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(2);

/// How often a changed inventory is written to the state dir (and once more at shutdown).
const INVENTORY_SAVE: Duration = Duration::from_secs(2);

/// Every 500 ms: kernel loss counters → `lost` records, identity cgroup reconciliation, expired
/// grants pruned from state.
pub(crate) async fn housekeeping(shared: Arc<Shared>, baseline_lost: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_dns = Instant::now();
    let mut last_lost: Option<u64> = Some(baseline_lost);
    let mut last_inventory = Instant::now();
    loop {
        tick.tick().await;
        // Records after the last checkpoint are signed once the log is quiet for a moment.
        let (open, quiet) = shared.audit.open_span();
        if open > 0 && quiet >= IDLE_CHECKPOINT {
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || {
                s.audit.write_synced(
                    AuditEvent::Checkpoint,
                    &audit::chain::checkpoint_record(audit::chain::CheckpointReason::Idle, &s.node),
                )
            })
            .await;
        }
        if last_inventory.elapsed() >= INVENTORY_SAVE {
            last_inventory = Instant::now();
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || s.save_inventory()).await;
        }
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
                if let Err(e) = shared.audit.write_synced(AuditEvent::Lost, r.as_ref()) {
                    shared.metrics.lost_user.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "audit log write of a `lost` record failed");
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
        let expired: Vec<StoredGrant> = {
            let store = shared.store.lock().expect("store lock");
            match store.grants() {
                Ok(g) => {
                    let now = util::wall_ns();
                    let (live, gone): (Vec<StoredGrant>, Vec<StoredGrant>) =
                        g.into_iter().partition(|x| x.expires_wall_ns > now);
                    if !gone.is_empty() && store.set_grants(&live).is_err() {
                        Vec::new()
                    } else {
                        gone
                    }
                }
                Err(_) => Vec::new(),
            }
        };
        let prune = !expired.is_empty();
        let generation = shared.active.read().expect("active lock").generation;
        for g in &expired {
            // The kernel stopped honouring it at its expiry; this records that it lapsed.
            let rec = serde_json::json!({
                "schema": audit::SCHEMA_VERSION,
                "time": util::rfc3339_ns(util::wall_ns()),
                "node": shared.node,
                "identity": g.identity,
                "task": g.task,
                "to": g.to,
                "expired_at": util::rfc3339_ns(g.expires_wall_ns),
                "policy_generation": generation,
            });
            tracing::info!(task = %g.task, identity = %g.identity, to = %g.to, "grant expired");
            if let Err(e) = shared.audit.write_synced(AuditEvent::Expiry, &rec) {
                tracing::error!(error = %e, "audit log write of a grant expiry failed");
            }
        }
        if prune {
            let _ = shared.sync_grants();
        }
    }
}
