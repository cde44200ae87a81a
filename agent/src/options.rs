//! The daemon's options (from the command line or `--config`).

use std::{path::PathBuf, time::Duration};

/// Daemon options (from the command line or `--config`).
#[derive(Clone, Debug)]
pub struct Options {
    /// Policy to apply at start when it differs from the active generation.
    pub policy: Option<PathBuf>,
    /// The cgroup v2 root.
    pub cgroup_root: PathBuf,
    /// bpffs directory of the pins.
    pub bpffs: PathBuf,
    /// State directory: generations, grants, the audit signing key, the inventory.
    pub state_dir: PathBuf,
    /// The local API socket.
    pub socket: PathBuf,
    /// Address the Prometheus metrics are served on.
    pub metrics_addr: String,
    /// JSON lines file of the audit trail, if any.
    pub audit_log: Option<PathBuf>,
    /// Size in bytes at which the audit log is rotated.
    pub audit_log_max_bytes: u64,
    /// Rotated audit log files kept.
    pub audit_log_keep: usize,
    /// Records between two signed checkpoints of the audit log.
    pub audit_checkpoint_every: u64,
    /// Also print every flow record to stdout.
    pub audit_stdout: bool,
    /// Interfaces of the TC backstop (`IFACE`, `IFACE:egress` or `IFACE:ingress`).
    pub tc_ifaces: Vec<String>,
    /// `--tc-mode`: how the TC backstop attaches (`None`: tcx where the kernel has it, else clsact).
    pub tc_mode: Option<crate::bpf::tc::TcMode>,
    /// Alert deduplication window.
    pub alert_window: Duration,
    /// JSON lines file of alerts, if any.
    pub alert_log: Option<PathBuf>,
    /// URL each alert is POSTed to as JSON, if any.
    pub alert_webhook: Option<String>,
    /// File with the HMAC-SHA256 secret that signs webhook bodies.
    pub alert_webhook_secret_file: Option<PathBuf>,
    /// PEM CA certificates for `https://` webhook receivers (instead of the system's roots).
    pub alert_webhook_ca: Option<PathBuf>,
    /// Flow records kept in memory for `chokepoint flows`.
    pub flow_buffer: usize,
    /// The gateways' read-only attestation socket.
    pub attest_socket: PathBuf,
    /// Its mode (default 0660).
    pub attest_socket_mode: u32,
    /// Its group (gateways run in it), if any.
    pub attest_group: Option<String>,
    /// Optional loopback HTTP address for the attestation endpoint.
    pub attest_addr: Option<String>,
    /// How often gateway host names are re-resolved.
    pub dns_refresh: Duration,
    /// `toFQDN` rules: DNS proxy and learning.
    pub fqdn: crate::fqdn::cli::FqdnOptions,
    /// Kubernetes: pod identities from the API server, policy from an `EgressPolicy`.
    pub kube: Option<crate::k8s::KubeOptions>,
}
