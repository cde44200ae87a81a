//! The audit signing key: an Ed25519 key in the state dir (seed 0600, public half 0644), and
//! the hex forms the chain writes.

use std::{
    fs,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// File name of the signing key in the state dir (hex seed, mode 0600).
pub const KEY_FILE: &str = "audit-key";
/// File name of the public key in the state dir (hex, mode 0644); `audit verify` reads it.
pub const PUBLIC_KEY_FILE: &str = "audit-key.pub";

/// Errors of the key store and the chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The key file could not be read or written.
    #[error("audit signing key {path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file holds no valid key.
    #[error("audit signing key {path} is corrupt: {why}")]
    KeyCorrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A record did not serialise as a non-empty JSON object.
    #[error("a record must serialise as a non-empty JSON object")]
    NotObject,
    /// A record did not serialise.
    #[error("serialising a record: {0}")]
    Json(#[from] serde_json::Error),
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Bytes of lower-case or upper-case hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Short id of a public key: the first 8 bytes of its SHA-256, hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes())[..8])
}

/// Loads the signing key from `dir`, creating it (0600, and the public half 0644) on first use.
pub fn load_or_create_key(dir: &Path) -> Result<SigningKey, ChainError> {
    let path = dir.join(KEY_FILE);
    let io = |source| ChainError::Key {
        path: path.clone(),
        source,
    };
    match fs::read_to_string(&path) {
        Ok(text) => {
            let mode = fs::metadata(&path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(ChainError::KeyCorrupt {
                    path,
                    why: format!(
                        "mode {:o} lets others read it; it must be 0600",
                        mode & 0o777
                    ),
                });
            }
            let seed: [u8; 32] = unhex(text.trim())
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| ChainError::KeyCorrupt {
                    path: path.clone(),
                    why: "expected 64 hex digits".into(),
                })?;
            let key = SigningKey::from_bytes(&seed);
            // The public half may have been removed; it is derived, so restore it.
            let public = dir.join(PUBLIC_KEY_FILE);
            if !public.exists() {
                write_public(&public, &key).map_err(io)?;
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io)?;
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| io(std::io::Error::other(e.to_string())))?;
            let tmp = dir.join(format!("{KEY_FILE}.tmp.{}", std::process::id()));
            {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                std::io::Write::write_all(&mut f, format!("{}\n", hex(&seed)).as_bytes())
                    .map_err(io)?;
                f.sync_all().map_err(io)?;
            }
            fs::rename(&tmp, &path).map_err(io)?;
            let key = SigningKey::from_bytes(&seed);
            write_public(&dir.join(PUBLIC_KEY_FILE), &key).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

fn write_public(path: &Path, key: &SigningKey) -> std::io::Result<()> {
    crate::util::write_atomic(
        path,
        format!("{}\n", hex(key.verifying_key().as_bytes())).as_bytes(),
    )?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
}

/// Reads a public key file (64 hex digits).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("public key {}: {e}", path.display()))?;
    let bytes: [u8; 32] = unhex(text.trim())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("public key {}: expected 64 hex digits", path.display()))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| format!("public key {}: not an Ed25519 key: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("cp-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let k1 = load_or_create_key(&dir).unwrap();
        let mode = fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let k2 = load_or_create_key(&dir).unwrap();
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        let public = read_public_key(&dir.join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(public, k1.verifying_key());
        fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create_key(&dir).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
