//! Socket plumbing and output: addresses, raw sockets, `sendto`, the JSON verdict lines.

use std::{
    io::Write,
    mem::{size_of, zeroed},
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use serde_json::json;

pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub(crate) fn out(v: serde_json::Value) {
    println!("{v}");
    let _ = std::io::stdout().flush();
}

/// The verdict of one attempt, with the pid that made it (records carry it: a test ties its
/// assertion to its own attempt).
pub(crate) fn res(r: std::io::Result<()>) -> serde_json::Value {
    let pid = std::process::id();
    match r {
        Ok(()) => json!({"ok": true, "pid": pid}),
        Err(e) => {
            json!({"ok": false, "pid": pid, "errno": e.raw_os_error().unwrap_or(0), "error": e.to_string()})
        }
    }
}

/// Parses `ip:port`; `[v6]:port`; a v4 address given to `--mapped` becomes `::ffff:a.b.c.d`.
pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

pub(crate) fn ports(s: &str) -> Vec<u16> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().expect("port"))
        .collect()
}

pub(crate) fn sockaddr(sa: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match sa {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut ss).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut ss).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

pub(crate) fn socket(family: i32, ty: i32, proto: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn fam(sa: &SocketAddr) -> i32 {
    if sa.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// `sendto(2)` of `buf` on `fd` to the socket address `addr` of `len` bytes.
pub(crate) fn send_to<T>(
    fd: &OwnedFd,
    buf: &[u8],
    flags: i32,
    addr: &T,
    len: libc::socklen_t,
) -> std::io::Result<()> {
    assert!(
        len as usize <= size_of::<T>(),
        "address length beyond the address"
    );
    // SAFETY: `buf` and `addr` are valid for the lengths passed.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            flags,
            std::ptr::from_ref(addr).cast(),
            len,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
