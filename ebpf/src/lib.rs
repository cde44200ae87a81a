//! Library target so `agent/build.rs` can depend on this package and cargo rebuilds the eBPF
//! object when it changes. The programs live in the `chokepoint` binary target.
#![no_std]
