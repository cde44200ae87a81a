//! The client commands: each sends one request to the daemon's API and prints the result;
//! `policy validate` compiles locally and `uninstall` removes the pins.

use std::{path::Path, time::Duration};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{
    AuditCmd, Command, Format, PolicyCmd,
    render::{alert_line, flow_line, inventory_text, print_entries, print_json},
};
use crate::{
    api::{Client, Request},
    audit::{chain, verify},
    bpf::pins,
    policy::compile_source,
    util,
};

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

/// A command that ends with an exit code of its own (no error message): `policy diff` with
/// changes, `audit verify` on tampering.
#[derive(Debug, thiserror::Error)]
#[error("exit {0}")]
pub struct Exit(pub i32);

/// A usage error found after parsing (exit 2), e.g. a bad `--dst`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

fn print_value(v: &Value, format: Format, text: impl FnOnce(&Value)) {
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
            let r = call(&socket, Request::Inventory { identity }).await?;
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
        } => {
            let key_path = key.unwrap_or_else(|| verify::default_key_path(&state_dir));
            let public = chain::read_public_key(&key_path)
                .map_err(|e| anyhow::anyhow!("{e} (pass --key or --state-dir)"))?;
            match verify::verify(&files, &public)? {
                Ok(summary) => {
                    let v = serde_json::json!({"ok": true, "summary": summary});
                    print_value(&v, out.format(), |_| {
                        println!(
                            "ok: {} records in {} files (seq {}..{}), {} signed checkpoints, key {}; {} records after the last checkpoint",
                            summary.records,
                            summary.files.len(),
                            summary.first_seq.unwrap_or(0),
                            summary.last_seq.unwrap_or(0),
                            summary.checkpoints,
                            summary.key_id,
                            summary.unsigned_tail
                        )
                    });
                    Ok(())
                }
                Err(problem) => {
                    let v = serde_json::json!({"ok": false, "problem": problem});
                    match out.format() {
                        Format::Text => eprintln!("chokepoint: audit log tampered: {problem}"),
                        f => print_value(&v, f, |_| {}),
                    }
                    Err(Exit(1).into())
                }
            }
        }
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
        Command::Policy { cmd } => match cmd {
            PolicyCmd::Validate { file, offline } => {
                let bytes = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let name = file.display().to_string();
                let compiled = if offline {
                    // Host names are checked for syntax only: nothing is resolved.
                    crate::policy::compile_source_with(&name, &bytes, &|_, _| Ok(Vec::new()))
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
                let r = call(&socket, Request::PolicyApply { file: name, source }).await?;
                if out.format() != Format::Text {
                    print_value(&r, out.format(), |_| {});
                } else {
                    println!(
                        "generation {} active ({})",
                        r["generation"],
                        r["digest"].as_str().unwrap_or("")
                    );
                }
                Ok(())
            }
            PolicyCmd::Show { out } => {
                let r = call(&socket, Request::PolicyShow).await?;
                if out.format() != Format::Text {
                    print_value(&r, out.format(), |_| {});
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
            PolicyCmd::Diff { file, out } => {
                let (name, source) = read_policy(&file)?;
                let r = call(&socket, Request::PolicyDiff { file: name, source }).await?;
                if out.format() != Format::Text {
                    print_value(&r, out.format(), |_| {});
                } else {
                    let changes = r["changes"].as_array().cloned().unwrap_or_default();
                    if changes.is_empty() {
                        println!("no changes");
                    }
                    for c in changes {
                        println!("{}", c.as_str().unwrap_or(""));
                    }
                }
                // Like `kubectl diff`: exit 1 when applying the file would change something.
                if r["changes"].as_array().is_some_and(|c| !c.is_empty()) {
                    return Err(Exit(1).into());
                }
                Ok(())
            }
            PolicyCmd::History { out } => {
                let r = call(&socket, Request::PolicyHistory).await?;
                if out.format() != Format::Text {
                    print_value(&r, out.format(), |_| {});
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
            PolicyCmd::Rollback { generation, out } => {
                let r = call(&socket, Request::PolicyRollback { generation }).await?;
                if out.format() != Format::Text {
                    print_value(&r, out.format(), |_| {});
                } else {
                    println!(
                        "generation {} active (restored generation {})",
                        r["generation"], r["restored"]
                    );
                }
                Ok(())
            }
        },
        Command::Status { out } => {
            let r = call(&socket, Request::Status).await?;
            if out.format() != Format::Text {
                print_value(&r, out.format(), |_| {});
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
        Command::Identities { out } => {
            let r = call(&socket, Request::Identities).await?;
            if out.format() != Format::Text {
                print_value(&r, out.format(), |_| {});
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
            if out.format() != Format::Text {
                print_value(&r, out.format(), |_| {});
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
        Command::Attest { peer, local, out } => {
            let r = call(&socket, Request::Attest { peer, local }).await?;
            if out.format() != Format::Text {
                print_value(&r, out.format(), |_| {});
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
        Command::Fqdn(cmd) => cmd.run(&socket).await,
        Command::Revoke { task, out } => {
            let r = call(&socket, Request::Revoke { task }).await?;
            if out.format() != Format::Text {
                print_value(&r, out.format(), |_| {});
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
