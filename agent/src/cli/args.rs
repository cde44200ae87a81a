//! The clap types: commands, subcommands and the daemon's flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use super::DEFAULT_SOCKET;

/// Chokepoint: makes the sanctioned AI/API gateway the only way out for AI-agent workloads.
#[derive(Parser, Debug)]
#[command(name = "chokepoint", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load and attach the kernel programs, apply policy, serve the API and metrics.
    Daemon(Box<DaemonArgs>),
    /// Validate, apply, show, diff, list and roll back policy.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Programs attached, generation, mode per identity, health.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Identities and the cgroups they currently cover.
    Identities {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Flow records: the most recent, or a live stream with --follow.
    Flows {
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        identity: Option<String>,
        #[arg(long, value_enum)]
        verdict: Option<VerdictArg>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Bypass alerts: the most recent, or a live stream with --follow.
    Alerts {
        #[arg(long)]
        follow: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Grant a task a destination for a limited time (checked in the kernel).
    Grant {
        #[arg(long)]
        identity: String,
        /// HOST_OR_CIDR:PORT[/PROTO], e.g. 10.0.0.5:443/tcp or [fd00::/64]:443
        #[arg(long)]
        to: String,
        /// 30s, 10m, 2h
        #[arg(long)]
        ttl: String,
        #[arg(long)]
        task: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Remove every grant of a task and cut its established connections.
    Revoke {
        #[arg(long)]
        task: String,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Which identity, tenant and task is behind a live gateway connection.
    Attest {
        /// The client's address as the gateway sees it.
        #[arg(long)]
        peer: String,
        /// The gateway endpoint's address.
        #[arg(long)]
        local: String,
        #[arg(long)]
        json: bool,
        /// The admin API socket.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Detach and unpin everything: the only way enforcement stops.
    Uninstall {
        #[arg(long, default_value = "/sys/fs/bpf/chokepoint")]
        bpffs: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum VerdictArg {
    Allow,
    Deny,
    Audit,
    Lost,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Exit 0, or print every problem as file:line:col: field: message.
    Validate { file: PathBuf },
    /// Validate, compile, switch atomically, print the new generation.
    Apply {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// The active policy and its generation.
    Show {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// What applying FILE would change.
    Diff {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Every applied generation.
    History {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Re-apply GENERATION (default: the one before the active one) as a new generation.
    Rollback {
        generation: Option<u32>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// YAML file with any of the daemon's options (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Policy to apply at start when it differs from the active generation.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// cgroup v2 root (default: detected from /proc/self/mountinfo).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[arg(long)]
    pub socket: Option<PathBuf>,
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// JSON lines file of flow records (rotated by size).
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    #[arg(long)]
    pub audit_log_max_bytes: Option<u64>,
    #[arg(long)]
    pub audit_log_keep: Option<usize>,
    /// Also print every flow record to stdout.
    #[arg(long)]
    pub audit_stdout: bool,
    /// Interface for the TC backstop (repeatable). `IFACE` or `IFACE:egress` attaches at egress
    /// (node uplinks); `IFACE:ingress` at ingress (the host side of a pod's veth, where the pod's
    /// packets arrive before the node routes them).
    #[arg(long = "tc-iface")]
    pub tc_iface: Vec<String>,
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Alert deduplication window (e.g. 5s).
    #[arg(long)]
    pub alert_window: Option<String>,
    /// JSON lines file of alerts.
    #[arg(long)]
    pub alert_log: Option<PathBuf>,
    /// http:// URL that receives each alert as a JSON POST.
    #[arg(long)]
    pub alert_webhook: Option<String>,
    /// Unix socket of the read-only attestation endpoint for gateways.
    #[arg(long)]
    pub attest_socket: Option<PathBuf>,
    /// Octal mode of the attestation socket (default 0660).
    #[arg(long)]
    pub attest_socket_mode: Option<String>,
    /// Group that owns the attestation socket (the gateway's group).
    #[arg(long)]
    pub attest_group: Option<String>,
    /// Also serve attestation over HTTP on this address (keep it on loopback).
    #[arg(long)]
    pub attest_addr: Option<String>,
    /// How often gateway host names are re-resolved (default 30s; old addresses stay allowed for
    /// 10 minutes after they leave the answer).
    #[arg(long)]
    pub dns_refresh: Option<String>,
}
