//! Events, end to end, as root, with real runc and the fake API server on loopback: what
//! `kubectl describe pod` shows for a pull, a start, a crash loop, a failing liveness probe
//! and a volume that cannot be mounted, in kubelet's words.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::apiserver::ApiServer;
use common::cluster::{api_pod_with, joined};
use common::registry::{RealRegistry, tools_or_skip};
use common::{Node, busybox_layout, root_or_skip};
use serde_json::{Value, json};

const MINUTE: Duration = Duration::from_secs(60);

/// A pod bound to `node` whose one container `app` runs `script`; `container` and `spec` are
/// merged into the container and the pod spec.
fn api_pod(name: &str, node: &str, script: &str, container: Value, spec: Value) -> Value {
    api_pod_with(name, node, script, 1, &spec, &container)
}

/// The Events the agent created about pod `pod`, in order.
fn events_about(api: &ApiServer, pod: &str) -> Vec<Value> {
    api.events_about("default", pod)
}

/// Waits for an Event about `pod` with `reason`, and returns it.
fn wait_event(api: &ApiServer, node: &Node, pod: &str, reason: &str) -> Value {
    api.wait_event("default", pod, reason, 2 * MINUTE)
        .unwrap_or_else(|| {
            panic!(
                "no {reason} event about {pod}; events: {:#?}\nagent log:\n{}",
                events_about(api, pod),
                node.agent_log()
            )
        })
}

fn summary(e: &Value) -> (String, String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&e["type"]),
        s(&e["reason"]),
        s(&e["message"]),
        s(&e["involvedObject"]["fieldPath"]),
    )
}

fn owned(t: &str, reason: &str, message: &str, field: &str) -> (String, String, String, String) {
    (t.into(), reason.into(), message.into(), field.into())
}

#[test]
fn starts_crash_loops_probe_kills_and_mount_failures_become_kubelets_events() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("");
    node.start();
    let nn = node.name.clone();
    api.create_pod(api_pod("web", &nn, "exec sleep 1000", json!({}), json!({})));
    let crash = api.create_pod(api_pod("crash", &nn, "exit 1", json!({}), json!({})));
    api.create_pod(api_pod(
        "sick",
        &nn,
        "exec sleep 1000",
        json!({"livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]},
                                     "periodSeconds": 1, "failureThreshold": 2}}),
        json!({}),
    ));
    let missing = node.path("no-such-file");
    api.create_pod(api_pod(
        "nofile",
        &nn,
        "exec sleep 1000",
        json!({"volumeMounts": [{"name": "data", "mountPath": "/data"}]}),
        json!({"volumes": [{"name": "data",
                                "hostPath": {"path": missing, "type": "File"}}]}),
    ));

    // An image in the store, a container made and started.
    let field = "spec.containers{app}";
    let present = wait_event(&api, &node, "web", "Pulled");
    assert_eq!(
        summary(&present),
        owned(
            "Normal",
            "Pulled",
            "Container image \"busybox:latest\" already present on machine",
            field
        )
    );
    let created = wait_event(&api, &node, "web", "Created");
    assert_eq!(
        summary(&created),
        owned("Normal", "Created", "Created container app", field)
    );
    let started = wait_event(&api, &node, "web", "Started");
    assert_eq!(
        summary(&started),
        owned("Normal", "Started", "Started container app", field)
    );
    assert_eq!(started["involvedObject"]["kind"], "Pod");
    assert!(
        !started["involvedObject"]["uid"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let reasons: Vec<String> = events_about(&api, "web")
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons[..3], ["Pulled", "Created", "Started"], "in order");

    // A container that keeps failing waits for its back-off: BackOff, as kubelet says it.
    let backoff = wait_event(&api, &node, "crash", "BackOff");
    let uid = crash["metadata"]["uid"].as_str().unwrap();
    assert_eq!(
        summary(&backoff),
        owned(
            "Warning",
            "BackOff",
            &format!("Back-off restarting failed container app in pod crash_default({uid})"),
            field
        )
    );

    // A failing liveness probe: Unhealthy, then the kill that restarts the container.
    let unhealthy = wait_event(&api, &node, "sick", "Unhealthy");
    let (t, reason, message, f) = summary(&unhealthy);
    assert_eq!(
        (t.as_str(), reason.as_str(), f.as_str()),
        ("Warning", "Unhealthy", field)
    );
    assert!(message.starts_with("Liveness probe failed: "), "{message}");
    let killing = wait_event(&api, &node, "sick", "Killing");
    assert_eq!(
        summary(&killing),
        owned(
            "Normal",
            "Killing",
            "Container app failed liveness probe, will be restarted",
            field
        )
    );

    // A hostPath File that is not there: FailedMount about the pod, and nothing starts.
    let failed = wait_event(&api, &node, "nofile", "FailedMount");
    let (t, _, message, f) = summary(&failed);
    assert_eq!((t.as_str(), f.as_str()), ("Warning", ""));
    assert!(
        message.starts_with("MountVolume.SetUp failed for volume \"data\" : ")
            && message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(
        !events_about(&api, "nofile")
            .iter()
            .any(|e| e["reason"] == "Started"),
        "a pod whose volume cannot be set up starts nothing"
    );

    // Deleting a pod stops its container: Killing with kubelet's words.
    api.delete("pods", Some("default"), "web");
    let stopping = api.wait_for(MINUTE, |s| {
        s.requests.iter().any(|r| {
            r.method == "POST"
                && r.body["involvedObject"]["name"] == "web"
                && r.body["reason"] == "Killing"
                && r.body["message"] == "Stopping container app"
        })
    });
    assert!(stopping, "{:#?}", events_about(&api, "web"));
}

#[test]
fn a_pulled_image_gets_pulling_and_pulled_and_a_failed_pull_gets_failed() {
    if !root_or_skip() || !tools_or_skip() {
        return;
    }
    let registry = RealRegistry::start(None);
    registry.push(
        busybox_layout(),
        "busybox:latest",
        "busybox",
        "latest",
        None,
    );
    let (mut node, api) = joined("");
    node.start();
    let nn = node.name.clone();
    let image = format!("{}/busybox:latest", registry.host());
    api.create_pod(api_pod(
        "pulled",
        &nn,
        "exec sleep 1000",
        json!({"image": image, "imagePullPolicy": "Always"}),
        json!({}),
    ));
    // Nothing listens on port 1: the pull fails at once.
    api.create_pod(api_pod(
        "unpullable",
        &nn,
        "exec sleep 1000",
        json!({"image": "127.0.0.1:1/nothing:here", "imagePullPolicy": "Always"}),
        json!({}),
    ));
    let field = "spec.containers{app}";
    let pulling = wait_event(&api, &node, "pulled", "Pulling");
    assert_eq!(
        summary(&pulling),
        owned(
            "Normal",
            "Pulling",
            &format!("Pulling image \"{image}\""),
            field
        )
    );
    let pulled = wait_event(&api, &node, "pulled", "Pulled");
    let (_, _, message, _) = summary(&pulled);
    let prefix = format!("Successfully pulled image \"{image}\" in ");
    assert!(
        message.starts_with(&prefix)
            && message.contains(" including waiting). Image size: ")
            && message.ends_with(" bytes."),
        "{message}"
    );
    wait_event(&api, &node, "pulled", "Started");

    let failed = api.wait_for(2 * MINUTE, |s| {
        let about: Vec<&Value> = s
            .requests
            .iter()
            .filter(|r| r.method == "POST" && r.body["involvedObject"]["name"] == "unpullable")
            .map(|r| &r.body)
            .collect();
        about.iter().any(|e| {
            e["reason"] == "Failed"
                && e["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("Failed to pull image \"127.0.0.1:1/nothing:here\": ")
        }) && about
            .iter()
            .any(|e| e["reason"] == "Failed" && e["message"] == "Error: ErrImagePull")
    });
    assert!(
        failed,
        "{:#?}\n{}",
        events_about(&api, "unpullable"),
        node.agent_log()
    );
    for e in events_about(&api, "unpullable")
        .iter()
        .filter(|e| e["reason"] == "Failed")
    {
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["involvedObject"]["fieldPath"], field);
    }
}

#[test]
fn a_probe_redirected_to_another_host_succeeds_with_kubelets_probe_warning() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("");
    node.start();
    // busybox httpd with a CGI that answers 302 to another host, with a body; on the host's
    // network (loopback, a free port) so that no pod network is needed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cgi = r#"#!/bin/sh
printf 'HTTP/1.0 302 Found\r\nLocation: http://login.example/\r\nContent-Length: 13\r\n\r\nsee elsewhere'
"#;
    let script = format!(
        "mkdir -p /www/cgi-bin && printf '%s' '{}' > /www/cgi-bin/moved && chmod +x /www/cgi-bin/moved && exec httpd -f -p 127.0.0.1:{port} -h /www",
        cgi.replace('\'', "'\\''")
    );
    api.create_pod(api_pod(
        "moved",
        &node.name,
        &script,
        json!({"readinessProbe": {"httpGet": {"path": "/cgi-bin/moved", "port": port},
                                      "periodSeconds": 1}}),
        json!({"hostNetwork": true}),
    ));
    let warning = wait_event(&api, &node, "moved", "ProbeWarning");
    assert_eq!(
        summary(&warning),
        owned(
            "Warning",
            "ProbeWarning",
            "Readiness probe warning: Probe terminated redirects, Response body: see elsewhere",
            "spec.containers{app}"
        )
    );
    // A warning is a success: the pod becomes Ready, and no probe fails once httpd answers
    // (an Unhealthy before that is kubelet's too: connection refused while httpd starts).
    node.wait_for("moved ready", MINUTE, |s| {
        let pod = s.pods.iter().find(|p| p.name == "moved")?;
        pod.container_statuses.first()?.ready.then_some(())
    });
    let reasons: Vec<Value> = events_about(&api, "moved")
        .iter()
        .map(|e| e["reason"].clone())
        .collect();
    let first_warning = reasons.iter().position(|r| r == "ProbeWarning");
    let last_unhealthy = reasons.iter().rposition(|r| r == "Unhealthy");
    assert!(last_unhealthy < first_warning, "{reasons:?}");
}
