//! The on-disk copies of API objects kept for edge autonomy: ConfigMaps, Secrets and service
//! account tokens of API pods, in `<dataDir>/api-objects/`, so that pods start again with the
//! last known contents through an API outage or after a reboot without the API server.
//!
//! ```text
//!   <dataDir>/api-objects/          0700 (it holds Secrets and tokens)
//!     configmaps/<ns>_<name>.json   0600, the object with its metadata trimmed
//!     secrets/<ns>_<name>.json      0600
//!     tokens/<sha256 of the key>.json  0600, {"token", "issued", "expires"}
//! ```
//!
//! Owns the files, nothing else: what to fetch and when is [`super::objects`]'s business. Every
//! write is atomic (a crash leaves the old copy or the new one). [`Copies::prune`] removes the
//! copies that no pod bound to this node references any more; the caller passes what the
//! persisted pods reference, so a copy a stored pod needs after a reboot is never removed.
//! Namespaces and object names are DNS labels and subdomains (no `_`, no `/`), so
//! `<ns>_<name>` names a copy without ambiguity; tokens are named by a digest of their key
//! because audiences are free text.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::objects::{Kind, ObjectKey, Token, TokenKey};

/// The folder of copies.
#[derive(Debug, Clone)]
pub struct Copies {
    dir: PathBuf,
}

/// The sub-folders, each holding `*.json` copies.
const FOLDERS: [&str; 3] = ["configmaps", "secrets", "tokens"];

fn folder(kind: Kind) -> &'static str {
    match kind {
        Kind::ConfigMap => FOLDERS[0],
        Kind::Secret => FOLDERS[1],
    }
}

impl Copies {
    /// The copies in `dir` (`<dataDir>/api-objects`); nothing is created before the first save.
    pub fn new(dir: PathBuf) -> Copies {
        Copies { dir }
    }

    /// Where the copy of `key` is.
    pub fn path(&self, key: &ObjectKey) -> PathBuf {
        self.dir
            .join(folder(key.kind))
            .join(format!("{}_{}.json", key.namespace, key.name))
    }

    /// Where the copy of token `key` is.
    pub fn token_path(&self, key: &TokenKey) -> PathBuf {
        let name = format!(
            "{}\0{}\0{}\0{}",
            key.pod_uid, key.service_account, key.audience, key.expiration_seconds
        );
        let digest = crate::image::digest::Digest::of(name.as_bytes());
        self.dir
            .join(FOLDERS[2])
            .join(format!("{}.json", digest.hex()))
    }

    fn ensure_dir(&self, sub: &str) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(self.dir.join(sub))?;
        // Secrets and tokens: nobody but root reads below this folder.
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
    }

    fn write(&self, sub: &str, path: &Path, bytes: &[u8]) {
        let written = self
            .ensure_dir(sub)
            .and_then(|()| crate::state::write_atomic_mode(path, bytes, 0o600));
        if let Err(e) = written {
            log::warn!("keeping a copy in {}: {e}", path.display());
        }
    }

    /// Keeps `raw` (the object as [`super::objects`] trimmed it) as the copy of `key`.
    pub fn save(&self, key: &ObjectKey, raw: &Value) {
        match serde_json::to_vec(raw) {
            Ok(bytes) => self.write(folder(key.kind), &self.path(key), &bytes),
            Err(e) => log::warn!("keeping a copy of {}: {e}", self.path(key).display()),
        }
    }

    /// The copy of `key`, if there is a readable one.
    pub fn load(&self, key: &ObjectKey) -> Option<Value> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Removes the copy of `key` (the API server said it is gone).
    pub fn remove(&self, key: &ObjectKey) {
        let _ = std::fs::remove_file(self.path(key));
    }

    /// Keeps token `t` as the copy of `key`.
    pub fn save_token(&self, key: &TokenKey, t: &Token) {
        let body = json!({"token": t.token, "issued": t.issued, "expires": t.expires});
        self.write(
            FOLDERS[2],
            &self.token_path(key),
            body.to_string().as_bytes(),
        );
    }

    /// The copy of token `key`, if there is a readable one.
    pub fn load_token(&self, key: &TokenKey) -> Option<Token> {
        let bytes = std::fs::read(self.token_path(key)).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        Some(Token {
            token: v.get("token")?.as_str()?.to_string(),
            issued: v.get("issued")?.as_i64()?,
            expires: v.get("expires")?.as_i64()?,
        })
    }

    /// Removes the copy of token `key`.
    pub fn remove_token(&self, key: &TokenKey) {
        let _ = std::fs::remove_file(self.token_path(key));
    }

    /// Removes every copy (object or token) that is not one of `objects` and `tokens`, what the
    /// pods bound to this node reference. Returns the paths removed. Only `*.json` files in the
    /// three folders are looked at: nothing else in the folder is nanolet's to remove (write
    /// temporaries never outlive a write on this one thread).
    pub fn prune(
        &self,
        objects: &BTreeSet<ObjectKey>,
        tokens: &BTreeSet<TokenKey>,
    ) -> Vec<PathBuf> {
        let keep: BTreeSet<PathBuf> = objects
            .iter()
            .map(|k| self.path(k))
            .chain(tokens.iter().map(|k| self.token_path(k)))
            .collect();
        let mut removed = Vec::new();
        for sub in FOLDERS {
            let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            let mut gone: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json") && !keep.contains(p))
                .collect();
            gone.sort();
            for path in gone {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed.push(path),
                    Err(e) => log::warn!("removing the unused copy {}: {e}", path.display()),
                }
            }
        }
        removed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key(kind: Kind, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn token_key(uid: &str) -> TokenKey {
        TokenKey {
            pod_uid: uid.into(),
            service_account: "default".into(),
            audience: String::new(),
            expiration_seconds: 3607,
        }
    }

    #[test]
    fn copies_are_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let copies = Copies::new(dir.path().join("api-objects"));
        let cm = key(Kind::ConfigMap, "settings");
        copies.save(&cm, &json!({"data": {"a": "b"}}));
        assert_eq!(copies.load(&cm).unwrap()["data"]["a"], "b");
        let t = Token {
            token: "t0k".into(),
            issued: 1,
            expires: 2,
        };
        copies.save_token(&token_key("u1"), &t);
        assert_eq!(copies.load_token(&token_key("u1")), Some(t));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("api-objects")), 0o700);
        assert_eq!(mode(&copies.path(&cm)), 0o600);
        assert_eq!(mode(&copies.token_path(&token_key("u1"))), 0o600);
    }

    #[test]
    fn prune_removes_exactly_the_copies_nothing_references() {
        let dir = tempfile::tempdir().unwrap();
        let copies = Copies::new(dir.path().to_path_buf());
        let (used_cm, old_cm) = (key(Kind::ConfigMap, "used"), key(Kind::ConfigMap, "old"));
        // A Secret with the name of a used ConfigMap is another object.
        let (used_s, old_s) = (key(Kind::Secret, "s"), key(Kind::Secret, "used"));
        for k in [&used_cm, &old_cm, &used_s, &old_s] {
            copies.save(k, &json!({}));
        }
        let t = Token {
            token: "x".into(),
            issued: 0,
            expires: 1,
        };
        copies.save_token(&token_key("live"), &t);
        copies.save_token(&token_key("gone"), &t);
        std::fs::write(dir.path().join("secrets/README"), "not a copy").unwrap();
        let objects = BTreeSet::from([used_cm.clone(), used_s.clone()]);
        let tokens = BTreeSet::from([token_key("live")]);
        let removed = copies.prune(&objects, &tokens);
        assert_eq!(
            removed,
            vec![
                copies.path(&old_cm),
                copies.path(&old_s),
                copies.token_path(&token_key("gone"))
            ]
        );
        assert!(copies.load(&used_cm).is_some() && copies.load(&used_s).is_some());
        assert!(copies.load_token(&token_key("live")).is_some());
        assert!(dir.path().join("secrets/README").exists());
        // Nothing left to remove; a missing folder is fine.
        assert!(copies.prune(&objects, &tokens).is_empty());
        assert!(
            Copies::new(dir.path().join("none"))
                .prune(&objects, &tokens)
                .is_empty()
        );
    }
}
