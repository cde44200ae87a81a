//! 32-bit syscalls from this 64-bit probe, as an i386 binary would make them: `setsockopt`
//! through the i386 entry (`int 0x80`, syscall 366), the same through `socketcall` (102,
//! `SYS_SETSOCKOPT`, arguments in memory), and `io_uring_setup` (425) through it, which makes a
//! compat ring (its `SOCKET_URING_OP_SETSOCKOPT` commands skip `cgroup/setsockopt` too).

/// Which 32-bit entry to use (`CP_QDISC_BYPASS=compat|socketcall`).
#[derive(Clone, Copy)]
pub(crate) enum Entry {
    Setsockopt,
    Socketcall,
}

impl Entry {
    /// The entry named by `CP_QDISC_BYPASS`, if it names one.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "compat" => Some(Self::Setsockopt),
            "socketcall" => Some(Self::Socketcall),
            _ => None,
        }
    }
}

/// A page below 4 GiB (32-bit pointers), unmapped on drop.
struct LowPage(*mut libc::c_void);

impl LowPage {
    fn new() -> std::io::Result<Self> {
        // SAFETY: an anonymous private page below 4 GiB.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self(page))
    }

    fn u32s(&self) -> *mut u32 {
        self.0.cast()
    }

    fn addr(&self, words: usize) -> u64 {
        self.0 as u64 + 4 * words as u64
    }
}

impl Drop for LowPage {
    fn drop(&mut self) {
        // SAFETY: the page we mapped.
        unsafe { libc::munmap(self.0, 4096) };
    }
}

/// A syscall through the i386 entry (`int 0x80`): number and five arguments.
#[cfg(target_arch = "x86_64")]
fn int80(nr: u64, a: [u64; 5]) -> std::io::Result<u32> {
    let mut ret = nr;
    // SAFETY: a syscall through the compat entry; rbx is saved and restored around it, the
    // argument registers are inputs, and r8-r11 are marked clobbered.
    unsafe {
        std::arch::asm!(
            "xchg {b}, rbx",
            "int 0x80",
            "xchg {b}, rbx",
            b = inout(reg) a[0] => _,
            inlateout("rax") ret,
            in("rcx") a[1],
            in("rdx") a[2],
            in("rsi") a[3],
            in("rdi") a[4],
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
        );
    }
    let ret = ret as u32 as i32;
    if ret < 0 {
        return Err(std::io::Error::from_raw_os_error(-ret));
    }
    Ok(ret as u32)
}

/// `setsockopt(fd, level, name, &val, 4)` through a 32-bit entry.
#[cfg(target_arch = "x86_64")]
pub(crate) fn setsockopt(
    entry: Entry,
    fd: i32,
    level: i32,
    name: i32,
    val: i32,
) -> std::io::Result<()> {
    let page = LowPage::new()?;
    let w = page.u32s();
    // SAFETY: the page is ours and writable; words 0..6 are in it.
    unsafe {
        w.write(val as u32);
        for (i, x) in [fd as u32, level as u32, name as u32, page.addr(0) as u32, 4]
            .into_iter()
            .enumerate()
        {
            w.add(1 + i).write(x);
        }
    }
    let (fd, level, name) = (
        u64::from(fd as u32),
        u64::from(level as u32),
        u64::from(name as u32),
    );
    match entry {
        Entry::Setsockopt => int80(366, [fd, level, name, page.addr(0), 4]),
        Entry::Socketcall => int80(102, [14, page.addr(1), 0, 0, 0]),
    }
    .map(|_| ())
}

/// `io_uring_setup(4, &params)` through the i386 entry: the ring's fd (a compat ring).
#[cfg(target_arch = "x86_64")]
pub(crate) fn io_uring_setup() -> std::io::Result<u32> {
    let page = LowPage::new()?;
    // struct io_uring_params is 120 bytes; all zero asks for defaults.
    int80(425, [4, page.addr(0), 0, 0, 0])
}
