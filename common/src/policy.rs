//! The policy maps: the configuration word, identities, the cgroup cache, rules and grants.

use crate::{CGCACHE_SIZE, MAX_GRANT_ENTRIES, MAX_PORT_ENTRIES};
#[cfg(doc)]
use crate::{MODE_AUDIT, MODE_ENFORCE, PROTO_ANY, kind, names};

/// The single global configuration word. Packed into one `u64` so a reader never sees a torn
/// update: bit 0 is the active slot, bits 1..32 the policy generation, bits 32..64 the epoch (bumped
/// on every change of policy or grants, which invalidates every cached verdict).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The packed word.
    pub word: u64,
}

impl Config {
    /// Packs slot, generation (31 bits) and epoch (32 bits).
    pub const fn new(slot: u32, generation: u32, epoch: u32) -> Self {
        Self {
            word: (slot as u64 & 1)
                | (((generation as u64) & 0x7fff_ffff) << 1)
                | ((epoch as u64) << 32),
        }
    }
    /// The active slot (0 or 1).
    pub const fn slot(&self) -> u32 {
        (self.word & 1) as u32
    }
    /// The active policy generation.
    pub const fn generation(&self) -> u32 {
        ((self.word >> 1) & 0x7fff_ffff) as u32
    }
    /// The epoch.
    pub const fn epoch(&self) -> u32 {
        (self.word >> 32) as u32
    }
}

/// Key of [`names::IDENT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdentKey {
    /// cgroup v2 id (the inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// Policy slot (0 or 1).
    pub slot: u32,
    /// Padding.
    pub _pad: u32,
}

/// Value of [`names::IDENT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentVal {
    /// Identity id (1-based; 0 means none).
    pub ident: u32,
    /// [`MODE_ENFORCE`] or [`MODE_AUDIT`].
    pub mode: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

/// One slot of [`names::CGCACHE`]. Two CPUs may write one slot at once (cgroups whose ids share
/// it), so a reader may see fields of both: `check` ([`CgCache::checksum`] of the other fields)
/// tells a whole entry from a torn one, and a torn or foreign entry is treated as a miss.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgCache {
    /// The cgroup this slot resolves (0: empty).
    pub cgroup_id: u64,
    /// [`CgCache::checksum`] of the other fields.
    pub check: u64,
    /// Epoch the resolution belongs to.
    pub epoch: u32,
    /// Identity id, 0 when the cgroup has none.
    pub ident: u32,
    /// Mode of the identity.
    pub mode: u8,
    /// Padding.
    pub _pad: [u8; 7],
}

impl CgCache {
    /// The slot of `cgroup_id`.
    #[inline(always)]
    pub const fn slot(cgroup_id: u64) -> u32 {
        (cgroup_id & (CGCACHE_SIZE as u64 - 1)) as u32
    }

    /// A 64-bit mix (splitmix64 finaliser) of every field but `check`; never equal for a torn
    /// entry short of a 2^-64 coincidence.
    #[inline(always)]
    pub const fn checksum(cgroup_id: u64, epoch: u32, ident: u32, mode: u8) -> u64 {
        let mut x = cgroup_id
            ^ ((epoch as u64) << 32 | ident as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (mode as u64).wrapping_mul(0xd6e8_feb8_6659_fd93);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (x ^ (x >> 31)) | 1
    }

    /// A whole entry for `cgroup_id`.
    #[inline(always)]
    pub const fn new(cgroup_id: u64, epoch: u32, ident: u32, mode: u8) -> Self {
        Self {
            cgroup_id,
            check: Self::checksum(cgroup_id, epoch, ident, mode),
            epoch,
            ident,
            mode,
            _pad: [0; 7],
        }
    }

    /// True when this slot holds a whole entry for `cgroup_id` under `epoch`.
    #[inline(always)]
    pub const fn hit(&self, cgroup_id: u64, epoch: u32) -> bool {
        self.cgroup_id == cgroup_id
            && self.epoch == epoch
            && self.check == Self::checksum(self.cgroup_id, self.epoch, self.ident, self.mode)
    }
}

/// Length of the data part of an LPM key: 8 header bytes + 16 address bytes.
pub const LPM_DATA_LEN: usize = 24;
/// Bits of the fixed header at the front of an LPM key (slot, family, ident).
pub const LPM_HEADER_BITS: u32 = 64;

/// Key-space byte (`data[2]`) of egress destinations in [`names::RULES`].
pub const LPM_SPACE_EGRESS: u8 = 0;
/// Key-space byte (`data[2]`) of `ingress.allowFrom` sources in [`names::RULES`]: a separate
/// subtree of the same trie, never matched by an egress lookup.
pub const LPM_SPACE_INGRESS: u8 = 1;

/// Data part of the LPM keys of [`names::RULES`] and [`names::GRANTS`]:
/// `[slot u8][family u8][space u8][0 u8][ident u32 big-endian][address 16 bytes]`.
/// The prefix length always covers the 64 header bits plus the CIDR's bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LpmKey {
    /// Number of significant bits.
    pub prefix_len: u32,
    /// The bytes matched.
    pub data: [u8; LPM_DATA_LEN],
}

impl LpmKey {
    /// Builds a key. `addr` holds 4 (IPv4) or 16 (IPv6) meaningful bytes.
    pub const fn new(slot: u8, family: u8, ident: u32, addr: &[u8; 16], cidr_bits: u32) -> Self {
        let id = ident.to_be_bytes();
        let mut data = [0u8; LPM_DATA_LEN];
        data[0] = slot;
        data[1] = family;
        data[4] = id[0];
        data[5] = id[1];
        data[6] = id[2];
        data[7] = id[3];
        data.split_at_mut(8).1.copy_from_slice(addr);
        Self {
            prefix_len: LPM_HEADER_BITS + cidr_bits,
            data,
        }
    }

    /// The same key in the ingress key space ([`LPM_SPACE_INGRESS`]).
    #[must_use]
    pub const fn ingress(mut self) -> Self {
        self.data[2] = LPM_SPACE_INGRESS;
        self
    }
}

/// One allowed (port range, protocol) at a prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortEntry {
    /// First port (host order). 0..=65535 with `port_hi` 65535 means any port.
    pub port_lo: u16,
    /// Last port (host order), inclusive.
    pub port_hi: u16,
    /// IP protocol number, or [`PROTO_ANY`].
    pub proto: u8,
    /// [`kind::GATEWAY`] or [`kind::RULE`]; 0 marks an unused entry.
    pub kind: u8,
    /// Padding.
    pub _pad: u16,
    /// Rule index within the identity (for records); gateways use the gateway index.
    pub rule: u32,
}

/// Value of [`names::RULES`]: everything allowed at this prefix, including what enclosing prefixes
/// allow (the compiler merges ancestors into descendants, so the longest match is complete).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleVal {
    /// Entries; unused ones have `kind == 0`.
    pub entries: [PortEntry; MAX_PORT_ENTRIES],
}

/// One grant at a prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantEntry {
    /// Expiry on the `CLOCK_BOOTTIME` clock (ns), as `bpf_ktime_get_boot_ns` reads it.
    pub expires_ns: u64,
    /// Numeric task id assigned by the agent (0 = unused entry).
    pub task: u64,
    /// First port.
    pub port_lo: u16,
    /// Last port, inclusive.
    pub port_hi: u16,
    /// IP protocol number or [`PROTO_ANY`].
    pub proto: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

/// Value of [`names::GRANTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantVal {
    /// Entries; unused ones have `task == 0`.
    pub entries: [GrantEntry; MAX_GRANT_ENTRIES],
}

assert_size!(Config, 8);
assert_size!(IdentKey, 16);
assert_size!(IdentVal, 8);
assert_size!(CgCache, 32);
assert_size!(LpmKey, 28);
assert_size!(PortEntry, 12);
assert_size!(RuleVal, 12 * MAX_PORT_ENTRIES);
assert_size!(GrantEntry, 24);
assert_size!(GrantVal, 24 * MAX_GRANT_ENTRIES);
