//! Types shared by the Chokepoint eBPF programs and the userspace agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, made of fixed-width integers with explicit padding,
//! and checked for size at compile time, so the kernel and userspace agree byte for byte.
//! `aya::Pod` implementations live behind the `user` feature.
#![no_std]

/// Names of every pinned map and every program. Short, prefixed, at most 15 bytes.
pub mod names {
    /// Array[1] of [`crate::Config`]: active slot, generation and epoch.
    pub const CONFIG: &str = "CP_CONFIG";
    /// Hash of [`crate::IdentKey`] → [`crate::IdentVal`]: cgroup id (per slot) → identity.
    pub const IDENT: &str = "CP_IDENT";
    /// LPM trie of [`crate::LpmKey`] → [`crate::RuleVal`]: gateway endpoints and allow rules.
    pub const RULES: &str = "CP_RULES";
    /// LPM trie of [`crate::LpmKey`] → [`crate::GrantVal`]: task-scoped grants with expiry.
    pub const GRANTS: &str = "CP_GRANTS";
    /// Array of [`crate::CgCache`], direct-mapped by cgroup id (`id % CGCACHE_SIZE`): resolved
    /// identities, valid for one epoch. An array lookup is inlined by the verifier (no helper
    /// call, no hashing), which is what a socket of no identity pays on every hook.
    pub const CGCACHE: &str = "CP_CGSLOTS";
    /// Socket local storage of [`crate::SockTag`]: identity and cached verdict per socket.
    pub const SKTAG: &str = "CP_SKTAG";
    /// Ring buffer of [`crate::Event`]: flow decision records.
    pub const EVENTS: &str = "CP_EVENTS";
    /// Per-CPU array of u64 counters indexed by [`crate::stat_index`].
    pub const STATS: &str = "CP_STATS";
    /// LRU hash of [`crate::AttestKey`] → [`crate::AttestVal`]: live gateway connections of
    /// identities, keyed by the 4-tuple as the gateway sees it.
    pub const ATTEST: &str = "CP_ATTEST";
    /// LRU hash of [`crate::FlowKey`] → [`crate::AcceptVal`]: connections others are opening to
    /// a listener of an identity (SYN seen, child not yet established).
    pub const ACCEPT: &str = "CP_ACCEPT";
    /// LRU hash of [`crate::ReplyKey`] → [`crate::ReplyVal`]: UDP peers that sent first to a
    /// socket of an identity, with when they last did.
    pub const REPLY: &str = "CP_REPLY";
    /// Hash of [`crate::FqdnKey`] → [`crate::FqdnVal`]: addresses learned for `toFQDN` rules,
    /// per identity, with their expiry.
    pub const FQDN: &str = "CP_FQDN";
    /// Hash of identity id → [`crate::DnsProxy`]: where the identity's DNS is redirected.
    pub const DNSPX: &str = "CP_DNSPX";
    /// Array[1] of [`crate::DnsCfg`]: the DNS proxy's addresses.
    pub const DNSCFG: &str = "CP_DNSCFG";
    /// LRU hash of socket cookie → [`crate::DnsOrig`]: the resolver a redirected socket asked,
    /// restored as the source of the replies.
    pub const DNSORIG: &str = "CP_DNSORIG";
    /// Ring buffer of [`crate::DnsAnswer`]: DNS answers (UDP from port 53) an identity's socket
    /// received from a peer it may send to (its sanctioned resolver), for the inventory's host
    /// names.
    pub const DNSANS: &str = "CP_DNSANS";
    /// Per-CPU array[1] of u64: DNS answers not captured because [`DNSANS`] was full.
    pub const DNSLOST: &str = "CP_DNSLOST";

    /// `cgroup/sock_create` program.
    pub const PROG_SOCK_CREATE: &str = "cp_sock_create";
    /// `cgroup/connect4` program.
    pub const PROG_CONNECT4: &str = "cp_connect4";
    /// `cgroup/connect6` program.
    pub const PROG_CONNECT6: &str = "cp_connect6";
    /// `cgroup/sendmsg4` program.
    pub const PROG_SENDMSG4: &str = "cp_sendmsg4";
    /// `cgroup/sendmsg6` program.
    pub const PROG_SENDMSG6: &str = "cp_sendmsg6";
    /// `cgroup_skb/egress` program.
    pub const PROG_SKB_EGRESS: &str = "cp_skb_egress";
    /// TC egress classifier (tcx).
    pub const PROG_TC_EGRESS: &str = "cp_tc_egress";
    /// BPF LSM `socket_create` program.
    pub const PROG_LSM_SOCKET: &str = "cp_lsm_socket";
    /// `sockops` program (gateway connection attestation, accepted connections).
    pub const PROG_SOCK_OPS: &str = "cp_sock_ops";
    /// `cgroup_skb/ingress` program (who opens connections to identities, UDP peers).
    pub const PROG_SKB_INGRESS: &str = "cp_skb_ingress";
    /// `cgroup/setsockopt` program (options that would skip the TC backstop).
    pub const PROG_SETSOCKOPT: &str = "cp_setsockopt";

    /// `raw_tracepoint/sys_enter` program (32-bit syscalls that would skip `cgroup/setsockopt`).
    pub const PROG_COMPAT_SYS: &str = "cp_compat_sys";

    /// `cgroup/recvmsg4` program (DNS proxy replies).
    pub const PROG_RECVMSG4: &str = "cp_recvmsg4";
    /// `cgroup/getpeername4` program (DNS proxy peer).
    pub const PROG_GETPEER4: &str = "cp_getpeername4";

    /// Every program, in attach order.
    pub const PROGRAMS: [&str; 14] = [
        PROG_SOCK_CREATE,
        PROG_LSM_SOCKET,
        PROG_CONNECT4,
        PROG_CONNECT6,
        PROG_SENDMSG4,
        PROG_SENDMSG6,
        PROG_SKB_EGRESS,
        PROG_TC_EGRESS,
        PROG_SOCK_OPS,
        PROG_SKB_INGRESS,
        PROG_SETSOCKOPT,
        PROG_COMPAT_SYS,
        PROG_RECVMSG4,
        PROG_GETPEER4,
    ];
}

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

/// Verdicts carried in records and counters.
pub mod verdict {
    /// Allowed.
    pub const ALLOW: u8 = 1;
    /// Denied.
    pub const DENY: u8 = 2;
    /// Would have been denied; let through because the identity is in audit mode.
    pub const AUDIT: u8 = 3;
    /// Number of verdict codes (array bound).
    pub const COUNT: u8 = 4;
}

/// The reason-code table shared by the kernel, the metrics and the flow records. Codes are never
/// reused: a retired code stays reserved.
pub mod reason {
    /// No reason (unused slot).
    pub const NONE: u8 = 0;
    /// Destination is a gateway endpoint of the identity.
    pub const GATEWAY: u8 = 1;
    /// Destination is allowed by a rule.
    pub const RULE: u8 = 2;
    /// Destination is allowed by a task-scoped grant.
    pub const GRANT: u8 = 3;
    /// Destination is neither a gateway nor allowed.
    pub const NOT_GATEWAY: u8 = 4;
    /// DNS (port 53) to a resolver that is not allowed.
    pub const DNS_RESOLVER: u8 = 5;
    /// Raw, packet or other non-IP socket refused at creation.
    pub const RAW_SOCKET: u8 = 6;
    /// A previously allowed flow lost its permission (policy change or revoke).
    pub const REVOKED: u8 = 7;
    /// A previously allowed flow's grant expired.
    pub const EXPIRED: u8 = 8;
    /// Internal error on an enforced identity: failed closed.
    pub const INTERNAL: u8 = 9;
    /// Packet could not be parsed on an enforced identity: failed closed.
    pub const MALFORMED: u8 = 10;
    /// Loopback destination not allowed by a rule.
    pub const LOOPBACK: u8 = 11;
    /// Link-local destination (e.g. cloud metadata) not allowed by a rule.
    pub const LINK_LOCAL: u8 = 12;
    /// Traffic on a connection a peer opened to the identity (accepted TCP, UDP reply).
    pub const REPLY: u8 = 13;
    /// A peer outside `ingress.allowFrom` tried to open a connection to the identity.
    pub const INGRESS_DENIED: u8 = 14;
    /// Destination learned for a `toFQDN` rule from the identity's own DNS answers.
    pub const FQDN: u8 = 15;
    /// Number of reason codes (array bound).
    pub const COUNT: u8 = 16;

    /// Name of a reason code as it appears in records and metrics.
    pub const fn name(code: u8) -> &'static str {
        match code {
            GATEWAY => "gateway",
            RULE => "rule",
            GRANT => "grant",
            NOT_GATEWAY => "not_gateway",
            DNS_RESOLVER => "dns_resolver",
            RAW_SOCKET => "raw_socket",
            REVOKED => "revoked",
            EXPIRED => "expired",
            INTERNAL => "internal",
            MALFORMED => "malformed",
            LOOPBACK => "loopback",
            LINK_LOCAL => "link_local",
            REPLY => "reply",
            INGRESS_DENIED => "ingress_denied",
            FQDN => "fqdn",
            _ => "none",
        }
    }
}

/// Syscall numbers the compat syscall guard (`cp_compat_sys`) judges (x86-64 kernel).
pub mod compat {
    /// i386 `setsockopt` (`int 0x80`/`sysenter`).
    pub const I386_SETSOCKOPT: u64 = 366;
    /// i386 `socketcall`.
    pub const I386_SOCKETCALL: u64 = 102;
    /// `socketcall`'s `SYS_SETSOCKOPT` call.
    pub const SYS_SETSOCKOPT: u64 = 14;
    /// `io_uring_setup` (the same number on i386, x32 and x86-64).
    pub const IO_URING_SETUP: u64 = 425;
    /// The x32 ABI's bit in the syscall number.
    pub const X32_BIT: u64 = 0x4000_0000;
    /// x32 `setsockopt`.
    pub const X32_SETSOCKOPT: u64 = 541;
    /// The file descriptor of the daemon's start check (a compat `setsockopt` on it, with the
    /// install's token as the option pointer, asks that install's guard to kill the caller,
    /// proving the guard sees compat syscalls); never a valid fd.
    pub const SELFTEST_FD: i32 = -0x6370_6b74;
}

/// Hook codes carried in records.
pub mod hook {
    /// `cgroup/sock_create`.
    pub const SOCK_CREATE: u8 = 1;
    /// `cgroup/connect4`.
    pub const CONNECT4: u8 = 2;
    /// `cgroup/connect6`.
    pub const CONNECT6: u8 = 3;
    /// `cgroup/sendmsg4`.
    pub const SENDMSG4: u8 = 4;
    /// `cgroup/sendmsg6`.
    pub const SENDMSG6: u8 = 5;
    /// `cgroup_skb/egress`.
    pub const SKB: u8 = 6;
    /// TC egress (tcx).
    pub const TC: u8 = 7;
    /// LSM `socket_create`.
    pub const LSM_SOCKET: u8 = 8;
    /// `cgroup_skb/ingress`.
    pub const SKB_INGRESS: u8 = 9;
    /// `cgroup/setsockopt`.
    pub const SETSOCKOPT: u8 = 10;
    /// `raw_tracepoint/sys_enter` (the compat syscall guard).
    pub const COMPAT_SYSCALL: u8 = 11;

    /// Name of a hook code as it appears in records.
    pub const fn name(code: u8) -> &'static str {
        match code {
            SOCK_CREATE => "sock_create",
            CONNECT4 => "connect4",
            CONNECT6 => "connect6",
            SENDMSG4 => "sendmsg4",
            SENDMSG6 => "sendmsg6",
            SKB => "skb",
            TC => "tc",
            LSM_SOCKET => "lsm_socket_create",
            SKB_INGRESS => "skb_ingress",
            SETSOCKOPT => "setsockopt",
            COMPAT_SYSCALL => "compat_syscall",
            _ => "unknown",
        }
    }
}

/// Index of the (verdict, reason) decision counter in [`names::STATS`].
pub const fn stat_index(verdict: u8, reason: u8) -> u32 {
    (verdict as u32) * (reason::COUNT as u32) + (reason as u32)
}
/// Index of the "ring buffer reserve failed" counter in [`names::STATS`].
pub const STAT_LOST: u32 = stat_index(verdict::COUNT, 0);
/// Number of entries in [`names::STATS`].
pub const STATS_LEN: u32 = STAT_LOST + 1;

/// Kind of a destination entry.
pub mod kind {
    /// A gateway endpoint.
    pub const GATEWAY: u8 = 1;
    /// An allow rule.
    pub const RULE: u8 = 2;
    /// An `ingress.allowFrom` source (in the ingress key space of the rules trie).
    pub const INGRESS: u8 = 3;
}

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
        let mut i = 0;
        while i < 16 {
            data[8 + i] = addr[i];
            i += 1;
        }
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

/// Socket local storage ([`names::SKTAG`]): who owns the socket and the cached verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockTag {
    /// cgroup id the socket was created in.
    pub cgroup_id: u64,
    /// Task id of the grant behind the cached verdict, 0 when none.
    pub task: u64,
    /// Grant expiry behind the cached verdict (boot ns), 0 when not a grant.
    pub grant_expires_ns: u64,
    /// pid/tgid of the creator (`bpf_get_current_pid_tgid`).
    pub pid_tgid: u64,
    /// uid/gid of the creator.
    pub uid_gid: u64,
    /// Cached destination address (IPv4 in the first 4 bytes).
    pub daddr: [u8; 16],
    /// Creator's command name.
    pub comm: [u8; 16],
    /// Epoch of `ident`/`mode`.
    pub ident_epoch: u32,
    /// Identity id, 0 for none.
    pub ident: u32,
    /// Epoch of the cached verdict; 0 means no verdict.
    pub verdict_epoch: u32,
    /// Rule index of the cached verdict.
    pub rule: u32,
    /// Cached destination port (host order).
    pub dport: u16,
    /// Identity mode.
    pub mode: u8,
    /// Cached verdict.
    pub verdict: u8,
    /// Cached reason.
    pub reason: u8,
    /// Cached protocol.
    pub proto: u8,
    /// Cached family (4 or 6).
    pub family: u8,
    /// Set once the socket has been tagged by `sock_create`.
    pub tagged: u8,
    /// 1 for a TCP socket accepted from a listener of an identity (set by `sockops` when the
    /// child is established, cleared by any connect): its traffic is a reply.
    pub passive: u8,
    /// Padding.
    pub _pad: [u8; 6],
}

/// A flow decision record as written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns` at the decision.
    pub time_ns: u64,
    /// Socket cookie (0 when unavailable).
    pub cookie: u64,
    /// cgroup id of the socket or task.
    pub cgroup_id: u64,
    /// pid (upper 32 bits: tgid) as `bpf_get_current_pid_tgid` returns it.
    pub pid_tgid: u64,
    /// uid (lower 32 bits) and gid.
    pub uid_gid: u64,
    /// Task id of the grant, 0 when none.
    pub task: u64,
    /// Source address (IPv4 in the first 4 bytes; zero when unknown).
    pub saddr: [u8; 16],
    /// Destination address.
    pub daddr: [u8; 16],
    /// Command name.
    pub comm: [u8; 16],
    /// Identity id.
    pub ident: u32,
    /// Policy generation the decision was made under.
    pub generation: u32,
    /// Rule index (or gateway index) behind an allow.
    pub rule: u32,
    /// Source port (host order).
    pub sport: u16,
    /// Destination port (host order).
    pub dport: u16,
    /// 4 or 6 (0 for non-IP sockets).
    pub family: u8,
    /// IP protocol number; for socket creation the socket type is in `sock_type`.
    pub proto: u8,
    /// [`verdict`] code.
    pub verdict: u8,
    /// [`reason`] code.
    pub reason: u8,
    /// [`hook`] code.
    pub hook: u8,
    /// Socket type for socket-creation records (SOCK_RAW = 3, …), else 0.
    pub sock_type: u8,
    /// Address family number for socket-creation records (AF_PACKET = 17, …), else 0.
    pub sock_family: u8,
    /// Identity mode.
    pub mode: u8,
}

/// Key of [`names::ATTEST`]: a TCP connection as the gateway sees it. `peer` is the client (the
/// agent's socket), `local` the gateway endpoint. IPv4 (also IPv4-mapped) in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AttestKey {
    /// 4 or 6.
    pub family: u8,
    /// Padding.
    pub _pad: u8,
    /// Client port (host order).
    pub peer_port: u16,
    /// Gateway port (host order).
    pub local_port: u16,
    /// Padding.
    pub _pad2: u16,
    /// Client address.
    pub peer_addr: [u8; 16],
    /// Gateway address.
    pub local_addr: [u8; 16],
}

/// Value of [`names::ATTEST`]: who is behind the connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttestVal {
    /// Establishment time (boot ns).
    pub since_ns: u64,
    /// Socket cookie.
    pub cookie: u64,
    /// cgroup id of the socket.
    pub cgroup_id: u64,
    /// pid/tgid of the socket's creator.
    pub pid_tgid: u64,
    /// Task id of the grant behind the connection, 0 when none.
    pub task: u64,
    /// Identity id.
    pub ident: u32,
    /// Policy generation the connection was allowed under.
    pub generation: u32,
}

/// Key of [`names::ACCEPT`]: a TCP connection a peer is opening to an identity's listener.
/// IPv4 (also IPv4-mapped) in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// 4 or 6.
    pub family: u8,
    /// Padding.
    pub _pad: u8,
    /// The peer's port (host order).
    pub peer_port: u16,
    /// The identity's (listening) port (host order).
    pub local_port: u16,
    /// Padding.
    pub _pad2: u16,
    /// The peer's address.
    pub peer_addr: [u8; 16],
    /// The identity's address.
    pub local_addr: [u8; 16],
}

/// Value of [`names::ACCEPT`]: who listens.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptVal {
    /// When the SYN was seen (boot ns).
    pub seen_ns: u64,
    /// cgroup id of the listener.
    pub cgroup_id: u64,
    /// pid/tgid of the listener's creator.
    pub pid_tgid: u64,
    /// uid/gid of the listener's creator.
    pub uid_gid: u64,
    /// The listener creator's command name.
    pub comm: [u8; 16],
    /// Identity id.
    pub ident: u32,
    /// Identity mode.
    pub mode: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

/// Key of [`names::REPLY`]: a UDP peer of one socket. IPv4 in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReplyKey {
    /// Socket cookie of the identity's socket.
    pub cookie: u64,
    /// The peer's address.
    pub addr: [u8; 16],
    /// The peer's port (host order).
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number.
    pub proto: u8,
    /// Padding.
    pub _pad: u32,
}

/// Value of [`names::REPLY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyVal {
    /// When the peer last sent to the socket (boot ns).
    pub seen_ns: u64,
    /// Epoch `ingress.allowFrom` was last checked under.
    pub epoch: u32,
    /// 1 once the reply flow has been recorded.
    pub recorded: u8,
    /// Padding.
    pub _pad: [u8; 3],
}

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

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
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
assert_size!(SockTag, 104);
assert_size!(Event, 120);
assert_size!(AttestKey, 40);
assert_size!(AttestVal, 48);
assert_size!(FlowKey, 40);
assert_size!(AcceptVal, 56);
assert_size!(ReplyKey, 32);
assert_size!(ReplyVal, 16);
assert_size!(FqdnKey, 24);
assert_size!(FqdnEntry, 24);
assert_size!(FqdnVal, 24 * MAX_FQDN_ENTRIES);
assert_size!(DnsProxy, 8);
assert_size!(DnsCfg, 16);
assert_size!(DnsOrig, 16);

#[cfg(feature = "user")]
mod pod {
    use super::{
        AcceptVal, AttestKey, AttestVal, CgCache, Config, DnsCfg, DnsOrig, DnsProxy, Event,
        FlowKey, FqdnEntry, FqdnKey, FqdnVal, GrantEntry, GrantVal, IdentKey, IdentVal, PortEntry,
        ReplyKey, ReplyVal, RuleVal, SockTag,
    };
    /// `aya::Pod` for plain kernel-shared types.
    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: a #[repr(C)] struct of integers with explicit padding fields: every bit
            // pattern is a valid value and no byte is left uninitialised.
            unsafe impl aya::Pod for $t {}
        )*};
    }
    pod!(
        Config, IdentKey, IdentVal, CgCache, PortEntry, RuleVal, GrantEntry, GrantVal, SockTag,
        Event, AttestKey, AttestVal, FlowKey, AcceptVal, ReplyKey, ReplyVal, FqdnKey, FqdnEntry,
        FqdnVal, DnsProxy, DnsCfg, DnsOrig,
    );
}
