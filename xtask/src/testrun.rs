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

/// What one run left: whether it passed, and what it printed (stdout and stderr lines).
pub(crate) struct Outcome {
    pub(crate) ok: bool,
    pub(crate) output: String,
}

/// Tests libtest reported as slow (running for over 60 s) and not yet finished.
#[derive(Default)]
struct Progress {
    slow: BTreeSet<String>,
    out: String,
}

impl Progress {
    fn line(&mut self, l: &str) {
        // nextest: `SLOW [> 60.000s] crate::binary name`, then `PASS [ 61.2s] (3/94) crate::binary name`.
        let t = l.trim_start();
        let name = t.split_whitespace().last().unwrap_or("");
        if t.starts_with("SLOW ") {
            self.slow.insert(name.to_string());
        } else if [
            "PASS ", "FAIL ", "TIMEOUT ", "SIGTERM ", "SIGKILL ", "FLAKY ",
        ]
        .iter()
        .any(|w| t.starts_with(w))
        {
            self.slow.remove(name);
        }
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

/// `cargo test --no-fail-fast ARGS` (every test binary runs even when an earlier one fails, so
/// the summary is complete), as [`run`].
pub(crate) fn cargo_test(
    args: &[&str],
    envs: &[(&str, &Path)],
    limit: Duration,
) -> anyhow::Result<Outcome> {
    let mut all = vec!["test", "--no-fail-fast"];
    all.extend(args);
    run(&all, envs, limit)
}

/// `cargo ARGS` with `envs`, streamed, ended (its whole process group: the test binaries and
/// the daemons they started) when it outlives `limit`.
fn run(args: &[&str], envs: &[(&str, &Path)], limit: Duration) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new("cargo");
    cmd.args(args)
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
    let p = Arc::clone(&progress);
    let err_thread = std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !l.contains("chokepoint-agent@") {
                eprintln!("{l}");
                // nextest reports on stderr.
                p.lock().expect("progress").line(&l);
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
                "TIMEOUT: `cargo {}` ran past its {} s deadline (CP_TEST_DEADLINE_SECS); unfinished slow tests: {}",
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
    let output = std::mem::take(&mut progress.lock().expect("progress").out);
    Ok(Outcome {
        ok: status.success() && !timed_out,
        output,
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

/// True when cargo-nextest is installed.
pub(crate) fn have_nextest() -> bool {
    Command::new("cargo")
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The privileged suite (`-p chokepoint-tests`) with test-name `filters` (libtest syntax, e.g.
/// `--skip kube_`): under cargo-nextest when installed (a process per test, each ended after
/// the slow-timeout of .config/nextest.toml, failures retried once and reported FLAKY), else
/// under `cargo test` with four test threads.
pub(crate) fn privileged(
    filters: &[&str],
    envs: &[(&str, &Path)],
    limit: Duration,
) -> anyhow::Result<Outcome> {
    if have_nextest() {
        let mut args = vec![
            "nextest",
            "run",
            "--no-fail-fast",
            "-p",
            "chokepoint-tests",
            "-j",
            "4",
        ];
        args.push("--");
        args.extend(filters);
        return run(&args, envs, limit);
    }
    println!(
        "(cargo-nextest is not installed: the suite runs under `cargo test`, no per-test deadline)"
    );
    let mut args = vec![
        "test",
        "--no-fail-fast",
        "-p",
        "chokepoint-tests",
        "--",
        "--test-threads",
        "4",
    ];
    args.extend(filters);
    run(&args, envs, limit)
}

/// Sums libtest's `test result:` lines and nextest's `Summary` line: (passed, failed, ignored).
pub(crate) fn tally(out: &str) -> (u64, u64, u64) {
    let mut t = (0, 0, 0);
    // nextest: `Summary [ 12.3s] 92 tests run: 90 passed (1 flaky), 1 failed, 1 timed out, 3 skipped`
    if let Some(line) = out
        .lines()
        .rev()
        .find(|l| l.contains("tests run:") && l.contains("Summary"))
    {
        let rest = line.split_once("tests run:").map_or("", |(_, r)| r);
        for part in rest.split(',') {
            let part = part.split('(').next().unwrap_or("").trim();
            let mut w = part.splitn(2, ' ');
            let (Some(n), Some(what)) = (w.next(), w.next()) else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            match what.trim() {
                "passed" => t.0 += n,
                "failed" | "timed out" => t.1 += n,
                "skipped" => t.2 += n,
                _ => {}
            }
        }
        return t;
    }
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

#[cfg(test)]
mod tests {
    use super::{Progress, tally};

    #[test]
    fn tallies_libtest_and_nextest() {
        let libtest = "test result: ok. 4 passed; 0 failed; 1 ignored; 0 measured\n\
                       test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured\n";
        assert_eq!(tally(libtest), (6, 1, 1));
        let nextest = "    Summary [ 241.202s] 94 tests run: 92 passed (1 flaky), 1 failed, 1 timed out, 3 skipped\n";
        assert_eq!(tally(nextest), (92, 2, 3));
    }

    #[test]
    fn a_slow_test_is_named_until_it_finishes() {
        let mut p = Progress::default();
        p.line("test a ... ok");
        p.line("test b has been running for over 60 seconds");
        p.line("test c has been running for over 60 seconds");
        p.line("test c ... ok");
        p.line("        SLOW [> 60.000s] chokepoint-tests::lifecycle d");
        p.line("        SLOW [> 60.000s] chokepoint-tests::lifecycle e");
        p.line("        PASS [  61.201s] (3/94) chokepoint-tests::lifecycle e");
        assert_eq!(p.slow.into_iter().collect::<Vec<_>>(), ["b", "d"]);
    }
}
