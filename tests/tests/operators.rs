//! Operators' tools against the real daemon: flow and alert queries applied by the daemon, `lost`
//! lines for a subscriber that falls behind, every event kind of a real audit log validated
//! against docs/records.schema.json, `audit verify` catching each kind of tampering across
//! rotation and restart, the shadow-integration inventory surviving a restart, and the CLI
//! conventions (completions, man page, `CHOKEPOINT_SOCKET`, exit codes, `--offline`).

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chokepoint_tests::{dns_server::DnsServer, *};
use serde_json::Value;

fn deny_tcp(fx: &Fixture, port: u16, what: &str) {
    let dst = SocketAddr::new(fx.sb.forbidden4(), port).to_string();
    let r = fx.attempt(false, &["tcp", &dst], &payload(what));
    assert!(!ok(&r), "{what}: connect to {dst} succeeded: {r}");
}

fn lines_of(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn array(fx: &Fixture, args: &[&str]) -> Vec<Value> {
    let v = fx.daemon.cli_json(args);
    v.as_array()
        .unwrap_or_else(|| panic!("{} did not print an array: {v}", args.join(" ")))
        .clone()
}

fn exit_code(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(chokepoint_bin())
        .args(args)
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .expect("cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn flow_and_alert_filters_are_applied_by_the_daemon() {
    let fx = Fixture::new("enforce");
    let t_before = fx.daemon.cli_json(&["status", "--json"]);
    assert!(t_before["generation"].is_number());
    let gw = SocketAddr::new(fx.sb.gateway4(), GATEWAY_PORT).to_string();
    let r = fx.attempt(false, &["tcp", &gw], &payload("gw"));
    assert!(ok(&r), "{r}");
    deny_tcp(&fx, OTHER_TCP, "deny-a");
    deny_tcp(&fx, OTHER_TCP + 7, "deny-b");
    let bad = SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP).to_string();
    fx.daemon
        .wait_flow(Duration::from_secs(5), |f| f["dst"] == bad.as_str())
        .expect("deny record");
    let all = array(&fx, &["flows", "-o", "json"]);
    assert!(all.len() >= 3, "{all:#?}");

    let deny = array(&fx, &["flows", "--verdict", "deny", "-o", "json"]);
    assert!(!deny.is_empty() && deny.iter().all(|f| f["verdict"] == "deny"));
    let allow = array(&fx, &["flows", "--verdict", "allow", "--json"]);
    assert!(!allow.is_empty() && allow.iter().all(|f| f["verdict"] == "allow"));

    // --dst CIDR[:PORT]: the port narrows, the prefix matches both denied ports.
    let net = format!("{}/32", fx.sb.forbidden4());
    let both = array(&fx, &["flows", "--dst", &net, "-o", "json"]);
    let one = array(
        &fx,
        &[
            "flows",
            "--dst",
            &format!("{net}:{OTHER_TCP}"),
            "-o",
            "json",
        ],
    );
    assert!(both.len() > one.len() && !one.is_empty(), "{both:#?}");
    assert!(one.iter().all(|f| f["dst"] == bad.as_str()));
    let gwnet = array(
        &fx,
        &[
            "flows",
            "--dst",
            &format!("{}/24", fx.sb.gateway4()),
            "-o",
            "json",
        ],
    );
    assert!(gwnet.iter().any(|f| f["dst"] == gw.as_str()));

    // --last N: the newest N matching, oldest first.
    let last = array(
        &fx,
        &["flows", "--verdict", "deny", "--last", "1", "-o", "json"],
    );
    assert_eq!(last.len(), 1);
    assert_eq!(last[0], *deny.last().unwrap());
    // With --follow: the backlog of the newest N matching first, then the live stream (which
    // applies the same filter: the gateway's allow record of a new attempt is not printed).
    {
        let mut child = Proc(
            Command::new(chokepoint_bin())
                .args(["flows", "--follow", "--verdict", "deny", "--last", "2"])
                .args(["-o", "jsonl", "--socket"])
                .arg(&fx.daemon.socket)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("follow"),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.0.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let next = || -> Value {
            let l = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a --follow line");
            serde_json::from_str(&l).expect("a JSON line")
        };
        assert_eq!(next(), deny[deny.len() - 2], "backlog, oldest first");
        assert_eq!(next(), deny[deny.len() - 1]);
        assert!(ok(&fx.attempt(false, &["tcp", &gw], &payload("gw-live"))));
        deny_tcp(&fx, OTHER_TCP + 3, "deny-live");
        let live = next();
        assert_eq!(live["verdict"], "deny", "{live}");
        assert!(
            live["dst"]
                .as_str()
                .is_some_and(|d| d.ends_with(&format!(":{}", OTHER_TCP + 3))),
            "{live}"
        );
    }
    let deny = array(&fx, &["flows", "--verdict", "deny", "-o", "json"]);
    let all = array(&fx, &["flows", "-o", "json"]);

    // Identity, tenant, reason; no match is an empty array, not an error.
    assert_eq!(
        array(&fx, &["flows", "--identity", "agent", "-o", "json"]).len(),
        all.len()
    );
    assert!(array(&fx, &["flows", "--identity", "nobody", "-o", "json"]).is_empty());
    assert_eq!(
        array(&fx, &["flows", "--tenant", "acme", "-o", "json"]).len(),
        all.len()
    );
    let ng = array(&fx, &["flows", "--reason", "not_gateway", "-o", "json"]);
    assert!(!ng.is_empty() && ng.iter().all(|f| f["reason"] == "not_gateway"));
    // Records carry no pod fields here: a pod filter matches nothing.
    assert!(array(&fx, &["flows", "--namespace", "agents", "-o", "json"]).is_empty());
    assert!(array(&fx, &["flows", "--pod", "p", "-o", "json"]).is_empty());

    // Time bounds: durations and RFC 3339.
    assert_eq!(
        array(&fx, &["flows", "--since", "1h", "-o", "json"]).len(),
        all.len()
    );
    assert!(array(&fx, &["flows", "--until", "1h", "-o", "json"]).is_empty());
    let first_time = all[0]["time"].as_str().unwrap().to_string();
    let upto = array(&fx, &["flows", "--until", &first_time, "-o", "json"]);
    assert!(!upto.is_empty() && upto.len() < all.len(), "{upto:#?}");
    assert!(
        array(
            &fx,
            &["flows", "--since", "2999-01-01T00:00:00Z", "-o", "json"]
        )
        .is_empty()
    );

    // --task: a grant's flows.
    let granted = SocketAddr::new(fx.sb.forbidden4(), QUIC).to_string();
    fx.daemon.cli_json(&[
        "grant",
        "--identity",
        "agent",
        "--to",
        &format!("{granted}/tcp"),
        "--ttl",
        "5m",
        "--task",
        "T-q",
        "--json",
    ]);
    let _ = fx.attempt(false, &["tcp", &granted], &payload("granted"));
    fx.daemon
        .wait_flow(Duration::from_secs(5), |f| f["task"] == "T-q")
        .expect("granted flow");
    let t = array(&fx, &["flows", "--task", "T-q", "-o", "json"]);
    assert!(!t.is_empty() && t.iter().all(|f| f["task"] == "T-q"));

    // jsonl: one object per line; text: one line per record.
    let (ok_, out, err) = fx
        .daemon
        .try_cli(&["flows", "--verdict", "deny", "-o", "jsonl"]);
    assert!(ok_, "{err}");
    let l = lines_of(&out);
    assert_eq!(l.len(), deny.len());
    let (ok_, out, _) = fx.daemon.try_cli(&["flows", "--verdict", "deny"]);
    assert!(ok_ && out.lines().count() == deny.len(), "{out}");
    assert!(
        !out.contains('\u{1b}'),
        "colour codes in piped output: {out:?}"
    );

    // Bad filters are usage errors (exit 2) that name the flag.
    for (args, flag) in [
        (&["flows", "--dst", "10.0.0.0/33"][..], "--dst"),
        (&["flows", "--since", "yesterday"][..], "--since"),
        (&["alerts", "--until", "soon"][..], "--until"),
        (&["flows", "--verdict", "maybe"][..], "--verdict"),
        (&["flows", "--follow", "--until", "1m"][..], "--until"),
    ] {
        let (code, _, err) = exit_code(&fx.daemon, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }

    // Alerts: the same filters.
    let t0 = Instant::now();
    let alerts = loop {
        let a = array(&fx, &["alerts", "-o", "json"]);
        if a.len() >= 2 || t0.elapsed() > Duration::from_secs(10) {
            break a;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(alerts.len() >= 2, "{alerts:#?}");
    let a = array(
        &fx,
        &[
            "alerts",
            "--dst",
            &format!("{net}:{}", OTHER_TCP + 7),
            "-o",
            "json",
        ],
    );
    assert_eq!(a.len(), 1, "{a:#?}");
    assert!(array(&fx, &["alerts", "--identity", "nobody", "--json"]).is_empty());
    assert_eq!(
        array(
            &fx,
            &[
                "alerts",
                "--reason",
                "not_gateway",
                "--last",
                "1",
                "-o",
                "json"
            ]
        )
        .len(),
        1
    );
    let (ok_, out, _) = fx.daemon.try_cli(&["alerts", "-o", "jsonl"]);
    assert!(ok_ && lines_of(&out).len() == alerts.len());
}

/// A `--follow` client whose reader stalls, then catches up: the gap is a `lost` line with the
/// count of what it missed, for flows and for alerts.
#[test]
fn a_slow_follow_subscriber_gets_lost_lines() {
    let fx = Fixture::new("enforce");
    let net = format!("{}/32", fx.sb.forbidden4());
    for (what, extra) in [("flows", &["--dst", net.as_str()][..]), ("alerts", &[][..])] {
        let child = Command::new(chokepoint_bin())
            .arg(what)
            .arg("--follow")
            .args(extra)
            .args(["-o", "jsonl", "--socket"])
            .arg(&fx.daemon.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("follow");
        let mut guard = Proc(child);
        std::thread::sleep(Duration::from_millis(500));
        // Nobody reads the pipe: the CLI blocks, then the socket fills, then the daemon's
        // subscriber falls behind the broadcast buffer.
        let dst = SocketAddr::new(fx.sb.forbidden4(), 20000).to_string();
        let r = probe(
            Some(&fx.cg.path),
            None,
            &["udp-flood", &dst, "60000", "6000"],
            "flood",
        );
        assert_eq!(r["refused"], 60000, "{r}");
        // The daemon takes in the whole burst (delivered or counted lost), and alerts are raised
        // when their window closes.
        let t0 = Instant::now();
        loop {
            let st = fx.daemon.cli_json(&["status", "--json"]);
            let r = &st["records"];
            let (d, l, k) = (
                r["delivered"].as_u64().unwrap_or(0),
                r["lost"].as_u64().unwrap_or(0),
                r["kernel_decisions"].as_u64().unwrap_or(0),
            );
            if k > 0 && d + l >= k {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60 * u64::from(time_scale())),
                "consumer stuck: {r}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        std::thread::sleep(Duration::from_secs(3));
        let out = guard.0.stdout.take().expect("stdout");
        let mut lost = 0u64;
        let mut seen = 0u64;
        let mut lagged = 0u64;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) else {
                break;
            };
            let v: Value = serde_json::from_str(&line).expect("json line");
            if v["verdict"] == "lost" {
                // The subscriber's own gap, or records the kernel could not hand over.
                assert!(
                    v["reason"] == "subscriber_lagged" || v["reason"] == "ring_buffer_full",
                    "{v}"
                );
                let n = v["count"].as_u64().expect("count");
                lost += n;
                if v["reason"] == "subscriber_lagged" {
                    lagged += n;
                }
            } else {
                seen += 1;
            }
        }
        drop(guard);
        assert!(lost > 0, "{what}: no lost line ({seen} entries seen)");
        assert!(
            lagged > 0,
            "{what}: no subscriber_lagged line ({seen} entries seen)"
        );
        if what == "flows" {
            // Every record the daemon received is either seen or counted in a lost line (the
            // daemon's own `lost` records, a handful, may themselves be among those counted).
            let st = fx.daemon.cli_json(&["status", "--json"]);
            let delivered = st["records"]["delivered"].as_u64().expect("delivered");
            assert!(
                seen + lagged >= delivered && seen + lagged <= delivered + 10,
                "{what}: seen {seen} + lagged {lagged} vs {delivered} delivered; daemon records: {}",
                st["records"]
            );
        }
    }
}

fn schema() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/records.schema.json");
    let text = std::fs::read_to_string(&path).expect("schema file");
    let v: Value = serde_json::from_str(&text).expect("schema JSON");
    jsonschema::validator_for(&v).expect("a valid JSON Schema")
}

fn audit_files(log: &Path) -> Vec<PathBuf> {
    let mut files = vec![log.to_path_buf()];
    for n in 1..=20 {
        let p = PathBuf::from(format!("{}.{n}", log.display()));
        if p.exists() {
            files.push(p);
        }
    }
    files
}

fn read_log(files: &[PathBuf]) -> Vec<Value> {
    let mut out = Vec::new();
    for f in files.iter().rev() {
        out.extend(lines_of(&std::fs::read_to_string(f).unwrap_or_default()));
    }
    out
}

#[test]
fn every_event_kind_in_a_real_log_matches_the_schema() {
    let fx = Fixture::with_args("enforce", &["--audit-checkpoint-every", "5"]);
    let d = &fx.daemon;
    deny_tcp(&fx, OTHER_TCP, "schema-deny");
    let gw = SocketAddr::new(fx.sb.gateway4(), GATEWAY_PORT).to_string();
    assert!(ok(&fx.attempt(false, &["tcp", &gw], &payload("schema-gw"))));
    let to = format!("{}:{QUIC}/tcp", fx.sb.forbidden4());
    d.cli_json(&[
        "grant",
        "--identity",
        "agent",
        "--to",
        &to,
        "--ttl",
        "1h",
        "--task",
        "T-s",
        "--json",
    ]);
    d.cli_json(&["revoke", "--task", "T-s", "--json"]);
    d.cli_json(&[
        "grant",
        "--identity",
        "agent",
        "--to",
        &to,
        "--ttl",
        "1s",
        "--task",
        "T-e",
        "--json",
    ]);
    // A mode switch (enforce → audit), then a rollback (audit → enforce).
    let audit_policy = fx.sb.policy(&[("agent", &fx.cg.rel, "audit")]);
    d.apply(&audit_policy);
    d.cli_json(&["policy", "rollback", "--json"]);
    // Wait for the expiry and an alert.
    let t0 = Instant::now();
    let kinds = [
        "flow",
        "policy_change",
        "mode_change",
        "grant",
        "revoke",
        "expiry",
        "alert",
        "checkpoint",
    ];
    let lines = loop {
        let l = read_log(&audit_files(&d.audit_log));
        if kinds.iter().all(|k| l.iter().any(|v| v["event"] == *k))
            || t0.elapsed() > Duration::from_secs(15)
        {
            break l;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let validator = schema();
    for k in kinds {
        assert!(
            lines.iter().any(|v| v["event"] == k),
            "no `{k}` line in the audit log"
        );
    }
    for v in &lines {
        let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{v}\ndoes not match the schema: {errors:#?}"
        );
    }
    // Who asked: the CLI's pid and comm for changes made through the API.
    let grant = lines.iter().find(|v| v["event"] == "grant").unwrap();
    assert_eq!(grant["uid"], 0);
    assert_eq!(grant["comm"], "chokepoint");
    assert!(grant["pid"].as_u64().is_some_and(|p| p > 0));
    assert_eq!(grant["task"], "T-s");
    let revoke = lines.iter().find(|v| v["event"] == "revoke").unwrap();
    assert_eq!(revoke["revoked"], 1);
    let expiry = lines.iter().find(|v| v["event"] == "expiry").unwrap();
    assert_eq!(expiry["task"], "T-e");
    let mode = lines.iter().find(|v| v["event"] == "mode_change").unwrap();
    assert_eq!(
        (&mode["mode"], &mode["previous_mode"]),
        (&"audit".into(), &"enforce".into())
    );
    assert_eq!(mode["comm"], "chokepoint", "{mode}");
    // The apply and the rollback: who asked, the old and the new generation.
    let change = |pred: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .find(|v| v["event"] == "policy_change" && v["action"].as_str().is_some_and(pred))
            .unwrap_or_else(|| panic!("no such policy_change line: {lines:#?}"))
            .clone()
    };
    let apply = change(&|a| a == "apply");
    let rollback = change(&|a| a.starts_with("rollback"));
    for v in [&apply, &rollback] {
        assert_eq!(
            (&v["uid"], &v["comm"]),
            (&0.into(), &"chokepoint".into()),
            "{v}"
        );
        assert!(v["pid"].as_u64().is_some_and(|p| p > 0), "{v}");
        let (new, old) = (
            v["policy_generation"].as_u64(),
            v["previous_generation"].as_u64(),
        );
        assert!(new.zip(old).is_some_and(|(n, o)| n > o), "{v}");
    }
    assert_eq!(rollback["previous_generation"], apply["policy_generation"]);
    assert_eq!(apply["policy_generation"], mode["policy_generation"]);

    // A lost record: restart with the consumer slowed and flood the ring buffer.
    drop(lines);
    let mut daemon = fx;
    daemon.daemon.kill(libc::SIGTERM);
    daemon.daemon.set_env("CHOKEPOINT_CONSUMER_DELAY_MS", "50");
    daemon.daemon.spawn(None);
    let dst = SocketAddr::new(daemon.sb.forbidden4(), OTHER_UDP).to_string();
    probe(
        Some(&daemon.cg.path),
        None,
        &["udp-flood", &dst, "100000"],
        "flood",
    );
    let t0 = Instant::now();
    let lost = loop {
        let l = read_log(&audit_files(&daemon.daemon.audit_log));
        if let Some(v) = l.iter().find(|v| v["event"] == "lost") {
            break v.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no lost record after the flood"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let errors: Vec<String> = validator
        .iter_errors(&lost)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{lost}: {errors:?}");
}

fn verify(files: &[PathBuf], state: &Path) -> (i32, String) {
    let out = Command::new(chokepoint_bin())
        .args(["audit", "verify", "--state-dir"])
        .arg(state)
        .args(files)
        .output()
        .expect("verify");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn copy_set(files: &[PathBuf], dir: &Path) -> Vec<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("dir");
    files
        .iter()
        .map(|f| {
            let to = dir.join(f.file_name().unwrap());
            std::fs::copy(f, &to).expect("copy");
            to
        })
        .collect()
}

fn file_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .expect("read")
        .lines()
        .map(str::to_string)
        .collect()
}

fn put_lines(p: &Path, l: &[String]) {
    std::fs::write(p, l.join("\n") + "\n").expect("write");
}

#[test]
fn audit_verify_catches_each_kind_of_tampering_across_rotation() {
    let mut fx = Fixture::with_args(
        "enforce",
        &[
            "--audit-log-max-bytes",
            "8192",
            "--audit-log-keep",
            "8",
            "--audit-checkpoint-every",
            "8",
        ],
    );
    for i in 0..20 {
        deny_tcp(&fx, OTHER_TCP + i, &format!("v{i}"));
    }
    // The chain continues across a restart.
    fx.daemon.kill(libc::SIGTERM);
    fx.daemon.spawn(None);
    for i in 20..40 {
        deny_tcp(&fx, OTHER_TCP + i, &format!("v{i}"));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // Stopped (its last span signed): the files hold still while the test edits copies.
    fx.daemon.kill(libc::SIGTERM);
    let files = audit_files(&fx.daemon.audit_log);
    assert!(files.len() >= 3, "the log did not rotate: {files:?}");
    let (code, out) = verify(&files, &fx.daemon.state);
    assert_eq!(code, 0, "a clean log failed verification: {out}");
    let lines = read_log(&files);
    assert!(
        lines
            .iter()
            .any(|v| v["event"] == "checkpoint" && v["reason"] == "start")
            && lines
                .iter()
                .any(|v| v["event"] == "checkpoint" && v["reason"] == "stop")
            && lines
                .iter()
                .any(|v| v["event"] == "checkpoint" && v["reason"] == "rotate"),
        "checkpoints missing"
    );
    // Sequence numbers run on without a gap across rotation and restart.
    let seqs: Vec<u64> = lines.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // Tamper with a rotated file (the oldest but one: not the live one), at a flow line.
    // A rotated file (not the live one) with a flow record to tamper with.
    let is_flow_deny = |l: &str| l.starts_with("{\"event\":\"flow\"") && l.contains("\"deny\"");
    let (target, i) = (1..files.len())
        .find_map(|t| {
            let l = file_lines(&files[t]);
            (2..l.len().saturating_sub(1))
                .find(|&i| is_flow_deny(&l[i]))
                .map(|i| (t, i))
        })
        .unwrap_or_else(|| panic!("no rotated file with a flow record: {files:?}"));
    let tmp = fx.daemon.dir.join("tamper");
    let base = file_lines(&files[target]);
    type Edit = fn(&mut Vec<String>, usize);
    let cases: [(&str, Edit, String); 5] = [
        (
            "edited",
            |l, i| l[i] = l[i].replacen("\"deny\"", "\"allow\"", 1),
            format!(":{}: edited", i + 1),
        ),
        (
            "removed",
            |l, i| {
                l.remove(i);
            },
            format!(":{}: removed", i + 1),
        ),
        (
            "reordered",
            |l, i| l.swap(i, i + 1),
            format!(":{}: reordered", i + 1),
        ),
        (
            "inserted",
            |l, i| {
                let copy = l[i - 1].clone();
                l.insert(i, copy);
            },
            format!(":{}: inserted", i + 1),
        ),
        (
            "truncated",
            |l, _| {
                let last = l.last_mut().unwrap();
                last.truncate(last.len() / 2);
            },
            format!(":{}: truncated", base.len()),
        ),
    ];
    for (what, edit, expect) in cases {
        let set = copy_set(&files, &tmp);
        let mut l = file_lines(&set[target]);
        edit(&mut l, i);
        if what == "truncated" {
            // Cut mid-line: no final newline either.
            std::fs::write(&set[target], l.join("\n")).unwrap();
        } else {
            put_lines(&set[target], &l);
        }
        let (code, out) = verify(&set, &fx.daemon.state);
        assert_eq!(code, 1, "{what}: not caught: {out}");
        let name = set[target].display().to_string();
        assert!(
            out.contains(&format!("{name}{expect}")),
            "{what}: expected `{name}{expect}`: {out}"
        );
    }
    // A rotated file's tail cut at a line boundary: caught at the next file's first line.
    let set = copy_set(&files, &tmp);
    let mut l = file_lines(&set[target]);
    l.pop();
    put_lines(&set[target], &l);
    let (code, out) = verify(&set, &fx.daemon.state);
    assert_eq!(code, 1, "tail cut not caught: {out}");
    assert!(
        out.contains(&format!("{}:1: removed", set[target - 1].display())),
        "{out}"
    );
    // A whole rotated file removed from the set.
    let mut set = copy_set(&files, &tmp);
    set.remove(target);
    let (code, out) = verify(&set, &fx.daemon.state);
    assert_eq!(code, 1, "missing file not caught: {out}");
    // A line edited with the chain recomputed (no key): caught by the next signed checkpoint.
    let set = copy_set(&files, &tmp);
    let mut l = file_lines(&set[target]);
    l[i] = l[i].replacen("\"deny\"", "\"allow\"", 1);
    rehash_from(&mut l, i);
    put_lines(&set[target], &l);
    let (code, out) = verify(&set, &fx.daemon.state);
    assert_eq!(code, 1, "recomputed chain not caught: {out}");
    assert!(out.contains("edited"), "{out}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Recomputes the hashes of lines `from..` (what an editor without the signing key can do).
fn rehash_from(l: &mut [String], from: usize) {
    use sha2::{Digest, Sha256};
    const SUFFIX: usize = 75;
    let hash_of = |s: &str| -> [u8; 32] {
        let h = &s[s.len() - 66..s.len() - 2];
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&h[i * 2..i * 2 + 2], 16).unwrap();
        }
        out
    };
    let mut prev = if from == 0 {
        let v: Value = serde_json::from_str(&l[0]).unwrap();
        let p = v["prev"].as_str().unwrap().to_string();
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&p[i * 2..i * 2 + 2], 16).unwrap();
        }
        out
    } else {
        hash_of(&l[from - 1])
    };
    for line in l.iter_mut().skip(from) {
        let cut = line.len() - SUFFIX;
        let body = format!("{}}}", &line[..cut]);
        let mut h = Sha256::new();
        h.update(prev);
        h.update(body.as_bytes());
        let hash: [u8; 32] = h.finalize().into();
        let hex = hash.iter().fold(String::new(), |mut s, b| {
            use std::fmt::Write;
            let _ = write!(s, "{b:02x}");
            s
        });
        *line = format!("{},\"hash\":\"{hex}\"}}", &line[..cut]);
        prev = hash;
    }
}

#[test]
fn the_inventory_survives_a_restart() {
    let mut fx = Fixture::new("enforce");
    deny_tcp(&fx, OTHER_TCP, "inv-1");
    deny_tcp(&fx, OTHER_TCP, "inv-2");
    deny_tcp(&fx, OTHER_TCP + 1, "inv-3");
    let dst6 = SocketAddr::new(fx.sb.forbidden6(), OTHER_TCP).to_string();
    assert!(!ok(&fx.attempt(false, &["tcp", &dst6], &payload("inv-6"))));
    let gw = SocketAddr::new(fx.sb.gateway4(), GATEWAY_PORT).to_string();
    assert!(ok(&fx.attempt(false, &["tcp", &gw], &payload("inv-gw"))));
    let forbidden = fx.sb.forbidden4().to_string();
    let forbidden6 = fx.sb.forbidden6().to_string();
    let find = |v: &Value, addr: &str| -> Option<Value> {
        v["identities"]
            .as_array()?
            .iter()
            .find(|i| i["identity"] == "agent")?["destinations"]
            .as_array()?
            .iter()
            .find(|d| d["dst"] == addr)
            .cloned()
    };
    let t0 = Instant::now();
    let inv = loop {
        let v = fx.daemon.cli_json(&["inventory", "-o", "json"]);
        if find(&v, &forbidden).is_some_and(|d| d["attempts"] == 3)
            && find(&v, &forbidden6).is_some()
        {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "inventory: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let d = find(&inv, &forbidden).unwrap();
    assert_eq!(
        d["ports"],
        serde_json::json!([format!("{OTHER_TCP}/tcp"), format!("{}/tcp", OTHER_TCP + 1)])
    );
    assert_eq!(d["reasons"], serde_json::json!(["not_gateway"]));
    assert!(d["first_seen"].as_str() <= d["last_seen"].as_str());
    assert!(d["host"].is_null());
    // The gateway is sanctioned: not in the inventory.
    assert!(find(&inv, &fx.sb.gateway4().to_string()).is_none());
    let text = fx.daemon.scrape();
    assert_eq!(
        metric(
            &text,
            "chokepoint_inventory_destinations{identity=\"agent\"}"
        ),
        Some(2.0),
        "{text}"
    );
    // --identity narrows; an unknown one is empty.
    let none = fx
        .daemon
        .cli_json(&["inventory", "--identity", "nobody", "--json"]);
    assert_eq!(none["identities"], serde_json::json!([]));
    let (ok_, out, _) = fx.daemon.try_cli(&["inventory"]);
    assert!(ok_ && out.contains(&forbidden), "{out}");

    fx.daemon.kill(libc::SIGTERM);
    fx.daemon.spawn(None);
    let after = fx
        .daemon
        .cli_json(&["inventory", "--identity", "agent", "-o", "json"]);
    assert_eq!(find(&after, &forbidden), Some(d.clone()), "{after:#}");
    deny_tcp(&fx, OTHER_TCP, "inv-4");
    let t0 = Instant::now();
    while find(
        &fx.daemon.cli_json(&["inventory", "-o", "json"]),
        &forbidden,
    )
    .is_none_or(|x| x["attempts"] != 4)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "attempts did not go on counting"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn cli_conventions() {
    let fx = Fixture::new("enforce");
    let d = &fx.daemon;
    let bin = chokepoint_bin();
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(&bin)
            .args(["completion", shell])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("chokepoint") && text.contains("inventory"),
            "{shell}: {text}"
        );
    }
    let out = Command::new(&bin).arg("man").output().unwrap();
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && man.contains(".TH") && man.contains("audit"),
        "{man}"
    );

    // CHOKEPOINT_SOCKET, and --socket before the subcommand.
    let out = Command::new(&bin)
        .args(["status", "--json"])
        .env("CHOKEPOINT_SOCKET", &d.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&bin)
        .arg("--socket")
        .arg(&d.socket)
        .args(["status", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("status -o json");
    assert!(v["generation"].is_number());

    // Usage errors exit 2.
    let (code, _, err) = exit_code(d, &["flows", "--no-such-flag"]);
    assert_eq!(code, 2, "{err}");
    // "Cannot reach the daemon" names its cause once.
    let out = Command::new(&bin)
        .args(["status", "--socket", "/nonexistent/cp.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // policy diff: 0 without changes, 1 with.
    let same = d.dir.join("same.yaml");
    std::fs::write(&same, fx.sb.policy(&[("agent", &fx.cg.rel, "enforce")])).unwrap();
    let (code, out, err) = exit_code(d, &["policy", "diff", same.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let other = d.dir.join("other.yaml");
    std::fs::write(&other, fx.sb.policy(&[("agent", &fx.cg.rel, "audit")])).unwrap();
    let (code, out, err) = exit_code(d, &["policy", "diff", other.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let v: Value = serde_json::from_str(&out).expect("diff json");
    assert!(!v["changes"].as_array().unwrap().is_empty());

    // validate --offline: gateway host names are not resolved.
    let named = d.dir.join("named.yaml");
    std::fs::write(
        &named,
        fx.sb.policy(&[("agent", &fx.cg.rel, "enforce")]).replacen(
            &format!("\"{}:{GATEWAY_PORT}/tcp\"", fx.sb.gateway4()),
            "\"gw.chokepoint-test.invalid:8080/tcp\"",
            1,
        ),
    )
    .unwrap();
    let out = Command::new(&bin)
        .args(["policy", "validate", "--offline"])
        .arg(&named)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&bin)
        .args(["policy", "validate"])
        .arg(&named)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unresolvable gateway validated online"
    );

    // Every command has help text with an example.
    for cmd in [
        &["flows"][..],
        &["alerts"],
        &["status"],
        &["identities"],
        &["grant"],
        &["revoke"],
        &["inventory"],
        &["audit", "verify"],
        &["policy", "apply"],
        &["policy", "diff"],
        &["policy", "validate"],
        &["policy", "show"],
        &["policy", "history"],
        &["policy", "rollback"],
        &["completion"],
        &["attest"],
        &["uninstall"],
        &["daemon"],
        &["fqdn"],
        &["man"],
        &["audit"],
        &["policy"],
    ] {
        let out = Command::new(&bin).args(cmd).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Example"),
            "{cmd:?}: {text}"
        );
        assert!(!text.contains('\u{1b}'), "{cmd:?}: colour in piped help");
    }

    // On a terminal (a pty from util-linux's `script`): colour, unless NO_COLOR is set.
    let on_tty = |no_color: bool| {
        let mut c = Command::new("script");
        c.args(["-qec"])
            .arg(format!("{} flows --help", bin.display()))
            .arg("/dev/null")
            .env("TERM", "xterm")
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE");
        if no_color {
            c.env("NO_COLOR", "1");
        }
        let out = c.output().expect("script (util-linux)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_tty(false);
    assert!(
        coloured.contains("Example") && coloured.contains('\u{1b}'),
        "no colour on a terminal (so the NO_COLOR check below proves nothing): {coloured:?}"
    );
    let plain = on_tty(true);
    assert!(
        plain.contains("Example") && !plain.contains('\u{1b}'),
        "colour on a terminal with NO_COLOR set: {plain:?}"
    );
}

/// The inventory names a destination by the host name the identity resolved it from, learned
/// from the answer its sanctioned resolver sent (captured in the kernel at the socket's
/// ingress), and keeps the name across a restart. An address no answer named stays unnamed.
#[test]
fn the_inventory_names_hosts_the_identity_resolved() {
    let sb = Sandbox::new();
    let dns = DnsServer::start(
        sb.n,
        &[
            format!("shadow.test=A:{}:60", sb.forbidden4()),
            "alias.test=CNAME:edge.test:60".to_string(),
            format!("edge.test=AAAA:{}:60", sb.forbidden6()),
        ],
    );
    let agent = Cgroup::new(&unique("cpt-names"));
    let policy = format!(
        "apiVersion: chokepoint.dev/v1alpha1\nkind: EgressPolicy\nmetadata:\n  name: names-{n}\nspec:\n  gateways:\n    - name: llm-gateway\n      endpoints: [\"{gw}:{GATEWAY_PORT}/tcp\"]\n  identities:\n    - name: agent\n      mode: enforce\n      selector:\n        cgroupPath: \"{cg}\"\n      egress:\n        gateways: [llm-gateway]\n        allow:\n          - to: \"{r}/32\"\n            ports: [\"53/udp\"]\n            reason: sanctioned resolver\n",
        n = sb.n,
        gw = sb.gateway4(),
        cg = agent.rel,
        r = dns.addr,
    );
    let tc = sb.host_world_if.clone();
    let mut daemon = Daemon::start(&policy, &["--tc-iface", &tc]);
    let resolver = format!("{}:53", dns.addr);
    // A forbidden address tried before any lookup: no name.
    let dst_other = SocketAddr::new(sb.other_resolver4(), OTHER_TCP).to_string();
    assert!(!ok(&probe(
        Some(&agent.path),
        None,
        &["tcp", &dst_other],
        &payload("names-0")
    )));
    // Lookups through the sanctioned resolver (a connected socket, as glibc does, and sendto).
    for (name, qtype, mode) in [
        ("shadow.test", "A", "connect"),
        ("alias.test", "AAAA", "sendto"),
    ] {
        let r = probe(
            Some(&agent.path),
            None,
            &["dns-query", &resolver, name, qtype, mode],
            "",
        );
        assert!(ok(&r), "lookup of {name}: {r}");
    }
    assert_eq!(dns.asked("shadow.test"), 1);
    for (dst, what) in [
        (SocketAddr::new(sb.forbidden4(), OTHER_TCP), "names-1"),
        (SocketAddr::new(sb.forbidden6(), OTHER_TCP), "names-2"),
    ] {
        let r = probe(
            Some(&agent.path),
            None,
            &["tcp", &dst.to_string()],
            &payload(what),
        );
        assert!(eperm(&r), "{what}: {r}");
    }
    let host_of = |v: &Value, addr: String| -> Option<Value> {
        v["identities"]
            .as_array()?
            .iter()
            .find(|i| i["identity"] == "agent")?["destinations"]
            .as_array()?
            .iter()
            .find(|d| d["dst"] == addr.as_str())
            .map(|d| d["host"].clone())
    };
    let expect = [
        (sb.forbidden4().to_string(), Value::from("shadow.test")),
        (sb.forbidden6().to_string(), Value::from("alias.test")),
        (sb.other_resolver4().to_string(), Value::Null),
    ];
    let t0 = Instant::now();
    let inv = loop {
        let v = daemon.cli_json(&["inventory", "-o", "json"]);
        if expect
            .iter()
            .all(|(a, h)| host_of(&v, a.clone()).as_ref() == Some(h))
        {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "inventory: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (ok_, text, _) = daemon.try_cli(&["inventory"]);
    assert!(ok_ && text.contains("shadow.test"), "{text}");
    let metrics = daemon.scrape();
    assert!(
        metric(&metrics, "chokepoint_dns_answers_total{result=\"parsed\"}")
            .is_some_and(|n| n >= 2.0),
        "{metrics}"
    );

    daemon.kill(libc::SIGTERM);
    daemon.spawn(None);
    let after = daemon.cli_json(&["inventory", "-o", "json"]);
    for (a, h) in &expect {
        assert_eq!(
            host_of(&after, a.clone()).as_ref(),
            Some(h),
            "{after:#} vs {inv:#}"
        );
    }
}
