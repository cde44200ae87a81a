//! Kind of a destination entry.

/// A gateway endpoint.
pub const GATEWAY: u8 = 1;
/// An allow rule.
pub const RULE: u8 = 2;
/// An `ingress.allowFrom` source (in the ingress key space of the rules trie).
pub const INGRESS: u8 = 3;
