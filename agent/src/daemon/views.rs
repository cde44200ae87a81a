//! Read-only views of the daemon: programs attached, enforcement per identity, the status and
//! identities documents of the API, and the gauges of the metrics page.

use std::{collections::HashMap, path::Path, sync::atomic::Ordering};

use chokepoint_common::names;
use serde_json::json;

use super::Shared;
use crate::{bpf, metrics::Gauges, policy::CompiledPolicy};

impl Shared {
    pub(crate) fn programs(&self) -> Vec<(String, bool)> {
        let pinned = bpf::pinned_links(&self.opts.bpffs);
        let mut out = Vec::new();
        for p in names::PROGRAMS {
            if p == names::PROG_TC_EGRESS {
                for iface in &self.opts.tc_ifaces {
                    let up = pinned
                        .iter()
                        .any(|(n, t)| n == p && t.as_deref() == Some(iface));
                    out.push((format!("{p}@{iface}"), up));
                }
                continue;
            }
            out.push((
                p.to_string(),
                pinned.iter().any(|(n, t)| n == p && t.is_none()),
            ));
        }
        out
    }

    /// Core programs (the ones every identity depends on) all attached.
    pub(crate) fn core_attached(&self) -> bool {
        let pinned = bpf::pinned_links(&self.opts.bpffs);
        [
            names::PROG_SOCK_CREATE,
            names::PROG_CONNECT4,
            names::PROG_CONNECT6,
            names::PROG_SENDMSG4,
            names::PROG_SENDMSG6,
            names::PROG_SKB_EGRESS,
        ]
        .iter()
        .all(|p| pinned.iter().any(|(n, t)| n == p && t.is_none()))
    }

    pub(crate) fn enforcing(&self) -> Vec<(String, bool)> {
        let core = self.core_attached();
        let current = self
            .maps
            .lock()
            .expect("maps lock")
            .config()
            .map(|c| c.generation())
            .ok();
        let a = self.active.read().expect("active lock");
        let gen_ok = current == Some(a.generation);
        a.policy
            .identities
            .iter()
            .map(|i| {
                // A pod identity covers however many pods it selects now, none included; it is
                // enforcing when the programs are and the pod watcher has listed the node.
                let bound = if i.pod.is_some() || i.unresolved {
                    self.pods.as_ref().is_some_and(|p| p.cache.synced())
                } else {
                    a.bindings.iter().any(|b| b.ident == i.id)
                };
                (i.name.clone(), core && gen_ok && bound)
            })
            .collect()
    }

    pub(crate) fn gauges(&self) -> Gauges {
        Gauges {
            generation: self.active.read().expect("active lock").generation,
            programs: self.programs(),
            enforcing: self.enforcing(),
            inventory: self.inventory.lock().expect("inventory lock").counts(),
            packet_guard: (
                self.features.packet_sockets.by,
                self.features.packet_sockets.interfaces.clone(),
            ),
            compat_guard: self.features.packet_sockets.compat.guard,
        }
    }

    /// `chokepoint inventory`.
    pub(crate) fn inventory_json(&self, identity: Option<&str>) -> serde_json::Value {
        self.inventory
            .lock()
            .expect("inventory lock")
            .view(identity)
    }

    /// Writes the inventory to the state dir when it changed since the last save.
    pub(crate) fn save_inventory(&self) {
        if !self
            .inventory_dirty
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let snapshot = self.inventory.lock().expect("inventory lock").clone();
        if let Err(e) = snapshot.save(&self.opts.state_dir) {
            self.inventory_dirty
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, "saving the inventory failed; retrying");
        }
    }

    pub(crate) fn identities_json(&self) -> serde_json::Value {
        let a = self.active.read().expect("active lock");
        let enforcing: HashMap<String, bool> = self.enforcing().into_iter().collect();
        let pod_bindings = self
            .pods
            .as_ref()
            .map(|p| p.bindings(&self.opts.cgroup_root, &a.policy))
            .unwrap_or_default();
        let list: Vec<serde_json::Value> = a
            .policy
            .identities
            .iter()
            .map(|i| {
                if i.pod.is_some() || i.unresolved {
                    let covered: Vec<serde_json::Value> = pod_bindings
                        .iter()
                        .filter(|b| b.binding.ident == i.id)
                        .map(|b| {
                            json!({
                                "namespace": b.pod.as_ref().map(|p| &p.namespace),
                                "pod": b.pod.as_ref().map(|p| &p.name),
                                "service_account": b.pod.as_ref().map(|p| &p.service_account),
                                "cgroup": format!("/{}", b.path),
                                "cgroup_id": b.binding.cgroup_id,
                            })
                        })
                        .collect();
                    return json!({
                        "name": i.name,
                        "tenant": i.tenant,
                        "mode": i.mode,
                        "selector": {"pod": i.pod},
                        "pods": covered,
                        "cgroups": covered.len(),
                        "gateways": i.gateways,
                        "rules": i.rules,
                        "destinations": i.entries.len(),
                        "enforcing": enforcing.get(&i.name).copied().unwrap_or(false),
                    });
                }
                let path = self.opts.cgroup_root.join(&i.cgroup_path);
                let cgroups = count_cgroups(&path);
                json!({
                    "name": i.name,
                    "tenant": i.tenant,
                    "mode": i.mode,
                    "selector": {"cgroupPath": format!("/{}", i.cgroup_path)},
                    "cgroup": path,
                    "cgroup_id": a.bindings.iter().find(|b| b.ident == i.id).map(|b| b.cgroup_id),
                    "cgroups": cgroups,
                    "gateways": i.gateways,
                    "rules": i.rules,
                    "destinations": i.entries.len(),
                    "enforcing": enforcing.get(&i.name).copied().unwrap_or(false),
                })
            })
            .collect();
        json!({"generation": a.generation, "identities": list})
    }

    pub(crate) fn status_json(&self) -> serde_json::Value {
        let programs = self.programs();
        let enforcing = self.enforcing();
        let core = self.core_attached();
        let a = self.active.read().expect("active lock");
        let kernel_gen = self
            .maps
            .lock()
            .expect("maps lock")
            .config()
            .map(|c| c.generation())
            .ok();
        let mut problems: Vec<String> = self
            .degraded
            .iter()
            .map(|(p, why)| format!("{p}: {why}"))
            .collect();
        for (p, up) in &programs {
            if !up {
                problems.push(format!("{p}: not attached"));
            }
        }
        if kernel_gen != Some(a.generation) {
            problems.push(format!(
                "kernel generation {kernel_gen:?} differs from the daemon's {}",
                a.generation
            ));
        }
        for (i, up) in &enforcing {
            if !up {
                problems.push(format!(
                    "identity {i}: not enforcing (cgroup missing or programs detached)"
                ));
            }
        }
        if let Some(covers) = self.backstop.lock().expect("backstop lock").as_ref() {
            for (identity, nets) in covers {
                for n in nets {
                    for f in &n.failed {
                        problems.push(format!(
                            "identity {identity}: TC backstop in netns {} failed: {f}",
                            n.netns
                        ));
                    }
                }
            }
        }
        let health = if !core {
            "not_enforcing"
        } else if problems.is_empty() {
            "enforcing"
        } else {
            "degraded"
        };
        let stats = self.stats.lock().expect("stats lock").snapshot().ok();
        json!({
            "generation": a.generation,
            "policy": {"name": a.policy.name, "digest": a.policy.digest, "applied_at": a.applied_at},
            "health": health,
            "enforcing": core && kernel_gen == Some(a.generation),
            "problems": problems,
            "programs": programs.iter().map(|(p, up)| json!({"program": p, "attached": up})).collect::<Vec<_>>(),
            "identities": enforcing.iter().map(|(i, up)| json!({"name": i, "enforcing": up, "backstop": self.backstop_json(i)})).collect::<Vec<_>>(),
            "records": {
                "delivered": self.metrics.delivered.load(Ordering::Relaxed),
                "lost": self.metrics.lost_kernel.load(Ordering::Relaxed) + self.metrics.lost_user.load(Ordering::Relaxed),
                "kernel_decisions": stats.as_ref().map(|s| s.emitted()),
            },
            "version": env!("CARGO_PKG_VERSION"),
            "node": self.node,
            "bpffs": self.opts.bpffs,
            "cgroup_root": self.opts.cgroup_root,
            "tc_ifaces": self.opts.tc_ifaces,
            "kubernetes": self.pods.as_ref().map(|p| {
                let (pods, namespaces) = p.cache.counts();
                json!({
                    "node": self.opts.kube.as_ref().map(|k| &k.node_name),
                    "policy": self.opts.kube.as_ref().and_then(|k| k.policy.as_ref()),
                    "synced": p.cache.synced(),
                    "pods": pods,
                    "namespaces": namespaces,
                    "lists": p.cache.lists.load(Ordering::Relaxed),
                    "watch_errors": p.cache.errors.load(Ordering::Relaxed),
                    "unresolved_pods": a.policy.unresolved_pods,
                })
            }),
            "kernel": self.features,
        })
    }

    /// Which per-packet backstops cover identity `name`: the BPF LSM (packet sockets refused),
    /// `cgroup/setsockopt` (options that skip TC refused), and TC: on `--tc-iface` interfaces and
    /// on every interface of each network namespace its processes live in.
    fn backstop_json(&self, name: &str) -> serde_json::Value {
        let pinned = crate::bpf::pinned_links(&self.opts.bpffs);
        let up = |p: &str| pinned.iter().any(|(n, t)| n == p && t.is_none());
        let netns = self
            .backstop
            .lock()
            .expect("backstop lock")
            .as_ref()
            .map(|m| json!(m.get(name).cloned().unwrap_or_default()));
        json!({
            "lsm": up(names::PROG_LSM_SOCKET),
            "setsockopt": up(names::PROG_SETSOCKOPT),
            "compat_syscall": up(names::PROG_COMPAT_SYS),
            "tc_ifaces": self.opts.tc_ifaces,
            "tc_netns": netns,
        })
    }

    pub(crate) fn policy_json(
        &self,
        generation: u32,
        policy: &CompiledPolicy,
    ) -> serde_json::Value {
        json!({
            "generation": generation,
            "name": policy.name,
            "digest": policy.digest,
            "gateways": policy.gateways,
            "identities": policy.identities,
            "resolved": policy.resolved,
            "source": policy.source,
        })
    }
}

fn count_cgroups(path: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        if !d.is_dir() {
            continue;
        }
        n += 1;
        if n > 100_000 {
            break;
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.filter_map(Result::ok) {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    n
}
