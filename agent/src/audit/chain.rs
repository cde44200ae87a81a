//! Tamper evidence for the audit log: every line carries a sequence number and a SHA-256 hash
//! chained to the previous line's, and a signed checkpoint (Ed25519) is written every N records,
//! at the head of every file (start and rotation) and when the daemon stops.
//!
//! Line form (byte-exact, so the verifier needs no canonical JSON):
//!
//! ```text
//! body = {"schema":1,"event":"flow",…,"seq":42}
//! hash = SHA-256(previous line's hash (32 bytes) ‖ body)
//! line = {"schema":1,"event":"flow",…,"seq":42,"hash":"<64 hex>"}
//! ```
//!
//! A checkpoint is a line of the chain like any other (`"event":"checkpoint"`) whose `signature`
//! signs `"chokepoint-audit-checkpoint-v1" ‖ seq (u64 LE) ‖ prev`, where `prev` (also a field) is
//! the hash of the line before it. An edit that recomputes every later hash still breaks the next
//! checkpoint's signature; without the private key (in the state dir, mode 0600) it cannot be
//! re-signed.
use std::{
    fs,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signer, SigningKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use super::keys::{
    ChainError, KEY_FILE, PUBLIC_KEY_FILE, hex, key_id, load_or_create_key, read_public_key, unhex,
};

/// Default number of records between two checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
/// Domain separation of checkpoint signatures.
pub const SIGNING_CONTEXT: &[u8] = b"chokepoint-audit-checkpoint-v1";
/// The `prev` of the very first line of a chain.
pub const GENESIS: [u8; 32] = [0; 32];

/// Length of the `,"hash":"<64 hex>"}` suffix every chained line ends with.
pub const HASH_SUFFIX_LEN: usize = r#","hash":""}"#.len() + 64;

/// The chain hash of a line body.
pub fn chain_hash(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// What a checkpoint signature covers.
pub fn signed_message(seq: u64, prev: &[u8; 32]) -> Vec<u8> {
    let mut m = SIGNING_CONTEXT.to_vec();
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(prev);
    m
}

/// Where a chain stands: the last line's sequence number and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Sequence number of the next line.
    pub next_seq: u64,
    /// Hash of the last line (GENESIS before the first).
    pub prev: [u8; 32],
}

impl Head {
    /// A new chain.
    pub const GENESIS: Head = Head {
        next_seq: 0,
        prev: GENESIS,
    };
}

/// The `seq` and `hash` of a chained line, read from its tail.
pub fn line_position(line: &[u8]) -> Option<(u64, [u8; 32])> {
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return None;
    }
    let cut = line.len() - HASH_SUFFIX_LEN;
    if !line[cut..].starts_with(br#","hash":""#) {
        return None;
    }
    let hash: [u8; 32] = unhex(std::str::from_utf8(&line[cut + 9..line.len() - 2]).ok()?)?
        .try_into()
        .ok()?;
    let body = &line[..cut];
    let at = body.windows(7).rposition(|w| w == br#","seq":"#)?;
    let seq = std::str::from_utf8(&body[at + 7..]).ok()?.parse().ok()?;
    Some((seq, hash))
}

/// Finds where the chain in `files` (newest first: `audit.jsonl`, `audit.jsonl.1`, …) stands:
/// the last whole chained line of the newest file that has one. A torn or foreign last line is
/// skipped (the verifier reports it); the chain continues from the last good line.
pub fn resume(files: &[PathBuf]) -> Head {
    for f in files {
        if let Some(h) = last_position(f) {
            return h;
        }
    }
    Head::GENESIS
}

fn last_position(path: &Path) -> Option<Head> {
    let mut f = fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    // Lines are short; read a growing tail until a whole chained line is found.
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        f.seek(SeekFrom::Start(start)).ok()?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).ok()?;
        let mut lines: Vec<&[u8]> = buf.split(|&b| b == b'\n').collect();
        if start > 0 {
            lines.remove(0); // may start mid-line
        }
        for l in lines.iter().rev() {
            if let Some((seq, hash)) = line_position(l) {
                return Some(Head {
                    next_seq: seq + 1,
                    prev: hash,
                });
            }
        }
        if start == 0 {
            return None;
        }
        window *= 4;
    }
}

/// Why a checkpoint is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointReason {
    /// The daemon opened the log (a new chain or a continued one).
    Start,
    /// `N` records since the last checkpoint.
    Interval,
    /// First line of a new file after rotation.
    Rotate,
    /// Records were written and then the log went quiet.
    Idle,
    /// The daemon is stopping.
    Stop,
}

impl CheckpointReason {
    /// The `reason` field.
    pub fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Interval => "interval",
            Self::Rotate => "rotate",
            Self::Idle => "idle",
            Self::Stop => "stop",
        }
    }
}

#[derive(Serialize)]
struct CheckpointBody<'a> {
    schema: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'static str>,
    time: String,
    node: &'a str,
    reason: &'static str,
}

/// Appends `,"key":value` to a serialised JSON object (without its newline).
fn append(line: &mut Vec<u8>, key: &str, value: &str) {
    line.pop();
    line.extend_from_slice(format!(",\"{key}\":{value}}}").as_bytes());
}

/// The per-line transform of the audit sink: seals each line into the chain and produces the
/// checkpoints.
pub struct Chain {
    key: SigningKey,
    key_id: String,
    head: Head,
    every: u64,
    since_checkpoint: u64,
    node: String,
}

impl Chain {
    /// A chain continuing from `head`, signing with `key`, checkpointing every `every` records.
    pub fn new(key: SigningKey, head: Head, every: u64, node: &str) -> Self {
        let key_id = key_id(&key.verifying_key());
        Self {
            key,
            key_id,
            head,
            every: every.max(1),
            since_checkpoint: 0,
            node: node.to_string(),
        }
    }

    /// Where the chain stands.
    pub fn head(&self) -> Head {
        self.head
    }

    /// Records sealed since the last checkpoint.
    pub fn since_checkpoint(&self) -> u64 {
        self.since_checkpoint
    }

    /// Serialises `value` (a JSON object) as one chained line, newline included. A checkpoint is
    /// due afterwards when [`Chain::checkpoint_due`] says so.
    pub fn seal<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<Vec<u8>, ChainError> {
        let mut line = serde_json::to_vec(value)?;
        self.seal_line(&mut line, false)?;
        line.push(b'\n');
        Ok(line)
    }

    /// Seals one serialised JSON object (no newline) in place: a checkpoint first gets `prev`,
    /// `key_id` and `signature`; every line then gets `seq` and `hash`.
    pub fn seal_line(&mut self, line: &mut Vec<u8>, checkpoint: bool) -> Result<(), ChainError> {
        if line.len() < 3 || line.first() != Some(&b'{') || line.last() != Some(&b'}') {
            return Err(ChainError::NotObject);
        }
        if checkpoint {
            let sig = self
                .key
                .sign(&signed_message(self.head.next_seq, &self.head.prev));
            append(line, "prev", &format!("\"{}\"", hex(&self.head.prev)));
            append(line, "key_id", &format!("\"{}\"", self.key_id));
            append(line, "signature", &format!("\"{}\"", hex(&sig.to_bytes())));
            self.since_checkpoint = 0;
        } else {
            self.since_checkpoint += 1;
        }
        append(line, "seq", &self.head.next_seq.to_string());
        let hash = chain_hash(&self.head.prev, line);
        append(line, "hash", &format!("\"{}\"", hex(&hash)));
        self.head = Head {
            next_seq: self.head.next_seq + 1,
            prev: hash,
        };
        Ok(())
    }

    /// Whether `every` records were sealed since the last checkpoint.
    pub fn checkpoint_due(&self) -> bool {
        self.since_checkpoint >= self.every
    }

    /// The body of a checkpoint line (`schema`, `time`, `node`, `reason`) for a sink that adds
    /// `event` itself; [`Chain::seal_line`] with `checkpoint` signs it.
    pub fn checkpoint_body(&self, reason: CheckpointReason, time: String) -> Vec<u8> {
        serde_json::to_vec(&CheckpointBody {
            schema: super::SCHEMA_VERSION,
            event: None,
            time,
            node: &self.node,
            reason: reason.name(),
        })
        .expect("checkpoint serialises")
    }

    /// A whole signed checkpoint line (itself part of the chain), newline included.
    pub fn checkpoint(&mut self, reason: CheckpointReason, time: String) -> Vec<u8> {
        let mut line = serde_json::to_vec(&CheckpointBody {
            schema: super::SCHEMA_VERSION,
            event: Some("checkpoint"),
            time,
            node: &self.node,
            reason: reason.name(),
        })
        .expect("checkpoint serialises");
        self.seal_line(&mut line, true)
            .expect("checkpoint is an object");
        line.push(b'\n');
        line
    }
}

/// Bytes [`Chain::seal_line`] adds at most: `seq` and `hash`, and for a checkpoint `prev`,
/// `key_id` and `signature`.
const MAX_EXTRA: usize = 32 + HASH_SUFFIX_LEN + 10 + 64 + 12 + 16 + 15 + 128;

/// Length of a whole checkpoint line without its node name (with slack).
const CHECKPOINT_LINE: usize = 512;

impl super::Transform for Chain {
    fn line(&mut self, event: super::AuditEvent, line: &mut Vec<u8>) {
        // Every line the sink writes is a JSON object; anything else stays unchained and
        // `audit verify` reports it.
        let _ = self.seal_line(line, event == super::AuditEvent::Checkpoint);
    }
    fn rotated(&mut self) -> Vec<(super::AuditEvent, Vec<u8>)> {
        // The new file opens with a checkpoint that signs everything before it.
        vec![(
            super::AuditEvent::Checkpoint,
            self.checkpoint_body(
                CheckpointReason::Rotate,
                crate::util::rfc3339_ns(crate::util::wall_ns()),
            ),
        )]
    }
    fn max_extra_bytes(&self) -> usize {
        // What sealing adds, plus room for the interval checkpoint that may follow the line
        // (written right after it, without a rotation in between).
        MAX_EXTRA + CHECKPOINT_LINE + self.node.len()
    }
    fn after(&mut self) -> Vec<(super::AuditEvent, Vec<u8>)> {
        if !self.checkpoint_due() {
            return Vec::new();
        }
        vec![(
            super::AuditEvent::Checkpoint,
            self.checkpoint_body(
                CheckpointReason::Interval,
                crate::util::rfc3339_ns(crate::util::wall_ns()),
            ),
        )]
    }
    fn open_span(&self) -> u64 {
        self.since_checkpoint
    }
}

/// A checkpoint record as the daemon writes it through the sink (`event` is the sink's, the
/// signature the chain's).
pub fn checkpoint_record(reason: CheckpointReason, node: &str) -> serde_json::Value {
    serde_json::json!({
        "schema": super::SCHEMA_VERSION,
        "time": crate::util::rfc3339_ns(crate::util::wall_ns()),
        "node": node,
        "reason": reason.name(),
    })
}

/// The audit log files a chain may continue from, newest first: `path`, `path.1`, … `path.keep`.
pub fn log_files(path: &Path, keep: usize) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    for n in 1..=keep {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        out.push(PathBuf::from(s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn lines_chain_and_positions_read_back() {
        let mut c = Chain::new(key(), Head::GENESIS, 2, "n1");
        let a = c.checkpoint(CheckpointReason::Start, "t".into());
        let b = c
            .seal(&serde_json::json!({"event": "flow", "x": 1}))
            .unwrap();
        let (seq, hash) = line_position(a.trim_ascii_end()).unwrap();
        assert_eq!(seq, 0);
        let body_end = b.len() - 1 - HASH_SUFFIX_LEN;
        let mut body = b[..body_end].to_vec();
        body.push(b'}');
        assert!(body.ends_with(b",\"seq\":1}"));
        let (seq_b, hash_b) = line_position(b.trim_ascii_end()).unwrap();
        assert_eq!(seq_b, 1);
        assert_eq!(hash_b, chain_hash(&hash, &body));
        assert!(!c.checkpoint_due());
        c.seal(&serde_json::json!({"event": "flow"})).unwrap();
        assert!(c.checkpoint_due());
        assert!(c.seal(&serde_json::json!([1])).is_err());
        assert!(c.seal(&serde_json::json!({})).is_err());
    }

    #[test]
    fn resumes_from_the_last_whole_line() {
        let dir = std::env::temp_dir().join(format!("cp-resume-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut c = Chain::new(key(), Head::GENESIS, 100, "n1");
        let mut text = c.checkpoint(CheckpointReason::Start, "t".into());
        text.extend(c.seal(&serde_json::json!({"event": "flow"})).unwrap());
        text.extend_from_slice(b"{\"torn");
        let f = dir.join("a.jsonl");
        fs::write(&f, &text).unwrap();
        assert_eq!(resume(&[dir.join("missing"), f]), c.head());
        assert_eq!(resume(&[dir.join("missing")]), Head::GENESIS);
        let _ = fs::remove_dir_all(&dir);
    }
}
