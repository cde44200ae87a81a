//! Identity resolution: the configuration word a decision reads once, and the identity of a
//! cgroup (the per-CPU-safe cache first, then a walk over its ancestors).

use chokepoint_common::{CgCache, Config, IdentKey, MAX_CGROUP_DEPTH};

use crate::{
    decide::Ident,
    maps::{CP_CGSLOTS, CP_CONFIG, CP_IDENT},
};

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
