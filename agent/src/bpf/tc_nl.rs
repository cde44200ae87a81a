//! The rtnetlink requests of the clsact fallback that aya has no call for: listing a device's TC
//! filters (is the backstop's filter there, running our program?) and deleting the filter and
//! the clsact qdisc the agent added. Requests go to the network namespace of the calling thread
//! (a netlink socket belongs to the namespace it was opened in), so the per-netns backstop calls
//! them from a thread that entered the namespace.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Parent of the clsact qdisc's egress filters (`ffff:fff3`).
pub(super) const EGRESS: TcHandle = TcHandle {
    major: TcHandle::CLSACT.major,
    minor: TcHandle::MIN_EGRESS,
};
/// Parent of the clsact qdisc's ingress filters (`ffff:fff2`).
pub(super) const INGRESS: TcHandle = TcHandle {
    major: TcHandle::CLSACT.major,
    minor: TcHandle::MIN_INGRESS,
};

/// One TC filter of a device, as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Filter {
    /// Priority.
    pub(super) prio: u16,
    /// `tcm_info` (priority and protocol), needed to delete it.
    pub(super) info: u32,
    /// Filter handle.
    pub(super) handle: u32,
    /// Classifier kind (`bpf`, `u32`, …).
    pub(super) kind: String,
    /// Id of the BPF program (`bpf` filters).
    pub(super) prog_id: Option<u32>,
    /// Name of the BPF program (`bpf` filters).
    pub(super) prog_name: Option<String>,
}

/// Sends `msg` and collects the answers up to the dump's end or the acknowledgement.
fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
    packet.header.flags = flags;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off < n {
            let m: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&rx[off..n]).map_err(io::Error::other)?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(out),
                        Some(_) => Err(e.to_io()),
                    };
                }
                NetlinkPayload::InnerMessage(i) => out.push(i),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
        if flags & NLM_F_DUMP == 0 && flags & NLM_F_ACK == 0 {
            return Ok(out);
        }
    }
}

/// The filters under `parent` ([`EGRESS`] or [`INGRESS`]) of device `ifindex`. A device without
/// a clsact qdisc has none.
pub(super) fn filters(ifindex: u32, parent: TcHandle) -> io::Result<Vec<Filter>> {
    let mut msg = TcMessage::with_index(ifindex_i32(ifindex)?);
    msg.header.parent = parent;
    let answers = match request(
        RouteNetlinkMessage::GetTrafficFilter(msg),
        NLM_F_REQUEST | NLM_F_DUMP,
    ) {
        Ok(a) => a,
        // No clsact qdisc on the device: no filters.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for a in answers {
        let RouteNetlinkMessage::NewTrafficFilter(m) = a else {
            continue;
        };
        let handle = u32::from(m.header.handle);
        // The dump lists each classifier instance once without a handle before its filters.
        if handle == 0 {
            continue;
        }
        let mut f = Filter {
            prio: (m.header.info >> 16) as u16,
            info: m.header.info,
            handle,
            kind: String::new(),
            prog_id: None,
            prog_name: None,
        };
        for attr in m.attributes {
            match attr {
                TcAttribute::Kind(k) => f.kind = k,
                TcAttribute::Options(opts) => {
                    for o in opts {
                        match o {
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => f.prog_id = Some(id),
                            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => {
                                f.prog_name = Some(n);
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        out.push(f);
    }
    Ok(out)
}

/// Deletes filter `f` under `parent` of device `ifindex`; one already gone is not an error.
pub(super) fn delete_filter(ifindex: u32, parent: TcHandle, f: &Filter) -> io::Result<()> {
    let mut msg = TcMessage::with_index(ifindex_i32(ifindex)?);
    msg.header.parent = parent;
    msg.header.info = f.info;
    msg.header.handle = TcHandle::from(f.handle);
    msg.attributes.push(TcAttribute::Kind(f.kind.clone()));
    match request(
        RouteNetlinkMessage::DelTrafficFilter(msg),
        NLM_F_REQUEST | NLM_F_ACK,
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes the clsact qdisc of device `ifindex` (and with it every filter on it); one already
/// gone is not an error.
pub(super) fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let mut msg = TcMessage::with_index(ifindex_i32(ifindex)?);
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = TcHandle {
        major: TcHandle::CLSACT.major,
        minor: 0,
    };
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    match request(
        RouteNetlinkMessage::DelQueueDiscipline(msg),
        NLM_F_REQUEST | NLM_F_ACK,
    ) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn ifindex_i32(ifindex: u32) -> io::Result<i32> {
    i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))
}
