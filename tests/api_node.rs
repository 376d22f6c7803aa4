//! The agent as a cluster node, against the fake API server on loopback: registration (labels,
//! capacity, nodeInfo), adoption of an existing Node, Lease renewals and conflicts, an API
//! server that is down at start or mid-run (pods undisturbed), 401, and Retry-After.
//!
//! Root tests (the agent runs pods under runc); the intervals are shortened through
//! `nodeStatusUpdateFrequency` and `nodeLeaseDurationSeconds` (renewal every quarter).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::apiserver::{ApiServer, Recorded};
use common::{Node, pod_yaml, root_or_skip};
use nanolet::api::time::parse_time;
use serde_json::{Value, json};

const FAST: &str = "nodeStatusUpdateFrequency: 200ms\nnodeLeaseDurationSeconds: 2\n";
const WAIT: Duration = Duration::from_secs(30);

fn node_with_api(server: &ApiServer, token: Option<&str>) -> Node {
    let node = Node::new(FAST);
    server.write_kubeconfig(node.dir.path(), token);
    node
}

fn registered(server: &ApiServer, node: &Node) -> Value {
    assert!(
        server.wait_for(WAIT, |s| s
            .object("nodes", None, &node.name)
            .is_some_and(|n| n["status"]["conditions"].is_array())),
        "node not registered\n{}",
        node.agent_log()
    );
    server.get("nodes", None, &node.name).unwrap()
}

fn lease_puts(requests: &[Recorded]) -> Vec<(u16, Value)> {
    requests
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/leases/"))
        .map(|r| (r.status, r.body.clone()))
        .collect()
}

fn renew_time(lease: &Value) -> SystemTime {
    parse_time(lease["spec"]["renewTime"].as_str().unwrap()).unwrap()
}

#[test]
fn node_registers_with_labels_capacity_node_info_and_a_renewed_lease() {
    if !root_or_skip() {
        return;
    }
    let server = ApiServer::start();
    server.faults(|f| f.token = Some("node-token".into()));
    let mut node = node_with_api(&server, Some("node-token"));
    node.start();
    let n = registered(&server, &node);
    let hostname = nanolet::config::hostname();
    let arch = nanolet::node::machine::go_arch(std::env::consts::ARCH);
    assert_eq!(
        n["metadata"]["labels"],
        json!({"kubernetes.io/hostname": hostname, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch})
    );
    let status = &n["status"];
    let cpus = std::thread::available_parallelism()
        .unwrap()
        .get()
        .to_string();
    assert_eq!(status["capacity"]["cpu"], cpus.as_str());
    assert_eq!(status["capacity"]["pods"], "110");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let mem_kib = nanolet::node::machine::meminfo(&meminfo, "MemTotal").unwrap() / 1024;
    assert_eq!(
        status["capacity"]["memory"],
        format!("{mem_kib}Ki").as_str()
    );
    assert!(
        status["capacity"]["ephemeral-storage"]
            .as_str()
            .unwrap()
            .ends_with("Ki")
    );
    assert_eq!(
        status["allocatable"]["memory"],
        format!("{}Ki", mem_kib - 100 * 1024).as_str()
    );
    let info = &status["nodeInfo"];
    let read = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_string();
    assert_eq!(
        info["bootID"],
        read("/proc/sys/kernel/random/boot_id").as_str()
    );
    if std::path::Path::new("/etc/machine-id").exists() {
        assert_eq!(info["machineID"], read("/etc/machine-id").as_str());
    }
    assert_eq!(
        info["kernelVersion"],
        read("/proc/sys/kernel/osrelease").as_str()
    );
    assert!(
        info["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("runc://1."),
        "{info}"
    );
    assert!(info["kubeletVersion"].as_str().unwrap().starts_with("v1."));
    assert_eq!(
        (
            info["operatingSystem"].as_str(),
            info["architecture"].as_str()
        ),
        (Some("linux"), Some(arch))
    );
    assert_eq!(
        status["addresses"],
        json!([{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": hostname}])
    );
    assert_eq!(status["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
    let types: Vec<&str> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
    );
    assert_eq!(status["conditions"][3]["status"], "True");

    // The Lease: created, then renewed (every 0.5 s here) with a renewTime that only grows.
    assert!(
        server.wait_for(WAIT, |s| s.count("PUT", "/leases/") >= 3),
        "{}",
        node.agent_log()
    );
    let lease = server
        .get("leases", Some("kube-node-lease"), &node.name)
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], node.name.as_str());
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2);
    assert_eq!(
        lease["metadata"]["ownerReferences"][0]["uid"],
        n["metadata"]["uid"]
    );
    let times: Vec<SystemTime> = lease_puts(&server.requests())
        .iter()
        .map(|(_, b)| renew_time(b))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "renewTime must grow: {times:?}"
    );
    // Nothing changed, so no further status PATCH within the report period (5 min).
    let patches = server.state().count("PATCH", "/status");
    assert!(server.wait_for(WAIT, |s| s.count("PUT", "/leases/") >= 6));
    assert_eq!(
        server.state().count("PATCH", "/status"),
        patches,
        "status PATCHed without a change"
    );
}

#[test]
fn an_existing_node_is_adopted_with_its_transition_times_and_fixed_labels() {
    if !root_or_skip() {
        return;
    }
    let server = ApiServer::start();
    let mut node = node_with_api(&server, None);
    let old = server.create("nodes", None, json!({"metadata": {"name": node.name, "labels": {"kubernetes.io/os": "windows", "team": "edge"}}, "spec": {}}));
    server.patch("nodes", None, &node.name, json!({"status": {"conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": "KubeletReady", "message": "ok"}]}}));
    node.start();
    assert!(
        server.wait_for(WAIT, |s| s.count("PATCH", "/status") >= 1),
        "{}",
        node.agent_log()
    );
    let n = server.get("nodes", None, &node.name).unwrap();
    assert_eq!(
        n["metadata"]["uid"], old["metadata"]["uid"],
        "adopted, not re-created"
    );
    assert_eq!(n["metadata"]["labels"]["kubernetes.io/os"], "linux");
    assert_eq!(
        n["metadata"]["labels"]["team"], "edge",
        "other labels are kept"
    );
    let ready = n["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["lastTransitionTime"], "2026-01-01T00:00:00Z");
    assert!(
        node.agent_log()
            .contains("already registered; adopting the existing Node")
    );
}

#[test]
fn a_lease_changed_behind_the_agents_back_is_read_again_and_renewed() {
    if !root_or_skip() {
        return;
    }
    let server = ApiServer::start();
    let mut node = node_with_api(&server, None);
    node.start();
    assert!(
        server.wait_for(WAIT, |s| s.count("PUT", "/leases/") >= 1),
        "{}",
        node.agent_log()
    );
    // Someone else writes the Lease: the agent's resourceVersion is now stale.
    let future = "2099-01-01T00:00:00.000000Z";
    server.patch(
        "leases",
        Some("kube-node-lease"),
        &node.name,
        json!({"spec": {"renewTime": future}}),
    );
    assert!(
        server.wait_for(WAIT, |s| lease_puts(&s.requests)
            .iter()
            .any(|(s, _)| *s == 409)
            && lease_puts(&s.requests)
                .last()
                .is_some_and(|(s, _)| *s == 200)),
        "{}",
        node.agent_log()
    );
    // After the conflict the renewals continue past the later renewTime found on the server.
    let last = server
        .get("leases", Some("kube-node-lease"), &node.name)
        .unwrap();
    assert!(renew_time(&last) > parse_time(future).unwrap());
}

#[test]
fn api_server_down_at_start_and_mid_run_never_disturbs_pods() {
    if !root_or_skip() {
        return;
    }
    let server = ApiServer::start();
    server.go_down();
    let mut node = node_with_api(&server, None);
    node.write_manifest("steady.yaml", &pod_yaml("steady", "sleep 3600", ""));
    node.start();
    let before = node.wait_running("steady");
    assert!(server.get("nodes", None, &node.name).is_none());
    server.come_back();
    registered(&server, &node);
    server.go_down();
    // Down mid-run for a while (several lease periods), then back.
    std::thread::sleep(Duration::from_secs(3));
    server.come_back();
    let puts = server.state().count("PUT", "/leases/");
    assert!(
        server.wait_for(WAIT, |s| s.count("PUT", "/leases/") > puts + 1),
        "{}",
        node.agent_log()
    );
    let after = node.wait_running("steady");
    assert_eq!(after.uid, before.uid);
    assert_eq!(
        after.container_statuses[0].restart_count, 0,
        "the pod never restarted"
    );
    assert_eq!(
        after.container_statuses[0].container_id,
        before.container_statuses[0].container_id
    );
}

#[test]
fn unauthorized_is_logged_clearly_and_retried_without_harm() {
    if !root_or_skip() {
        return;
    }
    let server = ApiServer::start();
    server.faults(|f| f.token = Some("right".into()));
    let mut node = node_with_api(&server, Some("wrong"));
    node.write_manifest("steady.yaml", &pod_yaml("steady", "sleep 3600", ""));
    node.start();
    node.wait_running("steady");
    assert!(server.wait_for(WAIT, |s| s.count("POST", "/api/v1/nodes") >= 2));
    let log = node.agent_log();
    let line = log
        .lines()
        .find(|l| l.contains("401"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("the API server did not accept nanolet's credentials"),
        "{line}"
    );
    let errors = log
        .lines()
        .filter(|l| l.starts_with("E ") && l.contains("did not accept"))
        .count();
    assert_eq!(errors, 1, "logged once as an error, not per retry:\n{log}");
    // Fixed credentials (a rotated token): registration goes through.
    server.faults(|f| f.token = None);
    registered(&server, &node);
}

#[test]
fn retry_after_of_429_and_503_is_honoured() {
    if !root_or_skip() {
        return;
    }
    let server = ApiServer::start();
    server.fail_next(1, 429, Some(2), Some("/api/v1/nodes"));
    server.fail_next(1, 503, Some(1), Some("/leases"));
    let mut node = node_with_api(&server, None);
    node.start();
    registered(&server, &node);
    assert!(server.wait_for(WAIT, |s| s.count("PUT", "/leases/")
        + s.count("POST", "/leases")
        >= 2));
    let requests = server.requests();
    let gap = |path: &str, refused: u16| {
        let i = requests
            .iter()
            .position(|r| r.path.contains(path) && r.status == refused)
            .unwrap();
        let next = requests[i + 1..]
            .iter()
            .find(|r| r.path.contains(path))
            .unwrap();
        next.at.duration_since(requests[i].at)
    };
    assert!(
        gap("/api/v1/nodes", 429) >= Duration::from_secs(2),
        "the node create was retried before Retry-After"
    );
    assert!(
        gap("/leases", 503) >= Duration::from_secs(1),
        "the lease was retried before Retry-After"
    );
}

#[test]
fn container_starts_become_events_and_repeats_count_up() {
    if !root_or_skip() {
        return;
    }
    let server = ApiServer::start();
    let mut node = node_with_api(&server, None);
    node.write_manifest("flaky.yaml", &pod_yaml("flaky", "sleep 1; exit 1", ""));
    node.start();
    let pod_name = format!("flaky-{}", node.name);
    assert!(
        server.wait_for(Duration::from_secs(120), |s| s.requests.iter().any(|r| r
            .method
            == "PATCH"
            && r.path.contains("/events/")
            && r.body["message"] == "Started container app"
            && r.body["count"] == 2)),
        "{}",
        node.agent_log()
    );
    let requests = server.requests();
    let created = requests
        .iter()
        .find(|r| {
            r.method == "POST"
                && r.path == "/api/v1/namespaces/default/events"
                && r.body["reason"] == "Started"
        })
        .unwrap();
    assert_eq!(created.status, 201);
    let event = &created.body;
    assert_eq!(event["reason"], "Started");
    assert_eq!(event["message"], "Started container app");
    assert_eq!(event["involvedObject"]["name"], pod_name.as_str());
    assert_eq!(event["involvedObject"]["fieldPath"], "spec.containers{app}");
    assert_eq!(event["source"]["host"], node.name.as_str());
    let name = event["metadata"]["name"].as_str().unwrap();
    let stored = server.get("events", Some("default"), name).unwrap();
    assert!(stored["count"].as_u64().unwrap() >= 2, "{stored}");
}
