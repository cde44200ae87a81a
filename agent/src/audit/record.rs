//! Flow records: the schema and the enrichment of kernel events.

use chokepoint_common::{Event, hook, reason, verdict};
use serde::{Deserialize, Serialize};

use crate::{bpf::maps::event_addr, policy::parse::proto_name, util};

/// Version of the record schema (`docs/records.md`).
pub const SCHEMA_VERSION: u32 = 1;

/// One flow record (DESIGN.md §5).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowRecord {
    /// The record schema version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// Time of the kernel decision (RFC 3339, UTC, nanoseconds).
    pub time: String,
    /// `NODE_NAME` or the host name.
    pub node: String,
    /// The identity, from the generation the decision was made under.
    pub identity: Option<String>,
    /// The identity's tenant.
    pub tenant: Option<String>,
    /// Task id of the grant that allowed the flow.
    pub task: Option<String>,
    /// The socket's cgroup, relative to `--cgroup-root`.
    pub cgroup: Option<String>,
    /// Process id of the task that made the decision (per packet: the socket's creator).
    pub pid: Option<u32>,
    /// Command name of that task.
    pub comm: Option<String>,
    /// User id of that task.
    pub uid: Option<u32>,
    /// Address family, 4 or 6 (after IPv4-mapped normalisation).
    pub family: Option<u8>,
    /// `tcp`, `udp`, `icmp`, …; for refused sockets `raw`, `packet` or `afN/type`.
    pub proto: Option<String>,
    /// Source `ip:port` (known for per-packet decisions).
    pub src: Option<String>,
    /// Destination `ip:port` (`[ip]:port` for IPv6).
    pub dst: Option<String>,
    /// `allow`, `deny`, `audit` or `lost`.
    pub verdict: String,
    /// Why (`gateway`, `rule`, `grant`, `not_gateway`, …; `docs/records.md` lists them).
    pub reason: String,
    /// The hook that decided (`connect4`, `sendmsg6`, `skb`, …).
    pub hook: Option<String>,
    /// The generation the decision was made under.
    pub policy_generation: u32,
    /// The rule that matched: `gateway:NAME` or `allow[i]: reason`.
    pub rule: Option<String>,
    /// The kernel socket cookie (the join key with the gateway's logs).
    pub socket_cookie: Option<u64>,
    /// `enforce` or `audit`.
    pub mode: Option<String>,
    /// For `verdict: "lost"`: how many records were lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For `reason: "fqdn"`: the name whose answer allowed the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
    /// On Kubernetes: the pod's namespace, name and service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// On Kubernetes: the pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// On Kubernetes: the pod's service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// The pod behind a cgroup (Kubernetes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's service account.
    pub service_account: String,
}

/// What enrichment needs to know about the identities of a generation.
pub trait Names {
    /// Name and tenant of identity number `ident` (1-based) in generation `generation`.
    fn identity(&self, generation: u32, ident: u32) -> Option<(String, Option<String>)>;
    /// The `rule` field for a decision of `ident` in `generation` with `reason` and rule index
    /// `rule`.
    fn rule(&self, generation: u32, ident: u32, reason: u8, rule: u32) -> Option<String>;
    /// The task id behind the kernel's task number `task` (a hash of the id).
    fn task(&self, task: u64) -> Option<String>;
    /// The path of cgroup `id`, relative to the cgroup root.
    fn cgroup(&mut self, id: u64) -> Option<String>;
    /// The looked-up name that allowed `addr` under a `toFQDN` rule.
    fn fqdn_name(&self, _identity: &str, _addr: std::net::IpAddr, _rule: u32) -> Option<String> {
        None
    }
    /// The pod a cgroup path belongs to.
    fn pod(&self, _cgroup: &str) -> Option<PodRef> {
        None
    }
}

fn sock_proto(ev: &Event) -> String {
    if ev.hook == hook::SOCK_CREATE || ev.hook == hook::LSM_SOCKET {
        let ty = match ev.sock_type {
            1 => "stream",
            2 => "dgram",
            3 => "raw",
            5 => "seqpacket",
            10 => "packet",
            _ => "other",
        };
        return match ev.sock_family {
            17 => "packet".into(),
            2 | 10 if ev.sock_type == 3 => "raw".into(),
            2 | 10 => ty.into(),
            f => format!("af{f}/{ty}"),
        };
    }
    proto_name(ev.proto).to_string()
}

fn endpoint(family: u8, addr: &[u8; 16], port: u16) -> String {
    let ip = event_addr(family, addr);
    if family == 6 {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Turns a kernel event into a flow record.
pub fn enrich(ev: &Event, node: &str, names: &mut dyn Names) -> FlowRecord {
    let (identity, tenant) = names
        .identity(ev.generation, ev.ident)
        .map_or((None, None), |(n, t)| (Some(n), t));
    let pid = (ev.pid_tgid >> 32) as u32;
    let comm_end = ev
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(ev.comm.len());
    let comm = String::from_utf8_lossy(&ev.comm[..comm_end]).into_owned();
    let has_addr = ev.family == 4 || ev.family == 6;
    let fqdn = if ev.reason == reason::FQDN {
        identity
            .as_deref()
            .and_then(|i| names.fqdn_name(i, event_addr(ev.family, &ev.daddr), ev.rule))
    } else {
        None
    };
    let src_known = has_addr && ev.saddr != [0u8; 16];
    let cgroup = names.cgroup(ev.cgroup_id);
    let pod = cgroup.as_deref().and_then(|c| names.pod(c));
    let (namespace, pod, service_account) = match pod {
        Some(p) => (Some(p.namespace), Some(p.pod), Some(p.service_account)),
        None => (None, None, None),
    };
    FlowRecord {
        schema: SCHEMA_VERSION,
        time: util::rfc3339_ns(util::boot_to_wall_ns(ev.time_ns)),
        node: node.to_string(),
        identity,
        tenant,
        task: if ev.task != 0 {
            names.task(ev.task)
        } else {
            None
        },
        cgroup,
        pid: (pid != 0).then_some(pid),
        comm: (!comm.is_empty()).then_some(comm),
        uid: (ev.pid_tgid != 0 || ev.uid_gid != 0).then_some(ev.uid_gid as u32),
        family: has_addr.then_some(ev.family),
        proto: Some(sock_proto(ev)),
        src: src_known.then(|| endpoint(ev.family, &ev.saddr, ev.sport)),
        dst: (has_addr && ev.hook != hook::SOCK_CREATE && ev.hook != hook::LSM_SOCKET)
            .then(|| endpoint(ev.family, &ev.daddr, ev.dport)),
        verdict: verdict_name(ev.verdict).into(),
        reason: reason::name(ev.reason).into(),
        hook: Some(hook::name(ev.hook).into()),
        policy_generation: ev.generation,
        rule: names.rule(ev.generation, ev.ident, ev.reason, ev.rule),
        fqdn,
        socket_cookie: (ev.cookie != 0).then_some(ev.cookie),
        mode: Some(
            match ev.mode {
                chokepoint_common::MODE_AUDIT => "audit",
                _ => "enforce",
            }
            .into(),
        ),
        count: None,
        namespace,
        pod,
        service_account,
    }
}

/// A `verdict: "lost"` record for `count` records that never reached userspace.
pub fn lost_record(node: &str, count: u64, why: &str, generation: u32) -> FlowRecord {
    FlowRecord {
        schema: SCHEMA_VERSION,
        time: util::rfc3339_ns(util::wall_ns()),
        node: node.into(),
        identity: None,
        tenant: None,
        task: None,
        cgroup: None,
        pid: None,
        comm: None,
        uid: None,
        family: None,
        proto: None,
        src: None,
        dst: None,
        verdict: "lost".into(),
        reason: why.into(),
        hook: None,
        policy_generation: generation,
        rule: None,
        socket_cookie: None,
        mode: None,
        count: Some(count),
        fqdn: None,
        namespace: None,
        pod: None,
        service_account: None,
    }
}

/// Name of a verdict code.
pub fn verdict_name(v: u8) -> &'static str {
    match v {
        verdict::ALLOW => "allow",
        verdict::DENY => "deny",
        verdict::AUDIT => "audit",
        _ => "unknown",
    }
}
