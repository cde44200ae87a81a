//! Daemon options from flags, the `--config` file and defaults (flags win).

use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;

use super::{DEFAULT_ATTEST_SOCKET, DEFAULT_SOCKET, DaemonArgs, LogFormat, TcModeArg};
use crate::{options::Options, util};

/// `--config` file: the same options as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigFile {
    policy: Option<PathBuf>,
    cgroup_root: Option<PathBuf>,
    bpffs: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    metrics_addr: Option<String>,
    audit_log: Option<PathBuf>,
    audit_log_max_bytes: Option<u64>,
    audit_log_keep: Option<usize>,
    audit_checkpoint_every: Option<u64>,
    audit_stdout: Option<bool>,
    #[serde(default)]
    tc_ifaces: Vec<String>,
    tc_mode: Option<TcModeArg>,
    log_format: Option<LogFormat>,
    alert_window: Option<String>,
    alert_log: Option<PathBuf>,
    alert_webhook: Option<String>,
    alert_webhook_secret_file: Option<PathBuf>,
    alert_webhook_ca: Option<PathBuf>,
    attest_socket: Option<PathBuf>,
    attest_socket_mode: Option<String>,
    attest_group: Option<String>,
    attest_addr: Option<String>,
    dns_refresh: Option<String>,
    kube: Option<bool>,
    node_name: Option<String>,
    kube_policy: Option<String>,
    #[serde(default)]
    kube_cgroup_prefixes: Vec<String>,
}

impl DaemonArgs {
    /// Resolves flags, config file and defaults.
    pub fn resolve(self) -> anyhow::Result<(Options, LogFormat)> {
        let cfg: ConfigFile = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                serde_saphyr::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            }
            None => ConfigFile::default(),
        };
        let cgroup_root = match self.cgroup_root.or(cfg.cgroup_root) {
            Some(p) => p,
            None => crate::cgroup::detect_root()
                .context("no cgroup v2 mount found in /proc/self/mountinfo; pass --cgroup-root")?,
        };
        let window = self
            .alert_window
            .or(cfg.alert_window)
            .unwrap_or_else(|| "5s".into());
        let kube_policy = self.kube_policy.or(cfg.kube_policy);
        let kube = (self.kube || cfg.kube.unwrap_or(false) || kube_policy.is_some()).then(|| {
            let mut prefixes = self.kube_cgroup_prefix;
            if prefixes.is_empty() {
                prefixes = cfg.kube_cgroup_prefixes;
            }
            crate::k8s::KubeOptions {
                node_name: self
                    .node_name
                    .or(cfg.node_name)
                    .unwrap_or_else(util::node_name),
                policy: kube_policy,
                cgroup_prefixes: if prefixes.is_empty() {
                    crate::k8s::default_prefixes()
                } else {
                    prefixes
                        .iter()
                        .map(|p| {
                            p.split('/')
                                .filter(|c| !c.is_empty())
                                .map(str::to_string)
                                .collect()
                        })
                        .collect()
                },
            }
        });
        let mut tc = self.tc_iface;
        if tc.is_empty() {
            tc = cfg.tc_ifaces;
        }
        Ok((
            Options {
                policy: self.policy.or(cfg.policy),
                cgroup_root,
                bpffs: self
                    .bpffs
                    .or(cfg.bpffs)
                    .unwrap_or_else(|| "/sys/fs/bpf/chokepoint".into()),
                state_dir: self
                    .state_dir
                    .or(cfg.state_dir)
                    .unwrap_or_else(|| "/var/lib/chokepoint".into()),
                socket: self
                    .socket
                    .or(cfg.socket)
                    .unwrap_or_else(|| DEFAULT_SOCKET.into()),
                metrics_addr: self
                    .metrics_addr
                    .or(cfg.metrics_addr)
                    .unwrap_or_else(|| "127.0.0.1:9477".into()),
                audit_log: self.audit_log.or(cfg.audit_log),
                audit_log_max_bytes: self
                    .audit_log_max_bytes
                    .or(cfg.audit_log_max_bytes)
                    .unwrap_or(64 << 20),
                audit_log_keep: self.audit_log_keep.or(cfg.audit_log_keep).unwrap_or(5),
                audit_checkpoint_every: self
                    .audit_checkpoint_every
                    .or(cfg.audit_checkpoint_every)
                    .unwrap_or(crate::audit::chain::DEFAULT_CHECKPOINT_EVERY)
                    .max(1),
                audit_stdout: self.audit_stdout || cfg.audit_stdout.unwrap_or(false),
                tc_ifaces: tc,
                tc_mode: self.tc_mode.or(cfg.tc_mode).and_then(TcModeArg::forced),
                alert_window: util::parse_duration(&window)
                    .map_err(|e| anyhow::anyhow!("--alert-window: {e}"))?,
                alert_log: self.alert_log.or(cfg.alert_log),
                alert_webhook: self.alert_webhook.or(cfg.alert_webhook),
                alert_webhook_secret_file: self
                    .alert_webhook_secret_file
                    .or(cfg.alert_webhook_secret_file),
                alert_webhook_ca: self.alert_webhook_ca.or(cfg.alert_webhook_ca),
                flow_buffer: 10_000,
                attest_socket: self
                    .attest_socket
                    .or(cfg.attest_socket)
                    .unwrap_or_else(|| DEFAULT_ATTEST_SOCKET.into()),
                attest_socket_mode: match self.attest_socket_mode.or(cfg.attest_socket_mode) {
                    Some(m) => {
                        u32::from_str_radix(m.trim_start_matches("0o"), 8).map_err(|_| {
                            anyhow::anyhow!("--attest-socket-mode `{m}` is not an octal mode")
                        })?
                    }
                    None => 0o660,
                },
                attest_group: self.attest_group.or(cfg.attest_group),
                attest_addr: self.attest_addr.or(cfg.attest_addr),
                dns_refresh: util::parse_duration(
                    &self
                        .dns_refresh
                        .or(cfg.dns_refresh)
                        .unwrap_or_else(|| "30s".into()),
                )
                .map_err(|e| anyhow::anyhow!("--dns-refresh: {e}"))?,
                fqdn: self.fqdn.resolve()?,
                kube,
            },
            self.log_format
                .or(cfg.log_format)
                .unwrap_or(LogFormat::Text),
        ))
    }
}
