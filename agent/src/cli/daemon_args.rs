//! The daemon's flags (`chokepoint daemon …`); [`config`](super::config) merges them with the
//! `--config` file and the defaults.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Log output format of the daemon.
#[derive(Clone, Copy, Debug, ValueEnum, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// How the TC programs attach (`--tc-mode`).
#[derive(Clone, Copy, Debug, ValueEnum, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TcModeArg {
    /// tcx links where the kernel has them (Linux 6.6+), else a clsact qdisc with a
    /// direct-action filter.
    Auto,
    /// tcx links only: no clsact fallback.
    Tcx,
    /// A clsact qdisc with a direct-action filter, also where tcx exists.
    Clsact,
}

impl TcModeArg {
    /// The mode forced (`None`: detected).
    pub fn forced(self) -> Option<crate::bpf::tc::TcMode> {
        match self {
            Self::Auto => None,
            Self::Tcx => Some(crate::bpf::tc::TcMode::Tcx),
            Self::Clsact => Some(crate::bpf::tc::TcMode::Clsact),
        }
    }
}

/// `chokepoint daemon`: every flag of the daemon.
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
    /// bpffs directory for pins (default /sys/fs/bpf/chokepoint).
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// State directory: generations, grants, the audit signing key, the inventory (default
    /// /var/lib/chokepoint).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Set from the global `--socket` (and `CHOKEPOINT_SOCKET`).
    #[arg(skip)]
    pub socket: Option<PathBuf>,
    /// Prometheus metrics address (default 127.0.0.1:9477).
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// JSON lines file of flow records (rotated by size).
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Rotate the audit log at this size (default 64 MiB).
    #[arg(long)]
    pub audit_log_max_bytes: Option<u64>,
    /// Rotated audit log files kept (default 5).
    #[arg(long)]
    pub audit_log_keep: Option<usize>,
    /// Records between two signed checkpoints of the audit log (default 1000).
    #[arg(long, value_name = "N")]
    pub audit_checkpoint_every: Option<u64>,
    /// Also print every flow record to stdout.
    #[arg(long)]
    pub audit_stdout: bool,
    /// Interface for the TC backstop (repeatable). `IFACE` or `IFACE:egress` attaches at egress
    /// (node uplinks); `IFACE:ingress` at ingress (the host side of a pod's veth, where the pod's
    /// packets arrive before the node routes them).
    #[arg(long = "tc-iface")]
    pub tc_iface: Vec<String>,
    /// How the TC backstop (`--tc-iface` and the per-netns one) attaches: `auto` (default: tcx
    /// where the kernel has it, Linux 6.6+, else a clsact qdisc with a direct-action filter),
    /// `tcx`, or `clsact` (also where tcx exists).
    #[arg(long, value_enum, value_name = "MODE")]
    pub tc_mode: Option<TcModeArg>,
    /// Daemon log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Alert deduplication window (e.g. 5s).
    #[arg(long)]
    pub alert_window: Option<String>,
    /// JSON lines file of alerts.
    #[arg(long)]
    pub alert_log: Option<PathBuf>,
    /// http:// or https:// URL that receives each alert as a JSON POST.
    #[arg(long)]
    pub alert_webhook: Option<String>,
    /// File holding a secret: each webhook body is signed with HMAC-SHA256 in the
    /// `X-Chokepoint-Signature-256: sha256=<hex>` header.
    #[arg(long, value_name = "FILE")]
    pub alert_webhook_secret_file: Option<PathBuf>,
    /// PEM file of the CA certificates an https:// webhook receiver is checked against (instead
    /// of the system's roots).
    #[arg(long, value_name = "FILE")]
    pub alert_webhook_ca: Option<PathBuf>,
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
    /// The `toFQDN` options.
    #[command(flatten)]
    pub fqdn: crate::fqdn::cli::FqdnArgs,
    /// Kubernetes: resolve `selector.pod` from the API server (a watcher of this node's pods and
    /// of namespaces; credentials from KUBECONFIG or the pod's ServiceAccount).
    #[arg(long)]
    pub kube: bool,
    /// This node's name (default: $NODE_NAME, else the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Apply the cluster-scoped `EgressPolicy` of this name, following its changes (implies
    /// --kube).
    #[arg(long)]
    pub kube_policy: Option<String>,
    /// Kubelet `--cgroup-root` under which pod cgroups live (repeatable; default `/` and kind's
    /// `/kubelet`).
    #[arg(long)]
    pub kube_cgroup_prefix: Vec<String>,
}
