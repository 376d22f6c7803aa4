//! The node's own status patches come back as MODIFIED watch events. They must cost nothing:
//! the pod store is not rewritten, no pod restarts. As root, with real runc and the fake API
//! server on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::apiserver::ApiServer;
use common::{Node, root_or_skip};
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn status_patch_echoes_leave_the_pod_store_and_the_pod_alone() {
    if !root_or_skip() {
        return;
    }
    let api = ApiServer::start();
    let mut node = Node::new("");
    api.write_kubeconfig(node.dir.path(), None);
    node.start();
    let created = api.create(
        "pods",
        Some("default"),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "nodeName": node.name,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "app", "image": "busybox:latest",
                                "imagePullPolicy": "IfNotPresent",
                                "command": ["sh", "-c", "exec sleep 1000"],
                                "readinessProbe": {"exec": {"command": ["true"]},
                                                   "periodSeconds": 1}}]
            }
        }),
    );
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    let first_rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    // Running, then Ready: at least two status patches, each echoed back by the watch.
    let ready = api.wait_for(MINUTE, |s| {
        s.object("pods", Some("default"), "web").is_some_and(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        }) && s.count("PATCH", "/pods/web/status") >= 2
    });
    assert!(ready, "{}", node.agent_log());
    let web = |s: &nanolet::pod::status::Snapshot| {
        s.pods
            .iter()
            .find(|p| p.name == "web" && p.source == "api")
            .map(|p| p.container_statuses[0].clone())
    };
    let running = node.wait_for("web running", MINUTE, |s| web(s).filter(|c| c.is_running()));
    let container_id = running.container_id.clone();
    let now_rv = api.get("pods", Some("default"), "web").unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        now_rv, first_rv,
        "the status patches made new resourceVersions"
    );

    // A watch delivers events in order: once a pod created now runs, every echo before it
    // has been handled (and the store flushed before that pod started).
    let mut marker = created.clone();
    marker["metadata"] = json!({"name": "marker", "namespace": "default"});
    marker.as_object_mut().unwrap().remove("status");
    api.create("pods", Some("default"), marker);
    node.wait_for("marker running", MINUTE, |s| {
        s.pods
            .iter()
            .find(|p| p.name == "marker" && p.source == "api")
            .filter(|p| p.container_statuses.iter().all(|c| c.is_running()))
            .map(|_| ())
    });
    let stored =
        std::fs::read_to_string(node.path(&format!("state/data/api-pods/{uid}.json"))).unwrap();
    assert!(
        stored.contains(&format!("\"resourceVersion\":\"{first_rv}\"")),
        "the pod store still holds the pod as it was bound, not each status echo: {stored}"
    );
    let now = web(&node.snapshot().unwrap()).unwrap();
    assert_eq!(now.container_id, container_id, "the same container runs");
    assert_eq!(now.restart_count, 0);
    assert_eq!(node.runc_ids().len(), 2, "web and the marker");
}
