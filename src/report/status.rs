//! A pod's status as the API server wants it: the body of `PATCH .../pods/NAME/status`.
//!
//! Built from what the pod worker publishes on the board ([`PodStatus`]) plus what only the
//! node knows (host IP, pod IP) and what follows from the spec (QoS class). The body is a
//! strategic merge patch, as kubelet sends (transcript 12): `metadata.uid` makes it apply only
//! to the pod that has this UID (a pod deleted and recreated under the same name answers 422),
//! `conditions` merge by `type`, the container status lists are replaced whole.
//!
//! Pure: no clock (times are in the status), no I/O.

use serde_json::{Map, Value, json};

pub use crate::api::time::format_unix_time as rfc3339;
use crate::k8s::Pod;
use crate::pod::status::{ContainerState, ContainerStatus, PodStatus, Terminated};

/// What the node adds to a pod's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's address as the API server sees it (the local end of the API connection);
    /// used when the pod worker has none of its own.
    pub host_ip: Option<String>,
}

/// The pod's QoS class, as the API server computes it (the same rules the pod worker uses for
/// its cgroups: [`crate::pod::resources`]). A pod whose quantities do not parse runs nothing
/// and reports `BestEffort`.
pub fn qos_class(pod: &Pod) -> &'static str {
    crate::pod::resources::PodResources::of(pod, -1).map_or("BestEffort", |r| r.qos.as_str())
}

/// The PATCH body for `status` of the pod it names.
pub fn status_patch(status: &PodStatus, qos_class: &str, node: &NodeFacts) -> Value {
    let mut s = Map::new();
    s.insert("phase".into(), json!(format!("{:?}", status.phase)));
    if !status.reason.is_empty() {
        s.insert("reason".into(), json!(status.reason));
    }
    if !status.message.is_empty() {
        s.insert("message".into(), json!(status.message));
    }
    // The worker's own view of the addresses wins; the node's facts fill what it lacks.
    let host_ip = (!status.host_ip.is_empty())
        .then(|| status.host_ip.clone())
        .or_else(|| node.host_ip.clone());
    // The pod's own address once its sandbox has one; a hostNetwork pod has the node's.
    let pod_ip = if !status.pod_ip.is_empty() {
        Some(status.pod_ip.clone())
    } else if status.host_network {
        host_ip.clone()
    } else {
        None
    };
    if let Some(ip) = &host_ip {
        s.insert("hostIP".into(), json!(ip));
        s.insert("hostIPs".into(), json!([{ "ip": ip }]));
    }
    if let Some(ip) = pod_ip {
        let ips: Vec<Value> = if status.pod_ips.is_empty() {
            vec![json!({ "ip": ip })]
        } else {
            status
                .pod_ips
                .iter()
                .map(|p| json!({ "ip": p.ip }))
                .collect()
        };
        s.insert("podIP".into(), json!(ip));
        s.insert("podIPs".into(), Value::Array(ips));
    }
    if let Some(t) = status.start_time {
        s.insert("startTime".into(), json!(rfc3339(t)));
    }
    let conditions: Vec<Value> = status
        .conditions
        .iter()
        .map(|c| {
            json!({
                "type": c.kind,
                "status": c.status,
                "lastProbeTime": null,
                "lastTransitionTime": rfc3339(c.last_transition_time),
            })
        })
        .collect();
    s.insert("conditions".into(), Value::Array(conditions));
    let qos_class = if status.qos_class.is_empty() {
        qos_class
    } else {
        status.qos_class.as_str()
    };
    s.insert("qosClass".into(), json!(qos_class));
    s.insert(
        "initContainerStatuses".into(),
        status
            .init_container_statuses
            .iter()
            .map(container_status)
            .collect(),
    );
    s.insert(
        "containerStatuses".into(),
        status
            .container_statuses
            .iter()
            .map(container_status)
            .collect(),
    );
    json!({ "metadata": { "uid": status.uid }, "status": s })
}

/// `runc://<id>`, the runtime-prefixed form kubectl shows.
fn container_id(id: &str) -> String {
    if id.is_empty() || id.contains("://") {
        id.to_string()
    } else {
        format!("runc://{id}")
    }
}

fn container_status(c: &ContainerStatus) -> Value {
    let mut v = Map::new();
    v.insert("name".into(), json!(c.name));
    v.insert("state".into(), state(&c.state));
    v.insert(
        "lastState".into(),
        c.last_state
            .as_ref()
            .map_or(json!({}), |t| json!({ "terminated": terminated(t) })),
    );
    v.insert("ready".into(), json!(c.ready));
    v.insert("restartCount".into(), json!(c.restart_count));
    v.insert("image".into(), json!(c.image));
    v.insert("imageID".into(), json!(c.image_id));
    if !c.container_id.is_empty() {
        v.insert("containerID".into(), json!(container_id(&c.container_id)));
    }
    v.insert("started".into(), json!(c.started));
    Value::Object(v)
}

fn state(s: &ContainerState) -> Value {
    match s {
        ContainerState::Waiting { reason, message } => {
            let mut w = Map::new();
            w.insert("reason".into(), json!(reason));
            if !message.is_empty() {
                w.insert("message".into(), json!(message));
            }
            json!({ "waiting": w })
        }
        ContainerState::Running { started_at } => {
            json!({ "running": { "startedAt": rfc3339(*started_at) } })
        }
        ContainerState::Terminated(t) => json!({ "terminated": terminated(t) }),
    }
}

fn terminated(t: &Terminated) -> Value {
    let mut v = Map::new();
    v.insert("exitCode".into(), json!(t.exit_code));
    if let Some(signal) = t.signal {
        v.insert("signal".into(), json!(signal));
    }
    v.insert("reason".into(), json!(t.reason));
    if !t.message.is_empty() {
        v.insert("message".into(), json!(t.message));
    }
    if let Some(started) = t.started_at {
        v.insert("startedAt".into(), json!(rfc3339(started)));
    }
    v.insert("finishedAt".into(), json!(rfc3339(t.finished_at)));
    if !t.container_id.is_empty() {
        v.insert("containerID".into(), json!(container_id(&t.container_id)));
    }
    Value::Object(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::pod::status::{Condition, Phase};
    use crate::source::api::watcher::tests::{request_and_body, transcript};

    const T: i64 = 1_795_830_567; // 2026-11-28T01:49:27Z

    fn running() -> PodStatus {
        let mut web = ContainerStatus::new("web", "registry.local:5000/busybox:1.35");
        web.state = ContainerState::Running { started_at: T };
        web.ready = true;
        web.started = true;
        web.image_id = "registry.local:5000/busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000".into();
        web.container_id = "0123456789abcdef".into();
        let condition = |kind: &str| Condition {
            kind: kind.into(),
            status: "True".into(),
            last_transition_time: T,
        };
        PodStatus {
            namespace: "default".into(),
            name: "web".into(),
            uid: "f2d20477-d000-47cc-8811-2599893e2222".into(),
            source: "api".into(),
            phase: Phase::Running,
            reason: String::new(),
            message: String::new(),
            start_time: Some(T),
            conditions: ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
                .map(condition)
                .to_vec(),
            init_container_statuses: vec![],
            container_statuses: vec![web],
            host_network: false,
            terminating: false,
            qos_class: String::new(),
            pod_ip: String::new(),
            pod_ips: Vec::new(),
            host_ip: String::new(),
        }
    }

    #[test]
    fn the_patch_carries_what_the_recorded_kubelet_patch_carries() {
        let (request, body) = {
            let text = transcript("12-pod-status-patch-running.http");
            let body = text
                .lines()
                .skip_while(|l| *l != "### request body:")
                .nth(1)
                .unwrap()
                .to_string();
            (request_and_body(&text).0, body)
        };
        assert_eq!(request, "PATCH /api/v1/namespaces/default/pods/web/status");
        let recorded: Value = serde_json::from_str(&body).unwrap();
        let facts = NodeFacts {
            host_ip: Some("192.0.2.10".into()),
        };
        let mut status = running();
        status.pod_ip = "10.88.0.5".into();
        let ours = status_patch(&status, "BestEffort", &facts);
        // Every field the recorded patch sets, ours sets to the same value.
        for pointer in [
            "/metadata/uid",
            "/status/phase",
            "/status/hostIP",
            "/status/podIP",
            "/status/podIPs",
            "/status/startTime",
            "/status/containerStatuses/0/name",
            "/status/containerStatuses/0/ready",
            "/status/containerStatuses/0/restartCount",
            "/status/containerStatuses/0/started",
            "/status/containerStatuses/0/image",
            "/status/containerStatuses/0/imageID",
            "/status/containerStatuses/0/containerID",
            "/status/containerStatuses/0/state",
        ] {
            assert_eq!(
                ours.pointer(pointer),
                recorded.pointer(pointer),
                "{pointer}"
            );
        }
        for (i, c) in recorded["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let mine = &ours["status"]["conditions"][i];
            for key in ["type", "status", "lastTransitionTime"] {
                assert_eq!(mine[key], c[key], "condition {i} {key}");
            }
        }
        assert_eq!(ours["status"]["qosClass"], "BestEffort");
    }

    #[test]
    fn terminated_and_waiting_states_and_host_network() {
        let mut status = running();
        status.host_network = true;
        let c = &mut status.container_statuses[0];
        let t = Terminated {
            exit_code: 137,
            signal: Some(9),
            reason: "Error".into(),
            message: String::new(),
            started_at: Some(T - 60),
            finished_at: T,
            container_id: "old".into(),
        };
        c.state = ContainerState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: "back-off 10s".into(),
        };
        c.last_state = Some(t);
        c.restart_count = 3;
        let facts = NodeFacts {
            host_ip: Some("192.0.2.10".into()),
        };
        let p = status_patch(&status, "Burstable", &facts);
        let cs = &p["status"]["containerStatuses"][0];
        assert_eq!(cs["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(cs["lastState"]["terminated"]["exitCode"], 137);
        assert_eq!(cs["lastState"]["terminated"]["containerID"], "runc://old");
        assert_eq!(
            cs["lastState"]["terminated"]["startedAt"],
            "2026-11-28T01:48:27Z"
        );
        assert_eq!(cs["restartCount"], 3);
        assert_eq!(
            p["status"]["podIP"], "192.0.2.10",
            "host network: the host IP"
        );
    }

    #[test]
    fn qos_classes() {
        let pod = |resources: Vec<Value>| {
            let containers: Vec<Value> = resources
                .into_iter()
                .enumerate()
                .map(|(i, r)| json!({"name": format!("c{i}"), "image": "x", "resources": r}))
                .collect();
            crate::k8s::decode_pod(json!({"spec": {"containers": containers}})).unwrap()
        };
        let full = json!({"limits": {"cpu": "1", "memory": "1Gi"}});
        let cases = [
            (vec![json!({})], "BestEffort"),
            (vec![json!({}), json!({})], "BestEffort"),
            (vec![full.clone()], "Guaranteed"),
            (
                vec![
                    json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
                ],
                "Guaranteed",
            ),
            (vec![full.clone(), json!({})], "Burstable"),
            (vec![json!({"requests": {"memory": "1Gi"}})], "Burstable"),
            (
                vec![
                    json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
                ],
                "Burstable",
            ),
        ];
        for (resources, want) in cases {
            assert_eq!(qos_class(&pod(resources.clone())), want, "{resources:?}");
        }
    }

    #[test]
    fn times_are_rfc3339_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(T), "2026-11-28T01:49:27Z");
    }
}
