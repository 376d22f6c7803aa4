//! An API server's Pod object → a validated [`Pod`], tolerating fields nanolet does not know.
//!
//! Unknown fields: static manifests are strict (a typo there is nobody else's to catch), but a
//! pod from the API server was already validated by it, and a newer server sends fields that
//! this nanolet was built without. kubelet decodes into its compiled types and drops what it
//! does not know; so does this module: each unknown field is removed (and named in the result,
//! for a debug log line) and decoding goes on. Wrong types and invalid values stay errors.
//!
//! List items carry no `apiVersion`/`kind`: they are set here. Pure: values in, pods out.

use serde_json::Value;

use crate::k8s::{self, Pod};

/// At most this many unknown fields are dropped from one pod before it is refused.
const MAX_DROPPED_FIELDS: usize = 64;

/// Why a pod from the API server cannot be run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// `namespace/name` (or what is known of it).
    pub pod: String,
    pub message: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pod {}: {}", self.pod, self.message)
    }
}

impl std::error::Error for DecodeError {}

/// A decoded API pod and the unknown fields that were dropped from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub pod: Pod,
    pub dropped: Vec<String>,
}

/// `namespace/name` of a raw object, for messages.
pub fn object_name(value: &Value) -> String {
    let get = |key: &str| {
        value
            .pointer(&format!("/metadata/{key}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let namespace = get("namespace");
    let namespace = if namespace.is_empty() {
        k8s::pod::DEFAULT_NAMESPACE.to_string()
    } else {
        namespace
    };
    format!("{namespace}/{}", get("name"))
}

/// `metadata.uid` of a raw object.
pub fn object_uid(value: &Value) -> Option<&str> {
    value.pointer("/metadata/uid").and_then(Value::as_str)
}

/// Decodes and validates one pod from the API server.
pub fn decode_api_pod(mut value: Value) -> Result<Decoded, DecodeError> {
    let name = object_name(&value);
    let err = |message: String| DecodeError {
        pod: name.clone(),
        message,
    };
    let Value::Object(map) = &mut value else {
        return Err(err("not an object".into()));
    };
    map.insert("apiVersion".into(), Value::String("v1".into()));
    map.insert("kind".into(), Value::String("Pod".into()));
    if object_uid(&value).is_none_or(str::is_empty) {
        return Err(err("metadata.uid: required".into()));
    }
    let mut dropped = Vec::new();
    let mut pod = loop {
        // Most pods decode at once; the clone is only paid for on the way to an error.
        if let Ok(pod) = serde::Deserialize::deserialize(&value) {
            break pod;
        }
        let e = match k8s::decode_pod(value.clone()) {
            Ok(pod) => break pod,
            Err(e) => e,
        };
        let unknown = e.message.starts_with("unknown field");
        if !unknown || dropped.len() >= MAX_DROPPED_FIELDS || !remove_path(&mut value, &e.field) {
            return Err(err(e.to_string()));
        }
        dropped.push(e.field);
    };
    if pod.metadata.namespace.is_empty() {
        pod.metadata.namespace = k8s::pod::DEFAULT_NAMESPACE.to_string();
    }
    k8s::validate(&pod).map_err(|e| err(e.to_string()))?;
    Ok(Decoded { pod, dropped })
}

/// Removes the field at `path` (`spec.containers[1].foo`); false when there is none.
fn remove_path(value: &mut Value, path: &str) -> bool {
    let mut segments: Vec<&str> = path.split('.').collect();
    let Some(last) = segments.pop() else {
        return false;
    };
    let mut at = value;
    for segment in segments {
        let (key, index) = split_index(segment);
        let Some(next) = at.get_mut(key) else {
            return false;
        };
        at = match index {
            Some(i) => match next.get_mut(i) {
                Some(v) => v,
                None => return false,
            },
            None => next,
        };
    }
    if split_index(last).1.is_some() {
        return false;
    }
    at.as_object_mut()
        .is_some_and(|map| map.remove(last).is_some())
}

/// `containers[3]` → (`containers`, Some(3)).
fn split_index(segment: &str) -> (&str, Option<usize>) {
    if let Some((key, rest)) = segment.split_once('[')
        && let Some(index) = rest.strip_suffix(']')
        && let Ok(i) = index.parse()
    {
        return (key, Some(i));
    }
    (segment, None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::source::api::watcher::{WatchEvent, tests::request_and_body, tests::transcript};
    use serde_json::json;

    #[test]
    fn the_recorded_pods_decode() {
        let (_, body) = request_and_body(&transcript("11-pod-create-by-user.http"));
        let d = decode_api_pod(serde_json::from_str(&body).unwrap()).unwrap();
        assert_eq!(d.pod.metadata.uid, "f2d20477-d000-47cc-8811-2599893e2222");
        assert_eq!(d.pod.spec.node_name, "edge-1");
        assert_eq!(k8s::pod_full_name(&d.pod), "default/web");
        // List items have no apiVersion/kind.
        let (_, body) = request_and_body(&transcript("34-pod-list-paged-first.http"));
        let list: Value = serde_json::from_str(&body).unwrap();
        for item in list["items"].as_array().unwrap() {
            assert!(item.get("kind").is_none());
            decode_api_pod(item.clone()).unwrap();
        }
        let (_, body) = request_and_body(&transcript("10-pod-watch-stream.http"));
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            if let WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) =
                WatchEvent::parse(line.as_bytes()).unwrap()
            {
                decode_api_pod(o).unwrap();
            }
        }
    }

    #[test]
    fn unknown_fields_are_dropped_and_named() {
        let value = json!({
            "metadata": {"name": "web", "uid": "u1", "futureMeta": 1},
            "spec": {
                "nodeName": "n",
                "futureSpec": {"x": 1},
                "containers": [
                    {"name": "a", "image": "busybox"},
                    {"name": "b", "image": "busybox", "futureContainer": true,
                     "env": [{"name": "X", "value": "1", "futureEnv": 2}]}
                ]
            },
            "status": {"anything": "goes"},
            "futureTop": []
        });
        let d = decode_api_pod(value).unwrap();
        let mut dropped = d.dropped.clone();
        dropped.sort();
        assert_eq!(
            dropped,
            [
                "futureTop",
                "metadata.futureMeta",
                "spec.containers[1].env[0].futureEnv",
                "spec.containers[1].futureContainer",
                "spec.futureSpec"
            ]
        );
        assert_eq!(d.pod.spec.containers[1].env[0].value.as_deref(), Some("1"));
    }

    #[test]
    fn bad_pods_are_errors_naming_the_pod() {
        let cases = [
            (
                json!({"metadata": {"name": "web", "namespace": "ns", "uid": "u"},
                       "spec": {"containers": [{"name": "a", "image": "x"}], "restartPolicy": "Sometimes"}}),
                "pod ns/web: spec.restartPolicy: unknown variant",
            ),
            (
                json!({"metadata": {"name": "web", "uid": "u"}, "spec": {"containers": []}}),
                "pod default/web: spec.containers: at least one container is required",
            ),
            (
                json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "a", "image": "x"}]}}),
                "pod default/web: metadata.uid: required",
            ),
            (json!(["x"]), "pod default/: not an object"),
        ];
        for (value, want) in cases {
            let e = decode_api_pod(value).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn paths_are_removed_exactly() {
        let mut v = json!({"a": {"b": [{"c": 1, "d": 2}]}});
        assert!(remove_path(&mut v, "a.b[0].c"));
        assert_eq!(v, json!({"a": {"b": [{"d": 2}]}}));
        assert!(!remove_path(&mut v, "a.b[5].d"));
        assert!(!remove_path(&mut v, "a.x.d"));
        assert!(!remove_path(&mut v, "a.b[0]"));
    }
}
