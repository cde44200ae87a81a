//! The webhook's HTTP client: reqwest over rustls (ring), trusting the system's roots or the
//! operator's CA file, and the body signature.

use std::{path::Path, sync::Arc, time::Duration};

use ring::hmac;
use rustls_pki_types::{CertificateDer, pem::PemObject};

use super::WebhookError;

/// The signature header: `sha256=` and the hex HMAC-SHA256 of the body under the secret.
pub const SIGNATURE_HEADER: &str = "X-Chokepoint-Signature-256";

/// Time for one delivery attempt (connect, TLS, request, response head).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The signing key from `--alert-webhook-secret-file` (the file's bytes, one trailing newline
/// dropped).
pub struct Secret(hmac::Key);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Reads the secret from `path`; an empty secret is refused.
    pub fn read(path: &Path) -> Result<Self, WebhookError> {
        let mut bytes = std::fs::read(path).map_err(|e| WebhookError::Secret {
            path: path.display().to_string(),
            source: e,
        })?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(WebhookError::EmptySecret(path.display().to_string()));
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// A key from raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The header value for `body`: `sha256=<64 hex digits>`.
    pub fn sign(&self, body: &[u8]) -> String {
        let tag = hmac::sign(&self.0, body);
        let mut out = String::with_capacity(71);
        out.push_str("sha256=");
        for b in tag.as_ref() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// The TLS configuration: the roots of `ca_file` alone when given, else the system's.
fn tls_config(ca_file: Option<&Path>, https: bool) -> Result<rustls::ClientConfig, WebhookError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(p) => {
            let ca = |e: String| WebhookError::Ca {
                path: p.display().to_string(),
                message: e,
            };
            for c in CertificateDer::pem_file_iter(p).map_err(|e| ca(e.to_string()))? {
                let c = c.map_err(|e| ca(e.to_string()))?;
                roots.add(c).map_err(|e| ca(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca("no certificate in the file".into()));
            }
        }
        None if https => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(WebhookError::NoRoots);
            }
        }
        None => {}
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The client for one webhook URL: no redirects (the body and its signature go to the
/// configured receiver only), a timeout per attempt, connections kept alive between alerts.
pub fn build(ca_file: Option<&Path>, https: bool) -> Result<reqwest::Client, WebhookError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(ca_file, https)?)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(ATTEMPT_TIMEOUT)
        .timeout(ATTEMPT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("chokepoint/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| WebhookError::Tls(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_rfc4231() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let s = Secret::from_bytes(b"Jefe");
        assert_eq!(
            s.sign(b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
