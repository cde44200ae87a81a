//! Developer workflows: `setup`, `demo`, `test`, `fmt`, `lint`, `bench`.
//!
//! `cargo xtask test` and `cargo xtask demo` run `setup` first, so a fresh machine needs nothing
//! but the repository: Debian packages, the pinned eBPF toolchain and bpf-linker are installed
//! when missing (and skipped when present).

mod image;
mod kernel;
mod setup;
mod testrun;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
/// The guest runner tallies its libtest output the same way.
pub(crate) use testrun::tally;

/// The eBPF toolchain (must match `agent/build.rs`): its LLVM major equals bpf-linker's.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";

/// How long the unit tests may run before the run is ended (`CP_TEST_DEADLINE_SECS` overrides).
const UNIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// How long the privileged suite may run (6 minutes alone on a 2-core machine, about 15 under load).
const PRIVILEGED_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// One line per command, for `cargo xtask --help`.
const COMMANDS: &str =
    "  setup            install what is missing (apt packages, eBPF toolchain, bpf-linker)
  demo             sandboxed end-to-end demo of enforcement
  test [--fuzz]    every test, including the privileged integration tests
  test --kernel 6.1|6.12|all [-- FILTER]
                   the privileged suite in Debian's kernel under QEMU (all: host + both)
  fmt              rustfmt (the pinned nightly's: grouped imports) on every crate
  lint             rustfmt check and clippy (host crates and the eBPF crate)
  image            the container image (Containerfile; nothing pulled from a registry)
  bench [OPTIONS]  none / nftables / chokepoint side by side, ratios measured in one run";

fn usage(code: i32) -> ! {
    let text = format!("usage: cargo xtask <command> [--help]\n\n{COMMANDS}");
    if code == 0 {
        println!("{text}");
    } else {
        eprintln!("{text}");
    }
    std::process::exit(code)
}

/// The `--help` text of one command, `None` for an unknown command.
fn command_help(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "setup" => {
            "usage: cargo xtask setup [--kube]\n\nInstalls what a fresh machine is missing and skips what is present: the Debian\npackages, the pinned eBPF toolchain (with rust-src) and bpf-linker.\n\n  --kube   also build kube-apiserver 1.20.2 from Debian's kubernetes source for the\n           Kubernetes tests (one time, about 20 minutes; cached in /var/cache/chokepoint-k8s)"
        }
        "demo" => {
            "usage: cargo xtask demo\n\nRuns `setup`, builds, then a sandboxed end-to-end demo (needs root): a world netns\nwith a gateway, an agent workload in its own cgroup and netns, the real daemon\nenforcing; sanctioned traffic passes, bypass attempts are refused and recorded.\nEverything is torn down on exit and on Ctrl-C."
        }
        "test" => {
            "usage: cargo xtask test [--fuzz]\n\nRuns `setup`, builds, then the unit tests and the privileged integration tests\n(needs root: real programs, cgroups and network namespaces).\n\n  --fuzz   also run each cargo-fuzz target for FUZZ_SECONDS (default 30)\n  --kernel 6.1|6.12|all [-- FILTER]\n           the privileged suite in Debian's cloud kernel under QEMU (TCG), BPF LSM on;\n           all = the host and both kernels; one summary per kernel"
        }
        "fmt" => {
            "usage: cargo xtask fmt [--check]\n\nFormats the workspace and fuzz/ with the pinned eBPF nightly's rustfmt, which applies\nrustfmt.toml's unstable options (imports grouped std / external / crate, one `use` per\ncrate); stable rustfmt skips those.\n\n  --check  report what would change, change nothing (what `lint` runs)"
        }
        "lint" => {
            "usage: cargo xtask lint\n\nrustfmt check (the pinned nightly's, as `fmt --check`), clippy -D warnings on the\nhost crates and on the eBPF crate."
        }
        "image" => {
            "usage: cargo xtask image\n\nBuilds the release binary and the container image localhost/chokepoint:<version>\nfrom the Containerfile with podman, pulling nothing: its first stage is a Debian 12\nroot made once by debootstrap (cached), the image is FROM scratch with the binary and\nthe libraries it links. Also writes target/image/chokepoint-<version>.oci.tar."
        }
        "bench" => include_str!("../../tests/src/bin/cp-bench/help.txt"),
        _ => return None,
    })
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Runs a command in the workspace root, failing with its name.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let desc = format!("{cmd:?}");
    let st = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("spawning {desc}"))?;
    if !st.success() {
        bail!("{desc} failed ({st})");
    }
    Ok(())
}

/// Replaces this process with the harness program `name` (built next to the probe by
/// [`build`]/[`build_release`]), the built binaries' paths in `CHOKEPOINT_BIN` and `CP_PROBE_BIN`.
/// `exec`, not a child: a SIGTERM or Ctrl-C sent to `cargo xtask` reaches the harness, which
/// cleans up what it made.
fn exec_harness(
    (bin, probe): (PathBuf, PathBuf),
    name: &str,
    args: &[String],
) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let harness = probe.with_file_name(name);
    let err = Command::new(&harness)
        .args(args)
        .env("CHOKEPOINT_BIN", bin)
        .env("CP_PROBE_BIN", probe)
        .current_dir(root())
        .exec();
    Err(err).with_context(|| format!("cannot run {}", harness.display()))
}

/// Builds the agent, the probe and the harness programs with the release profile (for
/// benchmarks).
pub fn build_release() -> anyhow::Result<(PathBuf, PathBuf)> {
    run(Command::new("cargo").args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "chokepoint-agent",
        "-p",
        "chokepoint-tests",
        "--bins",
    ]))?;
    let t = root().join("target/release");
    Ok((t.join("chokepoint"), t.join("cp-probe")))
}

/// Builds the agent, the test probe and the harness programs (debug profile); returns
/// (chokepoint, cp-probe) paths.
pub fn build() -> anyhow::Result<(PathBuf, PathBuf)> {
    run(Command::new("cargo").args([
        "build",
        "--quiet",
        "-p",
        "chokepoint-agent",
        "-p",
        "chokepoint-tests",
        "--bins",
    ]))?;
    let t = root().join("target/debug");
    Ok((t.join("chokepoint"), t.join("cp-probe")))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else { usage(2) };
    if cmd == "--help" || cmd == "-h" || cmd == "help" {
        usage(0);
    }
    let rest = &args[1..];
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        match command_help(cmd) {
            Some(h) => {
                println!("{h}");
                std::process::exit(0)
            }
            None => usage(2),
        }
    }
    let r = match cmd.as_str() {
        "setup" => setup::setup().and_then(|()| {
            if rest.iter().any(|a| a == "--kube") {
                setup::kube()
            } else {
                Ok(())
            }
        }),
        "demo" => setup::setup().and_then(|()| exec_harness(build()?, "cp-demo", rest)),
        "test" => setup::setup().and_then(|()| test(rest)),
        "fmt" => setup::setup().and_then(|()| fmt(rest.iter().any(|a| a == "--check"))),
        "lint" => setup::setup().and_then(|()| lint()),
        "image" => setup::setup().and_then(|()| image::image().map(|_| ())),
        "bench" => setup::setup().and_then(|()| exec_harness(build_release()?, "cp-bench", rest)),
        _ => usage(2),
    };
    if let Err(e) = r {
        eprintln!("xtask {cmd}: {e:#}");
        std::process::exit(1);
    }
}

/// rustfmt from the pinned nightly (rustfmt.toml's `group_imports` and `imports_granularity` are
/// unstable: stable rustfmt skips them) on the workspace and on `fuzz/` (a workspace of its own).
fn fmt(check: bool) -> anyhow::Result<()> {
    for manifest in ["Cargo.toml", "fuzz/Cargo.toml"] {
        let mut cmd = Command::new("rustup");
        cmd.args([
            "run",
            EBPF_TOOLCHAIN,
            "cargo",
            "fmt",
            "--all",
            "--manifest-path",
            manifest,
        ]);
        if check {
            cmd.args(["--", "--check"]);
        }
        run(&mut cmd)?;
    }
    Ok(())
}

fn lint() -> anyhow::Result<()> {
    fmt(true)?;
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--exclude",
        "chokepoint-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new("rustup").args([
        "run",
        EBPF_TOOLCHAIN,
        "cargo",
        "clippy",
        "-p",
        "chokepoint-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    Ok(())
}

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

fn test(rest: &[String]) -> anyhow::Result<()> {
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
