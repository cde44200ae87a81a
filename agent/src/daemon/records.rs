//! The record consumer: drains the kernel ring buffer, enriches each event, writes the audit
//! log, and delivers the batch to the in-memory ring, subscribers, metrics and the alert window.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use chokepoint_common::Event;
use tracing::error;

use super::{EnrichNames, Shared};
use crate::{
    alerts::Deduper,
    audit::{self, AuditEvent, FlowRecord},
    cgroup::PathCache,
};

pub(crate) async fn consume(
    shared: Arc<Shared>,
    events: aya::maps::RingBuf<aya::maps::MapData>,
    dedup: Arc<Mutex<Deduper>>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd lives.
    let mut afd = unsafe { tokio::io::unix::AsyncFd::register(events) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer: {}", e.into_parts().1))?;
    let mut paths = PathCache::new(shared.opts.cgroup_root.clone());
    // Test knob (builds with the `test-hooks` feature only): slow the consumer down to exercise
    // loss accounting.
    #[cfg(feature = "test-hooks")]
    let delay = std::env::var("CHOKEPOINT_CONSUMER_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    #[cfg(not(feature = "test-hooks"))]
    let delay: Option<Duration> = None;
    let limit = if delay.is_some() { 64 } else { 4096 };
    // The kernel wakes us for denials and audits when we had caught up, and for every record once
    // an eighth of the ring is pending; allowed flows never wake us (a wakeup is an interrupt on
    // the connecting task's CPU). So we also drain on a timer: POLL_MIN after a drain that found
    // records, doubling to POLL_MAX while the ring stays empty (an idle daemon wakes 10 times a
    // second). After a wakeup we wait COALESCE before draining, so a busy workload costs at most
    // ~200 wakeups/s.
    const COALESCE: Duration = Duration::from_millis(5);
    const POLL_MIN: Duration = Duration::from_millis(10);
    const POLL_MAX: Duration = Duration::from_millis(100);
    let mut poll = POLL_MIN;
    // fsync of the audit log is the sink's task (at most every 100 ms while records flow, and
    // once more when they stop).
    let mut drained = true;
    loop {
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        } else if drained && let Ok(ready) = tokio::time::timeout(poll, afd.readable_mut()).await {
            ready?.clear_ready();
            tokio::time::sleep(COALESCE).await;
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
                    if let Err(e) = shared.audit.write(record_event(&r), r.as_ref()) {
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
            poll = (poll * 2).min(POLL_MAX);
            continue;
        }
        poll = POLL_MIN;
        shared
            .metrics
            .delivered
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        deliver(&shared, &records, &dedup);
    }
}

/// The audit log `event` of a record.
pub(crate) fn record_event(r: &FlowRecord) -> AuditEvent {
    if r.verdict == "lost" {
        AuditEvent::Lost
    } else {
        AuditEvent::Flow
    }
}

fn deliver(shared: &Shared, records: &[Arc<FlowRecord>], dedup: &Mutex<Deduper>) {
    let mut d = dedup.lock().expect("dedup lock");
    let mut ring = shared.flows.lock().expect("flows lock");
    let mut inv = shared.inventory.lock().expect("inventory lock");
    let mut inv_changed = false;
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
            if inv.observe(r, shared.host_names.as_ref()) {
                inv_changed = true;
            }
        }
        ring.push(r.clone());
        let _ = shared.flow_tx.send(r.clone());
    }
    if inv_changed {
        shared.inventory_dirty.store(true, Ordering::Relaxed);
    }
    for ((identity, verdict, reason), n) in counts {
        shared.metrics.decisions(identity, verdict, reason, n);
    }
}
