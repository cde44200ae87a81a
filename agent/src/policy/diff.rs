//! What changes between the active policy and a candidate (`policy diff`).

use serde::{Deserialize, Serialize};

use super::CompiledPolicy;

/// What applying a document would change (`policy_diff`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDiff {
    /// Digest of the active policy.
    pub from_digest: String,
    /// Digest of the candidate.
    pub to_digest: String,
    /// One line per change (`+ …`, `- …`, `~ …`).
    pub changes: Vec<String>,
}

/// What changes between the active policy and a candidate.
pub fn diff_policies(old: &CompiledPolicy, new: &CompiledPolicy) -> PolicyDiff {
    let mut changes = Vec::new();
    for g in &new.gateways {
        if !old.gateways.contains(g) {
            changes.push(format!("+ gateway {g}"));
        }
    }
    for g in &old.gateways {
        if !new.gateways.contains(g) {
            changes.push(format!("- gateway {g}"));
        }
    }
    for n in &new.identities {
        match old.identities.iter().find(|o| o.name == n.name) {
            None => changes.push(format!(
                "+ identity {} (/{}, {:?})",
                n.name, n.cgroup_path, n.mode
            )),
            Some(o) => {
                if o.mode != n.mode {
                    changes.push(format!(
                        "~ identity {}: mode {:?} → {:?}",
                        n.name, o.mode, n.mode
                    ));
                }
                if o.cgroup_path != n.cgroup_path {
                    changes.push(format!(
                        "~ identity {}: cgroupPath /{} → /{}",
                        n.name, o.cgroup_path, n.cgroup_path
                    ));
                }
                if o.tenant != n.tenant {
                    changes.push(format!(
                        "~ identity {}: tenant {:?} → {:?}",
                        n.name, o.tenant, n.tenant
                    ));
                }
                for (c, e) in &n.entries {
                    match o.entries.get(c) {
                        None => changes.push(format!("~ identity {}: + destination {c}", n.name)),
                        Some(oe) if oe != e => {
                            changes.push(format!("~ identity {}: ports changed at {c}", n.name));
                        }
                        _ => {}
                    }
                }
                for c in o.entries.keys() {
                    if !n.entries.contains_key(c) {
                        changes.push(format!("~ identity {}: - destination {c}", n.name));
                    }
                }
            }
        }
    }
    for o in &old.identities {
        if !new.identities.iter().any(|n| n.name == o.name) {
            changes.push(format!("- identity {}", o.name));
        }
    }
    PolicyDiff {
        from_digest: old.digest.clone(),
        to_digest: new.digest.clone(),
        changes,
    }
}
