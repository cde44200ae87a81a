//! HTTP as the tests speak it: a response reader, requests over the daemon's unix sockets.

use std::{path::Path, time::Duration};

use serde_json::Value;

/// An HTTP response as a test reads it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (decoded from chunked when it was).
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 response: the head, then `Content-Length` bytes of body (or up to the end
/// of the stream without one), so that a keep-alive server need not close the connection.
pub fn read_response(s: &mut impl std::io::Read) -> Option<HttpResponse> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            s.read_exact(&mut body).ok()?;
        }
        None => {
            let _ = s.read_to_end(&mut body);
        }
    }
    Some(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One HTTP request over a Unix socket; returns (status, JSON body).
pub fn http_unix(socket: &Path, request: &[u8]) -> (u16, Value) {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect attest socket");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(request);
    match read_response(&mut s) {
        Some(r) => (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        ),
        None => (0, Value::Null),
    }
}

/// `GET /v1/attest?peer=…&local=…` on the attestation socket.
pub fn attest(socket: &Path, peer: &str, local: &str) -> (u16, Value) {
    let enc = |s: &str| s.replace('[', "%5B").replace(']', "%5D");
    http_unix(
        socket,
        format!(
            "GET /v1/attest?peer={}&local={} HTTP/1.1\r\nHost: chokepoint\r\n\r\n",
            enc(peer),
            enc(local)
        )
        .as_bytes(),
    )
}
