//! The connection limit: one slot per open connection, oldest first; idle connections give up
//! their slot to new ones.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use tokio::sync::Notify;

/// Counters of one server's connections.
#[derive(Debug, Default)]
pub struct SlotStats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// New connections closed because every slot had a request in flight.
    pub refused: AtomicU64,
    /// Requests handled.
    pub requests: AtomicU64,
}

/// One open connection's slot.
pub(super) struct Slot {
    id: u64,
    slots: Arc<Shared>,
    /// Requests in flight on this connection.
    in_flight: AtomicUsize,
    evict: Notify,
}

struct Shared {
    max: usize,
    open: Mutex<Open>,
    stats: Arc<SlotStats>,
}

#[derive(Default)]
struct Open {
    next: u64,
    /// By age: the smallest id is the oldest connection.
    conns: BTreeMap<u64, Arc<Slot>>,
}

/// The slots of one server.
pub(super) struct Slots(Arc<Shared>);

impl Slots {
    /// `max` connections at once.
    pub(super) fn new(max: usize, stats: Arc<SlotStats>) -> Self {
        Self(Arc::new(Shared {
            max: max.max(1),
            open: Mutex::new(Open::default()),
            stats,
        }))
    }

    /// A slot for a new connection, closing the oldest idle one when all are taken; `None` when
    /// every connection has a request in flight (the new one is refused).
    pub(super) fn admit(&self) -> Option<Arc<Slot>> {
        let mut open = self.0.open.lock().expect("slots lock");
        if open.conns.len() >= self.0.max && !Self::evict_oldest_idle(&self.0, &mut open) {
            self.0.stats.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let id = open.next;
        open.next += 1;
        let slot = Arc::new(Slot {
            id,
            slots: self.0.clone(),
            in_flight: AtomicUsize::new(0),
            evict: Notify::new(),
        });
        open.conns.insert(id, slot.clone());
        self.0.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Some(slot)
    }

    /// Closes the oldest idle connection (after an accept error: it frees a descriptor).
    pub(super) fn evict_idle(&self) {
        let mut open = self.0.open.lock().expect("slots lock");
        Self::evict_oldest_idle(&self.0, &mut open);
    }

    fn evict_oldest_idle(shared: &Shared, open: &mut Open) -> bool {
        let Some(id) = open
            .conns
            .values()
            .find(|s| s.in_flight.load(Ordering::Relaxed) == 0)
            .map(|s| s.id)
        else {
            return false;
        };
        if let Some(s) = open.conns.remove(&id) {
            // notify_one keeps the wakeup when the connection is not waiting yet.
            s.evict.notify_one();
            shared.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

/// Marks a request in flight until dropped.
pub(super) struct InFlight(Arc<Slot>);

impl Slot {
    /// Marks a request in flight on this connection (it is not evicted meanwhile).
    pub(super) fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.slots.stats.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves when the server closes this connection to make room.
    pub(super) async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slots {
    #[cfg(test)]
    fn open(&self) -> usize {
        self.0.open.lock().expect("slots lock").conns.len()
    }
}

/// Releases a connection's slot when its task ends.
pub(super) struct Release(pub(super) Arc<Slot>);

impl Drop for Release {
    fn drop(&mut self) {
        let s = &self.0;
        s.slots.open.lock().expect("slots lock").conns.remove(&s.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_make_room_busy_ones_do_not() {
        let stats = Arc::new(SlotStats::default());
        let slots = Slots::new(2, stats.clone());
        let a = slots.admit().expect("a");
        let b = slots.admit().expect("b");
        let _busy_a = a.request();
        // b is idle: it makes room for c.
        let c = slots.admit().expect("c");
        assert_eq!(stats.evicted.load(Ordering::Relaxed), 1);
        assert_eq!(slots.open(), 2);
        let _busy_c = c.request();
        // a and c are busy: d is refused.
        assert!(slots.admit().is_none());
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        drop(Release(b));
        drop(Release(a.clone()));
        assert_eq!(slots.open(), 1);
    }
}
