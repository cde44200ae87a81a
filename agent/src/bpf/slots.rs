//! Policy slots: a generation is built in the inactive slot of the identity and rules maps (batch
//! writes, off to the side), then enforced by one write of the configuration word; the retired
//! slot is emptied after the switch, off the apply's critical path.

use aya::maps::{MapError, lpm_trie::Key};
use chokepoint_common::{
    Config, IdentKey, IdentVal, LPM_DATA_LEN, LpmKey, PROTO_ANY, PortEntry, RuleVal, kind,
};

use super::{
    batch::{self, BatchError},
    maps::{IdentBinding, MapsError, PolicyMaps, lpm, m},
};
use crate::policy::CompiledPolicy;

/// The keys of one policy slot.
#[derive(Default)]
pub struct SlotKeys {
    ident: Vec<IdentKey>,
    rules: Vec<Key<[u8; LPM_DATA_LEN]>>,
}

impl SlotKeys {
    fn is_empty(&self) -> bool {
        self.ident.is_empty() && self.rules.is_empty()
    }
}

fn batch_err(map: &'static str, e: BatchError) -> MapsError {
    match e {
        BatchError::Unsupported => MapsError::Batch {
            map,
            done: 0,
            source: std::io::Error::from(rustix::io::Errno::OPNOTSUPP),
        },
        BatchError::Failed { done, source } => MapsError::Batch { map, done, source },
    }
}

impl PolicyMaps {
    /// Removes every entry of `slot` from the identity and rules maps: the keys this process
    /// wrote there when known, else every key of the slot found by walking the maps.
    fn clear_slot(&mut self, slot: u32) -> Result<(), MapsError> {
        let known = self.written[slot as usize].take();
        let (ident_keys, rule_keys) = match known {
            Some(k) => (k.ident, k.rules),
            None => (
                self.ident
                    .keys()
                    .filter_map(Result::ok)
                    .filter(|k| k.slot == slot)
                    .collect(),
                self.rules
                    .keys()
                    .filter_map(Result::ok)
                    .filter(|k| u32::from(k.data()[0]) == slot)
                    .collect(),
            ),
        };
        use aya::maps::IterableMap;
        match batch::delete(IterableMap::map(&self.ident), &ident_keys) {
            Ok(()) => {}
            Err(BatchError::Unsupported) => {
                for k in &ident_keys {
                    match self.ident.remove(k) {
                        Ok(()) | Err(MapError::KeyNotFound) => {}
                        Err(e) => return Err(m("CP_IDENT")(e)),
                    }
                }
            }
            Err(e) => return Err(batch_err("CP_IDENT", e)),
        }
        match batch::delete(IterableMap::map(&self.rules), &rule_keys) {
            Ok(()) => {}
            Err(BatchError::Unsupported) => {
                for k in &rule_keys {
                    match self.rules.remove(k) {
                        Ok(()) | Err(MapError::KeyNotFound) => {}
                        Err(e) => return Err(m("CP_RULES")(e)),
                    }
                }
            }
            Err(e) => return Err(batch_err("CP_RULES", e)),
        }
        self.written[slot as usize] = Some(SlotKeys::default());
        Ok(())
    }

    /// Writes `policy` into the inactive slot, then switches to it in one word write. On any error
    /// the inactive slot is cleared again and the active generation is untouched. The retired
    /// slot keeps the previous generation until [`PolicyMaps::clear_retired`] (or the next apply).
    pub fn apply(
        &mut self,
        policy: &CompiledPolicy,
        bindings: &[IdentBinding],
        generation: u32,
    ) -> Result<Config, MapsError> {
        let cur = self.config()?;
        let next = 1 - cur.slot();
        if !self.written[next as usize]
            .as_ref()
            .is_some_and(SlotKeys::is_empty)
        {
            self.clear_slot(next)?;
        }
        if let Err(e) = self.fill_slot(next, policy, bindings) {
            let _ = self.clear_slot(next);
            return Err(e);
        }
        let cfg = Config::new(next, generation, cur.epoch().wrapping_add(1).max(1));
        self.set_config(cfg)?;
        self.retired = Some(cfg);
        Ok(cfg)
    }

    /// Empties the slot the last apply retired, if that apply's configuration is still active
    /// (else a later apply cleared it). Called a moment after the switch (the housekeeping tick):
    /// a decision that read the old configuration word just before it finishes its lookups in
    /// microseconds.
    pub fn clear_retired(&mut self) -> Result<(), MapsError> {
        let Some(switched) = self.retired.take() else {
            return Ok(());
        };
        let cur = self.config()?;
        if cur.slot() != switched.slot() || cur.generation() != switched.generation() {
            return Ok(());
        }
        let old = 1 - cur.slot();
        if self.written[old as usize]
            .as_ref()
            .is_some_and(SlotKeys::is_empty)
        {
            return Ok(());
        }
        self.clear_slot(old)
    }

    fn fill_slot(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        bindings: &[IdentBinding],
    ) -> Result<(), MapsError> {
        let mut keys = self.written[slot as usize].take().unwrap_or_default();
        let mut ident_vals = Vec::with_capacity(bindings.len());
        for b in bindings {
            keys.ident.push(IdentKey {
                cgroup_id: b.cgroup_id,
                slot,
                _pad: 0,
            });
            ident_vals.push(IdentVal {
                ident: b.ident,
                mode: b.mode,
                _pad: [0; 3],
            });
        }
        let mut rule_vals = Vec::with_capacity(policy.prefix_count());
        for id in &policy.identities {
            for (cidr, entries) in &id.entries {
                let mut v = RuleVal::default();
                for (i, e) in entries.iter().enumerate() {
                    v.entries[i] = *e;
                }
                keys.rules.push(lpm(slot as u8, id.id, cidr));
                rule_vals.push(v);
            }
            for (i, cidr) in id.ingress_prefixes().iter().enumerate() {
                let mut v = RuleVal::default();
                v.entries[0] = PortEntry {
                    port_lo: 0,
                    port_hi: u16::MAX,
                    proto: PROTO_ANY,
                    kind: kind::INGRESS,
                    _pad: 0,
                    rule: i as u32,
                };
                let k = LpmKey::new(
                    slot as u8,
                    cidr.family(),
                    id.id,
                    &cidr.bytes(),
                    u32::from(cidr.bits),
                )
                .ingress();
                keys.rules.push(Key::new(k.prefix_len, k.data));
                rule_vals.push(v);
            }
        }
        // Every key is recorded before the first write, so a failure part-way clears them all.
        let result = self.write_slot(&keys, &ident_vals, &rule_vals);
        self.written[slot as usize] = Some(keys);
        result
    }

    fn write_slot(
        &mut self,
        keys: &SlotKeys,
        ident_vals: &[IdentVal],
        rule_vals: &[RuleVal],
    ) -> Result<(), MapsError> {
        use aya::maps::IterableMap;
        match batch::update(IterableMap::map(&self.ident), &keys.ident, ident_vals) {
            Ok(()) => {}
            Err(BatchError::Unsupported) => {
                for (k, v) in keys.ident.iter().zip(ident_vals) {
                    self.ident.insert(*k, *v, 0).map_err(m("CP_IDENT"))?;
                }
            }
            Err(e) => return Err(batch_err("CP_IDENT", e)),
        }
        match batch::update(IterableMap::map(&self.rules), &keys.rules, rule_vals) {
            Ok(()) => {}
            Err(BatchError::Unsupported) => {
                for (k, v) in keys.rules.iter().zip(rule_vals) {
                    self.rules.insert(k, *v, 0).map_err(m("CP_RULES"))?;
                }
            }
            Err(e) => return Err(batch_err("CP_RULES", e)),
        }
        Ok(())
    }

    /// Changes the identity bindings of the active generation in place (a selected cgroup
    /// appeared, vanished or was recreated): one map write per changed cgroup, then an epoch bump
    /// so cached resolutions are redone. The rules are untouched.
    pub fn rebind(
        &mut self,
        old: &[IdentBinding],
        new: &[IdentBinding],
    ) -> Result<Config, MapsError> {
        let slot = self.config()?.slot();
        let key = |b: &IdentBinding| IdentKey {
            cgroup_id: b.cgroup_id,
            slot,
            _pad: 0,
        };
        let was: std::collections::HashMap<u64, (u32, u8)> = old
            .iter()
            .map(|o| (o.cgroup_id, (o.ident, o.mode)))
            .collect();
        let now: std::collections::HashSet<u64> = new.iter().map(|b| b.cgroup_id).collect();
        for b in new {
            if was.get(&b.cgroup_id) != Some(&(b.ident, b.mode)) {
                let val = IdentVal {
                    ident: b.ident,
                    mode: b.mode,
                    _pad: [0; 3],
                };
                self.ident.insert(key(b), val, 0).map_err(m("CP_IDENT"))?;
                if let Some(w) = self.written[slot as usize].as_mut() {
                    w.ident.push(key(b));
                }
            }
        }
        for o in old {
            if !now.contains(&o.cgroup_id) {
                match self.ident.remove(&key(o)) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(m("CP_IDENT")(e)),
                }
            }
        }
        self.bump_epoch()
    }
}
