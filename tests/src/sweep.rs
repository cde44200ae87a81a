//! Leftovers of an interrupted test run. Every guard removes what it created on drop, but a test
//! process killed outright (SIGKILL, a CI deadline, the end of a session) runs no destructor: its
//! network namespaces, cgroups (with processes in them) and bpffs pins (whose links keep
//! programs attached to the cgroup root, costing every socket of the host) stay. The first
//! privileged test of each process removes what belonged to a test process that is gone.
//!
//! Test resources are named `cp…-<pid>-<n>` (or `cp…x<pid>x<n>`, see [`crate::unique`]). One
//! counts as left over when its pid is not alive here *and* it is older than an hour — no test
//! runs that long, so a run in another pid namespace on the same host is never touched.

use std::{
    fs,
    path::Path,
    process::Command,
    sync::Once,
    time::{Duration, SystemTime},
};

static ONCE: Once = Once::new();

/// Removes leftovers of dead test processes (once per process).
pub fn stale_once() {
    ONCE.call_once(|| {
        let removed = stale(Duration::from_secs(3600));
        if !removed.is_empty() {
            eprintln!(
                "test harness: removed leftovers of interrupted runs: {}",
                removed.join(", ")
            );
        }
    });
}

/// The pid in a test resource's name (`cpt-agent-123-4`, `cpw-123-4`, `cpkx123x4.slice`).
fn owner(name: &str) -> Option<u32> {
    if !name.starts_with("cp") {
        return None;
    }
    let tokens: Vec<&str> = name.split(['-', 'x', '.']).collect();
    tokens.windows(2).skip(1).find_map(|w| {
        let numeric = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        (numeric(w[0]) && numeric(w[1])).then(|| w[0].parse().ok())?
    })
}

fn left_over(path: &Path, name: &str, min_age: Duration) -> bool {
    let Some(pid) = owner(name) else {
        return false;
    };
    let old = fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > min_age);
    old && !Path::new(&format!("/proc/{pid}")).exists()
}

fn entries(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes every leftover older than `min_age`; returns what it removed.
pub fn stale(min_age: Duration) -> Vec<String> {
    let mut removed = Vec::new();
    for (path, name) in entries(Path::new("/run/netns")) {
        if left_over(&path, &name, min_age)
            && Command::new("ip")
                .args(["netns", "del", &name])
                .output()
                .is_ok_and(|o| o.status.success())
        {
            removed.push(format!("netns {name}"));
        }
    }
    // Removing a pin drops the last reference to its link: the program detaches.
    for (path, name) in entries(Path::new("/sys/fs/bpf")) {
        if path.is_dir() && left_over(&path, &name, min_age) && fs::remove_dir_all(&path).is_ok() {
            removed.push(path.display().to_string());
        }
    }
    for (path, name) in entries(&crate::cgroup_root()) {
        if path.is_dir() && left_over(&path, &name, min_age) {
            crate::host::remove_cgroup(&path);
            removed.push(format!("cgroup {name}"));
        }
    }
    removed
}

/// Removes podman containers named `<prefix>-<pid>-<n>` whose test process is gone (a killed
/// run's containers stay in podman's database as "Up" with no process behind them). `podman`
/// is the command the caller runs podman with; each call is bounded.
pub fn stale_containers(podman: impl Fn() -> Command, prefix: &str) -> Vec<String> {
    let bounded = |mut c: Command| {
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()
            .map(|child| crate::run_bounded(child, Duration::from_secs(60)))
    };
    let mut list = podman();
    list.args(["ps", "-a", "--format", "{{.Names}}"]);
    let Some((out, false)) = bounded(list) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        let dead = name.starts_with(&format!("{prefix}-"))
            && owner(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if dead {
            let mut rm = podman();
            rm.args(["rm", "-f", "-t", "0", name]);
            if bounded(rm).is_some_and(|(o, killed)| !killed && o.status.success()) {
                removed.push(name.to_string());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn names_of_test_resources() {
        assert_eq!(owner("cpt-agent-123-4"), Some(123));
        assert_eq!(owner("cpt-fqdn-a-77-0"), Some(77));
        assert_eq!(owner("cpw-2229-111"), Some(2229));
        assert_eq!(owner("cpkx2229x8.slice"), Some(2229));
        assert_eq!(owner("cpkx2229x8"), Some(2229));
        assert_eq!(owner("cpt-2229-10"), Some(2229));
        assert_eq!(owner("system.slice"), None);
        assert_eq!(owner("cp-nothing"), None);
        assert_eq!(owner("libpod_parent"), None);
    }
}
