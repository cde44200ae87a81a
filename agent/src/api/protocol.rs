//! The wire protocol: request and response types, and the flat line encoding.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Protocol version.
pub const VERSION: u64 = 1;
/// Largest request line accepted (a policy document is at most 16 MiB before JSON escaping).
pub const MAX_REQUEST_BYTES: usize = 40 << 20;
/// Time a client has to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Identities,
    PolicyShow,
    PolicyApply {
        file: String,
        source: String,
    },
    PolicyDiff {
        file: String,
        source: String,
    },
    PolicyHistory,
    PolicyRollback {
        generation: Option<u32>,
    },
    /// Flow records; `filter` is applied by the daemon (`identity` and `verdict` at the top
    /// level are the protocol's first form and still accepted).
    Flows {
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        filter: crate::query::Query,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verdict: Option<String>,
    },
    /// Alerts, filtered like flows.
    Alerts {
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        filter: crate::query::Query,
    },
    /// The shadow-integration inventory.
    Inventory {
        #[serde(default)]
        identity: Option<String>,
    },
    Grant {
        identity: String,
        to: String,
        ttl_secs: u64,
        task: String,
    },
    Revoke {
        task: String,
    },
    Attest {
        peer: String,
        local: String,
    },
    /// Names learned for toFQDN rules.
    Fqdn {
        #[serde(default)]
        identity: Option<String>,
    },
}

/// Why a request line was rejected before it reached a handler.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("request is not valid JSON: {0}")]
    Json(String),
    #[error("request must be a JSON object")]
    NotObject,
    #[error("request has no protocol version `v` (this daemon speaks v{VERSION})")]
    NoVersion,
    #[error("unsupported protocol version {0} (this daemon speaks v{VERSION})")]
    Version(String),
    #[error("unknown or malformed command: {0}")]
    Command(String),
}

/// Decodes one request line.
pub fn decode(line: &[u8]) -> Result<Request, DecodeError> {
    let mut v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| DecodeError::Json(e.to_string()))?;
    let obj = v.as_object_mut().ok_or(DecodeError::NotObject)?;
    match obj.remove("v") {
        None => return Err(DecodeError::NoVersion),
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
        Some(other) => return Err(DecodeError::Version(other.to_string())),
    }
    let cmd = match obj.remove("cmd") {
        Some(serde_json::Value::String(c)) => c,
        Some(other) => {
            return Err(DecodeError::Command(format!(
                "`cmd` must be a string, not {other}"
            )));
        }
        None => return Err(DecodeError::Command("missing `cmd`".into())),
    };
    // The wire form is flat ({"cmd": "grant", "task": …}); serde's external tagging
    // ({"grant": {"task": …}}) lets errors name the exact field.
    let had_args = !obj.is_empty();
    let external = if !had_args {
        serde_json::Value::String(cmd.clone())
    } else {
        serde_json::json!({ cmd.clone(): serde_json::Value::Object(std::mem::take(obj)) })
    };
    let try_decode =
        |value: serde_json::Value| serde_path_to_error::deserialize::<_, Request>(value);
    let result = match try_decode(external) {
        // A command without arguments sent with an empty object, or one with only optional ones.
        Err(_) if !had_args => try_decode(serde_json::json!({ cmd.clone(): {} })),
        r => r,
    };
    result.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() || path == cmd {
            DecodeError::Command(format!("`{cmd}`: {inner}"))
        } else {
            DecodeError::Command(format!(
                "`{cmd}`: {}: {inner}",
                path.trim_start_matches(&format!("{cmd}."))
            ))
        }
    })
}

/// Encodes one request line (flat: `{"v":1,"cmd":…, …arguments}`).
pub fn encode(req: &Request) -> Vec<u8> {
    let mut flat = serde_json::Map::new();
    flat.insert("v".into(), VERSION.into());
    match serde_json::to_value(req).expect("serialisable") {
        serde_json::Value::String(cmd) => {
            flat.insert("cmd".into(), cmd.into());
        }
        serde_json::Value::Object(o) => {
            let (cmd, args) = o.into_iter().next().expect("one variant");
            flat.insert("cmd".into(), cmd.into());
            if let serde_json::Value::Object(a) = args {
                flat.extend(a);
            }
        }
        other => unreachable!("request serialises as {other}"),
    }
    let mut line = serde_json::to_vec(&flat).expect("serialisable");
    line.push(b'\n');
    line
}

/// A response line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        let r = Request::Revoke { task: "t1".into() };
        assert_eq!(decode(encode(&r).trim_ascii_end()).unwrap(), r);
        assert_eq!(decode(br#"{"cmd":"status"}"#), Err(DecodeError::NoVersion));
        assert!(matches!(
            decode(br#"{"v":2,"cmd":"status"}"#),
            Err(DecodeError::Version(_))
        ));
        assert!(matches!(
            decode(br#"{"v":1,"cmd":"explode"}"#),
            Err(DecodeError::Command(_))
        ));
        assert!(matches!(
            decode(br#"{"v":1,"cmd":"status","x":1}"#),
            Err(DecodeError::Command(_))
        ));
        assert!(matches!(
            decode(br#"{"v":1,"cmd":"sta"#),
            Err(DecodeError::Json(_))
        ));
        assert_eq!(decode(b"[1]"), Err(DecodeError::NotObject));
    }
}
