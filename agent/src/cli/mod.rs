//! The command line (DESIGN.md §3): the daemon, and the CLI client of the local API.
//!
//! [`args`] holds the clap types, [`config`] merges flags, the `--config` file and defaults into
//! the daemon's [`Options`](crate::options::Options), [`commands`] runs the client commands
//! over the local API and [`render`] prints their results.

pub mod args;
pub mod commands;
pub mod config;
pub mod man;
pub mod render;

pub use args::{
    AuditCmd, Cli, Command, DaemonArgs, Format, LogFormat, OutputArgs, PolicyCmd, QueryArgs,
    VerdictArg,
};
pub use commands::{Exit, Usage, run_client};

/// Default local API socket.
pub const DEFAULT_SOCKET: &str = "/run/chokepoint/chokepoint.sock";
/// Default attestation socket.
pub const DEFAULT_ATTEST_SOCKET: &str = "/run/chokepoint/attest.sock";
