//! What goes into a configMap, secret, downwardAPI or projected volume: the files (relative
//! path → bytes and mode), computed from the pod and its objects. Pure, but for the lookups
//! through the [`ObjectSource`].
//!
//! kubelet's rules: without `items` every key becomes a file; with `items` only those keys, a
//! missing one is an error unless the source is `optional`; a missing object is an error
//! unless `optional`, which gives an empty volume; modes come from the item, else
//! `defaultMode`, else 0644. The messages are kubelet's.

use std::collections::BTreeMap;

use crate::k8s::Pod;
use crate::k8s::object::{DataObject, ObjectSource};
use crate::k8s::volume::{DEFAULT_MODE, DownwardApiVolumeFile, KeyToPath, Source};
use crate::pod::config::{Addresses, field_value};

/// One file of a volume's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path → file.
pub type Payload = BTreeMap<String, FileProjection>;

/// What payloads are computed from.
pub struct Inputs<'a> {
    pub pod: &'a Pod,
    pub objects: &'a dyn ObjectSource,
    pub addresses: &'a Addresses,
}

/// The payload of a volume of one of the four kinds that have one; `Ok(None)` for the others.
pub fn payload(source: Source, i: &Inputs) -> Result<Option<Payload>, String> {
    let ns = &i.pod.metadata.namespace;
    let mut out = Payload::new();
    match source {
        Source::ConfigMap(c) => {
            let mode = c.default_mode.unwrap_or(DEFAULT_MODE);
            let object = i.objects.config_map(ns, &c.name)?;
            let optional = c.optional == Some(true);
            match object {
                Some(o) => keys(&mut out, &o, &c.items, mode, optional)?,
                None if optional => {}
                None => return Err(format!("configmap {:?} not found", c.name)),
            }
        }
        Source::Secret(s) => {
            let mode = s.default_mode.unwrap_or(DEFAULT_MODE);
            let object = i.objects.secret(ns, &s.secret_name)?;
            let optional = s.optional == Some(true);
            match object {
                Some(o) => keys(&mut out, &o, &s.items, mode, optional)?,
                None if optional => {}
                None => return Err(format!("secret {:?} not found", s.secret_name)),
            }
        }
        Source::DownwardApi(d) => {
            downward(
                &mut out,
                &d.items,
                d.default_mode.unwrap_or(DEFAULT_MODE),
                i,
            )?;
        }
        Source::Projected(p) => {
            let mode = p.default_mode.unwrap_or(DEFAULT_MODE);
            for s in &p.sources {
                if let Some(c) = &s.config_map {
                    let optional = c.optional == Some(true);
                    match i.objects.config_map(ns, &c.name)? {
                        Some(o) => keys(&mut out, &o, &c.items, mode, optional)?,
                        None if optional => {}
                        None => {
                            return Err(format!(
                                "couldn't get configMap {ns}/{}: configmap {:?} not found",
                                c.name, c.name
                            ));
                        }
                    }
                } else if let Some(c) = &s.secret {
                    let optional = c.optional == Some(true);
                    match i.objects.secret(ns, &c.name)? {
                        Some(o) => keys(&mut out, &o, &c.items, mode, optional)?,
                        None if optional => {}
                        None => {
                            return Err(format!(
                                "couldn't get secret {ns}/{}: secret {:?} not found",
                                c.name, c.name
                            ));
                        }
                    }
                } else if let Some(d) = &s.downward_api {
                    downward(&mut out, &d.items, mode, i)?;
                } else if let Some(t) = &s.service_account_token {
                    let t = crate::k8s::volume::TokenProjection::of(t);
                    let token = i.objects.service_account_token(
                        i.pod,
                        &t.audience,
                        t.expiration_seconds,
                    )?;
                    out.insert(
                        t.path,
                        FileProjection {
                            data: token.into_bytes(),
                            mode: mode as u32,
                        },
                    );
                } else {
                    return Err("this projection needs the API server (not in nanolet)".into());
                }
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(out))
}

fn keys(
    out: &mut Payload,
    object: &DataObject,
    items: &[KeyToPath],
    default_mode: i32,
    optional: bool,
) -> Result<(), String> {
    let mode = |m: Option<i32>| m.unwrap_or(default_mode) as u32;
    if items.is_empty() {
        for (k, v) in &object.data {
            out.insert(
                k.clone(),
                FileProjection {
                    data: v.clone(),
                    mode: mode(None),
                },
            );
        }
        return Ok(());
    }
    for item in items {
        match object.data.get(&item.key) {
            Some(v) => {
                out.insert(
                    item.path.clone(),
                    FileProjection {
                        data: v.clone(),
                        mode: mode(item.mode),
                    },
                );
            }
            None if optional => {}
            None if object.kind == "Secret" => {
                return Err(format!("references non-existent secret key: {}", item.key));
            }
            None => {
                return Err(format!(
                    "configmap references non-existent config key: {}",
                    item.key
                ));
            }
        }
    }
    Ok(())
}

fn downward(
    out: &mut Payload,
    items: &[DownwardApiVolumeFile],
    default_mode: i32,
    i: &Inputs,
) -> Result<(), String> {
    for item in items {
        let data = match (&item.field_ref, &item.resource_field_ref) {
            (Some(r), _) => field_value(i.pod, &r.field_path, i.addresses)
                .ok_or_else(|| format!("unsupported fieldPath {:?}", r.field_path))?,
            _ => {
                return Err(format!(
                    "{:?}: resourceFieldRef files are not supported yet",
                    item.path
                ));
            }
        };
        out.insert(
            item.path.clone(),
            FileProjection {
                data: data.into_bytes(),
                mode: item.mode.unwrap_or(default_mode) as u32,
            },
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::k8s::object::Data;
    use crate::k8s::volume::Volume;
    use serde_json::json;

    struct Objects;
    impl ObjectSource for Objects {
        fn config_map(&self, ns: &str, name: &str) -> Result<Option<DataObject>, String> {
            Ok((name == "cfg").then(|| DataObject {
                kind: "ConfigMap",
                namespace: ns.into(),
                name: name.into(),
                data: Data::from([
                    ("a".to_string(), b"one".to_vec()),
                    ("b".to_string(), b"two".to_vec()),
                ]),
            }))
        }
        fn secret(&self, ns: &str, name: &str) -> Result<Option<DataObject>, String> {
            Ok((name == "s").then(|| DataObject {
                kind: "Secret",
                namespace: ns.into(),
                name: name.into(),
                data: Data::from([("k".to_string(), b"secret".to_vec())]),
            }))
        }
        fn service_account_token(
            &self,
            pod: &Pod,
            audience: &str,
            expiration_seconds: i64,
        ) -> Result<String, String> {
            match audience {
                "denied" => Err("http 403: forbidden".into()),
                _ => Ok(format!(
                    "tok.{}.{audience}.{expiration_seconds}",
                    pod.metadata.name
                )),
            }
        }
    }

    fn run(volume: serde_json::Value) -> Result<Payload, String> {
        let v: Volume = serde_json::from_value(volume).unwrap();
        let mut pod = Pod::default();
        pod.metadata.name = "web-edge".into();
        pod.metadata.labels.insert("app".into(), "web".into());
        pod.metadata.labels.insert("tier".into(), "a \"b\"".into());
        let addresses = Addresses::default();
        let i = Inputs {
            pod: &pod,
            objects: &Objects,
            addresses: &addresses,
        };
        payload(v.source().unwrap(), &i).map(Option::unwrap)
    }

    fn files(p: &Payload) -> Vec<(String, String, u32)> {
        p.iter()
            .map(|(k, f)| (k.clone(), String::from_utf8_lossy(&f.data).into(), f.mode))
            .collect()
    }

    #[test]
    fn service_account_tokens_are_files_of_the_projection() {
        let p = run(json!({"name": "kube-api-access-abc", "projected": {"defaultMode": 0o644, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"serviceAccountToken": {"path": "vault", "audience": "vault", "expirationSeconds": 60}},
            {"configMap": {"name": "cfg", "items": [{"key": "a", "path": "ca.crt"}]}}
        ]}}))
        .unwrap();
        assert_eq!(
            files(&p),
            [
                ("ca.crt".into(), "one".into(), 0o644),
                ("token".into(), "tok.web-edge..3607".into(), 0o644),
                // Below the API server's minimum: 600 s, as it validates.
                ("vault".into(), "tok.web-edge.vault.600".into(), 0o644),
            ]
        );
        let err = run(json!({"name": "t", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "audience": "denied"}}]}}))
        .unwrap_err();
        assert_eq!(err, "http 403: forbidden");
    }

    #[test]
    fn config_maps_and_secrets_follow_kubelets_rules() {
        let p = run(json!({"name": "v", "configMap": {"name": "cfg"}})).unwrap();
        assert_eq!(
            files(&p),
            [
                ("a".into(), "one".into(), 0o644),
                ("b".into(), "two".into(), 0o644)
            ]
        );
        let p = run(json!({"name": "v", "configMap": {"name": "cfg", "defaultMode": 0o600,
            "items": [{"key": "b", "path": "sub/b.txt", "mode": 0o400}, {"key": "a", "path": "a"}]}}))
        .unwrap();
        assert_eq!(
            files(&p),
            [
                ("a".into(), "one".into(), 0o600),
                ("sub/b.txt".into(), "two".into(), 0o400)
            ]
        );
        let cases = [
            (
                json!({"name": "v", "configMap": {"name": "nope"}}),
                "configmap \"nope\" not found",
            ),
            (
                json!({"name": "v", "secret": {"secretName": "nope"}}),
                "secret \"nope\" not found",
            ),
            (
                json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "z", "path": "z"}]}}),
                "configmap references non-existent config key: z",
            ),
            (
                json!({"name": "v", "secret": {"secretName": "s", "items": [{"key": "z", "path": "z"}]}}),
                "references non-existent secret key: z",
            ),
            (
                json!({"name": "v", "projected": {"sources": [{"secret": {"name": "x"}}]}}),
                "couldn't get secret default/x: secret \"x\" not found",
            ),
        ];
        for (v, want) in cases {
            assert_eq!(run(v.clone()).unwrap_err(), want, "{v}");
        }
        // Optional: a missing object is an empty volume, a missing key is skipped.
        assert!(
            run(json!({"name": "v", "secret": {"secretName": "nope", "optional": true}}))
                .unwrap()
                .is_empty()
        );
        let p = run(
            json!({"name": "v", "configMap": {"name": "cfg", "optional": true,
            "items": [{"key": "z", "path": "z"}, {"key": "a", "path": "a"}]}}),
        )
        .unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn downward_api_and_projected_volumes() {
        let p = run(json!({"name": "v", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o400},
            {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
        ]}}))
        .unwrap();
        assert_eq!(
            files(&p),
            [
                ("app".into(), "web".into(), 0o644),
                (
                    "labels".into(),
                    "app=\"web\"\ntier=\"a \\\"b\\\"\"".into(),
                    0o644
                ),
                ("name".into(), "web-edge".into(), 0o400),
            ]
        );
        let p = run(json!({"name": "v", "projected": {"defaultMode": 0o640, "sources": [
            {"configMap": {"name": "cfg", "items": [{"key": "a", "path": "cfg/a"}]}},
            {"secret": {"name": "s"}},
            {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        ]}}))
        .unwrap();
        assert_eq!(
            files(&p),
            [
                ("cfg/a".into(), "one".into(), 0o640),
                ("k".into(), "secret".into(), 0o640),
                ("ns".into(), "default".into(), 0o640),
            ]
        );
    }
}
