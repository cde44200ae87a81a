//! The clap types of the command line: commands, subcommands and their shared arguments (the
//! daemon's flags are in [`daemon_args`](super::daemon_args)).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::DaemonArgs;

/// Chokepoint: makes the sanctioned AI/API gateway the only way out for AI-agent workloads.
#[derive(Parser, Debug)]
#[command(
    name = "chokepoint",
    version,
    about,
    long_about = None,
    after_help = "Example:\n  chokepoint status\n  chokepoint --socket /run/chokepoint/chokepoint.sock flows --verdict deny --since 10m\n\nExit codes: 0 ok, 1 failure (or `policy diff` with changes, `audit verify` on tampering), 2 usage error. See docs/cli.md."
)]
pub struct Cli {
    /// The daemon's local API socket (also `CHOKEPOINT_SOCKET`; default
    /// /run/chokepoint/chokepoint.sock). Accepted before or after the subcommand.
    #[arg(long, global = true, env = "CHOKEPOINT_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The subcommand.
    #[command(subcommand)]
    pub cmd: Command,
}

/// Output format of read commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON document (an array for lists).
    Json,
    /// One compact JSON object per line.
    Jsonl,
}

/// `-o text|json|jsonl` and its alias `--json`.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    pub output: Option<Format>,
    /// Same as `-o json`.
    #[arg(long, conflicts_with = "output")]
    pub json: bool,
}

impl OutputArgs {
    /// The chosen format (text by default).
    pub fn format(self) -> Format {
        match (self.output, self.json) {
            (Some(f), _) => f,
            (None, true) => Format::Json,
            (None, false) => Format::Text,
        }
    }
}

/// The filters of `flows` and `alerts`, applied by the daemon.
#[derive(Args, Debug, Clone, Default)]
pub struct QueryArgs {
    /// Only entries at or after this time: a duration back from now (30s, 10m, 2h) or RFC 3339.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only entries at or before this time (as --since; not with --follow).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only the most recent N matching entries (with --follow: printed before the live stream).
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Only this identity.
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// Only this tenant.
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
    /// Only this task (the task id of a grant).
    #[arg(long, value_name = "ID")]
    pub task: Option<String>,
    /// Only this reason (not_gateway, dns_resolver, raw_socket, gateway, rule, grant, …).
    #[arg(long, value_name = "REASON")]
    pub reason: Option<String>,
    /// Only destinations in CIDR, optionally on PORT: 10.0.0.0/8, 10.0.0.5:443, [fd00::/64]:443.
    #[arg(long, value_name = "CIDR[:PORT]")]
    pub dst: Option<String>,
    /// Only this verdict.
    #[arg(long, value_enum)]
    pub verdict: Option<VerdictArg>,
    /// Only this Kubernetes namespace (records of pod identities).
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only this pod (records of pod identities).
    #[arg(long, value_name = "POD")]
    pub pod: Option<String>,
}

impl QueryArgs {
    /// The wire form.
    pub fn query(&self) -> crate::query::Query {
        crate::query::Query {
            since: self.since.clone(),
            until: self.until.clone(),
            last: self.last,
            identity: self.identity.clone(),
            tenant: self.tenant.clone(),
            task: self.task.clone(),
            reason: self.reason.clone(),
            dst: self.dst.clone(),
            verdict: self.verdict.map(|v| v.name().to_string()),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
        }
    }
}

/// The subcommands of `chokepoint`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load and attach the kernel programs, apply policy, serve the API and metrics.
    #[command(
        after_help = "Example:\n  chokepoint daemon --policy /etc/chokepoint/policy.yaml --audit-log /var/log/chokepoint/audit.jsonl"
    )]
    Daemon(Box<DaemonArgs>),
    /// Validate, apply, show, diff, list and roll back policy.
    #[command(after_help = "Example:\n  chokepoint policy apply policy.yaml")]
    Policy {
        /// The policy subcommand.
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Programs attached, generation, mode per identity, health.
    #[command(after_help = "Example:\n  chokepoint status -o json")]
    Status {
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Identities and the cgroups they currently cover.
    #[command(after_help = "Example:\n  chokepoint identities -o json")]
    Identities {
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Flow records: the most recent the daemon holds, or a live stream with --follow.
    #[command(
        after_help = "Example:\n  chokepoint flows --identity research-agent --verdict deny --since 10m\n  chokepoint flows --dst 10.0.0.0/8:443 --last 20 -o jsonl\n  chokepoint flows --follow --reason dns_resolver"
    )]
    Flows {
        /// Stream new records as they arrive (a `lost` line reports any the stream missed).
        #[arg(long)]
        follow: bool,
        /// Which records.
        #[command(flatten)]
        query: QueryArgs,
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Bypass alerts: the most recent the daemon holds, or a live stream with --follow.
    #[command(
        after_help = "Example:\n  chokepoint alerts --since 1h --reason raw_socket\n  chokepoint alerts --follow -o jsonl"
    )]
    Alerts {
        /// Stream new alerts as they are raised (a `lost` line reports any the stream missed).
        #[arg(long)]
        follow: bool,
        /// Which alerts.
        #[command(flatten)]
        query: QueryArgs,
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Grant a task a destination for a limited time (checked in the kernel).
    #[command(
        after_help = "Example:\n  chokepoint grant --identity research-agent --to 10.0.0.5:443/tcp --ttl 10m --task T-42"
    )]
    Grant {
        /// The identity the grant is for.
        #[arg(long)]
        identity: String,
        /// HOST_OR_CIDR:PORT[/PROTO], e.g. 10.0.0.5:443/tcp or [fd00::/64]:443
        #[arg(long)]
        to: String,
        /// How long the grant lasts: 30s, 10m, 2h (at most 7d).
        #[arg(long)]
        ttl: String,
        /// The task id the grant belongs to (revoke with `chokepoint revoke --task`).
        #[arg(long)]
        task: String,
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Remove every grant of a task and cut its established connections.
    #[command(after_help = "Example:\n  chokepoint revoke --task T-42")]
    Revoke {
        /// The task whose grants are removed.
        #[arg(long)]
        task: String,
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Which identity, tenant and task is behind a live gateway connection.
    #[command(
        after_help = "Example:\n  chokepoint attest --peer 10.202.0.2:40312 --local 10.77.0.1:8080"
    )]
    Attest {
        /// The client's address as the gateway sees it.
        #[arg(long)]
        peer: String,
        /// The gateway endpoint's address.
        #[arg(long)]
        local: String,
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Unsanctioned destinations each identity tried (the shadow-integration inventory).
    #[command(after_help = "Example:\n  chokepoint inventory --identity research-agent -o json")]
    Inventory {
        /// Only this identity.
        #[arg(long, value_name = "NAME")]
        identity: Option<String>,
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// The audit log's tamper evidence.
    #[command(after_help = "Example:\n  chokepoint audit verify /var/log/chokepoint/audit.jsonl*")]
    Audit {
        /// The audit subcommand.
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Shell completions for bash, zsh or fish, printed to stdout.
    #[command(
        after_help = "Example:\n  chokepoint completion bash > /etc/bash_completion.d/chokepoint\n  chokepoint completion zsh > \"${fpath[1]}/_chokepoint\""
    )]
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The man page (roff), printed to stdout, or one page per command written into DIR.
    #[command(
        after_help = "Example:\n  chokepoint man | man -l -\n  chokepoint man --dir /usr/local/share/man/man1"
    )]
    Man {
        /// Write chokepoint.1 and chokepoint-COMMAND.1 into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Names learned for toFQDN rules, their addresses and remaining TTLs.
    #[command(after_help = "Example:\n  chokepoint fqdn --identity research-agent -o json")]
    Fqdn(crate::fqdn::cli::FqdnCmd),
    /// Detach and unpin everything: the only way enforcement stops.
    #[command(after_help = "Example:\n  chokepoint uninstall --bpffs /sys/fs/bpf/chokepoint")]
    Uninstall {
        /// The bpffs directory the daemon pinned its programs and maps under.
        #[arg(long, default_value = "/sys/fs/bpf/chokepoint")]
        bpffs: PathBuf,
    },
}

/// `audit` subcommands.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check the hash chain and signed checkpoints of audit log files (any order; rotated files
    /// are put in chain order). Exit 1 and the first edited, inserted, removed, reordered or
    /// truncated record (file:line) on tampering.
    #[command(
        after_help = "Example:\n  chokepoint audit verify /var/log/chokepoint/audit.jsonl /var/log/chokepoint/audit.jsonl.*\n  chokepoint audit verify --key audit-key.pub audit.jsonl.3 audit.jsonl.2"
    )]
    Verify {
        /// The audit log files (the live file and its rotations).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The public key (hex) checkpoints are signed with (default: STATE_DIR/audit-key.pub).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// The daemon's state dir, where the public key is.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/chokepoint")]
        state_dir: PathBuf,
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
}

/// A record verdict to filter on.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum VerdictArg {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// Would have been denied (audit mode).
    Audit,
    /// Records lost (how many in `count`).
    Lost,
}

impl VerdictArg {
    /// The record's `verdict` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Audit => "audit",
            Self::Lost => "lost",
        }
    }
}

/// The subcommands of `chokepoint policy`.
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Exit 0, or print every problem as file:line:col: field: message.
    #[command(
        after_help = "Example:\n  chokepoint policy validate policy.yaml\n  chokepoint policy validate --offline policy.yaml   # in CI: no DNS"
    )]
    Validate {
        /// The policy document.
        file: PathBuf,
        /// Do not resolve gateway host names (check their syntax only).
        #[arg(long)]
        offline: bool,
    },
    /// Validate, compile, switch atomically, print the new generation.
    #[command(after_help = "Example:\n  chokepoint policy apply policy.yaml")]
    Apply {
        /// The policy document.
        file: PathBuf,
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// The active policy and its generation.
    #[command(after_help = "Example:\n  chokepoint policy show -o json")]
    Show {
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// What applying FILE would change (exit 1 when something would, like `kubectl diff`).
    #[command(after_help = "Example:\n  chokepoint policy diff policy.yaml || echo changes")]
    Diff {
        /// The candidate policy document.
        file: PathBuf,
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Every applied generation.
    #[command(after_help = "Example:\n  chokepoint policy history")]
    History {
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Re-apply GENERATION (default: the one before the active one) as a new generation.
    #[command(
        after_help = "Example:\n  chokepoint policy rollback\n  chokepoint policy rollback 3"
    )]
    Rollback {
        /// The generation to restore.
        generation: Option<u32>,
        /// Output format.
        #[command(flatten)]
        out: OutputArgs,
    },
}
