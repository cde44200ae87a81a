//! Task-scoped grants: kernel-checked expiry (lapses with the daemon stopped), revocation that
//! cuts a live connection on its next packet, and the task id in records.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chokepoint_tests::*;

fn forbidden(fx: &Fixture) -> String {
    SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP).to_string()
}

#[test]
fn grant_expires_in_the_kernel_with_the_daemon_stopped() {
    let mut fx = Fixture::new("enforce");
    assert!(eperm(&fx.attempt(
        false,
        &["tcp", &forbidden(&fx)],
        "before"
    )));
    // Long enough for the attempts below under software emulation too (`time_scale`).
    let ttl = Duration::from_secs(3 * u64::from(time_scale()));
    let ttl_arg = format!("{}s", ttl.as_secs());
    let g = fx.daemon.cli_json(&[
        "grant",
        "--identity",
        "agent",
        "--to",
        &format!("{}:{OTHER_TCP}/tcp", fx.sb.forbidden4()),
        "--ttl",
        &ttl_arg,
        "--task",
        "T-expire",
        "--json",
    ]);
    assert_eq!(g["task"], "T-expire");
    let granted_at = Instant::now();
    let p = payload("granted");
    let r = fx.attempt(false, &["tcp", &forbidden(&fx)], &p);
    fx.assert_allowed("granted destination", &r, &p);
    let rec = fx.daemon.wait_flow(Duration::from_secs(5), |f| {
        f["verdict"] == "allow" && f["reason"] == "grant"
    });
    let rec = rec.unwrap_or_else(|| panic!("no grant record: {:#?}", fx.daemon.flows()));
    assert_eq!(rec["task"], "T-expire");
    // The daemon goes away for good: nothing in userspace can expire the grant.
    fx.daemon.kill(libc::SIGKILL);
    let r = fx.attempt(false, &["tcp", &forbidden(&fx)], "still");
    assert!(
        granted_at.elapsed() < ttl,
        "the test was slower than the grant's {ttl:?}: raise CP_TEST_TIME_SCALE"
    );
    assert!(ok(&r), "grant lapsed early: {r}");
    while granted_at.elapsed() < ttl + Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let p = payload("expired");
    let r = fx.attempt(false, &["tcp", &forbidden(&fx)], &p);
    assert!(
        eperm(&r),
        "the grant did not expire with the daemon stopped: {r}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fx.sb.received.with_payload(&p), 0);
}

#[test]
fn revoke_cuts_a_live_connection_within_one_packet() {
    for pod in [false, true] {
        let fx = Fixture::new("enforce");
        fx.daemon.cli_json(&[
            "grant",
            "--identity",
            "agent",
            "--to",
            &format!("{}:{OTHER_TCP}", fx.sb.forbidden4()),
            "--ttl",
            "10m",
            "--task",
            "T-live",
            "--json",
        ]);
        let mut cmd = Command::new(probe_bin());
        cmd.args(["hold", &forbidden(&fx), "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _h = Proc(
            in_cgroup(cmd, Some(&fx.cg.path), pod.then_some(&fx.sb.pod))
                .spawn()
                .expect("hold"),
        );
        let t0 = Instant::now();
        while fx.sb.received.with_payload("tick-") < 3 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the granted connection never carried data"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = fx
            .daemon
            .cli_json(&["revoke", "--task", "T-live", "--json"]);
        assert_eq!(r["revoked"], 1);
        // One tick interval (100 ms) plus scheduling slack: at most one more segment lands.
        std::thread::sleep(Duration::from_millis(300));
        let after = fx.sb.received.with_payload("tick-");
        std::thread::sleep(Duration::from_millis(1000));
        assert_eq!(
            fx.sb.received.with_payload("tick-"),
            after,
            "data kept flowing after revoke (pod={pod})"
        );
        let rec = fx.daemon.wait_flow(Duration::from_secs(5), |f| {
            f["verdict"] == "deny" && f["reason"] == "revoked"
        });
        assert!(rec.is_some(), "no revoked record: {:#?}", fx.daemon.flows());
        // New connections are refused too.
        assert!(eperm(&fx.attempt(pod, &["tcp", &forbidden(&fx)], "again")));
    }
}

#[test]
fn grants_survive_a_restart_and_bad_grants_are_refused() {
    let mut fx = Fixture::new("enforce");
    fx.daemon.cli_json(&[
        "grant",
        "--identity",
        "agent",
        "--to",
        &format!("{}:{OTHER_TCP}/tcp", fx.sb.forbidden4()),
        "--ttl",
        "10m",
        "--task",
        "T-keep",
        "--json",
    ]);
    fx.daemon.kill(libc::SIGTERM);
    fx.daemon.spawn(None);
    let p = payload("kept");
    let r = fx.attempt(false, &["tcp", &forbidden(&fx)], &p);
    fx.assert_allowed("grant after restart", &r, &p);
    let rec = fx.daemon.wait_flow(Duration::from_secs(5), |f| {
        f["reason"] == "grant" && f["task"] == "T-keep"
    });
    assert!(
        rec.is_some(),
        "the restarted daemon does not name the task: {:#?}",
        fx.daemon.flows()
    );
    for (args, needle) in [
        (
            vec![
                "--identity",
                "nobody",
                "--to",
                "10.0.0.1:1",
                "--ttl",
                "1m",
                "--task",
                "t",
            ],
            "no identity named",
        ),
        (
            vec![
                "--identity",
                "agent",
                "--to",
                "10.0.0.1",
                "--ttl",
                "1m",
                "--task",
                "t",
            ],
            "HOST_OR_CIDR:PORT",
        ),
        (
            vec![
                "--identity",
                "agent",
                "--to",
                "10.0.0.1:99999",
                "--ttl",
                "1m",
                "--task",
                "t",
            ],
            "out of range",
        ),
        (
            vec![
                "--identity",
                "agent",
                "--to",
                "10.0.0.1:1",
                "--ttl",
                "soon",
                "--task",
                "t",
            ],
            "--ttl",
        ),
        (
            vec![
                "--identity",
                "agent",
                "--to",
                "10.0.0.1:1",
                "--ttl",
                "30d",
                "--task",
                "t",
            ],
            "--ttl must be",
        ),
    ] {
        let mut a = vec!["grant"];
        a.extend(args);
        let (ok_, _, err) = fx.daemon.try_cli(&a);
        assert!(!ok_, "{a:?} succeeded");
        assert!(err.contains(needle), "{a:?}: `{needle}` not in {err}");
    }
}
