//! Parsers for the small languages inside a policy: CIDRs, ports, endpoints.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};

use chokepoint_common::{PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// An IP network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length.
    pub bits: u8,
}

impl Cidr {
    /// 4 or 6.
    pub fn family(&self) -> u8 {
        if self.addr.is_ipv4() { 4 } else { 6 }
    }
    /// Address bytes, IPv4 in the first four.
    pub fn bytes(&self) -> [u8; 16] {
        addr_bytes(&self.addr)
    }
    /// Full-length prefix of one address (IPv4-mapped IPv6 normalised to IPv4).
    pub fn host(addr: IpAddr) -> Cidr {
        let addr = normalise(addr);
        Cidr {
            addr,
            bits: if addr.is_ipv4() { 32 } else { 128 },
        }
    }
    /// This network truncated to `bits`.
    #[must_use]
    pub fn truncate(&self, bits: u8) -> Cidr {
        Cidr {
            addr: mask(self.addr, bits),
            bits,
        }
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

/// IPv4-mapped IPv6 → IPv4.
pub fn normalise(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => addr,
        },
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// Address bytes, IPv4 in the first four.
pub fn addr_bytes(addr: &IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
    }
    out
}

fn mask(addr: IpAddr, bits: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// Parses `10.0.0.0/8`, `10.0.0.1`, `fd00::/8`, `::1`. Host bits set is an error.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let (ip, bits) = match s.split_once('/') {
        Some((ip, b)) => (ip, Some(b)),
        None => (s, None),
    };
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let addr: IpAddr = ip
        .parse()
        .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits: u8 = match bits {
        None => max,
        Some(b) => {
            let n: u32 = b
                .parse()
                .map_err(|_| format!("`{s}`: prefix length `{b}` is not a number"))?;
            if n > u32::from(max) {
                return Err(format!("`{s}`: prefix length {n} exceeds {max}"));
            }
            n as u8
        }
    };
    let net = mask(addr, bits);
    if net != addr {
        return Err(format!(
            "`{s}` has host bits set (did you mean `{net}/{bits}`?)"
        ));
    }
    // An IPv4-mapped IPv6 network is the IPv4 network.
    if let IpAddr::V6(v6) = addr
        && let Some(v4) = v6.to_ipv4_mapped()
        && bits >= 96
    {
        return Ok(Cidr {
            addr: IpAddr::V4(v4),
            bits: bits - 96,
        });
    }
    Ok(Cidr { addr, bits })
}

/// A port range with a protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    /// First port.
    pub lo: u16,
    /// Last port, inclusive.
    pub hi: u16,
    /// IP protocol number, or `PROTO_ANY`.
    pub proto: u8,
}

impl PortSpec {
    /// Every port, every protocol.
    pub const ANY: PortSpec = PortSpec {
        lo: 0,
        hi: u16::MAX,
        proto: PROTO_ANY,
    };
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)?;
        } else {
            write!(f, "{}-{}", self.lo, self.hi)?;
        }
        write!(f, "/{}", proto_name(self.proto))
    }
}

/// Protocol name for a number.
pub fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        PROTO_ICMPV6 => "icmpv6",
        132 => "sctp",
        PROTO_ANY => "any",
        _ => "other",
    }
}

fn parse_proto(p: &str) -> Result<u8, String> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" => Ok(PROTO_TCP),
        "udp" => Ok(PROTO_UDP),
        "sctp" => Ok(132),
        "icmp" => Ok(PROTO_ICMP),
        "icmpv6" => Ok(PROTO_ICMPV6),
        "any" => Ok(PROTO_ANY),
        other => Err(format!(
            "unknown protocol `{other}` (expected tcp, udp, sctp, icmp, icmpv6 or any)"
        )),
    }
}

fn parse_port(p: &str, whole: &str) -> Result<u16, String> {
    let n: u64 = p
        .trim()
        .parse()
        .map_err(|_| format!("`{whole}`: `{p}` is not a port number"))?;
    if n == 0 || n > 65535 {
        return Err(format!("`{whole}`: port {n} is out of range 1-65535"));
    }
    Ok(n as u16)
}

/// Parses `53/udp`, `443` (tcp and udp: two specs), `8000-8100/tcp`, `*/icmp`.
pub fn parse_ports(s: &str) -> Result<Vec<PortSpec>, String> {
    let s = s.trim();
    let (range, proto) = match s.split_once('/') {
        Some((r, p)) => (r, Some(parse_proto(p)?)),
        None => (s, None),
    };
    let (lo, hi) = if range == "*" {
        (0, u16::MAX)
    } else if let Some((a, b)) = range.split_once('-') {
        let (a, b) = (parse_port(a, s)?, parse_port(b, s)?);
        if a > b {
            return Err(format!("`{s}`: range start {a} is above its end {b}"));
        }
        (a, b)
    } else {
        let p = parse_port(range, s)?;
        (p, p)
    };
    Ok(match proto {
        Some(proto) => vec![PortSpec { lo, hi, proto }],
        None => vec![
            PortSpec {
                lo,
                hi,
                proto: PROTO_TCP,
            },
            PortSpec {
                lo,
                hi,
                proto: PROTO_UDP,
            },
        ],
    })
}

/// Resolves a host name to addresses (the system resolver, or the daemon's cache with grace).
pub type Resolver<'a> = &'a dyn Fn(&str, u16) -> Result<Vec<IpAddr>, String>;

/// The system resolver (`getaddrinfo`).
pub fn system_resolve(host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    let addrs: Vec<IpAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .map(|sa| normalise(sa.ip()))
        .collect();
    if addrs.is_empty() {
        return Err(format!("`{host}` resolves to no address"));
    }
    Ok(addrs)
}

/// A gateway endpoint: one or more networks (an address, a CIDR, or what a host name resolves
/// to), a port and a protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The networks.
    pub nets: Vec<Cidr>,
    /// The port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// The host name, when the endpoint was given by name.
    pub host: Option<String>,
}

/// Parses `10.77.0.1:8080/tcp`, `10.77.0.0/28:8080/tcp`, `[fd77::1]:8080/tcp`,
/// `[fd77::/64]:8080/tcp` and `gateway.example:443/tcp` (resolved with the system resolver).
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    parse_endpoint_with(s, &system_resolve)
}

/// [`parse_endpoint`] with a given resolver for host names.
pub fn parse_endpoint_with(s: &str, resolve: Resolver<'_>) -> Result<Endpoint, String> {
    let s = s.trim();
    let (hostport, proto) = match s.rsplit_once('/') {
        Some((hp, p)) if !p.contains(':') => (hp, parse_proto(p)?),
        _ => (s, PROTO_TCP),
    };
    if proto == PROTO_ANY {
        return Err(format!("`{s}`: a gateway endpoint needs tcp, udp or sctp"));
    }
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| format!("`{s}`: expected `[ipv6]:port/proto`"))?;
        (h, p)
    } else {
        hostport
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}`: expected `host:port/proto`"))?
    };
    if host.contains(':') && !hostport.starts_with('[') {
        return Err(format!(
            "`{s}`: write IPv6 endpoints as `[addr]:port/proto`"
        ));
    }
    let port = parse_port(port, s)?;
    if host.contains('/') {
        let c = parse_cidr(host).map_err(|e| format!("`{s}`: {e}"))?;
        return Ok(Endpoint {
            nets: vec![c],
            port,
            proto,
            host: None,
        });
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Endpoint {
            nets: vec![Cidr::host(ip)],
            port,
            proto,
            host: None,
        });
    }
    if host.is_empty()
        || host.len() > 253
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(format!(
            "`{s}`: `{host}` is not an IP address, CIDR or host name"
        ));
    }
    let addrs = resolve(host, port).map_err(|e| format!("`{s}`: {e}"))?;
    Ok(Endpoint {
        nets: addrs.into_iter().map(Cidr::host).collect(),
        port,
        proto,
        host: Some(host.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().bits, 8);
        assert_eq!(parse_cidr("10.1.2.3").unwrap().bits, 32);
        assert_eq!(parse_cidr("fd00::/8").unwrap().family(), 6);
        assert!(parse_cidr("10.0.0.1/8").unwrap_err().contains("host bits"));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("300.0.0.0/8").is_err());
        let m = parse_cidr("::ffff:10.0.0.0/104").unwrap();
        assert_eq!((m.family(), m.bits), (4, 8));
    }

    #[test]
    fn ports() {
        assert_eq!(
            parse_ports("53/udp").unwrap(),
            vec![PortSpec {
                lo: 53,
                hi: 53,
                proto: 17
            }]
        );
        assert_eq!(parse_ports("443").unwrap().len(), 2);
        assert!(parse_ports("0/tcp").is_err());
        assert!(parse_ports("70000/tcp").is_err());
        assert!(parse_ports("90-80/tcp").is_err());
        assert!(parse_ports("80/xyz").is_err());
    }

    #[test]
    fn endpoints() {
        let e = parse_endpoint("10.77.0.1:8080/tcp").unwrap();
        assert_eq!((e.port, e.proto), (8080, 6));
        let e = parse_endpoint("[fd77::1]:8080/tcp").unwrap();
        assert_eq!(e.nets[0].family(), 6);
        let e = parse_endpoint("10.77.0.0/28:8080/tcp").unwrap();
        assert_eq!(e.nets[0].bits, 28);
        let e = parse_endpoint_with("gw.example:443/tcp", &|_, _| {
            Ok(vec!["10.1.1.1".parse().unwrap()])
        })
        .unwrap();
        assert_eq!(e.host.as_deref(), Some("gw.example"));
        assert!(parse_endpoint("10.77.0.1/28:8080/tcp").is_err());
        assert!(parse_endpoint("fd77::1:8080/tcp").is_err());
        assert!(parse_endpoint("10.0.0.1/tcp").is_err());
        assert!(parse_endpoint("localhost:80/tcp").is_ok());
    }
}
