//! The webhook sender: each alert as a JSON POST (reqwest over rustls: `http://` or `https://`,
//! IPv4, IPv6 literals, host names), signed with HMAC-SHA256 when a secret is configured, retried
//! with jittered exponential backoff from a bounded queue; failures counted.

pub mod client;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

pub use client::{SIGNATURE_HEADER, Secret};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Alert;

/// Why a webhook cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Not a URL.
    #[error("webhook `{url}`: {message}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The secret file cannot be read.
    #[error("--alert-webhook-secret-file {path}: {source}")]
    Secret {
        /// The file.
        path: String,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The secret file is empty.
    #[error("--alert-webhook-secret-file {0}: the secret is empty")]
    EmptySecret(String),
    /// The CA file cannot be used.
    #[error("--alert-webhook-ca {path}: {message}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// An `https://` URL, no CA file and no system roots.
    #[error("webhook: no trusted root certificates on this system; pass --alert-webhook-ca")]
    NoRoots,
    /// The TLS or HTTP client could not be built.
    #[error("webhook client: {0}")]
    Tls(String),
}

/// How the webhook is configured (flags or `--config`).
#[derive(Clone, Debug, Default)]
pub struct WebhookOptions {
    /// `http://` or `https://` URL.
    pub url: String,
    /// File holding the HMAC-SHA256 secret that signs each body.
    pub secret_file: Option<PathBuf>,
    /// PEM file of the CA certificates that `https://` receivers are checked against (instead of
    /// the system's roots).
    pub ca_file: Option<PathBuf>,
}

/// A webhook target, ready to post.
pub struct Webhook {
    url: reqwest::Url,
    client: reqwest::Client,
    secret: Option<Secret>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url.as_str())
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Checks the URL, reads the secret and the CA file, and builds the client.
    pub fn new(opts: &WebhookOptions) -> Result<Self, WebhookError> {
        let url = parse_url(&opts.url)?;
        let secret = opts.secret_file.as_deref().map(Secret::read).transpose()?;
        let client = client::build(opts.ca_file.as_deref(), url.scheme() == "https")?;
        Ok(Self {
            url,
            client,
            secret,
        })
    }

    /// The receiver's URL.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    async fn post_once(&self, body: &[u8]) -> Result<u16, reqwest::Error> {
        let mut req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(s) = &self.secret {
            req = req.header(SIGNATURE_HEADER, s.sign(body));
        }
        let resp = req.body(body.to_vec()).send().await?;
        Ok(resp.status().as_u16())
    }
}

/// Parses an `http://` or `https://` URL with a host.
pub fn parse_url(url: &str) -> Result<reqwest::Url, WebhookError> {
    let bad = |m: &str| WebhookError::Url {
        url: url.into(),
        message: m.into(),
    };
    let u = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// URLs are supported"));
    }
    if u.host().is_none() {
        return Err(bad("no host"));
    }
    Ok(u)
}

/// Counters of the webhook sender.
#[derive(Default)]
pub struct WebhookStats {
    /// Alerts delivered.
    pub sent: AtomicU64,
    /// Failed attempts.
    pub failures: AtomicU64,
    /// Alerts given up on (retries exhausted, or the queue full).
    pub dropped: AtomicU64,
}

/// The pause before retry `attempt` (1-based): 0.2 s doubling up to 30 s, of which a random half
/// is taken off ("equal jitter"), so that nodes that failed together do not retry together.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200)
        .saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .min(Duration::from_secs(30));
    let half = base / 2;
    let r = getrandom::u64().unwrap_or(0);
    // r / 2^64 of the other half.
    let jitter = half.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64);
    half + jitter
}

/// Runs the webhook sender: posts each alert, retrying at most `retries` times with
/// [`backoff`].
pub async fn webhook_task(
    hook: Webhook,
    mut rx: mpsc::Receiver<Alert>,
    stats: std::sync::Arc<WebhookStats>,
    retries: u32,
) {
    while let Some(alert) = rx.recv().await {
        let body = serde_json::to_vec(&alert).expect("serialisable");
        let mut attempt = 0;
        loop {
            debug!(url = %hook.url, attempt, "posting alert to webhook");
            match hook.post_once(&body).await {
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
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_webhook_urls() {
        for ok in [
            "http://127.0.0.1:9000/hook",
            "https://hooks.example.com/services/x",
            "http://[::1]:9000/alerts",
            "https://[fd00::1]/a?b=c",
        ] {
            assert!(parse_url(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            parse_url("http://[::1]:9000/alerts").unwrap().host_str(),
            Some("[::1]")
        );
        for bad in ["ftp://x/", "not a url", "http://", "unix:///run/x"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_is_jittered_and_bounded() {
        for attempt in 1..40 {
            let d = backoff(attempt);
            let base = Duration::from_millis(200)
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(Duration::from_secs(30));
            assert!(d >= base / 2 && d <= base, "{attempt}: {d:?} of {base:?}");
        }
        let spread: std::collections::BTreeSet<Duration> = (0..16).map(|_| backoff(3)).collect();
        assert!(spread.len() > 1, "no jitter: {spread:?}");
    }
}
