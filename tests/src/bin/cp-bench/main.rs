//! `cargo xtask bench [--quick]`: what enforcement costs, side by side, in one run on one machine.
//!
//! Topology: a client and a server network namespace joined by a veth pair; the client process
//! runs in a cgroup (pinned to CPU 0), the server to CPU 1. Configurations, interleaved within
//! each repetition: `none` (no programs, no rules), `nft-linear` (N `ip daddr … drop` rules in the
//! client's output hook), `nft-set` (one rule over an interval set of N), `chokepoint` (the daemon
//! enforcing an identity whose policy has the gateway endpoint plus N unrelated CIDRs). Every
//! figure is a ratio to `none` measured in the same repetition; min/median/max over repetitions.
//! Per-program cost comes from `kernel.bpf_stats_enabled` in a separate pass, for sockets of no
//! identity (a cgroup no policy selects) and of an enforced identity, counted over this daemon's
//! own programs only (other daemons on the host have their own).
//!
//! `cargo xtask bench` builds the release binaries and execs this program with their paths in
//! `CHOKEPOINT_BIN` and `CP_PROBE_BIN` (so xtask itself builds without the eBPF toolchain).
//!
//! SIGINT/SIGTERM stop the run at the next step and unwind: the daemon is stopped and uninstalled,
//! the network namespaces and cgroups removed, bpf_stats switched off.

mod bed;
mod change;
mod floor;
mod interrupt;
mod probe;
mod progs;
mod report;
mod scale;
mod soak;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chokepoint_tests::{Daemon, in_cgroup, sh};
use serde_json::{Value, json};

use self::{
    bed::{Bed, nft_ruleset, padding, policy},
    change::{Changes, as_json},
    interrupt::{BpfStats, catch_signals, check, nap},
    probe::{chrono_stamp, cpu_ticks, daemon_pid, machine, rss_kib, syscall_rate},
    progs::{PROG_WINDOWS, policy_identities, prog_cost_windows, prog_table, prog_workload},
    report::markdown,
    scale::scale_pass,
    soak::{parse_duration, soak},
};

const PORT: u16 = 7000;
const CLIENT: &str = "10.210.0.1";
const SERVER: &str = "10.210.0.2";
/// The policy's identity limit (`agent/src/policy/compile.rs`): the largest scale case.
const MAX_IDENTITIES: usize = 4_096;
const CONFIGS: [&str; 4] = ["none", "nft-linear", "nft-set", "chokepoint"];

/// `cargo xtask bench --help` (xtask prints the same file without building anything).
const HELP: &str = include_str!("help.txt");

fn stats(v: &[f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| s[((s.len() as f64 - 1.0) * p).round() as usize];
    json!({"min": s[0], "median": q(0.5), "max": s[s.len() - 1], "q25": q(0.25), "q75": q(0.75), "p99": q(0.99), "n": s.len()})
}

fn bench(rest: &[String]) -> anyhow::Result<()> {
    // `--soak 30m` is the same as `--soak=30m`.
    let rest: Vec<String> = {
        let mut v = Vec::new();
        let mut it = rest.iter();
        while let Some(a) = it.next() {
            if (a == "--soak" || a == "--reps")
                && let Some(d) = it.as_slice().first().filter(|d| !d.starts_with("--"))
            {
                v.push(format!("{a}={d}"));
                it.next();
            } else {
                v.push(a.clone());
            }
        }
        v
    };
    let mut quick = false;
    let mut progs_only = false;
    let mut scale_only = false;
    let mut reps_arg: Option<usize> = None;
    for a in &rest {
        match a.as_str() {
            other if other.starts_with("--reps=") => {
                let n: usize = other["--reps=".len()..]
                    .parse()
                    .with_context(|| format!("{other}: expected a number of repetitions"))?;
                if n == 0 {
                    bail!("--reps must be at least 1");
                }
                reps_arg = Some(n);
            }
            "--quick" => quick = true,
            "--progs" => progs_only = true,
            "--scale" => scale_only = true,
            "--soak" => return soak(Duration::from_secs(30 * 60)),
            other if other.starts_with("--soak=") => {
                return soak(parse_duration(&other["--soak=".len()..])?);
            }
            other => bail!("unknown option {other:?}\n\n{HELP}"),
        }
    }
    catch_signals();
    let (_, probe) = binaries()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("benchmarks need root (BPF, cgroups, network namespaces, nftables)");
    }
    let sizes: Vec<usize> = if scale_only {
        vec![]
    } else if quick || progs_only {
        vec![10]
    } else {
        vec![10, 1_000, 100_000]
    };
    let reps = if progs_only || scale_only {
        0
    } else if let Some(n) = reps_arg {
        n
    } else if quick {
        3
    } else {
        30
    };
    // Per workload and class in the per-program pass (split into PROG_WINDOWS windows).
    let prog_secs = if quick { 1.0 } else { 2.5 };
    let secs = if quick { 0.4 } else { 0.5 };
    let bed = Bed::new(&probe)?;
    let gw = format!("{SERVER}:{PORT}");
    let udp = format!("{SERVER}:{PORT}");
    let denied = "100.64.0.1:443".to_string();
    let mut results = json!({"machine": machine(), "quick": quick, "reps": reps, "secs_per_run": secs, "sizes": {}});
    let dir = root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    let stamp = chrono_stamp();
    let json_path = dir.join(format!("bench-{stamp}.json"));

    for &n in &sizes {
        eprintln!("bench: N = {n}");
        let pad = padding(n);
        let pfile = std::env::temp_dir().join(format!("cpbench-{}.nft", std::process::id()));
        std::fs::write(&pfile, nft_ruleset(&pad))?;
        let t = Instant::now();
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &bed.client.name,
                "nft",
                "-f",
                pfile.to_str().expect("utf8"),
            ],
        );
        let nft_load = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&pfile);
        let doc = policy(&bed.enforced.rel, &pad);

        // raw[metric][config] = values per rep
        let mut raw: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
        let mut apply_s = Vec::new();
        for rep in 0..reps {
            let mut order: Vec<&str> = CONFIGS.to_vec();
            order.rotate_left(rep % CONFIGS.len());
            for cfg in order {
                let daemon = match cfg {
                    "nft-linear" => {
                        bed.nft(Some("linear"));
                        None
                    }
                    "nft-set" => {
                        bed.nft(Some("viaset"));
                        None
                    }
                    "chokepoint" => {
                        bed.nft(None);
                        let t = Instant::now();
                        let d = Daemon::start(&doc, &[]);
                        apply_s.push(t.elapsed().as_secs_f64());
                        Some(d)
                    }
                    _ => {
                        bed.nft(None);
                        None
                    }
                };
                for (metric, mode, key) in [
                    ("crr", "crr", "rate"),
                    ("rr", "rr", "rate"),
                    ("bulk", "stream", "bytes_per_s"),
                    ("udp", "udp", "rate"),
                ] {
                    check()?;
                    let r = bed.run(mode, &gw, secs);
                    raw.entry(metric)
                        .or_default()
                        .entry(cfg)
                        .or_default()
                        .push(r[key].as_f64().unwrap_or(0.0));
                    if metric == "crr" {
                        raw.entry("crr_p99_us")
                            .or_default()
                            .entry(cfg)
                            .or_default()
                            .push(r["p99_ns"].as_f64().unwrap_or(0.0) / 1000.0);
                    }
                }
                check()?;
                raw.entry("syscall")
                    .or_default()
                    .entry(cfg)
                    .or_default()
                    .push(syscall_rate(secs));
                if cfg == "chokepoint" {
                    let r = bed.run("deny", &denied, secs.min(0.5));
                    raw.entry("denied_connect_us")
                        .or_default()
                        .entry(cfg)
                        .or_default()
                        .push(r["p50_ns"].as_f64().unwrap_or(0.0) / 1000.0);
                }
                drop(daemon);
            }
        }
        // Ratios to `none`, per repetition.
        let mut table = json!({});
        for (metric, per_cfg) in &raw {
            let base = per_cfg.get("none").cloned().unwrap_or_default();
            let mut m = json!({});
            for (cfg, vals) in per_cfg {
                m[*cfg] = json!({"abs": stats(vals)});
                if !base.is_empty() && vals.len() == base.len() {
                    let ratios: Vec<f64> = vals
                        .iter()
                        .zip(&base)
                        .map(|(v, b)| if *b > 0.0 { v / b } else { 0.0 })
                        .collect();
                    m[*cfg]["ratio"] = stats(&ratios);
                }
            }
            table[*metric] = m;
        }
        // Separate pass: per-invocation cost from bpf_stats, and the daemon's footprint, with no
        // nft rules hooked (the last repetition's last configuration may have left them).
        check()?;
        bed.nft(None);
        let d = Daemon::start(&doc, &[]);
        let pid = daemon_pid(&d);
        let rss = rss_kib(pid);
        let c0 = cpu_ticks(pid);
        let idle_secs = if quick { 2.0 } else { 5.0 };
        nap(Duration::from_secs_f64(idle_secs))?;
        let idle_cpu_pct = (cpu_ticks(pid) - c0) as f64 / 100.0 / idle_secs * 100.0;
        let per_prog = prog_table(&bed, &d, &gw, &udp, prog_secs)?;
        let deny_cost = prog_cost_windows(&d, PROG_WINDOWS, || {
            let _ = bed.run("deny", &denied, prog_secs / PROG_WINDOWS as f64);
            Ok(())
        })?;
        // Change-to-enforcement: apply a policy that allows a new destination; the CLI returns once
        // the kernel switched; the next connect decides under the new generation.
        let (mut yaml_changes, mut json_changes) = (Changes::default(), Changes::default());
        let changes = if progs_only {
            0
        } else if quick {
            5
        } else {
            20
        };
        for i in 0..changes {
            let extra = doc.replace(
                "ports: [\"7000/udp\"]",
                &format!("ports: [\"7000/udp\", \"{}/tcp\"]", 7100 + i),
            );
            // The same change as YAML and as JSON, interleaved; the JSON one allows one port
            // more, so each apply is a real change.
            yaml_changes.apply(&d, "change.yaml", &extra)?;
            let json_doc = as_json(&extra.replace(
                "\"7000/udp\", ",
                &format!("\"7000/udp\", \"{}/tcp\", ", 7200 + i),
            ))?;
            json_changes.apply(&d, "change.json", &json_doc)?;
        }
        // Records delivered per second: a burst of denials, all accounted.
        let flood = if progs_only {
            0
        } else if quick {
            50_000
        } else {
            500_000
        };
        let t = Instant::now();
        if flood > 0 {
            let mut cmd = Command::new(&bed.probe);
            cmd.args(["udp-flood", "100.64.0.1:9", &flood.to_string()])
                .stdout(Stdio::null());
            let _ = in_cgroup(cmd, Some(&bed.enforced.path), Some(&bed.client)).status();
        }
        let (mut delivered, mut lost, mut emitted) = (0u64, 0u64, 0u64);
        while flood > 0 && t.elapsed() < Duration::from_secs(60) {
            let st = d.cli_json(&["status", "--json"]);
            delivered = st["records"]["delivered"].as_u64().unwrap_or(0);
            lost = st["records"]["lost"].as_u64().unwrap_or(0);
            emitted = st["records"]["kernel_decisions"].as_u64().unwrap_or(0);
            if delivered + lost >= emitted && emitted >= flood {
                break;
            }
            nap(Duration::from_millis(20))?;
        }
        let flood_s = t.elapsed().as_secs_f64();
        let rss_load = rss_kib(pid);
        // Where the compat guard is attached decides what the getppid figure pays.
        let compat =
            d.cli_json(&["status", "--json"])["kernel"]["packet_sockets"]["compat"].clone();
        drop(d);
        results["sizes"][n.to_string()] = json!({
            "figures": table,
            "prog_cost": per_prog,
            "prog_cost_denied_connect": deny_cost,
            "daemon": {"rss_idle_kib": rss, "rss_after_flood_kib": rss_load, "idle_cpu_pct": idle_cpu_pct, "start_and_apply_s": stats(&apply_s)},
            "policy_change_yaml": yaml_changes.json(),
            "policy_change_json": json_changes.json(),
            "nft_load_s": nft_load,
            "compat_guard": compat,
            "records": {"flood": flood, "emitted": emitted, "delivered": delivered, "lost": lost, "accounted": delivered + lost == emitted, "records_per_s": delivered as f64 / flood_s},
        });
        // Written after every size, so a long run keeps what it measured.
        std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
        std::fs::write(dir.join(format!("bench-{stamp}.md")), markdown(&results))?;
    }
    let scales: &[(usize, usize)] = if progs_only {
        &[(1, 10)]
    } else if quick {
        &[(1, 10), (100, 10)]
    } else {
        &[(1, 10), (1_000, 100), (MAX_IDENTITIES, 5)]
    };
    let per_count = scale_pass(&bed, &gw, &udp, prog_secs, scales)?;
    results["identities"] = per_count;
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    std::fs::write(dir.join(format!("bench-{stamp}.md")), markdown(&results))?;
    let md = markdown(&results);
    println!("{md}");
    println!("results: {}", json_path.display());
    Ok(())
}

/// The workspace root (`bench-results/` is written there).
fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The release daemon and probe `cargo xtask bench` built (`CHOKEPOINT_BIN`, `CP_PROBE_BIN`; the
/// harness starts daemons from the same variable).
pub(crate) fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let var = |name: &str| {
        std::env::var_os(name).map(PathBuf::from).with_context(|| {
            format!("{name} is not set: run the benchmark through `cargo xtask bench`, which builds the release binaries first")
        })
    };
    Ok((var("CHOKEPOINT_BIN")?, var("CP_PROBE_BIN")?))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return;
    }
    if let Err(e) = bench(&args) {
        eprintln!("xtask bench: {e:#}");
        std::process::exit(1);
    }
}
