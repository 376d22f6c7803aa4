//! Volumes and environment end to end, as root, with real runc: every behaviour is observed
//! from inside the container (its output in the CRI log) and from the host (mounts, folders).
//! See `tests/common/mod.rs` for the test node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::{Node, root_or_skip};
use nanolet::pod::status::{ContainerState, PodStatus};
use serde_json::{Value, json};

const MINUTE: Duration = Duration::from_secs(60);

/// A busybox container running `script` under `sh -c`, with `extra` fields merged in.
fn container(name: &str, script: &str, extra: Value) -> Value {
    let mut c = json!({"name": name, "image": "busybox:latest", "imagePullPolicy": "Never",
                       "command": ["sh", "-c", script]});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c
}

fn pod(name: &str, volumes: Value, containers: Value, extra_spec: Value) -> String {
    let mut spec = json!({"volumes": volumes, "containers": containers,
                          "terminationGracePeriodSeconds": 1});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        s.extend(extra.clone());
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"app": name, "tier": "edge"}, "annotations": {"note": "hi"}},
           "spec": spec})
    .to_string()
}

/// The text a container wrote (all attempts), without the CRI prefixes.
fn output(node: &Node, pod: &PodStatus, container: &str) -> String {
    let mut text = String::new();
    for attempt in 0..20 {
        let Ok(log) = fs::read_to_string(node.log_path(pod, container, attempt)) else {
            continue;
        };
        for line in log.lines() {
            // <time> <stream> <P|F> <text>
            text.push_str(line.splitn(4, ' ').nth(3).unwrap_or(""));
            text.push('\n');
        }
    }
    text
}

/// Waits until the container's output contains `want`, then returns it.
fn wait_output(node: &Node, name: &str, container: &str, want: &str) -> String {
    node.wait_for(
        &format!("{name}/{container} to print {want:?}"),
        MINUTE,
        |s| {
            let pod = node.pod(s, name)?;
            let out = output(node, pod, container);
            out.contains(want).then_some(out)
        },
    )
}

/// Waits until container 0 of `name` waits with `reason`; returns the message.
fn wait_waiting(node: &Node, name: &str, want_reason: &str) -> String {
    wait_message(node, name, want_reason, "")
}

/// Waits until container 0 of `name` waits with `reason` and a message containing `want`.
fn wait_message(node: &Node, name: &str, want_reason: &str, want: &str) -> String {
    node.wait_for(
        &format!("{name} waiting with {want_reason}: {want}"),
        MINUTE,
        |s| match &node.pod(s, name)?.container_statuses.first()?.state {
            ContainerState::Waiting { reason, message }
                if reason == want_reason && !message.is_empty() && message.contains(want) =>
            {
                Some(message.clone())
            }
            _ => None,
        },
    )
}

fn write(node: &Node, rel: &str, text: &str) {
    let path = node.path(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp~");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, &path).unwrap();
}

/// Removes the pod and checks that nothing of it is left: no mount below the node's folder,
/// no volume folder.
fn remove_and_check_clean(node: &Node, file: &str, name: &str, uid: &str) {
    node.remove_manifest(file);
    node.wait_gone(name);
    assert!(node.mounts().is_empty(), "mounts left: {:?}", node.mounts());
    let volumes: PathBuf = node.path(&format!("state/data/pods/{uid}"));
    assert!(!volumes.exists(), "{} is left", volumes.display());
}

#[test]
fn config_map_secret_downward_api_and_projected_files_with_modes_read_only() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    write(
        &node,
        "configmaps/app.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\ndata:\n  greeting: hello\n  level: debug\nbinaryData:\n  blob: AP8=\n",
    );
    write(
        &node,
        "secrets/db.json",
        r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "type": "Opaque",
            "data": {"password": "aHVudGVyMg=="}, "stringData": {"user": "admin"}}"#,
    );
    let script = "cd /; for f in cfg/greeting cfg/sub/lvl secret/password secret/user info/labels info/name all/greeting all/user all/ns; do echo \"$f: $(cat $f) $(stat -L -c %a $f)\"; done; \
                  echo blob=$(od -An -tx1 /cfg-all/blob); \
                  echo x > /cfg/new 2>/dev/null && echo cfg-writable || echo cfg-read-only; \
                  grep -q ' /secret tmpfs ' /proc/mounts && echo secret-on-tmpfs; \
                  ls -a /cfg | tr '\\n' ' '; echo; echo done; exec sleep 1000";
    node.write_manifest(
        "files.json",
        &pod(
            "files",
            json!([
                {"name": "cfg", "configMap": {"name": "app-config", "defaultMode": 0o600,
                    "items": [{"key": "greeting", "path": "greeting"}, {"key": "level", "path": "sub/lvl", "mode": 0o444}]}},
                {"name": "cfg-all", "configMap": {"name": "app-config"}},
                {"name": "secret", "secret": {"secretName": "db", "defaultMode": 0o400}},
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"name": "all", "projected": {"defaultMode": 0o640, "sources": [
                    {"configMap": {"name": "app-config", "items": [{"key": "greeting", "path": "greeting"}]}},
                    {"secret": {"name": "db", "items": [{"key": "user", "path": "user"}]}},
                    {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}},
            ]),
            json!([container("app", script, json!({"volumeMounts": [
                {"name": "cfg", "mountPath": "/cfg"},
                {"name": "cfg-all", "mountPath": "/cfg-all"},
                {"name": "secret", "mountPath": "/secret"},
                {"name": "info", "mountPath": "/info"},
                {"name": "all", "mountPath": "/all"},
            ]}))]),
            json!({}),
        ),
    );
    node.start();
    let out = wait_output(&node, "files", "app", "done");
    for want in [
        "cfg/greeting: hello 600",
        "cfg/sub/lvl: debug 444",
        "secret/password: hunter2 400",
        "secret/user: admin 400",
        "info/labels: app=\"files\"",
        "tier=\"edge\" 644",
        &format!("info/name: files-{} 644", node.name),
        "all/greeting: hello 640",
        "all/user: admin 640",
        "all/ns: default 640",
        "blob= 00 ff",
        "cfg-read-only",
        "secret-on-tmpfs",
        ". .. ..2",
        "..data greeting sub",
    ] {
        assert!(out.contains(want), "want {want:?} in:\n{out}");
    }
    let pod = node.wait_running("files");
    remove_and_check_clean(&node, "files.json", "files", &pod.uid);
}

#[test]
fn empty_dir_is_shared_between_containers_and_memory_medium_is_a_sized_tmpfs() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    node.write_manifest(
        "shared.json",
        &pod(
            "shared",
            json!([
                {"name": "data", "emptyDir": {}},
                {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
            ]),
            json!([
                container("writer", "echo from-writer > /data/msg; grep ' /mem ' /proc/mounts; echo written; exec sleep 1000",
                    json!({"volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "mem", "mountPath": "/mem"}]})),
                container("reader", "until [ -f /data/msg ]; do sleep 0.1; done; echo got $(cat /data/msg); \
                                     echo x > /data/other 2>/dev/null && echo reader-wrote || echo reader-read-only; \
                                     stat -c %a /data; exec sleep 1000",
                    json!({"volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}]})),
            ]),
            json!({}),
        ),
    );
    node.start();
    let out = wait_output(&node, "shared", "writer", "written");
    assert!(
        out.contains("tmpfs /mem tmpfs") && out.contains("size=8192k"),
        "{out}"
    );
    let out = wait_output(&node, "shared", "reader", "777");
    assert!(out.contains("got from-writer"), "{out}");
    assert!(out.contains("reader-read-only"), "{out}");
    let pod = node.wait_running("shared");
    remove_and_check_clean(&node, "shared.json", "shared", &pod.uid);
}

#[test]
fn host_path_types_are_checked_like_kubelet() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    let host = node.path("host");
    fs::create_dir_all(host.join("dir")).unwrap();
    fs::write(host.join("file"), "from the host\n").unwrap();
    let h = |p: &str| host.join(p).display().to_string();
    // (pod, path, type, expected waiting message or None when it runs)
    let cases: Vec<(&str, String, &str, Option<String>)> = vec![
        ("dir", h("dir"), "Directory", None),
        ("dir-create", h("made/deep"), "DirectoryOrCreate", None),
        ("file", h("file"), "File", None),
        ("file-create", h("made-file"), "FileOrCreate", None),
        ("untyped", h("dir"), "", None),
        ("untyped-missing", h("untyped-new"), "", None),
        ("chardev", "/dev/null".into(), "CharDevice", None),
        (
            "no-dir",
            h("missing"),
            "Directory",
            Some(format!(
                "hostPath type check failed: {} does not exist",
                h("missing")
            )),
        ),
        (
            "no-file",
            h("missing"),
            "File",
            Some(format!(
                "hostPath type check failed: {} does not exist",
                h("missing")
            )),
        ),
        (
            "no-socket",
            h("missing"),
            "Socket",
            Some(format!(
                "hostPath type check failed: {} does not exist",
                h("missing")
            )),
        ),
        (
            "no-chardev",
            h("missing"),
            "CharDevice",
            Some(format!(
                "hostPath type check failed: {} does not exist",
                h("missing")
            )),
        ),
        (
            "no-blockdev",
            h("missing"),
            "BlockDevice",
            Some(format!(
                "hostPath type check failed: {} does not exist",
                h("missing")
            )),
        ),
        (
            "not-dir",
            h("file"),
            "Directory",
            Some(format!(
                "hostPath type check failed: {} is not a directory",
                h("file")
            )),
        ),
        (
            "not-file",
            h("dir"),
            "File",
            Some(format!(
                "hostPath type check failed: {} is not a file",
                h("dir")
            )),
        ),
        (
            "not-socket",
            h("file"),
            "Socket",
            Some(format!(
                "hostPath type check failed: {} is not a socket file",
                h("file")
            )),
        ),
        (
            "not-blockdev",
            "/dev/null".into(),
            "BlockDevice",
            Some("hostPath type check failed: /dev/null is not a block device".into()),
        ),
    ];
    for (name, path, kind, _) in &cases {
        node.write_manifest(
            &format!("{name}.json"),
            &pod(
                name,
                json!([{"name": "h", "hostPath": {"path": path, "type": kind}}]),
                json!([container(
                    "app",
                    "ls -d /h && echo mounted; exec sleep 1000",
                    json!({"volumeMounts": [{"name": "h", "mountPath": "/h"}]})
                )]),
                json!({}),
            ),
        );
    }
    node.start();
    for (name, _, _, want) in &cases {
        match want {
            None => {
                wait_output(&node, name, "app", "mounted");
            }
            Some(want) => {
                let message = wait_waiting(&node, name, "ContainerCreating");
                assert_eq!(
                    message,
                    format!("MountVolume.SetUp failed for volume \"h\" : {want}"),
                    "{name}"
                );
            }
        }
    }
    assert!(host.join("made/deep").is_dir());
    assert!(host.join("made-file").is_file());
    assert!(
        host.join("untyped-new").is_dir(),
        "created as containerd creates it"
    );
    // The folder that appears is picked up on the next retry.
    fs::create_dir(host.join("missing")).unwrap();
    wait_output(&node, "no-dir", "app", "mounted");
}

#[test]
fn sub_paths_stay_inside_their_volume_even_through_symlinks_and_swaps() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    let host = node.path("host");
    fs::create_dir_all(host.join("vol/real")).unwrap();
    fs::write(host.join("vol/real/inside"), "inside\n").unwrap();
    fs::write(host.join("outside-secret"), "host secret\n").unwrap();
    std::os::unix::fs::symlink("/", host.join("vol/to-root")).unwrap();
    std::os::unix::fs::symlink("../outside-secret", host.join("vol/up")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc", host.join("vol/to-etc")).unwrap();
    fs::create_dir_all(host.join("vol/etc/volume-etc")).unwrap();
    let vol = host.join("vol").display().to_string();
    let mounts = json!([
        {"name": "v", "mountPath": "/real", "subPath": "real"},
        {"name": "v", "mountPath": "/root-link", "subPath": "to-root"},
        {"name": "v", "mountPath": "/etc-link", "subPath": "to-etc"},
        {"name": "v", "mountPath": "/made", "subPathExpr": "logs/$(POD)"},
    ]);
    let script = "cat /real/inside; ls /root-link | tr '\\n' ' '; echo; ls /etc-link | tr '\\n' ' '; echo; \
                  echo made > /made/file; echo checked; exec sleep 1000";
    node.write_manifest(
        "sub.json",
        &pod(
            "sub",
            json!([{"name": "v", "hostPath": {"path": vol, "type": "Directory"}}]),
            json!([container("app", script, json!({"volumeMounts": mounts,
                "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}))]),
            json!({}),
        ),
    );
    // `up` points at the host's file from inside the volume: resolved in the volume, it is
    // missing, and the container cannot be configured.
    node.write_manifest(
        "up.json",
        &pod(
            "up",
            json!([{"name": "v", "hostPath": {"path": vol, "type": "Directory"}}]),
            json!([container(
                "app",
                "cat /x; exec sleep 1000",
                json!({"volumeMounts": [{"name": "v", "mountPath": "/x", "subPath": "up"}]})
            )]),
            json!({}),
        ),
    );
    // subPathExpr that expands to `..`: refused.
    node.write_manifest(
        "expr.json",
        &pod(
            "expr",
            json!([{"name": "v", "emptyDir": {}}]),
            json!([container(
                "app",
                "exec sleep 1000",
                json!({
                "env": [{"name": "UP", "value": ".."}],
                "volumeMounts": [{"name": "v", "mountPath": "/x", "subPathExpr": "$(UP)/etc"}]})
            )]),
            json!({}),
        ),
    );
    // A subPath with `..` never gets that far: the manifest is invalid.
    node.write_manifest(
        "dotdot.json",
        &pod(
            "dotdot",
            json!([{"name": "v", "emptyDir": {}}]),
            json!([container(
                "app",
                "true",
                json!({
                "volumeMounts": [{"name": "v", "mountPath": "/x", "subPath": "../../etc"}]})
            )]),
            json!({}),
        ),
    );
    // The attack of CVE-2017-1002101 and CVE-2021-25741: one container keeps swapping a name in
    // a shared volume between a folder and a symlink to `/`; another mounts that name as its
    // subPath and restarts again and again. Whatever it gets, it is inside the volume.
    node.write_manifest(
        "swap.json",
        &pod(
            "swap",
            json!([{"name": "shared", "emptyDir": {}}]),
            json!([
                container("swapper", "cd /shared; i=0; while [ $i -lt 3000 ]; do mkdir d 2>/dev/null; rm -rf s; mv d s 2>/dev/null; ln -sfn / l; mv -T l s 2>/dev/null; i=$((i+1)); done; exec sleep 1000",
                    json!({"volumeMounts": [{"name": "shared", "mountPath": "/shared"}]})),
                container("victim", "if [ -e /x/etc/passwd ] || [ -e /x/proc/1 ]; then echo ESCAPED; else echo contained; fi; exit 1",
                    json!({"volumeMounts": [{"name": "shared", "mountPath": "/x", "subPath": "s"}]})),
            ]),
            json!({}),
        ),
    );
    node.start();
    let out = wait_output(&node, "sub", "app", "checked");
    assert!(out.contains("inside"), "{out}");
    // `/` inside the volume is the volume itself; `../../etc` stays at its root.
    assert!(out.contains("etc logs real to-etc to-root up"), "{out}");
    assert!(out.lines().any(|l| l.trim() == "volume-etc"), "{out}");
    assert!(
        !out.contains("passwd") && !out.contains("host secret"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(host.join(format!("vol/logs/sub-{}/file", node.name))).unwrap(),
        "made\n"
    );
    let message = wait_waiting(&node, "up", "CreateContainerConfigError");
    assert!(
        message.contains("failed to prepare subPath for volumeMount \"v\""),
        "{message}"
    );
    assert_eq!(
        fs::read_to_string(host.join("outside-secret")).unwrap(),
        "host secret\n"
    );
    let message = wait_waiting(&node, "expr", "CreateContainerConfigError");
    assert!(message.contains("must not contain '..'"), "{message}");
    let s = node.wait_for("the dotdot manifest error", MINUTE, |s| {
        s.source_errors
            .iter()
            .find(|e| e.source.ends_with("dotdot.json"))
            .cloned()
    });
    assert!(
        s.error
            .contains("subPath: \"../../etc\": must not contain '..'"),
        "{}",
        s.error
    );
    // Several attempts of the victim: while the swapping goes on, an attempt may also fail to
    // start (the folder it opened was deleted under it: runc refuses the bind); once the
    // swapper is done, the victim runs. No attempt ever sees the host.
    let out = node.wait_for("victim restarts", 2 * MINUTE, |s| {
        let pod = node.pod(s, "swap")?;
        let victim = pod.container_statuses.iter().find(|c| c.name == "victim")?;
        let out = output(&node, pod, "victim");
        (victim.restart_count >= 3 && out.contains("contained")).then_some(out)
    });
    assert!(!out.contains("ESCAPED"), "{out}");
}

#[test]
fn config_map_edits_reach_running_pods_and_missing_objects_block_until_they_appear() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("syncFrequency: 1s\n");
    write(
        &node,
        "configmaps/live.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: live}\ndata: {value: one}\n",
    );
    node.write_manifest(
        "watcher.json",
        &pod(
            "watcher",
            json!([{"name": "cfg", "configMap": {"name": "live"}},
                   {"name": "sub", "configMap": {"name": "live"}}]),
            json!([container("app", "while true; do echo \"value=$(cat /cfg/value) sub=$(cat /sub-value)\"; sleep 0.3; done",
                json!({"volumeMounts": [{"name": "cfg", "mountPath": "/cfg"},
                                        {"name": "sub", "mountPath": "/sub-value", "subPath": "value"}]}))]),
            json!({}),
        ),
    );
    node.write_manifest(
        "late-env.json",
        &pod(
            "late-env",
            json!([]),
            json!([container(
                "app",
                "echo mode=$MODE; exec sleep 1000",
                json!({"envFrom": [{"configMapRef": {"name": "late"}}]})
            )]),
            json!({}),
        ),
    );
    node.write_manifest(
        "late-key.json",
        &pod(
            "late-key",
            json!([]),
            json!([container("app", "echo token=$TOKEN; exec sleep 1000",
                json!({"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late-secret", "key": "token"}}}]}))]),
            json!({}),
        ),
    );
    node.write_manifest(
        "late-volume.json",
        &pod(
            "late-volume",
            json!([{"name": "s", "secret": {"secretName": "late-secret"}}]),
            json!([container(
                "app",
                "until [ -f /s/token ]; do sleep 0.2; done; cat /s/token; echo; exec sleep 1000",
                json!({"volumeMounts": [{"name": "s", "mountPath": "/s"}]})
            )]),
            json!({}),
        ),
    );
    node.start();
    wait_output(&node, "watcher", "app", "value=one sub=one");
    write(
        &node,
        "configmaps/live.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: live}\ndata: {value: two}\n",
    );
    // The volume follows the edit; a subPath mount is a snapshot of the file (as in kubelet).
    wait_output(&node, "watcher", "app", "value=two sub=one");

    assert_eq!(
        wait_waiting(&node, "late-env", "CreateContainerConfigError"),
        "configmap \"late\" not found"
    );
    assert_eq!(
        wait_waiting(&node, "late-key", "CreateContainerConfigError"),
        "secret \"late-secret\" not found"
    );
    assert_eq!(
        wait_waiting(&node, "late-volume", "ContainerCreating"),
        "MountVolume.SetUp failed for volume \"s\" : secret \"late-secret\" not found"
    );
    write(
        &node,
        "secrets/late.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: late-secret}\nstringData: {other: x}\n",
    );
    assert_eq!(
        wait_message(&node, "late-key", "CreateContainerConfigError", "key"),
        "couldn't find key token in Secret default/late-secret"
    );
    write(
        &node,
        "secrets/late.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: late-secret}\nstringData: {token: t0k3n}\n",
    );
    write(
        &node,
        "configmaps/late.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late}\ndata: {MODE: fast}\n",
    );
    wait_output(&node, "late-env", "app", "mode=fast");
    wait_output(&node, "late-key", "app", "token=t0k3n");
    wait_output(&node, "late-volume", "app", "t0k3n");
}

#[test]
fn environment_comes_from_objects_fields_and_expansion_like_kubelet() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    write(
        &node,
        "configmaps/env.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: env}\ndata: {MODE: fast, LEVEL: '3', 1BAD: x}\n",
    );
    write(
        &node,
        "secrets/env.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: env}\ndata: {KEY: c2VjcmV0}\n",
    );
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    node.write_manifest(
        "env.json",
        &pod(
            "env",
            json!([]),
            json!([container("app", "env | sort; echo args: $0 $1", json!({
                "command": ["sh", "-c", "env | sort; echo \"args: $1\"", "sh", "$(MODE)-$(UNDEFINED)-$$(MODE)"],
                "envFrom": [{"configMapRef": {"name": "env"}}, {"secretRef": {"name": "env"}, "prefix": "S_"},
                            {"configMapRef": {"name": "absent", "optional": true}}],
                "env": [
                    {"name": "MODE", "value": "slow"},
                    {"name": "COMBINED", "value": "$(MODE)/$(LEVEL)/$(PATH)"},
                    {"name": "POD_NAME", "valueFrom": field("metadata.name")},
                    {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
                    {"name": "POD_UID", "valueFrom": field("metadata.uid")},
                    {"name": "APP", "valueFrom": field("metadata.labels['app']")},
                    {"name": "NOTE", "valueFrom": field("metadata.annotations['note']")},
                    {"name": "NODE", "valueFrom": field("spec.nodeName")},
                    {"name": "SA", "valueFrom": field("spec.serviceAccountName")},
                    {"name": "HOST_IP", "valueFrom": field("status.hostIP")},
                    {"name": "POD_IP", "valueFrom": field("status.podIP")},
                    {"name": "LEVEL_REF", "valueFrom": {"configMapKeyRef": {"name": "env", "key": "LEVEL"}}},
                    {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "env", "key": "nope", "optional": true}}},
                ]}))]),
            json!({"serviceAccountName": "robot", "hostNetwork": true, "restartPolicy": "Never"}),
        ),
    );
    node.start();
    let out = wait_output(&node, "env", "app", "args:");
    let pod = node.wait_for("env pod", MINUTE, |s| node.pod(s, "env").cloned());
    // The node's address as the kernel's route out names it (a UDP connect sends nothing).
    let host_ip = {
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        probe.connect("192.0.2.1:9").unwrap();
        probe.local_addr().unwrap().ip().to_string()
    };
    for want in [
        "MODE=slow".to_string(),
        "COMBINED=slow/3/$(PATH)".into(),
        "S_KEY=secret".into(),
        format!("POD_NAME=env-{}", node.name),
        "POD_NAMESPACE=default".into(),
        format!("POD_UID={}", pod.uid),
        "APP=env".into(),
        "NOTE=hi".into(),
        format!("NODE={}", node.name),
        "SA=robot".into(),
        format!("HOST_IP={host_ip}"),
        format!("POD_IP={host_ip}"),
        "LEVEL_REF=3".into(),
        "LEVEL=3".into(),
        "args: slow-$(UNDEFINED)-$(MODE)".into(),
    ] {
        assert!(
            out.lines().any(|l| l == want),
            "want line {want:?} in:\n{out}"
        );
    }
    assert!(!out.contains("1BAD") && !out.contains("OPTIONAL="), "{out}");
}
