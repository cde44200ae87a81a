//! Servers inside an identity (`echo-serve`) and the clients outside that talk to them (`tcp-rr`,
//! `udp-rr`).

use std::{
    io::{Read, Write},
    mem::size_of,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use serde_json::json;

use crate::sys::{fam, out, res, sockaddr, socket};

/// A server inside an identity: TCP answers each read with `echo:<data>` (an HTTP `GET` gets a
/// `200 OK` and the connection is closed, like a health probe); UDP answers each datagram with
/// `echo:<data>` and, when `also` is set, then sends one datagram to `also` (a peer that never
/// sent to it). Every accept, datagram and send result is reported.
pub(crate) fn echo_serve(tcp_port: u16, udp_port: u16, also: Option<SocketAddr>) {
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
pub(crate) fn bind_v6only(ty: i32, port: u16) -> std::io::Result<OwnedFd> {
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

pub(crate) fn echo_serve_on(l: TcpListener, u: UdpSocket, also: Option<SocketAddr>) {
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
pub(crate) fn client_rr(
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
