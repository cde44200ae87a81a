//! The metrics endpoint: `/metrics` (Prometheus text), `/healthz` and `/readyz` (the status
//! document; 503 when not enforcing).

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// What the endpoint reads at request time.
pub trait Source: Send + Sync + 'static {
    /// The exposition page.
    fn render_metrics(&self) -> String;
    /// The status document (its `health` decides 200 or 503).
    fn status(&self) -> serde_json::Value;
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener`.
pub async fn serve<S: Source>(shared: Arc<S>, listener: TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let s = shared.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (code, ctype, body) = match path {
                "/metrics" => {
                    let s2 = s.clone();
                    let body = tokio::task::spawn_blocking(move || s2.render_metrics())
                        .await
                        .unwrap_or_default();
                    ("200 OK", "text/plain; version=0.0.4", body)
                }
                "/healthz" | "/readyz" => {
                    let st = s.status();
                    let healthy = st["health"] != "not_enforcing";
                    (
                        if healthy {
                            "200 OK"
                        } else {
                            "503 Service Unavailable"
                        },
                        "application/json",
                        st.to_string(),
                    )
                }
                _ => ("404 Not Found", "text/plain", "not found\n".into()),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
