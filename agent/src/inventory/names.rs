//! Host names the identities resolved: for each identity, which name an address last answered
//! in a DNS response the identity received from its sanctioned resolver. Fed by the kernel's
//! answer capture (`CP_DNSANS`, [`crate::daemon`]'s answer consumer) and by the `toFQDN` proxy,
//! read by the inventory to name the destinations an identity tried.
//!
//! Bounded: at most [`MAX_PER_IDENTITY`] addresses per identity and [`MAX_NAMES`] in all; the
//! least recently answered address goes first. Kept in memory only: the inventory persists the
//! names of the destinations it lists.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Mutex,
};

use hickory_proto::op::{Message, MessageType, ResponseCode};

use super::HostNames;

/// Addresses kept per identity.
pub const MAX_PER_IDENTITY: usize = 4096;
/// Addresses kept in all.
pub const MAX_NAMES: usize = 65_536;

#[derive(Default)]
struct Table {
    /// (identity, address) → (name, sequence number of the answer).
    names: HashMap<(String, IpAddr), (String, u64)>,
    /// Sequence number → (identity, address): answer order, oldest first.
    order: BTreeMap<u64, (String, IpAddr)>,
    /// Addresses per identity.
    per_identity: HashMap<String, usize>,
    seq: u64,
}

/// The learned names (shared by the answer consumer, the proxy and the inventory).
#[derive(Default)]
pub struct NameTable {
    inner: Mutex<Table>,
}

/// What one DNS message taught.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// (address, name) pairs, the name as asked (lower case, no trailing dot).
    pub pairs: Vec<(IpAddr, String)>,
}

impl NameTable {
    /// Remembers that `addr` answered `name` for `identity`.
    pub fn learn(&self, identity: &str, addr: IpAddr, name: &str) {
        let mut t = self.inner.lock().expect("names lock");
        t.seq += 1;
        let seq = t.seq;
        let key = (identity.to_string(), addr);
        if let Some((old_name, old_seq)) = t.names.get_mut(&key) {
            let old = *old_seq;
            *old_seq = seq;
            name.clone_into(old_name);
            t.order.remove(&old);
            t.order.insert(seq, key);
            return;
        }
        let n = t.per_identity.entry(identity.to_string()).or_insert(0);
        *n += 1;
        let over_identity = *n > MAX_PER_IDENTITY;
        t.names.insert(key.clone(), (name.to_string(), seq));
        t.order.insert(seq, key);
        if over_identity {
            // The identity's own oldest address goes.
            let oldest = t
                .order
                .iter()
                .find(|(_, (i, _))| i == identity)
                .map(|(s, _)| *s);
            if let Some(s) = oldest {
                t.remove(s);
            }
        } else if t.names.len() > MAX_NAMES
            && let Some(s) = t.order.keys().next().copied()
        {
            t.remove(s);
        }
    }

    /// Learns every (address, name) of a DNS response; returns what it taught (nothing for a
    /// message that is not a successful response).
    pub fn learn_message(&self, identity: &str, msg: &Message) -> Learned {
        let learned = pairs_of(msg);
        for (addr, name) in &learned.pairs {
            self.learn(identity, *addr, name);
        }
        learned
    }

    /// Addresses known in all.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("names lock").names.len()
    }

    /// True when no name is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Table {
    fn remove(&mut self, seq: u64) {
        if let Some(key) = self.order.remove(&seq) {
            self.names.remove(&key);
            if let Some(n) = self.per_identity.get_mut(&key.0) {
                *n -= 1;
                if *n == 0 {
                    self.per_identity.remove(&key.0);
                }
            }
        }
    }
}

impl HostNames for NameTable {
    fn host_of(&self, identity: &str, addr: &str) -> Option<String> {
        let addr: IpAddr = addr.parse().ok()?;
        let t = self.inner.lock().expect("names lock");
        t.names
            .get(&(identity.to_string(), addr))
            .map(|(n, _)| n.clone())
    }
}

/// The (address, name) pairs a response teaches: for each question, the A/AAAA addresses that
/// answer it, following CNAME chains from the name asked.
pub fn pairs_of(msg: &Message) -> Learned {
    let mut out = Learned::default();
    if msg.metadata.message_type != MessageType::Response
        || msg.metadata.response_code != ResponseCode::NoError
    {
        return out;
    }
    for q in &msg.queries {
        let name = crate::policy::fqdn::normalise_name(&q.name.to_ascii());
        for (addr, _ttl) in crate::fqdn::chain_addresses(&name, msg) {
            if !out.pairs.iter().any(|(a, n)| *a == addr && *n == name) {
                out.pairs.push((addr, name.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn a(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    #[test]
    fn latest_answer_wins_and_identities_are_apart() {
        let t = NameTable::default();
        t.learn("x", a(1), "one.example");
        t.learn("x", a(1), "uno.example");
        t.learn("y", a(1), "other.example");
        assert_eq!(t.host_of("x", "10.0.0.1").as_deref(), Some("uno.example"));
        assert_eq!(t.host_of("y", "10.0.0.1").as_deref(), Some("other.example"));
        assert_eq!(t.host_of("z", "10.0.0.1"), None);
        assert_eq!(t.host_of("x", "not an address"), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn bounded_per_identity_oldest_first() {
        let t = NameTable::default();
        for i in 0..=MAX_PER_IDENTITY {
            let addr = IpAddr::V6(std::net::Ipv6Addr::from(i as u128 + 1));
            t.learn("x", addr, &format!("n{i}.example"));
        }
        t.learn("y", a(1), "y.example");
        assert_eq!(t.len(), MAX_PER_IDENTITY + 1);
        assert_eq!(t.host_of("x", "::1"), None, "the oldest address went");
        assert_eq!(t.host_of("x", "::2").as_deref(), Some("n1.example"));
        assert_eq!(t.host_of("y", "10.0.0.1").as_deref(), Some("y.example"));
    }
}
