//! The one policy decision every hook calls, identity resolution, the socket tag, and records.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_SK_STORAGE_GET_F_CREATE,
    },
    helpers::generated::bpf_sk_storage_get,
};
use chokepoint_common::{
    CgCache, Config, EVENTS_BYTES, Event, IdentKey, LPM_DATA_LEN, LPM_HEADER_BITS,
    MAX_CGROUP_DEPTH, MAX_GRANT_ENTRIES, MAX_PORT_ENTRIES, MODE_AUDIT, MODE_NONE, PROTO_ANY,
    STAT_LOST, SockTag, kind, reason, stat_index, verdict,
};

use crate::{
    helpers::now_ns,
    maps::{CP_CGSLOTS, CP_CONFIG, CP_EVENTS, CP_GRANTS, CP_IDENT, CP_RULES, CP_SKTAG, CP_STATS},
};

/// A destination as a hook sees it.
#[derive(Clone, Copy)]
pub(crate) struct Dest {
    /// 4 or 6 (after IPv4-mapped IPv6 normalisation).
    pub(crate) family: u8,
    /// IP protocol number.
    pub(crate) proto: u8,
    /// Destination port, host order (0 when the protocol has none).
    pub(crate) port: u16,
    /// Address; IPv4 in the first four bytes.
    pub(crate) addr: [u8; 16],
}

impl Dest {
    /// Normalises `::ffff:a.b.c.d` to IPv4.
    #[inline(always)]
    pub(crate) fn normalise(&mut self) {
        if self.family == 6 {
            let a = &self.addr;
            let mapped = a[0] == 0
                && a[1] == 0
                && a[2] == 0
                && a[3] == 0
                && a[4] == 0
                && a[5] == 0
                && a[6] == 0
                && a[7] == 0
                && a[8] == 0
                && a[9] == 0
                && a[10] == 0xff
                && a[11] == 0xff;
            if mapped {
                let v4 = [a[12], a[13], a[14], a[15]];
                self.addr = [0; 16];
                self.addr[0] = v4[0];
                self.addr[1] = v4[1];
                self.addr[2] = v4[2];
                self.addr[3] = v4[3];
                self.family = 4;
            }
        }
    }
}

/// Result of a decision.
#[derive(Clone, Copy)]
pub(crate) struct Decision {
    /// `chokepoint_common::verdict` code.
    pub(crate) verdict: u8,
    /// `chokepoint_common::reason` code.
    pub(crate) reason: u8,
    /// The allow rule that matched (0 for none).
    pub(crate) rule: u32,
    /// The grant's task (0 unless a grant allowed it).
    pub(crate) task: u64,
    /// The grant's expiry on the boot clock (0 unless a grant allowed it).
    pub(crate) expires_ns: u64,
}

/// Identity of a socket or task.
#[derive(Clone, Copy)]
pub(crate) struct Ident {
    /// The identity (0: none, the task is not enforced).
    pub(crate) ident: u32,
    /// `MODE_*` of the identity.
    pub(crate) mode: u8,
}

impl Ident {
    /// Not an identity of the policy.
    pub(crate) const NONE: Ident = Ident {
        ident: 0,
        mode: MODE_NONE,
    };
}

/// Reads the configuration word once; every lookup of one decision uses this copy, so a decision
/// sees one generation whole.
#[inline(always)]
pub(crate) fn config() -> Option<Config> {
    CP_CONFIG.get(0).copied()
}

/// Resolves the identity of a cgroup: the cache first, then a walk over the cgroup's ancestors.
/// `ancestor(level)` returns the id of the ancestor at `level` (0 past the cgroup's depth).
#[inline(always)]
pub(crate) fn resolve<F: Fn(i32) -> u64>(cfg: &Config, cgroup_id: u64, ancestor: F) -> Ident {
    let epoch = cfg.epoch();
    let cache = CP_CGSLOTS.get_ptr_mut(CgCache::slot(cgroup_id));
    if let Some(c) = cache {
        // SAFETY: `get_ptr_mut` answered a pointer into the array's value for this index, which
        // the verifier has bounds-checked; two CPUs writing one slot at once is caught by the
        // slot's checksum (`CgCache::hit`).
        let c = unsafe { &*c };
        if c.hit(cgroup_id, epoch) {
            return Ident {
                ident: c.ident,
                mode: c.mode,
            };
        }
    }
    let slot = cfg.slot();
    let mut found = Ident::NONE;
    let mut level: i32 = 1;
    while level <= MAX_CGROUP_DEPTH as i32 {
        let id = ancestor(level);
        if id == 0 {
            break;
        }
        let key = IdentKey {
            cgroup_id: id,
            slot,
            _pad: 0,
        };
        // SAFETY: the value is plain integers, read at once; the daemon writes identities only
        // into the slot no live generation reads, then flips the config word.
        if let Some(v) = unsafe { CP_IDENT.get(key) } {
            found = Ident {
                ident: v.ident,
                mode: v.mode,
            };
            break;
        }
        level += 1;
    }
    if let Some(c) = cache {
        // SAFETY: the same verifier-checked pointer into the array as above; a concurrent write
        // of the slot by another CPU fails the checksum and is resolved afresh.
        unsafe { *c = CgCache::new(cgroup_id, epoch, found.ident, found.mode) };
    }
    found
}

#[inline(always)]
fn lpm_key(slot: u8, d: &Dest, ident: u32) -> aya_ebpf::maps::lpm_trie::Key<[u8; LPM_DATA_LEN]> {
    let id = ident.to_be_bytes();
    let mut data = [0u8; LPM_DATA_LEN];
    data[0] = slot;
    data[1] = d.family;
    data[4] = id[0];
    data[5] = id[1];
    data[6] = id[2];
    data[7] = id[3];
    data[8..24].copy_from_slice(&d.addr);
    let bits = if d.family == 4 { 32 } else { 128 };
    aya_ebpf::maps::lpm_trie::Key::new(LPM_HEADER_BITS + bits, data)
}

#[inline(always)]
fn proto_matches(entry_proto: u8, proto: u8) -> bool {
    entry_proto == PROTO_ANY || entry_proto == proto
}

/// Why a destination is denied, most specific first.
#[inline(always)]
fn deny_reason(d: &Dest) -> u8 {
    let a = &d.addr;
    if d.port == 53 && (d.proto == 6 || d.proto == 17) {
        return reason::DNS_RESOLVER;
    }
    if d.family == 4 {
        if a[0] == 127 {
            return reason::LOOPBACK;
        }
        if a[0] == 169 && a[1] == 254 {
            return reason::LINK_LOCAL;
        }
    } else {
        let mut lo = a[15] == 1;
        let mut i = 0;
        while i < 15 {
            if a[i] != 0 {
                lo = false;
            }
            i += 1;
        }
        if lo {
            return reason::LOOPBACK;
        }
        if a[0] == 0xfe && (a[1] & 0xc0) == 0x80 {
            return reason::LINK_LOCAL;
        }
    }
    reason::NOT_GATEWAY
}

/// The policy decision: gateway endpoint, allow rule, grant, or deny. Audit mode turns a deny
/// into `audit`.
#[inline(always)]
pub(crate) fn decide(cfg: &Config, id: &Ident, d: &Dest) -> Decision {
    let slot = cfg.slot() as u8;
    let key = lpm_key(slot, d, id.ident);
    if let Some(v) = CP_RULES.get(&key) {
        let mut i = 0;
        while i < MAX_PORT_ENTRIES {
            let e = &v.entries[i];
            if e.kind == 0 {
                break;
            }
            if proto_matches(e.proto, d.proto) && d.port >= e.port_lo && d.port <= e.port_hi {
                return Decision {
                    verdict: verdict::ALLOW,
                    reason: if e.kind == kind::GATEWAY {
                        reason::GATEWAY
                    } else {
                        reason::RULE
                    },
                    rule: e.rule,
                    task: 0,
                    expires_ns: 0,
                };
            }
            i += 1;
        }
    }
    let gkey = lpm_key(0, d, id.ident);
    if let Some(g) = CP_GRANTS.get(&gkey) {
        let now = now_ns();
        let mut i = 0;
        while i < MAX_GRANT_ENTRIES {
            let e = &g.entries[i];
            if e.task != 0
                && e.expires_ns > now
                && proto_matches(e.proto, d.proto)
                && d.port >= e.port_lo
                && d.port <= e.port_hi
            {
                return Decision {
                    verdict: verdict::ALLOW,
                    reason: reason::GRANT,
                    rule: 0,
                    task: e.task,
                    expires_ns: e.expires_ns,
                };
            }
            i += 1;
        }
    }
    if let Some(dec) = crate::fqdn::allow(id, d) {
        return dec;
    }
    denied(id, deny_reason(d))
}

/// A deny for `id` with `why`, or `audit` when the identity is in audit mode.
#[inline(always)]
pub(crate) fn denied(id: &Ident, why: u8) -> Decision {
    Decision {
        verdict: if id.mode == MODE_AUDIT {
            verdict::AUDIT
        } else {
            verdict::DENY
        },
        reason: why,
        rule: 0,
        task: 0,
        expires_ns: 0,
    }
}

/// Gets (optionally creating) the socket tag of `sk` (a `struct bpf_sock *`-compatible pointer).
#[inline(always)]
pub(crate) fn sock_tag(sk: *mut c_void, create: bool) -> *mut SockTag {
    let flags = if create {
        u64::from(BPF_SK_STORAGE_GET_F_CREATE)
    } else {
        0
    };
    let map = ptr::from_ref(&CP_SKTAG).cast_mut().cast::<c_void>();
    // SAFETY: `map` is the socket-storage map this object defines and `sk` a socket pointer the
    // hook got from the kernel (the verifier refuses any other pointer type); no initial value
    // is passed, so the helper zero-fills a created entry.
    unsafe { bpf_sk_storage_get(map, sk, ptr::null_mut(), flags) }.cast::<SockTag>()
}

/// Build variant of this object, only in test builds: `CHOKEPOINT_BUILD_VARIANT` set at build time
/// (xtask's variant build for the upgrade test). It is counted with every record in an otherwise
/// unused counter slot (verdict 0), which makes objects of different variants differ in their
/// instructions. Without it (every ordinary and release build) there is no such instruction.
const BUILD_VARIANT: Option<u8> = match option_env!("CHOKEPOINT_BUILD_VARIANT") {
    Some(v) if !v.is_empty() => Some(v.as_bytes()[0].wrapping_sub(b'0') % reason::COUNT),
    _ => None,
};

/// Counts one decision.
#[inline(always)]
fn count(index: u32) {
    if let Some(p) = CP_STATS.get_ptr_mut(index) {
        // SAFETY: a verifier-checked pointer to this CPU's counter; a program runs to completion
        // on its CPU, so no other writer touches it meanwhile.
        unsafe { *p += 1 };
    }
}

/// Pending bytes in the ring at which a record wakes the consumer whatever its verdict: 1/8 and
/// 1/2 of the ring.
const WAKE_AT: [u64; 2] = [EVENTS_BYTES as u64 / 8, EVENTS_BYTES as u64 / 2];
/// Width of the band above a [`WAKE_AT`] mark in which a record wakes (a few records, so
/// concurrent producers cannot all step over it).
const WAKE_BAND: u64 = 1024;

/// How a record notifies the consumer. A denial or audit wakes it when it had caught up
/// (adaptive: alerts are prompt). An allowed flow does not (the consumer also drains on its own
/// 10-100 ms timer): a wakeup is an irq_work self-interrupt on the CPU of the connecting task,
/// which on a VM is an exit, and it was a large part of the allowed connect's cost. A record
/// that brings the pending bytes into a [`WAKE_AT`] band wakes it whatever the verdict, so a
/// burst is drained long before the ring is full (edge-triggered: a wakeup per record above
/// the mark would cost every record an interrupt).
#[inline(always)]
fn wakeup_flags(verdict_code: u8) -> u64 {
    let pending = CP_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    if (pending >= WAKE_AT[0] && pending < WAKE_AT[0] + WAKE_BAND)
        || (pending >= WAKE_AT[1] && pending < WAKE_AT[1] + WAKE_BAND)
    {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else if verdict_code == verdict::DENY || verdict_code == verdict::AUDIT {
        0
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Counts a decision and writes its record straight into the ring buffer (no copy on the BPF
/// stack): the slot is zeroed, `verdict`/`reason` set, then `fill` writes the rest. A failed
/// reserve is counted, never silent.
#[inline(always)]
pub(crate) fn record<F: FnOnce(&mut Event)>(verdict_code: u8, reason_code: u8, fill: F) {
    count(stat_index(verdict_code, reason_code));
    if let Some(v) = BUILD_VARIANT {
        count(stat_index(0, v));
    }
    match CP_EVENTS.reserve::<Event>(0) {
        Some(mut slot) => {
            let p = slot.as_mut_ptr();
            // SAFETY: `p` is the reserved ring slot, sized and aligned for one `Event` and ours
            // alone until submitted; zeroing it first makes every field initialised.
            unsafe { ptr::write_bytes(p, 0, 1) };
            // SAFETY: the same slot, now fully initialised and still exclusively ours.
            let ev = unsafe { &mut *p };
            ev.time_ns = now_ns();
            ev.verdict = verdict_code;
            ev.reason = reason_code;
            fill(ev);
            slot.submit(wakeup_flags(verdict_code));
        }
        None => count(STAT_LOST),
    }
}

/// True when the cached verdict in `tag` covers `d` under the current epoch.
#[inline(always)]
pub(crate) fn cache_covers(tag: &SockTag, epoch: u32, d: &Dest, port_known: bool) -> bool {
    tag.verdict_epoch == epoch
        && tag.family == d.family
        && tag.proto == d.proto
        && (!port_known || tag.dport == d.port)
        && tag.daddr == d.addr
}

/// True when `tag` holds an allowed verdict for the same destination (any epoch): a re-decision
/// that now denies is a revocation, and one that still allows is the same flow.
#[inline(always)]
pub(crate) fn same_flow_was_allowed(tag: &SockTag, d: &Dest) -> bool {
    tag.verdict_epoch != 0
        && tag.verdict != verdict::DENY
        && tag.family == d.family
        && tag.proto == d.proto
        && tag.dport == d.port
        && tag.daddr == d.addr
}

/// Stores a decision in the socket's cache.
#[inline(always)]
pub(crate) fn cache_store(tag: &mut SockTag, epoch: u32, d: &Dest, dec: &Decision) {
    tag.verdict_epoch = epoch;
    tag.family = d.family;
    tag.proto = d.proto;
    tag.dport = d.port;
    tag.daddr = d.addr;
    tag.verdict = dec.verdict;
    tag.reason = dec.reason;
    tag.rule = dec.rule;
    tag.task = dec.task;
    tag.grant_expires_ns = dec.expires_ns;
}

/// True for protocols whose header starts with 16-bit source and destination ports
/// (TCP, UDP, SCTP, UDP-Lite).
#[inline(always)]
pub(crate) fn has_ports(proto: u8) -> bool {
    proto == 6 || proto == 17 || proto == 132 || proto == 136
}
