//! Syscall numbers the compat syscall guard (`cp_compat_sys`) judges (x86-64 kernel).

/// i386 `setsockopt` (`int 0x80`/`sysenter`).
pub const I386_SETSOCKOPT: u64 = 366;
/// i386 `socketcall`.
pub const I386_SOCKETCALL: u64 = 102;
/// `socketcall`'s `SYS_SETSOCKOPT` call.
pub const SYS_SETSOCKOPT: u64 = 14;
/// `io_uring_setup` (the same number on i386, x32 and x86-64).
pub const IO_URING_SETUP: u64 = 425;
/// The x32 ABI's bit in the syscall number.
pub const X32_BIT: u64 = 0x4000_0000;
/// x32 `setsockopt`.
pub const X32_SETSOCKOPT: u64 = 541;
/// The file descriptor of the daemon's start check (a compat `setsockopt` on it, with the
/// install's token as the option pointer, asks that install's guard to kill the caller,
/// proving the guard sees compat syscalls); never a valid fd.
pub const SELFTEST_FD: i32 = -0x6370_6b74;
