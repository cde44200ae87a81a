//! The daemon's options (from the command line or `--config`).

use std::{path::PathBuf, time::Duration};

/// Daemon options (from the command line or `--config`).
#[derive(Clone, Debug)]
pub struct Options {
    pub policy: Option<PathBuf>,
    pub cgroup_root: PathBuf,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub metrics_addr: String,
    pub audit_log: Option<PathBuf>,
    pub audit_log_max_bytes: u64,
    pub audit_log_keep: usize,
    /// Records between two signed checkpoints of the audit log.
    pub audit_checkpoint_every: u64,
    pub audit_stdout: bool,
    pub tc_ifaces: Vec<String>,
    pub alert_window: Duration,
    pub alert_log: Option<PathBuf>,
    pub alert_webhook: Option<String>,
    /// File with the HMAC-SHA256 secret that signs webhook bodies.
    pub alert_webhook_secret_file: Option<PathBuf>,
    /// PEM CA certificates for `https://` webhook receivers (instead of the system's roots).
    pub alert_webhook_ca: Option<PathBuf>,
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
