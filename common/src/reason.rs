//! The reason-code table shared by the kernel, the metrics and the flow records. Codes are never
//! reused: a retired code stays reserved.

/// No reason (unused slot).
pub const NONE: u8 = 0;
/// Destination is a gateway endpoint of the identity.
pub const GATEWAY: u8 = 1;
/// Destination is allowed by a rule.
pub const RULE: u8 = 2;
/// Destination is allowed by a task-scoped grant.
pub const GRANT: u8 = 3;
/// Destination is neither a gateway nor allowed.
pub const NOT_GATEWAY: u8 = 4;
/// DNS (port 53) to a resolver that is not allowed.
pub const DNS_RESOLVER: u8 = 5;
/// Raw, packet or other non-IP socket refused at creation.
pub const RAW_SOCKET: u8 = 6;
/// A previously allowed flow lost its permission (policy change or revoke).
pub const REVOKED: u8 = 7;
/// A previously allowed flow's grant expired.
pub const EXPIRED: u8 = 8;
/// Internal error on an enforced identity: failed closed.
pub const INTERNAL: u8 = 9;
/// Packet could not be parsed on an enforced identity: failed closed.
pub const MALFORMED: u8 = 10;
/// Loopback destination not allowed by a rule.
pub const LOOPBACK: u8 = 11;
/// Link-local destination (e.g. cloud metadata) not allowed by a rule.
pub const LINK_LOCAL: u8 = 12;
/// Traffic on a connection a peer opened to the identity (accepted TCP, UDP reply).
pub const REPLY: u8 = 13;
/// A peer outside `ingress.allowFrom` tried to open a connection to the identity.
pub const INGRESS_DENIED: u8 = 14;
/// Destination learned for a `toFQDN` rule from the identity's own DNS answers.
pub const FQDN: u8 = 15;
/// Number of reason codes (array bound).
pub const COUNT: u8 = 16;

/// Name of a reason code as it appears in records and metrics.
pub const fn name(code: u8) -> &'static str {
    match code {
        GATEWAY => "gateway",
        RULE => "rule",
        GRANT => "grant",
        NOT_GATEWAY => "not_gateway",
        DNS_RESOLVER => "dns_resolver",
        RAW_SOCKET => "raw_socket",
        REVOKED => "revoked",
        EXPIRED => "expired",
        INTERNAL => "internal",
        MALFORMED => "malformed",
        LOOPBACK => "loopback",
        LINK_LOCAL => "link_local",
        REPLY => "reply",
        INGRESS_DENIED => "ingress_denied",
        FQDN => "fqdn",
        _ => "none",
    }
}
