//! Flow records and the audit log: [`record`] (schema, enrichment of kernel events), [`sink`]
//! (the one writer of the audit log: `event` field, per-line transform, fsync task) and [`file`]
//! (the JSON lines file with size-based rotation).

pub mod chain;
pub mod file;
pub mod keys;
pub mod record;
pub mod sink;
pub mod verify;

pub use file::JsonLines;
pub use record::{FlowRecord, Names, SCHEMA_VERSION, enrich, lost_record, verdict_name};
pub use sink::{AuditEvent, AuditSink, Transform, append_field};

/// A record with the schema version in front (for records whose type has no `schema` field).
#[derive(serde::Serialize)]
pub struct Versioned<'a, T: serde::Serialize> {
    /// The record schema version.
    pub schema: u32,
    /// The record, its fields after `schema`.
    #[serde(flatten)]
    pub record: &'a T,
}
