//! `cargo xtask bench [--quick]`: what enforcement costs, side by side, in one run on one machine.
//!
//! Topology: a client and a server network namespace joined by a veth pair; the client process
//! runs in a cgroup (pinned to CPU 0), the server to CPU 1. Configurations, interleaved within
//! each repetition: `none` (no programs, no rules), `nft-linear` (N `ip daddr … drop` rules in the
//! client's output hook), `nft-set` (one rule over an interval set of N), `chokepoint` (the daemon
//! enforcing an identity whose policy has the gateway endpoint plus N unrelated CIDRs). Every
//! figure is a ratio to `none` measured in the same repetition; min/median/max over repetitions.
//! Per-program cost comes from `kernel.bpf_stats_enabled` in a separate pass.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chokepoint_tests::{Cgroup, Daemon, Netns, Proc, in_cgroup, sh, unique};
use serde_json::{Value, json};

const PORT: u16 = 7000;
const CLIENT: &str = "10.210.0.1";
const SERVER: &str = "10.210.0.2";
const CONFIGS: [&str; 4] = ["none", "nft-linear", "nft-set", "chokepoint"];

fn padding(n: usize) -> Vec<String> {
    // Unrelated /32s in 100.64.0.0/10 (never the server's address).
    (0..n)
        .map(|i| {
            let v = (100u32 << 24) | (64 << 16) | (i as u32 + 1);
            format!("{}", Ipv4Addr::from(v))
        })
        .collect()
}

fn policy(cg: &str, pad: &[String]) -> String {
    let mut s = format!(
        "apiVersion: chokepoint.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: bench\nspec:\n  gateways:\n    - name: gw\n      endpoints: [\"{SERVER}:{PORT}/tcp\"]\n  identities:\n    - name: bench-agent\n      selector:\n        cgroupPath: \"{cg}\"\n      egress:\n        gateways: [gw]\n        allow:\n          - to: \"{SERVER}/32\"\n            ports: [\"{PORT}/udp\"]\n"
    );
    for p in pad {
        let _ = write!(
            s,
            "          - to: \"{p}/32\"\n            ports: [\"443/tcp\"]\n"
        );
    }
    s
}

fn nft_ruleset(pad: &[String]) -> String {
    let mut s = String::from(
        "table inet cpbench {\n  set pad { type ipv4_addr; flags interval; elements = { ",
    );
    s += &pad.join(", ");
    s += " } }\n  chain linear {\n";
    for p in pad {
        let _ = writeln!(s, "    ip daddr {p} drop");
    }
    s += "  }\n  chain viaset {\n    ip daddr @pad drop\n  }\n  chain out {\n    type filter hook output priority 0; policy accept;\n  }\n}\n";
    s
}

struct Bed {
    client: Netns,
    _server: Netns,
    _srv: Proc,
    enforced: Cgroup,
    probe: std::path::PathBuf,
}

impl Bed {
    fn new(probe: &Path) -> anyhow::Result<Self> {
        let client = Netns::new(&format!("cpbc-{}", std::process::id()));
        let server = Netns::new(&format!("cpbs-{}", std::process::id()));
        sh(
            "ip",
            &[
                "-n",
                &client.name,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &server.name,
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &client.name,
                "addr",
                "add",
                &format!("{CLIENT}/24"),
                "dev",
                "eth0",
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                &server.name,
                "addr",
                "add",
                &format!("{SERVER}/24"),
                "dev",
                "eth0",
            ],
        );
        sh("ip", &["-n", &client.name, "link", "set", "eth0", "up"]);
        // Thousands of short connections per second: reuse TIME_WAIT ports (per-netns sysctls).
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &client.name,
                "sysctl",
                "-qw",
                "net.ipv4.tcp_tw_reuse=1",
            ],
        );
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &client.name,
                "sysctl",
                "-qw",
                "net.ipv4.ip_local_port_range=1024 65535",
            ],
        );
        sh("ip", &["-n", &server.name, "link", "set", "eth0", "up"]);
        let mut cmd = Command::new(probe);
        cmd.args(["bench-serve", &PORT.to_string()])
            .env("CP_CPU", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut srv = in_cgroup(cmd, None, Some(&server))
            .spawn()
            .context("bench server")?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(srv.stdout.as_mut().expect("stdout")),
            &mut line,
        )?;
        Ok(Self {
            client,
            _server: server,
            _srv: Proc(srv),
            enforced: Cgroup::new(&unique("cpbench-agent")),
            probe: probe.to_path_buf(),
        })
    }

    fn run(&self, mode: &str, dst: &str, secs: f64) -> Value {
        let mut cmd = Command::new(&self.probe);
        cmd.args(["bench", mode, dst, &secs.to_string()])
            .env("CP_CPU", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let out = in_cgroup(cmd, Some(&self.enforced.path), Some(&self.client))
            .output()
            .expect("bench client");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or(Value::Null)
    }

    fn nft(&self, chain: Option<&str>) {
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.client.name,
                "nft",
                "flush",
                "chain",
                "inet",
                "cpbench",
                "out",
            ],
        );
        if let Some(c) = chain {
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.client.name,
                    "nft",
                    "add",
                    "rule",
                    "inet",
                    "cpbench",
                    "out",
                    "jump",
                    c,
                ],
            );
        }
    }
}

fn stats(v: &[f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| s[((s.len() as f64 - 1.0) * p).round() as usize];
    json!({"min": s[0], "median": q(0.5), "max": s[s.len() - 1], "q25": q(0.25), "q75": q(0.75), "n": s.len()})
}

/// Sum of (run_time_ns, run_cnt) per Chokepoint program, from the kernel's bpf_stats.
fn bpf_prog_stats() -> BTreeMap<String, (u64, u64)> {
    let mut m = BTreeMap::new();
    for p in aya::programs::loaded_programs().filter_map(Result::ok) {
        let Some(name) = p.name_as_str() else {
            continue;
        };
        if name.starts_with("cp_") {
            let e = m.entry(name.to_string()).or_insert((0u64, 0u64));
            e.0 += p.run_time().as_nanos() as u64;
            e.1 += p.run_count();
        }
    }
    m
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

pub fn bench(rest: &[String]) -> anyhow::Result<()> {
    let quick = rest.iter().any(|a| a == "--quick");
    let (bin, probe) = crate::build_release()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("benchmarks need root (BPF, cgroups, network namespaces, nftables)");
    }
    // SAFETY: set before any thread reads the environment.
    unsafe {
        std::env::set_var("CHOKEPOINT_BIN", &bin);
        std::env::set_var("CP_PROBE_BIN", &probe);
    }
    let sizes: Vec<usize> = if quick {
        vec![10]
    } else {
        vec![10, 1_000, 100_000]
    };
    let reps = if quick { 3 } else { 30 };
    let secs = if quick { 0.4 } else { 0.5 };
    let bed = Bed::new(&probe)?;
    let gw = format!("{SERVER}:{PORT}");
    let denied = "100.64.0.1:443".to_string();
    let mut results = json!({"machine": machine(), "quick": quick, "reps": reps, "secs_per_run": secs, "sizes": {}});
    let dir = crate::root().join("bench-results");
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
        // Separate pass: per-invocation cost from bpf_stats, and the daemon's footprint.
        let d = Daemon::start(&doc, &[]);
        let pid = daemon_pid(&d);
        let rss = rss_kib(pid);
        let c0 = cpu_ticks(pid);
        let idle_secs = if quick { 2.0 } else { 5.0 };
        std::thread::sleep(Duration::from_secs_f64(idle_secs));
        let idle_cpu_pct = (cpu_ticks(pid) - c0) as f64 / 100.0 / idle_secs * 100.0;
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
        let before = bpf_prog_stats();
        let _ = bed.run("crr", &gw, 2.0 * secs);
        let _ = bed.run("deny", &denied, secs);
        let after = bpf_prog_stats();
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
        let mut per_prog = json!({});
        for (name, (t1, c1)) in &after {
            let (t0, c0) = before.get(name).copied().unwrap_or((0, 0));
            if c1 > &c0 {
                per_prog[name] =
                    json!({"ns_per_run": (t1 - t0) as f64 / (c1 - c0) as f64, "runs": c1 - c0});
            }
        }
        // Change-to-enforcement: apply a policy that allows a new destination; the CLI returns once
        // the kernel switched; the next connect decides under the new generation.
        let mut change_ms = Vec::new();
        for i in 0..if quick { 5 } else { 20 } {
            let extra = doc.replace(
                "ports: [\"7000/udp\"]",
                &format!("ports: [\"7000/udp\", \"{}/tcp\"]", 7100 + i),
            );
            let f = d.dir.join("change.yaml");
            std::fs::write(&f, &extra)?;
            let t = Instant::now();
            let (ok, _, err) = d.try_cli(&["policy", "apply", f.to_str().expect("utf8")]);
            if !ok {
                bail!("apply failed: {err}");
            }
            change_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        // Records delivered per second: a burst of denials, all accounted.
        let flood = if quick { 50_000 } else { 500_000 };
        let t = Instant::now();
        let mut cmd = Command::new(&bed.probe);
        cmd.args(["udp-flood", "100.64.0.1:9", &flood.to_string()])
            .stdout(Stdio::null());
        let _ = in_cgroup(cmd, Some(&bed.enforced.path), Some(&bed.client)).status();
        let (mut delivered, mut lost, mut emitted) = (0u64, 0u64, 0u64);
        while t.elapsed() < Duration::from_secs(60) {
            let st = d.cli_json(&["status", "--json"]);
            delivered = st["records"]["delivered"].as_u64().unwrap_or(0);
            lost = st["records"]["lost"].as_u64().unwrap_or(0);
            emitted = st["records"]["kernel_decisions"].as_u64().unwrap_or(0);
            if delivered + lost >= emitted && emitted >= flood {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let flood_s = t.elapsed().as_secs_f64();
        let rss_load = rss_kib(pid);
        drop(d);
        results["sizes"][n.to_string()] = json!({
            "figures": table,
            "bpf_ns_per_run": per_prog,
            "daemon": {"rss_idle_kib": rss, "rss_after_flood_kib": rss_load, "idle_cpu_pct": idle_cpu_pct, "start_and_apply_s": stats(&apply_s)},
            "policy_change_ms": stats(&change_ms),
            "nft_load_s": nft_load,
            "records": {"flood": flood, "emitted": emitted, "delivered": delivered, "lost": lost, "accounted": delivered + lost == emitted, "records_per_s": delivered as f64 / flood_s},
        });
        // Written after every size, so a long run keeps what it measured.
        std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
        std::fs::write(dir.join(format!("bench-{stamp}.md")), markdown(&results))?;
    }
    let md = markdown(&results);
    println!("{md}");
    println!("results: {}", json_path.display());
    Ok(())
}

fn daemon_pid(d: &Daemon) -> u32 {
    // The daemon is the process holding its socket; find it through /proc.
    let want = d.socket.to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let s = String::from_utf8_lossy(&cmd);
            if s.contains("daemon") && s.contains(&want) {
                return pid;
            }
        }
    }
    0
}

fn chrono_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    secs.to_string()
}

fn machine() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    json!({"kernel": kernel, "cpus": cpus, "cpu": model})
}

fn markdown(r: &Value) -> String {
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
        let _ = writeln!(
            s,
            "- per-invocation cost (bpf_stats, ns/run): {}",
            v["bpf_ns_per_run"]
                .as_object()
                .map(|m| m
                    .iter()
                    .map(|(k, x)| format!("{k} {:.0}", x["ns_per_run"].as_f64().unwrap_or(0.0)))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "- policy change to enforcement (CLI apply round trip, ms): p50 {:.1}, max {:.1}; daemon start + apply: {:.2} s median",
            v["policy_change_ms"]["median"].as_f64().unwrap_or(0.0),
            v["policy_change_ms"]["max"].as_f64().unwrap_or(0.0),
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
    s
}
