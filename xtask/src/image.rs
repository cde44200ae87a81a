//! `cargo xtask image`: the container image from the repository's Containerfile, with Debian's
//! podman/buildah and nothing pulled from a registry. The Containerfile's first stage is a
//! Debian 12 root made here by debootstrap (Debian's packages) and imported as
//! `localhost/chokepoint-debian:bookworm` (cached; made once); the image is `FROM scratch`
//! with the release binary and the shared libraries it links. Writes an OCI archive too
//! (`target/image/chokepoint-<version>.oci.tar`, for `ctr -n k8s.io images import` or a
//! registry push).

use std::{path::Path, process::Command};

use anyhow::Context;

/// The image name and tag.
pub(crate) const IMAGE: &str = concat!("localhost/chokepoint:", env!("CARGO_PKG_VERSION"));
const BASE: &str = "localhost/chokepoint-debian:bookworm";
const ROOTFS: &str = "/var/cache/chokepoint-k8s/image/debian-rootfs";

/// Podman as it works on these hosts (runc; crun refuses hybrid cgroups; file events).
pub(crate) fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args([
        "--runtime",
        "runc",
        "--cgroup-manager=cgroupfs",
        "--events-backend=file",
    ]);
    c
}

fn have_image(name: &str) -> bool {
    podman()
        .args(["image", "exists", name])
        .status()
        .is_ok_and(|s| s.success())
}

fn base() -> anyhow::Result<()> {
    if have_image(BASE) {
        return Ok(());
    }
    crate::setup::apt(&["debootstrap", "podman", "buildah", "runc"])?;
    if !Path::new(ROOTFS).join("usr/bin/ldd").exists() {
        eprintln!("image: debootstrap of a minimal Debian 12 root (once, about 3 minutes)");
        let _ = std::fs::remove_dir_all(ROOTFS);
        crate::run(Command::new("debootstrap").args([
            "--variant=minbase",
            "bookworm",
            ROOTFS,
            &crate::setup::debian_mirror(),
        ]))
        .context("debootstrap failed")?;
    }
    eprintln!("image: importing {ROOTFS} as {BASE}");
    let tar = Command::new("tar")
        .args(["-C", ROOTFS, "-c", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("tar")?;
    let st = podman()
        .args(["import", "-", BASE])
        .stdin(tar.stdout.context("tar stdout")?)
        .status()
        .context("podman import")?;
    anyhow::ensure!(st.success(), "podman import failed");
    Ok(())
}

/// Builds the release binary (without the test hooks) and the image; returns the image name.
pub(crate) fn image() -> anyhow::Result<&'static str> {
    crate::run(Command::new("cargo").args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "chokepoint-agent",
    ]))?;
    base()?;
    let ctx = crate::root().join("target/image/context");
    std::fs::create_dir_all(&ctx)?;
    std::fs::copy(
        crate::root().join("target/release/chokepoint"),
        ctx.join("chokepoint"),
    )
    .context("staging the binary")?;
    crate::run(
        podman()
            .args(["build", "--isolation", "chroot", "--pull=never", "-f"])
            .arg(crate::root().join("Containerfile"))
            .args(["--build-arg", &format!("BASE={BASE}"), "-t", IMAGE])
            .arg(&ctx),
    )
    .context("podman build failed")?;
    let archive = crate::root().join(format!(
        "target/image/chokepoint-{}.oci.tar",
        env!("CARGO_PKG_VERSION")
    ));
    let _ = std::fs::remove_file(&archive);
    crate::run(
        podman()
            .args(["save", "--format", "oci-archive", "-o"])
            .arg(&archive)
            .arg(IMAGE),
    )
    .context("podman save failed")?;
    println!("image {IMAGE}; archive {}", archive.display());
    Ok(IMAGE)
}
