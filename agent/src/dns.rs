//! Gateway host names: re-resolved periodically, with every address kept for a grace period after
//! it was last seen, so a DNS rotation never cuts live connections to an address that just left
//! the answer (and a resolver outage does not empty a gateway).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Default time an address stays allowed after the name last resolved to it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);

/// Addresses seen per host name, with when each was last seen.
pub struct DnsCache {
    grace: Duration,
    seen: Mutex<HashMap<String, HashMap<IpAddr, Instant>>>,
}

impl DnsCache {
    /// An empty cache; addresses stay allowed for `grace` after they were last seen.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves `host` with `lookup` and returns every address seen within the grace period
    /// (sorted). A failed lookup still returns the addresses within grace; with none, the error.
    pub fn resolve(
        &self,
        host: &str,
        port: u16,
        lookup: crate::policy::parse::Resolver<'_>,
        now: Instant,
    ) -> Result<Vec<IpAddr>, String> {
        let fresh = lookup(host, port);
        let mut seen = self.seen.lock().expect("dns lock");
        let entry = seen.entry(host.to_string()).or_default();
        if let Ok(addrs) = &fresh {
            for a in addrs {
                entry.insert(*a, now);
            }
        }
        entry.retain(|_, t| now.saturating_duration_since(*t) <= self.grace);
        if entry.is_empty() {
            return fresh;
        }
        let mut v: Vec<IpAddr> = entry.keys().copied().collect();
        v.sort();
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_old_addresses_for_the_grace_period() {
        let c = DnsCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            c.resolve("gw", 443, &|_, _| Ok(vec![a]), t0).unwrap(),
            vec![a]
        );
        // Rotated to b: a is kept within grace.
        assert_eq!(
            c.resolve("gw", 443, &|_, _| Ok(vec![b]), t0 + Duration::from_secs(30))
                .unwrap(),
            vec![a, b]
        );
        // Resolver down: both still served within grace.
        assert_eq!(
            c.resolve(
                "gw",
                443,
                &|_, _| Err("down".into()),
                t0 + Duration::from_secs(50)
            )
            .unwrap(),
            vec![a, b]
        );
        // After the grace period only b (last seen at 30 s) remains, then nothing.
        assert_eq!(
            c.resolve(
                "gw",
                443,
                &|_, _| Err("down".into()),
                t0 + Duration::from_secs(70)
            )
            .unwrap(),
            vec![b]
        );
        assert!(
            c.resolve(
                "gw",
                443,
                &|_, _| Err("down".into()),
                t0 + Duration::from_secs(200)
            )
            .is_err()
        );
    }
}
