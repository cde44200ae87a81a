//! Processes a test starts: probes inside a cgroup and netns, bounded waits, what the world
//! server received, and whether the BPF LSM is in play.

use std::{
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Netns, probe_bin};

/// What the world server has received.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<Value>>>);

impl Received {
    /// Adds an event (for servers a test runs itself).
    pub fn push(&self, v: Value) {
        self.0.lock().expect("received lock").push(v);
    }
    /// Everything so far.
    pub fn all(&self) -> Vec<Value> {
        self.0.lock().expect("received lock").clone()
    }
    /// Events whose local address (or, for UDP, payload marker) matches.
    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.all().iter().filter(|v| pred(v)).count()
    }
    /// Events carrying `payload`.
    pub fn with_payload(&self, payload: &str) -> usize {
        self.count(|v| v["data"].as_str().is_some_and(|d| d.contains(payload)))
    }
}

/// A running child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with its stdout collected as JSON lines.
pub(crate) fn collect(mut child: Child) -> (Proc, Received) {
    let out = child.stdout.take().expect("stdout");
    let rec = Received::default();
    let r2 = rec.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                r2.0.lock().expect("received lock").push(v);
            }
        }
    });
    (Proc(child), rec)
}

/// Starts a long-running probe (`serve`, `echo-serve`, …) in `cgroup`/`netns` and collects its
/// JSON lines; waits for its `ready` line.
pub fn spawn_probe(
    cgroup: Option<&Path>,
    netns: Option<&Netns>,
    args: &[&str],
) -> (Proc, Received) {
    let mut cmd = Command::new(probe_bin());
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    let child = in_cgroup(cmd, cgroup, netns).spawn().expect("spawn probe");
    let (p, rec) = collect(child);
    let t0 = Instant::now();
    while rec.count(|v| v["event"] == "ready") == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "probe {args:?} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, rec)
}

/// A command that joins `cgroup` and then `netns` before exec (so every socket it opens belongs
/// to the cgroup).
pub fn in_cgroup(mut cmd: Command, cgroup: Option<&Path>, netns: Option<&Netns>) -> Command {
    let procs = cgroup.map(|c| {
        std::ffi::CString::new(c.join("cgroup.procs").to_string_lossy().as_bytes()).expect("path")
    });
    let nsfd = netns.map(Netns::fd);
    // SAFETY: the closure only calls async-signal-safe functions (open, write, close, setns).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(p) = &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                libc::close(fd);
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = &nsfd
                && libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs one probe in `cgroup`/`netns` and returns its last JSON line.
pub fn probe(cgroup: Option<&Path>, netns: Option<&Netns>, args: &[&str], payload: &str) -> Value {
    let mut cmd = Command::new(probe_bin());
    cmd.args(args)
        .env("CP_PAYLOAD", payload)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = in_cgroup(cmd, cgroup, netns).spawn().expect("spawn probe");
    let out = wait_timeout(child, Duration::from_secs(15));
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("{}");
    let mut v: Value = serde_json::from_str(last).unwrap_or(Value::Null);
    if !text.trim().is_empty() {
        v["lines"] = Value::from(
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>(),
        );
    }
    v
}

pub(crate) fn wait_timeout(child: Child, t: Duration) -> std::process::Output {
    run_bounded(child, t).0
}

/// Waits up to `t` for `child` to exit; its status, or `None` when it is still running.
pub(crate) fn exit_within(child: &mut Child, t: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if start.elapsed() > t {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to `t` for `child` (draining its pipes meanwhile, so a chatty child never blocks on
/// a full pipe), kills it when it outlives `t`, and returns what it printed and whether it had
/// to be killed.
pub fn run_bounded(mut child: Child, t: Duration) -> (std::process::Output, bool) {
    fn drain<R: std::io::Read + Send + 'static>(p: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut v);
            }
            v
        })
    }
    let o = drain(child.stdout.take());
    let e = drain(child.stderr.take());
    let exited = exit_within(&mut child, t);
    let killed = exited.is_none();
    let status = exited.unwrap_or_else(|| {
        let _ = child.kill();
        child.wait().expect("wait")
    });
    let out = std::process::Output {
        status,
        stdout: o.join().unwrap_or_default(),
        stderr: e.join().unwrap_or_default(),
    };
    (out, killed)
}

/// True when the probe reported success.
pub fn ok(v: &Value) -> bool {
    v["ok"] == true
}

/// True when the probe failed with EPERM.
pub fn eperm(v: &Value) -> bool {
    v["ok"] == false && v["errno"] == 1
}

/// `bpf` is among the kernel's active LSMs (read by the test from securityfs, not taken from the
/// daemon).
pub fn bpf_lsm_in_kernel() -> bool {
    std::fs::read_to_string("/sys/kernel/security/lsm")
        .is_ok_and(|l| l.trim().split(',').any(|x| x == "bpf"))
}

/// The run requires the BPF LSM (`CP_REQUIRE_BPF_LSM=1`, set in the guest kernels of
/// `cargo xtask test --kernel`, which boot with `lsm=...,bpf`).
pub fn bpf_lsm_required() -> bool {
    std::env::var("CP_REQUIRE_BPF_LSM").is_ok_and(|v| v == "1")
}
