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

/// Binds the Unix socket with `mode` and, when given, `group`. The socket is reachable at `path`
/// only with both already set: it is bound in a private directory (mode 0700) beside `path`,
/// given its mode and group there, and renamed into place (a stale socket at `path` is replaced
/// by the rename).
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
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another daemon serves attestation on {}", path.display());
    }
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let private = PrivateDir::create(dir, name)?;
    let staged = private.0.join(name);
    let l = UnixListener::bind(&staged).with_context(|| format!("binding {}", staged.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", staged.display()))?;
    if gid.is_some() {
        std::os::unix::fs::chown(&staged, None, gid)
            .with_context(|| format!("setting the group of {}", staged.display()))?;
    }
    std::fs::rename(&staged, path)
        .with_context(|| format!("moving {} into place", staged.display()))?;
    Ok(l)
}

/// A directory only this user can enter (mode 0700), removed with what is left in it on drop.
struct PrivateDir(std::path::PathBuf);

impl PrivateDir {
    /// `.<name>.<random>` in `dir` (the same filesystem as the socket's place, so the rename is
    /// atomic), created new.
    fn create(dir: &Path, name: &std::ffi::OsStr) -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let mut tag = name.to_os_string();
        tag.push(format!(
            ".{:016x}",
            getrandom::u64().unwrap_or(0) ^ u64::from(std::process::id())
        ));
        let mut hidden = std::ffi::OsString::from(".");
        hidden.push(tag);
        let p = dir.join(hidden);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

    /// The socket appears at its path by a rename, with its mode and group already set: a
    /// watcher that looks the moment the name appears sees the final mode and group (a bind at
    /// the path, then a chmod, shows the name first as created, with the default mode).
    #[test]
    fn the_socket_is_reachable_only_with_its_mode_and_group() {
        use std::os::unix::fs::MetadataExt;

        use rustix::fs::inotify;
        let dir = std::env::temp_dir().join(format!("cp-attest-appear-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("attest.sock");
        // A stale socket of a dead daemon: replaced, never reachable with a wrong mode meanwhile.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let gid = nix::unistd::getegid().as_raw();
        let group = nix::unistd::Group::from_gid(gid.into())
            .unwrap()
            .unwrap()
            .name;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC).unwrap();
        inotify::add_watch(
            &fd,
            &dir,
            inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO,
        )
        .unwrap();
        let watched = path.clone();
        // The watcher stats the path as soon as an event names it.
        let watcher = std::thread::spawn(move || {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut reader = inotify::Reader::new(fd, &mut buf);
            loop {
                let ev = reader.next().unwrap();
                let named = ev
                    .file_name()
                    .is_some_and(|n| n.to_bytes() == b"attest.sock");
                if named {
                    let meta = std::fs::symlink_metadata(&watched).ok();
                    return (ev.events(), meta.map(|m| (m.mode() & 0o777, m.gid())));
                }
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = bind_unix(&path, 0o660, Some(&group)).unwrap();
            let (events, seen) = watcher.join().unwrap();
            assert!(
                events.contains(inotify::ReadFlags::MOVED_TO)
                    && !events.contains(inotify::ReadFlags::CREATE),
                "the socket appeared at its path by {events:?}, not by a rename"
            );
            assert_eq!(seen, Some((0o660, gid)), "mode and group when it appeared");
            // Reachable, and nothing of the private directory is left.
            std::os::unix::net::UnixStream::connect(&path).unwrap();
            let left: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, vec![std::ffi::OsString::from("attest.sock")]);
            drop(l);
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
