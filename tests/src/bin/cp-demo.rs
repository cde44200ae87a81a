//! `cargo xtask demo`: the whole job in a sandbox. A "world" network namespace holds the
//! sanctioned gateway, an unsanctioned destination and two resolvers; an agent workload runs in
//! its own cgroup and pod-like network namespace. The real daemon enforces an embedded policy;
//! the demo sends a sanctioned request and bypass attempts, then shows the flow records, the
//! alert and metrics. Everything is torn down on exit and on Ctrl-C. `cargo xtask demo` builds the
//! binaries and execs this program with their paths in `CHOKEPOINT_BIN` and `CP_PROBE_BIN`.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::bail;
use chokepoint_tests::{
    Cgroup, DNS, Daemon, GATEWAY_PORT, OTHER_TCP, Sandbox, eperm, ok, probe, unique,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn step(title: &str) -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    if colour() {
        println!("\n\x1b[1m== {title}\x1b[0m");
    } else {
        println!("\n== {title}");
    }
    Ok(())
}

/// Bold titles only on a terminal, and never with `NO_COLOR` set (https://no-color.org).
fn colour() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() {
    if let Err(e) = demo() {
        eprintln!("xtask demo: {e:#}");
        std::process::exit(1);
    }
}

fn demo() -> anyhow::Result<()> {
    for var in ["CHOKEPOINT_BIN", "CP_PROBE_BIN"] {
        if std::env::var_os(var).is_none() {
            bail!("{var} is not set: run the demo through `cargo xtask demo`, which builds first");
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the demo needs root (it loads BPF programs and creates cgroups and network namespaces)"
        );
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };

    step("sandbox: world netns (gateway, unsanctioned host, resolvers), pod netns, agent cgroup")?;
    let sb = Sandbox::new();
    let cg = Cgroup::new(&unique("chokepoint-demo-agent"));
    let gw = SocketAddr::new(sb.gateway4(), GATEWAY_PORT);
    let evil = SocketAddr::new(sb.forbidden4(), OTHER_TCP);
    let resolver = SocketAddr::new(sb.resolver4(), DNS);
    let rogue_dns = SocketAddr::new(sb.other_resolver4(), DNS);
    println!(
        "gateway {gw}   unsanctioned {evil}   resolver {resolver}   rogue resolver {rogue_dns}"
    );
    println!(
        "agent cgroup {}   pod netns {}",
        cg.path.display(),
        sb.pod.name
    );

    step("chokepoint daemon with the embedded policy")?;
    let policy = sb.policy(&[("research-agent", &cg.rel, "enforce")]);
    println!("{policy}");
    let pod_if = format!("{}:ingress", sb.host_pod_if);
    let daemon = Daemon::start(
        &policy,
        &[
            "--tc-iface",
            &sb.host_world_if,
            "--tc-iface",
            &pod_if,
            "--alert-window",
            "1s",
        ],
    );
    print!("{}", daemon.try_cli(&["status"]).1);

    step("sanctioned request: agent → gateway")?;
    let r = probe(
        Some(&cg.path),
        Some(&sb.pod),
        &["tcp", &gw.to_string()],
        "POST /v1/chat/completions",
    );
    println!(
        "agent → {gw}: {}",
        if ok(&r) {
            "connected, request sent"
        } else {
            "FAILED"
        }
    );
    let arrived = sb.wait_for(Duration::from_secs(3), |rec| {
        rec.with_payload("/v1/chat/completions") > 0
    });
    println!("gateway received the request: {arrived}");

    step("bypass attempts: direct connect, rogue DNS, IPv6, QUIC")?;
    let attempts = [
        ("direct TCP", vec!["tcp".to_string(), evil.to_string()]),
        (
            "DNS to a rogue resolver",
            vec!["udp-sendto".to_string(), rogue_dns.to_string()],
        ),
        (
            "IPv6 direct",
            vec![
                "tcp".to_string(),
                SocketAddr::new(sb.forbidden6(), OTHER_TCP).to_string(),
            ],
        ),
        (
            "QUIC (UDP 443)",
            vec![
                "udp-connect".to_string(),
                SocketAddr::new(sb.forbidden4(), 443).to_string(),
            ],
        ),
    ];
    let mut all_blocked = true;
    for (what, args) in &attempts {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = probe(Some(&cg.path), Some(&sb.pod), &args, "exfiltrate");
        let blocked = !ok(&r);
        all_blocked &= blocked;
        println!(
            "{what:<26} → {}",
            if eperm(&r) {
                "blocked (EPERM)"
            } else if blocked {
                "blocked"
            } else {
                "GOT THROUGH"
            }
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let leaked = sb.received.with_payload("exfiltrate");
    println!("unsanctioned destinations received {leaked} bytes-bearing messages");

    step("flow records (chokepoint flows)")?;
    print!("{}", daemon.try_cli(&["flows"]).1);

    step("bypass alert (chokepoint alerts)")?;
    std::thread::sleep(Duration::from_millis(1600));
    print!("{}", daemon.try_cli(&["alerts"]).1);

    step("metrics (curl 127.0.0.1:…/metrics)")?;
    for line in daemon.scrape().lines() {
        if line.starts_with("chokepoint_decisions_total")
            || line.starts_with("chokepoint_bypass_attempts_total")
            || line.starts_with("chokepoint_enforcing")
            || line.starts_with("chokepoint_policy_generation")
            || line.starts_with("chokepoint_records_lost_total")
        {
            println!("{line}");
        }
    }

    step("teardown")?;
    drop(daemon);
    drop(cg);
    drop(sb);
    if !(arrived && all_blocked && leaked == 0) {
        bail!(
            "the demo did not show the expected result (gateway reached: {arrived}, all bypasses blocked: {all_blocked}, leaked: {leaked})"
        );
    }
    println!(
        "sanctioned request reached the gateway; every bypass was blocked and recorded; sandbox removed"
    );
    Ok(())
}
