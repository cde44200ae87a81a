//! Verdicts carried in records and counters.

/// Allowed.
pub const ALLOW: u8 = 1;
/// Denied.
pub const DENY: u8 = 2;
/// Would have been denied; let through because the identity is in audit mode.
pub const AUDIT: u8 = 3;
/// Number of verdict codes (array bound).
pub const COUNT: u8 = 4;
