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

mod initramfs;
mod package;
mod qemu;
mod results;
mod suite;

use anyhow::bail;
pub(crate) use qemu::run_guest;
pub(crate) use suite::{Suite, test_executables};

/// Kernel series the matrix knows.
pub(crate) const SERIES: &[&str] = &["6.1", "6.12"];

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_argument() {
        assert_eq!(parse("all").unwrap(), (true, vec!["6.1", "6.12"]));
        assert_eq!(parse("6.1").unwrap(), (false, vec!["6.1"]));
        assert!(parse("5.4").is_err());
    }
}
