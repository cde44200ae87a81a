//! Flow records and the audit log: [`record`] (schema, enrichment of kernel events) and [`sink`]
//! (the JSON lines file with size-based rotation).

pub mod record;
pub mod sink;

pub use record::{FlowRecord, Names, SCHEMA_VERSION, enrich, lost_record, verdict_name};
pub use sink::JsonLines;
