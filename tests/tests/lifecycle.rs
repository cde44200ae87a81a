//! Daemon lifecycle with continuous traffic: `kill -9`, restart onto a different build,
//! uninstall, corrupt state, and a crowd of API clients. Enforcement never has a gap.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::PathBuf,
    time::{Duration, Instant},
};

use chokepoint_tests::*;

fn addrs(fx: &Fixture) -> (String, String) {
    (
        SocketAddr::new(fx.sb.gateway4(), GATEWAY_PORT).to_string(),
        SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP).to_string(),
    )
}

/// Runs the alternating gateway/forbidden loop for `secs` in a thread.
fn traffic(fx: &Fixture, secs: u64) -> std::thread::JoinHandle<serde_json::Value> {
    let (gw, bad) = addrs(fx);
    let cg = fx.cg.path.clone();
    std::thread::spawn(move || {
        probe(
            Some(&cg),
            None,
            &["loop", &gw, &bad, &secs.to_string()],
            "loop",
        )
    })
}

fn assert_no_gap(fx: &Fixture, r: &serde_json::Value) {
    assert_eq!(r["bad_ok"], 0, "a forbidden connect got through: {r}");
    assert_eq!(r["good_fail"], 0, "gateway traffic failed: {r}");
    assert!(
        r["good_ok"].as_u64().unwrap_or(0) > 10,
        "too little traffic: {r}"
    );
    let forbidden = fx.sb.forbidden4().to_string();
    assert_eq!(
        fx.sb.received.count(|v| v["local"]
            .as_str()
            .is_some_and(|l| l.starts_with(&forbidden))),
        0,
        "the forbidden server received something"
    );
}

#[test]
fn kill_9_leaves_enforcement_and_accounts_the_downtime() {
    let mut fx = Fixture::new("enforce");
    let before = fx.daemon.cli_json(&["status", "--json"])["records"]["kernel_decisions"]
        .as_u64()
        .unwrap_or(0);
    let t = traffic(&fx, 5);
    std::thread::sleep(Duration::from_millis(1000));
    fx.daemon.kill(libc::SIGKILL);
    let down_at = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    let downtime = down_at.elapsed();
    fx.daemon.spawn(None);
    let r = t.join().expect("traffic");
    assert_no_gap(&fx, &r);
    // Records resume, and the kernel counted the decisions made while the daemon was down: every
    // denied attempt of the loop is in the counters (none silently lost).
    let st = fx.daemon.cli_json(&["status", "--json"]);
    let after = st["records"]["kernel_decisions"].as_u64().unwrap_or(0);
    let bad = r["bad_fail"].as_u64().unwrap_or(0);
    assert!(
        after - before >= bad,
        "kernel counted {} decisions for {bad} denied attempts",
        after - before
    );
    assert!(st["health"] != "not_enforcing", "{st}");
    // Records from the downtime were kept in the pinned ring buffer and delivered after restart:
    // the audit log (written by both daemons) holds exactly one deny record per denied attempt.
    let (_, bad_dst) = addrs(&fx);
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(10) {
        let log = std::fs::read_to_string(&fx.daemon.audit_log).unwrap_or_default();
        n = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|f| {
                f["event"] == "flow" && f["verdict"] == "deny" && f["dst"] == bad_dst.as_str()
            })
            .count() as u64;
        if n >= bad {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        n, bad,
        "{n} deny records for {bad} denied attempts across a {downtime:?} outage"
    );
    assert_eq!(st["records"]["lost"], 0);
    // And new records keep coming.
    let p = payload("after");
    assert!(eperm(&fx.attempt(false, &["tcp", &bad_dst], &p)));
}

fn variant_bin() -> PathBuf {
    let p = std::env::var_os("CHOKEPOINT_BIN_VARIANT").map(PathBuf::from).expect(
        "CHOKEPOINT_BIN_VARIANT is not set: the upgrade test needs a second build (run it through `cargo xtask test`)",
    );
    assert!(p.exists(), "variant build missing at {}", p.display());
    p
}

#[test]
fn upgrade_to_a_different_build_without_a_gap() {
    let variant = variant_bin();
    let mut fx = Fixture::new("enforce");
    let t = traffic(&fx, 5);
    std::thread::sleep(Duration::from_millis(1000));
    fx.daemon.kill(libc::SIGTERM);
    fx.daemon.bin = variant;
    fx.daemon.spawn(None);
    let r = t.join().expect("traffic");
    assert_no_gap(&fx, &r);
    let log = fx.daemon.log_text();
    assert!(
        log.contains("\"replaced\""),
        "the new build's programs did not replace the old ones:\n{log}"
    );
    // No double processing: one attempt, one record.
    let (_, bad) = addrs(&fx);
    let p = payload("once");
    let mut cmd = std::process::Command::new(probe_bin());
    cmd.args(["tcp", &bad])
        .env("CP_PAYLOAD", &p)
        .stdout(std::process::Stdio::null());
    let child = in_cgroup(cmd, Some(&fx.cg.path), None)
        .spawn()
        .expect("probe");
    let pid = child.id();
    let _ = child.wait_with_output();
    std::thread::sleep(Duration::from_millis(500));
    let n = fx.daemon.flows().iter().filter(|f| f["pid"] == pid).count();
    assert_eq!(n, 1, "one attempt produced {n} records after the upgrade");
}

#[test]
fn uninstall_is_the_only_way_enforcement_stops() {
    let mut fx = Fixture::new("enforce");
    let (_, bad) = addrs(&fx);
    fx.daemon.kill(libc::SIGKILL);
    assert!(
        eperm(&fx.attempt(false, &["tcp", &bad], "x")),
        "enforcement stopped with the daemon"
    );
    let out = std::process::Command::new(chokepoint_bin())
        .arg("uninstall")
        .arg("--bpffs")
        .arg(&fx.daemon.bpffs)
        .output()
        .expect("uninstall");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!fx.daemon.bpffs.exists(), "pins left behind");
    let p = payload("free");
    let r = fx.attempt(false, &["tcp", &bad], &p);
    fx.assert_allowed("after uninstall", &r, &p);
}

/// Starts a daemon on the fixture's pins and state, expects it to refuse, returns its stderr.
fn start_must_fail(fx: &Fixture) -> String {
    let out = std::process::Command::new(chokepoint_bin())
        .args(["daemon", "--bpffs"])
        .arg(&fx.daemon.bpffs)
        .arg("--state-dir")
        .arg(&fx.daemon.state)
        .arg("--socket")
        .arg(&fx.daemon.socket)
        .output()
        .expect("daemon");
    assert!(!out.status.success(), "the daemon started on bad state");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn corrupt_state_fails_closed() {
    let mut fx = Fixture::new("enforce");
    let (_, bad) = addrs(&fx);
    fx.daemon.kill(libc::SIGTERM);
    std::fs::write(fx.daemon.state.join("current"), "not-a-number").expect("corrupt");
    let err = start_must_fail(&fx);
    assert!(
        err.contains("corrupt") && err.contains("current"),
        "unclear error: {err}"
    );
    assert!(
        eperm(&fx.attempt(false, &["tcp", &bad], "x")),
        "a corrupt state dir opened the gate"
    );
    // A wiped state dir while enforcement is pinned: refuse, keep enforcing.
    std::fs::remove_dir_all(&fx.daemon.state).expect("wipe");
    let err = start_must_fail(&fx);
    assert!(err.contains("no record of it"), "unclear error: {err}");
    assert!(
        eperm(&fx.attempt(false, &["tcp", &bad], "y")),
        "a wiped state dir opened the gate"
    );
}

#[test]
fn a_crowd_of_clients_and_a_slow_garbage_sender_do_not_stall_the_api() {
    let fx = Fixture::new("enforce");
    let sock = fx.daemon.socket.clone();
    // A client that sends garbage one byte at a time.
    let slow_sock = sock.clone();
    let slow = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&slow_sock).expect("connect");
        for b in b"{\"v\":1,\"cmd\":\"gar" {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let t0 = Instant::now();
    let handles: Vec<_> = (0..1000)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&sock).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("timeout");
                s.write_all(b"{\"v\":1,\"cmd\":\"identities\"}\n")
                    .expect("write");
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line).expect("read");
                line.contains("\"ok\":true")
            })
        })
        .collect();
    let ok_count = handles
        .into_iter()
        .filter_map(|h| h.join().ok())
        .filter(|&b| b)
        .count();
    assert_eq!(
        ok_count, 1000,
        "only {ok_count} of 1000 clients got an answer"
    );
    assert!(t0.elapsed() < Duration::from_secs(30));
    // Enforcement and the API keep working.
    let (gw, bad) = addrs(&fx);
    assert!(eperm(&fx.attempt(false, &["tcp", &bad], "x")));
    assert!(ok(&fx.attempt(false, &["tcp", &gw], "y")));
    assert_eq!(fx.daemon.cli_json(&["status", "--json"])["generation"], 1);
    let _ = slow.join();
}
