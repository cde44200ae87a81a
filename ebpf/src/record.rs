//! Records: every decision is counted, and written straight into the ring buffer with a wakeup
//! policy that keeps allowed flows cheap.

use core::ptr;

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use chokepoint_common::{EVENTS_BYTES, Event, STAT_LOST, reason, stat_index, verdict};

use crate::{
    helpers::now_ns,
    maps::{CP_EVENTS, CP_STATS},
};

/// Build variant of this object, only in test builds: `CHOKEPOINT_BUILD_VARIANT` set at build time
/// (xtask's variant build for the upgrade test). It is counted with every record in an otherwise
/// unused counter slot (verdict 0), which makes objects of different variants differ in their
/// instructions. Without it (every ordinary and release build) there is no such instruction.
const BUILD_VARIANT: Option<u8> = match option_env!("CHOKEPOINT_BUILD_VARIANT") {
    Some(v) if !v.is_empty() => Some(v.as_bytes()[0].wrapping_sub(b'0') % reason::COUNT),
    _ => None,
};

/// Counts one decision.
#[inline(always)]
fn count(index: u32) {
    if let Some(p) = CP_STATS.get_ptr_mut(index) {
        // SAFETY: a verifier-checked pointer to this CPU's counter; a program runs to completion
        // on its CPU, so no other writer touches it meanwhile.
        unsafe { *p += 1 };
    }
}

/// Pending bytes in the ring at which a record wakes the consumer whatever its verdict: 1/8 and
/// 1/2 of the ring.
const WAKE_AT: [u64; 2] = [EVENTS_BYTES as u64 / 8, EVENTS_BYTES as u64 / 2];
/// Width of the band above a [`WAKE_AT`] mark in which a record wakes (a few records, so
/// concurrent producers cannot all step over it).
const WAKE_BAND: u64 = 1024;

/// How a record notifies the consumer. A denial or audit wakes it when it had caught up
/// (adaptive: alerts are prompt). An allowed flow does not (the consumer also drains on its own
/// 10-100 ms timer): a wakeup is an irq_work self-interrupt on the CPU of the connecting task,
/// which on a VM is an exit, and it was a large part of the allowed connect's cost. A record
/// that brings the pending bytes into a [`WAKE_AT`] band wakes it whatever the verdict, so a
/// burst is drained long before the ring is full (edge-triggered: a wakeup per record above
/// the mark would cost every record an interrupt).
#[inline(always)]
fn wakeup_flags(verdict_code: u8) -> u64 {
    let pending = CP_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    if (pending >= WAKE_AT[0] && pending < WAKE_AT[0] + WAKE_BAND)
        || (pending >= WAKE_AT[1] && pending < WAKE_AT[1] + WAKE_BAND)
    {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else if verdict_code == verdict::DENY || verdict_code == verdict::AUDIT {
        0
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Counts a decision and writes its record straight into the ring buffer (no copy on the BPF
/// stack): the slot is zeroed, `verdict`/`reason` set, then `fill` writes the rest. A failed
/// reserve is counted, never silent.
#[inline(always)]
pub(crate) fn record<F: FnOnce(&mut Event)>(verdict_code: u8, reason_code: u8, fill: F) {
    count(stat_index(verdict_code, reason_code));
    if let Some(v) = BUILD_VARIANT {
        count(stat_index(0, v));
    }
    match CP_EVENTS.reserve::<Event>(0) {
        Some(mut slot) => {
            let p = slot.as_mut_ptr();
            // SAFETY: `p` is the reserved ring slot, sized and aligned for one `Event` and ours
            // alone until submitted; zeroing it first makes every field initialised.
            unsafe { ptr::write_bytes(p, 0, 1) };
            // SAFETY: the same slot, now fully initialised and still exclusively ours.
            let ev = unsafe { &mut *p };
            ev.time_ns = now_ns();
            ev.verdict = verdict_code;
            ev.reason = reason_code;
            fill(ev);
            slot.submit(wakeup_flags(verdict_code));
        }
        None => count(STAT_LOST),
    }
}
