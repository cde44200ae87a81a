//! The webhook sender: each alert as a JSON POST, with retries and backoff from a bounded queue;
//! failures counted.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};
use tracing::{debug, warn};

use super::Alert;

/// A webhook target: `http://host:port/path`.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Webhook {
    /// Parses an `http://` URL (TLS belongs to a local relay or the gateway).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("webhook `{url}`: only http:// URLs are supported"))?;
        let (hp, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match hp.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse()
                    .map_err(|_| format!("webhook `{url}`: bad port"))?,
            ),
            None => (hp.to_string(), 80),
        };
        if host.is_empty() {
            return Err(format!("webhook `{url}`: no host"));
        }
        Ok(Self {
            host,
            port,
            path: path.to_string(),
        })
    }
}

/// Counters of the webhook sender.
#[derive(Default)]
pub struct WebhookStats {
    pub sent: AtomicU64,
    pub failures: AtomicU64,
    pub dropped: AtomicU64,
}

async fn post_once(hook: &Webhook, body: &[u8]) -> std::io::Result<u16> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect((hook.host.as_str(), hook.port)),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: chokepoint/{}\r\n\r\n",
        hook.path,
        hook.host,
        hook.port,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response"))??;
    let text = String::from_utf8_lossy(&buf[..n]);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    Ok(code)
}

/// Runs the webhook sender: posts each alert, retrying with exponential backoff (0.2 s doubling,
/// at most `retries` retries).
pub async fn webhook_task(
    hook: Webhook,
    mut rx: mpsc::Receiver<Alert>,
    stats: std::sync::Arc<WebhookStats>,
    retries: u32,
) {
    while let Some(alert) = rx.recv().await {
        let body = serde_json::to_vec(&alert).expect("serialisable");
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            debug!(host = %hook.host, port = hook.port, attempt, "posting alert to webhook");
            match post_once(&hook, &body).await {
                Ok(code) if (200..300).contains(&code) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    debug!(code, "alert delivered to webhook");
                    break;
                }
                Ok(code) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(code, attempt, "webhook refused alert");
                }
                Err(e) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, attempt, "webhook unreachable");
                }
            }
            attempt += 1;
            if attempt > retries {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                warn!("alert dropped after {retries} webhook retries");
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_webhooks() {
        let w = Webhook::parse("http://127.0.0.1:9000/hook").unwrap();
        assert_eq!(
            (w.host.as_str(), w.port, w.path.as_str()),
            ("127.0.0.1", 9000, "/hook")
        );
        assert!(Webhook::parse("https://x").is_err());
    }
}
