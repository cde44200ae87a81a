//! HTTP/1.1 serving for the daemon's read-only endpoints (metrics, attestation), on hyper.
//!
//! Each accepted connection is served by hyper with keep-alive and a header read timeout (which
//! also closes keep-alive connections that stay idle that long). A connection limit keeps the
//! daemon's descriptors bounded without letting idle or slow clients starve real ones: when the
//! limit is reached, the oldest connection with no request in flight is closed to make room, as a
//! web server drains its idle keep-alive connections; a new connection is refused (closed) only
//! when every slot is busy with a request. Accept errors (EMFILE and friends) back off instead of
//! spinning.

mod conn;
mod slots;

use std::{convert::Infallible, future::Future, io, sync::Arc, time::Duration};

use bytes::Bytes;
pub use conn::Stream;
use conn::{Guarded, Head};
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
pub use slots::SlotStats;
use slots::{Release, Slots};
use tokio::net::{TcpListener, UnixListener};
use tracing::{debug, warn};

/// A response body: the endpoints answer with small, complete bodies.
pub type Body = Full<Bytes>;

/// Where a server listens.
pub enum Listener {
    /// A Unix stream socket.
    Unix(UnixListener),
    /// A TCP socket.
    Tcp(TcpListener),
}

impl Listener {
    async fn accept(&self) -> io::Result<Stream> {
        match self {
            Self::Unix(l) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
            Self::Tcp(l) => l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        }
    }
}

/// How one server treats its connections.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a client has to send a request head (and the longest a keep-alive connection stays
    /// idle).
    pub head_timeout: Duration,
    /// Longest request head accepted (hyper answers 431 past it); at least 8 KiB.
    pub max_head: usize,
    /// Written (a complete HTTP response) to a client whose head was cut off by the timeout after
    /// part of it arrived; `None` closes such connections silently.
    pub timeout_response: Option<Bytes>,
}

/// A complete raw HTTP/1.1 response that closes the connection, for the cases hyper does not
/// answer itself (a head cut off by the timeout).
pub fn raw_response(status: u16, reason: &str, content_type: &str, body: &str) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// Serves `listener` with `handler` until the task is dropped, counting into `stats`.
pub async fn serve<H, F>(listener: Listener, limits: Limits, stats: Arc<SlotStats>, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(Slots::new(limits.max_connections, stats));
    let limits = Arc::new(limits);
    let mut backoff = Duration::ZERO;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => {
                backoff = Duration::ZERO;
                s
            }
            Err(e) => {
                // Out of descriptors or memory: closing an idle connection frees one; waiting
                // lets closing connections finish. Other errors (a peer that reset before
                // accept) are retried after the same short pause, never in a tight loop.
                if backoff.is_zero() {
                    warn!(error = %e, "accept failed; backing off");
                }
                slots.evict_idle();
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let Some(slot) = slots.admit() else {
            debug!("connection limit reached with every connection busy; refused");
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _release = Release(slot.clone());
            let (io, head) = Guarded::new(stream);
            let busy = slot.clone();
            let svc = service_fn(move |req| {
                let handler = handler.clone();
                let busy = busy.clone();
                async move {
                    let _request = busy.request();
                    Ok::<_, Infallible>(handler(req).await)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.head_timeout)
                .max_buf_size(limits.max_head.max(8192))
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r
                        && e.is_timeout()
                    {
                        finish_timed_out(&head, limits.timeout_response.as_ref()).await;
                    }
                }
                () = slot.evicted() => debug!("idle connection closed to make room"),
            }
        });
    }
}

/// Answers a client whose head timed out after part of it arrived.
async fn finish_timed_out(head: &Head, response: Option<&Bytes>) {
    if let Some(r) = response
        && head.partial()
    {
        let _ = tokio::time::timeout(Duration::from_secs(1), head.write_all(r)).await;
    }
}
