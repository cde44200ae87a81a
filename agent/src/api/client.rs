//! The client side of the local API (used by the CLI).

use std::{path::Path, time::Duration};

use serde::de::DeserializeOwned;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

use super::protocol::{PolicyProblem, Request, Response, encode};
use crate::policy::error::PolicyError;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected.
    #[error("cannot reach the daemon at {path} (is `chokepoint daemon` running?)")]
    Connect {
        /// The API socket's path.
        path: String,
        /// Why the connect failed.
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to the connected socket failed.
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    /// A response line that does not decode.
    #[error("the daemon sent an unreadable response: {0}")]
    Protocol(String),
    /// The policy sent did not validate: every problem, positioned (printed one per line as
    /// `file:line:col: field: message`).
    #[error(transparent)]
    Policy(PolicyError),
    /// The daemon accepted the connection but sent no answer in time (it is wedged or overloaded).
    #[error("the daemon did not answer within {} s", RESPONSE_TIMEOUT.as_secs())]
    Timeout,
    /// The daemon refused the request; its message.
    #[error("{0}")]
    Daemon(String),
}

/// How long a request waits for the daemon's answer. The slowest answer is a large policy
/// apply (about a second at 100k rules), so a wedged daemon is told apart from a busy one;
/// a `--follow` stream's later lines are not bounded.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connected client.
pub struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    /// Connects to the daemon's socket.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let s = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (r, w) = s.into_split();
        Ok(Self {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    /// Sends a request and returns its typed result (or the daemon's error).
    pub async fn call<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, ClientError> {
        let v = self.call_value(req).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Sends a request and returns the result as JSON (or the daemon's error).
    pub async fn call_value(&mut self, req: &Request) -> Result<serde_json::Value, ClientError> {
        let line = tokio::time::timeout(RESPONSE_TIMEOUT, async {
            self.writer.write_all(&encode(req)).await?;
            self.next_line().await
        })
        .await
        .map_err(|_| ClientError::Timeout)??
        .ok_or_else(|| ClientError::Protocol("connection closed before a response".into()))?;
        let resp: Response =
            serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if resp.ok {
            Ok(resp.result.unwrap_or(serde_json::Value::Null))
        } else if !resp.problems.is_empty() {
            Err(ClientError::Policy(PolicyProblem::to_error(&resp.problems)))
        } else {
            Err(ClientError::Daemon(
                resp.error.unwrap_or_else(|| "unknown error".into()),
            ))
        }
    }

    /// Next streamed line (after a `follow` request).
    pub async fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).await?;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(line.trim_end().to_string()))
    }
}
