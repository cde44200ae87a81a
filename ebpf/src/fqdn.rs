//! `toFQDN` rules in the kernel: addresses the daemon's DNS proxy learned for an identity (with
//! their expiry, checked here on the boot clock, so a learned address lapses on time even while
//! the daemon is down), the redirect of an identity's DNS to the proxy in `connect4`/`sendmsg4`,
//! and `cgroup/recvmsg4` (5.2), which restores the resolver as the source of the proxy's replies.

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use chokepoint_common::{
    DnsOrig, FqdnKey, MAX_FQDN_ENTRIES, PROTO_ANY, PROTO_UDP, reason, verdict,
};

use crate::{
    decide::{Decision, Dest, Ident, now_ns},
    maps::{CP_DNSCFG, CP_DNSORIG, CP_DNSPX, CP_FQDN},
};

/// 127.0.0.1, where sockets of the daemon's own network namespace reach the proxy.
const LOOPBACK4: [u8; 4] = [127, 0, 0, 1];
const DNS_PORT: u16 = 53;

/// An allow for `d` from the addresses `id` learned, or from the proxy itself (the redirected
/// lookups, as the packet backstop sees them). `None` when neither allows it.
#[inline(always)]
pub fn allow(id: &Ident, d: &Dest) -> Option<Decision> {
    let key = FqdnKey {
        ident: id.ident,
        family: d.family,
        _pad: [0; 3],
        addr: d.addr,
    };
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
pub fn redirect(ctx: &SockAddrContext, id: &Ident, d: &Dest, dec: &Decision) -> Option<Dest> {
    if dec.verdict == verdict::DENY
        || dec.reason != reason::RULE
        || d.family != 4
        || d.proto != PROTO_UDP
        || d.port != DNS_PORT
    {
        return None;
    }
    let px = unsafe { CP_DNSPX.get(id.ident) }?;
    let cfg = CP_DNSCFG.get(0)?;
    let sa = unsafe { &mut *ctx.sock_addr };
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
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // Without the reverse entry the reply could not be matched to the resolver: do not redirect
    // then (the lookup reaches the resolver, and nothing is learned from it: fail closed).
    CP_DNSORIG.insert(cookie, orig, 0).ok()?;
    sa.user_ip4 = u32::from_ne_bytes(target);
    sa.user_port = (px.port.to_be() as u32) & 0xffff;
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
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    if let Some(o) = unsafe { CP_DNSORIG.get(cookie) } {
        let sa = unsafe { &mut *ctx.sock_addr };
        let port = u16::from_be(sa.user_port as u16);
        if sa.user_ip4.to_ne_bytes() == o.proxy_addr && port == o.proxy_port {
            sa.user_ip4 = u32::from_ne_bytes(o.addr);
            sa.user_port = (o.port.to_be() as u32) & 0xffff;
        }
    }
}

/// `cgroup/recvmsg4`: a datagram from the proxy on a redirected socket is shown as coming from
/// the resolver the socket addressed, so resolvers' source checks (glibc, musl) accept it.
#[cgroup_sock_addr(recvmsg4)]
pub fn cp_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore(&ctx);
    1
}

/// `cgroup/getpeername4` (5.8): a connected, redirected socket's peer is the resolver.
#[cgroup_sock_addr(getpeername4)]
pub fn cp_getpeername4(ctx: SockAddrContext) -> i32 {
    restore(&ctx);
    1
}
