//! `toFQDN` and the DNS inventory: captured answers, learned addresses, the proxy and redirects.

use crate::MAX_FQDN_ENTRIES;
#[cfg(doc)]
use crate::{PROTO_ANY, names};

/// Ring buffer size of [`names::DNSANS`] in bytes (power of two, multiple of the page size).
pub const DNSANS_BYTES: u32 = 1 << 18;
/// DNS message bytes captured per answer (the classic UDP DNS limit).
pub const DNSANS_DATA: usize = 512;

/// One DNS answer an identity received (an entry of [`names::DNSANS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsAnswer {
    /// Policy generation the identity id belongs to.
    pub generation: u32,
    /// Identity id.
    pub ident: u32,
    /// Cgroup id of the receiving socket.
    pub cgroup_id: u64,
    /// The resolver's address; IPv4 in the first 4 bytes.
    pub peer: [u8; 16],
    /// 4 or 6.
    pub family: u8,
    /// Padding.
    pub _pad: u8,
    /// Bytes of `data` holding the DNS message (the start of the UDP payload).
    pub len: u16,
    /// Padding.
    pub _pad2: u32,
    /// The DNS message (the first `len` bytes).
    pub data: [u8; DNSANS_DATA],
}

/// Key of [`names::FQDN`]: one address learned by one identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FqdnKey {
    /// Identity id.
    pub ident: u32,
    /// 4 or 6.
    pub family: u8,
    /// Padding.
    pub _pad: [u8; 3],
    /// Address; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

/// One (rule, ports) a learned address is allowed for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FqdnEntry {
    /// Expiry on the `CLOCK_BOOTTIME` clock (ns); 0 marks an unused entry.
    pub expires_ns: u64,
    /// Rule index within the identity (the `toFQDN` rule).
    pub rule: u32,
    /// First port.
    pub port_lo: u16,
    /// Last port, inclusive.
    pub port_hi: u16,
    /// IP protocol number or [`PROTO_ANY`].
    pub proto: u8,
    /// Padding.
    pub _pad: [u8; 7],
}

/// Value of [`names::FQDN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FqdnVal {
    /// Entries; unused ones have `expires_ns == 0`.
    pub entries: [FqdnEntry; MAX_FQDN_ENTRIES],
}

/// Value of [`names::DNSPX`]: the proxy port serving one identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsProxy {
    /// Rule index of the resolver rule (for records of the redirected lookups).
    pub rule: u32,
    /// UDP port of the proxy socket for this identity (host order).
    pub port: u16,
    /// Padding.
    pub _pad: u16,
}

/// Value of [`names::DNSCFG`]: where the proxy listens.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsCfg {
    /// Network namespace cookie of the daemon: sockets there are redirected to 127.0.0.1.
    pub host_netns: u64,
    /// Address (network order bytes) sockets of other namespaces (pods) are redirected to; zero
    /// when not configured (then they go to 127.0.0.1 of their own namespace: no answer).
    pub pod_addr: [u8; 4],
    /// Padding.
    pub _pad: u32,
}

/// Value of [`names::DNSORIG`]: the resolver a redirected socket addressed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsOrig {
    /// The resolver's IPv4 address (network order bytes).
    pub addr: [u8; 4],
    /// The proxy address the socket was sent to (network order bytes).
    pub proxy_addr: [u8; 4],
    /// The resolver's port (host order).
    pub port: u16,
    /// The proxy port (host order).
    pub proxy_port: u16,
    /// Padding.
    pub _pad: u32,
}

assert_size!(FqdnKey, 24);
assert_size!(FqdnEntry, 24);
assert_size!(FqdnVal, 24 * MAX_FQDN_ENTRIES);
assert_size!(DnsProxy, 8);
assert_size!(DnsCfg, 16);
assert_size!(DnsOrig, 16);
