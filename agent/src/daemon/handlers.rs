//! The API's request handlers: what each command does to the daemon's state, answered with the
//! command's typed result.

use anyhow::anyhow;

use super::{Shared, compile_cached};
use crate::{
    api::{
        ApiError, Reply, Request,
        responses::{ApplyTiming, PolicyApplied, PolicyHistory, PolicyRolledBack},
    },
    policy::diff::diff_policies,
};

pub(crate) fn handle_request(
    shared: &Shared,
    req: Request,
    who: crate::peer::Who,
) -> Result<Reply, ApiError> {
    Ok(match req {
        Request::Status => Reply::Status(Box::new(shared.status())),
        Request::Fqdn { identity } => Reply::Fqdn(shared.fqdn.list(identity.as_deref())),
        Request::Identities => Reply::Identities(shared.identities()),
        Request::PolicyShow => {
            let a = shared.active.read().expect("active lock");
            Reply::PolicyShow(Box::new(shared.policy_show(a.generation, &a.policy)))
        }
        Request::PolicyApply { file, source } => {
            let t = std::time::Instant::now();
            let p = compile_cached(&shared.dns, &file, source.as_bytes())?;
            let compile_ms = t.elapsed().as_secs_f64() * 1e3;
            let previous = shared.active.read().expect("active lock").generation;
            let generation = shared
                .apply(p, "apply", &who)
                .map_err(|e| anyhow!("{file}:1:1: {e:#}"))?;
            let a = shared.active.read().expect("active lock");
            // Request to enforcement: parsing and compiling the document, then the kernel switch
            // (what follows it, the state store and the audit record, does not delay enforcement).
            Reply::PolicyApplied(PolicyApplied {
                generation,
                previous,
                digest: a.policy.digest.clone(),
                timing_ms: Some(ApplyTiming {
                    compile: compile_ms,
                    switch: a.switch_ms,
                    enforced: compile_ms + a.switch_ms,
                }),
            })
        }
        Request::PolicyDiff { file, source } => {
            let p = compile_cached(&shared.dns, &file, source.as_bytes())?;
            let a = shared.active.read().expect("active lock");
            Reply::PolicyDiff(diff_policies(&a.policy, &p))
        }
        Request::PolicyHistory => {
            let history = shared
                .store
                .lock()
                .expect("store lock")
                .history()
                .map_err(anyhow::Error::from)?;
            let generation = shared.active.read().expect("active lock").generation;
            Reply::PolicyHistory(PolicyHistory {
                generation,
                history,
            })
        }
        Request::PolicyRollback { generation } => {
            Reply::PolicyRolledBack(rollback(shared, generation, &who)?)
        }
        Request::Grant {
            identity,
            to,
            ttl_secs,
            task,
        } => Reply::Granted(shared.grant(identity, to, ttl_secs, task, &who)?),
        Request::Revoke { task } => Reply::Revoked(shared.revoke(task, &who)?),
        Request::Attest { peer, local } => Reply::Attest(
            crate::attest::answer(shared, &peer, &local).map_err(|(_, e)| anyhow!(e))?,
        ),
        Request::Inventory { identity } => Reply::Inventory(shared.inventory(identity.as_deref())),
        Request::Flows { .. } | Request::Alerts { .. } => unreachable!("streamed by the server"),
    })
}

/// `policy rollback [GENERATION]`: re-applies a stored generation's source (the previous one by
/// default) as a new generation.
fn rollback(
    shared: &Shared,
    generation: Option<u32>,
    who: &crate::peer::Who,
) -> Result<PolicyRolledBack, ApiError> {
    let (current, target) = {
        let store = shared.store.lock().expect("store lock");
        let hist = store.history().map_err(anyhow::Error::from)?;
        let cur = shared.active.read().expect("active lock").generation;
        let target = match generation {
            Some(g) => g,
            None => hist
                .iter()
                .find(|m| m.generation == cur)
                .and_then(|m| m.previous)
                .ok_or_else(|| {
                    anyhow!("generation {cur} has no previous generation to roll back to")
                })?,
        };
        if target == 0 || !hist.iter().any(|m| m.generation == target) {
            return Err(anyhow!("no generation {target} in the history").into());
        }
        (cur, target)
    };
    let src = shared
        .store
        .lock()
        .expect("store lock")
        .source(target)
        .map_err(anyhow::Error::from)?;
    let p = compile_cached(&shared.dns, &format!("generation {target}"), &src)?;
    let generation = shared.apply(p, &format!("rollback to {target}"), who)?;
    Ok(PolicyRolledBack {
        generation,
        previous: current,
        restored: target,
    })
}
