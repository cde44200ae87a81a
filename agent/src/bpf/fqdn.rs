//! Typed wrapper over the `toFQDN` maps: learned addresses per identity ([`names::FQDN`]), the
//! proxy port per identity ([`names::DNSPX`]) and the proxy's addresses ([`names::DNSCFG`]).

use std::net::{IpAddr, Ipv4Addr};

use aya::maps::{Array, HashMap, MapData};
use chokepoint_common::{DnsCfg, DnsProxy, FqdnEntry, FqdnKey, FqdnVal, MAX_FQDN_ENTRIES, names};

use super::maps::MapsError;
use crate::policy::parse::{addr_bytes, normalise};

fn m(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> MapsError {
    move |source| MapsError::Map { map, source }
}

/// One (rule, ports) allowance of a learned address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    /// Rule index of the `toFQDN` rule within the identity.
    pub rule: u32,
    /// First port allowed.
    pub port_lo: u16,
    /// Last port allowed, inclusive.
    pub port_hi: u16,
    /// IP protocol number, or `PROTO_ANY`.
    pub proto: u8,
    /// Nanoseconds since boot (`CLOCK_BOOTTIME`) when the allowance expires.
    pub expires_boot_ns: u64,
}

/// The `toFQDN` maps.
pub struct FqdnMaps {
    /// `CP_FQDN`: addresses learned per identity, with their allowances.
    pub learned: HashMap<MapData, FqdnKey, FqdnVal>,
    /// `CP_DNSPX`: identity id to the port of the DNS proxy serving it.
    pub proxies: HashMap<MapData, u32, DnsProxy>,
    /// `CP_DNSCFG`: where the DNS proxy listens.
    pub cfg: Array<MapData, DnsCfg>,
}

fn key(ident: u32, addr: IpAddr) -> FqdnKey {
    let addr = normalise(addr);
    FqdnKey {
        ident,
        family: if addr.is_ipv4() { 4 } else { 6 },
        _pad: [0; 3],
        addr: addr_bytes(&addr),
    }
}

fn key_addr(k: &FqdnKey) -> IpAddr {
    super::maps::event_addr(k.family, &k.addr)
}

impl FqdnMaps {
    /// Writes everything `ident` may reach at `addr` (replacing what was there); an empty list
    /// removes the address.
    pub fn set(&mut self, ident: u32, addr: IpAddr, list: &[Allowance]) -> Result<(), MapsError> {
        let k = key(ident, addr);
        if list.is_empty() {
            return match self.learned.remove(&k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(m(names::FQDN)(e)),
            };
        }
        let mut v = FqdnVal::default();
        for (slot, a) in v.entries.iter_mut().zip(list.iter().take(MAX_FQDN_ENTRIES)) {
            *slot = FqdnEntry {
                expires_ns: a.expires_boot_ns,
                rule: a.rule,
                port_lo: a.port_lo,
                port_hi: a.port_hi,
                proto: a.proto,
                _pad: [0; 7],
            };
        }
        self.learned.insert(k, v, 0).map_err(m(names::FQDN))
    }

    /// Every learned (identity id, address, allowances) in the kernel.
    pub fn entries(&self) -> Vec<(u32, IpAddr, Vec<Allowance>)> {
        self.learned
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| {
                let list = v
                    .entries
                    .iter()
                    .filter(|e| e.expires_ns != 0)
                    .map(|e| Allowance {
                        rule: e.rule,
                        port_lo: e.port_lo,
                        port_hi: e.port_hi,
                        proto: e.proto,
                        expires_boot_ns: e.expires_ns,
                    })
                    .collect();
                (k.ident, key_addr(&k), list)
            })
            .collect()
    }

    /// Sets the proxy ports: identity id → (port, resolver rule); every other entry is removed.
    pub fn set_proxies(&mut self, want: &[(u32, u16, u32)]) -> Result<(), MapsError> {
        let have: Vec<u32> = self.proxies.keys().filter_map(Result::ok).collect();
        for (ident, port, rule) in want {
            self.proxies
                .insert(
                    ident,
                    DnsProxy {
                        rule: *rule,
                        port: *port,
                        _pad: 0,
                    },
                    0,
                )
                .map_err(m(names::DNSPX))?;
        }
        for ident in have {
            if !want.iter().any(|(i, _, _)| *i == ident) {
                let _ = self.proxies.remove(&ident);
            }
        }
        Ok(())
    }

    /// Proxy ports currently in the kernel: identity id → port.
    pub fn proxies(&self) -> Vec<(u32, u16)> {
        self.proxies
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, v.port))
            .collect()
    }

    /// Sets the daemon's network namespace cookie and the pod-facing proxy address.
    pub fn set_cfg(
        &mut self,
        host_netns: u64,
        pod_addr: Option<Ipv4Addr>,
    ) -> Result<(), MapsError> {
        let c = DnsCfg {
            host_netns,
            pod_addr: pod_addr.map_or([0; 4], |a| a.octets()),
            _pad: 0,
        };
        self.cfg.set(0, c, 0).map_err(m(names::DNSCFG))
    }
}
