//! The command line (DESIGN.md §3): the daemon, and the CLI client of the local API.
//!
//! [`args`] holds the clap types of the commands and [`daemon_args`] the daemon's flags;
//! [`config`] merges flags, the `--config` file and defaults into the daemon's
//! [`Options`](crate::options::Options); [`commands`] and [`policy`] run the client commands over
//! the local API (typed requests and results from [`crate::api`]) and [`render`] prints their
//! results; [`man`] writes the man pages. The CLI reaches the kernel only through the API, or
//! through [`crate::bpf::pins`] for `uninstall`.

pub mod args;
pub mod commands;
pub mod config;
pub mod daemon_args;
pub mod man;
pub mod policy;
pub mod render;

pub use args::{AuditCmd, Cli, Command, Format, OutputArgs, PolicyCmd, QueryArgs, VerdictArg};
pub use commands::{Exit, Usage, run_client};
pub use daemon_args::{DaemonArgs, LogFormat};

/// Default local API socket.
pub const DEFAULT_SOCKET: &str = "/run/chokepoint/chokepoint.sock";
/// Default attestation socket.
pub const DEFAULT_ATTEST_SOCKET: &str = "/run/chokepoint/attest.sock";
