//! Kernel objects a test owns: a cgroup (its processes killed on drop), a network namespace,
//! and host forwarding switched on while any sandbox of any test process lives.

use std::{
    fs,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use crate::{SLOT_DIR, cgroup_root, sh};

/// A cgroup under the v2 root, removed (with every process in it killed) on drop.
pub struct Cgroup {
    /// The cgroup's absolute path.
    pub path: PathBuf,
    /// Path relative to the cgroup root, with a leading `/`.
    pub rel: String,
}

impl Cgroup {
    /// Creates `<root>/<name>`.
    pub fn new(name: &str) -> Self {
        let root = cgroup_root();
        let path = root.join(name);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self {
            path,
            rel: format!("/{name}"),
        }
    }

    /// Creates a child cgroup (removed with the parent).
    pub fn child(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).expect("child cgroup");
        p
    }
}

pub(crate) fn remove_cgroup(p: &Path) {
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = fs::write(p.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if fs::remove_dir(p).is_ok() || !p.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
    }
}

/// A network namespace, deleted on drop (which deletes its veth ends).
pub struct Netns {
    /// The namespace's name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates the namespace (replacing a leftover of the same name) with `lo` up.
    pub fn new(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh("ip", &["netns", "add", name]);
        sh("ip", &["-n", name, "link", "set", "lo", "up"]);
        Self { name: name.into() }
    }
    /// Opens the namespace for `setns`.
    pub fn fd(&self) -> OwnedFd {
        fs::File::open(format!("/run/netns/{}", self.name))
            .expect("netns fd")
            .into()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Host forwarding switched on while any sandbox of any test process lives, restored after the
/// last: each process holds a shared `flock` on one file while it has sandboxes, and the process
/// that can then take it exclusively is the last and restores what the first one saved. (A
/// count inside one process would let one test process switch forwarding off under another.)
static FORWARDING: Mutex<(u32, Option<fs::File>)> = Mutex::new((0, None));

const FORWARD_KNOBS: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];

fn forwarding_file(name: &str) -> fs::File {
    fs::create_dir_all(SLOT_DIR).expect("slot dir");
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{SLOT_DIR}/{name}"))
        .expect("forwarding lock file")
}

fn flock(f: &fs::File, op: i32) -> bool {
    // SAFETY: flock on an fd we own.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

/// Runs `f` holding the host-wide forwarding mutex (a second lock file).
fn forwarding_critical<T>(f: impl FnOnce() -> T) -> T {
    let m = forwarding_file("forwarding.mutex");
    assert!(flock(&m, libc::LOCK_EX), "forwarding mutex");
    f()
    // `m` closes here: the mutex is released.
}

/// What the first sandbox's process found before switching forwarding on.
fn forwarding_saved() -> String {
    format!("{SLOT_DIR}/forwarding.saved")
}

pub(crate) fn forwarding_on() {
    let mut f = FORWARDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if f.0 == 0 {
        f.1 = Some(forwarding_critical(|| {
            if !Path::new(&forwarding_saved()).exists() {
                let now: Vec<String> = FORWARD_KNOBS
                    .iter()
                    .map(|k| fs::read_to_string(k).unwrap_or_default().trim().to_string())
                    .collect();
                let _ = fs::write(forwarding_saved(), now.join("\n"));
            }
            for k in FORWARD_KNOBS {
                let _ = fs::write(k, "1");
            }
            let users = forwarding_file("forwarding.users");
            assert!(flock(&users, libc::LOCK_SH), "forwarding users lock");
            users
        }));
    }
    f.0 += 1;
}

pub(crate) fn forwarding_off() {
    let mut f = FORWARDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f.0 -= 1;
    if f.0 == 0
        && let Some(users) = f.1.take()
    {
        forwarding_critical(|| {
            drop(users);
            // Another process's shared lock makes this fail: that process restores later.
            let probe = forwarding_file("forwarding.users");
            if flock(&probe, libc::LOCK_EX | libc::LOCK_NB)
                && let Ok(text) = fs::read_to_string(forwarding_saved())
            {
                for (k, v) in FORWARD_KNOBS.iter().zip(text.lines()) {
                    let _ = fs::write(k, v);
                }
                let _ = fs::remove_file(forwarding_saved());
            }
        });
    }
}
