//! Pods from the API server, end to end, as root, with real runc and the fake API server
//! (tests/common/apiserver.rs) on loopback: start and status, deletion, 410, outages, reboots
//! while offline, large and odd pods, bursts of watch events, mirror pods.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::apiserver::ApiServer;
use common::cluster::{api_pod_with, joined};
use common::{Node, pod_yaml, root_or_skip};
use serde_json::{Value, json};

const MINUTE: Duration = Duration::from_secs(60);

/// A pod bound to `node` with one busybox container running `script`.
fn api_pod(name: &str, node: &str, script: &str, spec: Value) -> Value {
    api_pod_with(name, node, script, 2, &spec, &json!({}))
}

fn pod_in_api(api: &ApiServer, name: &str) -> Option<Value> {
    api.get("pods", Some("default"), name)
}

/// Waits until the API server's copy of pod `name` satisfies `check`.
fn wait_api(api: &ApiServer, node: &Node, what: &str, check: impl Fn(Option<&Value>) -> bool) {
    let ok = api.wait_for(MINUTE, |s| {
        check(s.object("pods", Some("default"), what_name(what)))
    });
    assert!(
        ok,
        "timed out waiting for {what}\npod: {:#?}\nagent log:\n{}",
        pod_in_api(api, what_name(what)),
        node.agent_log()
    );
}

/// `"web running"` → `"web"`: the pod's name is the first word of the description.
fn what_name(what: &str) -> &str {
    what.split(' ').next().unwrap_or(what)
}

fn is_running_and_ready(pod: Option<&Value>) -> bool {
    let Some(pod) = pod else { return false };
    let ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    pod["status"]["phase"] == "Running"
        && ready
        && pod["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

/// The local status of the API pod `name`.
fn local<'a>(
    s: &'a nanolet::pod::status::Snapshot,
    name: &str,
) -> Option<&'a nanolet::pod::status::PodStatus> {
    s.pods.iter().find(|p| p.name == name && p.source == "api")
}

#[test]
fn an_api_pod_runs_reports_running_and_is_deleted_gracefully() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("");
    node.start();
    let created = api.create_pod(api_pod("web", &node.name, "exec sleep 1000", json!({})));
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    wait_api(&api, &node, "web running and ready", is_running_and_ready);
    let pod = pod_in_api(&api, "web").unwrap();
    let status = &pod["status"];
    assert_eq!(status["qosClass"], "BestEffort");
    assert!(status["startTime"].is_string(), "{status}");
    let c = &status["containerStatuses"][0];
    assert!(
        c["containerID"].as_str().unwrap().starts_with("runc://"),
        "{c}"
    );
    assert_eq!(c["restartCount"], 0);
    assert!(!c["imageID"].as_str().unwrap().is_empty(), "{c}");
    assert_eq!(node.runc_ids().len(), 1);

    // A user deletes it: graceful termination, then the agent's final DELETE with the uid.
    api.delete("pods", Some("default"), "web");
    wait_api(&api, &node, "web gone", |p| p.is_none());
    // The fake records a request after answering it: wait for the record, not just the effect.
    let is_final = |r: &common::apiserver::Recorded| {
        r.method == "DELETE" && r.path.ends_with("/pods/web") && r.body["gracePeriodSeconds"] == 0
    };
    api.wait_for(MINUTE, |s| s.requests.iter().any(is_final));
    let finals: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path.ends_with("/pods/web"))
        .filter(|r| r.body["gracePeriodSeconds"] == 0)
        .collect();
    assert_eq!(finals.len(), 1, "one final DELETE");
    assert_eq!(finals[0].body["preconditions"]["uid"], uid.as_str());
    node.wait_for("the worker gone", MINUTE, |s| {
        local(s, "web").is_none().then_some(())
    });
    assert!(node.runc_ids().is_empty(), "{:?}", node.runc_ids());
    node.stop_agent();
}

#[test]
fn gone_on_a_list_and_inside_a_watch_relists_and_nothing_restarts() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("");
    node.start();
    api.create_pod(api_pod("one", &node.name, "exec sleep 1000", json!({})));
    wait_api(&api, &node, "one running", is_running_and_ready);
    let before = node.runc_ids();
    // The relist that the ERROR 410 causes gets a 410 itself first.
    api.fail_next(1, 410, None, Some("/api/v1/pods"));
    api.expire();
    api.create_pod(api_pod("two", &node.name, "exec sleep 1000", json!({})));
    wait_api(&api, &node, "two running", is_running_and_ready);
    let after = node.runc_ids();
    assert!(
        before.iter().all(|id| after.contains(id)),
        "the first pod's container was not restarted: {before:?} {after:?}"
    );
    let log = node.agent_log();
    assert!(log.contains("(410); listing again"), "{log}");
    node.stop_agent();
}

#[test]
fn with_the_api_server_down_pods_keep_running_and_restarting() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("");
    node.start();
    api.create_pod(api_pod("steady", &node.name, "exec sleep 1000", json!({})));
    api.create_pod(api_pod("crash", &node.name, "sleep 1; exit 3", json!({})));
    wait_api(&api, &node, "steady running", is_running_and_ready);
    let steady = node.wait_for("steady running", MINUTE, |s| {
        local(s, "steady")
            .filter(|p| p.container_statuses[0].is_running())
            .cloned()
    });
    api.go_down();
    let restarts_before = node
        .snapshot()
        .and_then(|s| local(&s, "crash").map(|p| p.container_statuses[0].restart_count))
        .unwrap_or(0);
    node.wait_for("crash restarting while offline", MINUTE, |s| {
        local(s, "crash")
            .filter(|p| p.container_statuses[0].restart_count >= restarts_before + 2)
            .map(|_| ())
    });
    let s = node.snapshot().unwrap();
    let still = local(&s, "steady").unwrap();
    assert_eq!(
        still.container_statuses[0].container_id, steady.container_statuses[0].container_id,
        "the steady pod was not disturbed"
    );
    api.come_back();
    // On reconnection the restarts are reported.
    let ok = api.wait_for(MINUTE, |s| {
        s.object("pods", Some("default"), "crash")
            .and_then(|p| p["status"]["containerStatuses"][0]["restartCount"].as_u64())
            .is_some_and(|n| n >= u64::from(restarts_before) + 2)
    });
    assert!(
        ok,
        "restarts reported after reconnection\n{}",
        node.agent_log()
    );
    node.stop_agent();
}

#[test]
fn after_a_reboot_while_offline_pods_start_from_the_store_and_deletions_apply_on_reconnection() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("");
    node.start();
    for name in ["keep", "drop"] {
        api.create_pod(api_pod(name, &node.name, "exec sleep 1000", json!({})));
    }
    wait_api(&api, &node, "keep running", is_running_and_ready);
    wait_api(&api, &node, "drop running", is_running_and_ready);
    node.stop_agent();
    api.go_down();
    // A power cut: every container dies, the boot id changes.
    for id in node.runc_ids() {
        std::process::Command::new("runc")
            .arg("--root")
            .arg(node.runc_root())
            .args(["delete", "-f", &id])
            .output()
            .unwrap();
    }
    std::fs::write(
        node.path("state/data/boot_id"),
        "00000000-0000-0000-0000-000000000000\n",
    )
    .unwrap();
    node.start();
    node.wait_for("both pods running from the store", MINUTE, |s| {
        let running = |n| local(s, n).is_some_and(|p| p.container_statuses[0].is_running());
        let this_agent = Some(s.agent_pid as u32) == node.agent_pid();
        (this_agent && running("keep") && running("drop")).then_some(())
    });
    assert!(
        node.agent_log().contains("from the pod store"),
        "{}",
        node.agent_log()
    );
    // Deleted while the node could not hear it.
    api.delete("pods", Some("default"), "drop");
    api.come_back();
    wait_api(&api, &node, "drop gone", |p| p.is_none());
    node.wait_for("drop stopped", MINUTE, |s| {
        local(s, "drop").is_none().then_some(())
    });
    let s = node.snapshot().unwrap();
    assert!(local(&s, "keep").unwrap().container_statuses[0].is_running());
    assert_eq!(
        node.runc_ids().len(),
        1,
        "no pod ran twice: {:?}",
        node.runc_ids()
    );
    node.stop_agent();
}

#[test]
fn big_odd_and_unknown_pods_are_handled_and_never_stop_the_others() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("");
    node.start();
    // A 1 MiB annotation: runs.
    let mut big = api_pod("big", &node.name, "exec sleep 1000", json!({}));
    big["metadata"]["annotations"] = json!({"example.com/blob": "x".repeat(1 << 20)});
    api.create_pod(big);
    // Fields this nanolet does not know (a newer server): ignored, the pod runs.
    let mut future = api_pod(
        "future",
        &node.name,
        "exec sleep 1000",
        json!({"futureField": {"a": 1}}),
    );
    future["spec"]["containers"][0]["futureContainerField"] = json!(true);
    api.create_pod(future);
    // 1000 containers: admitted as kubelet would; each waits for its image (never pulled here).
    let containers: Vec<Value> = (0..1000)
        .map(|i| json!({"name": format!("c{i}"), "image": "example.invalid/absent:1", "imagePullPolicy": "Never"}))
        .collect();
    let mut wide = api_pod("wide", &node.name, "true", json!({}));
    wide["spec"]["containers"] = Value::Array(containers);
    api.create_pod(wide);
    wait_api(&api, &node, "big running", is_running_and_ready);
    wait_api(&api, &node, "future running", is_running_and_ready);
    wait_api(&api, &node, "wide reported", |p| {
        p.and_then(|p| p["status"]["containerStatuses"].as_array())
            .is_some_and(|c| {
                c.len() == 1000
                    && c.iter()
                        .all(|c| c["state"]["waiting"]["reason"] == "ErrImageNeverPull")
            })
    });
    node.stop_agent();
}

#[test]
fn a_burst_of_ten_thousand_watch_events_keeps_memory_bounded() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("");
    node.start();
    api.create_pod(api_pod("hot", &node.name, "exec sleep 1000", json!({})));
    wait_api(&api, &node, "hot running", is_running_and_ready);
    let pid = node.agent_pid().unwrap();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .unwrap()
    };
    let before = rss();
    for i in 0..10_000 {
        api.patch(
            "pods",
            Some("default"),
            "hot",
            json!({"metadata": {"labels": {"n": i.to_string()}}}),
        );
    }
    let last_rv = pod_in_api(&api, "hot").unwrap()["metadata"]["resourceVersion"].clone();
    // The agent has seen the last event when its watch reconnects past it, or when it patches
    // the status with... simplest: wait until the stored copy of the pod carries the last label.
    let store_has_last = || {
        std::fs::read_dir(node.path("state/data/api-pods"))
            .unwrap()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .contains("\"n\":\"9999\"")
            })
    };
    let deadline = std::time::Instant::now() + MINUTE;
    while !store_has_last() {
        assert!(
            std::time::Instant::now() < deadline,
            "burst not absorbed (last rv {last_rv})\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = rss();
    assert!(
        after < before + 8 * 1024,
        "agent RSS grew from {before} kB to {after} kB over 10 000 events"
    );
    let s = node.snapshot().unwrap();
    assert!(local(&s, "hot").unwrap().container_statuses[0].restart_count == 0);
    node.stop_agent();
}

#[test]
fn static_pods_get_mirror_pods_recreated_when_deleted_and_removed_with_them() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("");
    node.write_manifest("sensor.yaml", &pod_yaml("sensor", "exec sleep 1000", ""));
    // Registered already (as the node's own registration does on a first start).
    api.create(
        "nodes",
        None,
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name}}),
    );
    node.start();
    let mirror = format!("sensor-{}", node.name);
    let ok = api.wait_for(MINUTE, |s| {
        s.object("pods", Some("default"), &mirror).is_some_and(|p| {
            p["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string()
                && p["metadata"]["ownerReferences"][0]["kind"] == "Node"
                && p["status"]["phase"] == "Running"
        })
    });
    assert!(ok, "mirror pod with status\n{}", node.agent_log());
    let first_uid = pod_in_api(&api, &mirror).unwrap()["metadata"]["uid"].clone();
    api.delete("pods", Some("default"), &mirror);
    let ok = api.wait_for(MINUTE, |s| {
        s.object("pods", Some("default"), &mirror).is_some_and(|p| {
            p["metadata"]["uid"] != first_uid && p["metadata"]["deletionTimestamp"].is_null()
        })
    });
    assert!(ok, "mirror recreated\n{}", node.agent_log());
    node.remove_manifest("sensor.yaml");
    let ok = api.wait_for(MINUTE, |s| {
        s.object("pods", Some("default"), &mirror).is_none()
    });
    assert!(
        ok,
        "mirror removed with its static pod\n{}",
        node.agent_log()
    );
    node.stop_agent();
}
