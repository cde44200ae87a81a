//! Bypass alerts: one alert per (identity, pod, destination, reason) per window ([`dedup`]),
//! sent to the log, a JSON lines file, subscribers (the daemon's pipeline) and an optional
//! [`webhook`].

pub mod dedup;
pub mod webhook;

pub use dedup::{Alert, Deduper, severity};
pub use webhook::{Webhook, WebhookStats, webhook_task};
