//! ConfigMaps, Secrets, service account tokens and imagePullSecrets of pods from the API server,
//! end to end, as root, with real runc, the fake API server (tests/common/apiserver.rs) and,
//! for pull secrets, the real docker-registry with htpasswd on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::apiserver::ApiServer;
use common::cluster::{api_pod_with, joined};
use common::{Node, root_or_skip};
use nanolet::pod::status::{ContainerState, PodStatus, Snapshot};
use serde_json::{Value, json};

const MINUTE: Duration = Duration::from_secs(60);

/// A pod bound to `node` with one busybox container `app` running `script`, plus `spec` and
/// `container` fields.
fn api_pod(name: &str, node: &str, script: &str, spec: Value, container: Value) -> Value {
    api_pod_with(name, node, script, 0, &spec, &container)
}

fn config_map(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}

fn secret(name: &str, kind: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": kind, "data": data})
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The local status of the API pod `name`.
fn api_pod_status<'a>(s: &'a Snapshot, name: &str) -> Option<&'a PodStatus> {
    s.pods.iter().find(|p| p.name == name && p.source == "api")
}

/// The text the container wrote (all attempts), without the CRI prefixes.
fn output(node: &Node, pod: &PodStatus, container: &str) -> String {
    let mut text = String::new();
    for attempt in 0..40 {
        let Ok(log) = fs::read_to_string(node.log_path(pod, container, attempt)) else {
            continue;
        };
        for line in log.lines() {
            text.push_str(line.splitn(4, ' ').nth(3).unwrap_or(""));
            text.push('\n');
        }
    }
    text
}

fn wait_output(node: &Node, name: &str, want: &str) -> String {
    let last = std::cell::RefCell::new(String::new());
    let _show = Show(&last);
    node.wait_for(&format!("{name} to print {want:?}"), MINUTE, |s| {
        let pod = api_pod_status(s, name)?;
        let out = output(node, pod, "app");
        if !out.contains(want) {
            // Shown when the wait times out.
            *last.borrow_mut() = out.lines().last().unwrap_or_default().to_string();
        }
        out.contains(want).then_some(out)
    })
}

/// Prints the last line a container wrote when a wait for its output fails.
struct Show<'a>(&'a std::cell::RefCell<String>);

impl Drop for Show<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("last line of output: {}", self.0.borrow());
        }
    }
}

/// Waits until the container of `name` waits with `want_reason` and a message containing
/// `want`; returns the message.
fn wait_waiting(node: &Node, name: &str, want_reason: &str, want: &str) -> String {
    node.wait_for(
        &format!("{name} waiting with {want_reason}: {want}"),
        MINUTE,
        |s| match &api_pod_status(s, name)?.container_statuses.first()?.state {
            ContainerState::Waiting { reason, message }
                if reason == want_reason && message.contains(want) =>
            {
                Some(message.clone())
            }
            _ => None,
        },
    )
}

/// Waits until the agent now running (restarted) has restarted the container of API pod `name`
/// `more` times.
fn wait_restarts_under_new_agent(node: &Node, name: &str, more: u32) {
    let restarts =
        |s: &Snapshot| api_pod_status(s, name).map(|p| p.container_statuses[0].restart_count);
    let before = node.wait_for(&format!("the new agent's view of {name}"), MINUTE, |s| {
        (Some(s.agent_pid as u32) == node.agent_pid())
            .then(|| restarts(s))
            .flatten()
    });
    node.wait_for(
        &format!("{name} restarting {more} more times"),
        MINUTE,
        |s| (restarts(s)? >= before + more).then_some(()),
    );
}

#[test]
fn config_maps_secrets_and_tokens_from_the_api_fill_volumes_and_env_and_follow_edits() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("syncFrequency: 1s\n");
    let mut cm = config_map("settings", json!({"color": "blue"}));
    cm["binaryData"] = json!({"blob.bin": "AP8="});
    api.create("configmaps", Some("default"), cm);
    api.create(
        "configmaps",
        Some("default"),
        config_map("kube-root-ca.crt", json!({"ca.crt": "CA-PEM"})),
    );
    api.create(
        "secrets",
        Some("default"),
        secret("creds", "Opaque", json!({"password": b64("hunter2")})),
    );
    // The default kube-api-access-* shape: token, the root CA, the namespace.
    let volumes = json!([
        {"name": "cfg", "configMap": {"name": "settings"}},
        {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 256}},
        {"name": "kube-api-access-x1y2z", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}},
        {"name": "vault", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "vault-token"}}
        ]}}
    ]);
    api.create(
        "serviceaccounts",
        Some("default"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}}),
    );
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        "while true; do echo \"color=$(cat /cfg/color) env=$COLOR pw=$password sec=$(cat /sec/password) \
         blob=$(od -An -tx1 /cfg/blob.bin | tr -d ' ') mode=$(stat -L -c %a /sec/password) \
         token=$(cat {sa}/token) ca=$(cat {sa}/ca.crt) ns=$(cat {sa}/namespace) vault=$(cat /vault/vault-token)\"; \
         sleep 0.3; done"
    );
    let created = api.create_pod(api_pod(
            "reader",
            &node.name,
            &script,
            json!({"volumes": volumes, "serviceAccountName": "robot"}),
            json!({
                "env": [{"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "color"}}}],
                "envFrom": [{"secretRef": {"name": "creds"}, "prefix": ""}],
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/cfg"},
                    {"name": "sec", "mountPath": "/sec"},
                    {"name": "kube-api-access-x1y2z", "mountPath": sa, "readOnly": true},
                    {"name": "vault", "mountPath": "/vault"}
                ]
            }),
        ));
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    node.start();
    let out = wait_output(
        &node,
        "reader",
        "color=blue env=blue pw=hunter2 sec=hunter2 blob=00ff mode=400 token=fake-token.robot.",
    );
    let line = out.lines().rev().find(|l| l.contains("token=")).unwrap();
    assert!(
        line.contains(" ca=CA-PEM ns=default vault=fake-token.robot."),
        "{line}"
    );

    // The TokenRequests: bound to the pod, with each projection's audience and lifetime.
    let token_requests: Vec<Value> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/serviceaccounts/robot/token"))
        .map(|r| r.body)
        .collect();
    assert!(token_requests.len() >= 2, "{token_requests:?}");
    for body in &token_requests {
        assert_eq!(body["kind"], "TokenRequest");
        assert_eq!(body["spec"]["boundObjectRef"]["kind"], "Pod");
        assert_eq!(body["spec"]["boundObjectRef"]["name"], "reader");
        assert_eq!(body["spec"]["boundObjectRef"]["uid"], uid.as_str());
    }
    assert!(token_requests.iter().any(|b| b["spec"]["expirationSeconds"] == 3607
        && b["spec"].get("audiences").is_none()));
    assert!(token_requests.iter().any(
        |b| b["spec"]["expirationSeconds"] == 600 && b["spec"]["audiences"] == json!(["vault"])
    ));

    // Edits reach the running pod's volumes at the next sync; env stays as started (kubelet).
    api.patch(
        "configmaps",
        Some("default"),
        "settings",
        json!({"data": {"color": "green"}}),
    );
    api.patch(
        "secrets",
        Some("default"),
        "creds",
        json!({"data": {"password": b64("correct-horse")}}),
    );
    wait_output(
        &node,
        "reader",
        "color=green env=blue pw=hunter2 sec=correct-horse",
    );

    // The copies kept for outages are in a folder only root can enter.
    let kept = node.path("state/data/api-objects");
    let mode = fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let copy_path = kept.join("secrets/default_creds.json");
    let mode = fs::metadata(&copy_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let copy = fs::read_to_string(&copy_path).unwrap();
    assert!(copy.contains(&b64("correct-horse")), "{copy}");

    // The pod goes: its tokens' copies go with it.
    api.delete("pods", Some("default"), "reader");
    assert!(api.wait_for(MINUTE, |s| {
        s.object("pods", Some("default"), "reader").is_none()
    }));
    node.wait_for("the reader's tokens gone", MINUTE, |_| {
        fs::read_dir(kept.join("tokens"))
            .map_or(true, |mut d| d.next().is_none())
            .then_some(())
    });
}

#[test]
fn missing_objects_and_keys_block_the_pod_with_kubelets_messages_until_they_appear() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("syncFrequency: 1s\n");
    let node_name = node.name.clone();
    let pod = |name: &str, script: &str, spec: Value, container: Value| {
        api.create_pod(api_pod(name, &node_name, script, spec, container));
    };
    pod(
        "late-env",
        "echo mode=$MODE; exec sleep 1000",
        json!({}),
        json!({"envFrom": [{"configMapRef": {"name": "late"}}]}),
    );
    pod(
        "late-key",
        "echo token=$TOKEN; exec sleep 1000",
        json!({}),
        json!({"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late-secret", "key": "token"}}}]}),
    );
    pod(
        "late-volume",
        "until [ -f /s/token ]; do sleep 0.2; done; cat /s/token; echo; exec sleep 1000",
        json!({"volumes": [{"name": "s", "secret": {"secretName": "late-secret"}}]}),
        json!({"volumeMounts": [{"name": "s", "mountPath": "/s"}]}),
    );
    pod(
        "optional",
        "echo opt=[$OPT]; ls /o | wc -l; exec sleep 1000",
        json!({"volumes": [{"name": "o", "configMap": {"name": "nowhere", "optional": true}}]}),
        json!({"env": [{"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nowhere", "key": "k", "optional": true}}}],
               "volumeMounts": [{"name": "o", "mountPath": "/o"}]}),
    );
    node.start();
    wait_output(&node, "optional", "opt=[]\n0\n");
    assert_eq!(
        wait_waiting(&node, "late-env", "CreateContainerConfigError", ""),
        "configmap \"late\" not found"
    );
    assert_eq!(
        wait_waiting(&node, "late-key", "CreateContainerConfigError", ""),
        "secret \"late-secret\" not found"
    );
    assert_eq!(
        wait_waiting(&node, "late-volume", "ContainerCreating", "MountVolume"),
        "MountVolume.SetUp failed for volume \"s\" : secret \"late-secret\" not found"
    );
    // Present, without the key the env var names.
    api.create(
        "secrets",
        Some("default"),
        secret("late-secret", "Opaque", json!({"other": b64("x")})),
    );
    assert_eq!(
        wait_waiting(&node, "late-key", "CreateContainerConfigError", "key"),
        "couldn't find key token in Secret default/late-secret"
    );
    api.patch(
        "secrets",
        Some("default"),
        "late-secret",
        json!({"data": {"token": b64("t0k3n")}}),
    );
    api.create(
        "configmaps",
        Some("default"),
        config_map("late", json!({"MODE": "fast"})),
    );
    wait_output(&node, "late-env", "mode=fast");
    wait_output(&node, "late-key", "token=t0k3n");
    wait_output(&node, "late-volume", "t0k3n");
    // A broken pod never held the others up.
    let s = node.snapshot().unwrap();
    assert_eq!(
        api_pod_status(&s, "optional").unwrap().container_statuses[0].restart_count,
        0
    );
}

#[test]
fn a_refused_token_request_keeps_the_pod_creating_and_says_why() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("");
    // Two refusals: the first attempt, and the retry ten seconds later.
    api.fail_next(2, 403, None, Some("/serviceaccounts/default/token"));
    api.create_pod(api_pod(
        "tokened",
        &node.name,
        "cat /t/token; echo; exec sleep 1000",
        json!({"volumes": [{"name": "t", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token"}}]}}]}),
        json!({"volumeMounts": [{"name": "t", "mountPath": "/t"}]}),
    ));
    node.start();
    let message = wait_waiting(&node, "tokened", "ContainerCreating", "MountVolume");
    assert!(
        message.starts_with(
            "MountVolume.SetUp failed for volume \"t\" : failed to fetch token: forbidden: "
        ),
        "{message}"
    );
    // The API server relents: the next try gets a token and the pod starts.
    wait_output(&node, "tokened", "fake-token.default.");
}

#[test]
fn last_known_objects_serve_a_restarting_container_through_an_outage_and_an_agent_restart() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("syncFrequency: 1s\n");
    api.create(
        "configmaps",
        Some("default"),
        config_map("edge", json!({"site": "north"})),
    );
    // Exits after printing: every restart reads the env and the volume again.
    api.create_pod(api_pod(
            "blinker",
            &node.name,
            "echo site=$SITE file=$(cat /c/site); sleep 1; exit 1",
            json!({"volumes": [{"name": "c", "configMap": {"name": "edge"}}]}),
            json!({"env": [{"name": "SITE", "valueFrom": {"configMapKeyRef": {"name": "edge", "key": "site"}}}],
                   "volumeMounts": [{"name": "c", "mountPath": "/c"}]}),
        ));
    node.start();
    wait_output(&node, "blinker", "site=north file=north");
    api.go_down();
    node.stop_agent();
    node.start();
    wait_restarts_under_new_agent(&node, "blinker", 2);
    let s = node.snapshot().unwrap();
    let out = output(&node, api_pod_status(&s, "blinker").unwrap(), "app");
    let last = out.lines().rev().find(|l| l.starts_with("site=")).unwrap();
    assert_eq!(last, "site=north file=north", "{out}");
    let state = &api_pod_status(&s, "blinker").unwrap().container_statuses[0];
    assert!(
        !matches!(&state.state, ContainerState::Waiting { reason, .. } if reason == "CreateContainerConfigError"),
        "{state:?}"
    );
    api.come_back();
}

#[test]
fn image_pull_secrets_from_the_api_authenticate_pulls_and_unusable_ones_are_named() {
    if !root_or_skip() || !common::registry::tools_or_skip() {
        return;
    }
    let registry = common::registry::RealRegistry::start(Some(("alice", "s3cret")));
    registry.push(
        common::busybox_layout(),
        "busybox:latest",
        "private/busybox",
        "1.0",
        Some("alice:s3cret"),
    );
    let image = format!("{}/private/busybox:1.0", registry.host());
    let api = ApiServer::start();
    let mut node = Node::without_images("");
    api.write_kubeconfig(node.dir.path(), None);
    // The node's own config.json has the wrong password: the pod's secret must win.
    fs::write(
        node.path("config.json"),
        json!({"auths": {registry.host(): {"auth": b64("alice:wrong")}}}).to_string(),
    )
    .unwrap();
    let auths = json!({"auths": {registry.host(): {"auth": b64("alice:s3cret")}}});
    api.create(
        "secrets",
        Some("default"),
        secret(
            "regcred",
            "kubernetes.io/dockerconfigjson",
            json!({".dockerconfigjson": b64(&auths.to_string())}),
        ),
    );
    api.create(
        "secrets",
        Some("default"),
        secret(
            "plain",
            "Opaque",
            json!({".dockerconfigjson": b64(&auths.to_string())}),
        ),
    );
    let node_name = node.name.clone();
    let with = |name: &str, secrets: Value| {
        let mut pod = api_pod(
            name,
            &node_name,
            "echo pulled; exec sleep 1000",
            json!({"imagePullSecrets": secrets}),
            json!({"image": image, "imagePullPolicy": "Always"}),
        );
        pod["metadata"]["name"] = json!(name);
        api.create_pod(pod);
    };
    with("wrong-type", json!([{"name": "plain"}, {"name": "absent"}]));
    node.start();
    let message =
        node.wait_for(
            "wrong-type refused by the registry",
            MINUTE,
            |s| match &api_pod_status(s, "wrong-type")?
                .container_statuses
                .first()?
                .state
            {
                ContainerState::Waiting { reason, message }
                    if (reason == "ErrImagePull" || reason == "ImagePullBackOff")
                        && message.contains("401") =>
                {
                    Some(message.clone())
                }
                _ => None,
            },
        );
    assert!(
        message.contains("credentials from config.json refused")
            && message.contains("imagePullSecrets: secret \"plain\" is of type \"Opaque\"")
            && message.contains("imagePullSecrets: secret \"absent\" not found"),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
    with("good", json!([{"name": "absent"}, {"name": "regcred"}]));
    wait_output(&node, "good", "pulled");
    // kubelet's warning names the secrets it could not retrieve; "plain" was retrieved (it is
    // only of another type) and the pull went on with "regcred".
    for pod in ["wrong-type", "good"] {
        let event = api
            .wait_event("default", pod, "FailedToRetrieveImagePullSecret", MINUTE)
            .expect("a FailedToRetrieveImagePullSecret event");
        assert_eq!(
            event["message"],
            "Unable to retrieve some image pull secrets (absent); attempting to pull the image may not succeed.",
            "{pod}"
        );
    }
    assert!(
        !node.agent_log().contains("s3cret"),
        "a password leaked into the agent log"
    );
}

fn service_account(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
}

#[test]
fn a_missing_service_account_keeps_its_pod_creating_with_kubelets_failed_mount_and_others_run() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("");
    let node_name = node.name.clone();
    // The default kube-api-access-* volume, for a ServiceAccount nobody created.
    let access = json!({"volumes": [{"name": "kube-api-access-g7x2p", "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
        "serviceAccountName": "ghost"});
    api.create_pod(api_pod(
        "haunted",
        &node_name,
        "cat /t/token; echo; exec sleep 1000",
        access,
        json!({"volumeMounts": [{"name": "kube-api-access-g7x2p", "mountPath": "/t"}]}),
    ));
    // A neighbour with an imagePullSecret that does not exist (its image is present).
    api.create_pod(api_pod(
        "steady",
        &node_name,
        "echo up; exec sleep 1000",
        json!({"imagePullSecrets": [{"name": "nowhere"}]}),
        json!({}),
    ));
    node.start();
    let want = "MountVolume.SetUp failed for volume \"kube-api-access-g7x2p\" : \
                failed to fetch token: serviceaccounts \"ghost\" not found";
    assert_eq!(
        wait_waiting(&node, "haunted", "ContainerCreating", "MountVolume"),
        want
    );
    let event = api
        .wait_event("default", "haunted", "FailedMount", MINUTE)
        .expect("a FailedMount event");
    assert_eq!(
        (&event["type"], &event["message"]),
        (&json!("Warning"), &json!(want))
    );
    assert_eq!(event["involvedObject"]["fieldPath"], Value::Null);
    // Asked again (and refused with the API server's NotFound) while it waits.
    // (`wait_for` holds the fake's lock: the condition reads the state it is given.)
    let refused = api.wait_for(MINUTE, |s| {
        let posts = s
            .requests
            .iter()
            .filter(|r| r.path.ends_with("/serviceaccounts/ghost/token") && r.status == 404);
        posts.count() >= 2
    });
    assert!(refused, "the token request was not asked again");
    let s = node.snapshot().unwrap();
    let phase = &api_pod_status(&s, "haunted").unwrap().phase;
    assert_eq!(format!("{phase:?}"), "Pending");

    // kubelet's event for the missing pull secret; the pod runs without it.
    wait_output(&node, "steady", "up");
    let event = api
        .wait_event(
            "default",
            "steady",
            "FailedToRetrieveImagePullSecret",
            MINUTE,
        )
        .expect("a FailedToRetrieveImagePullSecret event");
    assert_eq!(
        event["message"],
        "Unable to retrieve some image pull secrets (nowhere); attempting to pull the image may not succeed."
    );
    assert_eq!(event["type"], "Warning");

    // The ServiceAccount appears: the next try gets a token and the pod starts.
    api.create("serviceaccounts", Some("default"), service_account("ghost"));
    wait_output(&node, "haunted", "fake-token.ghost.");
    let s = node.snapshot().unwrap();
    let steady = &api_pod_status(&s, "steady").unwrap().container_statuses[0];
    assert!(
        steady.restart_count == 0 && matches!(steady.state, ContainerState::Running { .. }),
        "the neighbour was disturbed: {steady:?}"
    );
}

/// GETs of `namespace/name` in `resource` the fake answered.
fn gets(api: &ApiServer, resource: &str, name: &str) -> usize {
    let path = format!("/api/v1/namespaces/default/{resource}/{name}");
    api.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .count()
}

#[test]
fn pods_starting_together_fetch_a_shared_object_once() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("syncFrequency: 10m\n");
    api.create(
        "configmaps",
        Some("default"),
        config_map("shared", json!({"greeting": "hello"})),
    );
    // Slow enough that every pod needs the ConfigMap while the first GET is under way.
    api.faults(|f| {
        f.slow
            .push(("/configmaps/shared".into(), Duration::from_secs(2)))
    });
    for name in ["one", "two", "three"] {
        api.create_pod(api_pod(
                name,
                &node.name,
                "echo greeting=$GREETING; exec sleep 1000",
                json!({}),
                json!({"env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "shared", "key": "greeting"}}}]}),
            ));
    }
    node.start();
    for name in ["one", "two", "three"] {
        wait_output(&node, name, "greeting=hello");
    }
    assert_eq!(
        gets(&api, "configmaps", "shared"),
        1,
        "one GET for three pods"
    );
}

/// The kept copy of a ConfigMap or Secret.
fn copy_of(node: &Node, folder: &str, name: &str) -> std::path::PathBuf {
    node.path(&format!(
        "state/data/api-objects/{folder}/default_{name}.json"
    ))
}

#[test]
fn copies_no_pod_references_are_pruned_and_a_stored_pods_survive_a_restart_offline() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("");
    api.create(
        "configmaps",
        Some("default"),
        config_map("only-a", json!({"k": "a"})),
    );
    api.create(
        "secrets",
        Some("default"),
        secret("both", "Opaque", json!({"k": b64("b")})),
    );
    let env = |cm: Option<&str>| {
        let mut from = vec![json!({"secretRef": {"name": "both"}, "prefix": "S_"})];
        if let Some(cm) = cm {
            from.push(json!({"configMapRef": {"name": cm}, "prefix": "C_"}));
        }
        json!({"envFrom": from})
    };
    let node_name = node.name.clone();
    for (name, cm) in [("a", Some("only-a")), ("b", None)] {
        api.create_pod(api_pod(
            name,
            &node_name,
            "echo s=$S_k c=$C_k; sleep 1; exit 1",
            json!({}),
            env(cm),
        ));
    }
    node.start();
    wait_output(&node, "a", "s=b c=a");
    wait_output(&node, "b", "s=b c=");
    assert!(copy_of(&node, "configmaps", "only-a").exists());
    assert!(copy_of(&node, "secrets", "both").exists());

    // Pod a goes: the ConfigMap only it used goes; the Secret b still uses stays.
    api.delete("pods", Some("default"), "a");
    node.wait_for("the copy of only-a removed", MINUTE, |_| {
        (!copy_of(&node, "configmaps", "only-a").exists()).then_some(())
    });
    assert!(copy_of(&node, "secrets", "both").exists());

    // A copy left behind (its pod went while nanolet was away) goes at the next start, even
    // without the API server; the stored pod's copy stays and serves its restarts.
    let stale = copy_of(&node, "secrets", "left-behind");
    fs::write(&stale, "{}").unwrap();
    api.go_down();
    node.stop_agent();
    node.start();
    node.wait_for("the stale copy removed at start", MINUTE, |_| {
        (!stale.exists()).then_some(())
    });
    wait_restarts_under_new_agent(&node, "b", 2);
    assert!(copy_of(&node, "secrets", "both").exists());
    let s = node.snapshot().unwrap();
    let out = output(&node, api_pod_status(&s, "b").unwrap(), "app");
    let last = out.lines().rev().find(|l| l.starts_with("s=")).unwrap();
    assert_eq!(last, "s=b c=", "{out}");
    api.come_back();
}

#[test]
fn a_config_map_deleted_under_a_running_pod_is_a_failed_mount_and_the_pod_runs_on() {
    if !root_or_skip() {
        return;
    }
    let (mut node, api) = joined("syncFrequency: 1s\n");
    api.create(
        "configmaps",
        Some("default"),
        config_map("fleeting", json!({"mode": "on"})),
    );
    api.create_pod(api_pod(
        "holder",
        &node.name,
        "while true; do echo mode=$(cat /c/mode); sleep 0.3; done",
        json!({"volumes": [{"name": "c", "configMap": {"name": "fleeting"}}]}),
        json!({"volumeMounts": [{"name": "c", "mountPath": "/c"}]}),
    ));
    node.start();
    wait_output(&node, "holder", "mode=on");
    api.delete("configmaps", Some("default"), "fleeting");
    let event = api
        .wait_event("default", "holder", "FailedMount", MINUTE)
        .expect("a FailedMount event");
    assert_eq!(
        event["message"],
        "MountVolume.SetUp failed for volume \"c\" : configmap \"fleeting\" not found"
    );
    // The container runs on with the last contents it had.
    let before = node.snapshot().unwrap();
    let before = api_pod_status(&before, "holder").unwrap().clone();
    let lines_then = output(&node, &before, "app").lines().count();
    let out = node.wait_for("three more lines", MINUTE, |s| {
        let out = output(&node, api_pod_status(s, "holder")?, "app");
        (out.lines().count() >= lines_then + 3).then_some(out)
    });
    let tail: Vec<&str> = out.lines().skip(lines_then).collect();
    assert!(tail.iter().all(|l| *l == "mode=on"), "{tail:?}");
    let s = node.snapshot().unwrap();
    let now = &api_pod_status(&s, "holder").unwrap().container_statuses[0];
    assert_eq!(now.restart_count, 0);
    assert_eq!(
        now.container_id, before.container_statuses[0].container_id,
        "the container was replaced"
    );
}
