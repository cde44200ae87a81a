//! The local API: newline-delimited JSON over a Unix socket (mode 0600, peer credentials
//! checked). Protocol version 1.
//!
//! Request: one line, a JSON object `{"v":1,"cmd":"<command>", ...arguments}`.
//! Response: one line `{"ok":true,"result":…}` or `{"ok":false,"error":"…"}` (with `problems`,
//! each `{file, line, column, field, message}`, for a policy that failed validation); a `follow`
//! request then streams one JSON object per line until the client closes.
//!
//! [`protocol`] holds the wire envelope, [`responses`] the typed result of each command (both
//! shared by the two sides), [`client`] the CLI's side and [`server`] the daemon's listener; what
//! each command does lives in `daemon::handlers`.

pub mod client;
pub mod protocol;
pub mod responses;
pub mod server;

pub use client::{Client, ClientError};
pub use protocol::{
    DecodeError, MAX_REQUEST_BYTES, PolicyProblem, REQUEST_TIMEOUT, Request, Response, VERSION,
    decode, encode,
};
pub use responses::Reply;
pub use server::ApiError;
