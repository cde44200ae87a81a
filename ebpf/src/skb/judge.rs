//! The verdict for one parsed packet: the socket's cached verdict, or a full decision.

use aya_ebpf::programs::sk_buff::SkBuff;
use chokepoint_common::{Config, SockTag, reason, verdict};

use super::parse::Pkt;
use crate::{
    decide::{Ident, decide, denied},
    helpers::{now_ns, skb_cookie},
    sktag::{cache_covers, cache_store, same_flow_was_allowed},
};

/// What to do with a packet and whether to record it.
pub(super) struct Outcome {
    pub(super) verdict: u8,
    pub(super) reason: u8,
    pub(super) rule: u32,
    pub(super) task: u64,
    pub(super) emit: bool,
}

/// The verdict for a parsed packet: the socket's cached verdict when it covers the packet under
/// the current epoch, a full decision otherwise.
#[inline(always)]
pub(super) fn judge(
    cfg: &Config,
    id: &Ident,
    tag_ptr: *mut SockTag,
    pkt: &Pkt,
    skb: &SkBuff,
) -> Outcome {
    let epoch = cfg.epoch();
    if !tag_ptr.is_null() {
        // SAFETY: a non-null socket-storage pointer stays valid while the program holds the
        // socket (the whole run).
        let t = unsafe { &mut *tag_ptr };
        if let Some((verdict, reason, emit)) = crate::reply::passive(cfg, id, t, &pkt.dst) {
            return Outcome {
                verdict,
                reason,
                rule: 0,
                task: 0,
                emit,
            };
        }
        // A cached UDP reply holds only while its peer's window is open.
        let reply_open = t.reason != reason::REPLY
            || crate::reply::udp_reply(cfg, id, skb_cookie(skb), &pkt.dst).is_some();
        if reply_open && cache_covers(t, epoch, &pkt.dst, pkt.port_known) {
            if t.verdict == verdict::ALLOW {
                if t.reason == reason::GRANT && t.grant_expires_ns <= now_ns() {
                    let dec = denied(id, reason::EXPIRED);
                    t.verdict = dec.verdict;
                    t.reason = dec.reason;
                    return Outcome {
                        verdict: dec.verdict,
                        reason: dec.reason,
                        rule: 0,
                        task: t.task,
                        emit: true,
                    };
                }
                return Outcome {
                    verdict: verdict::ALLOW,
                    reason: t.reason,
                    rule: t.rule,
                    task: t.task,
                    emit: false,
                };
            }
            // A cached audit passes silently (recorded once per flow); a cached deny is recorded
            // on every packet.
            return Outcome {
                verdict: t.verdict,
                reason: t.reason,
                rule: 0,
                task: 0,
                emit: t.verdict == verdict::DENY,
            };
        }
    }
    let mut dec = decide(cfg, id, &pkt.dst);
    let mut first_of_flow = true;
    let mut reply_first = None;
    if dec.verdict != verdict::ALLOW {
        reply_first = crate::reply::udp_reply(cfg, id, skb_cookie(skb), &pkt.dst);
        if reply_first.is_some() {
            dec = crate::reply::reply_decision();
        }
    }
    if !tag_ptr.is_null() {
        // SAFETY: a non-null socket-storage pointer, valid for the run (as above).
        let t = unsafe { &mut *tag_ptr };
        if same_flow_was_allowed(t, &pkt.dst) {
            if dec.verdict == verdict::ALLOW {
                first_of_flow = false;
            } else {
                dec.reason = if t.reason == reason::GRANT && t.grant_expires_ns <= now_ns() {
                    reason::EXPIRED
                } else {
                    reason::REVOKED
                };
            }
        }
        if pkt.port_known {
            cache_store(t, epoch, &pkt.dst, &dec);
        }
    }
    if let Some(first) = reply_first {
        first_of_flow = first;
    }
    Outcome {
        verdict: dec.verdict,
        reason: dec.reason,
        rule: dec.rule,
        task: dec.task,
        emit: dec.verdict != verdict::ALLOW || first_of_flow,
    }
}
