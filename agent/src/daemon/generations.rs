//! Generations: binding identities to cgroups, applying a compiled policy as a new generation
//! (kernel maps, state store, audit record), and re-binding when selected cgroups change.

use std::{path::Path, sync::Arc, time::Instant};

use anyhow::Context;
use serde_json::json;
use tracing::{error, info, warn};

use super::{Active, KEEP_GENERATIONS, Shared};
use crate::{
    audit::{self, AuditEvent},
    bpf::IdentBinding,
    cgroup,
    k8s::PodBinder,
    peer::Who,
    policy::CompiledPolicy,
    state::GenerationMeta,
    util,
};

/// Resolves every identity's selector to its cgroup id (pod selectors to pod cgroups through
/// the pod watcher's cache); missing cgroups are skipped (the reconciler binds them when they
/// appear).
pub(crate) fn bind(
    root: &Path,
    policy: &CompiledPolicy,
    pods: Option<&PodBinder>,
) -> Vec<IdentBinding> {
    let mut out: Vec<IdentBinding> = policy
        .identities
        .iter()
        .filter(|id| id.pod.is_none() && !id.unresolved)
        .filter_map(|id| {
            let path = root.join(&id.cgroup_path);
            cgroup::id_of(&path).ok().map(|cgroup_id| IdentBinding {
                cgroup_id,
                ident: id.id,
                mode: id.mode.code(),
            })
        })
        .collect();
    if let Some(p) = pods {
        out.extend(p.bindings(root, policy).into_iter().map(|b| b.binding));
    }
    out
}

pub(crate) fn same_bindings(a: &[IdentBinding], b: &[IdentBinding]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.cgroup_id == y.cgroup_id && x.ident == y.ident && x.mode == y.mode)
}

impl Shared {
    /// Compiles, writes and switches to a new generation. Nothing changes on error.
    pub(crate) fn apply(
        &self,
        policy: CompiledPolicy,
        action: &str,
        who: &Who,
    ) -> anyhow::Result<u32> {
        let t0 = Instant::now();
        if policy.has_pod_identities() {
            match &self.pods {
                None => anyhow::bail!(
                    "the policy selects pods, which needs the daemon's Kubernetes integration (`--kube`: pod identities from the API server); nothing changed"
                ),
                Some(p) if !p.cache.wait_synced(crate::k8s::SYNC_TIMEOUT) => anyhow::bail!(
                    "the pod watcher has not listed this node's pods within {}s (is the API server reachable?); nothing changed",
                    crate::k8s::SYNC_TIMEOUT.as_secs()
                ),
                Some(_) => {}
            }
        }
        let policy = Arc::new(policy);
        let bindings = bind(&self.opts.cgroup_root, &policy, self.pods.as_deref());
        let store = self.store.lock().expect("store lock");
        let mut maps = self.maps.lock().expect("maps lock");
        let (previous, old_policy) = {
            let a = self.active.read().expect("active lock");
            (a.generation, a.policy.clone())
        };
        let generation = store.last_generation().max(previous) + 1;
        // Known before the switch: the first records of the new generation name its identities.
        self.generations
            .write()
            .expect("generations lock")
            .insert(generation, policy.clone());
        let forget = || {
            self.generations
                .write()
                .expect("generations lock")
                .remove(&generation);
        };
        let t_maps = Instant::now();
        if let Err(e) = maps.apply(&policy, &bindings, generation) {
            forget();
            return Err(e.into());
        }
        let maps_ms = t_maps.elapsed().as_secs_f64() * 1e3;
        let switch_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t_commit = Instant::now();
        let meta = GenerationMeta {
            generation,
            name: policy.name.clone(),
            digest: policy.digest.clone(),
            applied_at: util::rfc3339_ns(util::wall_ns()),
            by_uid: who.uid,
            by_pid: who.pid,
            previous: (previous > 0).then_some(previous),
            action: action.into(),
        };
        if let Err(e) = store.commit(&meta, &policy.source) {
            // Put the previous generation back so kernel and state agree.
            let prev = self.active.read().expect("active lock");
            let _ = maps.apply(&prev.policy, &prev.bindings, prev.generation);
            forget();
            return Err(e).context(
                "recording the new generation failed; the previous generation stays active",
            );
        }
        drop(maps);
        drop(store);
        let commit_ms = t_commit.elapsed().as_secs_f64() * 1e3;
        {
            let mut g = self.generations.write().expect("generations lock");
            // Records name identities of recent generations only (what the ring buffer may still
            // hold); older compiled policies are dropped, not kept for the daemon's lifetime.
            while g.len() > KEEP_GENERATIONS {
                g.pop_first();
            }
        }
        *self.active.write().expect("active lock") = Active {
            generation,
            policy,
            bindings,
            applied_at: meta.applied_at.clone(),
            switch_ms,
        };
        // The watcher must watch this generation's selectors.
        self.rearm_watcher();
        // Learned toFQDN addresses follow their identity and rule to the new ids.
        self.fqdn
            .on_policy(&self.active.read().expect("active lock").policy);
        // Identity ids may have moved: rewrite grants for the new ids.
        if let Err(e) = self.sync_grants() {
            warn!(error = %e, "re-writing grants after apply failed");
        }
        self.metrics.apply_seconds(t0.elapsed().as_secs_f64());
        // Parsing and compiling a large document leaves freed heap behind: return it.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        info!(generation, action, maps_ms, commit_ms, apply_ms = t0.elapsed().as_secs_f64() * 1e3, digest = %meta.digest, by_uid = ?who.uid, by_pid = ?who.pid, by_comm = ?who.comm, "policy generation active");
        // The change is itself an audit record (who, when, old → new generation, digest).
        {
            let rec = json!({
                "schema": audit::SCHEMA_VERSION,
                "time": meta.applied_at,
                "node": self.node,
                "action": action,
                "policy_generation": generation,
                "previous_generation": meta.previous,
                "digest": meta.digest,
                "policy": meta.name,
                "uid": who.uid,
                "pid": who.pid,
                "comm": who.comm,
            });
            if let Err(e) = self.audit.write_synced(AuditEvent::PolicyChange, &rec) {
                error!(error = %e, generation, "audit log write of the policy change failed");
            }
        }
        // Mode switches (enforce ↔ audit) of identities the old generation had, one record each.
        let new_policy = self.active.read().expect("active lock").policy.clone();
        for id in &new_policy.identities {
            let Some(old) = old_policy.identities.iter().find(|o| o.name == id.name) else {
                continue;
            };
            if old.mode == id.mode {
                continue;
            }
            let rec = json!({
                "schema": audit::SCHEMA_VERSION,
                "time": meta.applied_at,
                "node": self.node,
                "identity": id.name,
                "tenant": id.tenant,
                "mode": id.mode,
                "previous_mode": old.mode,
                "policy_generation": generation,
                "previous_generation": meta.previous,
                "uid": who.uid,
                "pid": who.pid,
                "comm": who.comm,
            });
            info!(identity = %id.name, mode = ?id.mode, previous = ?old.mode, generation, "identity mode switched");
            if let Err(e) = self.audit.write_synced(AuditEvent::ModeChange, &rec) {
                error!(error = %e, generation, "audit log write of a mode change failed");
            }
        }
        Ok(generation)
    }

    /// Re-binds identities whose cgroups appeared, vanished or were recreated.
    pub(crate) fn reconcile(&self) {
        let (policy, generation, old) = {
            let a = self.active.read().expect("active lock");
            (a.policy.clone(), a.generation, a.bindings.clone())
        };
        let now = bind(&self.opts.cgroup_root, &policy, self.pods.as_deref());
        if same_bindings(&now, &old) {
            return;
        }
        let mut maps = self.maps.lock().expect("maps lock");
        // The generation may have moved on while we computed: re-check under the maps lock.
        if self.active.read().expect("active lock").generation != generation {
            return;
        }
        match maps.rebind(&old, &now) {
            Ok(_) => {
                info!(generation, cgroups = now.len(), "identity cgroups re-bound");
                self.active.write().expect("active lock").bindings = now;
            }
            Err(e) => error!(error = %e, "re-binding identity cgroups failed"),
        }
    }
}
