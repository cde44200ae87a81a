//! The API's request handlers: what each command does to the daemon's state.

use anyhow::{Context, bail};
use serde_json::json;

use super::{Shared, compile_cached};
use crate::{api::Request, policy::diff::diff_policies};

pub(crate) fn handle_request(
    shared: &Shared,
    req: Request,
    who: crate::peer::Who,
) -> anyhow::Result<serde_json::Value> {
    match req {
        Request::Status => Ok(shared.status_json()),
        Request::Fqdn { identity } => Ok(shared.fqdn.list_json(identity.as_deref())),
        Request::Identities => Ok(shared.identities_json()),
        Request::PolicyShow => {
            let a = shared.active.read().expect("active lock");
            Ok(shared.policy_json(a.generation, &a.policy))
        }
        Request::PolicyApply { file, source } => {
            let p = compile_cached(&shared.dns, &file, source.as_bytes())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let previous = shared.active.read().expect("active lock").generation;
            let g = shared
                .apply(p, "apply", &who)
                .with_context(|| format!("{file}:1:1"))?;
            let a = shared.active.read().expect("active lock");
            Ok(json!({"generation": g, "previous": previous, "digest": a.policy.digest}))
        }
        Request::PolicyDiff { file, source } => {
            let p = compile_cached(&shared.dns, &file, source.as_bytes())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let a = shared.active.read().expect("active lock");
            Ok(diff_policies(&a.policy, &p))
        }
        Request::PolicyHistory => {
            let h = shared.store.lock().expect("store lock").history()?;
            let g = shared.active.read().expect("active lock").generation;
            Ok(json!({"generation": g, "history": h}))
        }
        Request::PolicyRollback { generation } => {
            let (current, target) = {
                let store = shared.store.lock().expect("store lock");
                let hist = store.history()?;
                let cur = shared.active.read().expect("active lock").generation;
                let target = match generation {
                    Some(g) => g,
                    None => hist
                        .iter()
                        .find(|m| m.generation == cur)
                        .and_then(|m| m.previous)
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "generation {cur} has no previous generation to roll back to"
                            )
                        })?,
                };
                if target == 0 || !hist.iter().any(|m| m.generation == target) {
                    bail!("no generation {target} in the history");
                }
                (cur, target)
            };
            let src = shared.store.lock().expect("store lock").source(target)?;
            let p = compile_cached(&shared.dns, &format!("generation {target}"), &src)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let g = shared.apply(p, &format!("rollback to {target}"), &who)?;
            Ok(json!({"generation": g, "previous": current, "restored": target}))
        }
        Request::Grant {
            identity,
            to,
            ttl_secs,
            task,
        } => shared.grant(identity, to, ttl_secs, task, &who),
        Request::Revoke { task } => shared.revoke(task, &who),
        Request::Attest { peer, local } => {
            crate::attest::answer(shared, &peer, &local).map_err(|(_, e)| anyhow::anyhow!(e))
        }
        Request::Inventory { identity } => Ok(shared.inventory_json(identity.as_deref())),
        Request::Flows { .. } | Request::Alerts { .. } => unreachable!("streamed above"),
    }
}
