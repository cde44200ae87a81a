//! Policy documents: parse, validate (every problem with file, line, column and field), and
//! compile into the entries of one kernel generation.

pub mod compile;
pub mod diff;
pub mod fqdn;
pub mod model;
pub mod parse;

pub use compile::{CompiledPolicy, compile_source, compile_source_with};
