//! Temporary grants: destination parsing, the kernel specs for the active identity ids, and the
//! grant/revoke operations behind the API.

use anyhow::bail;
use serde_json::json;
use tracing::info;

use super::Shared;
use crate::{
    api::responses::{Granted, Revoked},
    audit::{self, AuditEvent},
    bpf::GrantSpec,
    peer::Who,
    policy::parse::{Cidr, parse_cidr},
    state::StoredGrant,
    util,
};

/// FNV-1a of a task name: its numeric id in the kernel (never 0).
pub fn task_id(task: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in task.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// Parses a grant destination `HOST_OR_CIDR:PORT[/PROTO]`.
pub fn parse_grant_dest(to: &str) -> Result<(Vec<Cidr>, crate::policy::parse::PortSpec), String> {
    let to = to.trim();
    let (host, portproto) = if let Some(rest) = to.strip_prefix('[') {
        rest.split_once("]:")
            .ok_or_else(|| format!("`{to}`: expected `[ipv6 or cidr]:port[/proto]`"))?
    } else {
        to.rsplit_once(':')
            .ok_or_else(|| format!("`{to}`: expected `HOST_OR_CIDR:PORT[/PROTO]`"))?
    };
    let portproto = if portproto.contains('/') {
        portproto.to_string()
    } else {
        format!("{portproto}/tcp")
    };
    let spec = crate::policy::parse::parse_ports(&portproto)?[0];
    let cidrs = if let Ok(c) = parse_cidr(host) {
        vec![c]
    } else {
        let ep = crate::policy::parse::parse_endpoint(&format!("{host}:{}/tcp", spec.lo.max(1)))?;
        ep.nets
    };
    Ok((cidrs, spec))
}

impl Shared {
    /// Grants as kernel specs, for the active policy's identity ids (expired ones skipped).
    pub(crate) fn grant_specs(&self, grants: &[StoredGrant]) -> Vec<GrantSpec> {
        let active = self.active.read().expect("active lock");
        let now_wall = util::wall_ns();
        let now_boot = util::boot_ns();
        let mut out = Vec::new();
        for g in grants {
            if g.expires_wall_ns <= now_wall {
                continue;
            }
            let Some(id) = active
                .policy
                .identities
                .iter()
                .find(|i| i.name == g.identity)
            else {
                continue;
            };
            let Ok((cidrs, spec)) = parse_grant_dest(&g.to) else {
                continue;
            };
            let remaining = (g.expires_wall_ns - now_wall) as u64;
            for cidr in cidrs {
                out.push(GrantSpec {
                    ident: id.id,
                    cidr,
                    port_lo: spec.lo,
                    port_hi: spec.hi,
                    proto: spec.proto,
                    task: g.task_id,
                    task_name: g.task.clone(),
                    expires_boot_ns: now_boot + remaining,
                });
            }
        }
        out
    }

    pub(crate) fn sync_grants(&self) -> anyhow::Result<()> {
        let grants = self.store.lock().expect("store lock").grants()?;
        let specs = self.grant_specs(&grants);
        {
            let mut t = self.tasks.write().expect("tasks lock");
            for g in &grants {
                t.insert(g.task_id, g.task.clone());
            }
        }
        self.maps.lock().expect("maps lock").set_grants(&specs)?;
        Ok(())
    }
    /// Adds a grant (validated; kernel first, then state, undone on a state error).
    pub(crate) fn grant(
        &self,
        identity: String,
        to: String,
        ttl_secs: u64,
        task: String,
        who: &Who,
    ) -> anyhow::Result<Granted> {
        let shared = self;
        if task.trim().is_empty() || task.len() > 256 {
            bail!("--task must be 1 to 256 characters");
        }
        if ttl_secs == 0 || ttl_secs > 7 * 86_400 {
            bail!("--ttl must be between 1s and 7d");
        }
        if !shared
            .active
            .read()
            .expect("active lock")
            .policy
            .identities
            .iter()
            .any(|i| i.name == identity)
        {
            bail!("no identity named `{identity}` in the active policy");
        }
        let (cidrs, spec) = parse_grant_dest(&to).map_err(|e| anyhow::anyhow!(e))?;
        let store = shared.store.lock().expect("store lock");
        let mut grants = store.grants()?;
        let now = util::wall_ns();
        let g = StoredGrant {
            identity: identity.clone(),
            to: to.clone(),
            task: task.clone(),
            task_id: task_id(&task),
            expires_wall_ns: now + u128::from(ttl_secs) * 1_000_000_000,
            granted_at: util::rfc3339_ns(now),
        };
        grants.retain(|x| x.expires_wall_ns > now);
        grants.push(g.clone());
        let specs = shared.grant_specs(&grants);
        shared
            .tasks
            .write()
            .expect("tasks lock")
            .insert(g.task_id, task.clone());
        shared.maps.lock().expect("maps lock").set_grants(&specs)?;
        if let Err(e) = store.set_grants(&grants) {
            grants.pop();
            let specs = shared.grant_specs(&grants);
            let _ = shared.maps.lock().expect("maps lock").set_grants(&specs);
            return Err(e.into());
        }
        drop(store);
        info!(identity, to, task, ttl_secs, by_uid = ?who.uid, by_pid = ?who.pid, "grant added");
        let answer = Granted {
            identity,
            to,
            task,
            destinations: cidrs.iter().map(std::string::ToString::to_string).collect(),
            ports: spec.to_string(),
            expires_at: util::rfc3339_ns(g.expires_wall_ns),
        };
        self.audit_grant_change(
            AuditEvent::Grant,
            json!({
                "identity": answer.identity, "to": answer.to, "task": answer.task,
                "ttl_secs": ttl_secs,
                "destinations": answer.destinations,
                "ports": answer.ports,
                "expires_at": answer.expires_at,
            }),
            who,
        );
        Ok(answer)
    }

    /// Removes every grant of `task`.
    pub(crate) fn revoke(&self, task: String, who: &Who) -> anyhow::Result<Revoked> {
        let shared = self;
        let store = shared.store.lock().expect("store lock");
        let mut grants = store.grants()?;
        let (gone, kept): (Vec<StoredGrant>, Vec<StoredGrant>) =
            grants.drain(..).partition(|g| g.task == task);
        grants = kept;
        let removed = gone.len();
        let specs = shared.grant_specs(&grants);
        store.set_grants(&grants)?;
        shared.maps.lock().expect("maps lock").set_grants(&specs)?;
        drop(store);
        info!(task, removed, by_uid = ?who.uid, by_pid = ?who.pid, "task revoked");
        self.audit_grant_change(
            AuditEvent::Revoke,
            json!({
                "task": task,
                "revoked": removed,
                "grants": gone
                    .iter()
                    .map(|g| json!({
                        "identity": g.identity,
                        "to": g.to,
                        "expires_at": util::rfc3339_ns(g.expires_wall_ns),
                    }))
                    .collect::<Vec<_>>(),
            }),
            who,
        );
        Ok(Revoked {
            task,
            revoked: removed,
        })
    }

    /// Writes a grant or revoke record (who, when, what) to the audit log, on disk before the
    /// API answers.
    fn audit_grant_change(&self, event: AuditEvent, mut rec: serde_json::Value, who: &Who) {
        if let Some(o) = rec.as_object_mut() {
            o.insert("schema".into(), audit::SCHEMA_VERSION.into());
            o.insert("time".into(), util::rfc3339_ns(util::wall_ns()).into());
            o.insert("node".into(), self.node.clone().into());
            o.insert(
                "policy_generation".into(),
                self.active.read().expect("active lock").generation.into(),
            );
            o.insert("uid".into(), who.uid.into());
            o.insert("pid".into(), who.pid.into());
            o.insert("comm".into(), who.comm.clone().into());
        }
        if let Err(e) = self.audit.write_synced(event, &rec) {
            tracing::error!(error = %e, event = event.as_str(), "audit log write failed");
        }
    }
}
