//! The per-program pass: per-invocation cost of this daemon's programs from
//! `kernel.bpf_stats_enabled`, for sockets of no identity and of an enforced identity.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use chokepoint_tests::Daemon;
use serde_json::{Value, json};

use super::{Bed, BpfStats, check, policy, stats};

/// Ids of the programs behind one daemon's pinned links (`<bpffs>/links/*`).
pub(super) fn own_programs(bpffs: &Path) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for e in std::fs::read_dir(bpffs.join("links"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let Ok(link) = aya::programs::links::PinnedLink::from_pin(e.path()) else {
            continue;
        };
        let fd: aya::programs::links::FdLink = link.into();
        if let Ok(info) = fd.info() {
            ids.insert(info.program_id());
        }
    }
    ids
}

/// Sum of (run_time_ns, run_cnt) per program name over the programs in `ids` and the stats
/// floor program, from bpf_stats.
pub(super) fn bpf_prog_stats(ids: &BTreeSet<u32>) -> BTreeMap<String, (u64, u64)> {
    let mut m = BTreeMap::new();
    for p in aya::programs::loaded_programs().filter_map(Result::ok) {
        let Some(name) = p.name_as_str() else {
            continue;
        };
        if !ids.contains(&p.id()) && name != super::floor::NAME {
            continue;
        }
        let e = m.entry(name.to_string()).or_insert((0u64, 0u64));
        e.0 += p.run_time().as_nanos() as u64;
        e.1 += p.run_count();
    }
    m
}

/// Per-invocation cost of each of `d`'s programs while `work` runs: ns per run and runs.
pub(super) fn prog_cost(
    d: &Daemon,
    work: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Value> {
    let ids = own_programs(&d.bpffs);
    let _stats = BpfStats::on();
    let before = bpf_prog_stats(&ids);
    work()?;
    let after = bpf_prog_stats(&ids);
    let mut per_prog = json!({});
    for (name, (t1, c1)) in &after {
        let (t0, c0) = before.get(name).copied().unwrap_or((0, 0));
        if *c1 > c0 {
            per_prog[name] =
                json!({"ns_per_run": (t1 - t0) as f64 / (c1 - c0) as f64, "runs": c1 - c0});
        }
    }
    Ok(per_prog)
}

/// [`prog_cost`] over `windows` separate windows of `work`: per program the median of the
/// windows' ns/run (an interrupt, a vCPU steal or a neighbour's burst lands in one window and
/// moves its average, not the median), the range, and the runs summed.
pub(super) fn prog_cost_windows(
    d: &Daemon,
    windows: usize,
    mut work: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Value> {
    let mut per: BTreeMap<String, (Vec<f64>, u64)> = BTreeMap::new();
    for _ in 0..windows {
        check()?;
        let one = prog_cost(d, &mut work)?;
        for (name, v) in one.as_object().into_iter().flatten() {
            let e = per.entry(name.clone()).or_default();
            e.0.push(v["ns_per_run"].as_f64().unwrap_or(0.0));
            e.1 += v["runs"].as_u64().unwrap_or(0);
        }
    }
    let mut out = json!({});
    for (name, (ns, runs)) in per {
        let st = stats(&ns);
        out[name] =
            json!({"ns_per_run": st["median"], "min": st["min"], "max": st["max"], "runs": runs});
    }
    Ok(out)
}

/// The workloads of the per-program pass, each measured in its own bpf_stats window so a row
/// counts only the runs its workload causes: per-packet cost from connected UDP (the server
/// sends nothing back, so every packet is the client's), connect and socket creation from
/// connect+request+close (accepted sockets do not run `sock_create`), unconnected sends from
/// `sendto`.
pub(super) const PROG_WORKLOADS: [(&str, &str); 3] =
    [("crr", "crr"), ("udp", "udp"), ("sendto", "udp-sendto")];

/// bpf_stats windows per workload and class.
pub(super) const PROG_WINDOWS: usize = 5;

/// The workload whose window a program's row is read from.
pub(super) fn prog_workload(prog: &str) -> &'static str {
    match prog {
        "cp_skb_egress" | super::floor::NAME => "udp",
        "cp_sendmsg4" | "cp_sendmsg6" => "sendto",
        _ => "crr",
    }
}

/// The per-program pass: the workloads from a cgroup of no identity, then from the enforced
/// identity's cgroup, under `d`; the do-nothing floor program runs beside them on both cgroups.
pub(super) fn prog_table(
    bed: &Bed,
    d: &Daemon,
    gw: &str,
    udp: &str,
    secs: f64,
) -> anyhow::Result<Value> {
    let _floor = super::floor::Floor::attach(&[&bed.unrelated.path, &bed.enforced.path])?;
    let mut out = json!({});
    for (class, cg) in [
        ("unrelated", &bed.unrelated.path),
        ("enforced", &bed.enforced.path),
    ] {
        for (label, mode) in PROG_WORKLOADS {
            check()?;
            let dst = if mode == "crr" { gw } else { udp };
            out[class][label] = prog_cost_windows(d, PROG_WINDOWS, || {
                let _ = bed.run_in(cg, mode, dst, secs / PROG_WINDOWS as f64);
                Ok(())
            })?;
        }
    }
    Ok(out)
}

/// A policy of `count` identities, each selecting its own child cgroup of `parent` (the first is
/// the bench's enforced cgroup), each with the gateway and `pad` rules.
pub(super) fn policy_identities(
    enforced: &str,
    parent: &str,
    count: usize,
    pad: &[String],
) -> String {
    let base = policy(enforced, pad);
    let (head, first) = base.split_at(base.find("    - name: bench-agent").expect("identity"));
    let mut s = String::from(head);
    s += first;
    for i in 1..count {
        let one = first
            .replace("name: bench-agent", &format!("name: bench-id{i}"))
            .replace(
                &format!("cgroupPath: \"{enforced}\""),
                &format!("cgroupPath: \"{parent}/i{i}\""),
            );
        s += &one;
    }
    s
}
