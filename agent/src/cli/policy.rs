//! `chokepoint policy …`: validate locally, apply, show, diff, history and rollback through the
//! daemon. A document that does not validate is reported as the daemon's structured problems,
//! one line each: `file:line:col: field: message`.

use std::path::Path;

use anyhow::{Context, bail};

use super::{
    PolicyCmd,
    commands::{Exit, call, print_value},
};
use crate::{
    api::{
        Request,
        responses::{PolicyApplied, PolicyDiff, PolicyHistory, PolicyRolledBack, PolicyShow},
    },
    policy::{compile::MAX_DOCUMENT_BYTES, compile_source, compile_source_with},
};

/// Reads a document to send: (name, text). What cannot travel as a JSON string (too large, not
/// UTF-8) is refused here with the compiler's own wording; the daemon checks the rest.
fn read_policy(file: &Path) -> anyhow::Result<(String, String)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.display().to_string();
    if bytes.len() > MAX_DOCUMENT_BYTES {
        // Same wording as the compiler's, without shipping the document first.
        return Err(compile_source(&name, &bytes)
            .err()
            .map_or_else(|| anyhow::anyhow!(""), Into::into));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok((name, text)),
        Err(e) => Err(compile_source(&name, e.as_bytes())
            .err()
            .map_or_else(|| anyhow::anyhow!(""), Into::into)),
    }
}

/// Runs a `policy` subcommand.
pub(super) async fn run(cmd: PolicyCmd, socket: &Path) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Validate { file, offline } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let name = file.display().to_string();
            let compiled = if offline {
                // Host names are checked for syntax only: nothing is resolved.
                compile_source_with(&name, &bytes, &|_, _| Ok(Vec::new()))
            } else {
                compile_source(&name, &bytes)
            };
            match compiled {
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
        PolicyCmd::Apply { file, out } => {
            let (name, source) = read_policy(&file)?;
            let r: PolicyApplied =
                call(socket, Request::PolicyApply { file: name, source }).await?;
            print_value(&r, out.format(), |r| {
                println!("generation {} active ({})", r.generation, r.digest);
            });
            Ok(())
        }
        PolicyCmd::Show { out } => {
            let r: PolicyShow = call(socket, Request::PolicyShow).await?;
            print_value(&r, out.format(), |r| {
                println!("# generation {} — {} ({})", r.generation, r.name, r.digest);
                print!("{}", r.source);
            });
            Ok(())
        }
        PolicyCmd::Diff { file, out } => {
            let (name, source) = read_policy(&file)?;
            let r: PolicyDiff = call(socket, Request::PolicyDiff { file: name, source }).await?;
            print_value(&r, out.format(), |r| {
                if r.changes.is_empty() {
                    println!("no changes");
                }
                for c in &r.changes {
                    println!("{c}");
                }
            });
            // Like `kubectl diff`: exit 1 when applying the file would change something.
            if !r.changes.is_empty() {
                return Err(Exit(1).into());
            }
            Ok(())
        }
        PolicyCmd::History { out } => {
            let r: PolicyHistory = call(socket, Request::PolicyHistory).await?;
            print_value(&r, out.format(), |r| {
                for m in &r.history {
                    let active = if m.generation == r.generation {
                        "*"
                    } else {
                        " "
                    };
                    println!(
                        "{active} {:>4}  {}  {:<20} {}  uid={}",
                        m.generation,
                        m.applied_at,
                        m.action,
                        m.digest,
                        m.by_uid.map_or_else(|| "null".into(), |u| u.to_string())
                    );
                }
            });
            Ok(())
        }
        PolicyCmd::Rollback { generation, out } => {
            let r: PolicyRolledBack = call(socket, Request::PolicyRollback { generation }).await?;
            print_value(&r, out.format(), |r| {
                println!(
                    "generation {} active (restored generation {})",
                    r.generation, r.restored
                );
            });
            Ok(())
        }
    }
}
