//! The metrics endpoint: `/metrics` (Prometheus text, or OpenMetrics text when the scraper's
//! `Accept` asks for it), `/healthz` and `/readyz` (the status document; 503 when not
//! enforcing). GET only; served by [`crate::httpd`] with keep-alive, a header read timeout and a
//! connection limit.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue},
};
use tokio::net::TcpListener;

use super::Format;
use crate::httpd::{self, Body, Limits, SlotStats};

/// Connections the endpoint holds at once (idle ones make room for new ones).
pub const MAX_CONNECTIONS: usize = 128;
/// Time a scraper has to send its request head; also how long a keep-alive connection may idle.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoint reads at request time.
pub trait Source: Send + Sync + 'static {
    /// The exposition page in `format`.
    fn render_metrics(&self, format: Format) -> String;
    /// The status document (its `health` decides 200 or 503).
    fn status(&self) -> serde_json::Value;
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener`.
pub async fn serve<S: Source>(shared: Arc<S>, listener: TcpListener, stats: Arc<SlotStats>) {
    let limits = Limits {
        max_connections: MAX_CONNECTIONS,
        head_timeout: HEAD_TIMEOUT,
        max_head: 8192,
        timeout_response: None,
    };
    httpd::serve(httpd::Listener::Tcp(listener), limits, stats, move |req| {
        let s = shared.clone();
        async move { handle(s, &req).await }
    })
    .await;
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Body::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn handle<S: Source>(s: Arc<S>, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        let mut r = response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is supported\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let format = Format::negotiate(
                req.headers()
                    .get_all(ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let body = tokio::task::spawn_blocking(move || s.render_metrics(format))
                .await
                .unwrap_or_default();
            response(StatusCode::OK, format.content_type(), body)
        }
        "/healthz" | "/readyz" => {
            let st = s.status();
            let status = if st["health"] == "not_enforcing" {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            response(status, "application/json", st.to_string())
        }
        _ => response(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
