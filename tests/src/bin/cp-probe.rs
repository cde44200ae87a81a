//! `cp-probe`: the traffic a test makes, one attempt per invocation, with a JSON verdict on
//! stdout. The harness starts it inside a cgroup (and optionally a network namespace) before it
//! opens any socket. `serve` is the "world" side: it reports every connection, datagram and ICMP
//! echo it receives.

use std::{
    io::{Read, Write},
    mem::{size_of, zeroed},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use serde_json::json;

#[path = "../probe_compat.rs"]
mod compat;
#[path = "../probe_dns.rs"]
mod dns;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn out(v: serde_json::Value) {
    println!("{v}");
    let _ = std::io::stdout().flush();
}

/// The verdict of one attempt, with the pid that made it (records carry it: a test ties its
/// assertion to its own attempt).
fn res(r: std::io::Result<()>) -> serde_json::Value {
    let pid = std::process::id();
    match r {
        Ok(()) => json!({"ok": true, "pid": pid}),
        Err(e) => {
            json!({"ok": false, "pid": pid, "errno": e.raw_os_error().unwrap_or(0), "error": e.to_string()})
        }
    }
}

/// Source port of the frames a packet probe crafts: unique per probe process, so its records
/// can be told from any other attempt's.
fn packet_sport() -> u16 {
    20000 + (std::process::id() % 40000) as u16
}

fn sockaddr(sa: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
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

fn socket(family: i32, ty: i32, proto: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fam(sa: &SocketAddr) -> i32 {
    if sa.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

/// Parses `ip:port`; `[v6]:port`; a v4 address given to `--mapped` becomes `::ffff:a.b.c.d`.
fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

fn tcp(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
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
fn tcp_mapped(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
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

fn udp_sendto(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
    let bind: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().expect("static")
    } else {
        "[::]:0".parse().expect("static")
    };
    let s = UdpSocket::bind(bind)?;
    s.send_to(payload.as_bytes(), dst)?;
    Ok(())
}

fn udp_connect(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
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

fn sendmmsg(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
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

/// `sendto(2)` of `buf` on `fd` to the socket address `addr` of `len` bytes.
fn send_to<T>(
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

fn tfo(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
    let fd = socket(fam(&dst), libc::SOCK_STREAM, 0)?;
    let (ss, len) = sockaddr(&dst);
    send_to(&fd, payload.as_bytes(), libc::MSG_FASTOPEN, &ss, len)?;
    let mut s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 16];
    // Wait for the handshake to finish (or fail).
    s.read(&mut buf).map(|_| ())
}

fn uring_connect(dst: SocketAddr, payload: &str) -> std::io::Result<()> {
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

fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, payload_len: usize) -> Vec<u8> {
    let total = 20 + payload_len;
    let mut h = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        proto,
        0,
        0,
    ];
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = csum(&h);
    h[10] = (c >> 8) as u8;
    h[11] = c as u8;
    h
}

/// SOCK_RAW ICMP echo (needs CAP_NET_RAW; refused for identities).
fn raw_icmp(dst: IpAddr) -> std::io::Result<()> {
    let IpAddr::V4(v4) = dst else {
        panic!("raw-icmp is IPv4")
    };
    let fd = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
    let mut pkt = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
    pkt.extend_from_slice(b"chokepoint-raw");
    let c = csum(&pkt);
    pkt[2] = (c >> 8) as u8;
    pkt[3] = c as u8;
    let (ss, len) = sockaddr(&SocketAddr::new(IpAddr::V4(v4), 0));
    send_to(&fd, &pkt, 0, &ss, len)
}

/// Unprivileged ICMP "ping socket" (SOCK_DGRAM, IPPROTO_ICMP).
fn ping_sock(dst: IpAddr) -> std::io::Result<()> {
    let IpAddr::V4(v4) = dst else {
        panic!("ping is IPv4")
    };
    let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)?;
    let pkt = [8u8, 0, 0, 0, 0, 0, 0, 1, b'c', b'p'];
    let (ss, len) = sockaddr(&SocketAddr::new(IpAddr::V4(v4), 0));
    send_to(&fd, &pkt, 0, &ss, len)
}

/// AF_PACKET (cooked) frame carrying IPv4/UDP from `src` to `dst`, sent on `iface` to `mac`.
fn packet(
    iface: &str,
    mac: [u8; 6],
    src: [u8; 4],
    dst: SocketAddr,
    payload: &str,
) -> std::io::Result<()> {
    let SocketAddr::V4(d) = dst else {
        panic!("packet is IPv4")
    };
    let fd = socket(
        libc::AF_PACKET,
        libc::SOCK_DGRAM,
        i32::from((libc::ETH_P_IP as u16).to_be()),
    )?;
    let how = std::env::var("CP_QDISC_BYPASS").unwrap_or_default();
    if let Some(entry) = compat::Entry::parse(&how) {
        // The same option through a 32-bit entry, which skips cgroup/setsockopt.
        compat::setsockopt(
            entry,
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            1,
        )?;
    } else if !how.is_empty() {
        // Frames straight to the driver, past TC egress: refused for identities.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int option.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                std::ptr::from_ref(&one).cast(),
                4,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let name = std::ffi::CString::new(iface).expect("iface");
    // SAFETY: if_nametoindex with a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut udp = Vec::new();
    udp.extend_from_slice(&packet_sport().to_be_bytes());
    udp.extend_from_slice(&d.port().to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload.as_bytes());
    let mut frame = ipv4_header(src, d.ip().octets(), 17, udp.len());
    frame.extend_from_slice(&udp);
    // SAFETY: zeroed sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&mac);
    send_to(&fd, &frame, 0, &sll, size_of::<libc::sockaddr_ll>() as u32)
}

/// The reply-poisoning attack: a UDP socket on `port`, then an AF_PACKET frame on `lo` that
/// claims to come from `peer` (any address) to `local`:`port`; if that datagram arrives, the
/// socket "answers" `peer`. Reports whether the forged datagram arrived and the answer's result.
fn spoof_reply(port: u16, local: std::net::Ipv4Addr, peer: SocketAddr, payload: &str) {
    let SocketAddr::V4(pv4) = peer else {
        panic!("spoof-reply is IPv4")
    };
    let u = UdpSocket::bind(("0.0.0.0", port)).expect("bind");
    u.set_read_timeout(Some(std::time::Duration::from_millis(700)))
        .expect("timeout");
    let forged = (|| -> std::io::Result<()> {
        let fd = socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM,
            i32::from((libc::ETH_P_IP as u16).to_be()),
        )?;
        let mut udp = Vec::new();
        udp.extend_from_slice(&pv4.port().to_be_bytes());
        udp.extend_from_slice(&port.to_be_bytes());
        udp.extend_from_slice(&((8 + 6) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(b"forged");
        let mut frame = ipv4_header(pv4.ip().octets(), local.octets(), 17, udp.len());
        frame.extend_from_slice(&udp);
        // SAFETY: zeroed sockaddr_ll is valid.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = 1;
        sll.sll_halen = 6;
        send_to(&fd, &frame, 0, &sll, size_of::<libc::sockaddr_ll>() as u32)
    })();
    let mut buf = [0u8; 64];
    let got = u.recv_from(&mut buf).ok().map(|(_, from)| from.to_string());
    let answer = u.send_to(payload.as_bytes(), peer).map(|_| ());
    out(json!({"forged": res(forged), "received_from": got, "answer": res(answer)}));
}

/// Connects, then sends a line every 100 ms for `secs`, reporting each send.
fn hold(dst: SocketAddr, secs: u64) {
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

/// The world side: reports what it receives as JSON lines.
fn serve(tcp_ports: &[u16], udp_ports: &[u16], icmp: bool) {
    let mut handles = Vec::new();
    for &p in tcp_ports {
        for bind in [format!("0.0.0.0:{p}"), format!("[::]:{p}")] {
            let fd = socket(
                if bind.starts_with('[') {
                    libc::AF_INET6
                } else {
                    libc::AF_INET
                },
                libc::SOCK_STREAM,
                0,
            )
            .expect("socket");
            let one: libc::c_int = 1;
            // SAFETY: setsockopt with valid option values.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_REUSEADDR,
                    std::ptr::from_ref(&one).cast(),
                    4,
                );
                if bind.starts_with('[') {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::IPPROTO_IPV6,
                        libc::IPV6_V6ONLY,
                        std::ptr::from_ref(&one).cast(),
                        4,
                    );
                }
                let qlen: libc::c_int = 16;
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_FASTOPEN,
                    std::ptr::from_ref(&qlen).cast(),
                    4,
                );
            }
            let (ss, len) = sockaddr(&bind.parse().expect("bind"));
            // SAFETY: bind/listen on our socket.
            unsafe {
                assert_eq!(
                    libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&ss).cast(), len),
                    0,
                    "bind {bind}: {}",
                    errno()
                );
                libc::listen(fd.as_raw_fd(), 128);
            }
            let l = TcpListener::from(fd);
            handles.push(std::thread::spawn(move || {
                for c in l.incoming() {
                    let Ok(mut c) = c else { continue };
                    std::thread::spawn(move || {
                        let local = c.local_addr().map(|a| a.to_string()).unwrap_or_default();
                        let peer = c.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                        out(json!({"proto": "tcp", "event": "accept", "local": local, "peer": peer}));
                        let mut buf = [0u8; 4096];
                        let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                        loop {
                            match c.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    let data = String::from_utf8_lossy(&buf[..n]).into_owned();
                                    out(json!({"proto": "tcp", "event": "data", "local": local, "peer": peer, "data": data}));
                                    let _ = c.write_all(b"ok\n");
                                }
                            }
                        }
                    });
                }
            }));
        }
    }
    for &p in udp_ports {
        for bind in [format!("0.0.0.0:{p}"), format!("[::]:{p}")] {
            let fd = socket(
                if bind.starts_with('[') {
                    libc::AF_INET6
                } else {
                    libc::AF_INET
                },
                libc::SOCK_DGRAM,
                0,
            )
            .expect("socket");
            let one: libc::c_int = 1;
            // SAFETY: setsockopt/bind on our socket.
            unsafe {
                if bind.starts_with('[') {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::IPPROTO_IPV6,
                        libc::IPV6_V6ONLY,
                        std::ptr::from_ref(&one).cast(),
                        4,
                    );
                }
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_PKTINFO,
                    std::ptr::from_ref(&one).cast(),
                    4,
                );
                let (ss, len) = sockaddr(&bind.parse().expect("bind"));
                assert_eq!(
                    libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&ss).cast(), len),
                    0,
                    "bind {bind}: {}",
                    errno()
                );
            }
            let s = UdpSocket::from(fd);
            let port = p;
            handles.push(std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    let Ok((n, peer)) = s.recv_from(&mut buf) else { continue };
                    let data = String::from_utf8_lossy(&buf[..n]).into_owned();
                    out(json!({"proto": "udp", "event": "data", "port": port, "peer": peer.to_string(), "data": data}));
                }
            }));
        }
    }
    if icmp {
        let fd = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP).expect("raw icmp");
        handles.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                // SAFETY: recv(2) into our buffer.
                let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 20 {
                    continue;
                }
                let ihl = ((buf[0] & 0x0f) as usize) * 4;
                if buf[ihl] == 8 {
                    let src = IpAddr::from([buf[12], buf[13], buf[14], buf[15]]);
                    let dst = IpAddr::from([buf[16], buf[17], buf[18], buf[19]]);
                    out(json!({"proto": "icmp", "event": "echo", "peer": src.to_string(), "local": dst.to_string()}));
                }
            }
        }));
    }
    out(json!({"event": "ready"}));
    for h in handles {
        let _ = h.join();
    }
}

/// A server inside an identity: TCP answers each read with `echo:<data>` (an HTTP `GET` gets a
/// `200 OK` and the connection is closed, like a health probe); UDP answers each datagram with
/// `echo:<data>` and, when `also` is set, then sends one datagram to `also` (a peer that never
/// sent to it). Every accept, datagram and send result is reported.
fn echo_serve(tcp_port: u16, udp_port: u16, also: Option<SocketAddr>) {
    let l = TcpListener::bind(("0.0.0.0", tcp_port)).expect("tcp bind");
    let u = UdpSocket::bind(("0.0.0.0", udp_port)).expect("udp bind");
    let l6 = TcpListener::from(bind_v6only(libc::SOCK_STREAM, tcp_port).expect("tcp6 bind"));
    let u6 = UdpSocket::from(bind_v6only(libc::SOCK_DGRAM, udp_port).expect("udp6 bind"));
    for (l, u) in [(l, u), (l6, u6)] {
        echo_serve_on(l, u, also);
    }
    out(json!({"event": "ready"}));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// An IPv6-only socket bound to `[::]:port` (listening when a stream socket).
fn bind_v6only(ty: i32, port: u16) -> std::io::Result<OwnedFd> {
    let fd = socket(libc::AF_INET6, ty, 0)?;
    let one: libc::c_int = 1;
    let (ss, len) = sockaddr(&SocketAddr::new(
        std::net::Ipv6Addr::UNSPECIFIED.into(),
        port,
    ));
    // SAFETY: setsockopt/bind/listen on our socket with valid arguments.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            std::ptr::from_ref(&one).cast(),
            4,
        );
        if libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&ss).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if ty == libc::SOCK_STREAM && libc::listen(fd.as_raw_fd(), 64) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(fd)
}

fn echo_serve_on(l: TcpListener, u: UdpSocket, also: Option<SocketAddr>) {
    let qlen: libc::c_int = 16;
    // SAFETY: setsockopt on our listener with a valid int (TCP Fast Open server side).
    unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            std::ptr::from_ref(&qlen).cast(),
            4,
        );
    }
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let peer = c.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                out(json!({"proto": "tcp", "event": "accept", "peer": peer}));
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let data = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if data.starts_with("GET ") {
                        let r = c.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        );
                        out(
                            json!({"proto": "tcp", "event": "http", "peer": peer, "write": res(r)}),
                        );
                        break;
                    }
                    let r = c.write_all(format!("echo:{data}").as_bytes());
                    out(
                        json!({"proto": "tcp", "event": "data", "peer": peer, "data": data, "write": res(r)}),
                    );
                }
            });
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let Ok((n, peer)) = u.recv_from(&mut buf) else {
                continue;
            };
            let data = String::from_utf8_lossy(&buf[..n]).into_owned();
            let r = u
                .send_to(format!("echo:{data}").as_bytes(), peer)
                .map(|_| ());
            out(
                json!({"proto": "udp", "event": "data", "peer": peer.to_string(), "data": data, "reply": res(r)}),
            );
            if let Some(a) = also
                && a.is_ipv4() == peer.is_ipv4()
            {
                let r = u
                    .send_to(format!("unasked:{data}").as_bytes(), a)
                    .map(|_| ());
                out(
                    json!({"proto": "udp", "event": "unasked", "to": a.to_string(), "send": res(r)}),
                );
            }
        }
    });
}

/// A client outside the identity: `n` request/answer exchanges with `dst` over one TCP
/// connection (`tcp`) or one UDP socket (`udp`), from `src` when given. Reports the answers.
fn client_rr(
    proto: &str,
    dst: SocketAddr,
    src: Option<IpAddr>,
    n: usize,
    payload: &str,
) -> serde_json::Value {
    let any: IpAddr = if dst.is_ipv4() {
        [0, 0, 0, 0].into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let bind = SocketAddr::new(src.unwrap_or(any), 0);
    let pause = std::env::var("CP_RR_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let mut answers = Vec::new();
    let r = (|| -> std::io::Result<()> {
        if proto == "tcp" {
            let fd = socket(fam(&dst), libc::SOCK_STREAM, 0)?;
            let (ss, len) = sockaddr(&bind);
            // SAFETY: bind(2) on our socket.
            if unsafe { libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&ss).cast(), len) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut s = TcpStream::from(fd);
            // A blocking connect with a bound socket: a dropped SYN gives up after the timeout.
            s.set_write_timeout(Some(Duration::from_secs(2)))?;
            let (ds, dlen) = sockaddr(&dst);
            let tv = libc::timeval {
                tv_sec: 2,
                tv_usec: 0,
            };
            // SAFETY: setsockopt/connect on our socket.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    std::ptr::from_ref(&tv).cast(),
                    size_of::<libc::timeval>() as u32,
                );
                if libc::connect(s.as_raw_fd(), std::ptr::from_ref(&ds).cast(), dlen) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            for i in 0..n {
                if i > 0
                    && let Some(p) = pause
                {
                    out(json!({"event": "paused", "answers": answers.len()}));
                    std::thread::sleep(p);
                }
                s.write_all(payload.as_bytes())?;
                let mut buf = [0u8; 4096];
                let got = s.read(&mut buf)?;
                answers.push(String::from_utf8_lossy(&buf[..got]).into_owned());
            }
        } else {
            let u = UdpSocket::bind(bind)?;
            u.set_read_timeout(Some(Duration::from_secs(2)))?;
            for _ in 0..n {
                u.send_to(payload.as_bytes(), dst)?;
                let mut buf = [0u8; 4096];
                let got = u.recv(&mut buf)?;
                answers.push(String::from_utf8_lossy(&buf[..got]).into_owned());
            }
        }
        Ok(())
    })();
    let mut v = res(r);
    v["answers"] = json!(answers);
    v
}

/// Sends one datagram to `dst` from a socket bound to `port` (a "reply" nobody asked for).
fn udp_from(port: u16, dst: SocketAddr, payload: &str) -> std::io::Result<()> {
    let u = UdpSocket::bind(("0.0.0.0", port))?;
    u.send_to(payload.as_bytes(), dst).map(|_| ())
}

/// Pins this process to the CPU in `CP_CPU`, if set.
fn pin_cpu() {
    if let Some(cpu) = std::env::var("CP_CPU")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
    {
        // SAFETY: a zeroed cpu_set_t with one bit set, passed to sched_setaffinity for ourselves.
        unsafe {
            let mut set: libc::cpu_set_t = zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
        }
    }
}

/// Benchmark server: TCP echo of 64-byte requests (a connection whose first byte is `B` is a
/// bulk sink), and a UDP sink.
fn bench_serve(port: u16) {
    let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
    let u = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while u.recv(&mut buf).is_ok() {}
    });
    out(json!({"event": "ready"}));
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        std::thread::spawn(move || {
            let _ = c.set_nodelay(true);
            let mut buf = vec![0u8; 65536];
            let mut first = true;
            let mut bulk = false;
            loop {
                let n = match c.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if first {
                    bulk = buf[0] == b'B';
                    first = false;
                }
                if !bulk && c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
    }
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Benchmark clients: `crr`, `rr`, `stream`, `udp` (connected), `udp-sendto` (unconnected),
/// `deny` (connects expected to fail).
fn bench_client(mode: &str, dst: SocketAddr, secs: f64) -> serde_json::Value {
    let dur = Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut lat: Vec<u64> = Vec::new();
    let mut n: u64 = 0;
    let mut bytes: u64 = 0;
    let mut errors: u64 = 0;
    let req = [b'r'; 64];
    let mut resp = [0u8; 64];
    match mode {
        "crr" => {
            while t0.elapsed() < dur {
                let t = Instant::now();
                let ok = (|| -> std::io::Result<()> {
                    let mut s = TcpStream::connect(dst)?;
                    s.set_nodelay(true)?;
                    s.write_all(&req)?;
                    s.read_exact(&mut resp)?;
                    Ok(())
                })();
                if ok.is_ok() {
                    n += 1;
                    lat.push(t.elapsed().as_nanos() as u64);
                } else {
                    errors += 1;
                }
            }
        }
        "deny" => {
            while t0.elapsed() < dur {
                let t = Instant::now();
                if TcpStream::connect(dst).is_err() {
                    n += 1;
                    lat.push(t.elapsed().as_nanos() as u64);
                } else {
                    errors += 1;
                }
            }
        }
        "rr" => {
            let mut s = TcpStream::connect(dst).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            while t0.elapsed() < dur {
                let t = Instant::now();
                if s.write_all(&req)
                    .and_then(|()| s.read_exact(&mut resp))
                    .is_err()
                {
                    errors += 1;
                    break;
                }
                n += 1;
                lat.push(t.elapsed().as_nanos() as u64);
            }
        }
        "stream" => {
            let mut s = TcpStream::connect(dst).expect("connect");
            let mut chunk = vec![b'B'; 65536];
            chunk[0] = b'B';
            while t0.elapsed() < dur {
                if let Ok(w) = s.write(&chunk) {
                    bytes += w as u64;
                } else {
                    errors += 1;
                    break;
                }
            }
        }
        "udp" => {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.connect(dst).expect("connect");
            while t0.elapsed() < dur {
                match s.send(&req) {
                    Ok(_) => n += 1,
                    Err(_) => errors += 1,
                }
            }
        }
        "udp-sendto" => {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            while t0.elapsed() < dur {
                match s.send_to(&req, dst) {
                    Ok(_) => n += 1,
                    Err(_) => errors += 1,
                }
            }
        }
        other => panic!("unknown bench mode {other}"),
    }
    let el = t0.elapsed().as_secs_f64();
    json!({
        "ok": true, "mode": mode, "n": n, "errors": errors, "secs": el,
        "rate": n as f64 / el, "bytes_per_s": bytes as f64 / el,
        "p50_ns": percentile(&mut lat, 0.5), "p99_ns": percentile(&mut lat, 0.99),
    })
}

fn ports(s: &str) -> Vec<u16> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().expect("port"))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).cloned().unwrap_or_default();
    let payload =
        std::env::var("CP_PAYLOAD").unwrap_or_else(|_| format!("probe-{}", std::process::id()));
    pin_cpu();
    let r = match a(0).as_str() {
        "bench-serve" => {
            bench_serve(a(1).parse().expect("port"));
            return;
        }
        "bench" => bench_client(&a(1), addr(&a(2)), a(3).parse().unwrap_or(1.0)),
        "dns-serve" => {
            dns::serve(&a(1), &args[2..]);
            return;
        }
        "dns-query" => dns::query(
            addr(&a(1)),
            &a(2),
            if a(3).is_empty() { "A" } else { &args[3] },
            &a(4),
        ),
        "tcp" => res(tcp(addr(&a(1)), &payload)),
        "tcp-mapped" => res(tcp_mapped(addr(&a(1)), &payload)),
        "udp-sendto" => res(udp_sendto(addr(&a(1)), &payload)),
        "udp-connect" => res(udp_connect(addr(&a(1)), &payload)),
        "sendmmsg" => res(sendmmsg(addr(&a(1)), &payload)),
        "tfo" => res(tfo(addr(&a(1)), &payload)),
        "io-uring" => res(uring_connect(addr(&a(1)), &payload)),
        "raw-icmp" => res(raw_icmp(a(1).parse().expect("ip"))),
        "ping" => res(ping_sock(a(1).parse().expect("ip"))),
        "packet" => {
            let mut mac = [0u8; 6];
            for (i, b) in a(2).split(':').enumerate().take(6) {
                mac[i] = u8::from_str_radix(b, 16).expect("mac");
            }
            let src: std::net::Ipv4Addr = a(3).parse().expect("src ip");
            let mut r = res(packet(&a(1), mac, src.octets(), addr(&a(4)), &payload));
            r["src"] = json!(SocketAddr::new(IpAddr::V4(src), packet_sport()).to_string());
            r
        }
        "compat-uring" => res(compat::io_uring_setup().map(|_| ())),
        "fork" => {
            // A child process of the workload makes the attempt.
            // SAFETY: fork(2); the child only runs the probe logic and exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let r = res(tcp(addr(&a(1)), &payload));
                out(json!({"child": r}));
                std::process::exit(0);
            }
            let mut status = 0;
            // SAFETY: waitpid on our child.
            unsafe { libc::waitpid(pid, &raw mut status, 0) };
            json!({"ok": true, "forked": pid})
        }
        "exec" => {
            // Replace this process with another binary that makes the attempt.
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new(std::env::current_exe().expect("exe"))
                .args(&args[1..])
                .exec();
            json!({"ok": false, "error": err.to_string()})
        }
        "udp-flood" => {
            // N unconnected sends as fast as possible; counts how many the kernel refused. With
            // a third argument P, the destination port cycles through P ports from the given one.
            let dst = addr(&a(1));
            let n: u64 = a(2).parse().unwrap_or(1000);
            let spread: u16 = a(3).parse().unwrap_or(1).max(1);
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
        "loop" => {
            // Alternating connects to an allowed and a forbidden destination for N seconds.
            let (good, bad) = (addr(&a(1)), addr(&a(2)));
            let secs: u64 = a(3).parse().unwrap_or(3);
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
        "hold" => {
            hold(addr(&a(1)), a(2).parse().unwrap_or(5));
            return;
        }
        "serve" => {
            serve(&ports(&a(1)), &ports(&a(2)), a(3) == "icmp");
            return;
        }
        "echo-serve" => {
            let also = (!a(3).is_empty()).then(|| addr(&a(3)));
            echo_serve(
                a(1).parse().expect("tcp port"),
                a(2).parse().expect("udp port"),
                also,
            );
            return;
        }
        "tcp-rr" | "udp-rr" => {
            let src = (!a(2).is_empty() && a(2) != "-").then(|| a(2).parse().expect("src ip"));
            let n = a(3).parse().unwrap_or(1);
            client_rr(&a(0)[..3], addr(&a(1)), src, n, &payload)
        }
        "idle" => {
            // A resident process (a pod's long-lived container) that opens nothing.
            out(json!({"event": "ready", "pid": std::process::id()}));
            std::thread::sleep(Duration::from_secs(a(1).parse().unwrap_or(30)));
            return;
        }
        "spoof-reply" => {
            spoof_reply(
                a(1).parse().expect("port"),
                a(2).parse().expect("local ip"),
                addr(&a(3)),
                &payload,
            );
            return;
        }
        "udp-from" => res(udp_from(a(1).parse().expect("port"), addr(&a(2)), &payload)),
        other => {
            eprintln!("unknown probe `{other}`");
            std::process::exit(2);
        }
    };
    out(r);
}
