//! Runs `cargo test` for `cargo xtask test`: output streams as it is produced (a CI log shows
//! how far a run got, and libtest's "has been running for over 60 seconds" names a test that
//! hangs), the run has a deadline (a hung test ends the run with its name instead of eating the
//! CI budget), and the output is kept for the summary's tally.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::root;

/// What one `cargo test` run left: whether it passed, and its standard output.
pub(crate) struct Outcome {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
}

/// Tests libtest reported as slow (running for over 60 s) and not yet finished.
#[derive(Default)]
struct Progress {
    slow: BTreeSet<String>,
    out: String,
}

impl Progress {
    fn line(&mut self, l: &str) {
        if let Some(rest) = l.strip_prefix("test ") {
            if let Some(name) = rest.strip_suffix(" has been running for over 60 seconds") {
                self.slow.insert(name.to_string());
            } else if let Some((name, _)) = rest.split_once(" ... ") {
                self.slow.remove(name);
            }
        }
        self.out.push_str(l);
        self.out.push('\n');
    }
}

/// The deadline of a run: `CP_TEST_DEADLINE_SECS` when set, else `default`.
pub(crate) fn deadline(default: Duration) -> Duration {
    std::env::var("CP_TEST_DEADLINE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(default, Duration::from_secs)
}

/// `cargo test --no-fail-fast ARGS` with `envs`, streamed, ended (its whole process group:
/// the test binaries and the daemons they started) when it outlives `limit`.
pub(crate) fn cargo_test(
    args: &[&str],
    envs: &[(&str, &Path)],
    limit: Duration,
) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new("cargo");
    // Every test binary runs even when an earlier one fails, so the summary is complete.
    cmd.args(["test", "--no-fail-fast"])
        .args(args)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().context("spawning cargo test")?;
    let progress = Arc::new(Mutex::new(Progress::default()));
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let stderr = child.stderr.take().context("cargo test stderr")?;
    let p = Arc::clone(&progress);
    let out_thread = std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{l}");
            p.lock().expect("progress").line(&l);
        }
    });
    let err_thread = std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !l.contains("chokepoint-agent@") {
                eprintln!("{l}");
            }
        }
    });
    let t0 = Instant::now();
    let pgid = i32::try_from(child.id()).context("pid")?;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if !timed_out && t0.elapsed() > limit {
            timed_out = true;
            let slow = progress.lock().expect("progress").slow.clone();
            println!(
                "TIMEOUT: `cargo test {}` ran past its {} s deadline (CP_TEST_DEADLINE_SECS); unfinished slow tests: {}",
                args.join(" "),
                limit.as_secs(),
                if slow.is_empty() {
                    "none reported".to_string()
                } else {
                    slow.into_iter().collect::<Vec<_>>().join(", ")
                }
            );
            end_group(pgid, &mut child);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = out_thread.join();
    let _ = err_thread.join();
    eprintln!();
    let stdout = std::mem::take(&mut progress.lock().expect("progress").out);
    Ok(Outcome {
        ok: status.success() && !timed_out,
        stdout,
    })
}

/// SIGTERM to the run's process group (the daemons under test keep their pins: fail closed),
/// then SIGKILL to what is left after 10 s.
fn end_group(pgid: i32, child: &mut std::process::Child) {
    // SAFETY: kill(2) on a process group this function's caller created; no memory is shared.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// Sums libtest's `test result:` lines: (passed, failed, ignored).
pub(crate) fn tally(out: &str) -> (u64, u64, u64) {
    let mut t = (0, 0, 0);
    for line in out.lines().filter(|l| l.starts_with("test result:")) {
        for part in line.split(';') {
            let mut w = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (w.next(), w.next()) else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            match what {
                "passed" => t.0 += n,
                "failed" => t.1 += n,
                "ignored" => t.2 += n,
                _ => {}
            }
        }
    }
    t
}
