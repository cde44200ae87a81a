//! The wire protocol: request and response types, and the flat line encoding.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::error::{PolicyError, Problem};

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
    /// The daemon's status.
    Status,
    /// The identities of the active generation.
    Identities,
    /// The active policy.
    PolicyShow,
    /// Compile a policy and make it the active generation.
    PolicyApply {
        /// The file name the policy came from (for positions in errors).
        file: String,
        /// The policy document.
        source: String,
    },
    /// Compile a policy and say how it differs from the active one, changing nothing.
    PolicyDiff {
        /// The file name the policy came from (for positions in errors).
        file: String,
        /// The policy document.
        source: String,
    },
    /// The generations kept, newest first.
    PolicyHistory,
    /// Make an earlier generation active again.
    PolicyRollback {
        /// The generation to go back to; none for the one before the active one.
        generation: Option<u32>,
    },
    /// Flow records; `filter` is applied by the daemon (`identity` and `verdict` at the top
    /// level are the protocol's first form and still accepted).
    Flows {
        /// Keep streaming new records after the buffered ones.
        #[serde(default)]
        follow: bool,
        /// Which records to send.
        #[serde(default)]
        filter: crate::query::Query,
        /// Only this identity (first protocol form).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
        /// Only this verdict (first protocol form).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verdict: Option<String>,
    },
    /// Alerts, filtered like flows.
    Alerts {
        /// Keep streaming new alerts after the buffered ones.
        #[serde(default)]
        follow: bool,
        /// Which alerts to send.
        #[serde(default)]
        filter: crate::query::Query,
    },
    /// The shadow-integration inventory.
    Inventory {
        /// Only this identity.
        #[serde(default)]
        identity: Option<String>,
    },
    /// Let an identity reach a destination for a time, under a task id.
    Grant {
        /// The identity granted.
        identity: String,
        /// The destination, as `chokepoint grant --to` takes it.
        to: String,
        /// How long the grant lasts, in seconds.
        ttl_secs: u64,
        /// The task id the grant is recorded and revoked under.
        task: String,
    },
    /// Remove every grant of a task.
    Revoke {
        /// The task id.
        task: String,
    },
    /// Who is behind a live gateway connection.
    Attest {
        /// The client's address as the gateway sees it (`ip:port`).
        peer: String,
        /// The gateway endpoint's address (`ip:port`).
        local: String,
    },
    /// Names learned for toFQDN rules.
    Fqdn {
        /// Only this identity.
        #[serde(default)]
        identity: Option<String>,
    },
}

/// Why a request line was rejected before it reached a handler.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The line is not JSON; the parser's message.
    #[error("request is not valid JSON: {0}")]
    Json(String),
    /// The line is JSON but not an object.
    #[error("request must be a JSON object")]
    NotObject,
    /// The object has no `v` field.
    #[error("request has no protocol version `v` (this daemon speaks v{VERSION})")]
    NoVersion,
    /// A `v` this daemon does not speak; the value sent.
    #[error("unsupported protocol version {0} (this daemon speaks v{VERSION})")]
    Version(String),
    /// The command is unknown or its fields are wrong; the decoder's message.
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
    let external = if had_args {
        serde_json::json!({ cmd.clone(): serde_json::Value::Object(std::mem::take(obj)) })
    } else {
        serde_json::Value::String(cmd.clone())
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

/// A response line: `{"ok":true,"result":…}` or `{"ok":false,"error":"…"}`; a policy that
/// failed validation also carries its `problems`, each positioned.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    /// Whether the command succeeded.
    pub ok: bool,
    /// The command's result ([`super::responses`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// What went wrong, as one message (for a policy: every problem, one per line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For a policy that failed validation: every problem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<PolicyProblem>,
}

impl Response {
    /// A success.
    pub fn result(result: serde_json::Value) -> Self {
        Self {
            ok: true,
            result: Some(result),
            ..Self::default()
        }
    }

    /// A failure with a message.
    pub fn error(message: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            error: Some(message.to_string()),
            ..Self::default()
        }
    }

    /// A policy that failed validation: the message as the CLI prints it, and the problems.
    pub fn policy_error(e: &PolicyError) -> Self {
        Self {
            problems: PolicyProblem::list(e),
            ..Self::error(e)
        }
    }

    /// One line of JSON with its newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("serialisable");
        line.push(b'\n');
        line
    }
}

/// One problem of a policy that failed validation, as it travels to the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyProblem {
    /// The document's name as the client gave it.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// The field (`spec.identities[0].egress.allow[1].to`, or `document`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl PolicyProblem {
    /// The problems of `e`.
    pub fn list(e: &PolicyError) -> Vec<Self> {
        e.problems
            .iter()
            .map(|p| Self {
                file: e.file.clone(),
                line: p.line,
                column: p.column,
                field: p.field.clone(),
                message: p.message.clone(),
            })
            .collect()
    }

    /// The policy error these problems came from (one document: the first one's file).
    pub fn to_error(list: &[Self]) -> PolicyError {
        PolicyError {
            file: list.first().map(|p| p.file.clone()).unwrap_or_default(),
            problems: list
                .iter()
                .map(|p| Problem {
                    line: p.line,
                    column: p.column,
                    field: p.field.clone(),
                    message: p.message.clone(),
                })
                .collect(),
        }
    }
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

    #[test]
    fn policy_problems_travel_whole() {
        let e = PolicyError {
            file: "bad.yaml".into(),
            problems: vec![
                Problem {
                    line: 3,
                    column: 7,
                    field: "kind".into(),
                    message: "unsupported kind".into(),
                },
                Problem {
                    line: 9,
                    column: 1,
                    field: "spec.identities".into(),
                    message: "a policy needs at least one identity".into(),
                },
            ],
        };
        let line = Response::policy_error(&e).to_line();
        let back: Response = serde_json::from_slice(&line).unwrap();
        assert!(!back.ok);
        assert_eq!(back.problems.len(), 2);
        assert_eq!(back.problems[1].field, "spec.identities");
        assert_eq!(PolicyProblem::to_error(&back.problems), e);
        assert_eq!(back.error.as_deref(), Some(e.to_string().as_str()));
    }
}
