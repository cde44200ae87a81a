//! Typed wrappers over the pinned maps. Raw key structs never leave this module.

use std::net::IpAddr;

use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key};
use chokepoint_common::{
    AttestVal, Config, FlowKey, GrantEntry, GrantVal, IdentKey, IdentVal, LPM_DATA_LEN, LpmKey,
    MAX_GRANT_ENTRIES, RuleVal, STAT_LOST, STATS_LEN, reason, stat_index, verdict,
};

pub use super::slots::SlotKeys;
use crate::policy::parse::Cidr;

/// Errors writing policy into the kernel.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// A map operation failed.
    #[error("map operation on {map} failed: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: MapError,
    },
    /// A batch update stopped part way.
    #[error("batch write to {map} failed after {done} entries: {source}")]
    Batch {
        /// The map's name.
        map: &'static str,
        /// Entries written before it stopped.
        done: usize,
        /// The system call's error.
        #[source]
        source: std::io::Error,
    },
    /// A destination prefix already holds the most grants it can (`MAX_GRANT_ENTRIES`).
    #[error(
        "grant for task `{task}` to {dest}: more than {MAX_GRANT_ENTRIES} grants at one destination prefix"
    )]
    GrantsFull {
        /// The task id of the grant refused.
        task: String,
        /// The destination prefix.
        dest: String,
    },
}

pub(super) fn m(map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { map, source }
}

/// The policy maps the agent writes.
pub struct PolicyMaps {
    /// `CP_CONFIG`: active slot, generation and epoch.
    pub config: Array<MapData, Config>,
    /// `CP_IDENT`: cgroup id (per slot) to identity.
    pub ident: HashMap<MapData, IdentKey, IdentVal>,
    /// `CP_RULES`: gateway endpoints and allow rules (per slot and identity).
    pub rules: LpmTrie<MapData, [u8; LPM_DATA_LEN], RuleVal>,
    /// `CP_GRANTS`: task-scoped grants with their expiry.
    pub grants: LpmTrie<MapData, [u8; LPM_DATA_LEN], GrantVal>,
    /// Keys this process wrote into each slot; `None` until known (after an adoption the slot is
    /// cleared by walking the maps once).
    pub written: [Option<SlotKeys>; 2],
    /// The compiled policy whose rules each slot holds exactly (`None`: not known or empty); the
    /// next apply into that slot writes only what differs.
    pub holds: [Option<std::sync::Arc<crate::policy::CompiledPolicy>>; 2],
}

/// One cgroup an identity covers in a generation.
#[derive(Clone, Debug)]
pub struct IdentBinding {
    /// The cgroup's id (its inode number in cgroupfs).
    pub cgroup_id: u64,
    /// Identity id (1-based).
    pub ident: u32,
    /// `MODE_ENFORCE` or `MODE_AUDIT`.
    pub mode: u8,
}

pub(super) fn lpm(slot: u8, ident: u32, c: &Cidr) -> Key<[u8; LPM_DATA_LEN]> {
    let k = LpmKey::new(slot, c.family(), ident, &c.bytes(), u32::from(c.bits));
    Key::new(k.prefix_len, k.data)
}

impl PolicyMaps {
    /// The configuration word.
    pub fn config(&self) -> Result<Config, MapsError> {
        self.config.get(&0, 0).map_err(m("CP_CONFIG"))
    }

    pub(super) fn set_config(&mut self, c: Config) -> Result<(), MapsError> {
        self.config.set(0, c, 0).map_err(m("CP_CONFIG"))
    }

    /// Bumps the epoch (invalidates every cached verdict) keeping slot and generation.
    pub fn bump_epoch(&mut self) -> Result<Config, MapsError> {
        let cur = self.config()?;
        let cfg = Config::new(
            cur.slot(),
            cur.generation(),
            cur.epoch().wrapping_add(1).max(1),
        );
        self.set_config(cfg)?;
        Ok(cfg)
    }

    /// Replaces the whole grant set with `grants` (ancestor prefixes merged into descendants, as
    /// for rules), then bumps the epoch so live flows are re-judged on their next packet.
    pub fn set_grants(&mut self, grants: &[GrantSpec]) -> Result<Config, MapsError> {
        use std::collections::{BTreeMap, BTreeSet};
        let mut raw: BTreeMap<(u32, Cidr), Vec<&GrantSpec>> = BTreeMap::new();
        for g in grants {
            raw.entry((g.ident, g.cidr)).or_default().push(g);
        }
        let lengths: BTreeSet<(u8, u8)> = raw.keys().map(|(_, c)| (c.family(), c.bits)).collect();
        let mut wanted: BTreeMap<(u32, Cidr), GrantVal> = BTreeMap::new();
        for ((ident, cidr), own) in &raw {
            let mut all: Vec<&GrantSpec> = own.clone();
            for &(fam, bits) in &lengths {
                if fam == cidr.family()
                    && bits < cidr.bits
                    && let Some(p) = raw.get(&(*ident, cidr.truncate(bits)))
                {
                    all.extend(p.iter().copied());
                }
            }
            if all.len() > MAX_GRANT_ENTRIES {
                let g = own[0];
                return Err(MapsError::GrantsFull {
                    task: g.task_name.clone(),
                    dest: cidr.to_string(),
                });
            }
            let mut v = GrantVal::default();
            for (i, g) in all.iter().enumerate() {
                v.entries[i] = GrantEntry {
                    expires_ns: g.expires_boot_ns,
                    task: g.task,
                    port_lo: g.port_lo,
                    port_hi: g.port_hi,
                    proto: g.proto,
                    _pad: [0; 3],
                };
            }
            wanted.insert((*ident, *cidr), v);
        }
        let existing: Vec<Key<[u8; LPM_DATA_LEN]>> =
            self.grants.keys().filter_map(Result::ok).collect();
        for ((ident, cidr), v) in &wanted {
            self.grants
                .insert(&lpm(0, *ident, cidr), *v, 0)
                .map_err(m("CP_GRANTS"))?;
        }
        let keep: BTreeSet<(u32, [u8; LPM_DATA_LEN])> = wanted
            .keys()
            .map(|(i, c)| {
                let k = lpm(0, *i, c);
                (k.prefix_len(), k.data())
            })
            .collect();
        for k in existing {
            if !keep.contains(&(k.prefix_len(), k.data())) {
                match self.grants.remove(&k) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(m("CP_GRANTS")(e)),
                }
            }
        }
        self.bump_epoch()
    }
}

/// A grant as the maps need it.
#[derive(Clone, Debug)]
pub struct GrantSpec {
    /// Identity id (1-based).
    pub ident: u32,
    /// The destination prefix.
    pub cidr: Cidr,
    /// First port granted.
    pub port_lo: u16,
    /// Last port granted, inclusive.
    pub port_hi: u16,
    /// IP protocol number, or `PROTO_ANY`.
    pub proto: u8,
    /// The kernel's task number: a hash of the task id (never 0).
    pub task: u64,
    /// The task id as given.
    pub task_name: String,
    /// Nanoseconds since boot (`CLOCK_BOOTTIME`) when the grant expires.
    pub expires_boot_ns: u64,
}

/// Kernel-side counters.
pub struct Stats {
    /// `CP_STATS`: per-CPU u64 counters, indexed by `stat_index`.
    pub map: PerCpuArray<MapData, u64>,
}

/// Summed counters.
#[derive(Clone, Debug, Default)]
pub struct StatsSnapshot {
    /// (verdict, reason) → count.
    pub decisions: Vec<((u8, u8), u64)>,
    /// Ring buffer reserve failures.
    pub lost: u64,
}

impl StatsSnapshot {
    /// Total decisions that tried to emit a record.
    pub fn emitted(&self) -> u64 {
        self.decisions.iter().map(|(_, c)| c).sum()
    }
}

impl Stats {
    /// Sums the per-CPU counters.
    pub fn snapshot(&self) -> Result<StatsSnapshot, MapsError> {
        let mut s = StatsSnapshot::default();
        for v in 1..verdict::COUNT {
            for r in 0..reason::COUNT {
                let idx = stat_index(v, r);
                if idx >= STATS_LEN {
                    continue;
                }
                let vals = self.map.get(&idx, 0).map_err(m("CP_STATS"))?;
                let total: u64 = vals.iter().sum();
                if total > 0 {
                    s.decisions.push(((v, r), total));
                }
            }
        }
        s.lost = self
            .map
            .get(&STAT_LOST, 0)
            .map_err(m("CP_STATS"))?
            .iter()
            .sum();
        Ok(s)
    }
}

/// The address in an event's 16 bytes.
pub fn event_addr(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == 6 {
        IpAddr::from(*bytes)
    } else {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

/// The attestation map: live gateway connections of identities.
pub struct Attest {
    /// `CP_ATTEST`: 4-tuple as the gateway sees it to the identity behind it.
    pub map: HashMap<MapData, FlowKey, AttestVal>,
}

impl Attest {
    /// Who is behind the connection from `peer` (the client, as the gateway sees it) to `local`
    /// (the gateway endpoint). IPv4-mapped addresses are normalised.
    pub fn lookup(
        &self,
        peer: std::net::SocketAddr,
        local: std::net::SocketAddr,
    ) -> Option<AttestVal> {
        let p = crate::policy::parse::normalise(peer.ip());
        let l = crate::policy::parse::normalise(local.ip());
        if p.is_ipv4() != l.is_ipv4() {
            return None;
        }
        let key = FlowKey {
            family: if p.is_ipv4() { 4 } else { 6 },
            _pad: 0,
            peer_port: peer.port(),
            local_port: local.port(),
            _pad2: 0,
            peer_addr: crate::policy::parse::addr_bytes(&p),
            local_addr: crate::policy::parse::addr_bytes(&l),
        };
        self.map.get(&key, 0).ok()
    }
}
