//! The audit log has one writer: flow records, policy changes, grants and revokes written at the
//! same time by different tasks of a real daemon, with a rotation size small enough that the log
//! rotates every few lines, all end up in the files exactly once, every file within the size
//! limit, every line with its `event`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use chokepoint_tests::*;
use serde_json::Value;

const MAX_BYTES: u64 = 4096;

/// The log's files, oldest first.
fn files(log: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = (1..=500)
        .rev()
        .map(|n| PathBuf::from(format!("{}.{n}", log.display())))
        .filter(|p| p.exists())
        .collect();
    v.push(log.to_path_buf());
    v
}

fn lines(log: &Path) -> Vec<Value> {
    files(log)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l)
                        .unwrap_or_else(|e| panic!("{}: torn line {l:?}: {e}", p.display()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn rotation_with_several_writers_loses_and_misplaces_nothing() {
    let fx = Fixture::with_args(
        "enforce",
        &[
            "--audit-log-max-bytes",
            &MAX_BYTES.to_string(),
            "--audit-log-keep",
            "500",
        ],
    );
    let bad = SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP).to_string();
    let granted = SocketAddr::new(fx.sb.forbidden4(), QUIC).to_string();
    let policy = fx.sb.policy(&[("agent", &fx.cg.rel, "enforce")]);
    const ROUNDS: usize = 25;
    // Writer 1 and 2 (policy applies, grants and revokes through the API) in another thread while
    // the record consumer writes deny records of this thread's attempts.
    let generations = std::thread::scope(|s| {
        let api = s.spawn(|| {
            let mut gens = Vec::new();
            for i in 0..ROUNDS {
                let r = fx.daemon.apply(&format!("{policy}\n# round {i}\n"));
                gens.push(r["generation"].as_u64().expect("generation"));
                let task = format!("T-rot-{i}");
                fx.daemon.cli_json(&[
                    "grant",
                    "--identity",
                    "agent",
                    "--to",
                    &format!("{granted}/tcp"),
                    "--ttl",
                    "5m",
                    "--task",
                    &task,
                    "--json",
                ]);
                fx.daemon.cli_json(&["revoke", "--task", &task, "--json"]);
            }
            gens
        });
        for i in 0..ROUNDS * 2 {
            let p = payload(&format!("rot-{i}"));
            assert!(eperm(&fx.attempt(false, &["tcp", &bad], &p)), "attempt {i}");
        }
        api.join().expect("api writer")
    });
    let denied = ROUNDS * 2;
    // Every deny record reaches the log (the consumer runs behind by a few ms).
    let t0 = Instant::now();
    let all = loop {
        let all = lines(&fx.daemon.audit_log);
        let n = all
            .iter()
            .filter(|v| v["event"] == "flow" && v["verdict"] == "deny" && v["dst"] == bad.as_str())
            .count();
        if n >= denied || t0.elapsed() > Duration::from_secs(10) {
            break all;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let count = |pred: &dyn Fn(&Value) -> bool| all.iter().filter(|v| pred(v)).count();
    assert_eq!(
        // Flow records (alerts about them are in the log too).
        count(&|v| v["event"] == "flow" && v["verdict"] == "deny" && v["dst"] == bad.as_str()),
        denied,
        "one deny record per denied attempt"
    );
    // Each applied generation exactly once, in order across the files.
    let changes: Vec<u64> = all
        .iter()
        .filter(|v| v["event"] == "policy_change" && v["action"] == "apply")
        .map(|v| v["policy_generation"].as_u64().expect("generation"))
        .collect();
    assert_eq!(changes, generations, "policy changes lost or misplaced");
    // One size counter: no file grew past the limit (a writer holding a rotated file would).
    let fs = files(&fx.daemon.audit_log);
    assert!(fs.len() >= 5, "the log rotated only {} times", fs.len());
    for p in &fs {
        let len = std::fs::metadata(p).expect("file").len();
        assert!(
            len <= MAX_BYTES,
            "{} is {len} bytes, over the {MAX_BYTES}-byte limit: a writer kept writing into a rotated file",
            p.display()
        );
    }
    for i in 0..ROUNDS {
        let task = format!("T-rot-{i}");
        assert_eq!(
            count(&|v| v["event"] == "grant" && v["task"] == task.as_str()),
            1,
            "grant of {task}"
        );
        assert_eq!(
            count(&|v| v["event"] == "revoke" && v["task"] == task.as_str() && v["revoked"] == 1),
            1,
            "revoke of {task}"
        );
    }
    // Every line names what it records.
    for v in &all {
        let e = v["event"]
            .as_str()
            .unwrap_or_else(|| panic!("no event: {v}"));
        assert!(
            [
                "flow",
                "lost",
                "policy_change",
                "mode_change",
                "grant",
                "revoke",
                "expiry",
                "alert",
                "checkpoint",
                "fqdn_cap"
            ]
            .contains(&e),
            "unexpected event {e}: {v}"
        );
        if e == "flow" {
            assert_ne!(v["verdict"], "lost", "{v}");
        }
    }
    assert_eq!(count(&|v| v["event"] == "lost"), 0, "nothing was lost");
}
