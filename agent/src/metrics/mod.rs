//! Prometheus text exposition (DESIGN.md §6). Labels are bounded: identity, verdict, reason,
//! program — never addresses.

pub mod server;

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

/// Apply-time histogram buckets (seconds).
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// The agent's counters.
#[derive(Default)]
pub struct Metrics {
    decisions: Mutex<BTreeMap<(String, String, String), u64>>,
    bypass: Mutex<BTreeMap<(String, String), u64>>,
    alerts: Mutex<BTreeMap<String, u64>>,
    apply: Mutex<Histogram>,
    /// Records lost in the kernel (ring buffer full), as last read from the counters.
    pub lost_kernel: AtomicU64,
    /// Records dropped in userspace (slow subscribers are not counted: they get gaps, the file
    /// and the buffer do not).
    pub lost_user: AtomicU64,
    /// Records delivered from the ring buffer.
    pub delivered: AtomicU64,
    pub webhook_failures: AtomicU64,
    pub api_requests: AtomicU64,
    /// Attestation lookups by result.
    pub attest_found: AtomicU64,
    pub attest_not_found: AtomicU64,
    pub attest_bad_request: AtomicU64,
    pub api_errors: AtomicU64,
}

/// Escapes a label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Live state the exposition reads at scrape time.
pub struct Gauges {
    pub generation: u32,
    pub programs: Vec<(String, bool)>,
    pub enforcing: Vec<(String, bool)>,
    /// Unsanctioned destinations in the inventory, per identity.
    pub inventory: Vec<(String, usize)>,
    /// Who stops packet sockets of identities (`lsm`, `tc_backstop`, `none`) and on which
    /// interfaces (empty for the LSM, which refuses at `socket()`).
    pub packet_guard: (&'static str, Vec<String>),
    /// The compat syscall guard: `kill`, `not_needed` or `failed` (see `bpf::compat`).
    pub compat_guard: &'static str,
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
        let mut h = self.apply.lock().expect("metrics lock");
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Renders the exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP chokepoint_decisions_total Flow decisions recorded, by identity, verdict and reason."
        );
        let _ = writeln!(o, "# TYPE chokepoint_decisions_total counter");
        for ((i, v, r), c) in self.decisions.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                o,
                "chokepoint_decisions_total{{identity=\"{}\",verdict=\"{}\",reason=\"{}\"}} {c}",
                esc(i),
                esc(v),
                esc(r)
            );
        }
        let _ = writeln!(
            o,
            "# HELP chokepoint_bypass_attempts_total Denied (or audit would-deny) attempts, by identity and reason."
        );
        let _ = writeln!(o, "# TYPE chokepoint_bypass_attempts_total counter");
        for ((i, r), c) in self.bypass.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                o,
                "chokepoint_bypass_attempts_total{{identity=\"{}\",reason=\"{}\"}} {c}",
                esc(i),
                esc(r)
            );
        }
        let lost =
            self.lost_kernel.load(Ordering::Relaxed) + self.lost_user.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "# HELP chokepoint_records_lost_total Flow records lost (kernel ring buffer full or userspace queue overflow)."
        );
        let _ = writeln!(o, "# TYPE chokepoint_records_lost_total counter");
        let _ = writeln!(o, "chokepoint_records_lost_total {lost}");
        let _ = writeln!(
            o,
            "# HELP chokepoint_records_delivered_total Flow records read from the kernel."
        );
        let _ = writeln!(o, "# TYPE chokepoint_records_delivered_total counter");
        let _ = writeln!(
            o,
            "chokepoint_records_delivered_total {}",
            self.delivered.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP chokepoint_policy_generation The active policy generation."
        );
        let _ = writeln!(o, "# TYPE chokepoint_policy_generation gauge");
        let _ = writeln!(o, "chokepoint_policy_generation {}", g.generation);
        {
            let h = self.apply.lock().expect("metrics lock");
            let _ = writeln!(
                o,
                "# HELP chokepoint_policy_apply_seconds Time to validate, compile and switch a policy."
            );
            let _ = writeln!(o, "# TYPE chokepoint_policy_apply_seconds histogram");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "chokepoint_policy_apply_seconds_bucket{{le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "chokepoint_policy_apply_seconds_bucket{{le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(o, "chokepoint_policy_apply_seconds_sum {}", h.sum);
            let _ = writeln!(o, "chokepoint_policy_apply_seconds_count {}", h.count);
        }
        let _ = writeln!(
            o,
            "# HELP chokepoint_programs_attached 1 when the program's link is pinned and attached."
        );
        let _ = writeln!(o, "# TYPE chokepoint_programs_attached gauge");
        for (p, up) in &g.programs {
            let _ = writeln!(
                o,
                "chokepoint_programs_attached{{program=\"{}\"}} {}",
                esc(p),
                u8::from(*up)
            );
        }
        let _ = writeln!(
            o,
            "# HELP chokepoint_enforcing 1 when the identity's programs are attached and its policy is current."
        );
        let _ = writeln!(o, "# TYPE chokepoint_enforcing gauge");
        for (i, up) in &g.enforcing {
            let _ = writeln!(
                o,
                "chokepoint_enforcing{{identity=\"{}\"}} {}",
                esc(i),
                u8::from(*up)
            );
        }
        let _ = writeln!(
            o,
            "# HELP chokepoint_inventory_destinations Unsanctioned destinations an identity tried (the shadow-integration inventory; `chokepoint inventory` lists them)."
        );
        let _ = writeln!(o, "# TYPE chokepoint_inventory_destinations gauge");
        for (i, n) in &g.inventory {
            let _ = writeln!(
                o,
                "chokepoint_inventory_destinations{{identity=\"{}\"}} {n}",
                esc(i)
            );
        }
        let _ = writeln!(
            o,
            "# HELP chokepoint_packet_socket_guard 1 for what stops identities' packet (AF_PACKET) sockets: by=\"lsm\" (refused at socket()), by=\"tc_backstop\" (frames dropped on iface), by=\"tc_backstop_netns\" (every interface of each identity netns), by=\"compat_syscall_kill\" (a 32-bit setsockopt that would skip TC kills the caller)."
        );
        let _ = writeln!(o, "# TYPE chokepoint_packet_socket_guard gauge");
        let (by, ifaces) = &g.packet_guard;
        if ifaces.is_empty() {
            let _ = writeln!(
                o,
                "chokepoint_packet_socket_guard{{by=\"{by}\",iface=\"\"}} 1"
            );
        }
        for i in ifaces {
            let _ = writeln!(
                o,
                "chokepoint_packet_socket_guard{{by=\"{by}\",iface=\"{}\"}} 1",
                esc(i)
            );
        }
        if g.compat_guard == "kill" {
            let _ = writeln!(
                o,
                "chokepoint_packet_socket_guard{{by=\"compat_syscall_kill\",iface=\"\"}} 1"
            );
        }
        let _ = writeln!(
            o,
            "# HELP chokepoint_alerts_total Bypass alerts raised, by reason."
        );
        let _ = writeln!(o, "# TYPE chokepoint_alerts_total counter");
        for (r, c) in self.alerts.lock().expect("metrics lock").iter() {
            let _ = writeln!(o, "chokepoint_alerts_total{{reason=\"{}\"}} {c}", esc(r));
        }
        let _ = writeln!(
            o,
            "# HELP chokepoint_webhook_failures_total Failed webhook deliveries (each attempt)."
        );
        let _ = writeln!(o, "# TYPE chokepoint_webhook_failures_total counter");
        let _ = writeln!(
            o,
            "chokepoint_webhook_failures_total {}",
            self.webhook_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP chokepoint_api_requests_total Local API requests."
        );
        let _ = writeln!(o, "# TYPE chokepoint_api_requests_total counter");
        let _ = writeln!(
            o,
            "chokepoint_api_requests_total {}",
            self.api_requests.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP chokepoint_attest_lookups_total Attestation lookups, by result."
        );
        let _ = writeln!(o, "# TYPE chokepoint_attest_lookups_total counter");
        for (r, v) in [
            ("found", &self.attest_found),
            ("not_found", &self.attest_not_found),
            ("bad_request", &self.attest_bad_request),
        ] {
            let _ = writeln!(
                o,
                "chokepoint_attest_lookups_total{{result=\"{r}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        process_metrics(&mut o);
        o
    }
}

/// `process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_start_time_seconds`.
fn process_metrics(o: &mut String) {
    let tick = 100.0; // USER_HZ
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
    {
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields after the comm: state is index 0; utime 11, stime 12, rss 21.
        let ut: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0);
        let st: f64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
        let rss: u64 = f.get(21).and_then(|s| s.parse().ok()).unwrap_or(0);
        let _ = writeln!(o, "# TYPE process_cpu_seconds_total counter");
        let _ = writeln!(o, "process_cpu_seconds_total {}", (ut + st) / tick);
        let _ = writeln!(o, "# TYPE process_resident_memory_bytes gauge");
        let _ = writeln!(o, "process_resident_memory_bytes {}", rss * 4096);
    }
}
