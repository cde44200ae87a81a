//! The DNS proxy: one UDP socket per identity with `toFQDN` rules. Messages are parsed with
//! hickory-proto (a maintained DNS implementation; the wire format has enough corners —
//! compression pointers, EDNS, CNAME chains — that hand-written parsing is a liability here).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, atomic::Ordering},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::RData,
};
use tokio::net::UdpSocket;
use tracing::debug;

use super::{Fqdn, UPSTREAM_TIMEOUT, qname};
use crate::policy::fqdn::normalise_name;

/// Longest CNAME chain followed.
const MAX_CHAIN: usize = 16;
/// Largest UDP DNS message handled (EDNS payloads above this are unusual).
const MAX_MESSAGE: usize = 4096;

/// Binds the proxy socket of one identity: on 127.0.0.1 (the daemon's namespace), or on every
/// address when pods are served (they reach it at `--dns-proxy-pod-addr`).
pub(super) fn bind(pods: bool) -> std::io::Result<UdpSocket> {
    let addr = if pods {
        Ipv4Addr::UNSPECIFIED
    } else {
        Ipv4Addr::LOCALHOST
    };
    let s = std::net::UdpSocket::bind(SocketAddr::from((addr, 0)))?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// Serves one identity's lookups until the task is aborted.
pub(super) async fn serve(fqdn: Arc<Fqdn>, identity: String, sock: UdpSocket) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (f, id, s) = (fqdn.clone(), identity.clone(), sock.clone());
        tokio::spawn(async move {
            if let Some(answer) = answer(&f, &id, &query).await {
                let _ = s.send_to(&answer, peer).await;
            }
        });
    }
}

/// Forwards one query and learns from its answer; `None` (the client gets no answer) when the
/// query is not a plain query, the resolver does not answer, or the answer does not parse.
async fn answer(fqdn: &Fqdn, identity: &str, query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.metadata.message_type != MessageType::Query || q.metadata.op_code != OpCode::Query {
        return None;
    }
    let name = qname(&q)?;
    let upstream = fqdn.upstream(identity)?;
    let Some(raw) = forward(upstream, query, &q).await else {
        fqdn.counters
            .upstream_failures
            .fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let resp = Message::from_vec(&raw).ok()?;
    if resp.metadata.response_code == ResponseCode::NoError {
        let addrs = chain_addresses(&name, &resp);
        fqdn.learn(identity, &name, &addrs);
    }
    // Every answered name, toFQDN or not, names destinations in the inventory.
    fqdn.host_names.learn_message(identity, &resp);
    fqdn.counters.lookups.fetch_add(1, Ordering::Relaxed);
    debug!(identity, name, "lookup answered");
    Some(raw)
}

/// Sends `query` to the resolver from a fresh socket (its own random port) and waits for the
/// response with the same id and question.
async fn forward(upstream: IpAddr, query: &[u8], q: &Message) -> Option<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(bind).await.ok()?;
    s.connect((upstream, 53)).await.ok()?;
    s.send(query).await.ok()?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        loop {
            let n = s.recv(&mut buf).await.ok()?;
            if let Ok(m) = Message::from_vec(&buf[..n])
                && m.metadata.message_type == MessageType::Response
                && m.metadata.id == q.metadata.id
                && m.queries == q.queries
            {
                return Some(buf[..n].to_vec());
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// The A/AAAA addresses that answer `name`, following CNAMEs from it; each with the smallest TTL
/// along its chain.
pub fn chain_addresses(name: &str, resp: &Message) -> Vec<(IpAddr, u32)> {
    // (name in the chain, smallest TTL to reach it)
    let mut chain: Vec<(String, u32)> = vec![(name.to_string(), u32::MAX)];
    for _ in 0..MAX_CHAIN {
        let mut grew = false;
        for r in &resp.answers {
            if let RData::CNAME(c) = &r.data {
                let owner = normalise_name(&r.name.to_ascii());
                let target = normalise_name(&c.0.to_ascii());
                if let Some(ttl) = chain.iter().find(|(n, _)| *n == owner).map(|c| c.1)
                    && !chain.iter().any(|(n, _)| *n == target)
                {
                    chain.push((target, ttl.min(r.ttl)));
                    grew = true;
                }
            }
        }
        if !grew {
            break;
        }
    }
    let mut out = Vec::new();
    for r in &resp.answers {
        let addr = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        let owner = normalise_name(&r.name.to_ascii());
        if let Some((_, ttl)) = chain.iter().find(|(n, _)| *n == owner) {
            out.push((addr, (*ttl).min(r.ttl)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{
        Name, Record,
        rdata::{A, AAAA, CNAME},
    };

    use super::*;

    #[test]
    fn follows_cname_chains_and_ignores_strays() {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        let n = |s: &str| Name::from_ascii(s).unwrap();
        m.add_answer(Record::from_rdata(
            n("api.example.com."),
            300,
            RData::CNAME(CNAME(n("lb.example.net."))),
        ));
        m.add_answer(Record::from_rdata(
            n("lb.example.net."),
            30,
            RData::CNAME(CNAME(n("edge.example.org."))),
        ));
        m.add_answer(Record::from_rdata(
            n("edge.example.org."),
            600,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
        ));
        m.add_answer(Record::from_rdata(
            n("edge.example.org."),
            5,
            RData::AAAA(AAAA("2001:db8::7".parse().unwrap())),
        ));
        // Not on the chain: never learned.
        m.add_answer(Record::from_rdata(
            n("evil.example.com."),
            600,
            RData::A(A(Ipv4Addr::new(203, 0, 113, 1))),
        ));
        let got = chain_addresses("api.example.com", &m);
        assert_eq!(
            got,
            vec![
                ("192.0.2.7".parse().unwrap(), 30),
                ("2001:db8::7".parse().unwrap(), 5)
            ]
        );
    }
}
