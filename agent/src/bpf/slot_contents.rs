//! What a policy slot holds, computed from a compiled generation: the identity map's and the
//! rules map's entries, and the difference between two generations' rules (what an apply
//! writes into a slot that held the older one).

use std::{
    cmp::Ordering,
    collections::{HashMap, HashSet},
};

use aya::maps::lpm_trie::Key;
use chokepoint_common::{
    IdentKey, IdentVal, LPM_DATA_LEN, LpmKey, PROTO_ANY, PortEntry, RuleVal, kind,
};

use super::maps::{IdentBinding, lpm};
use crate::policy::{CompiledPolicy, compile::CompiledIdentity, parse::Cidr};

/// The identity map's keys and values of `bindings` in `slot`.
pub(super) fn ident_entries(
    slot: u32,
    bindings: &[IdentBinding],
) -> (Vec<IdentKey>, Vec<IdentVal>) {
    bindings
        .iter()
        .map(|b| {
            (
                IdentKey {
                    cgroup_id: b.cgroup_id,
                    slot,
                    _pad: 0,
                },
                IdentVal {
                    ident: b.ident,
                    mode: b.mode,
                    _pad: [0; 3],
                },
            )
        })
        .unzip()
}

/// A rules-map value of a generation, by reference into its compiled policy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotVal<'a> {
    /// What the identity may reach at a destination prefix.
    Entries(&'a [PortEntry]),
    /// An `ingress.allowFrom` prefix (or the any-peer default), with its index.
    Ingress(u32),
}

impl SlotVal<'_> {
    pub(super) fn rule_val(self) -> RuleVal {
        let mut v = RuleVal::default();
        match self {
            SlotVal::Entries(entries) => {
                for (slot, e) in v.entries.iter_mut().zip(entries) {
                    *slot = *e;
                }
            }
            SlotVal::Ingress(i) => {
                v.entries[0] = PortEntry {
                    port_lo: 0,
                    port_hi: u16::MAX,
                    proto: PROTO_ANY,
                    kind: kind::INGRESS,
                    _pad: 0,
                    rule: i,
                };
            }
        }
        v
    }
}

/// Every rules-map entry of `policy` in `slot`: each identity's destination prefixes, then its
/// ingress prefixes.
pub(super) fn slot_rules(
    slot: u32,
    policy: &CompiledPolicy,
) -> impl Iterator<Item = (Key<[u8; LPM_DATA_LEN]>, SlotVal<'_>)> {
    policy.identities.iter().flat_map(move |id| {
        let egress = id
            .entries
            .iter()
            .map(move |(cidr, entries)| (lpm(slot as u8, id.id, cidr), SlotVal::Entries(entries)));
        let ingress = id
            .ingress_prefixes()
            .into_iter()
            .enumerate()
            .map(move |(i, cidr)| (ingress_key(slot, id.id, &cidr), SlotVal::Ingress(i as u32)));
        egress.chain(ingress)
    })
}

/// What turns a slot holding one generation's rules into another's.
pub(super) struct RulesDiff {
    /// Keys to write, with [`RulesDiff::vals`].
    pub put: Vec<Key<[u8; LPM_DATA_LEN]>>,
    /// The values of [`RulesDiff::put`].
    pub vals: Vec<RuleVal>,
    /// Keys to remove (before the writes: a key in both ends up written).
    pub stale: Vec<Key<[u8; LPM_DATA_LEN]>>,
}

/// What turns a slot holding `old`'s rules into `new`'s: the keys to write with their values,
/// and the keys to remove. Each identity's prefixes are walked in order beside the same
/// identity's prefixes of `old` (a merge, no lookups).
pub(super) fn rules_diff(slot: u32, old: &CompiledPolicy, new: &CompiledPolicy) -> RulesDiff {
    let (mut put, mut vals, mut stale) = (Vec::new(), Vec::new(), Vec::new());
    let olds: HashMap<u32, &CompiledIdentity> = old.identities.iter().map(|i| (i.id, i)).collect();
    let mut seen = HashSet::new();
    for id in &new.identities {
        seen.insert(id.id);
        let key = |c: &Cidr| lpm(slot as u8, id.id, c);
        let Some(was) = olds.get(&id.id) else {
            for (c, e) in &id.entries {
                put.push(key(c));
                vals.push(SlotVal::Entries(e).rule_val());
            }
            for (i, c) in id.ingress_prefixes().iter().enumerate() {
                put.push(ingress_key(slot, id.id, c));
                vals.push(SlotVal::Ingress(i as u32).rule_val());
            }
            continue;
        };
        let (mut a, mut b) = (was.entries.iter().peekable(), id.entries.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some((c, _)), None) => {
                    stale.push(key(c));
                    a.next();
                }
                (None, Some((c, e))) => {
                    put.push(key(c));
                    vals.push(SlotVal::Entries(e).rule_val());
                    b.next();
                }
                (Some((ca, ea)), Some((cb, eb))) => match ca.cmp(cb) {
                    Ordering::Less => {
                        stale.push(key(ca));
                        a.next();
                    }
                    Ordering::Greater => {
                        put.push(key(cb));
                        vals.push(SlotVal::Entries(eb).rule_val());
                        b.next();
                    }
                    Ordering::Equal => {
                        if ea != eb {
                            put.push(key(cb));
                            vals.push(SlotVal::Entries(eb).rule_val());
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
        let (was_in, now_in) = (was.ingress_prefixes(), id.ingress_prefixes());
        if was_in != now_in {
            stale.extend(was_in.iter().map(|c| ingress_key(slot, id.id, c)));
            for (i, c) in now_in.iter().enumerate() {
                put.push(ingress_key(slot, id.id, c));
                vals.push(SlotVal::Ingress(i as u32).rule_val());
            }
        }
    }
    for was in old.identities.iter().filter(|i| !seen.contains(&i.id)) {
        stale.extend(was.entries.keys().map(|c| lpm(slot as u8, was.id, c)));
        stale.extend(
            was.ingress_prefixes()
                .iter()
                .map(|c| ingress_key(slot, was.id, c)),
        );
    }
    // Removals are written before the new values (`patch_slot`): a key in both ends up written.
    RulesDiff { put, vals, stale }
}

fn ingress_key(slot: u32, ident: u32, cidr: &Cidr) -> Key<[u8; LPM_DATA_LEN]> {
    let k = LpmKey::new(
        slot as u8,
        cidr.family(),
        ident,
        &cidr.bytes(),
        u32::from(cidr.bits),
    )
    .ingress();
    Key::new(k.prefix_len, k.data)
}

#[cfg(test)]
mod tests;
