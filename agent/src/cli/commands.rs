//! The client commands: each sends one request to the daemon's API and prints its typed result;
//! `policy validate` compiles locally, `audit verify` reads files and `uninstall` removes the
//! pins (through `bpf::pins`, shared with the daemon). The `policy` commands live in
//! [`policy`](super::policy).

use std::{path::Path, time::Duration};

use anyhow::Context;
use serde::{Serialize, de::DeserializeOwned};

use super::{
    AuditCmd, Command, Format,
    render::{
        alert_line, attestation_text, flow_line, granted_text, identities_text, inventory_text,
        print_entries, print_json, status_text,
    },
};
use crate::{
    api::{
        Client, Request,
        responses::{Attestation, Granted, Identities, Inventory, Revoked, Status},
    },
    audit::{chain, verify},
    bpf::pins,
    util,
};

/// Sends one request on a new connection and returns its typed result.
pub(super) async fn call<T: DeserializeOwned>(socket: &Path, req: Request) -> anyhow::Result<T> {
    let mut c = Client::connect(socket).await?;
    Ok(c.call(&req).await?)
}

/// A command that ends with an exit code of its own (no error message): `policy diff` with
/// changes, `audit verify` on tampering.
#[derive(Debug, thiserror::Error)]
#[error("exit {0}")]
pub struct Exit(pub i32);

/// A usage error found after parsing (exit 2), e.g. a bad `--dst`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// Prints a result as JSON (`json`: pretty, `jsonl`: one line) or with `text`.
pub(super) fn print_value<T: Serialize>(v: &T, format: Format, text: impl FnOnce(&T)) {
    match format {
        Format::Json => print_json(v),
        Format::Jsonl => println!("{}", serde_json::to_string(v).unwrap_or_default()),
        Format::Text => text(v),
    }
}

/// Checks a query before sending it (the daemon checks again against its clock).
fn check_query(q: &crate::query::Query, follow: bool) -> anyhow::Result<()> {
    if follow && q.until.is_some() {
        return Err(Usage("--until cannot be used with --follow".into()).into());
    }
    q.compile(util::wall_ns())
        .map(|_| ())
        .map_err(|e| Usage(e.to_string()).into())
}

/// Runs a client command against the API at `socket`.
pub async fn run_client(cmd: Command, socket: &Path) -> anyhow::Result<()> {
    let socket = socket.to_path_buf();
    match cmd {
        Command::Daemon(_) | Command::Completion { .. } | Command::Man { .. } => {
            unreachable!("handled in main")
        }
        Command::Inventory { identity, out } => {
            let r: Inventory = call(&socket, Request::Inventory { identity }).await?;
            print_value(&r, out.format(), |v| print!("{}", inventory_text(v)));
            Ok(())
        }
        Command::Audit {
            cmd:
                AuditCmd::Verify {
                    files,
                    key,
                    state_dir,
                    out,
                },
        } => audit_verify(&files, key, &state_dir, out.format()),
        Command::Uninstall { bpffs } => {
            let removed = pins::uninstall(&bpffs)
                .with_context(|| format!("removing pins under {}", bpffs.display()))?;
            println!(
                "removed {} pins under {}; enforcement stopped",
                removed.len(),
                bpffs.display()
            );
            Ok(())
        }
        Command::Policy { cmd } => super::policy::run(cmd, &socket).await,
        Command::Status { out } => {
            let r: Status = call(&socket, Request::Status).await?;
            print_value(&r, out.format(), |r| print!("{}", status_text(r)));
            Ok(())
        }
        Command::Identities { out } => {
            let r: Identities = call(&socket, Request::Identities).await?;
            print_value(&r, out.format(), |r| print!("{}", identities_text(r)));
            Ok(())
        }
        Command::Flows { follow, query, out } => {
            let filter = query.query();
            check_query(&filter, follow)?;
            let mut c = Client::connect(&socket).await?;
            let r = c
                .call(&Request::Flows {
                    follow,
                    filter,
                    identity: None,
                    verdict: None,
                })
                .await?;
            print_entries(&mut c, r, follow, out.format(), flow_line).await
        }
        Command::Alerts { follow, query, out } => {
            let filter = query.query();
            check_query(&filter, follow)?;
            let mut c = Client::connect(&socket).await?;
            let r = c.call(&Request::Alerts { follow, filter }).await?;
            print_entries(&mut c, r, follow, out.format(), alert_line).await
        }
        Command::Grant {
            identity,
            to,
            ttl,
            task,
            out,
        } => {
            let ttl: Duration =
                util::parse_duration(&ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            let r: Granted = call(
                &socket,
                Request::Grant {
                    identity,
                    to,
                    ttl_secs: ttl.as_secs().max(1),
                    task,
                },
            )
            .await?;
            print_value(&r, out.format(), |r| println!("{}", granted_text(r)));
            Ok(())
        }
        Command::Attest { peer, local, out } => {
            let r: Attestation = call(&socket, Request::Attest { peer, local }).await?;
            print_value(&r, out.format(), |r| println!("{}", attestation_text(r)));
            Ok(())
        }
        Command::Fqdn(cmd) => cmd.run(&socket).await,
        Command::Revoke { task, out } => {
            let r: Revoked = call(&socket, Request::Revoke { task }).await?;
            print_value(&r, out.format(), |r| {
                println!("revoked {} grants of task {}", r.revoked, r.task);
            });
            Ok(())
        }
    }
}

/// `audit verify`: checks the chain and the signed checkpoints of the files.
fn audit_verify(
    files: &[std::path::PathBuf],
    key: Option<std::path::PathBuf>,
    state_dir: &Path,
    format: Format,
) -> anyhow::Result<()> {
    let key_path = key.unwrap_or_else(|| verify::default_key_path(state_dir));
    let public = chain::read_public_key(&key_path)
        .map_err(|e| anyhow::anyhow!("{e} (pass --key or --state-dir)"))?;
    match verify::verify(files, &public)? {
        Ok(summary) => {
            let v = serde_json::json!({"ok": true, "summary": summary});
            print_value(&v, format, |_| {
                println!(
                    "ok: {} records in {} files (seq {}..{}), {} signed checkpoints, key {}; {} records after the last checkpoint",
                    summary.records,
                    summary.files.len(),
                    summary.first_seq.unwrap_or(0),
                    summary.last_seq.unwrap_or(0),
                    summary.checkpoints,
                    summary.key_id,
                    summary.unsigned_tail
                );
            });
            Ok(())
        }
        Err(problem) => {
            let v = serde_json::json!({"ok": false, "problem": problem});
            match format {
                Format::Text => eprintln!("chokepoint: audit log tampered: {problem}"),
                f => print_value(&v, f, |_| {}),
            }
            Err(Exit(1).into())
        }
    }
}
