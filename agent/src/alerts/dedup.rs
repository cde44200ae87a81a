//! The alert window: one alert per (identity, pod, destination, reason) per window, with a count
//! and first/last seen (the pod is part of the key so that each pod's attempts are named by an
//! alert of their own and `alerts --pod` finds them).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{audit::FlowRecord, util};

/// One alert.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    /// When the alert was emitted (RFC 3339, UTC, nanoseconds): the window's close.
    pub time: String,
    /// The node the attempts were seen on.
    pub node: String,
    /// `critical`, `high` or `warning` (see [`severity`]).
    pub severity: String,
    /// The identity that made the attempts.
    pub identity: Option<String>,
    /// The identity's tenant.
    pub tenant: Option<String>,
    /// Task id of the grant in force at the first attempt.
    pub task: Option<String>,
    /// The destination tried (`ip:port`).
    pub dst: Option<String>,
    /// The flow record's reason (why it was denied or would have been).
    pub reason: String,
    /// `deny`, or `audit` for an identity in audit mode.
    pub verdict: String,
    /// Attempts in the window.
    pub count: u64,
    /// Time of the first attempt in the window (RFC 3339).
    pub first_seen: String,
    /// Time of the last attempt in the window (RFC 3339).
    pub last_seen: String,
    /// Policy generation of the first attempt.
    pub policy_generation: u32,
    /// Process id of the first attempt's task.
    pub pid: Option<u32>,
    /// Command name of the first attempt's task.
    pub comm: Option<String>,
    /// On Kubernetes: the pod's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// On Kubernetes: the pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// On Kubernetes: the pod's service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

struct Pending {
    alert: Alert,
    opened: Instant,
}

/// The deduplicating window.
pub struct Deduper {
    window: Duration,
    open: HashMap<Key, Pending>,
}

/// What attempts are grouped by: identity, pod (namespace and name), destination, reason.
type Key = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

/// Severity of a bypass reason.
pub fn severity(reason: &str, verdict: &str) -> &'static str {
    if verdict == "audit" {
        return "warning";
    }
    match reason {
        "raw_socket" | "link_local" | "dns_resolver" | "malformed" => "critical",
        _ => "high",
    }
}

impl Deduper {
    /// An empty window of length `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            open: HashMap::new(),
        }
    }

    /// Takes a record; only deny and audit records are bypass attempts.
    pub fn observe(&mut self, r: &FlowRecord) {
        if r.verdict != "deny" && r.verdict != "audit" {
            return;
        }
        let key = (
            r.identity.clone(),
            r.namespace.clone(),
            r.pod.clone(),
            r.dst.clone(),
            r.reason.clone(),
        );
        match self.open.get_mut(&key) {
            Some(p) => {
                p.alert.count += 1;
                p.alert.last_seen.clone_from(&r.time);
            }
            None => {
                self.open.insert(
                    key,
                    Pending {
                        alert: Alert {
                            time: r.time.clone(),
                            node: r.node.clone(),
                            severity: severity(&r.reason, &r.verdict).into(),
                            identity: r.identity.clone(),
                            tenant: r.tenant.clone(),
                            task: r.task.clone(),
                            dst: r.dst.clone(),
                            reason: r.reason.clone(),
                            verdict: r.verdict.clone(),
                            count: 1,
                            first_seen: r.time.clone(),
                            last_seen: r.time.clone(),
                            policy_generation: r.policy_generation,
                            pid: r.pid,
                            comm: r.comm.clone(),
                            namespace: r.namespace.clone(),
                            pod: r.pod.clone(),
                            service_account: r.service_account.clone(),
                        },
                        opened: Instant::now(),
                    },
                );
            }
        }
    }

    /// Alerts whose window has closed (all of them with `all`).
    pub fn due(&mut self, all: bool) -> Vec<Alert> {
        let window = self.window;
        let keys: Vec<_> = self
            .open
            .iter()
            .filter(|(_, p)| all || p.opened.elapsed() >= window)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<Alert> = keys
            .into_iter()
            .filter_map(|k| self.open.remove(&k))
            .map(|p| {
                let mut a = p.alert;
                a.time = util::rfc3339_ns(util::wall_ns());
                a
            })
            .collect();
        out.sort_by(|a, b| a.first_seen.cmp(&b.first_seen));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(dst: &str, verdict: &str) -> FlowRecord {
        crate::audit::FlowRecord {
            verdict: verdict.into(),
            dst: Some(dst.into()),
            identity: Some("a".into()),
            reason: "not_gateway".into(),
            ..crate::audit::lost_record("n", 0, "x", 1)
        }
    }

    #[test]
    fn dedupes_per_window() {
        let mut d = Deduper::new(Duration::from_secs(3600));
        for _ in 0..5 {
            d.observe(&rec("1.2.3.4:80", "deny"));
        }
        d.observe(&rec("1.2.3.5:80", "deny"));
        d.observe(&rec("1.2.3.5:80", "allow"));
        assert!(d.due(false).is_empty());
        let all = d.due(true);
        assert_eq!(all.len(), 2);
        let a = all
            .iter()
            .find(|a| a.dst.as_deref() == Some("1.2.3.4:80"))
            .unwrap();
        assert_eq!(a.count, 5);
    }

    #[test]
    fn two_pods_of_one_identity_get_an_alert_each() {
        let mut d = Deduper::new(Duration::from_secs(3600));
        for (pod, n) in [("p-0", 3), ("p-1", 2)] {
            for _ in 0..n {
                d.observe(&FlowRecord {
                    namespace: Some("team-a".into()),
                    pod: Some(pod.into()),
                    service_account: Some("default".into()),
                    ..rec("1.2.3.4:80", "deny")
                });
            }
        }
        let mut all = d.due(true);
        all.sort_by(|a, b| a.pod.cmp(&b.pod));
        let got: Vec<(Option<&str>, u64)> =
            all.iter().map(|a| (a.pod.as_deref(), a.count)).collect();
        assert_eq!(got, [(Some("p-0"), 3), (Some("p-1"), 2)]);
        assert!(all.iter().all(|a| a.namespace.as_deref() == Some("team-a")));
    }
}
