//! Typed answers of the API server: the parts of `metav1` every resource shares (`ObjectMeta`,
//! `ListMeta`, `Status`, watch events) and the small objects the node owns (`Lease`).
//!
//! Answers are read leniently (unknown fields ignored): servers newer than nanolet add fields,
//! and nanolet must keep working with them. What nanolet *sends* is built by its own code.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `metav1.Status`: the body of every error answer and of a watch's ERROR event.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Status {
    /// `Success` or `Failure`.
    pub status: String,
    /// Human-readable.
    pub message: String,
    /// Machine-readable (`AlreadyExists`, `Conflict`, `Expired`, ...).
    pub reason: String,
    /// More about the object concerned.
    pub details: Option<StatusDetails>,
    /// The HTTP code.
    pub code: u16,
}

/// `metav1.StatusDetails`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StatusDetails {
    /// The object's name.
    pub name: String,
    /// The resource (`nodes`, `leases`).
    pub kind: String,
    /// Seconds to wait before retrying (429, some 5xx).
    pub retry_after_seconds: Option<u32>,
}

/// `metav1.ObjectMeta`, the fields nanolet reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    /// Name (unique per namespace and resource).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The prefix the server completes when `name` is empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub generate_name: String,
    /// Namespace (empty for cluster-scoped resources).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Set by the server; a precondition for deletes and patches.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Set by the server; optimistic concurrency for updates.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    /// Set by the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Set when a graceful delete started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    /// The grace period of that delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    /// Labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Owners (a mirror pod's Node).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
}

/// `metav1.OwnerReference`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OwnerReference {
    /// `v1`.
    pub api_version: String,
    /// `Node`.
    pub kind: String,
    /// The owner's name.
    pub name: String,
    /// The owner's uid.
    pub uid: String,
    /// Whether the owner is the managing controller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
}

/// `metav1.ListMeta`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListMeta {
    /// Where a watch that follows this list starts.
    pub resource_version: String,
    /// The token of the next page (`limit`); empty on the last page.
    #[serde(rename = "continue")]
    pub continue_token: String,
}

/// A `...List` answer. Items stay JSON here so that one bad item can be reported by name
/// without losing the others; see [`List::typed_items`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct List {
    /// The list's metadata.
    pub metadata: ListMeta,
    /// The objects.
    pub items: Vec<Value>,
}

impl List {
    /// Every item decoded as `T`, each with its own result (the error names the object).
    pub fn typed_items<T: DeserializeOwned>(&self) -> Vec<Result<T, String>> {
        self.items.iter().map(decode_object::<T>).collect()
    }
}

/// Decodes one object, naming it (`default/web`) in the error.
pub fn decode_object<T: DeserializeOwned>(v: &Value) -> Result<T, String> {
    T::deserialize(v).map_err(|e| format!("{}: {e}", object_name(v)))
}

/// `namespace/name` (or `name`) of a JSON object, for messages.
pub fn object_name(v: &Value) -> String {
    let meta = &v["metadata"];
    let name = meta["name"].as_str().unwrap_or("<unnamed>");
    match meta["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// One event of a watch stream (`{"type": ..., "object": ...}`, one per line).
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The object was created (or existed when a watch without resourceVersion started).
    Added(Value),
    /// The object changed.
    Modified(Value),
    /// The object is gone; the value is its last state.
    Deleted(Value),
    /// Nothing changed, but the watch has reached this resourceVersion (resume from here).
    Bookmark {
        /// The resourceVersion to resume from.
        resource_version: String,
    },
    /// The watch failed (a 410 `Expired` means: relist).
    Error(Status),
}

impl WatchEvent {
    /// Parses one line of a watch stream.
    pub fn parse(line: &[u8]) -> Result<WatchEvent, String> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "type")]
            kind: String,
            object: Value,
        }
        let raw: Raw =
            serde_json::from_slice(line).map_err(|e| format!("watch event is not JSON: {e}"))?;
        Ok(match raw.kind.as_str() {
            "ADDED" => WatchEvent::Added(raw.object),
            "MODIFIED" => WatchEvent::Modified(raw.object),
            "DELETED" => WatchEvent::Deleted(raw.object),
            "BOOKMARK" => WatchEvent::Bookmark {
                resource_version: raw.object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            },
            "ERROR" => WatchEvent::Error(
                Status::deserialize(&raw.object)
                    .map_err(|e| format!("watch ERROR event without a Status: {e}"))?,
            ),
            other => return Err(format!("unknown watch event type {other:?}")),
        })
    }

    /// The resourceVersion this event brings the watch to.
    pub fn resource_version(&self) -> Option<&str> {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                o["metadata"]["resourceVersion"].as_str()
            }
            WatchEvent::Bookmark { resource_version } => Some(resource_version),
            WatchEvent::Error(_) => None,
        }
    }
}

/// `coordination.k8s.io/v1` Lease, as a node uses it (its heartbeat).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Lease {
    /// `coordination.k8s.io/v1`.
    pub api_version: String,
    /// `Lease`.
    pub kind: String,
    /// Name = the node's name, namespace `kube-node-lease`.
    pub metadata: ObjectMeta,
    /// The heartbeat.
    pub spec: LeaseSpec,
}

/// `LeaseSpec`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LeaseSpec {
    /// The node's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder_identity: Option<String>,
    /// 40 for nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_duration_seconds: Option<i32>,
    /// `MicroTime` of the last renewal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<String>,
    /// Owner references of a node lease point at the Node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acquire_time: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_events_of_the_transcripts_parse() {
        let e = WatchEvent::parse(br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (155)","reason":"Expired","code":410}}"#).unwrap();
        match e {
            WatchEvent::Error(s) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
            other => panic!("{other:?}"),
        }
        let e = WatchEvent::parse(
            br#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"613","creationTimestamp":null},"spec":{"containers":null},"status":{}}}"#,
        )
        .unwrap();
        assert_eq!(e.resource_version(), Some("613"));
        assert!(WatchEvent::parse(br#"{"type":"SOMETHING","object":{}}"#).is_err());
        assert!(WatchEvent::parse(b"{not json").is_err());
    }

    #[test]
    fn one_bad_item_is_named_and_the_others_kept() {
        let list: List = serde_json::from_str(
            r#"{"metadata":{"resourceVersion":"5","continue":"abc"},"items":[
                {"metadata":{"name":"a","namespace":"default"}},
                {"metadata":{"name":"b","namespace":"default","labels":7}}]}"#,
        )
        .unwrap();
        assert_eq!(list.metadata.continue_token, "abc");
        #[derive(Deserialize)]
        struct Obj {
            #[allow(dead_code)]
            metadata: ObjectMeta,
        }
        let items = list.typed_items::<Obj>();
        assert!(items[0].is_ok());
        assert!(items[1].as_ref().err().unwrap().starts_with("default/b: "));
    }
}
