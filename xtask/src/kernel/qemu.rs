//! One guest run: virtiofsd sharing the host tree, QEMU (TCG) booting the kernel with the
//! initramfs, the serial console streamed and kept, a deadline, and the result read from it.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{
    initramfs::initramfs,
    package::{ensure_packages, fetch_kernel},
    results::{GuestRun, guest_lsm, guest_rc},
    suite::{Suite, run_script, snapshot},
};

/// The BPF LSM is enabled on the kernel command line (with Debian's default LSMs).
const LSM: &str = "lockdown,capability,landlock,yama,apparmor,bpf";

/// Guest memory (MiB); shared with virtiofsd, so it is a memfd backend.
const MEM_MB: u32 = 2048;

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
    let rc = guest_rc(&text);
    let lsm = guest_lsm(&text);
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
