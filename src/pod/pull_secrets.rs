//! A pod's `imagePullSecrets` → the credentials for one registry, as kubelet's keyring finds
//! them: the pod's Secrets in order, each of type `kubernetes.io/dockerconfigjson` (key
//! `.dockerconfigjson`, docker's `config.json`) or `kubernetes.io/dockercfg` (key `.dockercfg`,
//! the older bare map of registries); the first with an entry for the registry wins, over the
//! node's own `config.json` (which the pull child reads when the pod gives nothing).
//!
//! A Secret that is missing, unreadable or of another type is skipped, as kubelet skips it,
//! with a note that goes into the pull's error message so the user sees why a pull that needed
//! it was refused. Pure: the Secrets come in, already fetched.

use crate::image::auth::{self, Credentials};
use crate::k8s::object::DataObject;

/// `kubernetes.io/dockerconfigjson`.
pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// `kubernetes.io/dockercfg`.
pub const DOCKER_CFG: &str = "kubernetes.io/dockercfg";

/// One pull secret as the cache knows it: its name, and `Ok(Some((type, object)))`, `Ok(None)`
/// when it does not exist, or why it could not be read.
pub type Fetched = (String, Result<Option<(String, DataObject)>, String>);

/// The credentials for `domain` (`host[:port]` of the image reference) and notes about the
/// secrets that could not be used.
pub fn credentials(secrets: &[Fetched], domain: &str) -> (Option<Credentials>, Vec<String>) {
    let mut notes = Vec::new();
    for (name, fetched) in secrets {
        let (kind, object) = match fetched {
            Ok(Some(found)) => found,
            Ok(None) => {
                notes.push(format!("imagePullSecrets: secret {name:?} not found"));
                continue;
            }
            Err(e) => {
                notes.push(format!("imagePullSecrets: secret {name:?}: {e}"));
                continue;
            }
        };
        let config = match kind.as_str() {
            DOCKER_CONFIG_JSON => object.data.get(".dockerconfigjson").cloned(),
            // The old format is the `auths` map alone.
            DOCKER_CFG => object.data.get(".dockercfg").map(|bytes| {
                let mut v = b"{\"auths\":".to_vec();
                v.extend_from_slice(bytes);
                v.push(b'}');
                v
            }),
            other => {
                notes.push(format!(
                    "imagePullSecrets: secret {name:?} is of type {other:?}, not {DOCKER_CONFIG_JSON:?} or {DOCKER_CFG:?}; skipped"
                ));
                continue;
            }
        };
        let Some(config) = config else {
            let key = if kind == DOCKER_CFG {
                ".dockercfg"
            } else {
                ".dockerconfigjson"
            };
            notes.push(format!(
                "imagePullSecrets: secret {name:?} has no key {key:?}; skipped"
            ));
            continue;
        };
        match auth::credentials_for(&config, domain) {
            Ok(Some(c)) => return (Some(c), notes),
            Ok(None) => {}
            Err(e) => notes.push(format!("imagePullSecrets: secret {name:?}: {e}")),
        }
    }
    (None, notes)
}

/// The secrets kubelet could not retrieve (missing, or the API server would not give them),
/// in order: the names its FailedToRetrieveImagePullSecret event lists. A secret that is there
/// but unusable (another type, no key) is not one of them: kubelet retrieved it.
pub fn unretrievable(secrets: &[Fetched]) -> Vec<&str> {
    secrets
        .iter()
        .filter(|(_, fetched)| !matches!(fetched, Ok(Some(_))))
        .map(|(name, _)| name.as_str())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn secret(name: &str, kind: &str, key: &str, value: &str) -> Fetched {
        let mut data = crate::k8s::object::Data::new();
        data.insert(key.to_string(), value.as_bytes().to_vec());
        (
            name.to_string(),
            Ok(Some((
                kind.to_string(),
                DataObject {
                    kind: "Secret",
                    namespace: "default".into(),
                    name: name.to_string(),
                    data,
                },
            ))),
        )
    }

    #[test]
    fn the_first_secret_with_the_registry_wins_in_either_format() {
        // "dXNlcjpwdw==" is "user:pw".
        let other = secret(
            "other",
            DOCKER_CONFIG_JSON,
            ".dockerconfigjson",
            r#"{"auths":{"elsewhere.io":{"auth":"eDp5"}}}"#,
        );
        let old = secret(
            "old",
            DOCKER_CFG,
            ".dockercfg",
            r#"{"https://reg.local:5000":{"auth":"dXNlcjpwdw=="}}"#,
        );
        let new = secret(
            "new",
            DOCKER_CONFIG_JSON,
            ".dockerconfigjson",
            r#"{"auths":{"reg.local:5000":{"username":"u2","password":"p2"}}}"#,
        );
        let (c, notes) = credentials(&[other.clone(), old, new.clone()], "reg.local:5000");
        let c = c.unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user", "pw"));
        assert!(notes.is_empty(), "{notes:?}");
        let (c, _) = credentials(&[other.clone(), new], "reg.local:5000");
        assert_eq!(c.unwrap().username, "u2");
        let (c, _) = credentials(&[other], "reg.local:5000");
        assert!(c.is_none());
    }

    #[test]
    fn unusable_secrets_are_skipped_with_a_note_naming_them() {
        let opaque = secret("plain", "Opaque", "password", "x");
        let empty = secret("empty", DOCKER_CONFIG_JSON, "other", "x");
        let broken = secret("broken", DOCKER_CONFIG_JSON, ".dockerconfigjson", "{");
        let missing: Fetched = ("gone".into(), Ok(None));
        let failed: Fetched = ("denied".into(), Err("http 403: forbidden".into()));
        let all = [opaque, empty, broken, missing, failed];
        assert_eq!(unretrievable(&all), ["gone", "denied"]);
        let (c, notes) = credentials(&all, "r.io");
        assert!(c.is_none());
        let text = notes.join("\n");
        for want in [
            "secret \"plain\" is of type \"Opaque\", not \"kubernetes.io/dockerconfigjson\"",
            "secret \"empty\" has no key \".dockerconfigjson\"",
            "secret \"broken\": config.json: invalid json",
            "secret \"gone\" not found",
            "secret \"denied\": http 403: forbidden",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
    }
}
