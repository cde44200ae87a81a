//! Verifier tests: every kind of tampering, found by file and line.

use ed25519_dalek::SigningKey;

use super::*;
use crate::audit::chain::{Chain, CheckpointReason, Head};

fn write_set(dir: &Path, per_file: usize, files: usize) -> (Vec<PathBuf>, VerifyingKey) {
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let public = key.verifying_key();
    let mut c = Chain::new(key, Head::GENESIS, 3, "n1");
    let mut paths = Vec::new();
    for f in 0..files {
        let mut text = c.checkpoint(
            if f == 0 {
                CheckpointReason::Start
            } else {
                CheckpointReason::Rotate
            },
            "t".into(),
        );
        for i in 0..per_file {
            text.extend(
                c.seal(&serde_json::json!({"event": "flow", "i": i}))
                    .unwrap(),
            );
            if c.checkpoint_due() {
                text.extend(c.checkpoint(CheckpointReason::Interval, "t".into()));
            }
        }
        let p = dir.join(format!("audit.jsonl.{}", files - f));
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    (paths, public)
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn put(p: &Path, l: &[String]) {
    std::fs::write(p, l.join("\n") + "\n").unwrap();
}

#[test]
fn catches_each_kind_of_tampering() {
    let dir = std::env::temp_dir().join(format!("cp-verify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (paths, key) = write_set(&dir, 5, 3);
    let s = verify(&paths, &key).unwrap().unwrap();
    assert_eq!(s.files.len(), 3);
    let original: Vec<Vec<String>> = paths.iter().map(|p| lines(p)).collect();
    let restore = || {
        for (p, l) in paths.iter().zip(&original) {
            put(p, l);
        }
    };
    let kind = |paths: &[PathBuf]| verify(paths, &key).unwrap().unwrap_err();

    let mut l = original[1].clone();
    l[2] = l[2].replace("\"i\":1", "\"i\":7");
    put(&paths[1], &l);
    let p = kind(&paths);
    assert_eq!((p.kind, p.line, &p.file), (Tampering::Edited, 3, &paths[1]));
    restore();

    let mut l = original[1].clone();
    l.remove(2);
    put(&paths[1], &l);
    assert_eq!(kind(&paths).kind, Tampering::Removed);
    restore();

    let mut l = original[1].clone();
    l.swap(1, 2);
    put(&paths[1], &l);
    let p = kind(&paths);
    assert_eq!((p.kind, p.line), (Tampering::Reordered, 2));
    restore();

    let mut l = original[1].clone();
    l.insert(2, l[1].clone());
    put(&paths[1], &l);
    assert_eq!(kind(&paths).kind, Tampering::Inserted);
    restore();

    let mut text = original[2].join("\n");
    text.truncate(text.len() - 10);
    std::fs::write(&paths[2], text).unwrap();
    let p = kind(&paths);
    assert_eq!((p.kind, &p.file), (Tampering::Truncated, &paths[2]));
    restore();

    // The tail of a rotated file cut at a line boundary: the next file's head no longer links.
    let mut l = original[0].clone();
    l.pop();
    put(&paths[0], &l);
    let p = kind(&paths);
    assert_eq!(
        (p.kind, p.line, &p.file),
        (Tampering::Removed, 1, &paths[1])
    );
    restore();

    // The oldest file's head removed.
    let mut l = original[0].clone();
    l.remove(0);
    put(&paths[0], &l);
    assert_eq!(kind(&paths).kind, Tampering::Removed);
    restore();

    assert!(verify(&paths, &key).unwrap().is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_recomputed_chain_fails_at_the_next_checkpoint() {
    let dir = std::env::temp_dir().join(format!("cp-verify2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (paths, key) = write_set(&dir, 5, 1);
    // Rewrite record 1 and recompute every later hash (what an editor without the key can do).
    let l = lines(&paths[0]);
    let mut prev = [0u8; 32];
    let mut out = Vec::new();
    for (i, line) in l.iter().enumerate() {
        let line = if i == 1 {
            line.replace("\"i\":0", "\"i\":5")
        } else {
            line.clone()
        };
        let cut = line.len() - HASH_SUFFIX_LEN;
        let body = format!("{}}}", &line[..cut]);
        if i == 0 {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            prev = chain::unhex(v["prev"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
        }
        let h = chain::chain_hash(&prev, body.as_bytes());
        out.push(format!(
            "{},\"hash\":\"{}\"}}",
            &line[..cut],
            chain::hex(&h)
        ));
        prev = h;
    }
    put(&paths[0], &out);
    let p = verify(&paths, &key).unwrap().unwrap_err();
    // Caught where the signed state no longer matches: the first checkpoint after the edit.
    assert_eq!((p.kind, p.line), (Tampering::Edited, 5), "{p}");
    let _ = std::fs::remove_dir_all(&dir);
}
