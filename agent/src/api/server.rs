//! The server side of the local API: accepts connections on the 0600 Unix socket, checks the
//! peer (root only), decodes one request line and hands it to a [`Service`]; `flows`/`alerts`
//! with `follow` then stream.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, atomic::Ordering},
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, broadcast},
};

use super::{
    protocol::{MAX_REQUEST_BYTES, REQUEST_TIMEOUT, Request, Response, decode},
    responses::Reply,
};
use crate::{
    alerts::Alert,
    audit::FlowRecord,
    metrics::Metrics,
    peer::Who,
    policy::error::PolicyError,
    query::{Filter, Query, Queryable},
};

/// Why a command failed: a policy that did not validate (its problems travel to the client as
/// a list) or anything else (a message).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The document has problems.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Anything else.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl ApiError {
    fn response(&self) -> Response {
        match self {
            ApiError::Policy(e) => Response::policy_error(e),
            ApiError::Other(e) => Response::error(format!("{e:#}")),
        }
    }
}

/// Who sent a request: the peer's uid, pid and comm (`SO_PEERCRED`, `/proc/PID/comm`).
pub type Peer = Who;

/// What the server needs from the daemon.
pub trait Service: Send + Sync + 'static {
    /// The counters of requests and errors.
    fn metrics(&self) -> &Metrics;
    /// A live subscription to flow records (taken before [`Service::recent_flows`]).
    fn subscribe_flows(&self) -> broadcast::Receiver<Arc<FlowRecord>>;
    /// The records kept in memory.
    fn recent_flows(&self) -> Vec<Arc<FlowRecord>>;
    /// A live subscription to alerts.
    fn subscribe_alerts(&self) -> broadcast::Receiver<Arc<Alert>>;
    /// The alerts kept in memory.
    fn recent_alerts(&self) -> Vec<Arc<Alert>>;
    /// The `lost` record sent to a subscriber that fell `n` records behind.
    fn lagged_record(&self, n: u64) -> FlowRecord;
    /// Handles a non-streaming request (called on a blocking thread).
    fn handle(&self, req: Request, who: Peer) -> Result<Reply, ApiError>;
}

/// Serves the API on `listener`: one task per connection, at most 4,096 at once (more are
/// closed at once).
pub async fn serve<S: Service>(shared: Arc<S>, listener: UnixListener) {
    let limit = Arc::new(Semaphore::new(4096));
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            drop(sock);
            continue;
        };
        let s = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle_conn(s, sock).await {
                tracing::debug!(error = %e, "api connection ended");
            }
        });
    }
}

/// Writes one JSON line (a response or a streamed entry).
async fn write_line<T: serde::Serialize + ?Sized>(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    v: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

fn err_json(msg: impl std::fmt::Display) -> Response {
    Response::error(msg)
}

async fn handle_conn<S: Service>(shared: Arc<S>, sock: UnixStream) -> anyhow::Result<()> {
    let cred = sock.peer_cred()?;
    let (r, mut w) = sock.into_split();
    let mut reader = BufReader::new(r).take(MAX_REQUEST_BYTES as u64 + 1);
    let mut line = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    shared
        .metrics()
        .api_requests
        .fetch_add(1, Ordering::Relaxed);
    match read {
        Err(_) => {
            write_line(
                &mut w,
                &err_json(format!(
                    "request not received within {}s",
                    REQUEST_TIMEOUT.as_secs()
                )),
            )
            .await?;
            return Ok(());
        }
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST_BYTES {
        write_line(
            &mut w,
            &err_json(format!("request larger than {MAX_REQUEST_BYTES} bytes")),
        )
        .await?;
        return Ok(());
    }
    if line.last() != Some(&b'\n') {
        write_line(
            &mut w,
            &err_json("truncated request: no terminating newline before the connection closed"),
        )
        .await?;
        return Ok(());
    }
    if cred.uid() != 0 {
        write_line(
            &mut w,
            &err_json(format!(
                "permission denied: uid {} is not root; the local API is for root only",
                cred.uid()
            )),
        )
        .await?;
        return Ok(());
    }
    let req = match decode(&line) {
        Ok(r) => r,
        Err(e) => {
            shared.metrics().api_errors.fetch_add(1, Ordering::Relaxed);
            write_line(&mut w, &err_json(e)).await?;
            return Ok(());
        }
    };
    let who = Who::from_cred(&cred);
    match req {
        Request::Flows {
            follow,
            mut filter,
            identity,
            verdict,
        } => {
            // The protocol's first form: identity and verdict at the top level.
            if filter.identity.is_none() {
                filter.identity = identity;
            }
            if filter.verdict.is_none() {
                filter.verdict = verdict;
            }
            let Some(filter) = compile(&mut w, &filter, follow).await? else {
                return Ok(());
            };
            let rx = shared.subscribe_flows();
            let recent = shared.recent_flows();
            stream(&*shared, &mut w, rx, recent, &filter, follow).await?;
        }
        Request::Alerts { follow, filter } => {
            let Some(filter) = compile(&mut w, &filter, follow).await? else {
                return Ok(());
            };
            let rx = shared.subscribe_alerts();
            let recent = shared.recent_alerts();
            stream(&*shared, &mut w, rx, recent, &filter, follow).await?;
        }
        other => {
            let s = shared.clone();
            let resp = tokio::task::spawn_blocking(move || s.handle(other, who))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("internal error: {e}").into()));
            let v = match resp
                .and_then(|r| serde_json::to_value(r).map_err(|e| ApiError::Other(e.into())))
            {
                Ok(result) => Response::result(result),
                Err(e) => {
                    shared.metrics().api_errors.fetch_add(1, Ordering::Relaxed);
                    e.response()
                }
            };
            write_line(&mut w, &v).await?;
        }
    }
    Ok(())
}

/// Compiles a query against the daemon's clock; a bad one is answered with its error (`None`).
async fn compile(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    q: &Query,
    follow: bool,
) -> std::io::Result<Option<Filter>> {
    if follow && q.until.is_some() {
        write_line(w, &err_json("--until cannot be used with --follow")).await?;
        return Ok(None);
    }
    match q.compile(crate::util::wall_ns()) {
        Ok(f) => Ok(Some(f)),
        Err(e) => {
            write_line(w, &err_json(e)).await?;
            Ok(None)
        }
    }
}

/// Answers `flows`/`alerts`: without `follow`, the matching entries held in memory as one array;
/// with `follow`, the `--last` backlog and then every new matching entry, one per line. A
/// subscriber that fell behind gets a `lost` line with the count it missed, and the daemon's own
/// `lost` records (ring buffer overflow) pass every filter: the missed entries could have matched.
async fn stream<S: Service, T: Queryable + serde::Serialize>(
    shared: &S,
    w: &mut tokio::net::unix::OwnedWriteHalf,
    mut rx: broadcast::Receiver<Arc<T>>,
    recent: Vec<Arc<T>>,
    filter: &Filter,
    follow: bool,
) -> anyhow::Result<()> {
    let held: Vec<&T> = recent.iter().map(Arc::as_ref).collect();
    if !follow {
        let selected = filter.select(held.into_iter());
        write_line(w, &Response::result(serde_json::to_value(selected)?)).await?;
        return Ok(());
    }
    write_line(w, &Response::result(serde_json::Value::Null)).await?;
    if filter.last.is_some() {
        for e in filter.select(held.into_iter()) {
            write_line(w, e).await?;
        }
    }
    drop(recent);
    loop {
        match rx.recv().await {
            // A `lost` record cannot be attributed: what it counts could have matched.
            Ok(e) if e.fields().verdict == "lost" || filter.matches(e.as_ref()) => {
                write_line(w, e.as_ref()).await?;
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let lost = shared.lagged_record(n);
                write_line(w, &lost).await?;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Binds the API socket (mode 0600); refuses when a live daemon answers on it, replaces a stale
/// one.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // A live daemon answers; a stale socket does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another daemon is listening on {}", path.display());
        }
        std::fs::remove_file(path)?;
    }
    let l = bind_private(path).with_context(|| format!("binding {}", path.display()))?;
    Ok(UnixListener::from_std(l)?)
}

/// A listening Unix socket at `path` that is mode 0600 from the moment it exists: Linux gives
/// the socket file the mode of the socket's inode (less the umask) at `bind`, so the mode is
/// set on the descriptor first, with no process-wide umask change while other threads run.
fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use rustix::{
        fs::{Mode, fchmod},
        net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, bind, listen, socket_with},
    };
    let fd = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    fchmod(&fd, Mode::RUSR | Mode::WUSR)?;
    bind(&fd, &SocketAddrUnix::new(path)?)?;
    // Belt and braces: the file, not only the inode it was made from.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listen(&fd, 1024)?;
    Ok(std::os::unix::net::UnixListener::from(fd))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    #[test]
    fn the_socket_is_private_from_creation_and_a_live_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("cp-api-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("api.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = bind(&path).unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            assert!(meta.file_type().is_socket());
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            let err = bind(&path).unwrap_err().to_string();
            assert!(err.contains("another daemon"), "{err}");
            drop(l);
            // A stale socket (nobody listening) is replaced.
            let l = bind(&path).unwrap();
            let c = tokio::net::UnixStream::connect(&path).await;
            assert!(c.is_ok());
            drop(l);
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
