//! `cargo xtask test`: the unit tests, the privileged suite, the fuzz targets, and the privileged
//! suite in other kernels (`--kernel`), each run bounded by a deadline.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{EBPF_TOOLCHAIN, build, image, kernel, root, run, setup, testrun};

/// How long the unit tests may run before the run is ended (`CP_TEST_DEADLINE_SECS` overrides).
const UNIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// How long the privileged suite may run (6 minutes alone on a 2-core machine, about 15 under load).
const PRIVILEGED_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Runs each cargo-fuzz target for a bounded time (installs cargo-fuzz when missing).
fn fuzz() -> anyhow::Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("setup: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let secs = std::env::var("FUZZ_SECONDS").unwrap_or_else(|_| "30".into());
    for target in ["policy_parse", "api_decode"] {
        println!("== fuzz {target} for {secs}s");
        run(Command::new("rustup")
            .args(["run", EBPF_TOOLCHAIN, "cargo", "fuzz", "run", target])
            .arg(format!("fuzz/corpus/{target}"))
            .args(["--", &format!("-max_total_time={secs}")])
            // Fuzzing needs no kernel object: skip the nested eBPF build.
            .env("AYA_BUILD_SKIP", "1"))?;
    }
    Ok(())
}

/// Builds the agent as "another build" (different program instructions) for the upgrade test.
fn build_variant() -> anyhow::Result<PathBuf> {
    let dir = root().join("target/variant");
    run(Command::new("cargo")
        .args(["build", "--quiet", "-p", "chokepoint-agent", "--target-dir"])
        .arg(&dir)
        .env("CHOKEPOINT_BUILD_VARIANT", "2"))?;
    Ok(dir.join("debug/chokepoint"))
}

pub(crate) fn test(rest: &[String]) -> anyhow::Result<()> {
    let kernel_arg = rest
        .iter()
        .position(|a| a == "--kernel")
        .map(|i| rest.get(i + 1).context("--kernel needs 6.1, 6.12 or all"))
        .transpose()?;
    let (bin, probe) = build()?;
    let variant = build_variant()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the privileged integration tests need root (BPF, cgroups, network namespaces)");
    }
    if let Some(k) = kernel_arg {
        let (host, guests) = kernel::parse(k)?;
        let filter: Vec<String> = rest
            .iter()
            .skip_while(|a| *a != "--")
            .skip(1)
            .cloned()
            .collect();
        return kernel_matrix(host, &guests, filter, &bin, &probe, &variant);
    }
    println!("== unit tests (agent, common, xtask)");
    let unit = testrun::cargo_test(
        &[
            "--workspace",
            "--exclude",
            "chokepoint-tests",
            "--exclude",
            "chokepoint-ebpf",
        ],
        &[],
        testrun::deadline(UNIT_DEADLINE),
    )?;
    println!("== privileged integration tests (real kernel, cgroups, network namespaces)");
    // The Kubernetes tests need the apiserver built once on this machine (`setup --kube`).
    let apiserver = Path::new(setup::KUBE_APISERVER);
    let mut args: Vec<&str> = Vec::new();
    let kube_skipped = !apiserver.is_file();
    if kube_skipped {
        println!(
            "SKIPPED: the Kubernetes tests (kube_*): no kube-apiserver at {}; build it once with `cargo xtask setup --kube`",
            apiserver.display()
        );
        args.extend(["--skip", "kube_"]);
    }
    // The image test runs the agent from the image built here (release build + podman).
    let image = if kube_skipped {
        None
    } else {
        match image::image() {
            Ok(i) => Some(i),
            Err(e) => {
                println!("FAILED to build the image ({e:#}): the image test will fail");
                None
            }
        }
    };
    let int = testrun::privileged(
        &args,
        &[
            ("CHOKEPOINT_BIN", &bin),
            ("CP_PROBE_BIN", &probe),
            ("CHOKEPOINT_BIN_VARIANT", &variant),
            ("CP_KUBE_APISERVER", apiserver),
            ("CP_IMAGE", Path::new(image.unwrap_or(image::IMAGE))),
        ],
        testrun::deadline(PRIVILEGED_DEADLINE),
    )?;
    let mut fuzz_ok = true;
    if rest.iter().any(|a| a == "--fuzz") {
        fuzz_ok = fuzz().map_err(|e| eprintln!("fuzz: {e:#}")).is_ok();
    }
    let (p1, f1, i1) = testrun::tally(&unit.output);
    let (p2, f2, i2) = testrun::tally(&int.output);
    println!("\n== summary: unit {p1} passed, {f1} failed; privileged {p2} passed, {f2} failed");
    if kube_skipped {
        println!(
            "(the Kubernetes tests were SKIPPED: no kube-apiserver; `cargo xtask setup --kube`)"
        );
    }
    println!(
        "{} passed, {} failed, {} skipped",
        p1 + p2,
        f1 + f2,
        i1 + i2
    );
    if !(unit.ok && int.ok && fuzz_ok) {
        bail!("tests failed");
    }
    Ok(())
}

/// `test --kernel …`: the host run (for `all`) and one guest run per kernel, one summary each.
fn kernel_matrix(
    host: bool,
    guests: &[&str],
    filter: Vec<String>,
    bin: &Path,
    probe: &Path,
    variant: &Path,
) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    let mut all_ok = true;
    if host {
        let t = std::time::Instant::now();
        println!("== privileged integration tests on the host kernel");
        let mut args: Vec<&str> = filter.iter().map(String::as_str).collect();
        let apiserver = Path::new(setup::KUBE_APISERVER);
        if !apiserver.is_file() {
            println!(
                "SKIPPED: the Kubernetes tests (kube_*): no kube-apiserver; `cargo xtask setup --kube`"
            );
            args.extend(["--skip", "kube_"]);
        }
        let run = testrun::privileged(
            &args,
            &[
                ("CHOKEPOINT_BIN", bin),
                ("CP_PROBE_BIN", probe),
                ("CHOKEPOINT_BIN_VARIANT", variant),
                ("CP_KUBE_APISERVER", apiserver),
            ],
            testrun::deadline(PRIVILEGED_DEADLINE),
        )?;
        let (p, f, i) = testrun::tally(&run.output);
        let ok = run.ok && p > 0;
        all_ok &= ok;
        lines.push(format!(
            "kernel host ({}): {p} passed, {f} failed, {i} skipped; {} in {:.0} s",
            String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout).trim(),
            if ok { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        ));
    }
    let suite = kernel::Suite {
        chokepoint: bin.to_path_buf(),
        probe: probe.to_path_buf(),
        variant: variant.to_path_buf(),
        executables: kernel::test_executables()?,
        threads: 2,
        // The Kubernetes tests run on the host only (their control plane is not in the guest).
        filter: filter
            .into_iter()
            .chain(["--skip".to_string(), "kube_".to_string()])
            .collect(),
    };
    for series in guests {
        match kernel::run_guest(series, &suite) {
            Ok(r) => {
                all_ok &= r.ok;
                lines.push(r.summary());
            }
            Err(e) => {
                all_ok = false;
                lines.push(format!("kernel {series}: could not run: {e:#}"));
            }
        }
    }
    println!("\n== kernel matrix");
    for l in &lines {
        println!("{l}");
    }
    if !all_ok {
        bail!("tests failed on at least one kernel");
    }
    Ok(())
}
