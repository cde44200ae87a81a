//! The one policy decision every hook calls: the destination and identity types, and the lookup
//! of rules, grants and FQDN allows that turns them into a verdict.

use aya_ebpf::maps::lpm_trie::Key;
use chokepoint_common::{
    Config, LPM_DATA_LEN, LPM_SPACE_EGRESS, LPM_SPACE_INGRESS, LpmKey, MAX_GRANT_ENTRIES,
    MAX_PORT_ENTRIES, MODE_AUDIT, MODE_NONE, PROTO_ANY, kind, reason, verdict,
};

use crate::{
    helpers::now_ns,
    maps::{CP_GRANTS, CP_RULES},
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

/// The trie key that looks `addr` up for `ident` in key space `space` (`LPM_SPACE_*`) of
/// generation slot `slot`: a full-length prefix, so the trie answers the longest prefix that
/// contains the address. Built by [`LpmKey::new`], the layout userspace writes rules and grants
/// with, so the two cannot drift.
#[inline(always)]
pub(crate) fn lpm_key(
    slot: u8,
    space: u8,
    family: u8,
    addr: &[u8; 16],
    ident: u32,
) -> Key<[u8; LPM_DATA_LEN]> {
    let bits = if family == 4 { 32 } else { 128 };
    let key = LpmKey::new(slot, family, ident, addr, bits);
    let key = if space == LPM_SPACE_INGRESS {
        key.ingress()
    } else {
        key
    };
    Key::new(key.prefix_len, key.data)
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
    let key = lpm_key(slot, LPM_SPACE_EGRESS, d.family, &d.addr, id.ident);
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
    let gkey = lpm_key(0, LPM_SPACE_EGRESS, d.family, &d.addr, id.ident);
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

/// True for protocols whose header starts with 16-bit source and destination ports
/// (TCP, UDP, SCTP, UDP-Lite).
#[inline(always)]
pub(crate) fn has_ports(proto: u8) -> bool {
    proto == 6 || proto == 17 || proto == 132 || proto == 136
}
