//! Rendering of API results: pretty JSON, and the human lines of flows and alerts.

use std::io::Write;

use serde_json::{Value, json};

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
/// document with `json`); with `follow`, each streamed entry as it arrives (one JSON object per
/// line with `json`).
pub(crate) async fn print_entries(
    c: &mut Client,
    first: Value,
    follow: bool,
    json: bool,
    human: fn(&Value) -> String,
) -> anyhow::Result<()> {
    if !follow {
        if json {
            println!(
                "{}",
                serde_json::to_string(&first).unwrap_or_else(|_| "[]".into())
            );
        } else {
            for e in first.as_array().cloned().unwrap_or_default() {
                println!("{}", human(&e));
            }
        }
        return Ok(());
    }
    while let Some(line) = c.next_line().await? {
        let mut out = std::io::stdout().lock();
        if json {
            let _ = writeln!(out, "{line}");
        } else {
            let e: Value = serde_json::from_str(&line).unwrap_or(json!({}));
            let _ = writeln!(out, "{}", human(&e));
        }
        let _ = out.flush();
    }
    Ok(())
}
