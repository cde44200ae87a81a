//! The DNS parts of `cp-probe`: a small authoritative server for tests (`dns-serve`) and a client
//! lookup over UDP (`dns-query`), both on hickory-proto's wire format.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME},
    },
};
use serde_json::json;

/// One record of the test zone: `name=TYPE:value:ttl` (`*.suffix` names match one label).
struct Rr {
    name: String,
    kind: String,
    value: String,
    ttl: u32,
}

fn parse_spec(s: &str) -> Rr {
    let (name, rest) = s.split_once('=').expect("name=TYPE:value:ttl");
    let mut p = rest.splitn(2, ':');
    let kind = p.next().expect("type").to_ascii_uppercase();
    let rest = p.next().expect("value:ttl");
    let (value, ttl) = rest.rsplit_once(':').expect("value:ttl");
    Rr {
        name: name.trim_end_matches('.').to_ascii_lowercase(),
        kind,
        value: value.to_string(),
        ttl: ttl.parse().expect("ttl"),
    }
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(sfx) => name.split_once('.').is_some_and(|(_, rest)| rest == sfx),
        None => pattern == name,
    }
}

fn answer_for(zone: &[Rr], name: &str, qtype: RecordType, out: &mut Vec<Record>, depth: u32) {
    if depth > 8 {
        return;
    }
    let owner = Name::from_ascii(format!("{name}.")).expect("name");
    for r in zone.iter().filter(|r| name_matches(&r.name, name)) {
        match (r.kind.as_str(), qtype) {
            ("A", RecordType::A) => out.push(Record::from_rdata(
                owner.clone(),
                r.ttl,
                RData::A(A(r.value.parse().expect("v4"))),
            )),
            ("AAAA", RecordType::AAAA) => out.push(Record::from_rdata(
                owner.clone(),
                r.ttl,
                RData::AAAA(AAAA(r.value.parse().expect("v6"))),
            )),
            ("CNAME", _) => {
                let target = r.value.trim_end_matches('.').to_ascii_lowercase();
                out.push(Record::from_rdata(
                    owner.clone(),
                    r.ttl,
                    RData::CNAME(CNAME(
                        Name::from_ascii(format!("{target}.")).expect("target"),
                    )),
                ));
                answer_for(zone, &target, qtype, out, depth + 1);
            }
            _ => {}
        }
    }
}

/// `dns-serve ADDR:PORT SPEC...`: answers A/AAAA (and CNAME chains) from the specs; prints a
/// `ready` line, then one `query` line per question.
pub(crate) fn serve(bind: &str, specs: &[String]) {
    let zone: Vec<Rr> = specs.iter().map(|s| parse_spec(s)).collect();
    let sock = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
    crate::sys::out(json!({"event": "ready", "addr": bind}));
    let mut buf = [0u8; 4096];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok(q) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(query) = q.queries.first().cloned() else {
            continue;
        };
        let name = query
            .name
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        crate::sys::out(
            json!({"event": "query", "name": name, "type": query.query_type.to_string(), "peer": peer.to_string()}),
        );
        let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        m.metadata.recursion_desired = q.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.add_query(query.clone());
        let mut answers = Vec::new();
        answer_for(&zone, &name, query.query_type, &mut answers, 0);
        if answers.is_empty() && !zone.iter().any(|r| name_matches(&r.name, &name)) {
            m.metadata.response_code = ResponseCode::NXDomain;
        }
        m.add_answers(answers);
        if let Ok(bytes) = m.to_vec() {
            let _ = sock.send_to(&bytes, peer);
        }
    }
}

/// `dns-query SERVER:PORT NAME [A|AAAA] [connect|sendto]`: one lookup; prints the addresses
/// answered and where the answer came from (as the application sees it).
pub(crate) fn query(server: SocketAddr, name: &str, qtype: &str, mode: &str) -> serde_json::Value {
    let run = || -> std::io::Result<serde_json::Value> {
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("static")
        } else {
            "[::]:0".parse().expect("static")
        };
        let s = UdpSocket::bind(bind)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let rt = if qtype.eq_ignore_ascii_case("AAAA") {
            RecordType::AAAA
        } else {
            RecordType::A
        };
        let mut m = Message::new(
            (std::process::id() & 0xffff) as u16,
            MessageType::Query,
            OpCode::Query,
        );
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).expect("name"),
            rt,
        ));
        let bytes = m.to_vec().expect("encode");
        let mut buf = [0u8; 4096];
        let mut peer = None;
        let (n, from) = if mode == "sendto" {
            s.send_to(&bytes, server)?;
            s.recv_from(&mut buf)?
        } else {
            // Connected, then recvfrom: what glibc's resolver does (and checks the source of).
            s.connect(server)?;
            peer = Some(s.peer_addr()?.to_string());
            s.send(&bytes)?;
            s.recv_from(&mut buf)?
        };
        let resp = Message::from_vec(&buf[..n])
            .map_err(|e| std::io::Error::other(format!("bad answer: {e}")))?;
        let addrs: Vec<String> = resp
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0).to_string()),
                RData::AAAA(a) => Some(IpAddr::V6(a.0).to_string()),
                _ => None,
            })
            .collect();
        Ok(
            json!({"ok": true, "addrs": addrs, "from": from.to_string(), "peer": peer, "rcode": resp.metadata.response_code.to_string()}),
        )
    };
    match run() {
        Ok(v) => v,
        Err(e) => {
            json!({"ok": false, "errno": e.raw_os_error().unwrap_or(0), "error": e.to_string()})
        }
    }
}
