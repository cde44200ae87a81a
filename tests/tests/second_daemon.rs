//! One daemon per state: a second `chokepoint daemon` on the same state dir (or on the socket of
//! a live daemon) exits with a clear error before it touches the kernel. Its `--policy` would
//! allow a forbidden destination: the generation, the history, the pins and what the kernel
//! enforces must all be as they were.

use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chokepoint_tests::*;
use serde_json::Value;

/// The pinned maps and links with their inode numbers (a re-pin changes them).
fn pins(bpffs: &Path) -> Vec<(PathBuf, u64)> {
    let mut v = Vec::new();
    for sub in ["maps", "links"] {
        for e in std::fs::read_dir(bpffs.join(sub))
            .expect("pins")
            .filter_map(Result::ok)
        {
            v.push((e.path(), e.metadata().expect("pin").ino()));
        }
    }
    v.sort();
    v
}

struct Snapshot {
    status: Value,
    history: Value,
    pins: Vec<(PathBuf, u64)>,
    current: String,
}

fn snapshot(fx: &Fixture) -> Snapshot {
    Snapshot {
        status: fx.daemon.cli_json(&["status", "--json"]),
        history: fx.daemon.cli_json(&["policy", "history", "--json"]),
        pins: pins(&fx.daemon.bpffs),
        current: std::fs::read_to_string(fx.daemon.state.join("current")).expect("current"),
    }
}

/// Starts a second daemon on the first one's bpffs with `state` and `socket`, and a policy
/// that allows the forbidden destination; returns its stderr (it must fail).
fn second(fx: &Fixture, state: &Path, socket: &Path, bad: &str) -> String {
    let dir = fx.daemon.dir.join("second");
    std::fs::create_dir_all(&dir).expect("dir");
    let policy = dir.join("open.yaml");
    let open = fx.sb.policy(&[("agent", &fx.cg.rel, "enforce")]).replace(
        "            reason: cluster DNS\n",
        &format!(
            "            reason: cluster DNS\n          - to: \"{}/32\"\n            ports: [\"{OTHER_TCP}/tcp\"]\n",
            bad.rsplit_once(':').expect("ip:port").0
        ),
    );
    std::fs::write(&policy, open).expect("policy");
    let mut child = Command::new(chokepoint_bin())
        .arg("daemon")
        .arg("--bpffs")
        .arg(&fx.daemon.bpffs)
        .arg("--state-dir")
        .arg(state)
        .arg("--socket")
        .arg(socket)
        .arg("--attest-socket")
        .arg(dir.join("attest.sock"))
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--policy")
        .arg(&policy)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("second daemon");
    let t0 = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if t0.elapsed() > Duration::from_secs(20) {
            // Stop the one we started (by its pid), then fail.
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap");
            panic!(
                "a second daemon started and kept running: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("reap");
    assert!(
        !out.status.success(),
        "a second daemon started: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_unchanged(fx: &Fixture, before: &Snapshot, bad: &str, what: &str) {
    let after = snapshot(fx);
    assert_eq!(
        after.status["generation"], before.status["generation"],
        "{what}: generation moved"
    );
    assert_eq!(
        after.status["problems"], before.status["problems"],
        "{what}: the kernel's generation no longer matches the daemon's"
    );
    assert_eq!(after.history, before.history, "{what}: history changed");
    assert_eq!(
        after.current, before.current,
        "{what}: state's current changed"
    );
    assert_eq!(after.pins, before.pins, "{what}: pins replaced");
    // What the kernel enforces: the second daemon's policy would have allowed this.
    assert!(
        eperm(&fx.attempt(false, &["tcp", bad], &payload(what))),
        "{what}: the second daemon's policy reached the kernel"
    );
    // The first daemon still answers.
    assert_eq!(
        fx.daemon.cli_json(&["status", "--json"])["health"],
        before.status["health"]
    );
}

#[test]
fn a_second_daemon_exits_before_touching_anything() {
    let fx = Fixture::new("enforce");
    let bad = SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP).to_string();
    assert!(eperm(&fx.attempt(false, &["tcp", &bad], "before")));
    let before = snapshot(&fx);

    // Same state dir, its own socket: the state lock refuses it.
    let other_socket = fx.daemon.dir.join("second.sock");
    let err = second(&fx, &fx.daemon.state, &other_socket, &bad);
    assert!(
        err.contains("in use by another chokepoint daemon") && err.contains("pid"),
        "unclear error: {err}"
    );
    assert_unchanged(&fx, &before, &bad, "same state");

    // Same state dir and socket (what an operator starting it twice does).
    let err = second(&fx, &fx.daemon.state, &fx.daemon.socket, &bad);
    assert!(
        err.contains("in use by another chokepoint daemon"),
        "unclear error: {err}"
    );
    assert_unchanged(&fx, &before, &bad, "same state and socket");

    // Another state dir but the live daemon's socket: refused on the socket, kernel untouched.
    let other_state = fx.daemon.dir.join("other-state");
    let err = second(&fx, &other_state, &fx.daemon.socket, &bad);
    assert!(
        err.contains("another daemon is listening"),
        "unclear error: {err}"
    );
    assert_unchanged(&fx, &before, &bad, "same socket");
}
