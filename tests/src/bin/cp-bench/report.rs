//! The markdown summary of a bench run.

use std::fmt::Write as _;

use serde_json::Value;

use super::{PROG_WINDOWS, prog_workload};

/// What each program is invoked for, in the per-program table.
const PROG_UNITS: [(&str, &str); 7] = [
    (
        "cpb_floor",
        "stats floor: a do-nothing `cgroup_skb/egress` program, per packet",
    ),
    ("cp_skb_egress", "`cgroup_skb/egress`, per packet"),
    ("cp_connect4", "`connect4`, per connect"),
    ("cp_sock_create", "`sock_create`, per socket"),
    ("cp_sendmsg4", "`sendmsg4`, per unconnected send"),
    ("cp_sock_ops", "`sockops`, per socket event (both ends)"),
    (
        "cp_skb_ingress",
        "`cgroup_skb/ingress`, per packet (both ends)",
    ),
];

fn ns_cell(v: &Value) -> String {
    match v["ns_per_run"].as_f64() {
        Some(ns) => format!(
            "{ns:.0} ns [{:.0}–{:.0}] ({} runs)",
            v["min"].as_f64().unwrap_or(ns),
            v["max"].as_f64().unwrap_or(ns),
            v["runs"]
        ),
        None => "not run".to_string(),
    }
}

fn prog_line(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, x)| format!("{k} {:.0}", x["ns_per_run"].as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The per-program table of one pass: unrelated and enforced sockets side by side.
fn prog_rows(s: &mut String, v: &Value, a: &str, b: &str) {
    let _ = writeln!(
        s,
        "| program (bpf_stats ns/run: median of {PROG_WINDOWS} windows [range]; includes the stats floor, first row) | {a} | {b} |\n|---|---|---|"
    );
    for (name, label) in PROG_UNITS {
        let _ = writeln!(
            s,
            "| {label} | {} | {} |",
            ns_cell(&v["unrelated"][prog_workload(name)][name]),
            ns_cell(&v["enforced"][prog_workload(name)][name])
        );
    }
    s.push('\n');
}

pub(super) fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Machine: {} CPUs ({}), kernel {}; {} repetitions of {} s per figure, interleaved.\n",
        r["machine"]["cpus"],
        r["machine"]["cpu"].as_str().unwrap_or(""),
        r["machine"]["kernel"].as_str().unwrap_or(""),
        r["reps"],
        r["secs_per_run"]
    );
    let empty = serde_json::Map::new();
    for (n, v) in r["sizes"].as_object().unwrap_or(&empty) {
        let _ = writeln!(s, "### N = {n} rules\n");
        let _ = writeln!(
            s,
            "| figure (ratio to none: median [min–max]) | nft-linear | nft-set | chokepoint |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        for (metric, label) in [
            ("crr", "connect+request+close rate"),
            ("crr_p99_us", "CRR p99 latency"),
            ("rr", "request/response rate"),
            ("bulk", "bulk TCP throughput"),
            ("udp", "small UDP send rate"),
            ("syscall", "getppid rate (every syscall of the host)"),
        ] {
            let f = &v["figures"][metric];
            let cell = |cfg: &str| {
                let x = &f[cfg]["ratio"];
                if x.is_null() {
                    "–".to_string()
                } else {
                    let inside = x["min"].as_f64().unwrap_or(0.0) <= 1.0
                        && x["max"].as_f64().unwrap_or(0.0) >= 1.0;
                    format!(
                        "{:.3} [{:.2}–{:.2}]{}",
                        x["median"].as_f64().unwrap_or(0.0),
                        x["min"].as_f64().unwrap_or(0.0),
                        x["max"].as_f64().unwrap_or(0.0),
                        if inside { " ≈noise" } else { "" }
                    )
                }
            };
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} |",
                cell("nft-linear"),
                cell("nft-set"),
                cell("chokepoint")
            );
        }
        let none_crr = v["figures"]["crr"]["none"]["abs"]["median"]
            .as_f64()
            .unwrap_or(0.0);
        let _ = writeln!(
            s,
            "\n- `none` CRR median: {none_crr:.0} tx/s; denied connect (chokepoint, EPERM): {:.1} µs median",
            v["figures"]["denied_connect_us"]["chokepoint"]["abs"]["median"]
                .as_f64()
                .unwrap_or(0.0)
        );
        let cg = &v["compat_guard"];
        let _ = writeln!(
            s,
            "- compat syscall guard: {} on {} (getppid pays for `raw_tracepoint` only){}",
            cg["hook"].as_str().unwrap_or("not attached"),
            cg["attach"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            cg["kprobe_unavailable"]
                .as_str()
                .map(|w| format!("; kprobes not used: {w}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "- denied connect, per-program cost (bpf_stats, ns/run): {}\n",
            prog_line(&v["prog_cost_denied_connect"])
        );
        prog_rows(
            &mut s,
            &v["prog_cost"],
            "socket of no identity",
            "socket of the enforced identity",
        );
        for (form, key) in [
            ("YAML", "policy_change_yaml"),
            ("JSON", "policy_change_json"),
        ] {
            let c = &v[key];
            let f = |k: &str, q: &str| c[k][q].as_f64().unwrap_or(0.0);
            let _ = writeln!(
                s,
                "- policy change, {form} document (ms, p50 / p99 of {}): CLI apply round trip {:.1} / {:.1}; request to enforcement in the daemon {:.1} / {:.1} (parse + compile {:.1}, bind + write + switch {:.1})",
                c["round_trip_ms"]["n"],
                f("round_trip_ms", "median"),
                f("round_trip_ms", "p99"),
                f("enforced_ms", "median"),
                f("enforced_ms", "p99"),
                f("compile_ms", "median"),
                f("switch_ms", "median"),
            );
        }
        let _ = writeln!(
            s,
            "- daemon start + apply: {:.2} s median",
            v["daemon"]["start_and_apply_s"]["median"]
                .as_f64()
                .unwrap_or(0.0)
        );
        let _ = writeln!(
            s,
            "- records: {} emitted, {} delivered, {} counted lost (accounted: {}), {:.0} records/s delivered",
            v["records"]["emitted"],
            v["records"]["delivered"],
            v["records"]["lost"],
            v["records"]["accounted"],
            v["records"]["records_per_s"].as_f64().unwrap_or(0.0)
        );
        let _ = writeln!(
            s,
            "- daemon RSS idle {} KiB (after the flood {} KiB), idle CPU {:.2}% of a core; nft ruleset load {:.2} s\n",
            v["daemon"]["rss_idle_kib"],
            v["daemon"]["rss_after_flood_kib"],
            v["daemon"]["idle_cpu_pct"].as_f64().unwrap_or(0.0),
            v["nft_load_s"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(ids) = r["identities"].as_object() {
        let _ = writeln!(
            s,
            "### Scale: identities x rules (each identity its own cgroup)\n"
        );
        for (label, v) in ids {
            let _ = writeln!(
                s,
                "{label} ({} identities, {} rules each): daemon RSS {} KiB, start + apply {:.2} s, a policy change {:.3} s round trip ({:.0} ms request to enforcement: {:.0} ms parse + compile, {:.0} ms switch)\n",
                v["identities"],
                v["rules_each"],
                v["daemon"]["rss_kib"],
                v["daemon"]["start_and_apply_s"].as_f64().unwrap_or(0.0),
                v["daemon"]["change_s"].as_f64().unwrap_or(0.0),
                v["daemon"]["change_timing_ms"]["enforced"]
                    .as_f64()
                    .unwrap_or(0.0),
                v["daemon"]["change_timing_ms"]["compile"]
                    .as_f64()
                    .unwrap_or(0.0),
                v["daemon"]["change_timing_ms"]["switch"]
                    .as_f64()
                    .unwrap_or(0.0)
            );
            prog_rows(
                &mut s,
                &v["prog_cost"],
                "socket of no identity",
                "socket of an enforced identity",
            );
        }
    }
    s
}
