//! What the API, metrics and attestation servers read from the daemon: the daemon's side of
//! their traits.

use std::{net::SocketAddr, sync::Arc};

use chokepoint_common::AttestVal;
use tokio::sync::broadcast;

use super::Shared;
use crate::{
    alerts::Alert,
    api::{ApiError, Reply, Request, server::Peer},
    audit::{self, FlowRecord},
    metrics::Metrics,
};

impl crate::api::server::Service for Shared {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn subscribe_flows(&self) -> broadcast::Receiver<Arc<FlowRecord>> {
        self.flow_tx.subscribe()
    }
    fn recent_flows(&self) -> Vec<Arc<FlowRecord>> {
        self.flows
            .lock()
            .expect("flows lock")
            .items
            .iter()
            .cloned()
            .collect()
    }
    fn subscribe_alerts(&self) -> broadcast::Receiver<Arc<Alert>> {
        self.alert_tx.subscribe()
    }
    fn recent_alerts(&self) -> Vec<Arc<Alert>> {
        self.alerts
            .lock()
            .expect("alerts lock")
            .items
            .iter()
            .cloned()
            .collect()
    }
    fn lagged_record(&self, n: u64) -> FlowRecord {
        let g = self.active.read().expect("active lock").generation;
        audit::lost_record(&self.node, n, "subscriber_lagged", g)
    }
    fn handle(&self, req: Request, who: Peer) -> Result<Reply, ApiError> {
        super::handlers::handle_request(self, req, who)
    }
}

impl crate::metrics::server::Source for Shared {
    fn render_metrics(&self, format: crate::metrics::Format) -> String {
        let mut extra = self.fqdn.metric_families();
        extra.push(self.dns_answers.family());
        self.metrics.render(format, &self.gauges(), extra)
    }
    fn status(&self) -> serde_json::Value {
        serde_json::to_value(self.status()).unwrap_or_default()
    }
}

impl crate::attest::Source for Shared {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Option<AttestVal> {
        self.attest.lock().expect("attest lock").lookup(peer, local)
    }
    fn identity_of(&self, generation: u32, ident: u32) -> Option<(String, Option<String>)> {
        Shared::identity_of(self, generation, ident)
    }
    fn task_name(&self, task: u64) -> Option<String> {
        Shared::task_name(self, task)
    }
    fn cgroup_name(&self, id: u64) -> Option<Arc<str>> {
        self.cgroup_names.name(id)
    }
    fn node(&self) -> &str {
        &self.node
    }
}
