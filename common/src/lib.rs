//! Types shared by the Chokepoint eBPF programs and the userspace agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, made of fixed-width integers with explicit padding,
//! and checked for size at compile time, so the kernel and userspace agree byte for byte.
//! `aya::Pod` implementations live behind the `user` feature.
#![no_std]

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}

mod conn;
mod dns;
mod limits;
mod policy;
mod sock;

pub mod compat;
pub mod hook;
pub mod kind;
pub mod names;
pub mod reason;
pub mod verdict;

pub use conn::{AcceptVal, AttestVal, FlowKey, ReplyKey, ReplyVal};
pub use dns::{
    DNSANS_BYTES, DNSANS_DATA, DnsAnswer, DnsCfg, DnsOrig, DnsProxy, FqdnEntry, FqdnKey, FqdnVal,
};
pub use limits::{
    ACCEPT_SIZE, ATTEST_SIZE, CGCACHE_SIZE, DNSORIG_SIZE, EVENTS_BYTES, LAYOUT_VERSION,
    MAX_CGROUP_DEPTH, MAX_DNSPX, MAX_FQDN, MAX_FQDN_ENTRIES, MAX_GRANT_ENTRIES, MAX_GRANTS,
    MAX_IDENT_CGROUPS, MAX_PORT_ENTRIES, MAX_RULES, MODE_AUDIT, MODE_ENFORCE, MODE_NONE, PROTO_ANY,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, REPLY_SIZE, REPLY_WINDOW_NS, STAT_LOST,
    STATS_LEN, stat_index,
};
pub use policy::{
    CgCache, Config, GrantEntry, GrantVal, IdentKey, IdentVal, LPM_DATA_LEN, LPM_HEADER_BITS,
    LPM_SPACE_EGRESS, LPM_SPACE_INGRESS, LpmKey, PortEntry, RuleVal,
};
pub use sock::{Event, SockTag};

#[cfg(feature = "user")]
mod pod {
    use super::{
        AcceptVal, AttestVal, CgCache, Config, DnsCfg, DnsOrig, DnsProxy, Event, FlowKey,
        FqdnEntry, FqdnKey, FqdnVal, GrantEntry, GrantVal, IdentKey, IdentVal, PortEntry, ReplyKey,
        ReplyVal, RuleVal, SockTag,
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
        Event, AttestVal, FlowKey, AcceptVal, ReplyKey, ReplyVal, FqdnKey, FqdnEntry, FqdnVal,
        DnsProxy, DnsCfg, DnsOrig,
    );
}
