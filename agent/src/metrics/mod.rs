//! The Prometheus exposition (DESIGN.md §6), encoded by `prometheus-client`: the classic text
//! format, or OpenMetrics text when the scraper asks for it. Labels are bounded: identity,
//! verdict, reason, program — never addresses.

pub mod family;
mod format;
pub mod process;
pub mod server;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use family::{Family, Snapshot, Value};
pub use format::Format;
use prometheus_client::{metrics::histogram::Histogram, registry::Registry};

use crate::{attest::names::NameStats, httpd::SlotStats};

/// Apply-time histogram buckets (seconds).
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// The agent's counters.
pub struct Metrics {
    decisions: Mutex<BTreeMap<(String, String, String), u64>>,
    bypass: Mutex<BTreeMap<(String, String), u64>>,
    alerts: Mutex<BTreeMap<String, u64>>,
    apply: Histogram,
    /// Records lost in the kernel (ring buffer full), as last read from the counters.
    pub lost_kernel: AtomicU64,
    /// Records dropped in userspace (slow subscribers are not counted: they get gaps, the file
    /// and the buffer do not).
    pub lost_user: AtomicU64,
    /// Records delivered from the ring buffer.
    pub delivered: AtomicU64,
    /// Failed webhook deliveries (each attempt).
    pub webhook_failures: AtomicU64,
    /// Local API requests.
    pub api_requests: AtomicU64,
    /// Attestation lookups that found a connection.
    pub attest_found: AtomicU64,
    /// Attestation lookups that found none.
    pub attest_not_found: AtomicU64,
    /// Malformed attestation requests.
    pub attest_bad_request: AtomicU64,
    /// Local API requests that failed.
    pub api_errors: AtomicU64,
    /// Where attestation answers found their cgroup names.
    pub cgroup_names: Arc<NameStats>,
    /// Connections of the metrics endpoint.
    pub http_metrics: Arc<SlotStats>,
    /// Connections of the attestation endpoint (socket and TCP port).
    pub http_attest: Arc<SlotStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            decisions: Mutex::default(),
            bypass: Mutex::default(),
            alerts: Mutex::default(),
            apply: Histogram::new(BUCKETS),
            lost_kernel: AtomicU64::default(),
            lost_user: AtomicU64::default(),
            delivered: AtomicU64::default(),
            webhook_failures: AtomicU64::default(),
            api_requests: AtomicU64::default(),
            attest_found: AtomicU64::default(),
            attest_not_found: AtomicU64::default(),
            attest_bad_request: AtomicU64::default(),
            api_errors: AtomicU64::default(),
            cgroup_names: Arc::default(),
            http_metrics: Arc::default(),
            http_attest: Arc::default(),
        }
    }
}

/// Live state the exposition reads at scrape time.
pub struct Gauges {
    /// The active generation.
    pub generation: u32,
    /// Programs and whether each is attached.
    pub programs: Vec<(String, bool)>,
    /// Identities and whether each is enforced.
    pub enforcing: Vec<(String, bool)>,
    /// Unsanctioned destinations in the inventory, per identity.
    pub inventory: Vec<(String, usize)>,
    /// Who stops packet sockets of identities (`lsm`, `tc_backstop`, `none`) and on which
    /// interfaces (empty for the LSM, which refuses at `socket()`).
    pub packet_guard: (&'static str, Vec<String>),
    /// The compat syscall guard: `kill`, `not_needed` or `failed` (see `bpf::compat`).
    pub compat_guard: &'static str,
    /// The per-netns TC backstop: (netns inode, `tcx`/`clsact`, interfaces attached, interfaces
    /// where attaching failed) per namespace an identity lives in.
    pub tc_netns: Vec<(u64, &'static str, usize, usize)>,
}

fn int(v: &AtomicU64) -> Value {
    Value::Int(v.load(Ordering::Relaxed))
}

fn l(pairs: &[(&'static str, &str)]) -> family::Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

impl Metrics {
    /// Counts `n` delivered decision records of one (identity, verdict, reason).
    pub fn decisions(&self, identity: &str, verdict: &str, reason: &str, n: u64) {
        *self
            .decisions
            .lock()
            .expect("metrics lock")
            .entry((identity.into(), verdict.into(), reason.into()))
            .or_default() += n;
        if verdict == "deny" || verdict == "audit" {
            *self
                .bypass
                .lock()
                .expect("metrics lock")
                .entry((identity.into(), reason.into()))
                .or_default() += n;
        }
    }

    /// Counts one raised alert.
    pub fn alert(&self, reason: &str) {
        *self
            .alerts
            .lock()
            .expect("metrics lock")
            .entry(reason.into())
            .or_default() += 1;
    }

    /// Observes one policy apply.
    pub fn apply_seconds(&self, secs: f64) {
        self.apply.observe(secs);
    }

    /// Renders the exposition in `format`: the daemon's families, then `extra` (other parts'
    /// families, such as toFQDN's), then the process metrics.
    pub fn render(&self, format: Format, g: &Gauges, extra: Vec<Family>) -> String {
        let mut families = self.families(g);
        families.extend(extra);
        families.extend(process::families());
        let mut registry = Registry::default();
        // The registry appends the period to help texts it holds.
        registry.register(
            "chokepoint_policy_apply_seconds",
            "Time to validate, compile and switch a policy",
            self.apply.clone(),
        );
        registry.register_collector(Box::new(Snapshot(families)));
        let mut out = String::new();
        let r = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
        };
        if r.is_err() {
            tracing::warn!("encoding the metrics failed");
        }
        out
    }

    fn families(&self, g: &Gauges) -> Vec<Family> {
        let mut decisions = Family::counter(
            "chokepoint_decisions_total",
            "Flow decisions recorded, by identity, verdict and reason.",
        );
        for ((i, v, r), c) in self.decisions.lock().expect("metrics lock").iter() {
            decisions.push(
                l(&[("identity", i), ("verdict", v), ("reason", r)]),
                Value::Int(*c),
            );
        }
        let mut bypass = Family::counter(
            "chokepoint_bypass_attempts_total",
            "Denied (or audit would-deny) attempts, by identity and reason.",
        );
        for ((i, r), c) in self.bypass.lock().expect("metrics lock").iter() {
            bypass.push(l(&[("identity", i), ("reason", r)]), Value::Int(*c));
        }
        let lost = self
            .lost_kernel
            .load(Ordering::Relaxed)
            .saturating_add(self.lost_user.load(Ordering::Relaxed));
        let mut programs = Family::gauge(
            "chokepoint_programs_attached",
            "1 when the program's link is pinned and attached.",
        );
        for (p, up) in &g.programs {
            programs.push(l(&[("program", p)]), Value::Int(u64::from(*up)));
        }
        let mut enforcing = Family::gauge(
            "chokepoint_enforcing",
            "1 when the identity's programs are attached and its policy is current.",
        );
        for (i, up) in &g.enforcing {
            enforcing.push(l(&[("identity", i)]), Value::Int(u64::from(*up)));
        }
        let mut inventory = Family::gauge(
            "chokepoint_inventory_destinations",
            "Unsanctioned destinations an identity tried (the shadow-integration inventory; `chokepoint inventory` lists them).",
        );
        for (i, n) in &g.inventory {
            inventory.push(l(&[("identity", i)]), Value::Int(*n as u64));
        }
        let mut guard = Family::gauge(
            "chokepoint_packet_socket_guard",
            "1 for what stops identities' packet (AF_PACKET) sockets: by=\"lsm\" (refused at socket()), by=\"tc_backstop\" (frames dropped on iface), by=\"tc_backstop_netns\" (every interface of each identity netns), by=\"compat_syscall_kill\" (a 32-bit setsockopt that would skip TC kills the caller).",
        );
        let (by, ifaces) = &g.packet_guard;
        if ifaces.is_empty() {
            guard.push(l(&[("by", by), ("iface", "")]), Value::Int(1));
        }
        for i in ifaces {
            guard.push(l(&[("by", by), ("iface", i)]), Value::Int(1));
        }
        if g.compat_guard == "kill" {
            guard.push(
                l(&[("by", "compat_syscall_kill"), ("iface", "")]),
                Value::Int(1),
            );
        }
        let mut netns = Family::gauge(
            "chokepoint_tc_backstop_netns_interfaces",
            "Interfaces of each network namespace an identity lives in, by how the per-netns TC backstop covers them: mode=\"tcx\" (bpf links, Linux 6.6+) or mode=\"clsact\" (qdisc and direct-action filter); state=\"attached\" or \"failed\".",
        );
        for (ino, mode, up, failed) in &g.tc_netns {
            let ino = ino.to_string();
            netns.push(
                l(&[("netns", &ino), ("mode", mode), ("state", "attached")]),
                Value::Int(*up as u64),
            );
            netns.push(
                l(&[("netns", &ino), ("mode", mode), ("state", "failed")]),
                Value::Int(*failed as u64),
            );
        }
        let mut alerts = Family::counter(
            "chokepoint_alerts_total",
            "Bypass alerts raised, by reason.",
        );
        for (r, c) in self.alerts.lock().expect("metrics lock").iter() {
            alerts.push(l(&[("reason", r)]), Value::Int(*c));
        }
        let mut attest = Family::counter(
            "chokepoint_attest_lookups_total",
            "Attestation lookups, by result.",
        );
        for (r, v) in [
            ("found", &self.attest_found),
            ("not_found", &self.attest_not_found),
            ("bad_request", &self.attest_bad_request),
        ] {
            attest.push(l(&[("result", r)]), int(v));
        }
        let n = &self.cgroup_names;
        let mut names = Family::counter(
            "chokepoint_attest_cgroup_names_total",
            "Cgroup names of attestation answers, by source: cache (kept by the cgroup watcher), kernel (one lookup by id, then cached), unknown.",
        );
        for (s, v) in [
            ("cache", &n.cached),
            ("kernel", &n.resolved),
            ("unknown", &n.unknown),
        ] {
            names.push(l(&[("source", s)]), int(v));
        }
        let mut http = Family::counter(
            "chokepoint_http_connections_total",
            "Connections to the metrics and attestation endpoints, by outcome: accepted, evicted (idle, closed to make room at the connection limit), refused (every connection busy).",
        );
        for (endpoint, st) in [
            ("metrics", &self.http_metrics),
            ("attest", &self.http_attest),
        ] {
            for (outcome, v) in [
                ("accepted", &st.accepted),
                ("evicted", &st.evicted),
                ("refused", &st.refused),
            ] {
                http.push(l(&[("endpoint", endpoint), ("outcome", outcome)]), int(v));
            }
        }
        vec![
            decisions,
            bypass,
            Family::counter(
                "chokepoint_records_lost_total",
                "Flow records lost (kernel ring buffer full or userspace queue overflow).",
            )
            .with(vec![], Value::Int(lost)),
            Family::counter(
                "chokepoint_records_delivered_total",
                "Flow records read from the kernel.",
            )
            .with(vec![], int(&self.delivered)),
            Family::gauge(
                "chokepoint_policy_generation",
                "The active policy generation.",
            )
            .with(vec![], Value::Int(u64::from(g.generation))),
            programs,
            enforcing,
            inventory,
            guard,
            netns,
            alerts,
            Family::counter(
                "chokepoint_webhook_failures_total",
                "Failed webhook deliveries (each attempt).",
            )
            .with(vec![], int(&self.webhook_failures)),
            Family::counter("chokepoint_api_requests_total", "Local API requests.")
                .with(vec![], int(&self.api_requests)),
            attest,
            names,
            http,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            generation: 3,
            programs: vec![("cp_connect4".into(), true)],
            enforcing: vec![("agent".into(), false)],
            inventory: vec![],
            packet_guard: ("lsm", vec![]),
            compat_guard: "kill",
            tc_netns: vec![(4_026_531_840, "clsact", 2, 0)],
        }
    }

    #[test]
    fn names_types_and_help_stay_as_they_were() {
        let m = Metrics::default();
        m.decisions("a\"b", "deny", "not_gateway", 5);
        m.alert("raw_socket");
        m.apply_seconds(0.02);
        m.lost_kernel.store(2, Ordering::Relaxed);
        m.lost_user.store(1, Ordering::Relaxed);
        let text = m.render(Format::Prometheus, &gauges(), vec![]);
        for line in [
            "# HELP chokepoint_decisions_total Flow decisions recorded, by identity, verdict and reason.",
            "# TYPE chokepoint_decisions_total counter",
            "chokepoint_decisions_total{identity=\"a\\\"b\",verdict=\"deny\",reason=\"not_gateway\"} 5",
            "chokepoint_bypass_attempts_total{identity=\"a\\\"b\",reason=\"not_gateway\"} 5",
            "chokepoint_records_lost_total 3",
            "# TYPE chokepoint_policy_generation gauge",
            "chokepoint_policy_generation 3",
            "# HELP chokepoint_policy_apply_seconds Time to validate, compile and switch a policy.",
            "# TYPE chokepoint_policy_apply_seconds histogram",
            "chokepoint_policy_apply_seconds_count 1",
            "chokepoint_programs_attached{program=\"cp_connect4\"} 1",
            "chokepoint_enforcing{identity=\"agent\"} 0",
            "chokepoint_packet_socket_guard{by=\"lsm\",iface=\"\"} 1",
            "chokepoint_packet_socket_guard{by=\"compat_syscall_kill\",iface=\"\"} 1",
            "chokepoint_tc_backstop_netns_interfaces{netns=\"4026531840\",mode=\"clsact\",state=\"attached\"} 2",
            "chokepoint_alerts_total{reason=\"raw_socket\"} 1",
            "chokepoint_attest_lookups_total{result=\"found\"} 0",
            "# TYPE process_cpu_seconds_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        assert!(!text.contains("# EOF"));
        let om = m.render(Format::OpenMetrics, &gauges(), vec![]);
        assert!(
            om.lines()
                .any(|l| l == "# TYPE chokepoint_decisions counter")
        );
        assert!(om.lines().any(|l| l == "chokepoint_records_lost_total 3"));
        assert!(om.ends_with("# EOF\n"));
    }
}
