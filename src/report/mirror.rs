//! Mirror pods: the API server's read-only copy of each static pod, so `kubectl get pods` shows it.
//!
//! As kubelet does (pkg/kubelet/pod/mirror_client.go): the mirror has the static pod's name,
//! namespace and spec, the annotation `kubernetes.io/config.mirror` holding the static pod's
//! config hash (its UID), and an ownerReference to the Node so that deleting the Node deletes it.
//! [`plan`] compares the static pods with the mirrors the pod watch sees and says what to do:
//!
//! ```text
//!   static pod, no mirror                 → Create
//!   static pod, mirror with another hash  → Delete (the next plan creates the new one)
//!   static pod, mirror being deleted      → Delete it now (grace 0), then Create once it is gone
//!   mirror, no static pod                 → Delete
//! ```
//!
//! Pure: objects in, actions out.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::k8s::{Pod, pod_full_name};
use crate::source::manifest::{CONFIG_HASH_ANNOTATION, CONFIG_SEEN_ANNOTATION};

/// The annotation that makes a pod a mirror pod; its value is the static pod's hash.
pub const CONFIG_MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// A mirror pod as the pod watch saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The `kubernetes.io/config.mirror` annotation.
    pub hash: String,
    /// It has a deletionTimestamp.
    pub deleting: bool,
}

impl Mirror {
    /// The mirror described by a pod object, if it is one.
    pub fn of(pod: &Value) -> Option<Mirror> {
        let meta = pod.get("metadata")?;
        let hash = meta
            .get("annotations")?
            .get(CONFIG_MIRROR_ANNOTATION)?
            .as_str()?;
        let text = |key: &str| meta.get(key).and_then(Value::as_str).unwrap_or("");
        let namespace = match text("namespace") {
            "" => "default",
            ns => ns,
        };
        Some(Mirror {
            namespace: namespace.to_string(),
            name: text("name").to_string(),
            uid: text("uid").to_string(),
            hash: hash.to_string(),
            deleting: meta.get("deletionTimestamp").is_some_and(|t| !t.is_null()),
        })
    }

    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One thing to do on the API server.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `POST /api/v1/namespaces/NS/pods` with this body.
    Create { namespace: String, body: Value },
    /// `DELETE /api/v1/namespaces/NS/pods/NAME` with a uid precondition.
    Delete {
        namespace: String,
        name: String,
        uid: String,
    },
}

/// The Node mirror pods belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    pub name: String,
    pub uid: String,
}

/// The mirror pod object for a static pod (transcript 14). `seen` is the RFC 3339 time the
/// static pod was first seen.
pub fn mirror_body(static_pod: &Pod, node: &NodeRef, seen: &str) -> Value {
    let mut pod = static_pod.clone();
    pod.metadata.uid.clear();
    pod.metadata.resource_version = None;
    pod.metadata.owner_references = None;
    let hash = static_pod.metadata.uid.clone();
    let annotations = &mut pod.metadata.annotations;
    annotations.insert(CONFIG_MIRROR_ANNOTATION.into(), hash.clone());
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), hash);
    annotations.insert(CONFIG_SEEN_ANNOTATION.into(), seen.into());
    pod.spec.node_name = node.name.clone();
    let mut body = serde_json::to_value(&pod).unwrap_or(Value::Null);
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "ownerReferences".into(),
            json!([{
                "apiVersion": "v1",
                "kind": "Node",
                "name": node.name,
                "uid": node.uid,
                "controller": true,
            }]),
        );
    }
    body
}

/// What to do so that every static pod has exactly one current mirror, and no mirror is left
/// without its static pod. Deletions come first.
pub fn plan(
    static_pods: &[&Pod],
    mirrors: &[Mirror],
    node: &NodeRef,
    seen: &dyn Fn(&Pod) -> String,
) -> Vec<Action> {
    let wanted: BTreeMap<String, &Pod> = static_pods
        .iter()
        .map(|pod| (pod_full_name(pod), *pod))
        .collect();
    let mut present: BTreeMap<String, &Mirror> = BTreeMap::new();
    let mut actions = Vec::new();
    for mirror in mirrors {
        let current = wanted
            .get(&mirror.full_name())
            .is_some_and(|pod| pod.metadata.uid == mirror.hash);
        // A user's graceful delete of a mirror only sets its deletionTimestamp: the node
        // finishes it (kubelet does the same), and recreates it once gone.
        if !current || mirror.deleting {
            actions.push(Action::Delete {
                namespace: mirror.namespace.clone(),
                name: mirror.name.clone(),
                uid: mirror.uid.clone(),
            });
        }
        present.insert(mirror.full_name(), mirror);
    }
    for (name, pod) in wanted {
        if present.contains_key(&name) {
            continue;
        }
        actions.push(Action::Create {
            namespace: pod.metadata.namespace.clone(),
            body: mirror_body(pod, node, &seen(pod)),
        });
    }
    actions
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::source::manifest::parse_manifest;
    use std::path::Path;

    const NODE: &str = "edge-1";

    fn node() -> NodeRef {
        NodeRef {
            name: NODE.into(),
            uid: "aa4f970c-91ca-47fc-8054-c29159317ec4".into(),
        }
    }

    fn static_pod(image: &str) -> Pod {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: sensor, namespace: kube-system}}\n\
             spec: {{containers: [{{name: sensor, image: {image}}}]}}\n"
        );
        parse_manifest(Path::new("/m/sensor.yaml"), text.as_bytes(), NODE).unwrap()
    }

    fn seen(_: &Pod) -> String {
        "2026-11-28T01:49:27Z".into()
    }

    fn mirror_of(pod: &Pod, deleting: bool) -> Mirror {
        Mirror {
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: "m-1".into(),
            hash: pod.metadata.uid.clone(),
            deleting,
        }
    }

    #[test]
    fn the_mirror_has_the_recorded_shape() {
        let text = crate::source::api::watcher::tests::transcript("14-mirror-pod-create.http");
        let recorded: Value = serde_json::from_str(
            text.lines()
                .skip_while(|l| *l != "### request body:")
                .nth(1)
                .unwrap(),
        )
        .unwrap();
        let pod = static_pod("busybox");
        let body = mirror_body(&pod, &node(), "2026-11-28T01:49:27Z");
        assert_eq!(body["metadata"]["name"], recorded["metadata"]["name"]);
        assert_eq!(body["metadata"]["namespace"], "kube-system");
        assert_eq!(
            body["metadata"]["ownerReferences"],
            recorded["metadata"]["ownerReferences"]
        );
        let annotations = &body["metadata"]["annotations"];
        for key in [
            "kubernetes.io/config.mirror",
            "kubernetes.io/config.hash",
            "kubernetes.io/config.source",
            "kubernetes.io/config.seen",
        ] {
            assert!(annotations[key].is_string(), "{key}: {annotations}");
        }
        assert_eq!(
            annotations["kubernetes.io/config.mirror"],
            pod.metadata.uid.as_str()
        );
        assert!(
            body["metadata"].get("uid").is_none(),
            "the server assigns the mirror's uid"
        );
        assert_eq!(body["spec"]["nodeName"], NODE);
        for key in ["name", "image"] {
            assert_eq!(
                body["spec"]["containers"][0][key],
                recorded["spec"]["containers"][0][key]
            );
        }
        // What the server answers is recognised as the mirror of that static pod.
        let (_, answer) = crate::source::api::watcher::tests::request_and_body(&text);
        let m = Mirror::of(&serde_json::from_str(&answer).unwrap()).unwrap();
        assert_eq!(m.full_name(), "kube-system/sensor-edge-1");
        assert!(!m.deleting);
    }

    #[test]
    fn plan_creates_replaces_and_removes() {
        let v1 = static_pod("busybox:1");
        let v2 = static_pod("busybox:2");
        // No mirror yet: create.
        let actions = plan(&[&v1], &[], &node(), &seen);
        assert!(
            matches!(&actions[..], [Action::Create { namespace, .. }] if namespace == "kube-system")
        );
        // Current mirror: nothing.
        assert!(plan(&[&v1], &[mirror_of(&v1, false)], &node(), &seen).is_empty());
        // Static pod changed: delete the old mirror (and create after it is gone).
        let actions = plan(&[&v2], &[mirror_of(&v1, false)], &node(), &seen);
        assert_eq!(
            actions,
            [Action::Delete {
                namespace: "kube-system".into(),
                name: "sensor-edge-1".into(),
                uid: "m-1".into()
            }]
        );
        let actions = plan(&[&v2], &[mirror_of(&v2, true)], &node(), &seen);
        assert!(
            matches!(&actions[..], [Action::Delete { .. }]),
            "a mirror a user deletes is removed, not created twice: {actions:?}"
        );
        // A user deleted the mirror: it is gone from the watch, so it is created again.
        assert_eq!(plan(&[&v2], &[], &node(), &seen).len(), 1);
        // The static pod went: its mirror goes.
        let actions = plan(&[], &[mirror_of(&v2, false)], &node(), &seen);
        assert!(matches!(&actions[..], [Action::Delete { .. }]));
        // Not a mirror.
        assert!(Mirror::of(&json!({"metadata": {"name": "x"}})).is_none());
    }
}
