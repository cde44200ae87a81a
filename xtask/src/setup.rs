//! Idempotent installation of everything the build and the tests need on a fresh machine of this
//! kind (Debian 12, root): apt packages, the pinned eBPF nightly with rust-src, clippy and
//! rustfmt (its rustfmt applies the unstable import grouping), and
//! bpf-linker built against LLVM 22. Each step is skipped when already satisfied.

use std::process::Command;

use anyhow::{Context, bail};

use crate::EBPF_TOOLCHAIN;

/// Debian packages: LLVM 22 for bpf-linker, iproute2 for the sandboxes, nftables for benchmarks,
/// etcd (server and etcdctl) and openssl for the Kubernetes tests' control plane.
const APT: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
    "iproute2",
    "nftables",
    "etcd-server",
    "etcd-client",
    "openssl",
    "python3-venv",
];

/// What building kube-apiserver from Debian's `kubernetes` source needs.
const APT_KUBE: &[&str] = &[
    "golang-go",
    "rsync",
    "make",
    "dpkg-dev",
    "golang-github-modern-go-reflect2-dev",
];

/// Helm for the chart tests: helm-sdkpy (Helm's Go code as a library, from PyPI; no helm
/// binary is packaged by a reachable registry), in its own venv. Its metadata asks for Python
/// 3.12; it runs on Debian 12's 3.11 (`--ignore-requires-python`), which the tests prove.
const HELM_SDKPY: &str = "helm-sdkpy==0.1.32";
/// Kubernetes' OpenAPI schemas of every release, from PyPI: the chart tests validate the plain
/// manifests against them without a cluster (in CI too).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const HELM_VENV: &str = "/var/cache/chokepoint-k8s/helm-sdkpy-0.1.32";

/// Where the Kubernetes tests find the apiserver (`tests/src/kube.rs` agrees).
pub(crate) const KUBE_APISERVER: &str = "/var/cache/chokepoint-k8s/1.20.2/kube-apiserver";

const BPF_LINKER: &str = "0.13.0";

fn ok(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// The Debian mirror the system's apt sources use.
pub(crate) fn debian_mirror() -> String {
    std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("URIs:").map(|u| u.trim().to_string()))
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// `setup --kube`: the one-time build of kube-apiserver 1.20.2 from Debian's `kubernetes`
/// source package (about 20 minutes on 2 cores, 5 GB of disk while it builds), cached at
/// [`KUBE_APISERVER`]; skipped when the cache has it.
pub(crate) fn kube() -> anyhow::Result<()> {
    if std::path::Path::new(KUBE_APISERVER).is_file() {
        return Ok(());
    }
    apt(APT_KUBE)?;
    eprintln!("setup: building kube-apiserver from Debian's kubernetes source (about 20 minutes)");
    crate::run(Command::new("sh").arg(crate::root().join("xtask/k8s/build-apiserver.sh")))
        .context("setup: building kube-apiserver failed")
}

/// Installs the Debian packages of `pkgs` that are missing.
pub(crate) fn apt(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        eprintln!("setup: installing Debian packages: {}", missing.join(" "));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("setup: installing {} needs root", missing.join(" "));
        }
        crate::run(Command::new("apt-get").args(["update", "-qq"]))
            .context("setup: apt-get update failed")?;
        crate::run(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .with_context(|| format!("setup: cannot install {}", missing.join(" ")))?;
    }
    Ok(())
}

fn helm_venv() -> anyhow::Result<()> {
    let py = std::path::Path::new(HELM_VENV).join("bin/python");
    if ok(Command::new(&py).args(["-c", "import helm_sdkpy, kubernetes_validate"])) {
        return Ok(());
    }
    eprintln!("setup: installing {HELM_SDKPY} and {KUBERNETES_VALIDATE} into {HELM_VENV}");
    crate::run(Command::new("python3").args(["-m", "venv", HELM_VENV]))
        .context("setup: cannot create the helm-sdkpy venv")?;
    crate::run(Command::new(&py).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--ignore-requires-python",
        HELM_SDKPY,
        KUBERNETES_VALIDATE,
    ]))
    .context("setup: cannot install helm-sdkpy and kubernetes-validate")
}

/// Runs every setup step.
pub(crate) fn setup() -> anyhow::Result<()> {
    apt(APT)?;
    helm_venv()?;

    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("setup: rustup not found")?;
    let have_tc = String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|l| l.starts_with(EBPF_TOOLCHAIN));
    let have_src = have_tc
        && Command::new("rustup")
            .args([
                "component",
                "list",
                "--installed",
                "--toolchain",
                EBPF_TOOLCHAIN,
            ])
            .output()
            .is_ok_and(|o| {
                let s = String::from_utf8_lossy(&o.stdout);
                s.contains("rust-src") && s.contains("clippy") && s.contains("rustfmt")
            });
    if !have_src {
        eprintln!(
            "setup: installing the eBPF toolchain {EBPF_TOOLCHAIN} (rust-src, clippy, rustfmt)"
        );
        crate::run(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy,rustfmt",
            "--no-self-update",
        ]))
        .context("setup: cannot install the eBPF toolchain")?;
    }
    if !ok(Command::new("cargo").args(["clippy", "--version"])) {
        eprintln!("setup: adding clippy and rustfmt to the default toolchain");
        crate::run(Command::new("rustup").args(["component", "add", "clippy", "rustfmt"]))
            .context("setup: cannot add clippy/rustfmt")?;
    }

    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER)
        });
    if !linker_ok {
        eprintln!("setup: building bpf-linker {BPF_LINKER} against LLVM 22 (about 80 s)");
        crate::run(
            Command::new("cargo")
                .args([
                    "install",
                    &format!("bpf-linker@{BPF_LINKER}"),
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        )
        .context("setup: cannot build bpf-linker")?;
    }
    Ok(())
}
