//! The DNS answer consumer: drains `CP_DNSANS` (answers the kernel copied from identities'
//! sanctioned resolvers), parses each with hickory-proto and teaches the name table which name
//! each address answered; destinations the inventory already lists get their name at once.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use chokepoint_common::{DNSANS_DATA, DnsAnswer};
use hickory_proto::op::Message;

use super::{EnrichNames, Shared};
use crate::audit::record::Names;

/// How often the ring is drained when no wakeup came (answers submit without waking us).
const POLL: Duration = Duration::from_millis(50);

pub(crate) async fn consume(
    shared: Arc<Shared>,
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd lives.
    let mut afd = unsafe { tokio::io::unix::AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("registering the DNS answer ring: {}", e.into_parts().1))?;
    loop {
        if let Ok(ready) = tokio::time::timeout(POLL, afd.readable_mut()).await {
            ready?.clear_ready();
        }
        let mut answers = Vec::new();
        {
            let rb = afd.get_mut();
            while let Some(item) = rb.next() {
                if item.len() >= size_of::<DnsAnswer>() {
                    // SAFETY: the kernel wrote a whole DnsAnswer; read_unaligned copes with
                    // alignment.
                    answers.push(unsafe {
                        std::ptr::read_unaligned(item.as_ptr().cast::<DnsAnswer>())
                    });
                }
                if answers.len() >= 1024 {
                    break;
                }
            }
        }
        if let Ok(per_cpu) = lost.get(&0, 0) {
            shared
                .dns_answers
                .lost
                .store(per_cpu.iter().sum(), Ordering::Relaxed);
        }
        for a in &answers {
            learn(&shared, a);
        }
    }
}

/// Learns one captured answer.
fn learn(shared: &Shared, a: &DnsAnswer) {
    let names = EnrichNames {
        shared,
        paths: None,
    };
    let Some((identity, _tenant)) = names.identity(a.generation, a.ident) else {
        return;
    };
    let len = usize::from(a.len).min(DNSANS_DATA);
    let Ok(msg) = Message::from_vec(&a.data[..len]) else {
        // A truncated capture (an answer longer than the capture) does not parse either.
        shared.dns_answers.unparsed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    shared.dns_answers.parsed.fetch_add(1, Ordering::Relaxed);
    let learned = shared.host_names.learn_message(&identity, &msg);
    if learned.pairs.is_empty() {
        return;
    }
    let mut inv = shared.inventory.lock().expect("inventory lock");
    let mut changed = false;
    for (addr, name) in &learned.pairs {
        changed |= inv.name_destination(&identity, *addr, name);
    }
    if changed {
        shared.inventory_dirty.store(true, Ordering::Relaxed);
    }
}

impl super::shared::DnsAnswerCounts {
    /// The `chokepoint_dns_answers_total{result}` family.
    pub(crate) fn family(&self) -> crate::metrics::family::Family {
        use crate::metrics::family::{Family, Value};
        let mut f = Family::counter(
            "chokepoint_dns_answers_total",
            "DNS answers identities received from their sanctioned resolvers, captured to name the inventory's destinations, by result (parsed, unparsed, lost: the capture ring was full).",
        );
        for (result, n) in [
            ("parsed", &self.parsed),
            ("unparsed", &self.unparsed),
            ("lost", &self.lost),
        ] {
            f.push(
                vec![("result", result.to_string())],
                Value::Int(n.load(Ordering::Relaxed)),
            );
        }
        f
    }
}
