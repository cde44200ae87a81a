//! Builds the eBPF object with the pinned nightly toolchain (see TOOLCHAIN.md: the nightly's LLVM
//! major must equal bpf-linker's). `AYA_BUILD_SKIP=1` writes an empty placeholder instead, for
//! userspace-only lint jobs.

use std::{env, fs, path::PathBuf};

/// The eBPF toolchain. Never float `nightly`: its LLVM must match bpf-linker's (LLVM 22).
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=CHOKEPOINT_BUILD_VARIANT");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = PathBuf::from(env::var("OUT_DIR")?).join("chokepoint");
        if !out.exists() {
            fs::write(out, [])?;
        }
        return Ok(());
    }
    let package = aya_build::Package {
        name: "chokepoint-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
}
