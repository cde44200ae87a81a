//! The client commands: each sends one request to the daemon's API and prints the result;
//! `policy validate` compiles locally and `uninstall` removes the pins.

use std::{path::Path, time::Duration};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{
    Command, PolicyCmd,
    render::{alert_line, flow_line, print_entries, print_json},
};
use crate::{
    api::{Client, Request},
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

/// Runs a client command.
pub async fn run_client(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Daemon(_) => unreachable!("handled in main"),
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
