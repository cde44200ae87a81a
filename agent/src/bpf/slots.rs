//! Policy slots: a generation is built in the inactive slot of the identity and rules maps (batch
//! writes, off to the side), then enforced by one write of the configuration word. The retired
//! slot keeps the generation it held, so the next apply writes into it only what differs between
//! that generation and the new one (a change of a few rules of a 100k-rule policy writes a few
//! entries); where this process does not know what a slot holds (adopted from an earlier
//! process, or after a failed write) the slot is cleared and the whole generation written.

use std::{collections::HashSet, sync::Arc};

use aya::maps::{MapError, lpm_trie::Key};
use chokepoint_common::{Config, IdentKey, IdentVal, LPM_DATA_LEN, RuleVal};

use super::{
    batch::{self, BatchError},
    maps::{IdentBinding, MapsError, PolicyMaps, m},
    slot_contents::{ident_entries, rules_diff, slot_rules},
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
        self.delete_ident(&ident_keys)?;
        self.delete_rules(&rule_keys)?;
        self.written[slot as usize] = Some(SlotKeys::default());
        Ok(())
    }

    /// Writes `policy` into the inactive slot, then switches to it in one word write. On any error
    /// the inactive slot is cleared again and the active generation is untouched. The retired
    /// slot keeps the previous generation: the next apply patches it.
    pub fn apply(
        &mut self,
        policy: &Arc<CompiledPolicy>,
        bindings: &[IdentBinding],
        generation: u32,
    ) -> Result<Config, MapsError> {
        let cur = self.config()?;
        let next = 1 - cur.slot();
        let written = match self.holds[next as usize].take() {
            Some(old) if self.written[next as usize].is_some() => {
                self.patch_slot(next, &old, policy, bindings)
            }
            _ => {
                if !self.written[next as usize]
                    .as_ref()
                    .is_some_and(SlotKeys::is_empty)
                {
                    self.clear_slot(next)?;
                }
                self.fill_slot(next, policy, bindings)
            }
        };
        if let Err(e) = written {
            let _ = self.clear_slot(next);
            return Err(e);
        }
        self.holds[next as usize] = Some(policy.clone());
        let cfg = Config::new(next, generation, cur.epoch().wrapping_add(1).max(1));
        self.set_config(cfg)?;
        Ok(cfg)
    }

    /// Turns `slot`, which holds exactly `old`'s rules, into `new`'s: removes the keys `new` does
    /// not have, writes the keys whose value differs or is new. Bindings (a few thousand at most)
    /// are all written again, stale ones removed.
    fn patch_slot(
        &mut self,
        slot: u32,
        old: &CompiledPolicy,
        new: &CompiledPolicy,
        bindings: &[IdentBinding],
    ) -> Result<(), MapsError> {
        let mut keys = self.written[slot as usize].take().unwrap_or_default();
        let (new_ident, ident_vals) = ident_entries(slot, bindings);
        let bound: HashSet<u64> = bindings.iter().map(|b| b.cgroup_id).collect();
        let stale_ident: Vec<IdentKey> = keys
            .ident
            .iter()
            .filter(|k| !bound.contains(&k.cgroup_id))
            .copied()
            .collect();
        let diff = rules_diff(slot, old, new);
        let new_rules: Vec<Key<[u8; LPM_DATA_LEN]>> =
            slot_rules(slot, new).map(|(k, _)| k).collect();
        // Stale keys go first: the trie's capacity is two generations, not three.
        let result = self
            .delete_ident(&stale_ident)
            .and_then(|()| self.put_ident(&new_ident, &ident_vals))
            .and_then(|()| self.delete_rules(&diff.stale))
            .and_then(|()| self.put_rules(&diff.put, &diff.vals));
        if result.is_ok() {
            keys = SlotKeys {
                ident: new_ident,
                rules: new_rules,
            };
        } else {
            // Old and new keys alike may be in the slot now: the caller clears them all.
            keys.ident.extend(new_ident);
            keys.rules.extend(new_rules);
        }
        self.written[slot as usize] = Some(keys);
        result
    }

    fn fill_slot(
        &mut self,
        slot: u32,
        policy: &CompiledPolicy,
        bindings: &[IdentBinding],
    ) -> Result<(), MapsError> {
        let mut keys = self.written[slot as usize].take().unwrap_or_default();
        let (ident_keys, ident_vals) = ident_entries(slot, bindings);
        keys.ident.extend_from_slice(&ident_keys);
        let first = keys.rules.len();
        let mut rule_vals = Vec::with_capacity(policy.prefix_count());
        for (k, v) in slot_rules(slot, policy) {
            keys.rules.push(k);
            rule_vals.push(v.rule_val());
        }
        // Every key is recorded before the first write, so a failure part-way clears them all.
        let result = self
            .put_ident(&ident_keys, &ident_vals)
            .and_then(|()| self.put_rules(&keys.rules[first..], &rule_vals));
        self.written[slot as usize] = Some(keys);
        result
    }

    fn put_ident(&mut self, keys: &[IdentKey], vals: &[IdentVal]) -> Result<(), MapsError> {
        use aya::maps::IterableMap;
        match batch::update(IterableMap::map(&self.ident), keys, vals) {
            Ok(()) => Ok(()),
            Err(BatchError::Unsupported) => {
                for (k, v) in keys.iter().zip(vals) {
                    self.ident.insert(*k, *v, 0).map_err(m("CP_IDENT"))?;
                }
                Ok(())
            }
            Err(e) => Err(batch_err("CP_IDENT", e)),
        }
    }

    fn put_rules(
        &mut self,
        keys: &[Key<[u8; LPM_DATA_LEN]>],
        vals: &[RuleVal],
    ) -> Result<(), MapsError> {
        use aya::maps::IterableMap;
        match batch::update(IterableMap::map(&self.rules), keys, vals) {
            Ok(()) => Ok(()),
            Err(BatchError::Unsupported) => {
                for (k, v) in keys.iter().zip(vals) {
                    self.rules.insert(k, *v, 0).map_err(m("CP_RULES"))?;
                }
                Ok(())
            }
            Err(e) => Err(batch_err("CP_RULES", e)),
        }
    }

    fn delete_ident(&mut self, keys: &[IdentKey]) -> Result<(), MapsError> {
        use aya::maps::IterableMap;
        match batch::delete(IterableMap::map(&self.ident), keys) {
            Ok(()) => Ok(()),
            Err(BatchError::Unsupported) => {
                for k in keys {
                    match self.ident.remove(k) {
                        Ok(()) | Err(MapError::KeyNotFound) => {}
                        Err(e) => return Err(m("CP_IDENT")(e)),
                    }
                }
                Ok(())
            }
            Err(e) => Err(batch_err("CP_IDENT", e)),
        }
    }

    fn delete_rules(&mut self, keys: &[Key<[u8; LPM_DATA_LEN]>]) -> Result<(), MapsError> {
        use aya::maps::IterableMap;
        match batch::delete(IterableMap::map(&self.rules), keys) {
            Ok(()) => Ok(()),
            Err(BatchError::Unsupported) => {
                for k in keys {
                    match self.rules.remove(k) {
                        Ok(()) | Err(MapError::KeyNotFound) => {}
                        Err(e) => return Err(m("CP_RULES")(e)),
                    }
                }
                Ok(())
            }
            Err(e) => Err(batch_err("CP_RULES", e)),
        }
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
