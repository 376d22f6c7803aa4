//! Kubernetes object types nanolet reads (the `v1` Pod), decoded and validated at the edge.
//!
//! - [`pod`]: the serde types; unknown fields are errors, valid-but-unused fields are kept opaque.
//! - [`probe`]: Probe and Lifecycle types, their rules, and handlers resolved to one action.
//! - [`quantity`], [`resources`], [`security`]: `Quantity`, `ResourceRequirements`, the
//!   security contexts (wire shapes; `pod::resources` and `pod::security` decide).
//! - [`volume`], [`env`]: volumes and mounts; `valueFrom` and `envFrom` sources.
//! - [`object`]: ConfigMap and Secret data, and the [`object::ObjectSource`] pods read them from.
//! - [`validate`]: the API server's rules for the fields nanolet acts on, all problems at once.
//! - [`decode_pod`]: JSON value → [`Pod`], with the field path of the first bad field.
//!
//! This module must never do I/O: callers hand it values and get types or errors back.

pub mod env;
pub mod object;
pub mod pod;
pub mod probe;
pub mod quantity;
pub mod resources;
pub mod security;
pub mod validate;
pub mod validate_volumes;
pub mod volume;

use std::fmt;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use resources::ResourceRequirements;
use security::{PodSecurityContext, SecurityContext};

pub use pod::{Container, EnvVar, ObjectMeta, Pod, PodSpec, PullPolicy, RestartPolicy};
pub use validate::{FieldError, ValidationError, validate};

/// The sha256 of an object's JSON text: what nanolet keeps of an object when it only needs to
/// know whether a later one is the same (serde_json keeps object keys sorted, so equal values
/// give equal text). 32 bytes instead of a copy of the object.
pub fn fingerprint<T: serde::Serialize>(value: &T) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    // Encoding these types cannot fail: their map keys are strings.
    let text = serde_json::to_vec(value).unwrap_or_default();
    Sha256::digest(&text).into()
}

/// `namespace/name`, the key kubelet uses for a pod.
pub fn pod_full_name(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace, pod.metadata.name)
}

/// A value that does not have the shape of a Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The path of the offending field, e.g. `spec.containers[0].contianers`; empty for the root.
    pub field: String,
    /// serde's description, e.g. "unknown field `contianers`, expected one of ...".
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a JSON value (from YAML or JSON) into a [`Pod`].
///
/// serde reports *what* is wrong but not *where*. Every field of the pod types is optional, so
/// a one-key object `{key: value}` decodes on its own exactly when that key is fine: on failure
/// we find the first bad key this way and descend into the types we know, to name the field.
pub fn decode_pod(value: Value) -> Result<Pod, DecodeError> {
    // serde's derived structs also accept arrays (as tuples): a Pod is only ever an object.
    if !value.is_object() {
        return Err(DecodeError {
            field: String::new(),
            message: format!("expected a Pod object, got {}", kind_of(&value)),
        });
    }
    match Pod::deserialize(&value) {
        Ok(pod) => Ok(pod),
        Err(e) => Err(locate_pod(&value).unwrap_or(DecodeError {
            field: String::new(),
            message: e.to_string(),
        })),
    }
}

fn locate_pod(value: &Value) -> Option<DecodeError> {
    let bad = first_bad_key::<Pod>(value, "")?;
    let deeper = match (bad.key.as_str(), bad.value) {
        ("metadata", inner) => first_bad_key::<ObjectMeta>(inner, &bad.error.field),
        ("spec", inner) => locate_spec(inner, &bad.error.field),
        _ => None,
    };
    Some(deeper.map_or(bad.error, |d| d.error))
}

fn locate_spec<'v>(spec: &'v Value, path: &str) -> Option<BadKey<'v>> {
    let bad = first_bad_key::<PodSpec>(spec, path)?;
    if let ("containers" | "initContainers", Value::Array(items)) = (bad.key.as_str(), bad.value) {
        for (i, item) in items.iter().enumerate() {
            let container_path = format!("{}[{i}]", bad.error.field);
            if let Some(c) = first_bad_key::<Container>(item, &container_path) {
                let deeper = match (c.key.as_str(), c.value) {
                    ("env", Value::Array(items)) => first_bad_item::<EnvVar>(items, &c.error.field),
                    ("envFrom", Value::Array(items)) => {
                        first_bad_item::<env::EnvFromSource>(items, &c.error.field)
                    }
                    ("volumeMounts", Value::Array(items)) => {
                        first_bad_item::<volume::VolumeMount>(items, &c.error.field)
                    }
                    ("livenessProbe" | "readinessProbe" | "startupProbe", v) => {
                        first_bad_key::<probe::Probe>(v, &c.error.field)
                    }
                    ("lifecycle", v) => first_bad_key::<probe::Lifecycle>(v, &c.error.field),
                    ("securityContext", v) => first_bad_key::<SecurityContext>(v, &c.error.field),
                    ("resources", v) => first_bad_key::<ResourceRequirements>(v, &c.error.field),
                    _ => None,
                };
                return Some(deeper.unwrap_or(c));
            }
        }
    }
    if bad.key == "securityContext"
        && let Some(deeper) = first_bad_key::<PodSecurityContext>(bad.value, &bad.error.field)
    {
        return Some(deeper);
    }
    if let ("volumes", Value::Array(items)) = (bad.key.as_str(), bad.value) {
        return Some(first_bad_item::<volume::Volume>(items, &bad.error.field).unwrap_or(bad));
    }
    Some(bad)
}

/// The first bad key of the first item of `items` that has one, as `path[i].key`.
fn first_bad_item<'v, T: DeserializeOwned>(items: &'v [Value], path: &str) -> Option<BadKey<'v>> {
    items
        .iter()
        .enumerate()
        .find_map(|(i, item)| first_bad_key::<T>(item, &format!("{path}[{i}]")))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A key that does not decode: its name, its value and the error with its full path.
struct BadKey<'v> {
    key: String,
    value: &'v Value,
    error: DecodeError,
}

/// Finds the first key of `value` (an object) that does not decode as part of `T`, with its
/// full path `prefix.key`. A non-object `value` is itself the culprit, reported at `prefix`.
fn first_bad_key<'v, T: DeserializeOwned>(value: &'v Value, prefix: &str) -> Option<BadKey<'v>> {
    let Value::Object(map) = value else {
        let e = T::deserialize(value).err()?;
        return Some(BadKey {
            key: String::new(),
            value,
            error: DecodeError {
                field: prefix.to_string(),
                message: e.to_string(),
            },
        });
    };
    map.iter().find_map(|(key, v)| {
        let single = Value::Object(Map::from_iter([(key.clone(), v.clone())]));
        T::deserialize(&single).err().map(|e| BadKey {
            key: key.clone(),
            value: v,
            error: DecodeError {
                field: if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                },
                message: e.to_string(),
            },
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decode_errors_name_the_field() {
        let cases: &[(Value, &str, &str)] = &[
            (
                json!({"spec": {"contianers": []}}),
                "spec.contianers",
                "unknown field `contianers`",
            ),
            (
                json!({"metadata": {"nmae": "x"}}),
                "metadata.nmae",
                "unknown field `nmae`",
            ),
            (
                json!({"metadata": {"labels": {"a": 1}}}),
                "metadata.labels",
                "invalid type",
            ),
            (
                json!({"spec": {"terminationGracePeriodSeconds": "x"}}),
                "spec.terminationGracePeriodSeconds",
                "invalid type",
            ),
            (
                json!({"spec": {"restartPolicy": "Sometimes"}}),
                "spec.restartPolicy",
                "unknown variant",
            ),
            (
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b", "imagee": "x"}]}}),
                "spec.containers[1].imagee",
                "unknown field",
            ),
            (
                json!({"spec": {"initContainers": [{"env": [{"name": "A", "vaule": "1"}]}]}}),
                "spec.initContainers[0].env[0].vaule",
                "unknown field",
            ),
            (
                json!({"spec": {"containers": [{"livenessProbe": {"periodSecond": 1}}]}}),
                "spec.containers[0].livenessProbe.periodSecond",
                "unknown field",
            ),
            (
                json!({"spec": {"containers": [{"lifecycle": {"preStart": {}}}]}}),
                "spec.containers[0].lifecycle.preStart",
                "unknown field",
            ),
            (
                json!({"spec": {"containers": [{"imagePullPolicy": "Sometimes"}]}}),
                "spec.containers[0].imagePullPolicy",
                "unknown variant",
            ),
            (json!({"spec": "x"}), "spec", "invalid type"),
            (
                json!({"spec": {"containers": {}}}),
                "spec.containers",
                "invalid type",
            ),
            (json!({"specs": {}}), "specs", "unknown field"),
            (
                json!({"spec": {"volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "confgMap": {}}]}}),
                "spec.volumes[1].confgMap",
                "unknown field",
            ),
            (
                json!({"spec": {"volumes": [{"name": "a", "hostPath": {"path": "/x", "type": "Dir"}}]}}),
                "spec.volumes[0].hostPath",
                "unknown variant `Dir`",
            ),
            (
                json!({"spec": {"containers": [{"volumeMounts": [{"name": "a", "mountpath": "/x"}]}]}}),
                "spec.containers[0].volumeMounts[0].mountpath",
                "unknown field",
            ),
            (
                json!({"spec": {"containers": [{"envFrom": [{"configMap": {"name": "x"}}]}]}}),
                "spec.containers[0].envFrom[0].configMap",
                "unknown field",
            ),
            (json!([]), "", "expected a Pod object, got an array"),
            (json!("pod"), "", "expected a Pod object, got a string"),
        ];
        for (value, field, fragment) in cases {
            let err = decode_pod(value.clone()).expect_err(&value.to_string());
            assert_eq!(err.field, *field, "{value}: {err}");
            assert!(err.message.contains(fragment), "{value}: {err}");
        }
    }

    #[test]
    fn full_name_is_namespace_slash_name() {
        let pod = decode_pod(json!({"metadata": {"name": "web"}})).unwrap();
        assert_eq!(pod_full_name(&pod), "default/web");
    }
}
