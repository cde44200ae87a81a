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
pub use daemon_args::{DaemonArgs, LogFormat, TcModeArg};

/// Default local API socket.
pub const DEFAULT_SOCKET: &str = "/run/chokepoint/chokepoint.sock";
/// Default attestation socket.
pub const DEFAULT_ATTEST_SOCKET: &str = "/run/chokepoint/attest.sock";

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every command, at every level, has an example in its help, and every flag and positional
    /// argument has help text (the generated help, man page and completions show it).
    #[test]
    fn every_command_has_an_example_and_every_argument_help() {
        fn walk(cmd: &clap::Command, path: &str, problems: &mut Vec<String>) {
            let here = format!("{path} {}", cmd.get_name()).trim().to_string();
            if !cmd
                .get_after_help()
                .is_some_and(|h| h.to_string().contains("Example"))
            {
                problems.push(format!("`{here}`: no example"));
            }
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    problems.push(format!("`{here}`: argument `{id}` has no help"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &here, problems);
                }
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut problems = Vec::new();
        walk(&cmd, "", &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
