//! Read-only views of the daemon: programs attached, enforcement per identity, the status and
//! identities documents of the API, and the gauges of the metrics page.

use std::{collections::HashMap, path::Path, sync::atomic::Ordering};

use chokepoint_common::names;

use super::Shared;
use crate::{
    api::responses::{
        BackstopState, Bound, Health, Identities, IdentityState, IdentityView, Inventory,
        KubeStatus, PodBinding, PolicyRef, PolicyShow, ProgramState, RecordCounts, SelectorView,
        Status,
    },
    bpf,
    metrics::Gauges,
    policy::CompiledPolicy,
};

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
            if p == names::PROG_COMPAT_SYS && self.features.packet_sockets.compat.hook == "kprobe" {
                // The guard is on kprobes instead: one link per compat entry function.
                for f in &self.features.packet_sockets.compat.attach {
                    let up = pinned.iter().any(|(n, t)| {
                        n == names::PROG_COMPAT_KPROBE && t.as_deref() == Some(f.as_str())
                    });
                    out.push((format!("{}@{f}", names::PROG_COMPAT_KPROBE), up));
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
            tc_netns: self.backstop_netns(),
        }
    }

    /// Each namespace the per-netns backstop covers (once, whichever identities live there).
    fn backstop_netns(&self) -> Vec<(u64, &'static str, usize, usize)> {
        let mut seen = std::collections::BTreeMap::new();
        if let Some(covers) = self.backstop.lock().expect("backstop lock").as_ref() {
            for c in covers.values().flatten() {
                seen.entry(c.netns).or_insert((
                    c.netns,
                    c.mode.map_or("unknown", crate::bpf::tc::TcMode::name),
                    c.ifaces.len(),
                    c.failed.len(),
                ));
            }
        }
        seen.into_values().collect()
    }

    /// `chokepoint inventory`.
    pub(crate) fn inventory(&self, identity: Option<&str>) -> Inventory {
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

    /// `chokepoint identities`.
    pub(crate) fn identities(&self) -> Identities {
        let a = self.active.read().expect("active lock");
        let enforcing: HashMap<String, bool> = self.enforcing().into_iter().collect();
        let pod_bindings = self
            .pods
            .as_ref()
            .map(|p| p.bindings(&self.opts.cgroup_root, &a.policy))
            .unwrap_or_default();
        let identities = a
            .policy
            .identities
            .iter()
            .map(|i| {
                let (selector, bound, cgroups) = if i.pod.is_some() || i.unresolved {
                    let pods: Vec<PodBinding> = pod_bindings
                        .iter()
                        .filter(|b| b.binding.ident == i.id)
                        .map(|b| PodBinding {
                            namespace: b.pod.as_ref().map(|p| p.namespace.clone()),
                            pod: b.pod.as_ref().map(|p| p.name.clone()),
                            service_account: b.pod.as_ref().map(|p| p.service_account.clone()),
                            cgroup: format!("/{}", b.path),
                            cgroup_id: b.binding.cgroup_id,
                        })
                        .collect();
                    let selector = SelectorView {
                        cgroup_path: None,
                        pod: i.pod.as_ref().and_then(|p| serde_json::to_value(p).ok()),
                    };
                    let n = pods.len();
                    (selector, Bound::Pods { pods }, n)
                } else {
                    let path = self.opts.cgroup_root.join(&i.cgroup_path);
                    let cgroups = count_cgroups(&path);
                    let selector = SelectorView {
                        cgroup_path: Some(format!("/{}", i.cgroup_path)),
                        pod: None,
                    };
                    let cgroup_id = a
                        .bindings
                        .iter()
                        .find(|b| b.ident == i.id)
                        .map(|b| b.cgroup_id);
                    (
                        selector,
                        Bound::Cgroup {
                            cgroup: path,
                            cgroup_id,
                        },
                        cgroups,
                    )
                };
                IdentityView {
                    name: i.name.clone(),
                    tenant: i.tenant.clone(),
                    mode: i.mode,
                    selector,
                    bound,
                    cgroups,
                    gateways: i.gateways.clone(),
                    rules: i.rules.clone(),
                    destinations: i.entries.len(),
                    enforcing: enforcing.get(&i.name).copied().unwrap_or(false),
                }
            })
            .collect();
        Identities {
            generation: a.generation,
            identities,
        }
    }

    /// `chokepoint status` (and `/healthz`).
    pub(crate) fn status(&self) -> Status {
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
            Health::NotEnforcing
        } else if problems.is_empty() {
            Health::Enforcing
        } else {
            Health::Degraded
        };
        let stats = self.stats.lock().expect("stats lock").snapshot().ok();
        let m = &self.metrics;
        Status {
            generation: a.generation,
            policy: PolicyRef {
                name: a.policy.name.clone(),
                digest: a.policy.digest.clone(),
                applied_at: a.applied_at.clone(),
            },
            health,
            enforcing: core && kernel_gen == Some(a.generation),
            problems,
            programs: programs
                .into_iter()
                .map(|(program, attached)| ProgramState { program, attached })
                .collect(),
            identities: enforcing
                .iter()
                .map(|(i, up)| IdentityState {
                    name: i.clone(),
                    enforcing: *up,
                    backstop: self.backstop_state(i),
                })
                .collect(),
            records: RecordCounts {
                delivered: m.delivered.load(Ordering::Relaxed),
                lost: m.lost_kernel.load(Ordering::Relaxed) + m.lost_user.load(Ordering::Relaxed),
                kernel_decisions: stats
                    .as_ref()
                    .map(super::super::bpf::maps::StatsSnapshot::emitted),
            },
            version: env!("CARGO_PKG_VERSION").into(),
            node: self.node.clone(),
            bpffs: self.opts.bpffs.clone(),
            cgroup_root: self.opts.cgroup_root.clone(),
            tc_ifaces: self.opts.tc_ifaces.clone(),
            kubernetes: self.pods.as_ref().map(|p| {
                let (pods, namespaces) = p.cache.counts();
                KubeStatus {
                    node: self.opts.kube.as_ref().map(|k| k.node_name.clone()),
                    policy: self.opts.kube.as_ref().and_then(|k| k.policy.clone()),
                    synced: p.cache.synced(),
                    pods,
                    namespaces,
                    lists: p.cache.lists.load(Ordering::Relaxed),
                    watch_errors: p.cache.errors.load(Ordering::Relaxed),
                    unresolved_pods: a.policy.unresolved_pods,
                }
            }),
            kernel: serde_json::to_value(&self.features).unwrap_or_default(),
        }
    }

    /// Which per-packet backstops cover identity `name`: the BPF LSM (packet sockets refused),
    /// `cgroup/setsockopt` (options that skip TC refused), and TC: on `--tc-iface` interfaces and
    /// on every interface of each network namespace its processes live in.
    fn backstop_state(&self, name: &str) -> BackstopState {
        let pinned = crate::bpf::pinned_links(&self.opts.bpffs);
        let up = |p: &str| pinned.iter().any(|(n, t)| n == p && t.is_none());
        let tc_netns = self
            .backstop
            .lock()
            .expect("backstop lock")
            .as_ref()
            .map(|m| serde_json::to_value(m.get(name).cloned().unwrap_or_default()))
            .and_then(Result::ok);
        BackstopState {
            lsm: up(names::PROG_LSM_SOCKET),
            setsockopt: up(names::PROG_SETSOCKOPT),
            compat_syscall: if self.features.packet_sockets.compat.hook == "kprobe" {
                self.features.packet_sockets.compat.attach.iter().all(|f| {
                    pinned.iter().any(|(n, t)| {
                        n == names::PROG_COMPAT_KPROBE && t.as_deref() == Some(f.as_str())
                    })
                })
            } else {
                up(names::PROG_COMPAT_SYS)
            },
            tc_ifaces: self.opts.tc_ifaces.clone(),
            tc_netns,
        }
    }

    /// `chokepoint policy show`.
    #[allow(
        clippy::unused_self,
        reason = "a view of the daemon like its neighbours"
    )]
    pub(crate) fn policy_show(&self, generation: u32, policy: &CompiledPolicy) -> PolicyShow {
        PolicyShow {
            generation,
            name: policy.name.clone(),
            digest: policy.digest.clone(),
            gateways: policy.gateways.clone(),
            identities: serde_json::to_value(&policy.identities).unwrap_or_default(),
            resolved: policy.resolved.clone(),
            source: policy.source.clone(),
        }
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
