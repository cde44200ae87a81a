//! The attestation endpoint's HTTP side: the Unix socket (mode, group), the optional loopback
//! TCP port, and the requests, served by [`crate::httpd`] (hyper).

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{ALLOW, CONTENT_TYPE, HeaderValue},
};
use serde_json::{Value, json};
use tokio::net::UnixListener;

use super::Source;
use crate::httpd::{self, Body, Limits, Listener, SlotStats};

/// Longest request head accepted.
pub const MAX_HEAD: usize = 8192;
/// Connections the endpoint holds at once (idle ones make room for new ones).
pub const MAX_CONNECTIONS: usize = 4096;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the Unix socket with `mode` and, when given, `group`.
pub fn bind_unix(path: &Path, mode: u32, group: Option<&str>) -> anyhow::Result<UnixListener> {
    // The group is looked up first (reentrant `getgrnam_r`): an unknown one changes nothing.
    let gid = match group {
        Some(g) => Some(
            nix::unistd::Group::from_name(g)
                .with_context(|| format!("--attest-group: looking up `{g}`"))?
                .with_context(|| format!("--attest-group: no group named `{g}`"))?
                .gid
                .as_raw(),
        ),
        None => None,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another daemon serves attestation on {}", path.display());
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if gid.is_some() {
        std::os::unix::fs::chown(path, None, gid)?;
    }
    Ok(l)
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
    }
    r
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Percent-decodes `%5B`/`%5D`/`%3A` and friends.
fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Answers one request.
fn handle<A: Source>(shared: &A, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "only GET is supported"}),
        );
    }
    let path = req.uri().path();
    if path != "/v1/attest" {
        return respond(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no such endpoint `{path}` (use /v1/attest?peer=IP:PORT&local=IP:PORT)")}),
        );
    }
    let query = req.uri().query().unwrap_or("");
    if let (Some(p), Some(l)) = (
        query_param(query, "peer").and_then(unescape),
        query_param(query, "local").and_then(unescape),
    ) {
        match super::answer(shared, &p, &l) {
            Ok(v) => respond(StatusCode::OK, &v),
            Err((code, msg)) => respond(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &json!({"error": msg}),
            ),
        }
    } else {
        shared
            .metrics()
            .attest_bad_request
            .fetch_add(1, Ordering::Relaxed);
        respond(
            StatusCode::BAD_REQUEST,
            &json!({"error": "both `peer` and `local` query parameters are required"}),
        )
    }
}

/// Serves the endpoint on `listener` (the Unix socket or the loopback TCP port): keep-alive,
/// [`HEAD_TIMEOUT`] for a request head (408 when part of one arrived), [`MAX_HEAD`] bytes of
/// head at most (431), [`MAX_CONNECTIONS`] connections (idle ones make room).
pub async fn serve<A: Source>(shared: Arc<A>, listener: Listener, stats: Arc<SlotStats>) {
    let limits = Limits {
        max_connections: MAX_CONNECTIONS,
        head_timeout: HEAD_TIMEOUT,
        max_head: MAX_HEAD,
        timeout_response: Some(httpd::raw_response(
            408,
            "Request Timeout",
            "application/json",
            &json!({"error": format!("request head not received within {}s", HEAD_TIMEOUT.as_secs())})
                .to_string(),
        )),
    };
    httpd::serve(listener, limits, stats, move |req| {
        let s = shared.clone();
        // A lookup is one map read and a cache read: answered inline, no blocking pool.
        std::future::ready(handle(s.as_ref(), &req))
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_queries() {
        assert_eq!(
            query_param("peer=1.2.3.4:5&local=6.7.8.9:10", "local"),
            Some("6.7.8.9:10")
        );
        assert_eq!(
            unescape("%5Bfd00%3A%3A1%5D%3A80").as_deref(),
            Some("[fd00::1]:80")
        );
        assert_eq!(unescape("%zz"), None);
    }

    #[test]
    fn the_socket_gets_its_group_and_an_unknown_group_binds_nothing() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("cp-attest-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("attest.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let err = bind_unix(&path, 0o660, Some("cp-no-such-group"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("no group named `cp-no-such-group`"), "{err}");
            assert!(!path.exists(), "an unknown group left a socket behind");
            let gid = nix::unistd::Group::from_name("nogroup")
                .unwrap()
                .or_else(|| nix::unistd::Group::from_name("root").unwrap())
                .unwrap()
                .gid
                .as_raw();
            let group = nix::unistd::Group::from_gid(gid.into())
                .unwrap()
                .unwrap()
                .name;
            let l = bind_unix(&path, 0o660, Some(&group)).unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.gid(), gid);
            assert_eq!(meta.mode() & 0o777, 0o660);
            drop(l);
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
