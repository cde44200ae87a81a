//! A JSON lines file with size-based rotation (the audit log's and the alert log's storage; only
//! [`super::sink::AuditSink`] writes the audit log).

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// A JSON lines file with size-based rotation: `file` → `file.1` → … → `file.N`. Each line is
/// written whole with one `write` and flushed, so a crash never leaves a torn acknowledged line;
/// rotation happens between lines, so no line is lost across it.
pub struct JsonLines {
    path: PathBuf,
    file: fs::File,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl JsonLines {
    /// Opens `path` for appending.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let mut size = file.metadata()?.len();
        if size > 0 {
            // A line cut short (a crash mid-write, or an edit) stays a line of its own: the next
            // line starts on a new one.
            let mut last = [0u8; 1];
            std::os::unix::fs::FileExt::read_at(&fs::File::open(path)?, &mut last, size - 1)?;
            if last[0] != b'\n' {
                (&file).write_all(b"\n")?;
                size += 1;
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes: max_bytes.max(4096),
            keep: keep.max(1),
        })
    }

    /// Appends one line (rotating first when it would exceed the size).
    pub fn write<T: Serialize>(&mut self, value: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if self.would_rotate(line.len()) {
            self.rotate()?;
        }
        self.append(&line)
    }

    /// Whether appending `len` more bytes would pass the size limit (a line never straddles
    /// files; an empty file takes any line).
    pub fn would_rotate(&self, len: usize) -> bool {
        self.size > 0 && self.size + len as u64 > self.max_bytes
    }

    /// Appends `line` (a whole line, newline included) with one `write`, without rotating.
    pub fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Flushes written lines to stable storage.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// Shifts `file` → `file.1` → … (dropping the oldest) and starts an empty `file`.
    pub fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        let _ = fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        fs::rename(&self.path, self.rotated(1))?;
        self.file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_every_line_and_bounded_files() {
        let dir = std::env::temp_dir().join(format!("cp-rot-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("audit.jsonl");
        let mut w = JsonLines::open(&path, 4096, 3).unwrap();
        for i in 0..200u32 {
            w.write(&serde_json::json!({"i": i, "pad": "x".repeat(40)}))
                .unwrap();
        }
        let mut seen = Vec::new();
        for p in [
            path.clone(),
            dir.join("audit.jsonl.1"),
            dir.join("audit.jsonl.2"),
            dir.join("audit.jsonl.3"),
        ] {
            if let Ok(s) = fs::read_to_string(&p) {
                for l in s.lines() {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    seen.push(v["i"].as_u64().unwrap());
                }
            }
        }
        assert!(!dir.join("audit.jsonl.4").exists());
        seen.sort_unstable();
        // The newest lines are all present and contiguous (older ones rotated out whole).
        let last = *seen.last().unwrap();
        assert_eq!(last, 199);
        let first = seen[0];
        assert_eq!(seen, (first..=199).collect::<Vec<_>>());
        let _ = fs::remove_dir_all(&dir);
    }
}
