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
//! SIGINT/SIGTERM stop the run at the next step and unwind: the daemon is stopped and uninstalled,
//! the network namespaces and cgroups removed, bpf_stats switched off.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chokepoint_tests::{Cgroup, Daemon, Netns, Proc, in_cgroup, sh, unique};
use serde_json::{Value, json};

const PORT: u16 = 7000;
const CLIENT: &str = "10.210.0.1";
const SERVER: &str = "10.210.0.2";
const CONFIGS: [&str; 4] = ["none", "nft-linear", "nft-set", "chokepoint"];

/// `cargo xtask bench --help`.
pub const HELP: &str = "usage: cargo xtask bench [--quick] [--reps N] [--progs] [--soak DURATION]

Builds release binaries, then measures what enforcement costs (needs root): a client cgroup in one
network namespace, a server in another, joined by veth. Configurations interleaved within every
repetition: none, nft-linear (N drop rules), nft-set (one rule over an interval set of N),
chokepoint (the daemon enforcing the client's identity, gateway plus N rules). Figures are ratios
to `none` in the same repetition (median [min-max], `=noise` when the range spans 1), for
N = 10, 1k, 100k; then per-program cost from kernel.bpf_stats (sockets of no identity and of an
enforced identity, 1 and 1,000 identities), policy change time, records delivered per second and
the daemon's footprint. Writes bench-results/bench-<time>.{json,md}.
SIGINT/SIGTERM stop the run and clean up (daemon, namespaces, cgroups, bpf_stats).

  --quick   N = 10 only, 3 short repetitions (the CI smoke run; numbers are not judged)
  --reps N  repetitions per figure (default 30, --quick 3)
  --progs   the per-program (bpf_stats) pass only, N = 10 and 1 identity (about a minute)
  --soak DURATION
            mixed load for DURATION (90s, 30m, 1h): connects, UDP, denials, a policy apply every
            5 s and a `flows --follow` subscriber; daemon RSS, open fds and ring-buffer loss
            at the start and the end
  --help    this text";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to [`INTERRUPTED`]; the run checks it between steps and unwinds.
fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Fails once a stop was requested, so every guard on the stack cleans up as it unwinds.
fn check() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaned up the daemon, namespaces and cgroups");
    }
    Ok(())
}

/// Sleeps `d` in short steps, stopping early when interrupted.
fn nap(d: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    while t.elapsed() < d {
        check()?;
        std::thread::sleep(Duration::from_millis(50).min(d.saturating_sub(t.elapsed())));
    }
    check()
}

/// `kernel.bpf_stats_enabled` on while it lives (stats add ~2 x 20 ns per run, so only for the
/// per-program pass).
struct BpfStats;

impl BpfStats {
    fn on() -> Self {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
        Self
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}

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
    /// A cgroup no policy selects: its sockets belong to no identity.
    unrelated: Cgroup,
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
            unrelated: Cgroup::new(&unique("cpbench-other")),
            probe: probe.to_path_buf(),
        })
    }

    fn run(&self, mode: &str, dst: &str, secs: f64) -> Value {
        self.run_in(&self.enforced.path, mode, dst, secs)
    }

    fn run_in(&self, cgroup: &Path, mode: &str, dst: &str, secs: f64) -> Value {
        let mut cmd = Command::new(&self.probe);
        cmd.args(["bench", mode, dst, &secs.to_string()])
            .env("CP_CPU", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let out = in_cgroup(cmd, Some(cgroup), Some(&self.client))
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

/// `getppid` calls per second of this process for `secs`: what every syscall of the host pays
/// for the compat syscall guard (`raw_tracepoint/sys_enter`) while it is attached.
fn syscall_rate(secs: f64) -> f64 {
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        for _ in 0..1000 {
            // SAFETY: getppid has no arguments and no side effects.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        n += 1000;
    }
    n as f64 / t.elapsed().as_secs_f64()
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

/// Ids of the programs behind one daemon's pinned links (`<bpffs>/links/*`).
fn own_programs(bpffs: &Path) -> BTreeSet<u32> {
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

/// Sum of (run_time_ns, run_cnt) per program name over the programs in `ids`, from bpf_stats.
fn bpf_prog_stats(ids: &BTreeSet<u32>) -> BTreeMap<String, (u64, u64)> {
    let mut m = BTreeMap::new();
    for p in aya::programs::loaded_programs().filter_map(Result::ok) {
        if !ids.contains(&p.id()) {
            continue;
        }
        let Some(name) = p.name_as_str() else {
            continue;
        };
        let e = m.entry(name.to_string()).or_insert((0u64, 0u64));
        e.0 += p.run_time().as_nanos() as u64;
        e.1 += p.run_count();
    }
    m
}

/// Per-invocation cost of each of `d`'s programs while `work` runs: ns per run and runs.
fn prog_cost(d: &Daemon, work: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Value> {
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
fn prog_cost_windows(
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
const PROG_WORKLOADS: [(&str, &str); 3] =
    [("crr", "crr"), ("udp", "udp"), ("sendto", "udp-sendto")];

/// bpf_stats windows per workload and class.
const PROG_WINDOWS: usize = 5;

/// The workload whose window a program's row is read from.
fn prog_workload(prog: &str) -> &'static str {
    match prog {
        "cp_skb_egress" => "udp",
        "cp_sendmsg4" | "cp_sendmsg6" => "sendto",
        _ => "crr",
    }
}

/// The per-program pass: the workloads from a cgroup of no identity, then from the enforced
/// identity's cgroup, under `d`.
fn prog_table(bed: &Bed, d: &Daemon, gw: &str, udp: &str, secs: f64) -> anyhow::Result<Value> {
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
fn policy_identities(enforced: &str, parent: &str, count: usize, pad: &[String]) -> String {
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
    // `--soak 30m` is the same as `--soak=30m`.
    let rest: Vec<String> = {
        let mut v = Vec::new();
        let mut it = rest.iter();
        while let Some(a) = it.next() {
            if (a == "--soak" || a == "--reps")
                && let Some(d) = it.next()
            {
                v.push(format!("{a}={d}"));
            } else {
                v.push(a.clone());
            }
        }
        v
    };
    let mut quick = false;
    let mut progs_only = false;
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
            "--soak" => bail!("--soak needs a duration (e.g. --soak 30m)\n\n{HELP}"),
            other if other.starts_with("--soak=") => {
                return soak(parse_duration(&other["--soak=".len()..])?);
            }
            other => bail!("unknown option {other:?}\n\n{HELP}"),
        }
    }
    catch_signals();
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
    let sizes: Vec<usize> = if quick || progs_only {
        vec![10]
    } else {
        vec![10, 1_000, 100_000]
    };
    let reps = if progs_only {
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
        // Separate pass: per-invocation cost from bpf_stats, and the daemon's footprint.
        check()?;
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
        let mut change_ms = Vec::new();
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
        drop(d);
        results["sizes"][n.to_string()] = json!({
            "figures": table,
            "prog_cost": per_prog,
            "prog_cost_denied_connect": deny_cost,
            "daemon": {"rss_idle_kib": rss, "rss_after_flood_kib": rss_load, "idle_cpu_pct": idle_cpu_pct, "start_and_apply_s": stats(&apply_s)},
            "policy_change_ms": stats(&change_ms),
            "nft_load_s": nft_load,
            "records": {"flood": flood, "emitted": emitted, "delivered": delivered, "lost": lost, "accounted": delivered + lost == emitted, "records_per_s": delivered as f64 / flood_s},
        });
        // Written after every size, so a long run keeps what it measured.
        std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
        std::fs::write(dir.join(format!("bench-{stamp}.md")), markdown(&results))?;
    }
    // Identities: the same per-program pass with one identity and with many (each its own cgroup,
    // the gateway and 10 rules), the enforced socket being one of them.
    let pad = padding(10);
    let mut per_count = json!({});
    let counts: &[usize] = if progs_only {
        &[1]
    } else if quick {
        &[1, 100]
    } else {
        &[1, 1_000]
    };
    for &count in counts {
        check()?;
        eprintln!("bench: {count} identities");
        let parent = Cgroup::new(&unique("cpbench-ids"));
        for i in 1..count {
            parent.child(&format!("i{i}"));
        }
        let doc = policy_identities(&bed.enforced.rel, &parent.rel, count, &pad);
        let t = Instant::now();
        let d = Daemon::start(&doc, &[]);
        let start_s = t.elapsed().as_secs_f64();
        let pid = daemon_pid(&d);
        let cost = prog_table(&bed, &d, &gw, &udp, prog_secs)?;
        per_count[count.to_string()] = json!({
            "prog_cost": cost,
            "daemon": {"rss_kib": rss_kib(pid), "start_and_apply_s": start_s},
        });
    }
    results["identities"] = per_count;
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    std::fs::write(dir.join(format!("bench-{stamp}.md")), markdown(&results))?;
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

/// What each program is invoked for, in the per-program table.
const PROG_UNITS: [(&str, &str); 6] = [
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
        "| program (bpf_stats ns/run: median of {PROG_WINDOWS} windows [range]; includes ~2 x 20 ns stats overhead) | {a} | {b} |\n|---|---|---|"
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
    if let Some(ids) = r["identities"].as_object() {
        let _ = writeln!(s, "### Identities (10 rules each)\n");
        for (count, v) in ids {
            let _ = writeln!(
                s,
                "{count} identities: daemon RSS {} KiB, start + apply {:.2} s\n",
                v["daemon"]["rss_kib"],
                v["daemon"]["start_and_apply_s"].as_f64().unwrap_or(0.0)
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

/// `90s`, `30m`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b's') => (&s[..s.len() - 1], 1.0),
        Some(b'm') => (&s[..s.len() - 1], 60.0),
        Some(b'h') => (&s[..s.len() - 1], 3600.0),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .with_context(|| format!("--soak {s:?}: expected a duration such as 90s, 30m or 1h"))?;
    if !(v > 0.0 && v.is_finite()) {
        bail!("--soak {s:?}: the duration must be positive");
    }
    Ok(Duration::from_secs_f64(v * mult))
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// One soak sample: the daemon's RSS and fds, and its record counters.
fn soak_sample(d: &Daemon, pid: u32, t: Duration) -> Value {
    let st = d.cli_json(&["status", "--json"]);
    json!({
        "t_s": t.as_secs_f64(),
        "rss_kib": rss_kib(pid),
        "fds": open_fds(pid),
        "delivered": st["records"]["delivered"],
        "lost": st["records"]["lost"],
        "kernel_decisions": st["records"]["kernel_decisions"],
    })
}

/// `--soak DURATION`: sustained mixed load on one daemon, with a flows subscriber.
fn soak(dur: Duration) -> anyhow::Result<()> {
    let (bin, probe) = crate::build_release()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the soak needs root (BPF, cgroups, network namespaces)");
    }
    // SAFETY: set before any thread reads the environment.
    unsafe {
        std::env::set_var("CHOKEPOINT_BIN", &bin);
        std::env::set_var("CP_PROBE_BIN", &probe);
    }
    catch_signals();
    let bed = Bed::new(&probe)?;
    let gw = format!("{SERVER}:{PORT}");
    let denied = "100.64.0.1:443".to_string();
    let pad = padding(1_000);
    let doc = policy(&bed.enforced.rel, &pad);
    let d = Daemon::start(&doc, &[]);
    let pid = daemon_pid(&d);
    // A subscriber that reads every record the daemon streams.
    let sub = Command::new(&bin)
        .args(["flows", "--follow", "--json", "--socket"])
        .arg(&d.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("flows subscriber")?;
    let _sub = chokepoint_tests::Proc(sub);
    nap(Duration::from_secs(1))?;
    let t0 = Instant::now();
    let first = soak_sample(&d, pid, t0.elapsed());
    let mut samples = vec![first.clone()];
    let mut last_apply = Instant::now();
    let mut last_sample = Instant::now();
    let (mut applies, mut rounds) = (0u64, 0u64);
    let f = d.dir.join("soak.yaml");
    eprintln!("bench: soak for {:.0} s", dur.as_secs_f64());
    while t0.elapsed() < dur {
        check()?;
        let _ = bed.run("crr", &gw, 0.5);
        let _ = bed.run("udp", &gw, 0.2);
        let _ = bed.run("deny", &denied, 0.1);
        let _ = bed.run_in(&bed.unrelated.path, "crr", &gw, 0.2);
        rounds += 1;
        if last_apply.elapsed() >= Duration::from_secs(5) {
            let next = doc.replace(
                "ports: [\"7000/udp\"]",
                &format!("ports: [\"7000/udp\", \"{}/tcp\"]", 7100 + applies % 50),
            );
            std::fs::write(&f, &next)?;
            let (ok, _, err) = d.try_cli(&["policy", "apply", f.to_str().expect("utf8")]);
            if !ok {
                bail!("apply failed during the soak: {err}");
            }
            applies += 1;
            last_apply = Instant::now();
        }
        if last_sample.elapsed() >= Duration::from_secs(60) {
            samples.push(soak_sample(&d, pid, t0.elapsed()));
            last_sample = Instant::now();
        }
        // Leave the machine some air: the load runs about two thirds of the time.
        nap(Duration::from_millis(500))?;
    }
    nap(Duration::from_secs(2))?;
    let last = soak_sample(&d, pid, t0.elapsed());
    samples.push(last.clone());
    let result = json!({
        "machine": machine(), "soak_s": dur.as_secs_f64(), "rounds": rounds, "applies": applies,
        "start": first, "end": last, "samples": samples,
    });
    let dir = crate::root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("soak-{}.json", chrono_stamp()));
    std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
    let g = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    println!(
        "soak {:.0} s: {rounds} rounds, {applies} applies\n| | start | end |\n|---|---|---|\n| daemon RSS (KiB) | {} | {} |\n| open fds | {} | {} |\n| records delivered | {} | {} |\n| records lost (ring buffer) | {} | {} |\nresults: {}",
        dur.as_secs_f64(),
        g(&first, "rss_kib"),
        g(&last, "rss_kib"),
        g(&first, "fds"),
        g(&last, "fds"),
        g(&first, "delivered"),
        g(&last, "delivered"),
        g(&first, "lost"),
        g(&last, "lost"),
        path.display()
    );
    Ok(())
}
