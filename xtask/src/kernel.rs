//! `cargo xtask test --kernel 6.1|6.12|all`: the privileged integration suite on Debian's kernels
//! under QEMU with software emulation (TCG; KVM is not usable on these machines).
//!
//! Everything the guest runs comes from Debian packages and this workspace's own build:
//! - the kernel: Debian's `linux-image-<series>…-cloud-amd64` package, fetched with
//!   `apt-get download` and extracted once under [`CACHE`];
//! - the initramfs: `busybox-static`, the modules the guest needs (virtio-fs, overlay, veth,
//!   clsact, cls_bpf) taken from the kernel package with their dependencies (`depmod` from
//!   `kmod`), packed with `cpio`;
//! - the root file system: the host's `/`, shared read-only over virtio-fs (QEMU's
//!   `virtiofsd`), under a tmpfs overlay so the guest can write without touching the host. The
//!   guest therefore runs the very binaries (agent, probe, cargo's test executables) built on the
//!   host, with the host's `ip` and `python3`.
//!
//! The guest boots with the BPF LSM on the command line, runs every test executable of
//! `chokepoint-tests` with `CHOKEPOINT_BIN`/`CP_PROBE_BIN` set, and reports its exit status on the
//! serial console; the host prints one summary per kernel with the time it took.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// Where kernel packages are downloaded and extracted (kept across `cargo clean`).
const CACHE: &str = "/var/cache/chokepoint/kernels";

/// Debian packages the guest is assembled from.
const APT: &[&str] = &["qemu-system-x86", "busybox-static", "kmod", "cpio"];

/// Kernel series the matrix knows.
pub(crate) const SERIES: &[&str] = &["6.1", "6.12"];

/// Modules loaded in the guest (with their dependencies), when the kernel builds them as modules.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtiofs",
    "overlay",
    "veth",
    "sch_ingress",
    "cls_bpf",
];

/// The BPF LSM is enabled on the kernel command line (with Debian's default LSMs).
const LSM: &str = "lockdown,capability,landlock,yama,apparmor,bpf";

/// Guest memory (MiB); shared with virtiofsd, so it is a memfd backend.
const MEM_MB: u32 = 2048;

/// The guest's `/init` (busybox sh): modules, virtio-fs root under a tmpfs overlay, the usual
/// pseudo file systems, then the run script named on the command line, then power off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /lower /upper /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "/modules/$m" || echo "cp-guest: insmod $m failed"; done
run=$(sed -n 's/.*cp\.run=\([^ ]*\).*/\1/p' /proc/cmdline)
fail() { echo "cp-guest: $*"; echo "CP-GUEST-RC=99"; poweroff -f; }
mount -t virtiofs host /lower -o ro || fail "cannot mount the host tree over virtio-fs"
mount -t tmpfs -o size=1024m upper /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot \
  || fail "cannot mount the overlay root"
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs shm /newroot/dev/shm
# /tmp stays the overlay's (writes land in the tmpfs upper): a tmpfs here would hide a
# workspace that lives under /tmp (a CI clone), and with it the binaries and run.sh.
mount -t tmpfs run /newroot/run
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
mount -t securityfs securityfs /newroot/sys/kernel/security
mount -t bpf bpf /newroot/sys/fs/bpf
echo "cp-guest: kernel $(uname -r), lsm $(cat /newroot/sys/kernel/security/lsm)"
chroot /newroot /bin/sh "$run"
echo "CP-GUEST-RC=$?"
poweroff -f
"#;

/// Which kernels `--kernel` names: `all` is the host plus every series.
pub(crate) fn parse(arg: &str) -> anyhow::Result<(bool, Vec<&'static str>)> {
    match arg {
        "all" => Ok((true, SERIES.to_vec())),
        "host" => Ok((true, Vec::new())),
        s => match SERIES.iter().find(|k| **k == s) {
            Some(k) => Ok((false, vec![*k])),
            None => bail!(
                "--kernel {s}: unknown kernel (one of {}, host, all)",
                SERIES.join(", ")
            ),
        },
    }
}

/// Result of the suite in one guest kernel.
pub(crate) struct GuestRun {
    pub series: String,
    pub release: String,
    pub lsm: String,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub ok: bool,
    pub boot: Duration,
    pub total: Duration,
}

impl GuestRun {
    pub(crate) fn summary(&self) -> String {
        format!(
            "kernel {} ({}, lsm {}): {} passed, {} failed, {} skipped; {} in {:.0} s (boot {:.1} s)",
            self.series,
            self.release,
            self.lsm,
            self.passed,
            self.failed,
            self.ignored,
            if self.ok { "ok" } else { "FAILED" },
            self.total.as_secs_f64(),
            self.boot.as_secs_f64()
        )
    }
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs QEMU, busybox-static, kmod and cpio when missing.
fn ensure_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("kernel: installing Debian packages: {}", missing.join(" "));
    crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Numeric components of a package name, for picking the newest ABI of a series.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// True when `name` is Debian's cloud kernel image of `series`:
/// `linux-image-6.1.0-57-cloud-amd64`, `linux-image-6.12.117+deb12-cloud-amd64`.
fn is_series_image(name: &str, series: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("linux-image-")
        .and_then(|r| r.strip_prefix(series))
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_suffix("-cloud-amd64"))
    else {
        return false;
    };
    let (ver, abi) = match rest.split_once('+') {
        Some((v, a)) => (v, Some(a)),
        None => (rest, None),
    };
    let ver_ok = ver
        .split(['.', '-'])
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ver_ok && abi.is_none_or(|a| a.starts_with("deb") && a[3..].bytes().all(|b| b.is_ascii_digit()))
}

/// The newest cloud kernel package of `series` the apt sources know (or the newest cached one
/// when apt knows none, e.g. offline).
fn resolve_package(series: &str) -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only"])
        .arg(format!("^linux-image-{}\\.", series.replace('.', "\\.")))
        .output()
        .context("apt-cache")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| is_series_image(n, series))
        .map(str::to_string)
        .collect();
    if names.is_empty()
        && let Ok(rd) = fs::read_dir(CACHE)
    {
        names = rd
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                is_series_image(n, series) && Path::new(CACHE).join(n).join(".done").exists()
            })
            .collect();
    }
    names.sort_by_key(|n| version_key(n));
    names.pop().with_context(|| {
        format!("no Debian cloud kernel package for {series} (linux-image-{series}…-cloud-amd64) in the apt sources or in {CACHE}")
    })
}

/// A kernel package extracted under the cache: its vmlinuz and module tree.
struct KernelTree {
    package: String,
    root: PathBuf,
    release: String,
}

impl KernelTree {
    fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }
    fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// Downloads (apt) and extracts the kernel package once; later runs reuse the cache.
fn fetch_kernel(series: &str) -> anyhow::Result<KernelTree> {
    let package = resolve_package(series)?;
    let root = Path::new(CACHE).join(&package);
    let done = root.join(".done");
    if !done.exists() {
        let dl = Path::new(CACHE).join("download");
        let _ = fs::remove_dir_all(&dl);
        fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
        eprintln!("kernel: downloading {package}");
        let st = Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
            .current_dir(&dl)
            .status()
            .context("apt-get")?;
        if !st.success() {
            bail!("apt-get download {package} failed ({st})");
        }
        let deb = fs::read_dir(&dl)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download {package} left no .deb"))?;
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        let release = release_of(&root)?;
        crate::run(Command::new("depmod").arg("-b").arg(&root).arg(&release))
            .context("depmod on the extracted kernel")?;
        fs::remove_dir_all(&dl)?;
        fs::write(&done, &package)?;
    }
    let release = release_of(&root)?;
    Ok(KernelTree {
        package,
        root,
        release,
    })
}

fn release_of(root: &Path) -> anyhow::Result<String> {
    fs::read_dir(root.join("lib/modules"))
        .with_context(|| format!("{}: no lib/modules", root.display()))?
        .filter_map(Result::ok)
        .find_map(|e| e.file_name().into_string().ok())
        .with_context(|| format!("{}: empty lib/modules", root.display()))
}

/// Module files to load for `wanted`, dependencies first (from `modules.dep`); modules built
/// into the kernel are skipped.
fn module_order(tree: &KernelTree, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let dir = tree.modules();
    let dep = fs::read_to_string(dir.join("modules.dep")).context("modules.dep")?;
    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let norm = |s: &str| s.replace('-', "_");
    let stem = |p: &str| {
        let f = p.rsplit('/').next().unwrap_or(p);
        norm(f.split(".ko").next().unwrap_or(f))
    };
    let deps: std::collections::HashMap<String, (String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                stem(m),
                (m.to_string(), d.split_whitespace().map(&stem).collect()),
            )
        })
        .collect();
    let is_builtin = |m: &str| builtin.lines().any(|l| stem(l) == m);
    fn visit(
        m: &str,
        deps: &std::collections::HashMap<String, (String, Vec<String>)>,
        out: &mut Vec<String>,
        seen: &mut Vec<String>,
    ) {
        if seen.iter().any(|s| s == m) {
            return;
        }
        seen.push(m.to_string());
        if let Some((path, ds)) = deps.get(m) {
            for d in ds {
                visit(d, deps, out, seen);
            }
            out.push(path.clone());
        }
    }
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for w in wanted {
        let w = norm(w);
        if !deps.contains_key(&w) {
            if is_builtin(&w) {
                continue;
            }
            bail!(
                "{}: module {w} is neither built in nor a module",
                tree.package
            );
        }
        visit(&w, &deps, &mut out, &mut seen);
    }
    Ok(out.into_iter().map(|p| dir.join(p)).collect())
}

/// Builds the initramfs (busybox, modules decompressed, `/init`) as a newc cpio archive.
fn initramfs(tree: &KernelTree, work: &Path) -> anyhow::Result<PathBuf> {
    let dir = work.join("initramfs");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("bin"))?;
    fs::create_dir_all(dir.join("modules"))?;
    fs::copy("/bin/busybox", dir.join("bin/busybox")).context("busybox-static")?;
    let mut order = Vec::new();
    for m in module_order(tree, MODULES)? {
        let name = m
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let plain = name
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_string();
        let dst = dir.join("modules").join(&plain);
        if name.ends_with(".xz") {
            let out = Command::new("xz").arg("-dc").arg(&m).output()?;
            if !out.status.success() {
                bail!("xz -d {}", m.display());
            }
            fs::write(&dst, out.stdout)?;
        } else if name.ends_with(".zst") {
            bail!("{}: zstd-compressed modules are not handled", m.display());
        } else {
            fs::copy(&m, &dst)?;
        }
        order.push(plain);
    }
    fs::write(dir.join("modules.order"), order.join("\n") + "\n")?;
    fs::write(dir.join("init"), INIT)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.join("init"), fs::Permissions::from_mode(0o755))?;
    let cpio = work.join("initramfs.cpio");
    let out = fs::File::create(&cpio)?;
    let st = Command::new("sh")
        .args(["-c", "find . | LC_ALL=C sort | cpio -o -H newc --quiet"])
        .current_dir(&dir)
        .stdout(out)
        .status()?;
    if !st.success() {
        bail!("cpio failed");
    }
    Ok(cpio)
}

/// What the guest runs: each test executable with the binaries' paths set.
pub(crate) struct Suite {
    pub chokepoint: PathBuf,
    pub probe: PathBuf,
    pub variant: PathBuf,
    pub executables: Vec<PathBuf>,
    pub threads: u32,
    pub filter: Vec<String>,
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn run_script(suite: &Suite) -> String {
    let mut s = String::from("set -u\n");
    s += &format!(
        "cd {}\n",
        shell_quote(&crate::root().join("tests").to_string_lossy())
    );
    s += "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1 TMPDIR=/tmp CP_TEST_TIME_SCALE=6 CP_REQUIRE_BPF_LSM=1\n";
    for (k, v) in [
        ("CHOKEPOINT_BIN", &suite.chokepoint),
        ("CP_PROBE_BIN", &suite.probe),
        ("CHOKEPOINT_BIN_VARIANT", &suite.variant),
    ] {
        s += &format!("export {k}={}\n", shell_quote(&v.to_string_lossy()));
    }
    s += "ip link set lo up\nrc=0\n";
    let filter: Vec<String> = suite.filter.iter().map(|f| shell_quote(f)).collect();
    for exe in &suite.executables {
        let e = shell_quote(&exe.to_string_lossy());
        s += &format!(
            "echo \"== $(basename {e})\"\n{e} --test-threads {} {} || rc=1\n",
            suite.threads,
            filter.join(" ")
        );
    }
    s += "exit $rc\n";
    s
}

/// Hard links of the binaries the guest runs, so a rebuild on the host during the run (which
/// replaces the files) does not pull them from under the guest (virtio-fs reports ESTALE).
fn snapshot(suite: &Suite, dir: &Path) -> anyhow::Result<Suite> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let link = |p: &Path, name: &str| -> anyhow::Result<PathBuf> {
        let dst = dir.join(name);
        if fs::hard_link(p, &dst).is_err() {
            fs::copy(p, &dst).with_context(|| format!("copying {}", p.display()))?;
        }
        Ok(dst)
    };
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string()
    };
    Ok(Suite {
        chokepoint: link(&suite.chokepoint, "chokepoint")?,
        probe: link(&suite.probe, "cp-probe")?,
        variant: link(&suite.variant, "chokepoint-variant")?,
        executables: suite
            .executables
            .iter()
            .map(|e| link(e, &name(e)))
            .collect::<anyhow::Result<_>>()?,
        threads: suite.threads,
        filter: suite.filter.clone(),
    })
}

/// Boots `series` and runs the suite in it.
pub(crate) fn run_guest(series: &str, suite: &Suite) -> anyhow::Result<GuestRun> {
    ensure_packages()?;
    let started = Instant::now();
    let tree = fetch_kernel(series)?;
    let work = crate::root().join("target/kernel").join(series);
    fs::create_dir_all(&work)?;
    let cpio = initramfs(&tree, &work)?;
    let snap = snapshot(suite, &work.join("bin"))?;
    let script = work.join("run.sh");
    fs::write(&script, run_script(&snap))?;
    let sock = work.join("virtiofs.sock");
    let _ = fs::remove_file(&sock);
    let log = fs::File::create(work.join("virtiofsd.log"))?;
    // The host tree, read-only in the guest (mounted ro under a tmpfs overlay). `chroot`
    // sandboxing: namespace mode cannot pivot_root into `/`.
    let mut vfsd = Command::new("/usr/lib/qemu/virtiofsd")
        .arg(format!("--socket-path={}", sock.display()))
        .args(["-o", "source=/", "-o", "cache=auto", "-o", "sandbox=chroot"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting virtiofsd")?;
    let t = Instant::now();
    while !sock.exists() {
        if t.elapsed() > Duration::from_secs(10) || vfsd.try_wait()?.is_some() {
            let _ = vfsd.kill();
            bail!(
                "virtiofsd did not start (see {})",
                work.join("virtiofsd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let smp = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let append = format!(
        "console=ttyS0 quiet loglevel=3 panic=-1 lsm={LSM} cp.run={}",
        script.display()
    );
    eprintln!(
        "kernel {series}: booting {} ({}) under QEMU TCG, {smp} vCPUs, {MEM_MB} MiB",
        tree.package, tree.release
    );
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp"])
        .arg(smp.to_string())
        .args(["-m", &MEM_MB.to_string()])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={MEM_MB}M,share=on"),
            "-numa",
            "node,memdev=mem",
            "-chardev",
            &format!("socket,id=fs,path={}", sock.display()),
            "-device",
            "vhost-user-fs-pci,chardev=fs,tag=host",
            "-nic",
            "none",
            "-nographic",
            "-no-reboot",
            "-kernel",
        ])
        .arg(tree.vmlinuz())
        .arg("-initrd")
        .arg(&cpio)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = qemu.stdout.take().expect("piped");
    let console = Arc::new(Mutex::new(String::new()));
    let boot_at: Arc<Mutex<Option<Duration>>> = Arc::new(Mutex::new(None));
    let reader = {
        let console = console.clone();
        let boot_at = boot_at.clone();
        let series = series.to_string();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            let mut transcript = fs::File::create(
                crate::root()
                    .join("target/kernel")
                    .join(&series)
                    .join("console.log"),
            )
            .ok();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf).replace('\r', "");
                if line.contains("cp-guest: kernel") {
                    let mut b = boot_at.lock().expect("lock");
                    b.get_or_insert(started.elapsed());
                }
                print!("[{series}] {line}");
                if let Some(f) = transcript.as_mut() {
                    let _ = f.write_all(line.as_bytes());
                }
                console.lock().expect("lock").push_str(&line);
                buf.clear();
            }
        })
    };
    let limit = std::env::var("CHOKEPOINT_GUEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(45 * 60), Duration::from_secs);
    let t = Instant::now();
    let mut timed_out = false;
    loop {
        if qemu.try_wait()?.is_some() {
            break;
        }
        if t.elapsed() > limit {
            eprintln!("kernel {series}: the guest ran longer than {limit:?}; stopping it");
            let _ = qemu.kill();
            let _ = qemu.wait();
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = reader.join();
    // virtiofsd exits when QEMU disconnects; make sure of it.
    let t = Instant::now();
    while vfsd.try_wait()?.is_none() {
        if t.elapsed() > Duration::from_secs(5) {
            let _ = vfsd.kill();
            let _ = vfsd.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = fs::remove_file(&sock);
    let text = console.lock().expect("lock").clone();
    let rc: Option<i32> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("CP-GUEST-RC="))
        .filter_map(|s| s.parse().ok())
        .next_back();
    let lsm = text
        .lines()
        .find_map(|l| l.split_once(", lsm ").map(|(_, x)| x.trim().to_string()))
        .unwrap_or_else(|| "?".into());
    let (passed, failed, ignored) = crate::tally(&text);
    let ok = !timed_out && rc == Some(0) && passed > 0;
    if rc.is_none() && !timed_out {
        eprintln!(
            "kernel {series}: the guest stopped without reporting a result (see target/kernel/{series}/console.log)"
        );
    }
    let boot = boot_at.lock().expect("lock").unwrap_or_default();
    Ok(GuestRun {
        series: series.to_string(),
        release: tree.release,
        lsm,
        passed,
        failed,
        ignored,
        ok,
        boot,
        total: started.elapsed(),
    })
}

/// cargo's test executables of `chokepoint-tests` (built now if needed).
pub(crate) fn test_executables() -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("cargo")
        .args([
            "test",
            "--quiet",
            "-p",
            "chokepoint-tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(crate::root())
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test executables failed");
    }
    let mut exes = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["profile"]["test"] == true
            && let Some(e) = v["executable"].as_str()
        {
            exes.push(PathBuf::from(e));
        }
    }
    exes.sort();
    if exes.is_empty() {
        bail!("cargo built no test executables for chokepoint-tests");
    }
    Ok(exes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_image_names() {
        assert!(is_series_image("linux-image-6.1.0-57-cloud-amd64", "6.1"));
        assert!(is_series_image(
            "linux-image-6.12.117+deb12-cloud-amd64",
            "6.12"
        ));
        assert!(!is_series_image(
            "linux-image-6.12.117+deb12-cloud-amd64",
            "6.1"
        ));
        assert!(!is_series_image(
            "linux-image-6.1.0-57-cloud-amd64-unsigned",
            "6.1"
        ));
        assert!(!is_series_image(
            "linux-image-6.1.0-57-cloud-amd64-dbg",
            "6.1"
        ));
        assert!(!is_series_image("linux-image-6.12-cloud-amd64", "6.12"));
        assert!(
            version_key("linux-image-6.1.0-57-cloud-amd64")
                > version_key("linux-image-6.1.0-9-cloud-amd64")
        );
    }

    #[test]
    fn kernel_argument() {
        assert_eq!(parse("all").unwrap(), (true, vec!["6.1", "6.12"]));
        assert_eq!(parse("6.1").unwrap(), (false, vec!["6.1"]));
        assert!(parse("5.4").is_err());
    }
}
