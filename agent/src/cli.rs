//! The command line (DESIGN.md §3): the daemon, and the CLI client of the local API.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::{Client, Request},
    policy::{CompiledPolicy, compile_source},
    util,
};

/// Default local API socket.
pub const DEFAULT_SOCKET: &str = "/run/chokepoint/chokepoint.sock";
/// Default attestation socket.
pub const DEFAULT_ATTEST_SOCKET: &str = "/run/chokepoint/attest.sock";

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
    audit_stdout: Option<bool>,
    #[serde(default)]
    tc_ifaces: Vec<String>,
    log_format: Option<LogFormat>,
    alert_window: Option<String>,
    alert_log: Option<PathBuf>,
    alert_webhook: Option<String>,
    attest_socket: Option<PathBuf>,
    attest_socket_mode: Option<String>,
    attest_group: Option<String>,
    attest_addr: Option<String>,
    dns_refresh: Option<String>,
}

impl DaemonArgs {
    /// Resolves flags, config file and defaults.
    pub fn resolve(self) -> anyhow::Result<(crate::daemon::Options, LogFormat)> {
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
        let mut tc = self.tc_iface;
        if tc.is_empty() {
            tc = cfg.tc_ifaces;
        }
        Ok((
            crate::daemon::Options {
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
                audit_stdout: self.audit_stdout || cfg.audit_stdout.unwrap_or(false),
                tc_ifaces: tc,
                alert_window: util::parse_duration(&window)
                    .map_err(|e| anyhow::anyhow!("--alert-window: {e}"))?,
                alert_log: self.alert_log.or(cfg.alert_log),
                alert_webhook: self.alert_webhook.or(cfg.alert_webhook),
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
            },
            self.log_format
                .or(cfg.log_format)
                .unwrap_or(LogFormat::Text),
        ))
    }
}

fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
}

async fn call(socket: &Path, req: Request) -> anyhow::Result<Value> {
    let mut c = Client::connect(socket).await?;
    Ok(c.call(&req).await?)
}

fn read_policy(file: &Path) -> anyhow::Result<(String, String)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.display().to_string();
    // The daemon validates and reports every problem with file, line and column; only what
    // cannot travel as a JSON string is checked here.
    if bytes.len() > crate::policy::compile::MAX_DOCUMENT_BYTES {
        // Same wording as the compiler's, without shipping the document first.
        return Err(anyhow::anyhow!(
            "{}",
            crate::policy::compile_source(&name, &bytes)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        ));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok((name, text)),
        Err(e) => Err(anyhow::anyhow!(
            "{}",
            crate::policy::compile_source(&name, e.as_bytes())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        )),
    }
}

fn flow_line(r: &Value) -> String {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    if r["verdict"] == "lost" {
        return format!(
            "{} LOST {} records ({})",
            s("time"),
            r["count"],
            s("reason")
        );
    }
    format!(
        "{} {:<5} {:<16} {:<12} {:<22} {:<10} pid={} comm={} gen={} rule={}",
        s("time"),
        s("verdict"),
        s("identity"),
        s("reason"),
        s("dst"),
        s("hook"),
        r.get("pid").map_or("-".into(), |v| v.to_string()),
        s("comm"),
        r["policy_generation"],
        s("rule"),
    )
}

fn alert_line(a: &Value) -> String {
    let s = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    format!(
        "{} ALERT {:<8} identity={} tenant={} dst={} reason={} count={} first={} last={}",
        s("time"),
        s("severity"),
        s("identity"),
        s("tenant"),
        s("dst"),
        s("reason"),
        a["count"],
        s("first_seen"),
        s("last_seen")
    )
}

/// Prints `flows`/`alerts` output: without `follow`, the entries the daemon returned (one JSON
/// document with `json`); with `follow`, each streamed entry as it arrives (one JSON object per
/// line with `json`).
async fn print_entries(
    c: &mut Client,
    first: Value,
    follow: bool,
    json: bool,
    human: fn(&Value) -> String,
) -> anyhow::Result<()> {
    if !follow {
        if json {
            println!(
                "{}",
                serde_json::to_string(&first).unwrap_or_else(|_| "[]".into())
            );
        } else {
            for e in first.as_array().cloned().unwrap_or_default() {
                println!("{}", human(&e));
            }
        }
        return Ok(());
    }
    while let Some(line) = c.next_line().await? {
        let mut out = std::io::stdout().lock();
        if json {
            let _ = writeln!(out, "{line}");
        } else {
            let e: Value = serde_json::from_str(&line).unwrap_or(json!({}));
            let _ = writeln!(out, "{}", human(&e));
        }
        let _ = out.flush();
    }
    Ok(())
}

/// Runs a client command.
pub async fn run_client(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Daemon(_) => unreachable!("handled in main"),
        Command::Uninstall { bpffs } => {
            let removed = crate::bpf::uninstall(&bpffs)
                .with_context(|| format!("removing pins under {}", bpffs.display()))?;
            println!(
                "removed {} pins under {}; enforcement stopped",
                removed.len(),
                bpffs.display()
            );
            Ok(())
        }
        Command::Policy { cmd } => match cmd {
            PolicyCmd::Validate { file } => {
                let bytes = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                match compile_source(&file.display().to_string(), &bytes) {
                    Ok(p) => {
                        println!(
                            "{}: valid ({} identities, {} gateways, {} destination prefixes, {})",
                            file.display(),
                            p.identities.len(),
                            p.gateways.len(),
                            p.prefix_count(),
                            p.digest
                        );
                        Ok(())
                    }
                    Err(e) => bail!("{e}"),
                }
            }
            PolicyCmd::Apply { file, json, socket } => {
                let (name, source) = read_policy(&file)?;
                let r = call(&socket, Request::PolicyApply { file: name, source }).await?;
                if json {
                    print_json(&r);
                } else {
                    println!(
                        "generation {} active ({})",
                        r["generation"],
                        r["digest"].as_str().unwrap_or("")
                    );
                }
                Ok(())
            }
            PolicyCmd::Show { json, socket } => {
                let r = call(&socket, Request::PolicyShow).await?;
                if json {
                    print_json(&r);
                } else {
                    println!(
                        "# generation {} — {} ({})",
                        r["generation"],
                        r["name"].as_str().unwrap_or(""),
                        r["digest"].as_str().unwrap_or("")
                    );
                    print!("{}", r["source"].as_str().unwrap_or(""));
                }
                Ok(())
            }
            PolicyCmd::Diff { file, json, socket } => {
                let (name, source) = read_policy(&file)?;
                let r = call(&socket, Request::PolicyDiff { file: name, source }).await?;
                if json {
                    print_json(&r);
                } else {
                    let changes = r["changes"].as_array().cloned().unwrap_or_default();
                    if changes.is_empty() {
                        println!("no changes");
                    }
                    for c in changes {
                        println!("{}", c.as_str().unwrap_or(""));
                    }
                }
                Ok(())
            }
            PolicyCmd::History { json, socket } => {
                let r = call(&socket, Request::PolicyHistory).await?;
                if json {
                    print_json(&r);
                } else {
                    for m in r["history"].as_array().cloned().unwrap_or_default() {
                        let active = if m["generation"] == r["generation"] {
                            "*"
                        } else {
                            " "
                        };
                        println!(
                            "{active} {:>4}  {}  {:<20} {}  uid={}",
                            m["generation"],
                            m["applied_at"].as_str().unwrap_or(""),
                            m["action"].as_str().unwrap_or(""),
                            m["digest"].as_str().unwrap_or(""),
                            m["by_uid"]
                        );
                    }
                }
                Ok(())
            }
            PolicyCmd::Rollback {
                generation,
                json,
                socket,
            } => {
                let r = call(&socket, Request::PolicyRollback { generation }).await?;
                if json {
                    print_json(&r);
                } else {
                    println!(
                        "generation {} active (restored generation {})",
                        r["generation"], r["restored"]
                    );
                }
                Ok(())
            }
        },
        Command::Status { json, socket } => {
            let r = call(&socket, Request::Status).await?;
            if json {
                print_json(&r);
            } else {
                println!("health:      {}", r["health"].as_str().unwrap_or(""));
                println!(
                    "generation:  {} ({})",
                    r["generation"],
                    r["policy"]["digest"].as_str().unwrap_or("")
                );
                for p in r["programs"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "program:     {:<22} {}",
                        p["program"].as_str().unwrap_or(""),
                        if p["attached"] == true {
                            "attached"
                        } else {
                            "NOT ATTACHED"
                        }
                    );
                }
                for i in r["identities"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "identity:    {:<22} {}",
                        i["name"].as_str().unwrap_or(""),
                        if i["enforcing"] == true {
                            "enforcing"
                        } else {
                            "NOT ENFORCING"
                        }
                    );
                }
                for p in r["problems"].as_array().cloned().unwrap_or_default() {
                    println!("problem:     {}", p.as_str().unwrap_or(""));
                }
                println!(
                    "records:     {} delivered, {} lost",
                    r["records"]["delivered"], r["records"]["lost"]
                );
            }
            Ok(())
        }
        Command::Identities { json, socket } => {
            let r = call(&socket, Request::Identities).await?;
            if json {
                print_json(&r);
            } else {
                for i in r["identities"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "{:<20} tenant={:<10} mode={:<8} cgroup={} cgroups={} enforcing={}",
                        i["name"].as_str().unwrap_or(""),
                        i["tenant"].as_str().unwrap_or("-"),
                        i["mode"].as_str().unwrap_or(""),
                        i["selector"]["cgroupPath"].as_str().unwrap_or(""),
                        i["cgroups"],
                        i["enforcing"]
                    );
                }
            }
            Ok(())
        }
        Command::Flows {
            follow,
            identity,
            verdict,
            json,
            socket,
        } => {
            let verdict = verdict.map(|v| format!("{v:?}").to_lowercase());
            let mut c = Client::connect(&socket).await?;
            let r = c
                .call(&Request::Flows {
                    follow,
                    identity,
                    verdict,
                })
                .await?;
            print_entries(&mut c, r, follow, json, flow_line).await
        }
        Command::Alerts {
            follow,
            json,
            socket,
        } => {
            let mut c = Client::connect(&socket).await?;
            let r = c.call(&Request::Alerts { follow }).await?;
            print_entries(&mut c, r, follow, json, alert_line).await
        }
        Command::Grant {
            identity,
            to,
            ttl,
            task,
            json,
            socket,
        } => {
            let ttl: Duration =
                util::parse_duration(&ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            let r = call(
                &socket,
                Request::Grant {
                    identity,
                    to,
                    ttl_secs: ttl.as_secs().max(1),
                    task,
                },
            )
            .await?;
            if json {
                print_json(&r);
            } else {
                println!(
                    "granted task {} {} → {} until {}",
                    r["task"].as_str().unwrap_or(""),
                    r["identity"].as_str().unwrap_or(""),
                    r["to"].as_str().unwrap_or(""),
                    r["expires_at"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Attest {
            peer,
            local,
            json,
            socket,
        } => {
            let r = call(&socket, Request::Attest { peer, local }).await?;
            if json {
                print_json(&r);
            } else {
                println!(
                    "identity={} tenant={} task={} pid={} cgroup={} since={} generation={} cookie={}",
                    r["identity"].as_str().unwrap_or("-"),
                    r["tenant"].as_str().unwrap_or("-"),
                    r["task"].as_str().unwrap_or("-"),
                    r["pid"],
                    r["cgroup"].as_str().unwrap_or("-"),
                    r["since"].as_str().unwrap_or("-"),
                    r["policy_generation"],
                    r["socket_cookie"]
                );
            }
            Ok(())
        }
        Command::Revoke { task, json, socket } => {
            let r = call(&socket, Request::Revoke { task }).await?;
            if json {
                print_json(&r);
            } else {
                println!(
                    "revoked {} grants of task {}",
                    r["revoked"],
                    r["task"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
    }
}

/// What changes between the active policy and a candidate.
pub fn diff_policies(old: &CompiledPolicy, new: &CompiledPolicy) -> Value {
    let mut changes = Vec::new();
    for g in &new.gateways {
        if !old.gateways.contains(g) {
            changes.push(format!("+ gateway {g}"));
        }
    }
    for g in &old.gateways {
        if !new.gateways.contains(g) {
            changes.push(format!("- gateway {g}"));
        }
    }
    for n in &new.identities {
        match old.identities.iter().find(|o| o.name == n.name) {
            None => changes.push(format!(
                "+ identity {} (/{}, {:?})",
                n.name, n.cgroup_path, n.mode
            )),
            Some(o) => {
                if o.mode != n.mode {
                    changes.push(format!(
                        "~ identity {}: mode {:?} → {:?}",
                        n.name, o.mode, n.mode
                    ));
                }
                if o.cgroup_path != n.cgroup_path {
                    changes.push(format!(
                        "~ identity {}: cgroupPath /{} → /{}",
                        n.name, o.cgroup_path, n.cgroup_path
                    ));
                }
                if o.tenant != n.tenant {
                    changes.push(format!(
                        "~ identity {}: tenant {:?} → {:?}",
                        n.name, o.tenant, n.tenant
                    ));
                }
                for (c, e) in &n.entries {
                    match o.entries.get(c) {
                        None => changes.push(format!("~ identity {}: + destination {c}", n.name)),
                        Some(oe) if oe != e => {
                            changes.push(format!("~ identity {}: ports changed at {c}", n.name))
                        }
                        _ => {}
                    }
                }
                for c in o.entries.keys() {
                    if !n.entries.contains_key(c) {
                        changes.push(format!("~ identity {}: - destination {c}", n.name));
                    }
                }
            }
        }
    }
    for o in &old.identities {
        if !new.identities.iter().any(|n| n.name == o.name) {
            changes.push(format!("- identity {}", o.name));
        }
    }
    json!({"from_digest": old.digest, "to_digest": new.digest, "changes": changes})
}
