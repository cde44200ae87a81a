//! Gateway attestation: "which identity, tenant and task is behind this live connection?",
//! answered from the kernel-maintained map of established gateway connections.
//!
//! A read-only HTTP endpoint, separate from the admin API, on a Unix socket (default
//! `/run/chokepoint/attest.sock`, mode 0660, optional group) and optionally a loopback TCP port:
//!
//! `GET /v1/attest?peer=IP:PORT&local=IP:PORT` → `200 {identity, tenant, task, pid, cgroup, since,
//! policy_generation, socket_cookie}` or `404` when no live connection of an identity matches;
//! `400` for a malformed request, `405` for another method, `408` for a slow one, `431` for an
//! oversized head.

pub mod http;
pub mod names;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use chokepoint_common::AttestVal;
pub use http::{HEAD_TIMEOUT, MAX_CONNECTIONS, MAX_HEAD, bind_unix, serve};
pub use names::CgroupNames;
use serde_json::{Value, json};

use crate::{metrics::Metrics, util};

/// What an answer needs from the daemon.
pub trait Source: Send + Sync + 'static {
    /// The attestation counters.
    fn metrics(&self) -> &Metrics;
    /// The live gateway connection from `peer` to `local`, if any.
    fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Option<AttestVal>;
    /// Identity name and tenant of `ident` under `generation`.
    fn identity_of(&self, generation: u32, ident: u32) -> Option<(String, Option<String>)>;
    /// Task name of a numeric task id.
    fn task_name(&self, task: u64) -> Option<String>;
    /// The path of a cgroup id, from the watcher's cache (never a walk of the tree).
    fn cgroup_name(&self, id: u64) -> Option<Arc<str>>;
    /// This node's name.
    fn node(&self) -> &str;
}

/// Looks up a connection: `Ok(answer)` or `Err((http status, message))`.
pub fn answer<S: Source + ?Sized>(
    shared: &S,
    peer: &str,
    local: &str,
) -> Result<Value, (u16, String)> {
    let bad = |what: &str, v: &str| {
        (
            400,
            format!("`{what}` must be IP:PORT or [IPv6]:PORT, got `{v}`"),
        )
    };
    let p: SocketAddr = peer.parse().map_err(|_| {
        shared
            .metrics()
            .attest_bad_request
            .fetch_add(1, Ordering::Relaxed);
        bad("peer", peer)
    })?;
    let l: SocketAddr = local.parse().map_err(|_| {
        shared
            .metrics()
            .attest_bad_request
            .fetch_add(1, Ordering::Relaxed);
        bad("local", local)
    })?;
    let found = shared.lookup(p, l);
    let Some(v) = found else {
        shared
            .metrics()
            .attest_not_found
            .fetch_add(1, Ordering::Relaxed);
        return Err((
            404,
            format!("no live connection of an enforced identity from {p} to {l}"),
        ));
    };
    shared
        .metrics()
        .attest_found
        .fetch_add(1, Ordering::Relaxed);
    let (identity, tenant) = shared
        .identity_of(v.generation, v.ident)
        .map_or((None, None), |(n, t)| (Some(n), t));
    Ok(json!({
        "identity": identity,
        "tenant": tenant,
        "task": if v.task != 0 { shared.task_name(v.task) } else { None },
        "pid": (v.pid_tgid >> 32) as u32,
        "cgroup": shared.cgroup_name(v.cgroup_id).as_deref(),
        "since": util::rfc3339_ns(util::boot_to_wall_ns(v.since_ns)),
        "policy_generation": v.generation,
        "socket_cookie": v.cookie,
        "node": shared.node(),
    }))
}
