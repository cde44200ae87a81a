//! The scale pass: the per-program pass with one identity and with many (each its own cgroup,
//! the gateway and its own rules), the enforced socket being one of them; the lookup cost should
//! not move, the daemon's RSS is reported per size. 1,000 identities get 100 rules each, not
//! 1,000: 1M rules exceed both the rules map (MAX_RULES, two generations) and the 50 MB document
//! limit; the policy allows at most 4,096 identities.

use std::time::Instant;

use anyhow::bail;
use chokepoint_tests::{Cgroup, Daemon, unique};
use serde_json::{Value, json};

use super::{Bed, check, daemon_pid, padding, policy_identities, prog_table, rss_kib};

/// Per `(identities, rules each)` in `scales`: the per-program table, daemon RSS, start + apply
/// and one policy change (CLI round trip and the daemon's request-to-enforcement timings).
pub(super) fn scale_pass(
    bed: &Bed,
    gw: &str,
    udp: &str,
    prog_secs: f64,
    scales: &[(usize, usize)],
) -> anyhow::Result<Value> {
    let mut per_count = json!({});
    for &(count, rules) in scales {
        check()?;
        eprintln!("bench: {count} identities x {rules} rules");
        let pad = padding(rules);
        let parent = Cgroup::new(&unique("cpbench-ids"));
        for i in 1..count {
            parent.child(&format!("i{i}"));
        }
        let doc = policy_identities(&bed.enforced.rel, &parent.rel, count, &pad);
        let t = Instant::now();
        let d = Daemon::start(&doc, &[]);
        let start_s = t.elapsed().as_secs_f64();
        let pid = daemon_pid(&d);
        let cost = prog_table(bed, &d, gw, udp, prog_secs)?;
        // A policy change at this size (one identity's ports change): the CLI round trip.
        let f = d.dir.join("scale.yaml");
        std::fs::write(
            &f,
            doc.replacen(
                "ports: [\"7000/udp\"]",
                "ports: [\"7000/udp\", \"7100/tcp\"]",
                1,
            ),
        )?;
        let t = Instant::now();
        let (ok, out, err) =
            d.try_cli(&["policy", "apply", f.to_str().expect("utf8"), "-o", "json"]);
        if !ok {
            bail!("apply at {count} identities failed: {err}");
        }
        let change_s = t.elapsed().as_secs_f64();
        let timing =
            serde_json::from_str::<Value>(&out).unwrap_or(Value::Null)["timing_ms"].clone();
        per_count[format!("{count}x{rules}")] = json!({
            "identities": count,
            "rules_each": rules,
            "prog_cost": cost,
            "daemon": {"rss_kib": rss_kib(pid), "start_and_apply_s": start_s, "change_s": change_s, "change_timing_ms": timing},
        });
        drop(d);
    }
    Ok(per_count)
}
