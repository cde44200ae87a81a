//! Rendering of API results: pretty JSON, and the human text of each typed result.

use std::{fmt::Write as _, io::Write};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::Format;
use crate::{
    alerts::Alert,
    api::{
        Client,
        responses::{Attestation, Bound, Granted, Identities, Inventory, Status},
    },
    audit::FlowRecord,
};

/// Prints `v` as pretty JSON on stdout.
pub(crate) fn print_json<T: Serialize + ?Sized>(v: &T) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
}

/// `-` for a missing value.
fn or_dash(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

/// A number, or `null` when it is missing (as the JSON shows it).
fn or_null<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "null".into(), |n| n.to_string())
}

/// The human line of a flow record.
pub(crate) fn flow_line(r: &FlowRecord) -> String {
    if r.verdict == "lost" {
        return format!(
            "{} LOST {} records ({})",
            r.time,
            or_null(r.count),
            r.reason
        );
    }
    format!(
        "{} {:<5} {:<16} {:<12} {:<22} {:<10} pid={} comm={} gen={} rule={}",
        r.time,
        r.verdict,
        or_dash(r.identity.as_deref()),
        r.reason,
        or_dash(r.dst.as_deref()),
        or_dash(r.hook.as_deref()),
        or_null(r.pid),
        or_dash(r.comm.as_deref()),
        r.policy_generation,
        or_dash(r.rule.as_deref()),
    )
}

/// A line of `alerts`: an alert, or the `lost` record of a subscriber that fell behind.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum AlertEntry {
    /// An alert.
    Alert(Alert),
    /// Alerts this subscriber missed.
    Lost(FlowRecord),
}

/// The human line of an alert.
pub(crate) fn alert_line(a: &AlertEntry) -> String {
    let a = match a {
        AlertEntry::Alert(a) => a,
        AlertEntry::Lost(r) => return flow_line(r),
    };
    format!(
        "{} ALERT {:<8} identity={} tenant={} dst={} reason={} count={} first={} last={}",
        a.time,
        a.severity,
        or_dash(a.identity.as_deref()),
        or_dash(a.tenant.as_deref()),
        or_dash(a.dst.as_deref()),
        a.reason,
        a.count,
        a.first_seen,
        a.last_seen
    )
}

/// Prints `flows`/`alerts` output: without `follow`, the entries the daemon returned (one JSON
/// array with `json`, one object per line with `jsonl`); with `follow`, each streamed entry as it
/// arrives (one JSON object per line with `json` or `jsonl`).
pub(crate) async fn print_entries<T: Serialize + DeserializeOwned>(
    c: &mut Client,
    first: Option<Vec<T>>,
    follow: bool,
    format: Format,
    human: fn(&T) -> String,
) -> anyhow::Result<()> {
    if !follow {
        let entries = first.unwrap_or_default();
        let mut out = std::io::stdout().lock();
        match format {
            Format::Json => {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&entries).unwrap_or_else(|_| "[]".into())
                );
            }
            Format::Jsonl => {
                for e in &entries {
                    let _ = writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default());
                }
            }
            Format::Text => {
                for e in &entries {
                    let _ = writeln!(out, "{}", human(e));
                }
            }
        }
        return Ok(());
    }
    while let Some(line) = c.next_line().await? {
        let mut out = std::io::stdout().lock();
        let written = if format == Format::Text {
            match serde_json::from_str::<T>(&line) {
                Ok(e) => writeln!(out, "{}", human(&e)),
                Err(e) => writeln!(out, "(unreadable entry: {e}) {line}"),
            }
        } else {
            writeln!(out, "{line}")
        };
        // A closed stdout (`| head`) ends the stream.
        if written.and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(())
}

/// The human form of `status`.
pub(crate) fn status_text(r: &Status) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "health:      {}", r.health.as_str());
    let _ = writeln!(s, "generation:  {} ({})", r.generation, r.policy.digest);
    for p in &r.programs {
        let state = if p.attached {
            "attached"
        } else {
            "NOT ATTACHED"
        };
        let _ = writeln!(s, "program:     {:<22} {state}", p.program);
    }
    for i in &r.identities {
        let state = if i.enforcing {
            "enforcing"
        } else {
            "NOT ENFORCING"
        };
        let _ = writeln!(s, "identity:    {:<22} {state}", i.name);
    }
    for p in &r.problems {
        let _ = writeln!(s, "problem:     {p}");
    }
    let _ = writeln!(
        s,
        "records:     {} delivered, {} lost",
        r.records.delivered, r.records.lost
    );
    s
}

/// The human form of `identities`.
pub(crate) fn identities_text(r: &Identities) -> String {
    let mut s = String::new();
    for i in &r.identities {
        let cgroup = match &i.bound {
            Bound::Cgroup { .. } => i.selector.cgroup_path.as_deref().unwrap_or(""),
            Bound::Pods { .. } => "",
        };
        let mode = match i.mode {
            crate::policy::compile::Mode::Enforce => "enforce",
            crate::policy::compile::Mode::Audit => "audit",
        };
        let _ = writeln!(
            s,
            "{:<20} tenant={:<10} mode={:<8} cgroup={} cgroups={} enforcing={}",
            i.name,
            or_dash(i.tenant.as_deref()),
            mode,
            cgroup,
            i.cgroups,
            i.enforcing
        );
    }
    s
}

/// The human form of `grant`.
pub(crate) fn granted_text(r: &Granted) -> String {
    format!(
        "granted task {} {} → {} until {}",
        r.task, r.identity, r.to, r.expires_at
    )
}

/// The human form of `attest`.
pub(crate) fn attestation_text(r: &Attestation) -> String {
    format!(
        "identity={} tenant={} task={} pid={} cgroup={} since={} generation={} cookie={}",
        or_dash(r.identity.as_deref()),
        or_dash(r.tenant.as_deref()),
        or_dash(r.task.as_deref()),
        r.pid,
        or_dash(r.cgroup.as_deref()),
        r.since,
        r.policy_generation,
        r.socket_cookie
    )
}

/// The human form of `inventory`.
pub(crate) fn inventory_text(v: &Inventory) -> String {
    let mut s = String::new();
    for i in &v.identities {
        let evicted = if i.evicted > 0 {
            format!(", {} older ones evicted", i.evicted)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{} (tenant {}): {} unsanctioned destinations{evicted}",
            i.identity,
            or_dash(i.tenant.as_deref()),
            i.destinations.len(),
        );
        for d in &i.destinations {
            let join = |set: &std::collections::BTreeSet<String>| {
                set.iter().map(String::as_str).collect::<Vec<_>>().join(",")
            };
            let _ = writeln!(
                s,
                "  {:<40} host={} ports={} reasons={} attempts={} first={} last={}",
                d.dst,
                or_dash(d.host.as_deref()),
                join(&d.ports),
                join(&d.reasons),
                d.attempts,
                d.first_seen,
                d.last_seen,
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_lines_read_alerts_and_lost_records() {
        let lost = crate::audit::lost_record("n1", 7, "subscriber_lagged", 3);
        let line = serde_json::to_string(&lost).unwrap();
        let e: AlertEntry = serde_json::from_str(&line).unwrap();
        assert!(alert_line(&e).contains("LOST 7 records (subscriber_lagged)"));
        let a = Alert {
            time: "t".into(),
            node: "n1".into(),
            severity: "high".into(),
            identity: Some("agent".into()),
            tenant: None,
            task: None,
            dst: Some("10.0.0.1:443".into()),
            reason: "not_gateway".into(),
            verdict: "deny".into(),
            count: 2,
            first_seen: "f".into(),
            last_seen: "l".into(),
            policy_generation: 1,
            pid: None,
            comm: None,
            namespace: None,
            pod: None,
            service_account: None,
        };
        let e: AlertEntry = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(
            alert_line(&e),
            "t ALERT high     identity=agent tenant=- dst=10.0.0.1:443 reason=not_gateway count=2 first=f last=l"
        );
    }
}
