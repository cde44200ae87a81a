//! `chokepoint audit verify FILE...`: checks the hash chain and the signed checkpoints of a set
//! of (rotated) audit log files and reports the first record that was edited, inserted, removed,
//! reordered or truncated, by file and line.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;

use super::chain::{self, HASH_SUFFIX_LEN};

/// What was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tampering {
    /// A record's content no longer matches its hash, or a checkpoint's signature fails.
    Edited,
    /// A record that is not part of the chain sits here.
    Inserted,
    /// Records are missing here.
    Removed,
    /// Records are out of order.
    Reordered,
    /// A line was cut short.
    Truncated,
}

/// The first problem found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: usize,
    /// What kind of tampering it shows.
    pub kind: Tampering,
    /// What was found, for people.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            serde_json::to_value(self.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            self.message
        )
    }
}

/// What a clean set contains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The files in chain order (oldest first).
    pub files: Vec<PathBuf>,
    /// Chained lines (records and checkpoints).
    pub records: u64,
    /// Signed checkpoints.
    pub checkpoints: u64,
    /// Sequence number of the first chained line.
    pub first_seq: Option<u64>,
    /// Sequence number of the last chained line.
    pub last_seq: Option<u64>,
    /// Lines after the last checkpoint (protected by the chain only until the next one).
    pub unsigned_tail: u64,
    /// Id of the public key the checkpoints were verified with.
    pub key_id: String,
}

/// Errors that are not tampering (unreadable input).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No files were given.
    #[error("no audit log files given")]
    NoFiles,
}

struct Line<'a> {
    file: usize,
    number: usize,
    bytes: &'a [u8],
    /// The file's last segment had no newline.
    torn: bool,
}

/// Verifies `files` (any order: they are put in chain order by their first sequence number)
/// against `key`. `Ok(Err(problem))` is tampering; `Err` is unreadable input.
pub fn verify(
    files: &[PathBuf],
    key: &VerifyingKey,
) -> Result<Result<Summary, Problem>, VerifyError> {
    if files.is_empty() {
        return Err(VerifyError::NoFiles);
    }
    let mut contents = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).map_err(|source| VerifyError::Read {
            path: f.clone(),
            source,
        })?;
        contents.push((f.clone(), bytes));
    }
    // Chain order: by the first sequence number each file holds; files without any chained line
    // keep their place at the end (and are reported when they hold anything).
    let first_seq = |b: &[u8]| {
        b.split(|&c| c == b'\n')
            .find_map(chain::line_position)
            .map_or(u64::MAX, |(s, _)| s)
    };
    contents.sort_by_key(|(_, b)| first_seq(b));
    let mut lines = Vec::new();
    for (i, (_, bytes)) in contents.iter().enumerate() {
        let mut segments: Vec<&[u8]> = bytes.split(|&c| c == b'\n').collect();
        let torn_tail = !bytes.is_empty() && !bytes.ends_with(b"\n");
        if !torn_tail {
            segments.pop(); // the empty segment after the final newline
        }
        let n = segments.len();
        for (j, s) in segments.into_iter().enumerate() {
            lines.push(Line {
                file: i,
                number: j + 1,
                bytes: s,
                torn: torn_tail && j + 1 == n,
            });
        }
    }
    let names: Vec<PathBuf> = contents.iter().map(|(p, _)| p.clone()).collect();
    Ok(check(&names, &lines, key))
}

fn problem(names: &[PathBuf], l: &Line<'_>, kind: Tampering, message: String) -> Problem {
    Problem {
        file: names[l.file].clone(),
        line: l.number,
        kind,
        message,
    }
}

/// The hash a line should have given the previous hash, from its own bytes.
fn recompute(prev: &[u8; 32], line: &[u8]) -> [u8; 32] {
    let mut body = line[..line.len() - HASH_SUFFIX_LEN].to_vec();
    body.push(b'}');
    chain::chain_hash(prev, &body)
}

fn check(names: &[PathBuf], lines: &[Line<'_>], key: &VerifyingKey) -> Result<Summary, Problem> {
    let want_key = chain::key_id(key);
    let mut prev: Option<[u8; 32]> = None;
    let mut expected = 0u64;
    let mut summary = Summary {
        files: names.to_vec(),
        records: 0,
        checkpoints: 0,
        first_seq: None,
        last_seq: None,
        unsigned_tail: 0,
        key_id: want_key.clone(),
    };
    for (idx, l) in lines.iter().enumerate() {
        let Some((seq, hash)) = chain::line_position(l.bytes) else {
            let json = serde_json::from_slice::<serde_json::Value>(l.bytes).is_ok();
            return Err(if l.torn || !json {
                problem(
                    names,
                    l,
                    Tampering::Truncated,
                    if l.torn {
                        "the last line is cut off (no newline, no whole record)".into()
                    } else {
                        "not a whole record (cut off or overwritten)".into()
                    },
                )
            } else {
                problem(
                    names,
                    l,
                    Tampering::Inserted,
                    "a record without a place in the chain (no seq/hash)".into(),
                )
            });
        };
        if l.torn {
            return Err(problem(
                names,
                l,
                Tampering::Truncated,
                "the last line has no newline (cut off after it was written)".into(),
            ));
        }
        let value: Option<serde_json::Value> = serde_json::from_slice(l.bytes).ok();
        let is_checkpoint = value
            .as_ref()
            .is_some_and(|v| v["event"] == "checkpoint" && v["signature"].is_string());
        let Some(running) = prev else {
            // The first line of the set anchors the chain: it must be a signed checkpoint.
            if !is_checkpoint {
                return Err(problem(
                    names,
                    l,
                    Tampering::Removed,
                    format!(
                        "the set does not start with a checkpoint (record seq {seq}): records before it were removed"
                    ),
                ));
            }
            let v = value.as_ref().expect("checked");
            let claimed: Option<[u8; 32]> = v["prev"]
                .as_str()
                .and_then(chain::unhex)
                .and_then(|b| b.try_into().ok());
            let Some(claimed) = claimed else {
                return Err(problem(
                    names,
                    l,
                    Tampering::Edited,
                    "checkpoint without a readable `prev`".into(),
                ));
            };
            check_signature(names, l, v, seq, &claimed, key, &want_key, None)?;
            if recompute(&claimed, l.bytes) != hash {
                return Err(problem(
                    names,
                    l,
                    Tampering::Edited,
                    "the record does not match its hash".into(),
                ));
            }
            summary.checkpoints += 1;
            summary.records += 1;
            summary.first_seq = Some(seq);
            summary.last_seq = Some(seq);
            prev = Some(hash);
            expected = seq + 1;
            continue;
        };
        if seq > expected {
            let later = lines[idx + 1..]
                .iter()
                .find(|x| chain::line_position(x.bytes).is_some_and(|(s, _)| s == expected));
            return Err(match later {
                Some(x) => problem(
                    names,
                    l,
                    Tampering::Reordered,
                    format!(
                        "record seq {seq} where seq {expected} belongs (seq {expected} is at {}:{})",
                        names[x.file].display(),
                        x.number
                    ),
                ),
                None => problem(
                    names,
                    l,
                    Tampering::Removed,
                    format!(
                        "{} record(s) missing before this line (seq {expected}..{})",
                        seq - expected,
                        seq - 1
                    ),
                ),
            });
        }
        if seq < expected {
            return Err(problem(
                names,
                l,
                Tampering::Inserted,
                format!(
                    "record seq {seq} where seq {expected} belongs (a copy or an inserted line)"
                ),
            ));
        }
        if recompute(&running, l.bytes) != hash {
            // An inserted line that took the next number: the line after it still chains.
            let next_chains = lines.get(idx + 1).is_some_and(|x| {
                chain::line_position(x.bytes)
                    .is_some_and(|(s, h)| s == expected && recompute(&running, x.bytes) == h)
            });
            return Err(if next_chains {
                problem(
                    names,
                    l,
                    Tampering::Inserted,
                    "a line that is not part of the chain (the next line chains without it)".into(),
                )
            } else {
                problem(
                    names,
                    l,
                    Tampering::Edited,
                    "the record does not match its hash".into(),
                )
            });
        }
        if is_checkpoint {
            let v = value.as_ref().expect("checked");
            check_signature(names, l, v, seq, &running, key, &want_key, Some(&summary))?;
            summary.checkpoints += 1;
            summary.unsigned_tail = 0;
        } else {
            summary.unsigned_tail += 1;
        }
        summary.records += 1;
        summary.last_seq = Some(seq);
        prev = Some(hash);
        expected = seq + 1;
    }
    Ok(summary)
}

#[expect(clippy::too_many_arguments, reason = "one call site per anchor kind")]
fn check_signature(
    names: &[PathBuf],
    l: &Line<'_>,
    v: &serde_json::Value,
    seq: u64,
    prev: &[u8; 32],
    key: &VerifyingKey,
    want_key: &str,
    so_far: Option<&Summary>,
) -> Result<(), Problem> {
    if v["key_id"].as_str() != Some(want_key) {
        return Err(problem(
            names,
            l,
            Tampering::Edited,
            format!(
                "checkpoint signed by key {} but the public key given is {want_key}",
                v["key_id"]
            ),
        ));
    }
    if v["prev"].as_str() != Some(chain::hex(prev).as_str()) {
        return Err(problem(
            names,
            l,
            Tampering::Edited,
            "checkpoint `prev` differs from the chain before it".into(),
        ));
    }
    let sig = v["signature"]
        .as_str()
        .and_then(chain::unhex)
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b));
    let ok = sig.is_some_and(|s| {
        key.verify_strict(&chain::signed_message(seq, prev), &s)
            .is_ok()
    });
    if !ok {
        let since = so_far.and_then(|s| s.last_seq).map_or(String::new(), |_| {
            " (records since the previous checkpoint were changed and the chain recomputed)".into()
        });
        return Err(problem(
            names,
            l,
            Tampering::Edited,
            format!("checkpoint signature does not verify{since}"),
        ));
    }
    Ok(())
}

/// The default public key: `<state dir>/audit-key.pub`.
pub fn default_key_path(state_dir: &Path) -> PathBuf {
    state_dir.join(chain::PUBLIC_KEY_FILE)
}

#[cfg(test)]
mod tests;
