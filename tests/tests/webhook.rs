//! The alert webhook over HTTPS: a TLS receiver on the IPv6 loopback with a certificate from a
//! CA made for this run, which the daemon trusts through `--alert-webhook-ca`; every body carries
//! a valid HMAC-SHA256 signature under the configured secret; a receiver the daemon has no reason
//! to trust gets nothing.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chokepoint_tests::*;

/// One delivery the receiver read: header lines (lowercased names) and the body.
type Delivery = (Vec<(String, String)>, Vec<u8>);

struct Receiver {
    addr: SocketAddr,
    /// Deliveries it accepted (after refusing the first `refuse`).
    got: Arc<Mutex<Vec<Delivery>>>,
    /// Requests read, refused ones included.
    attempts: Arc<Mutex<usize>>,
    /// TLS handshakes that failed.
    handshake_failures: Arc<Mutex<usize>>,
}

/// A CA, and a server certificate for localhost, 127.0.0.1 and ::1 signed by it; the CA's PEM is
/// written to `ca_file`.
fn certificates(ca_file: &Path) -> rustls::ServerConfig {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "chokepoint test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    std::fs::write(ca_file, ca.as_ref().pem()).expect("ca file");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .expect("server params");
    let cert = params.signed_by(&key, &ca).expect("server cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config")
}

/// A TLS webhook receiver on `[::1]`: refuses the first `refuse` deliveries with 500.
fn receiver(cfg: rustls::ServerConfig, refuse: usize) -> Receiver {
    let l = TcpListener::bind("[::1]:0").expect("bind [::1]");
    let addr = l.local_addr().expect("addr");
    let cfg = Arc::new(cfg);
    let r = Receiver {
        addr,
        got: Arc::default(),
        attempts: Arc::default(),
        handshake_failures: Arc::default(),
    };
    let (got, attempts, hs) = (
        r.got.clone(),
        r.attempts.clone(),
        r.handshake_failures.clone(),
    );
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(tcp) = c else { continue };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            let conn = rustls::ServerConnection::new(cfg.clone()).expect("tls conn");
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut r = BufReader::new(&mut tls);
            let mut headers = Vec::new();
            let mut len = 0usize;
            let mut ok = false;
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if line == "\r\n" {
                    ok = true;
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                    if k == "content-length" {
                        len = v.parse().unwrap_or(0);
                    }
                    headers.push((k, v));
                }
            }
            if !ok {
                *hs.lock().expect("lock") += 1;
                continue;
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let n = {
                let mut a = attempts.lock().expect("lock");
                *a += 1;
                *a
            };
            let reply: &[u8] = if n <= refuse {
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            } else {
                got.lock().expect("lock").push((headers, body));
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            let _ = tls.write_all(reply);
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    r
}

fn wait_until(t: Duration, f: impl Fn() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < t {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn https_webhook_on_ipv6_gets_one_signed_alert_after_a_retry() {
    let dir = std::env::temp_dir().join(unique("cpt-hook"));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_file = dir.join("ca.pem");
    let secret_file = dir.join("secret");
    let secret = b"s3cret-for-this-run";
    std::fs::write(&secret_file, [secret.as_slice(), b"\n"].concat()).expect("secret");
    let rx = receiver(certificates(&ca_file), 1);
    let url = format!("https://[::1]:{}/alerts", rx.addr.port());
    let fx = Fixture::with_args(
        "enforce",
        &[
            "--alert-webhook",
            &url,
            "--alert-webhook-secret-file",
            secret_file.to_str().expect("utf8"),
            "--alert-webhook-ca",
            ca_file.to_str().expect("utf8"),
        ],
    );
    let bad = SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP).to_string();
    for _ in 0..12 {
        assert!(eperm(&fx.attempt(false, &["tcp", &bad], "tls-burst")));
    }
    assert!(
        wait_until(Duration::from_secs(10), || !rx
            .got
            .lock()
            .expect("lock")
            .is_empty()),
        "no delivery over TLS after {} attempts, {} failed handshakes\n{}",
        rx.attempts.lock().expect("lock"),
        rx.handshake_failures.lock().expect("lock"),
        fx.daemon.log_text()
    );
    std::thread::sleep(Duration::from_millis(500));
    let got = rx.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 1, "one deduplicated alert");
    let (headers, body) = &got[0];
    let alert: serde_json::Value = serde_json::from_slice(body).expect("json body");
    assert_eq!(alert["count"], 12, "{alert}");
    assert_eq!(alert["dst"], bad);
    // The signature: sha256=<hex HMAC-SHA256 of the body under the secret, newline dropped>.
    let sig = headers
        .iter()
        .find(|(k, _)| k == "x-chokepoint-signature-256")
        .map(|(_, v)| v.clone())
        .expect("signature header");
    let hex = sig.strip_prefix("sha256=").expect("sha256= prefix");
    let tag: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    assert!(
        ring::hmac::verify(&key, body, &tag).is_ok(),
        "signature {sig} does not verify"
    );
    let wrong = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another secret");
    assert!(ring::hmac::verify(&wrong, body, &tag).is_err());
    assert!(*rx.attempts.lock().expect("lock") >= 2, "no retry happened");
    let text = fx.daemon.scrape();
    assert!(metric(&text, "chokepoint_webhook_failures_total").is_some_and(|v| v >= 1.0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_untrusted_receiver_gets_nothing() {
    let dir = std::env::temp_dir().join(unique("cpt-hook"));
    std::fs::create_dir_all(&dir).expect("dir");
    // The receiver's CA is not the one the daemon is given.
    let rx = receiver(certificates(&dir.join("receiver-ca.pem")), 0);
    let _ = certificates(&dir.join("other-ca.pem"));
    let url = format!("https://[::1]:{}/alerts", rx.addr.port());
    let other = dir.join("other-ca.pem");
    let fx = Fixture::with_args(
        "enforce",
        &[
            "--alert-webhook",
            &url,
            "--alert-webhook-ca",
            other.to_str().expect("utf8"),
        ],
    );
    let bad = SocketAddr::new(fx.sb.forbidden4(), OTHER_TCP).to_string();
    assert!(eperm(&fx.attempt(false, &["tcp", &bad], "untrusted")));
    assert!(
        wait_until(Duration::from_secs(10), || {
            metric(&fx.daemon.scrape(), "chokepoint_webhook_failures_total")
                .is_some_and(|v| v >= 1.0)
        }),
        "{}",
        fx.daemon.log_text()
    );
    assert!(rx.got.lock().expect("lock").is_empty());
    assert_eq!(*rx.attempts.lock().expect("lock"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_webhook_configuration_stops_the_daemon_before_it_touches_the_kernel() {
    require_privileges();
    let dir = std::env::temp_dir().join(unique("cpt-hook"));
    std::fs::create_dir_all(&dir).expect("dir");
    let empty = dir.join("empty-secret");
    std::fs::write(&empty, "\n").expect("secret");
    let no_certs = dir.join("no-certs.pem");
    std::fs::write(&no_certs, "not a certificate\n").expect("ca");
    let cases: [(&[&str], &str); 4] = [
        (
            &["--alert-webhook", "ftp://127.0.0.1/x"],
            "only http:// and https://",
        ),
        (
            &[
                "--alert-webhook",
                "https://[::1]:1/x",
                "--alert-webhook-secret-file",
                "/nonexistent/secret",
            ],
            "--alert-webhook-secret-file /nonexistent/secret",
        ),
        (
            &[
                "--alert-webhook",
                "https://[::1]:1/x",
                "--alert-webhook-secret-file",
                empty.to_str().expect("utf8"),
            ],
            "the secret is empty",
        ),
        (
            &[
                "--alert-webhook",
                "https://[::1]:1/x",
                "--alert-webhook-ca",
                no_certs.to_str().expect("utf8"),
            ],
            "--alert-webhook-ca",
        ),
    ];
    for (args, want) in cases {
        let bpffs = std::path::PathBuf::from(format!("/sys/fs/bpf/{}", unique("cpt-hook")));
        let out = std::process::Command::new(chokepoint_bin())
            .arg("daemon")
            .arg("--bpffs")
            .arg(&bpffs)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join("cp.sock"))
            .arg("--attest-socket")
            .arg(dir.join("attest.sock"))
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{}", free_port()))
            .args(args)
            .output()
            .expect("run daemon");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            !bpffs.exists(),
            "{args:?}: pins were created before the refusal"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
