//! Bypass alerts: one alert per (identity, destination, reason) per window, with a count and
//! first/last seen. Sinks: the log, a JSON lines file, subscribers, and an optional webhook
//! (HTTP POST with retries and backoff from a bounded queue; failures counted).

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};
use tracing::{debug, warn};

use crate::{audit::FlowRecord, util};

/// One alert.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    pub time: String,
    pub node: String,
    pub severity: String,
    pub identity: Option<String>,
    pub tenant: Option<String>,
    pub task: Option<String>,
    pub dst: Option<String>,
    pub reason: String,
    pub verdict: String,
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub policy_generation: u32,
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

struct Pending {
    alert: Alert,
    opened: Instant,
}

/// The deduplicating window.
pub struct Deduper {
    window: Duration,
    open: HashMap<(Option<String>, Option<String>, String), Pending>,
}

/// Severity of a bypass reason.
pub fn severity(reason: &str, verdict: &str) -> &'static str {
    if verdict == "audit" {
        return "warning";
    }
    match reason {
        "raw_socket" | "link_local" | "dns_resolver" | "malformed" => "critical",
        _ => "high",
    }
}

impl Deduper {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            open: HashMap::new(),
        }
    }

    /// Takes a record; only deny and audit records are bypass attempts.
    pub fn observe(&mut self, r: &FlowRecord) {
        if r.verdict != "deny" && r.verdict != "audit" {
            return;
        }
        let key = (r.identity.clone(), r.dst.clone(), r.reason.clone());
        match self.open.get_mut(&key) {
            Some(p) => {
                p.alert.count += 1;
                p.alert.last_seen = r.time.clone();
            }
            None => {
                self.open.insert(
                    key,
                    Pending {
                        alert: Alert {
                            time: r.time.clone(),
                            node: r.node.clone(),
                            severity: severity(&r.reason, &r.verdict).into(),
                            identity: r.identity.clone(),
                            tenant: r.tenant.clone(),
                            task: r.task.clone(),
                            dst: r.dst.clone(),
                            reason: r.reason.clone(),
                            verdict: r.verdict.clone(),
                            count: 1,
                            first_seen: r.time.clone(),
                            last_seen: r.time.clone(),
                            policy_generation: r.policy_generation,
                            pid: r.pid,
                            comm: r.comm.clone(),
                        },
                        opened: Instant::now(),
                    },
                );
            }
        }
    }

    /// Alerts whose window has closed (all of them with `all`).
    pub fn due(&mut self, all: bool) -> Vec<Alert> {
        let window = self.window;
        let keys: Vec<_> = self
            .open
            .iter()
            .filter(|(_, p)| all || p.opened.elapsed() >= window)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<Alert> = keys
            .into_iter()
            .filter_map(|k| self.open.remove(&k))
            .map(|p| {
                let mut a = p.alert;
                a.time = util::rfc3339_ns(util::wall_ns());
                a
            })
            .collect();
        out.sort_by(|a, b| a.first_seen.cmp(&b.first_seen));
        out
    }
}

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

    fn rec(dst: &str, verdict: &str) -> FlowRecord {
        crate::audit::FlowRecord {
            verdict: verdict.into(),
            dst: Some(dst.into()),
            identity: Some("a".into()),
            reason: "not_gateway".into(),
            ..crate::audit::lost_record("n", 0, "x", 1)
        }
    }

    #[test]
    fn dedupes_per_window() {
        let mut d = Deduper::new(Duration::from_secs(3600));
        for _ in 0..5 {
            d.observe(&rec("1.2.3.4:80", "deny"));
        }
        d.observe(&rec("1.2.3.5:80", "deny"));
        d.observe(&rec("1.2.3.5:80", "allow"));
        assert!(d.due(false).is_empty());
        let all = d.due(true);
        assert_eq!(all.len(), 2);
        let a = all
            .iter()
            .find(|a| a.dst.as_deref() == Some("1.2.3.4:80"))
            .unwrap();
        assert_eq!(a.count, 5);
    }

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
