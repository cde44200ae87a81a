//! What changes between the active policy and a candidate (`policy diff`).

use serde_json::{Value, json};

use super::CompiledPolicy;

/// What changes between the active policy and a candidate.
pub fn diff_policies(old: &CompiledPolicy, new: &CompiledPolicy) -> Value {
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
                            changes.push(format!("~ identity {}: ports changed at {c}", n.name))
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
    json!({"from_digest": old.digest, "to_digest": new.digest, "changes": changes})
}
