//! The world side (`serve`): reports every connection, datagram and ICMP echo it receives.

use std::{
    io::{Read, Write},
    net::{IpAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use serde_json::json;

use crate::sys::{errno, out, sockaddr, socket};

/// The world side: reports what it receives as JSON lines.
pub(crate) fn serve(tcp_ports: &[u16], udp_ports: &[u16], icmp: bool) {
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
