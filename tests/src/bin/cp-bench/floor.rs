//! The bpf_stats floor: what `kernel.bpf_stats_enabled` itself adds to every run, measured with a
//! program that does nothing (`r0 = 1; exit`) attached as `cgroup_skb/egress` to the bench's
//! cgroups while the per-program pass's packet workload runs. Its ns/run is the part of every
//! figure in that pass that is not Chokepoint's code.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_CGROUP_INET_EGRESS: u32 = 1;
const BPF_F_ALLOW_MULTI: u32 = 2;
/// The program's name, for finding its stats.
pub(super) const NAME: &str = "cpb_floor";

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is the `bpf_attr` member of `cmd`, of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The do-nothing program, attached to some cgroups until dropped.
pub(super) struct Floor {
    prog: OwnedFd,
    cgroups: Vec<OwnedFd>,
}

impl Floor {
    /// Loads the program and attaches it (multi) to `cgroups`.
    pub(super) fn attach(cgroups: &[&Path]) -> anyhow::Result<Self> {
        // BPF_MOV64_IMM(r0, 1); BPF_EXIT_INSN()
        let insns: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..NAME.len()].copy_from_slice(NAME.as_bytes());
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_CGROUP_SKB,
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            expected_attach_type: BPF_CGROUP_INET_EGRESS,
            ..Default::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr).context("loading the bpf_stats floor program")?;
        // SAFETY: the kernel returned a new fd we own.
        let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut me = Self {
            prog,
            cgroups: Vec::new(),
        };
        for cg in cgroups {
            let dir = std::fs::File::open(cg).with_context(|| format!("{}", cg.display()))?;
            let mut a = ProgAttach {
                target_fd: dir.as_raw_fd() as u32,
                attach_bpf_fd: me.prog.as_raw_fd() as u32,
                attach_type: BPF_CGROUP_INET_EGRESS,
                attach_flags: BPF_F_ALLOW_MULTI,
                ..Default::default()
            };
            if let Err(e) = bpf(BPF_PROG_ATTACH, &mut a) {
                bail!("attaching the floor program to {}: {e}", cg.display());
            }
            me.cgroups.push(dir.into());
        }
        Ok(me)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        for cg in &self.cgroups {
            let mut a = ProgAttach {
                target_fd: cg.as_raw_fd() as u32,
                attach_bpf_fd: self.prog.as_raw_fd() as u32,
                attach_type: BPF_CGROUP_INET_EGRESS,
                ..Default::default()
            };
            let _ = bpf(BPF_PROG_DETACH, &mut a);
        }
    }
}
