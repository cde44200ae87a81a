//! Shadow-integration inventory: per identity, every destination it tried that policy did not
//! sanction (deny and audit-mode would-deny records), with first/last seen, attempts, reasons,
//! ports and — when the identity resolved it through the sanctioned resolver — the host name.
//!
//! Bounded: at most [`MAX_PER_IDENTITY`] destinations per identity and [`MAX_ENTRIES`] in all;
//! past that the least recently seen destination is evicted and counted in `evicted`. Persisted
//! in the state dir (`inventory.json`, atomic writes) so it survives restarts.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{audit::FlowRecord, util};

pub mod names;

/// File name in the state dir.
pub const FILE: &str = "inventory.json";
/// Destinations kept per identity.
pub const MAX_PER_IDENTITY: usize = 1024;
/// Destinations kept in all.
pub const MAX_ENTRIES: usize = 16_384;

/// One unsanctioned destination of one identity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Destination {
    /// The destination address (no port).
    pub dst: String,
    /// The name the identity resolved to this address through the sanctioned resolver, if known.
    pub host: Option<String>,
    /// `port/proto` seen, e.g. `443/tcp`.
    pub ports: BTreeSet<String>,
    /// Reasons the attempts were refused (`not_gateway`, `dns_resolver`, …).
    pub reasons: BTreeSet<String>,
    /// Attempts refused.
    pub attempts: u64,
    /// Time of the first attempt (RFC 3339).
    pub first_seen: String,
    /// Time of the last attempt (RFC 3339).
    pub last_seen: String,
}

/// The destinations of one identity.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityEntry {
    /// The identity's tenant.
    pub tenant: Option<String>,
    /// Keyed by address.
    pub destinations: BTreeMap<String, Destination>,
    /// Destinations dropped to stay within the bounds.
    #[serde(default)]
    pub evicted: u64,
}

/// The whole inventory (what `inventory.json` holds).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inventory {
    /// Format version of the file (1).
    pub version: u32,
    /// Keyed by identity name.
    pub identities: BTreeMap<String, IdentityEntry>,
}

/// Errors loading or saving the inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read or written.
    #[error("inventory {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid inventory.
    #[error("inventory {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Host names learned from the sanctioned resolver's answers (identity, address → name).
pub trait HostNames {
    /// The name `identity` resolved to `addr`, if one was seen.
    fn host_of(&self, identity: &str, addr: &str) -> Option<String>;
}

/// No names known.
pub struct NoNames;

impl HostNames for NoNames {
    fn host_of(&self, _: &str, _: &str) -> Option<String> {
        None
    }
}

fn split_dst(dst: &str) -> Option<(&str, &str)> {
    if let Some(rest) = dst.strip_prefix('[') {
        rest.split_once("]:")
    } else {
        dst.rsplit_once(':')
    }
}

impl Inventory {
    /// Loads `dir/inventory.json` (an empty inventory when it does not exist).
    pub fn load(dir: &Path) -> Result<Self, InventoryError> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| InventoryError::Corrupt {
                path: path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                version: 1,
                ..Self::default()
            }),
            Err(source) => Err(InventoryError::Io { path, source }),
        }
    }

    /// Writes `dir/inventory.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), InventoryError> {
        let path = dir.join(FILE);
        let bytes = serde_json::to_vec(self).expect("inventory serialises");
        util::write_atomic(&path, &bytes).map_err(|source| InventoryError::Io { path, source })
    }

    /// Takes a flow record; returns true when the inventory changed. Only refused attempts with a
    /// destination count (deny, and audit-mode would-deny).
    pub fn observe(&mut self, r: &FlowRecord, names: &dyn HostNames) -> bool {
        if r.verdict != "deny" && r.verdict != "audit" {
            return false;
        }
        let (Some(identity), Some(dst)) = (r.identity.as_deref(), r.dst.as_deref()) else {
            return false;
        };
        let Some((addr, port)) = split_dst(dst) else {
            return false;
        };
        let port = format!("{port}/{}", r.proto.as_deref().unwrap_or("?"));
        let total: usize = self.identities.values().map(|e| e.destinations.len()).sum();
        let entry = self.identities.entry(identity.to_string()).or_default();
        entry.tenant.clone_from(&r.tenant);
        let host = names.host_of(identity, addr);
        if let Some(d) = entry.destinations.get_mut(addr) {
            d.attempts += 1;
            d.last_seen.clone_from(&r.time);
            d.ports.insert(port);
            d.reasons.insert(r.reason.clone());
            if host.is_some() {
                d.host = host;
            }
            return true;
        }
        let evict_here = entry.destinations.len() >= MAX_PER_IDENTITY;
        if evict_here {
            evict_oldest(entry);
        }
        entry.destinations.insert(
            addr.to_string(),
            Destination {
                dst: addr.to_string(),
                host,
                ports: BTreeSet::from([port]),
                reasons: BTreeSet::from([r.reason.clone()]),
                attempts: 1,
                first_seen: r.time.clone(),
                last_seen: r.time.clone(),
            },
        );
        if !evict_here && total >= MAX_ENTRIES {
            // Evict from the identity with the most destinations (so one noisy identity cannot
            // push out everyone else's).
            if let Some(e) = self
                .identities
                .values_mut()
                .max_by_key(|e| e.destinations.len())
            {
                evict_oldest(e);
            }
        }
        true
    }

    /// Names a destination an identity already tried, when the answer that names it is
    /// processed after the attempt; returns true when the inventory changed.
    pub fn name_destination(&mut self, identity: &str, addr: std::net::IpAddr, host: &str) -> bool {
        let Some(d) = self
            .identities
            .get_mut(identity)
            .and_then(|e| e.destinations.get_mut(&addr.to_string()))
        else {
            return false;
        };
        if d.host.as_deref() == Some(host) {
            return false;
        }
        d.host = Some(host.to_string());
        true
    }

    /// Destinations per identity (the `chokepoint_inventory_destinations` metric).
    pub fn counts(&self) -> Vec<(String, usize)> {
        self.identities
            .iter()
            .map(|(i, e)| (i.clone(), e.destinations.len()))
            .collect()
    }

    /// The `inventory` answer: per identity, its destinations (most recently seen first).
    pub fn view(&self, identity: Option<&str>) -> View {
        let identities = self
            .identities
            .iter()
            .filter(|(name, _)| identity.is_none_or(|i| i == name.as_str()))
            .map(|(name, e)| {
                let mut d: Vec<Destination> = e.destinations.values().cloned().collect();
                d.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(a.dst.cmp(&b.dst)));
                ViewEntry {
                    identity: name.clone(),
                    tenant: e.tenant.clone(),
                    destinations: d,
                    evicted: e.evicted,
                }
            })
            .collect();
        View { identities }
    }
}

/// The `inventory` answer: unsanctioned destinations per identity.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct View {
    /// One entry per identity.
    pub identities: Vec<ViewEntry>,
}

/// The unsanctioned destinations of one identity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ViewEntry {
    /// Identity name.
    pub identity: String,
    /// Tenant.
    pub tenant: Option<String>,
    /// Most recently seen first.
    pub destinations: Vec<Destination>,
    /// Older destinations dropped to stay within the bounds.
    pub evicted: u64,
}

fn evict_oldest(e: &mut IdentityEntry) {
    if let Some(k) = e
        .destinations
        .iter()
        .min_by(|a, b| a.1.last_seen.cmp(&b.1.last_seen))
        .map(|(k, _)| k.clone())
    {
        e.destinations.remove(&k);
        e.evicted += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(identity: &str, dst: &str, verdict: &str, t: u128) -> FlowRecord {
        FlowRecord {
            identity: Some(identity.into()),
            dst: Some(dst.into()),
            verdict: verdict.into(),
            reason: "not_gateway".into(),
            proto: Some("tcp".into()),
            time: util::rfc3339_ns(t),
            ..crate::audit::lost_record("n", 0, "x", 1)
        }
    }

    struct Names;
    impl HostNames for Names {
        fn host_of(&self, _: &str, addr: &str) -> Option<String> {
            (addr == "10.0.0.9").then(|| "api.example.com".into())
        }
    }

    #[test]
    fn aggregates_bounds_and_round_trips() {
        let mut inv = Inventory::default();
        assert!(inv.observe(&rec("a", "10.0.0.9:443", "deny", 1), &Names));
        assert!(inv.observe(&rec("a", "10.0.0.9:80", "audit", 2), &Names));
        assert!(!inv.observe(&rec("a", "10.0.0.8:443", "allow", 3), &Names));
        assert!(inv.observe(&rec("a", "[fd00::1]:443", "deny", 4), &NoNames));
        let d = &inv.identities["a"].destinations["10.0.0.9"];
        assert_eq!(d.attempts, 2);
        assert_eq!(d.host.as_deref(), Some("api.example.com"));
        assert_eq!(d.ports.len(), 2);
        assert!(inv.identities["a"].destinations.contains_key("fd00::1"));
        for i in 0..MAX_PER_IDENTITY + 5 {
            inv.observe(
                &rec(
                    "b",
                    &format!("10.1.{}.{}:1", i / 256, i % 256),
                    "deny",
                    10 + i as u128,
                ),
                &NoNames,
            );
        }
        assert_eq!(inv.identities["b"].destinations.len(), MAX_PER_IDENTITY);
        assert_eq!(inv.identities["b"].evicted, 5);
        // The oldest went first.
        assert!(!inv.identities["b"].destinations.contains_key("10.1.0.0"));
        let dir = std::env::temp_dir().join(format!("cp-inv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        inv.save(&dir).unwrap();
        assert_eq!(Inventory::load(&dir).unwrap(), inv);
        std::fs::write(dir.join(FILE), b"{").unwrap();
        assert!(Inventory::load(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        let v = inv.view(Some("a"));
        assert_eq!(v.identities.len(), 1);
        assert_eq!(v.identities[0].destinations[0].dst, "fd00::1");
    }
}
