//! Destination filters: `CIDR[:PORT]` against a record's `ip:port`.

use std::net::IpAddr;

use super::QueryError;
use crate::policy::parse::{Cidr, parse_cidr};

/// The destination part of a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DstFilter {
    /// The destination address must be in this prefix.
    pub net: Cidr,
    /// And have this port, when given.
    pub port: Option<u16>,
}

/// Parses `CIDR[:PORT]`.
pub fn parse_dst(s: &str) -> Result<DstFilter, QueryError> {
    let t = s.trim();
    let bad = || QueryError::Dst(s.into());
    let (net, port) = if let Some(rest) = t.strip_prefix('[') {
        match rest.split_once(']') {
            Some((net, "")) => (net, None),
            Some((net, p)) => (net, Some(p.strip_prefix(':').ok_or_else(bad)?)),
            None => return Err(bad()),
        }
    } else if t.matches(':').count() == 1 {
        let (n, p) = t.split_once(':').expect("one colon");
        (n, Some(p))
    } else {
        (t, None)
    };
    // Host bits are allowed in a filter (10.1.2.3/24 means 10.1.2.0/24).
    let net = if let Ok(c) = parse_cidr(net) {
        c
    } else {
        let (ip, bits) = net.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = ip.parse().map_err(|_| bad())?;
        let bits: u8 = bits.parse().map_err(|_| bad())?;
        if bits > if addr.is_ipv4() { 32 } else { 128 } {
            return Err(bad());
        }
        Cidr { addr, bits }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
        None => None,
    };
    Ok(DstFilter { net, port })
}

fn split_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, p) = rest.split_once("]:")?;
        (ip, p)
    } else {
        s.rsplit_once(':')?
    };
    Some((ip.parse().ok()?, port.parse().ok()?))
}

fn contains(net: &Cidr, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    };
    match (net.addr, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(net.bits)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(net.bits))
                .unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

impl DstFilter {
    /// Whether a record's `dst` (`ip:port` or `[ip]:port`) matches.
    pub fn matches(&self, dst: Option<&str>) -> bool {
        let Some((ip, port)) = dst.and_then(split_endpoint) else {
            return false;
        };
        contains(&self.net, ip) && self.port.is_none_or(|p| p == port)
    }
}
