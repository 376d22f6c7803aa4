//! The pod store: every pod the API server bound to this node, on disk, for edge autonomy.
//!
//! When the gateway reboots while the control plane is unreachable, nanolet starts these pods
//! again from here; once the API server answers, its list replaces them (pods deleted
//! meanwhile are stopped). One file per pod UID in `<dataDir>/api-pods/`, written with
//! [`super::write_atomic`]; each file opens with a checksum line so that a file damaged on a
//! flash disk is refused (and named in the log) instead of starting a mangled pod:
//!
//! ```text
//!   nanolet-pod v1 sha256:<hex of the JSON below>
//!   {"metadata": {...}, "spec": {...}, ...}        the object as the API server sent it
//! ```

use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

const HEADER: &str = "nanolet-pod v1 sha256:";

/// The folder of persisted pods.
#[derive(Debug, Clone)]
pub struct PodStore {
    dir: PathBuf,
}

/// A stored pod file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    pub path: PathBuf,
    pub problem: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stored pod {}: {}", self.path.display(), self.problem)
    }
}

impl PodStore {
    /// The store in `dir` (created if missing).
    pub fn open(dir: &Path) -> io::Result<PodStore> {
        std::fs::create_dir_all(dir)?;
        Ok(PodStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, uid: &str) -> io::Result<PathBuf> {
        let safe = !uid.is_empty()
            && uid.len() <= 128
            && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !safe {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("pod uid {uid:?}: not a safe file name"),
            ));
        }
        Ok(self.dir.join(format!("{uid}.json")))
    }

    /// Stores (or replaces) a pod's object.
    pub fn save(&self, uid: &str, object: &Value) -> io::Result<()> {
        let json = serde_json::to_vec(object).map_err(io::Error::other)?;
        let mut bytes = format!("{HEADER}{}\n", hex(&Sha256::digest(&json))).into_bytes();
        bytes.extend_from_slice(&json);
        super::write_atomic(&self.path(uid)?, &bytes)
    }

    /// Forgets a pod; a missing file is fine.
    pub fn remove(&self, uid: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(uid)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every stored pod, sorted by file name, and the files that could not be used.
    pub fn load(&self) -> (Vec<Value>, Vec<StoreError>) {
        let mut pods = Vec::new();
        let mut errors = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return (pods, errors);
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        for path in paths {
            match read_one(&path) {
                Ok(value) => pods.push(value),
                Err(problem) => errors.push(StoreError { path, problem }),
            }
        }
        (pods, errors)
    }
}

fn read_one(path: &Path) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no checksum line")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "bad checksum line")?;
    let want = header.strip_prefix(HEADER).ok_or("bad checksum line")?;
    let json = &bytes[newline + 1..];
    let got = hex(&Sha256::digest(json));
    if got != want {
        return Err(format!(
            "checksum mismatch: want sha256:{want}, got sha256:{got}"
        ));
    }
    serde_json::from_slice(json).map_err(|e| format!("invalid JSON: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_survive_and_damage_is_refused_per_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = PodStore::open(&tmp.path().join("api-pods")).unwrap();
        let a = json!({"metadata": {"name": "a", "uid": "uid-a"}});
        let b = json!({"metadata": {"name": "b", "uid": "uid-b"}, "x": "y".repeat(1 << 20)});
        store.save("uid-a", &a).unwrap();
        store.save("uid-b", &b).unwrap();
        let (pods, errors) = store.load();
        assert_eq!(pods, vec![a.clone(), b.clone()]);
        assert!(errors.is_empty());

        // One flipped byte in b: b is refused and named, a still loads.
        let path = tmp.path().join("api-pods/uid-b.json");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let (pods, errors) = store.load();
        assert_eq!(pods, vec![a.clone()]);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .to_string()
                .contains("uid-b.json: checksum mismatch"),
            "{}",
            errors[0]
        );

        // Truncated to nothing, or without a header: refused too.
        std::fs::write(&path, b"").unwrap();
        assert!(store.load().1[0].problem.contains("no checksum line"));
        std::fs::write(&path, b"{}\n{}").unwrap();
        assert!(store.load().1[0].problem.contains("bad checksum line"));

        store.remove("uid-b").unwrap();
        store.remove("uid-b").unwrap();
        assert_eq!(store.load(), (vec![a], vec![]));
    }

    #[test]
    fn unsafe_uids_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = PodStore::open(tmp.path()).unwrap();
        for uid in ["", "../x", "a/b", "a.json"] {
            assert!(store.save(uid, &json!({})).is_err(), "{uid}");
        }
    }
}
