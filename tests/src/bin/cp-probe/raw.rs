//! Crafted packets: raw and ping ICMP sockets, AF_PACKET frames, the reply-poisoning attack.

use std::{
    mem::{size_of, zeroed},
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

use serde_json::json;

use crate::{
    compat,
    sys::{out, res, send_to, sockaddr, socket},
};

/// Source port of the frames a packet probe crafts: unique per probe process, so its records
/// can be told from any other attempt's.
pub(crate) fn packet_sport() -> u16 {
    20000 + (std::process::id() % 40000) as u16
}

pub(crate) fn csum(data: &[u8]) -> u16 {
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

pub(crate) fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, payload_len: usize) -> Vec<u8> {
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
pub(crate) fn raw_icmp(dst: IpAddr) -> std::io::Result<()> {
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
pub(crate) fn ping_sock(dst: IpAddr) -> std::io::Result<()> {
    let IpAddr::V4(v4) = dst else {
        panic!("ping is IPv4")
    };
    let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)?;
    let pkt = [8u8, 0, 0, 0, 0, 0, 0, 1, b'c', b'p'];
    let (ss, len) = sockaddr(&SocketAddr::new(IpAddr::V4(v4), 0));
    send_to(&fd, &pkt, 0, &ss, len)
}

/// AF_PACKET (cooked) frame carrying IPv4/UDP from `src` to `dst`, sent on `iface` to `mac`.
pub(crate) fn packet(
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
pub(crate) fn spoof_reply(port: u16, local: std::net::Ipv4Addr, peer: SocketAddr, payload: &str) {
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
