//! The pods the API server bound to this node, merged from the watcher's outputs.
//!
//! Owns the rules that decide which API pods run:
//! - the UID is the identity (a pod deleted and recreated under the same name is a new pod);
//! - mirror pods (annotation `kubernetes.io/config.mirror`) are the node's own reports of its
//!   static pods: kept apart, never run;
//! - a pod with a `deletionTimestamp` is terminating: not desired, its worker stops within
//!   `deletionGracePeriodSeconds`, then the agent confirms the deletion;
//! - a pod whose API status is already `Succeeded` or `Failed` is not run again;
//! - a pod that does not decode is an error for that pod only, and was never started;
//! - pods loaded from the [pod store](crate::state::pods) are desired until the first full list
//!   replaces them ([`ApiPodSet::is_synced`]).
//!
//! Pure: values in, changes out. The caller persists what [`Changes`] says.
//!
//! Memory: each pod is held once, as an `Rc<Pod>` that the pod's worker shares. Of an API
//! pod's `status` the set keeps the `phase` of an ended pod (all it decides on), and of its
//! metadata no `managedFields`. The echo of a status patch (nothing relevant changed) only
//! moves the newest resourceVersion, kept beside the shared pod: the worker's copy stays the
//! only one.

use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::Value;

use super::decode::{DecodeError, decode_api_pod, object_name, object_uid};
use super::watcher::Output;
use crate::k8s::{Pod, pod_full_name};
use crate::report::mirror::Mirror;

/// How one watcher output changed the set.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Pods (not mirrors) to persist: new, or with a new resourceVersion.
    pub store: Vec<(String, Value)>,
    /// UIDs to forget on disk.
    pub unstore: Vec<String>,
    /// Problems to log, each naming its pod.
    pub errors: Vec<String>,
    /// Unknown fields dropped from pods (for a debug line).
    pub dropped: Vec<String>,
    /// Whether the set changed in a way the agent or the reporters act on. The echo of the
    /// node's own status patch (a MODIFIED event with only a new resourceVersion, status and
    /// managedFields) does not: nothing is woken, nothing is written.
    pub changed: bool,
}

/// A pod the API server wants stopped and then deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminating {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `deletionGracePeriodSeconds` (else the spec's `terminationGracePeriodSeconds`).
    pub grace_period_seconds: i64,
}

/// A pod of the set and the newest resourceVersion seen for it (the pod's own
/// `metadata.resourceVersion` is the one of its last relevant change).
#[derive(Debug)]
struct Known {
    pod: Rc<Pod>,
    resource_version: Option<String>,
}

/// The API pods of this node.
#[derive(Debug, Default)]
pub struct ApiPodSet {
    pods: BTreeMap<String, Known>,
    mirrors: BTreeMap<String, Mirror>,
    /// Pods that do not decode, by UID (or full name when it has none): the error.
    broken: BTreeMap<String, String>,
    synced: bool,
}

impl ApiPodSet {
    pub fn new() -> ApiPodSet {
        ApiPodSet::default()
    }

    /// Loads the stored pods (after a restart, before the API server answers).
    pub fn load(&mut self, stored: Vec<Value>) -> Changes {
        let mut changes = Changes::default();
        for object in stored {
            self.upsert(object, &mut changes, false);
        }
        changes
    }

    /// Applies one watcher output.
    pub fn apply(&mut self, output: Output) -> Changes {
        let mut changes = Changes::default();
        match output {
            Output::Snapshot(items) => {
                // A relist is rare (start, 410): whatever it brings is looked at.
                changes.changed = true;
                let before: Vec<String> = self.pods.keys().cloned().collect();
                self.mirrors.clear();
                self.broken.clear();
                let mut seen = std::collections::HashSet::new();
                for object in items {
                    if let Some(uid) = object_uid(&object) {
                        seen.insert(uid.to_string());
                    }
                    self.upsert(object, &mut changes, true);
                }
                for uid in before {
                    if !seen.contains(&uid) {
                        self.pods.remove(&uid);
                        changes.unstore.push(uid);
                    }
                }
                self.synced = true;
            }
            Output::Applied(object) => self.upsert(object, &mut changes, true),
            Output::Deleted(object) => {
                if let Some(uid) = object_uid(&object) {
                    let mirror = self.mirrors.remove(uid).is_some();
                    let broken = self.broken.remove(uid).is_some();
                    let pod = self.pods.remove(uid).is_some();
                    if pod {
                        changes.unstore.push(uid.to_string());
                    }
                    changes.changed |= mirror || broken || pod;
                }
            }
            // The pod watcher is not paged (`Watcher::paged`): its lists come whole.
            Output::Warning(_) | Output::Page { .. } => {}
        }
        changes
    }

    fn upsert(&mut self, object: Value, changes: &mut Changes, persist: bool) {
        if let Some(mirror) = Mirror::of(&object) {
            if self.mirrors.get(&mirror.uid) != Some(&mirror) {
                changes.changed = true;
                self.mirrors.insert(mirror.uid.clone(), mirror);
            }
            return;
        }
        let key = object_uid(&object)
            .map(str::to_string)
            .unwrap_or_else(|| object_name(&object));
        let rv = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(old) = self.pods.get(&key)
            && rv.is_some()
            && old.resource_version == rv
        {
            return;
        }
        let stored = persist.then(|| object.clone());
        match decode_api_pod(object) {
            Ok(decoded) => {
                changes.dropped.extend(
                    decoded
                        .dropped
                        .iter()
                        .map(|f| format!("pod {}: {f}", pod_full_name(&decoded.pod))),
                );
                let mut pod = decoded.pod;
                slim(&mut pod);
                let was_broken = self.broken.remove(&key).is_some();
                let relevant = was_broken
                    || self
                        .pods
                        .get(&key)
                        .is_none_or(|old| is_relevant_change(&old.pod, &pod));
                match self.pods.get_mut(&key) {
                    // Only the resourceVersion, status (not its end) or managedFields moved:
                    // the shared pod stays, its newest resourceVersion is noted.
                    Some(old) if !relevant => old.resource_version = rv,
                    _ => {
                        let known = Known {
                            pod: Rc::new(pod),
                            resource_version: rv,
                        };
                        self.pods.insert(key.clone(), known);
                    }
                }
                if !relevant {
                    return;
                }
                changes.changed = true;
                if let Some(object) = stored {
                    changes.store.push((key, object));
                }
            }
            Err(DecodeError { pod, message }) => {
                let error = format!("pod {pod}: {message}");
                if self.broken.get(&key) != Some(&error) {
                    changes.errors.push(error.clone());
                    changes.changed = true;
                }
                self.broken.insert(key, error);
            }
        }
    }

    /// Whether a full list from the API server has been applied since start.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The pods to run, by UID order.
    pub fn desired(&self) -> Vec<&Rc<Pod>> {
        self.pods
            .values()
            .map(|known| &known.pod)
            .filter(|pod| pod.metadata.deletion_timestamp.is_none() && !is_finished(pod))
            .collect()
    }

    /// The pods the API server is deleting.
    pub fn terminating(&self) -> Vec<Terminating> {
        self.pods
            .values()
            .map(|known| &known.pod)
            .filter(|pod| pod.metadata.deletion_timestamp.is_some())
            .map(|pod| Terminating {
                uid: pod.metadata.uid.clone(),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                grace_period_seconds: pod
                    .metadata
                    .deletion_grace_period_seconds
                    .unwrap_or_else(|| pod.spec.termination_grace_period_seconds())
                    .max(0),
            })
            .collect()
    }

    /// Every pod of the set (running, terminating or ended): what the store holds.
    pub fn all(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values().map(|known| &*known.pod)
    }

    /// A pod by UID.
    pub fn get(&self, uid: &str) -> Option<&Rc<Pod>> {
        self.pods.get(uid).map(|known| &known.pod)
    }

    /// The newest resourceVersion seen for a pod.
    pub fn resource_version(&self, uid: &str) -> Option<&str> {
        self.pods.get(uid)?.resource_version.as_deref()
    }

    /// The mirror pods seen.
    pub fn mirrors(&self) -> Vec<Mirror> {
        self.mirrors.values().cloned().collect()
    }

    /// The pods that do not decode: (UID or name, error).
    pub fn errors(&self) -> Vec<(String, String)> {
        self.broken
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }
}

/// Drops what the set never reads of an API pod: `managedFields`, and `status` but for the
/// `phase` of a pod that has ended (all [`is_finished`] asks). Both are large JSON trees on a
/// real server (even `{"phase": ..}` alone is a ~0.6 KiB map node).
fn slim(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    let ended = is_finished(pod);
    pod.status = pod
        .status
        .take()
        .filter(|_| ended)
        .and_then(|status| Some(serde_json::json!({ "phase": status.get("phase")? })));
}

/// Whether `new` differs from `old` in what nanolet acts on or must keep across a reboot:
/// anything but the resourceVersion, managedFields and status, or whether the status says the
/// pod has ended (it is not run again, also after a reboot from the store).
fn is_relevant_change(old: &Pod, new: &Pod) -> bool {
    if is_finished(old) != is_finished(new) {
        return true;
    }
    let mut same = new.clone();
    same.metadata.resource_version = old.metadata.resource_version.clone();
    same.metadata.managed_fields = old.metadata.managed_fields.clone();
    same.status = old.status.clone();
    same != *old
}

/// Whether the API status says the pod has run to its end.
fn is_finished(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.get("phase"))
        .and_then(Value::as_str)
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, uid: &str, rv: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": rv},
            "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "busybox"}]}
        })
    }

    fn names(pods: Vec<&Rc<Pod>>) -> Vec<String> {
        pods.into_iter().map(|p| pod_full_name(p)).collect()
    }

    #[test]
    fn snapshot_replaces_and_events_follow() {
        let mut set = ApiPodSet::new();
        let stored = set.load(vec![pod("a", "ua", "1"), pod("gone", "ug", "1")]);
        assert!(stored.store.is_empty(), "loaded pods are already stored");
        assert_eq!(names(set.desired()), ["default/a", "default/gone"]);
        assert!(!set.is_synced());

        // The first list: `gone` was deleted while we were offline.
        let c = set.apply(Output::Snapshot(vec![
            pod("a", "ua", "1"),
            pod("b", "ub", "5"),
        ]));
        assert!(set.is_synced());
        assert_eq!(names(set.desired()), ["default/a", "default/b"]);
        assert_eq!(c.unstore, ["ug"]);
        assert_eq!(c.store.len(), 1, "only b is new: {c:?}");

        // The same resourceVersion again changes nothing; a new one with a change is stored.
        assert_eq!(
            set.apply(Output::Applied(pod("b", "ub", "5"))),
            Changes::default()
        );
        let mut changed = pod("b", "ub", "6");
        changed["metadata"]["labels"] = json!({"app": "b"});
        assert_eq!(set.apply(Output::Applied(changed)).store.len(), 1);
        let c = set.apply(Output::Deleted(pod("b", "ub", "7")));
        assert_eq!(c.unstore, ["ub"]);
        assert_eq!(names(set.desired()), ["default/a"]);
    }

    #[test]
    fn the_echo_of_a_status_patch_changes_nothing_but_a_spec_phase_or_label_change_does() {
        let mut set = ApiPodSet::new();
        set.apply(Output::Snapshot(vec![pod("web", "u1", "1")]));
        // The node's own status patch comes back: new resourceVersion, status, managedFields.
        let mut echo = pod("web", "u1", "2");
        echo["status"] = json!({"phase": "Pending", "conditions": [{"type": "Ready"}]});
        echo["metadata"]["managedFields"] = json!([{"manager": "nanolet"}]);
        let running = set.get("u1").unwrap().clone();
        let c = set.apply(Output::Applied(echo.clone()));
        assert!(!c.changed && c.store.is_empty(), "{c:?}");
        assert!(
            Rc::ptr_eq(&running, set.get("u1").unwrap()),
            "the worker's pod stays the only copy"
        );
        echo["metadata"]["resourceVersion"] = json!("3");
        echo["status"]["podIP"] = json!("10.0.0.2");
        assert!(!set.apply(Output::Applied(echo.clone())).changed);
        assert_eq!(set.resource_version("u1"), Some("3"), "the newest is noted");
        // The same resourceVersion again is skipped.
        assert_eq!(set.apply(Output::Applied(echo.clone())), Changes::default());

        // The pod ended: stored, so that it is not run again after a reboot.
        echo["metadata"]["resourceVersion"] = json!("4");
        echo["status"]["phase"] = json!("Succeeded");
        let c = set.apply(Output::Applied(echo.clone()));
        assert!(c.changed && c.store.len() == 1, "{c:?}");
        assert!(set.desired().is_empty());
        // What is kept of it: the phase of its status, no managedFields (the store has all).
        let kept = set.get("u1").unwrap();
        assert_eq!(kept.status, Some(json!({"phase": "Succeeded"})));
        assert_eq!(kept.metadata.managed_fields, None);
        assert_eq!(c.store[0].1["status"]["podIP"], "10.0.0.2");

        // Labels (downward API), deletion and spec changes are acted on.
        let mut labelled = pod("web", "u1", "5");
        labelled["metadata"]["labels"] = json!({"tier": "front"});
        labelled["status"] = echo["status"].clone();
        assert!(set.apply(Output::Applied(labelled.clone())).changed);
        labelled["metadata"]["resourceVersion"] = json!("6");
        labelled["metadata"]["deletionTimestamp"] = json!("2026-11-28T01:49:57Z");
        assert!(set.apply(Output::Applied(labelled)).changed);

        // A mirror pod's own status echo changes nothing either.
        let mut mirror = pod("static-n", "um", "7");
        mirror["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "abc"});
        assert!(set.apply(Output::Applied(mirror.clone())).changed);
        mirror["metadata"]["resourceVersion"] = json!("8");
        mirror["status"] = json!({"phase": "Running"});
        assert!(!set.apply(Output::Applied(mirror)).changed);
    }

    #[test]
    fn same_name_new_uid_is_a_new_pod() {
        let mut set = ApiPodSet::new();
        set.apply(Output::Snapshot(vec![pod("web", "u1", "1")]));
        set.apply(Output::Deleted(pod("web", "u1", "2")));
        set.apply(Output::Applied(pod("web", "u2", "3")));
        let uids: Vec<&str> = set
            .desired()
            .iter()
            .map(|p| p.metadata.uid.as_str())
            .collect();
        assert_eq!(uids, ["u2"]);
    }

    #[test]
    fn terminating_finished_mirror_and_broken_pods_do_not_run() {
        let mut set = ApiPodSet::new();
        let mut deleting = pod("del", "ud", "2");
        deleting["metadata"]["deletionTimestamp"] = json!("2026-11-28T01:49:57Z");
        deleting["metadata"]["deletionGracePeriodSeconds"] = json!(7);
        let mut done = pod("done", "uf", "2");
        done["status"] = json!({"phase": "Succeeded"});
        let mut mirror = pod("static-n", "um", "2");
        mirror["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "abc"});
        let broken = json!({"metadata": {"name": "bad", "uid": "ux", "resourceVersion": "2"},
                            "spec": {"containers": [{"name": "c", "image": "x", "env": [{"name": 5}]}]}});
        let c = set.apply(Output::Snapshot(vec![
            deleting,
            done,
            mirror,
            broken,
            pod("ok", "uo", "2"),
        ]));
        assert_eq!(names(set.desired()), ["default/ok"]);
        assert_eq!(
            set.terminating(),
            [Terminating {
                uid: "ud".into(),
                namespace: "default".into(),
                name: "del".into(),
                grace_period_seconds: 7
            }]
        );
        assert_eq!(set.mirrors().len(), 1);
        assert_eq!(set.mirrors()[0].hash, "abc");
        assert_eq!(c.errors.len(), 1);
        assert!(
            c.errors[0].starts_with("pod default/bad: spec.containers[0].env[0].name"),
            "{:?}",
            c.errors
        );
        assert_eq!(set.errors().len(), 1);
        // The broken pod is reported once, not on every event.
        let again = json!({"metadata": {"name": "bad", "uid": "ux", "resourceVersion": "3"},
                           "spec": {"containers": [{"name": "c", "image": "x", "env": [{"name": 5}]}]}});
        assert!(set.apply(Output::Applied(again)).errors.is_empty());
        // Mirrors and broken pods are never stored.
        assert_eq!(
            c.store.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(),
            ["ud", "uf", "uo"]
        );
    }
}
