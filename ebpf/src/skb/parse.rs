//! Packet headers as the backstop reads them: by direct packet access where the headers are in
//! the linear data, else through the load helper.

use aya_ebpf::{bindings::__sk_buff, programs::sk_buff::SkBuff};

use crate::decide::{Dest, has_ports};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Parsed packet: destination, source, and whether ports were read.
pub(super) struct Pkt {
    pub(super) dst: Dest,
    pub(super) saddr: [u8; 16],
    pub(super) sport: u16,
    pub(super) port_known: bool,
}

#[inline(always)]
pub(super) fn parse(skb: &SkBuff, l3: usize, ethertype: u16) -> Option<Pkt> {
    let mut p = Pkt {
        dst: Dest {
            family: 4,
            proto: 0,
            port: 0,
            addr: [0; 16],
        },
        saddr: [0; 16],
        sport: 0,
        port_known: false,
    };
    let l4;
    let mut first_fragment = true;
    if ethertype == ETH_P_IP {
        let vihl: u8 = skb.load(l3).ok()?;
        if vihl >> 4 != 4 {
            return None;
        }
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            return None;
        }
        let frag: u16 = u16::from_be(skb.load(l3 + 6).ok()?);
        if frag & 0x1fff != 0 {
            first_fragment = false;
        }
        p.dst.proto = skb.load(l3 + 9).ok()?;
        let s: [u8; 4] = skb.load(l3 + 12).ok()?;
        let d: [u8; 4] = skb.load(l3 + 16).ok()?;
        p.saddr[..4].copy_from_slice(&s);
        p.dst.addr[..4].copy_from_slice(&d);
        l4 = l3 + (ihl & 0x3c);
    } else if ethertype == ETH_P_IPV6 {
        let v: u8 = skb.load(l3).ok()?;
        if v >> 4 != 6 {
            return None;
        }
        p.dst.family = 6;
        p.dst.proto = skb.load(l3 + 6).ok()?;
        p.saddr = skb.load(l3 + 8).ok()?;
        p.dst.addr = skb.load(l3 + 24).ok()?;
        l4 = l3 + 40;
    } else {
        return None;
    }
    if first_fragment && has_ports(p.dst.proto) {
        let ports: [u8; 4] = skb.load(l4).ok()?;
        p.sport = u16::from_be_bytes([ports[0], ports[1]]);
        p.dst.port = u16::from_be_bytes([ports[2], ports[3]]);
        p.port_known = true;
    }
    p.dst.normalise();
    Some(p)
}

/// Reads `N` bytes at `p`.
///
/// # Safety
///
/// `[p, p + N)` lies in the packet's linear data: the caller has compared it against
/// `data_end` (which the verifier also checks for every access).
#[inline(always)]
unsafe fn bytes<const N: usize>(p: usize) -> [u8; N] {
    // SAFETY: in bounds by the caller's contract; unaligned, as packet headers are.
    unsafe { core::ptr::read_unaligned(p as *const [u8; N]) }
}

/// [`parse`] by direct packet access (no helper call): `None` when the headers are not all in the
/// linear part of the packet or anything is unusual, and the caller then takes the helper path,
/// which decides every such packet exactly as before.
#[inline(always)]
pub(super) fn parse_direct(skb: &SkBuff, l3: usize, ethertype: u16) -> Option<Pkt> {
    let raw: *mut __sk_buff = skb.skb;
    // SAFETY: `raw` is the program's context pointer, valid for the whole run.
    let start = unsafe { (*raw).data } as usize;
    // SAFETY: as above.
    let end = unsafe { (*raw).data_end } as usize;
    let mut p = Pkt {
        dst: Dest {
            family: 4,
            proto: 0,
            port: 0,
            addr: [0; 16],
        },
        saddr: [0; 16],
        sport: 0,
        port_known: false,
    };
    let l4;
    if ethertype == ETH_P_IP {
        if start + l3 + 20 > end {
            return None;
        }
        let h = start + l3;
        // SAFETY: `h + 20 <= end` was checked above.
        let [vihl] = unsafe { bytes::<1>(h) };
        if vihl >> 4 != 4 {
            return None;
        }
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            return None;
        }
        // SAFETY: within the 20 bytes checked above.
        let frag = u16::from_be_bytes(unsafe { bytes::<2>(h + 6) });
        if frag & 0x1fff != 0 {
            // Not a first fragment: no ports; the helper path handles it.
            return None;
        }
        // SAFETY: within the 20 bytes checked above.
        let [proto] = unsafe { bytes::<1>(h + 9) };
        p.dst.proto = proto;
        // SAFETY: within the 20 bytes checked above.
        let s: [u8; 4] = unsafe { bytes(h + 12) };
        // SAFETY: within the 20 bytes checked above.
        let d: [u8; 4] = unsafe { bytes(h + 16) };
        p.saddr[..4].copy_from_slice(&s);
        p.dst.addr[..4].copy_from_slice(&d);
        l4 = h + (ihl & 0x3c);
    } else if ethertype == ETH_P_IPV6 {
        if start + l3 + 40 > end {
            return None;
        }
        let h = start + l3;
        // SAFETY: `h + 40 <= end` was checked above.
        let [v] = unsafe { bytes::<1>(h) };
        if v >> 4 != 6 {
            return None;
        }
        p.dst.family = 6;
        // SAFETY: within the 40 bytes checked above.
        let [proto] = unsafe { bytes::<1>(h + 6) };
        p.dst.proto = proto;
        // SAFETY: bytes 8..24, within the 40 checked above.
        p.saddr = unsafe { bytes(h + 8) };
        // SAFETY: bytes 24..40, within the 40 checked above.
        p.dst.addr = unsafe { bytes(h + 24) };
        l4 = h + 40;
    } else {
        return None;
    }
    if has_ports(p.dst.proto) {
        if l4 + 4 > end {
            return None;
        }
        // SAFETY: `l4 + 4 <= end` was checked just above.
        let ports: [u8; 4] = unsafe { bytes(l4) };
        p.sport = u16::from_be_bytes([ports[0], ports[1]]);
        p.dst.port = u16::from_be_bytes([ports[2], ports[3]]);
        p.port_known = true;
    }
    p.dst.normalise();
    Some(p)
}
