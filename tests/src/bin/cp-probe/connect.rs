//! Egress attempts from inside an identity: one connect or send each, by every path the kernel offers.

use std::{
    io::{Read, Write},
    mem::zeroed,
    net::{IpAddr, Shutdown, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::sys::{fam, out, res, send_to, sockaddr, socket};

pub(crate) fn tcp(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(2))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(payload.as_bytes())?;
    s.shutdown(Shutdown::Write)?;
    let mut buf = [0u8; 64];
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let _ = s.read(&mut buf);
    Ok(())
}

/// An AF_INET6 socket to `::ffff:a.b.c.d`.
pub(crate) fn tcp_mapped(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
    let SocketAddr::V4(v4) = dst else {
        panic!("--mapped needs an IPv4 address")
    };
    let mapped = SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port());
    let fd = socket(libc::AF_INET6, libc::SOCK_STREAM, 0)?;
    let (ss, len) = sockaddr(&mapped);
    // SAFETY: connect(2) with a valid sockaddr.
    if unsafe { libc::connect(fd.as_raw_fd(), std::ptr::from_ref(&ss).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut s = TcpStream::from(fd);
    s.write_all(payload.as_bytes())?;
    Ok(())
}

pub(crate) fn udp_sendto(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().expect("static")
    } else {
        "[::]:0".parse().expect("static")
    };
    let s = UdpSocket::bind(bind)?;
    s.send_to(payload.as_bytes(), dst)?;
    Ok(())
}

pub(crate) fn udp_connect(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().expect("static")
    } else {
        "[::]:0".parse().expect("static")
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(dst)?;
    s.send(payload.as_bytes())?;
    Ok(())
}

pub(crate) fn sendmmsg(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
    let fd = socket(fam(&dst), libc::SOCK_DGRAM, 0)?;
    let (mut ss, len) = sockaddr(&dst);
    let mut data = payload.as_bytes().to_vec();
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: zeroed mmsghdr is valid; fields set below.
    let mut msgs: [libc::mmsghdr; 2] = unsafe { zeroed() };
    for m in &mut msgs {
        m.msg_hdr.msg_name = std::ptr::from_mut(&mut ss).cast();
        m.msg_hdr.msg_namelen = len;
        m.msg_hdr.msg_iov = &raw mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: sendmmsg(2) with valid headers.
    let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), 2, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n == 0 {
        return Err(std::io::Error::other("sendmmsg sent nothing"));
    }
    Ok(())
}

pub(crate) fn tfo(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
    let fd = socket(fam(&dst), libc::SOCK_STREAM, 0)?;
    let (ss, len) = sockaddr(&dst);
    send_to(&fd, payload.as_bytes(), libc::MSG_FASTOPEN, &ss, len)?;
    let mut s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 16];
    // Wait for the handshake to finish (or fail).
    s.read(&mut buf).map(|_| ())
}

pub(crate) fn uring_connect(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
    use io_uring::{IoUring, opcode, types};
    let fd = socket(fam(&dst), libc::SOCK_STREAM, 0)?;
    let (ss, len) = sockaddr(&dst);
    let mut ring = IoUring::new(4)?;
    let op = opcode::Connect::new(
        types::Fd(fd.as_raw_fd()),
        std::ptr::from_ref(&ss).cast(),
        len,
    )
    .build()
    .user_data(1);
    // SAFETY: the sockaddr outlives the submission (we wait for completion below).
    unsafe {
        ring.submission()
            .push(&op)
            .map_err(|_| std::io::Error::other("sq full"))?;
    };
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| std::io::Error::other("no completion"))?;
    if cqe.result() < 0 {
        return Err(std::io::Error::from_raw_os_error(-cqe.result()));
    }
    let mut s = TcpStream::from(fd);
    s.write_all(payload.as_bytes())?;
    Ok(())
}

/// Sends one datagram to `dst` from a socket bound to `port` (a "reply" nobody asked for).
pub(crate) fn udp_from(port: u16, dst: SocketAddr, payload: &str) -> std::io::Result<()> {
    let u = UdpSocket::bind(("0.0.0.0", port))?;
    u.send_to(payload.as_bytes(), dst).map(|_| ())
}

/// Connects, then sends a line every 100 ms for `secs`, reporting each send.
pub(crate) fn hold(dst: SocketAddr, secs: u64) {
    let mut s = match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => {
            out(json!({"event": "connect", "ok": false, "errno": e.raw_os_error()}));
            return;
        }
    };
    out(json!({"event": "connect", "ok": true}));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        let r = s.write_all(format!("tick-{i}\n").as_bytes());
        out(
            json!({"event": "send", "i": i, "ok": r.is_ok(), "ms": t0.elapsed().as_millis() as u64}),
        );
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process of the workload makes the attempt ([`tcp`]).
pub(crate) fn fork_tcp(dst: SocketAddr, payload: &str) -> serde_json::Value {
    // SAFETY: fork(2); the child only runs the probe logic and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let r = res(tcp(dst, payload));
        out(json!({"child": r}));
        std::process::exit(0);
    }
    let mut status = 0;
    // SAFETY: waitpid on our child.
    unsafe { libc::waitpid(pid, &raw mut status, 0) };
    json!({"ok": true, "forked": pid})
}

/// `n` unconnected sends as fast as possible; counts how many the kernel refused. The
/// destination port cycles through `spread` ports from `dst`'s.
pub(crate) fn udp_flood(dst: SocketAddr, n: u64, spread: u16) -> serde_json::Value {
    let spread = spread.max(1);
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().expect("static")
    } else {
        "[::]:0".parse().expect("static")
    };
    let s = UdpSocket::bind(bind).expect("bind");
    let (mut sent, mut refused) = (0u64, 0u64);
    for i in 0..n {
        let mut to = dst;
        to.set_port(dst.port().wrapping_add((i % u64::from(spread)) as u16));
        match s.send_to(b"flood", to) {
            Ok(_) => sent += 1,
            Err(_) => refused += 1,
        }
    }
    json!({"ok": true, "sent": sent, "refused": refused})
}

/// Alternating connects to an allowed (`good`) and a forbidden (`bad`) destination for `secs`.
pub(crate) fn alternate(good: SocketAddr, bad: SocketAddr, secs: u64) -> serde_json::Value {
    let t0 = Instant::now();
    let (mut good_ok, mut good_fail, mut bad_ok, mut bad_fail) = (0u64, 0u64, 0u64, 0u64);
    let mut last_err = String::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        match TcpStream::connect_timeout(&good, Duration::from_secs(3)) {
            Ok(mut s) => {
                // A full exchange: the flow's data packets cross the switch too.
                let ok = s.write_all(b"loop\n").is_ok() && {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                    let mut b = [0u8; 3];
                    s.read_exact(&mut b).is_ok()
                };
                if ok {
                    good_ok += 1;
                } else {
                    good_fail += 1;
                    last_err = "exchange failed".into();
                }
            }
            Err(e) => {
                good_fail += 1;
                last_err = e.to_string();
            }
        }
        match TcpStream::connect_timeout(&bad, Duration::from_millis(300)) {
            Ok(_) => bad_ok += 1,
            Err(_) => bad_fail += 1,
        }
    }
    json!({"ok": true, "good_ok": good_ok, "good_fail": good_fail, "bad_ok": bad_ok, "bad_fail": bad_fail, "last_err": last_err})
}
