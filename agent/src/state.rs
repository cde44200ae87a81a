//! Persistent state in `--state-dir`: every applied generation (source and metadata), the active
//! generation, grants, and the log of policy changes. All writes are atomic.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::util::write_atomic;

/// Metadata of one applied generation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenerationMeta {
    /// The generation number.
    pub generation: u32,
    /// The policy's `metadata.name`.
    pub name: String,
    /// `sha256:<hex>` of the policy text.
    pub digest: String,
    /// When it was applied (RFC 3339).
    pub applied_at: String,
    /// User id of who applied it.
    pub by_uid: Option<u32>,
    /// Process id of who applied it.
    pub by_pid: Option<u32>,
    /// The generation active before it.
    pub previous: Option<u32>,
    /// `apply`, `rollback` or `startup`.
    pub action: String,
}

/// A task-scoped grant as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredGrant {
    /// The identity granted.
    pub identity: String,
    /// As given: `HOST_OR_CIDR:PORT[/PROTO]`.
    pub to: String,
    /// The task id the grant was made under.
    pub task: String,
    /// The kernel's task number: a hash of `task`.
    pub task_id: u64,
    /// Wall-clock expiry, ns since the epoch.
    pub expires_wall_ns: u128,
    /// When it was granted (RFC 3339).
    pub granted_at: String,
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A state file or the directory could not be read or written.
    #[error("state dir {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A state file does not parse.
    #[error("state file {path} is corrupt: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// The state directory.
pub struct StateStore {
    dir: PathBuf,
    /// The highest generation recorded: read from the directory's names once at open, then kept
    /// by [`StateStore::commit`] (an apply must not read every generation's file to number the
    /// next one: that grows with the history).
    last: std::sync::atomic::AtomicU32,
}

impl StateStore {
    /// Opens (creating) the directory.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let gens = dir.join("generations");
        let io = |source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(&gens).map_err(io)?;
        let mut last = 0;
        for e in fs::read_dir(&gens).map_err(io)?.filter_map(Result::ok) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json")
                && let Some(g) = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u32>().ok())
            {
                last = last.max(g);
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            last: last.into(),
        })
    }

    #[allow(clippy::unused_self, reason = "reads as the store's own error mapping")]
    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
        let path = path.to_path_buf();
        move |source| StateError::Io { path, source }
    }

    /// The active generation, if any.
    pub fn current(&self) -> Result<Option<u32>, StateError> {
        let p = self.dir.join("current");
        match fs::read_to_string(&p) {
            Ok(s) => s.trim().parse().map(Some).map_err(|_| StateError::Corrupt {
                path: p,
                why: format!("`{}` is not a generation number", s.trim()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(&p)(e)),
        }
    }

    /// Source of a generation.
    pub fn source(&self, generation: u32) -> Result<Vec<u8>, StateError> {
        let p = self
            .dir
            .join("generations")
            .join(format!("{generation}.yaml"));
        fs::read(&p).map_err(self.io(&p))
    }

    /// Records a new generation and makes it current (source and metadata first, `current` last).
    pub fn commit(&self, meta: &GenerationMeta, source: &str) -> Result<(), StateError> {
        let g = meta.generation;
        let src = self.dir.join("generations").join(format!("{g}.yaml"));
        write_atomic(&src, source.as_bytes()).map_err(self.io(&src))?;
        let mp = self.dir.join("generations").join(format!("{g}.json"));
        let json = serde_json::to_vec_pretty(meta).expect("serialisable");
        write_atomic(&mp, &json).map_err(self.io(&mp))?;
        // Numbered from here on, as `history` would list it.
        self.last.fetch_max(g, std::sync::atomic::Ordering::Relaxed);
        let cur = self.dir.join("current");
        write_atomic(&cur, format!("{g}\n").as_bytes()).map_err(self.io(&cur))?;
        let log = self.dir.join("changes.jsonl");
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(self.io(&log))?;
        let mut line = serde_json::to_vec(meta).expect("serialisable");
        line.push(b'\n');
        f.write_all(&line).map_err(self.io(&log))?;
        f.sync_data().map_err(self.io(&log))?;
        Ok(())
    }

    /// Every generation's metadata, oldest first.
    pub fn history(&self) -> Result<Vec<GenerationMeta>, StateError> {
        let dir = self.dir.join("generations");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir)
            .map_err(self.io(&dir))?
            .filter_map(Result::ok)
        {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let data = fs::read(&p).map_err(self.io(&p))?;
                let m: GenerationMeta =
                    serde_json::from_slice(&data).map_err(|e| StateError::Corrupt {
                        path: p.clone(),
                        why: e.to_string(),
                    })?;
                out.push(m);
            }
        }
        out.sort_by_key(|m| m.generation);
        Ok(out)
    }

    /// The highest generation number ever recorded.
    pub fn last_generation(&self) -> u32 {
        self.last.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The kernel loss counter value last turned into a `lost` record, if recorded.
    pub fn lost_reported(&self) -> Option<u64> {
        fs::read_to_string(self.dir.join("lost_reported"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Records the kernel loss counter value last turned into a `lost` record.
    pub fn set_lost_reported(&self, v: u64) -> Result<(), StateError> {
        let p = self.dir.join("lost_reported");
        write_atomic(&p, format!("{v}\n").as_bytes()).map_err(self.io(&p))
    }

    /// Stored grants.
    pub fn grants(&self) -> Result<Vec<StoredGrant>, StateError> {
        let p = self.dir.join("grants.json");
        match fs::read(&p) {
            Ok(d) => serde_json::from_slice(&d).map_err(|e| StateError::Corrupt {
                path: p,
                why: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.io(&p)(e)),
        }
    }

    /// Replaces the stored grants.
    pub fn set_grants(&self, grants: &[StoredGrant]) -> Result<(), StateError> {
        let p = self.dir.join("grants.json");
        let data = serde_json::to_vec_pretty(grants).expect("serialisable");
        write_atomic(&p, &data).map_err(self.io(&p))
    }
}

/// The exclusive lock on a state dir: one daemon per state. Held (an `flock` on `DIR/lock`)
/// until dropped or the process ends, however it ends.
#[derive(Debug)]
pub struct StateLock {
    _file: fs::File,
}

/// Why the state dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "state dir {} is in use by another chokepoint daemon{}; refusing to start (nothing was changed)",
        dir.display(),
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held {
        /// The state dir.
        dir: PathBuf,
        /// The holder's pid, as it wrote it.
        holder: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    #[error("state dir {}: cannot take its lock: {source}", dir.display())]
    Io {
        /// The state dir.
        dir: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

impl StateLock {
    /// Takes the lock on `dir` (creating `dir` and its lock file), without waiting.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join("lock");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // Who holds it, for the next one's error message.
        use std::io::{Seek, Write};
        file.set_len(0).map_err(io)?;
        file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_and_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("cp-lock-{}", std::process::id()));
        let first = StateLock::acquire(&dir).expect("first");
        let err = StateLock::acquire(&dir).expect_err("second");
        assert!(
            matches!(err, LockError::Held { holder: Some(p), .. } if p == std::process::id()),
            "{err}"
        );
        drop(first);
        StateLock::acquire(&dir).expect("after release");
        let _ = fs::remove_dir_all(&dir);
    }
}
