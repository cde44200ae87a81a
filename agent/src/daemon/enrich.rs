//! Names for record enrichment: identities and rules of recent generations, task names, cgroup
//! paths.

use super::Shared;
use crate::{audit::Names, cgroup::PathCache};

pub(crate) struct EnrichNames<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) paths: Option<&'a mut PathCache>,
}

impl Names for EnrichNames<'_> {
    fn identity(&self, generation: u32, ident: u32) -> Option<(String, Option<String>)> {
        let g = self.shared.generations.read().expect("generations lock");
        let p = g.get(&generation)?;
        let id = p.identities.get(ident.checked_sub(1)? as usize)?;
        Some((id.name.clone(), id.tenant.clone()))
    }
    fn rule(&self, generation: u32, ident: u32, reason: u8, rule: u32) -> Option<String> {
        let g = self.shared.generations.read().expect("generations lock");
        g.get(&generation)?.rule_label(ident, reason, rule)
    }
    fn task(&self, task: u64) -> Option<String> {
        self.shared
            .tasks
            .read()
            .expect("tasks lock")
            .get(&task)
            .cloned()
    }
    fn cgroup(&mut self, id: u64) -> Option<String> {
        self.paths.as_mut()?.path(id)
    }
    fn fqdn_name(&self, identity: &str, addr: std::net::IpAddr, rule: u32) -> Option<String> {
        self.shared.fqdn.name_for(identity, addr, rule)
    }
    fn pod(&self, cgroup: &str) -> Option<crate::audit::record::PodRef> {
        let p = self.shared.pods.as_ref()?.cache.pod_of_cgroup(cgroup)?;
        Some(crate::audit::record::PodRef {
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
            service_account: p.service_account.clone(),
        })
    }
}
