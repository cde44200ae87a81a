//! Host names for the inventory: a DNS answer (UDP from port 53) that reaches a socket of an
//! identity from a peer the socket may send to — its sanctioned resolver — is copied, up to
//! [`DNSANS_DATA`] bytes, to [`CP_DNSANS`]. Userspace parses it and learns which name each
//! address answered, so the inventory can name the destinations an identity tried. Capture
//! never changes a verdict; a full ring counts in [`CP_DNSLOST`].

use aya_ebpf::{
    bindings::__sk_buff, helpers::generated::bpf_skb_load_bytes, programs::sk_buff::SkBuff,
};
use chokepoint_common::{Config, DNSANS_DATA, DnsAnswer};

use crate::{
    decide::Ident,
    maps::{CP_DNSANS, CP_DNSLOST},
};

/// The DNS port.
pub(crate) const DNS_PORT: u16 = 53;
/// A DNS header is 12 bytes: anything shorter is not an answer.
const DNS_HEADER: u32 = 12;

/// Copies the UDP payload at `payload` (offset in the packet) to the answer ring.
#[inline(always)]
pub(crate) fn capture(
    skb: &SkBuff,
    cfg: &Config,
    id: &Ident,
    cgid: u64,
    family: u8,
    peer: &[u8; 16],
    payload: usize,
) {
    let raw: *mut __sk_buff = skb.skb;
    // SAFETY: `skb.skb` is the program's context pointer, valid for the whole run.
    let total = unsafe { (*raw).len };
    let off = payload as u32;
    if total <= off {
        return;
    }
    let mut len = total - off;
    if len < DNS_HEADER {
        return;
    }
    if len > DNSANS_DATA as u32 {
        len = DNSANS_DATA as u32;
    }
    let Some(mut slot) = CP_DNSANS.reserve::<DnsAnswer>(0) else {
        if let Some(c) = CP_DNSLOST.get_ptr_mut(0) {
            // SAFETY: a verifier-checked pointer to this CPU's counter; a program runs to
            // completion on its CPU, so no other writer touches it meanwhile.
            unsafe { *c += 1 };
        }
        return;
    };
    let a = slot.as_mut_ptr();
    // SAFETY: `a` is the reserved ring slot, sized and aligned for one `DnsAnswer` and ours
    // alone until submitted; writing through the raw pointer initialises its header fields.
    unsafe {
        (*a).generation = cfg.generation();
        (*a).ident = id.ident;
        (*a).cgroup_id = cgid;
        (*a).peer = *peer;
        (*a).family = family;
        (*a)._pad = 0;
        (*a)._pad2 = 0;
    }
    // The verifier needs the length's bounds where the helper is called (1..=512): for
    // `len` in 12..=512 this is `len`, in a form whose range the verifier can follow.
    let n = ((len - 1) & (DNSANS_DATA as u32 - 1)) + 1;
    // SAFETY: the context pointer, and a destination inside the reserved slot whose length `n`
    // (1..=DNSANS_DATA) fits `data`; the helper bounds-checks the packet side.
    let rc = unsafe {
        bpf_skb_load_bytes(
            raw.cast(),
            off,
            core::ptr::addr_of_mut!((*a).data).cast(),
            n,
        )
    };
    if rc != 0 {
        slot.discard(0);
        return;
    }
    // SAFETY: the same reserved slot, still ours until `submit`.
    unsafe { (*a).len = n as u16 };
    slot.submit(0);
}
