//! Destination address sets: every prefix with everything allowed there, ancestors merged in.

use std::collections::{BTreeMap, BTreeSet};

use chokepoint_common::{MAX_PORT_ENTRIES, PortEntry};

use super::parse::{Cidr, PortSpec};

/// What one rule or gateway endpoint allows at a prefix: ports, entry kind, rule index.
pub(super) type RawEntries = BTreeMap<Cidr, BTreeSet<(PortSpec, u8, u32)>>;

/// Adds to every prefix the entries of every enclosing prefix, so the kernel's longest-prefix
/// match alone finds everything allowed for an address.
pub(super) fn merge_ancestors(raw: &RawEntries) -> BTreeMap<Cidr, Vec<PortEntry>> {
    let lengths: BTreeSet<(u8, u8)> = raw.keys().map(|c| (c.family(), c.bits)).collect();
    raw.iter()
        .map(|(cidr, own)| {
            let mut all: Vec<(PortSpec, u8, u32)> = own.iter().copied().collect();
            for &(fam, bits) in &lengths {
                if fam != cidr.family() || bits >= cidr.bits {
                    continue;
                }
                if let Some(parent) = raw.get(&cidr.truncate(bits)) {
                    all.extend(parent.iter().copied());
                }
            }
            // Gateways first, then rules; within each by port. Sorting by (kind, rule, port)
            // makes equal entries adjacent, so the dedup by (port, kind) also drops them.
            all.sort_unstable_by_key(|(p, k, r)| (*k, *r, *p));
            all.dedup_by_key(|(p, k, _)| (*p, *k));
            let entries = all
                .into_iter()
                .map(|(p, k, r)| PortEntry {
                    port_lo: p.lo,
                    port_hi: p.hi,
                    proto: p.proto,
                    kind: k,
                    _pad: 0,
                    rule: r,
                })
                .collect();
            (*cidr, entries)
        })
        .collect()
}

/// The entries kept for the kernel: at most [`MAX_PORT_ENTRIES`] per prefix (more is reported
/// as a problem before this).
pub(super) fn capped(
    mut entries: BTreeMap<Cidr, Vec<PortEntry>>,
) -> BTreeMap<Cidr, Vec<PortEntry>> {
    for v in entries.values_mut() {
        v.truncate(MAX_PORT_ENTRIES);
    }
    entries
}
