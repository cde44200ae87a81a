//! Developer workflows: `setup`, `demo`, `test`, `fmt`, `lint`, `bench`.
//!
//! `cargo xtask test` and `cargo xtask demo` run `setup` first, so a fresh machine needs nothing
//! but the repository: Debian packages, the pinned eBPF toolchain and bpf-linker are installed
//! when missing (and skipped when present).

mod image;
mod kernel;
mod setup;
mod test;
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
        "test" => setup::setup().and_then(|()| test::test(rest)),
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
