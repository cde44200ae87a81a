//! The attestation endpoint's HTTP side: the Unix socket (mode, group), the optional loopback
//! TCP port, and one request per connection.

use std::{
    ffi::CString,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, UnixListener},
    sync::Semaphore,
};

use super::Source;

/// Longest request head accepted.
pub const MAX_HEAD: usize = 8192;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the Unix socket with `mode` and, when given, `group`.
pub fn bind_unix(path: &Path, mode: u32, group: Option<&str>) -> anyhow::Result<UnixListener> {
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
    if let Some(g) = group {
        let name = CString::new(g).context("group name")?;
        // SAFETY: getgrnam with a valid C string; the result is read immediately.
        let gr = unsafe { libc::getgrnam(name.as_ptr()) };
        if gr.is_null() {
            bail!("--attest-group: no group named `{g}`");
        }
        // SAFETY: gr is non-null and points to a valid group entry.
        let gid = unsafe { (*gr).gr_gid };
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(l)
}

fn respond(status: u16, body: &Value) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
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

/// Handles one HTTP request on `io`.
async fn handle<A: Source, S: AsyncRead + AsyncWrite + Unpin>(shared: &A, mut io: S) {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head = tokio::time::timeout(HEAD_TIMEOUT, async {
        loop {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if buf.len() > MAX_HEAD {
                return Ok(false);
            }
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let (status, body) = match head {
        Err(_) => (
            408,
            json!({"error": format!("request head not received within {}s", HEAD_TIMEOUT.as_secs())}),
        ),
        Ok(Err(_)) => return,
        Ok(Ok(false)) => (
            431,
            json!({"error": format!("request head larger than {MAX_HEAD} bytes")}),
        ),
        Ok(Ok(true)) => {
            let text = String::from_utf8_lossy(&buf);
            let line = text.lines().next().unwrap_or("");
            let mut parts = line.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            if method != "GET" {
                (405, json!({"error": "only GET is supported"}))
            } else if path != "/v1/attest" {
                (
                    404,
                    json!({"error": format!("no such endpoint `{path}` (use /v1/attest?peer=IP:PORT&local=IP:PORT)")}),
                )
            } else {
                match (
                    query_param(query, "peer").and_then(unescape),
                    query_param(query, "local").and_then(unescape),
                ) {
                    (Some(p), Some(l)) => match super::answer(shared, &p, &l) {
                        Ok(v) => (200, v),
                        Err((code, msg)) => (code, json!({"error": msg})),
                    },
                    _ => {
                        shared
                            .metrics()
                            .attest_bad_request
                            .fetch_add(1, Ordering::Relaxed);
                        (
                            400,
                            json!({"error": "both `peer` and `local` query parameters are required"}),
                        )
                    }
                }
            }
        }
    };
    let _ = io.write_all(&respond(status, &body)).await;
    let _ = io.shutdown().await;
}

/// Where the endpoint listens: the Unix socket, or the optional loopback TCP port.
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Serves the endpoint: one task per connection, at most 4,096 at once.
pub async fn serve<A: Source>(shared: Arc<A>, l: Listener) {
    let limit = Arc::new(Semaphore::new(4096));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let sh = shared.clone();
        match &l {
            Listener::Unix(u) => {
                let Ok((s, _)) = u.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let _p = permit;
                    handle(sh.as_ref(), s).await;
                });
            }
            Listener::Tcp(t) => {
                let Ok((s, _)) = t.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let _p = permit;
                    handle(sh.as_ref(), s).await;
                });
            }
        }
    }
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
}
