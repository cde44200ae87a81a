//! `toFQDN` rules in the kernel: addresses the daemon's DNS proxy learned for an identity (with
//! their expiry, checked here on the boot clock, so a learned address lapses on time even while
//! the daemon is down), the redirect of an identity's DNS to the proxy in `connect4`/`sendmsg4`,
//! and `cgroup/recvmsg4` (5.2), which restores the resolver as the source of the proxy's replies.

use aya_ebpf::{
    helpers::generated::bpf_get_netns_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use chokepoint_common::{
    DnsOrig, FqdnKey, MAX_FQDN_ENTRIES, PROTO_ANY, PROTO_UDP, reason, verdict,
};

use crate::{
    decide::{Decision, Dest, Ident},
    helpers::{now_ns, sock_addr_cookie},
    maps::{CP_DNSCFG, CP_DNSORIG, CP_DNSPX, CP_FQDN},
};

/// 127.0.0.1, where sockets of the daemon's own network namespace reach the proxy.
const LOOPBACK4: [u8; 4] = [127, 0, 0, 1];
const DNS_PORT: u16 = 53;

/// An allow for `d` from the addresses `id` learned, or from the proxy itself (the redirected
/// lookups, as the packet backstop sees them). `None` when neither allows it.
#[inline(always)]
pub(crate) fn allow(id: &Ident, d: &Dest) -> Option<Decision> {
    let key = FqdnKey {
        ident: id.ident,
        family: d.family,
        _pad: [0; 3],
        addr: d.addr,
    };
    // SAFETY: the value is plain integers (expiry, ports), read at once; the daemon replaces an
    // entry whole, so a racing read gives the old or the new entry of this address.
    if let Some(v) = unsafe { CP_FQDN.get(key) } {
        let now = now_ns();
        let mut i = 0;
        while i < MAX_FQDN_ENTRIES {
            let e = &v.entries[i];
            if e.expires_ns > now
                && (e.proto == PROTO_ANY || e.proto == d.proto)
                && d.port >= e.port_lo
                && d.port <= e.port_hi
            {
                return Some(Decision {
                    verdict: verdict::ALLOW,
                    reason: reason::FQDN,
                    rule: e.rule,
                    task: 0,
                    expires_ns: 0,
                });
            }
            i += 1;
        }
    }
    if d.family == 4 && d.proto == PROTO_UDP {
        // SAFETY: plain integers (the proxy's port and rule), read at once; the daemon writes an
        // identity's proxy before any rule can lead here and replaces it whole.
        let px = unsafe { CP_DNSPX.get(id.ident) }?;
        let cfg = CP_DNSCFG.get(0)?;
        let a = [d.addr[0], d.addr[1], d.addr[2], d.addr[3]];
        if d.port == px.port && (a == LOOPBACK4 || (cfg.pod_addr != [0; 4] && a == cfg.pod_addr)) {
            return Some(Decision {
                verdict: verdict::ALLOW,
                reason: reason::RULE,
                rule: px.rule,
                task: 0,
                expires_ns: 0,
            });
        }
    }
    None
}

/// Redirects an allowed IPv4 UDP lookup of an identity with `toFQDN` rules to its proxy port:
/// rewrites the destination in `ctx` and remembers the resolver under the socket's cookie.
/// Returns the destination the packets will carry (for the socket's cached verdict).
#[inline(always)]
pub(crate) fn redirect(
    ctx: &SockAddrContext,
    id: &Ident,
    d: &Dest,
    dec: &Decision,
) -> Option<Dest> {
    if dec.verdict == verdict::DENY
        || dec.reason != reason::RULE
        || d.family != 4
        || d.proto != PROTO_UDP
        || d.port != DNS_PORT
    {
        return None;
    }
    // SAFETY: as in `allow`: plain integers, read at once, replaced whole by the daemon.
    let px = unsafe { CP_DNSPX.get(id.ident) }?;
    let cfg = CP_DNSCFG.get(0)?;
    // SAFETY: `ctx.sock_addr` is the program's context pointer, valid for the whole run; the
    // kernel lets `connect4`/`sendmsg4` write its `user_ip4` and `user_port`.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: the context pointer of a `sock_addr` program, which is what the helper takes.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    let target = if netns == cfg.host_netns || cfg.pod_addr == [0; 4] {
        LOOPBACK4
    } else {
        cfg.pod_addr
    };
    let orig = DnsOrig {
        addr: [d.addr[0], d.addr[1], d.addr[2], d.addr[3]],
        proxy_addr: target,
        port: d.port,
        proxy_port: px.port,
        _pad: 0,
    };
    let cookie = sock_addr_cookie(ctx);
    // Without the reverse entry the reply could not be matched to the resolver: do not redirect
    // then (the lookup reaches the resolver, and nothing is learned from it: fail closed).
    CP_DNSORIG.insert(cookie, orig, 0).ok()?;
    sa.user_ip4 = u32::from_ne_bytes(target);
    sa.user_port = u32::from(px.port.to_be());
    let mut to = *d;
    to.addr = [0; 16];
    to.addr[0] = target[0];
    to.addr[1] = target[1];
    to.addr[2] = target[2];
    to.addr[3] = target[3];
    to.port = px.port;
    Some(to)
}

/// Shows the resolver instead of the proxy in `ctx` when the socket was redirected.
#[inline(always)]
fn restore(ctx: &SockAddrContext) {
    let cookie = sock_addr_cookie(ctx);
    // SAFETY: plain integers (addresses and ports), read at once; only this socket's own
    // `redirect` writes its entry.
    if let Some(o) = unsafe { CP_DNSORIG.get(cookie) } {
        // SAFETY: the program's context pointer, valid for the whole run; `recvmsg4` and
        // `getpeername4` may rewrite the address they report.
        let sa = unsafe { &mut *ctx.sock_addr };
        let port = u16::from_be(sa.user_port as u16);
        if sa.user_ip4.to_ne_bytes() == o.proxy_addr && port == o.proxy_port {
            sa.user_ip4 = u32::from_ne_bytes(o.addr);
            sa.user_port = u32::from(o.port.to_be());
        }
    }
}

/// `cgroup/recvmsg4`: a datagram from the proxy on a redirected socket is shown as coming from
/// the resolver the socket addressed, so resolvers' source checks (glibc, musl) accept it.
#[cgroup_sock_addr(recvmsg4)]
fn cp_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore(&ctx);
    1
}

/// `cgroup/getpeername4` (5.8): a connected, redirected socket's peer is the resolver.
#[cgroup_sock_addr(getpeername4)]
fn cp_getpeername4(ctx: SockAddrContext) -> i32 {
    restore(&ctx);
    1
}
