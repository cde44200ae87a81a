//! Periodic re-resolution of gateway host names; a changed answer becomes a new generation.

use std::time::Instant;

use tracing::{error, info, warn};

use super::{Shared, compile_cached};

impl Shared {
    /// old one past its grace period), the active policy is recompiled as a new generation.
    pub(crate) fn refresh_dns(&self) {
        let policy = self.active.read().expect("active lock").policy.clone();
        if policy.resolved.is_empty() {
            return;
        }
        let changed = policy.resolved.iter().any(|(host, compiled)| {
            match self.dns.resolve(
                host,
                443,
                &crate::policy::parse::system_resolve,
                Instant::now(),
            ) {
                Ok(now) => &now != compiled,
                Err(_) => false,
            }
        });
        if !changed {
            return;
        }
        match compile_cached(&self.dns, "dns-refresh", policy.source.as_bytes()) {
            Ok(p) => match self.apply(p, "dns-refresh", &crate::peer::Who::daemon()) {
                Ok(g) => info!(
                    generation = g,
                    "gateway addresses changed; policy recompiled"
                ),
                Err(e) => error!(error = %e, "applying re-resolved gateway addresses failed"),
            },
            Err(e) => {
                warn!(error = %e, "re-resolving gateway host names failed; keeping the active generation");
            }
        }
    }
}
