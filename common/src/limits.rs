//! Layout version, map capacities, identity modes, protocol numbers and counter indices.

#[cfg(doc)]
use crate::{PortEntry, names};
use crate::{reason, verdict};

/// Build identity of the eBPF object layout. Bumped whenever a map's key or value changes, so a
/// daemon never adopts pins of a layout it does not understand.
pub const LAYOUT_VERSION: u32 = 5;

/// Deepest cgroup level the identity walk inspects (level 0 is the root).
pub const MAX_CGROUP_DEPTH: u32 = 16;
/// Destination entries per LPM prefix (gateway endpoints and rule ports merged).
pub const MAX_PORT_ENTRIES: usize = 16;
/// Grant entries per LPM prefix.
pub const MAX_GRANT_ENTRIES: usize = 8;
/// Capacity of the rules trie.
pub const MAX_RULES: u32 = 262_144;
/// Capacity of the grants trie.
pub const MAX_GRANTS: u32 = 16_384;
/// Capacity of the identity map (cgroups × 2 slots).
pub const MAX_IDENT_CGROUPS: u32 = 65_536;
/// Slots of the cgroup resolution cache (a power of two: the slot is `cgroup_id & (size - 1)`).
pub const CGCACHE_SIZE: u32 = 65_536;
/// Capacity of the attestation map (live gateway connections).
pub const ATTEST_SIZE: u32 = 131_072;
/// Capacity of the pending-accept map.
pub const ACCEPT_SIZE: u32 = 65_536;
/// Capacity of the UDP reply map.
pub const REPLY_SIZE: u32 = 131_072;
/// How long after a UDP peer's last datagram a socket of an identity may reply to it.
pub const REPLY_WINDOW_NS: u64 = 60_000_000_000;
/// Capacity of the learned-address map (all identities).
pub const MAX_FQDN: u32 = 65_536;
/// Entries (rule × ports) per learned address of one identity.
pub const MAX_FQDN_ENTRIES: usize = 8;
/// Capacity of the DNS proxy map (identities with `toFQDN` rules).
pub const MAX_DNSPX: u32 = 4096;
/// Capacity of the redirected-socket map.
pub const DNSORIG_SIZE: u32 = 65_536;
/// Ring buffer size in bytes (power of two, multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 22;

/// Identity mode: unenforced (no identity).
pub const MODE_NONE: u8 = 0;
/// Identity mode: enforce (deny bypasses).
pub const MODE_ENFORCE: u8 = 1;
/// Identity mode: audit (let bypasses through, record `audit`).
pub const MODE_AUDIT: u8 = 2;

/// Index of the (verdict, reason) decision counter in [`names::STATS`].
pub const fn stat_index(verdict: u8, reason: u8) -> u32 {
    (verdict as u32) * (reason::COUNT as u32) + (reason as u32)
}
/// Index of the "ring buffer reserve failed" counter in [`names::STATS`].
pub const STAT_LOST: u32 = stat_index(verdict::COUNT, 0);
/// Number of entries in [`names::STATS`].
pub const STATS_LEN: u32 = STAT_LOST + 1;

/// Protocol value meaning "any protocol" in a [`PortEntry`].
pub const PROTO_ANY: u8 = 0;
/// IPPROTO_TCP.
pub const PROTO_TCP: u8 = 6;
/// IPPROTO_UDP.
pub const PROTO_UDP: u8 = 17;
/// IPPROTO_ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IPPROTO_ICMPV6.
pub const PROTO_ICMPV6: u8 = 58;
