//! The alert pipeline: windows closed by the flusher become alerts for the log, the alert file,
//! subscribers and the webhook queue.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use tokio::sync::mpsc;
use tracing::warn;

use super::Shared;
use crate::{
    alerts::{Alert, Deduper},
    audit::AuditEvent,
};

pub(crate) fn publish_alert(shared: &Shared, a: Alert, q: &mpsc::Sender<Alert>) {
    warn!(
        identity = a.identity.as_deref().unwrap_or("-"),
        dst = a.dst.as_deref().unwrap_or("-"),
        reason = %a.reason,
        count = a.count,
        severity = %a.severity,
        "bypass alert"
    );
    shared.metrics.alert(&a.reason);
    if let Err(e) = shared.alert_log.write_synced(AuditEvent::Alert, &a) {
        warn!(error = %e, "alert log write failed");
    }
    // The audit log holds the whole trail, alerts included.
    if let Err(e) = shared.audit.write(
        AuditEvent::Alert,
        &crate::audit::Versioned {
            schema: crate::audit::SCHEMA_VERSION,
            record: &a,
        },
    ) {
        warn!(error = %e, "audit log write of an alert failed");
    }
    if shared.opts.alert_webhook.is_some() && q.try_send(a.clone()).is_err() {
        shared.webhook.dropped.fetch_add(1, Ordering::Relaxed);
    }
    let a = Arc::new(a);
    shared.alerts.lock().expect("alerts lock").push(a.clone());
    let _ = shared.alert_tx.send(a);
}

pub(crate) async fn alert_flusher(
    shared: Arc<Shared>,
    dedup: Arc<Mutex<Deduper>>,
    q: mpsc::Sender<Alert>,
) {
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
