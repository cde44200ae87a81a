//! The audit sink: the one owner of the audit log file and its rotation.
//!
//! Every line of the audit log goes through one [`AuditSink`] (flows, `lost` records, policy
//! changes, grants, revokes): one open file, one size counter, so a rotation by any writer is
//! seen by all of them and no line lands in a rotated file. Each line carries an `event` field
//! (see [`AuditEvent`]) as its first key.
//!
//! Writes are synchronous under the sink's lock: the record consumer must have its line in the
//! file (page cache) before it releases the record's ring-buffer slot, so a channel to another
//! thread would need a round trip per record. Durability is the sink's own task
//! ([`AuditSink::run_sync`]): after the first unsynced line it waits [`SYNC_INTERVAL`] and
//! `fsync`s, so records are on disk at most that long after they were written, and an idle sink
//! never wakes. Records that must be on disk before the daemon answers (policy changes, grants)
//! use [`AuditSink::write_synced`].
//!
//! **Per-line transform.** [`Transform`] is the one place to change lines as they are written
//! (a hash chain, signed checkpoints): it sees every line in file order, serialised and without
//! its newline, and is told when the file rotates so it can open the new file with a line of its
//! own.

use std::{
    io,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde::Serialize;
use tokio::sync::Notify;

use super::file::JsonLines;

/// Longest time a written line waits for its `fsync`.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// What a line of the audit log records (its `event` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditEvent {
    /// A flow record (a kernel decision).
    Flow,
    /// Records lost (`verdict: "lost"`).
    Lost,
    /// A new policy generation.
    PolicyChange,
    /// A temporary grant added.
    Grant,
    /// A task's grants revoked.
    Revoke,
    /// A bypass alert.
    Alert,
    /// Addresses not learned for `toFQDN` rules: the identity's cap was reached.
    FqdnCap,
    /// An identity's mode switched (enforce ↔ audit) with a new generation.
    ModeChange,
    /// A grant lapsed.
    Expiry,
    /// A signed checkpoint of the hash chain ([`super::chain`]).
    Checkpoint,
}

impl AuditEvent {
    /// The `event` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flow => "flow",
            Self::Lost => "lost",
            Self::PolicyChange => "policy_change",
            Self::Grant => "grant",
            Self::Revoke => "revoke",
            Self::Alert => "alert",
            Self::FqdnCap => "fqdn_cap",
            Self::ModeChange => "mode_change",
            Self::Expiry => "expiry",
            Self::Checkpoint => "checkpoint",
        }
    }
}

/// Changes lines as the sink writes them (see the module docs).
pub trait Transform: Send {
    /// Called for every line in file order, before it is written: `line` is one JSON object,
    /// serialised, without the newline. Use [`append_field`] to add fields.
    fn line(&mut self, event: AuditEvent, line: &mut Vec<u8>);
    /// Called right after the file rotated (the new file is empty); lines returned are written
    /// first into the new file (they go through [`Transform::line`] too, with their own [`AuditEvent`]).
    fn rotated(&mut self) -> Vec<(AuditEvent, Vec<u8>)> {
        Vec::new()
    }
    /// Most bytes [`Transform::line`] adds to a line: the sink decides on rotation before it
    /// calls the transform, so the transform sees lines in file order.
    fn max_extra_bytes(&self) -> usize {
        0
    }
    /// Called after each line is written; lines returned are written right after it (they go
    /// through [`Transform::line`] too). A chain returns its periodic checkpoint here.
    fn after(&mut self) -> Vec<(AuditEvent, Vec<u8>)> {
        Vec::new()
    }
    /// Lines written since the transform last closed a span (a chain: since its last
    /// checkpoint); the daemon closes an idle span with a checkpoint of its own.
    fn open_span(&self) -> u64 {
        0
    }
}

/// Adds `"key": value` as the last field of the serialised JSON object `line`.
pub fn append_field<T: Serialize + ?Sized>(line: &mut Vec<u8>, key: &str, value: &T) {
    if line.last() != Some(&b'}') {
        return;
    }
    line.pop();
    if line.last() != Some(&b'{') {
        line.push(b',');
    }
    serde_json::to_writer(&mut *line, key).expect("a string serialises");
    line.push(b':');
    serde_json::to_writer(&mut *line, value).expect("serialisable");
    line.push(b'}');
}

/// Puts `"event": "<kind>"` first in the serialised JSON object `line`.
fn prepend_event(event: AuditEvent, line: &mut Vec<u8>) {
    if line.first() != Some(&b'{') {
        return;
    }
    let empty = line.get(1) == Some(&b'}');
    let mut head = format!("{{\"event\":\"{}\"", event.as_str()).into_bytes();
    if !empty {
        head.push(b',');
    }
    line.splice(0..1, head);
}

struct Inner {
    file: JsonLines,
    transform: Option<Box<dyn Transform>>,
    dirty: bool,
    last_write: std::time::Instant,
}

impl Inner {
    fn write_bytes(&mut self, event: AuditEvent, mut line: Vec<u8>) -> io::Result<()> {
        prepend_event(event, &mut line);
        let extra = self.transform.as_ref().map_or(0, |t| t.max_extra_bytes());
        if self.file.would_rotate(line.len() + 1 + extra) {
            self.file.rotate()?;
            let opening = self
                .transform
                .as_mut()
                .map(|t| t.rotated())
                .unwrap_or_default();
            for (e, mut l) in opening {
                prepend_event(e, &mut l);
                if let Some(t) = self.transform.as_mut() {
                    t.line(e, &mut l);
                }
                l.push(b'\n');
                self.file.append(&l)?;
            }
        }
        if let Some(t) = self.transform.as_mut() {
            t.line(event, &mut line);
        }
        line.push(b'\n');
        self.file.append(&line)?;
        self.dirty = true;
        self.last_write = std::time::Instant::now();
        let after = self
            .transform
            .as_mut()
            .map(|t| t.after())
            .unwrap_or_default();
        for (e, l) in after {
            self.write_bytes_raw(e, l)?;
        }
        Ok(())
    }

    /// Writes a transform's own line right after the one that asked for it (no rotation in
    /// between: the file may exceed its size by that line).
    fn write_bytes_raw(&mut self, event: AuditEvent, mut line: Vec<u8>) -> io::Result<()> {
        prepend_event(event, &mut line);
        if let Some(t) = self.transform.as_mut() {
            t.line(event, &mut line);
        }
        line.push(b'\n');
        self.file.append(&line)?;
        Ok(())
    }
}

/// The audit log's one writer; cheap to clone (every clone writes the same file). A sink without
/// a file (no `--audit-log`) accepts and drops every line.
#[derive(Clone, Default)]
pub struct AuditSink {
    inner: Option<Arc<(Mutex<Inner>, Notify)>>,
}

impl AuditSink {
    /// A sink that writes nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Opens (appends to) `path`, rotated at `max_bytes` with `keep` old files.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<Self> {
        let file = JsonLines::open(path, max_bytes, keep)?;
        Ok(Self {
            inner: Some(Arc::new((
                Mutex::new(Inner {
                    file,
                    transform: None,
                    dirty: false,
                    last_write: std::time::Instant::now(),
                }),
                Notify::new(),
            ))),
        })
    }

    /// Whether lines reach a file.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Installs the per-line transform (replacing any earlier one).
    pub fn set_transform(&self, t: Box<dyn Transform>) {
        if let Some(i) = &self.inner {
            lock(&i.0).transform = Some(t);
        }
    }

    /// Writes one record as a line with `event` (in the page cache when this returns; on disk
    /// within [`SYNC_INTERVAL`] while [`AuditSink::run_sync`] runs).
    pub fn write<T: Serialize + ?Sized>(&self, event: AuditEvent, value: &T) -> io::Result<()> {
        let Some(i) = &self.inner else {
            return Ok(());
        };
        let line = serde_json::to_vec(value).map_err(io::Error::other)?;
        let mut g = lock(&i.0);
        let was_dirty = g.dirty;
        g.write_bytes(event, line)?;
        drop(g);
        if !was_dirty {
            i.1.notify_one();
        }
        Ok(())
    }

    /// Lines in the transform's open span (see [`Transform::open_span`]) and how long ago the
    /// last line was written.
    pub fn open_span(&self) -> (u64, Duration) {
        let Some(i) = &self.inner else {
            return (0, Duration::ZERO);
        };
        let g = lock(&i.0);
        (
            g.transform.as_ref().map_or(0, |t| t.open_span()),
            g.last_write.elapsed(),
        )
    }

    /// Writes one record and `fsync`s the file before returning.
    pub fn write_synced<T: Serialize + ?Sized>(
        &self,
        event: AuditEvent,
        value: &T,
    ) -> io::Result<()> {
        let Some(i) = &self.inner else {
            return Ok(());
        };
        let line = serde_json::to_vec(value).map_err(io::Error::other)?;
        let mut g = lock(&i.0);
        g.write_bytes(event, line)?;
        g.file.sync()?;
        g.dirty = false;
        Ok(())
    }

    /// `fsync`s lines written since the last sync.
    pub fn sync(&self) -> io::Result<()> {
        let Some(i) = &self.inner else {
            return Ok(());
        };
        let mut g = lock(&i.0);
        if g.dirty {
            g.file.sync()?;
            g.dirty = false;
        }
        Ok(())
    }

    /// The sink's task: `fsync`s at most every [`SYNC_INTERVAL`] while lines are written, once
    /// more after they stop, and sleeps while nothing is written. Runs until aborted; a failed
    /// `fsync` is returned (the daemon treats it as fatal: an audit log it cannot make durable).
    pub async fn run_sync(self) -> io::Result<()> {
        let Some(i) = self.inner.clone() else {
            std::future::pending::<()>().await;
            return Ok(());
        };
        loop {
            i.1.notified().await;
            tokio::time::sleep(SYNC_INTERVAL).await;
            let s = self.clone();
            tokio::task::spawn_blocking(move || s.sync())
                .await
                .map_err(io::Error::other)??;
        }
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A writer that panicked mid-line left at most a line without its newline; keep writing.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    struct Count(u64);
    impl Transform for Count {
        fn line(&mut self, _: AuditEvent, line: &mut Vec<u8>) {
            self.0 += 1;
            append_field(line, "seq", &self.0);
        }
        fn rotated(&mut self) -> Vec<(AuditEvent, Vec<u8>)> {
            vec![(AuditEvent::Alert, br#"{"opening":true}"#.to_vec())]
        }
        fn max_extra_bytes(&self) -> usize {
            30
        }
    }

    #[test]
    fn every_line_has_its_event_and_the_transform_sees_all() {
        let dir = std::env::temp_dir().join(format!("cp-sink-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("audit.jsonl");
        let sink = AuditSink::open(&path, 4096, 50).unwrap();
        sink.set_transform(Box::new(Count(0)));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..100u32 {
                        s.write(AuditEvent::Flow, &serde_json::json!({"t": t, "i": i}))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        sink.write_synced(AuditEvent::PolicyChange, &serde_json::json!({}))
            .unwrap();
        let mut lines = Vec::new();
        for n in (1..=50).rev() {
            if let Ok(s) = fs::read_to_string(dir.join(format!("audit.jsonl.{n}"))) {
                lines.extend(s.lines().map(String::from));
            }
        }
        lines.extend(fs::read_to_string(&path).unwrap().lines().map(String::from));
        let vals: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // Every line in order of the transform's sequence, across all files.
        let seqs: Vec<u64> = vals.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        assert_eq!(vals.iter().filter(|v| v["event"] == "flow").count(), 400);
        assert!(lines[0].starts_with(r#"{"event":"#));
        assert_eq!(vals.last().unwrap()["event"], "policy_change");
        assert!(vals.iter().any(|v| v["opening"] == true));
        let _ = fs::remove_dir_all(&dir);
    }
}
