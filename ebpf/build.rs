//! Link options for the eBPF object, and a rebuild when bpf-linker changes (it is an undeclared
//! dependency of this crate's build).

fn main() {
    // bpf-linker passes `--bpf-expand-memcpy-in-order` to LLVM by default. That expands memcpy
    // inline but turns every memset (zeroing a record, a padding field, adjacent zero stores that
    // LLVM merges) into a call of compiler-builtins' byte-wise `memset`, which the verifier walks
    // byte by byte at each call site on each path. On Linux 6.1 that took `cp_tc_egress` past the
    // 1M-instruction verifier limit (E2BIG). Without the option LLVM expands both inline.
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
