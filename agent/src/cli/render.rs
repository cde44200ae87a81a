//! Rendering of API results: pretty JSON, and the human lines of flows and alerts.

use std::io::Write;

use serde_json::{Value, json};

use super::Format;
use crate::api::Client;

pub(crate) fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
}

pub(crate) fn flow_line(r: &Value) -> String {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    if r["verdict"] == "lost" {
        return format!(
            "{} LOST {} records ({})",
            s("time"),
            r["count"],
            s("reason")
        );
    }
    format!(
        "{} {:<5} {:<16} {:<12} {:<22} {:<10} pid={} comm={} gen={} rule={}",
        s("time"),
        s("verdict"),
        s("identity"),
        s("reason"),
        s("dst"),
        s("hook"),
        r.get("pid").map_or("-".into(), |v| v.to_string()),
        s("comm"),
        r["policy_generation"],
        s("rule"),
    )
}

pub(crate) fn alert_line(a: &Value) -> String {
    let s = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    format!(
        "{} ALERT {:<8} identity={} tenant={} dst={} reason={} count={} first={} last={}",
        s("time"),
        s("severity"),
        s("identity"),
        s("tenant"),
        s("dst"),
        s("reason"),
        a["count"],
        s("first_seen"),
        s("last_seen")
    )
}

/// Prints `flows`/`alerts` output: without `follow`, the entries the daemon returned (one JSON
/// array with `json`, one object per line with `jsonl`); with `follow`, each streamed entry as it
/// arrives (one JSON object per line with `json` or `jsonl`).
pub(crate) async fn print_entries(
    c: &mut Client,
    first: Value,
    follow: bool,
    format: Format,
    human: fn(&Value) -> String,
) -> anyhow::Result<()> {
    if !follow {
        let entries = first.as_array().cloned().unwrap_or_default();
        let mut out = std::io::stdout().lock();
        match format {
            Format::Json => {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&first).unwrap_or_else(|_| "[]".into())
                );
            }
            Format::Jsonl => {
                for e in entries {
                    let _ = writeln!(out, "{e}");
                }
            }
            Format::Text => {
                for e in entries {
                    let _ = writeln!(out, "{}", human(&e));
                }
            }
        }
        return Ok(());
    }
    while let Some(line) = c.next_line().await? {
        let mut out = std::io::stdout().lock();
        let written = if format == Format::Text {
            let e: Value = serde_json::from_str(&line).unwrap_or(json!({}));
            writeln!(out, "{}", human(&e))
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

/// The human form of `inventory`.
pub(crate) fn inventory_text(v: &Value) -> String {
    let mut s = String::new();
    for i in v["identities"].as_array().cloned().unwrap_or_default() {
        let dests = i["destinations"].as_array().cloned().unwrap_or_default();
        s += &format!(
            "{} (tenant {}): {} unsanctioned destinations{}\n",
            i["identity"].as_str().unwrap_or("-"),
            i["tenant"].as_str().unwrap_or("-"),
            dests.len(),
            match i["evicted"].as_u64() {
                Some(n) if n > 0 => format!(", {n} older ones evicted"),
                _ => String::new(),
            }
        );
        for d in dests {
            let list = |k: &str| {
                d[k].as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
            };
            s += &format!(
                "  {:<40} host={} ports={} reasons={} attempts={} first={} last={}\n",
                d["dst"].as_str().unwrap_or("-"),
                d["host"].as_str().unwrap_or("-"),
                list("ports"),
                list("reasons"),
                d["attempts"],
                d["first_seen"].as_str().unwrap_or("-"),
                d["last_seen"].as_str().unwrap_or("-"),
            );
        }
    }
    s
}
