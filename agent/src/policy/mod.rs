//! Policy documents: parse, validate (every problem with file, line, column and field), and
//! compile into the entries of one kernel generation.
//!
//! [`model`] is the document, [`parse`] its scalar forms (CIDRs, ports, endpoints), [`compile`]
//! the entry point that validates and lowers it with [`gateways`], [`identity`], [`selector`],
//! [`address_set`] and [`defaults`]; [`compiled`] is the result and [`error`] its problems;
//! [`diff`] compares two compiled policies.

mod address_set;
pub mod compile;
pub mod compiled;
mod defaults;
pub mod diff;
pub mod error;
pub mod fqdn;
mod gateways;
mod identity;
pub mod model;
pub mod parse;
mod selector;

pub use compile::{CompiledPolicy, compile_source, compile_source_with};
