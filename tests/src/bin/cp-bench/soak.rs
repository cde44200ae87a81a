//! `cargo xtask bench --soak [DURATION]`: sustained mixed load on one daemon, with a flows
//! subscriber; RSS, open fds and ring-buffer loss at the start, every minute and the end.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chokepoint_tests::Daemon;
use serde_json::{Value, json};

use super::{
    Bed, PORT, SERVER, catch_signals, check, chrono_stamp, daemon_pid, machine, nap, padding,
    policy, rss_kib,
};

/// `90s`, `30m`, `1h`, or plain minutes.
pub(super) fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b's') => (&s[..s.len() - 1], 1.0),
        Some(b'm') => (&s[..s.len() - 1], 60.0),
        Some(b'h') => (&s[..s.len() - 1], 3600.0),
        _ => (s, 60.0),
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
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Median and largest of `v` (milliseconds), null when empty.
fn ms_stats(v: &mut [f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    json!({"n": v.len(), "median": v[v.len() / 2], "max": v[v.len() - 1]})
}

/// One soak sample: the daemon's RSS and fds, its record counters, and the CLI round trips of
/// the policy applies since the previous sample.
fn soak_sample(d: &Daemon, pid: u32, t: Duration, applies: &mut Vec<f64>) -> Value {
    let st = d.cli_json(&["status", "--json"]);
    let apply_ms = ms_stats(applies);
    applies.clear();
    json!({
        "apply_ms": apply_ms,
        "t_s": t.as_secs_f64(),
        "rss_kib": rss_kib(pid),
        "fds": open_fds(pid),
        "delivered": st["records"]["delivered"],
        "lost": st["records"]["lost"],
        "kernel_decisions": st["records"]["kernel_decisions"],
    })
}

/// `--soak DURATION`: sustained mixed load on one daemon, with a flows subscriber.
pub(super) fn soak(dur: Duration) -> anyhow::Result<()> {
    let (bin, probe) = crate::binaries()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the soak needs root (BPF, cgroups, network namespaces)");
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
    let mut apply_ms = Vec::new();
    let first = soak_sample(&d, pid, t0.elapsed(), &mut apply_ms);
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
            let t = Instant::now();
            let (ok, _, err) = d.try_cli(&["policy", "apply", f.to_str().expect("utf8")]);
            apply_ms.push(t.elapsed().as_secs_f64() * 1e3);
            if !ok {
                bail!("apply failed during the soak: {err}");
            }
            applies += 1;
            last_apply = Instant::now();
        }
        if last_sample.elapsed() >= Duration::from_secs(60) {
            samples.push(soak_sample(&d, pid, t0.elapsed(), &mut apply_ms));
            last_sample = Instant::now();
        }
        // Leave the machine some air: the load runs about two thirds of the time.
        nap(Duration::from_millis(500))?;
    }
    nap(Duration::from_secs(2))?;
    let last = soak_sample(&d, pid, t0.elapsed(), &mut apply_ms);
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
    // The first minute's applies (the start sample has none yet) against the last minute's.
    let apply_first = samples
        .get(1)
        .map_or(0.0, |s| s["apply_ms"]["median"].as_f64().unwrap_or(0.0));
    let apply_last = last["apply_ms"]["median"].as_f64().unwrap_or(0.0);
    println!(
        "soak {:.0} s: {rounds} rounds, {applies} applies\n| | start | end |\n|---|---|---|\n| daemon RSS (KiB) | {} | {} |\n| open fds | {} | {} |\n| records delivered | {} | {} |\n| records lost (ring buffer) | {} | {} |\n| policy apply round trip, median ms (first / last minute) | {apply_first:.1} | {apply_last:.1} |\nresults: {}",
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
