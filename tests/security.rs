//! Security contexts end to end, as root with real runc, observed from inside the container:
//! `/proc/self/status` CapEff, NoNewPrivs and Seccomp, uid and gids, a read-only rootfs, masked
//! `/proc` paths, sysctls, the seccomp profile at work; and the bad input kubelet refuses with
//! `CreateContainerConfigError`. See `tests/common/mod.rs` for the test node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Node, root_or_skip};
use nanolet::pod::status::ContainerState;

const MINUTE: Duration = Duration::from_secs(60);

/// Prints what the container's process sees of its own privileges, one `key=value` per line.
const SHOW: &str = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status | tr -d ' \t' | tr ':' '='; \
    echo uid=$(id -u); echo gids=$(id -G); \
    (touch /probe 2>/dev/null && echo rootfs=rw) || echo rootfs=ro; \
    echo masked=$(grep -c ' /proc/keys ' /proc/self/mountinfo); \
    echo syncookies=$(cat /proc/sys/net/ipv4/tcp_syncookies); \
    echo shm_rmid_forced=$(cat /proc/sys/kernel/shm_rmid_forced); \
    (unshare -U true 2>/dev/null && echo userns=yes) || echo userns=no; \
    echo end; exec sleep 1000";

fn container(name: &str, security_context: &str) -> String {
    format!(
        "  - name: {name}\n    image: busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", {SHOW:?}]\n{security_context}"
    )
}

#[test]
fn security_context_is_what_the_container_sees() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sec\nspec:\n  securityContext:\n    fsGroup: 2000\n    supplementalGroups: [4000]\n    sysctls:\n    - {{name: net.ipv4.tcp_syncookies, value: \"0\"}}\n    - {{name: kernel.shm_rmid_forced, value: \"1\"}}\n  containers:\n{}{}{}",
        container("plain", ""),
        container(
            "restricted",
            "    securityContext:\n      runAsUser: 1000\n      runAsGroup: 3000\n      allowPrivilegeEscalation: false\n      readOnlyRootFilesystem: true\n      capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}\n      seccompProfile: {type: RuntimeDefault}\n"
        ),
        container(
            "privileged",
            "    securityContext:\n      privileged: true\n"
        ),
    );
    node.write_manifest("sec.yaml", &manifest);
    node.start();
    let pod = node.wait_running("sec");
    let seen = |name: &str| {
        node.wait_for(&format!("{name} output"), MINUTE, |_| {
            let out = node.output(&pod, name);
            out.contains("end\n").then_some(out)
        })
    };
    let plain = seen("plain");
    let restricted = seen("restricted");
    let privileged = seen("privileged");

    // containerd's default capabilities, root, writable rootfs, masked /proc, no seccomp; the
    // pod's fsGroup and supplementalGroups as additional gids; the pod's sysctls.
    assert_eq!(
        plain,
        "CapEff=00000000a80425fb\nCapBnd=00000000a80425fb\nNoNewPrivs=0\nSeccomp=0\nuid=0\ngids=0 2000 4000\nrootfs=rw\nmasked=1\nsyncookies=0\nshm_rmid_forced=1\nuserns=yes\nend\n"
    );
    // Only NET_BIND_SERVICE (bit 10) in the bounding set, none effective (a non-root process
    // loses them at exec, as under containerd: Kubernetes sets no ambient capabilities),
    // no_new_privs, the seccomp filter (which refuses a user
    // namespace the plain container may create), runAsUser/runAsGroup, read-only rootfs.
    assert_eq!(
        restricted,
        "CapEff=0000000000000000\nCapBnd=0000000000000400\nNoNewPrivs=1\nSeccomp=2\nuid=1000\ngids=3000 2000 4000\nrootfs=ro\nmasked=1\nsyncookies=0\nshm_rmid_forced=1\nuserns=no\nend\n"
    );
    // Every capability nanolet has (as containerd: all of root's but CAP_SYS_RESOURCE on this
    // machine), no masked paths, no seccomp.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let all = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(
        privileged.starts_with(&format!(
            "CapEff={all}\nCapBnd={all}\nNoNewPrivs=0\nSeccomp=0\nuid=0\n"
        )),
        "{privileged}"
    );
    assert!(privileged.contains("masked=0\n"), "{privileged}");
}

#[test]
fn refused_security_contexts_are_create_container_config_errors() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    let one = |name: &str, spec: &str, sc: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{spec}  containers:\n  - name: app\n    image: busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [sleep, \"1000\"]\n    securityContext:\n{sc}"
        )
    };
    let cases = [
        (
            "nonroot",
            "",
            "      runAsNonRoot: true\n",
            "container has runAsNonRoot and image will run as root",
        ),
        (
            "rootuser",
            "",
            "      runAsNonRoot: true\n      runAsUser: 0\n",
            "container's runAsUser breaks non-root policy",
        ),
        (
            "badcap",
            "",
            "      capabilities: {add: [NET_FOO]}\n",
            "securityContext.capabilities.add: unknown capability \"NET_FOO\"",
        ),
        (
            "unsafesysctl",
            "  securityContext:\n    sysctls: [{name: kernel.panic, value: \"5\"}]\n",
            "      privileged: false\n",
            "\"kernel.panic\": forbidden sysctl",
        ),
        (
            "hostsysctl",
            "  hostNetwork: true\n  securityContext:\n    sysctls: [{name: net.ipv4.tcp_syncookies, value: \"0\"}]\n",
            "      privileged: false\n",
            "not allowed with hostNetwork",
        ),
    ];
    for (name, spec, sc, _) in &cases {
        node.write_manifest(&format!("{name}.yaml"), &one(name, spec, sc));
    }
    node.write_manifest(
        "fine.yaml",
        &one(
            "fine",
            "",
            "      runAsNonRoot: true\n      runAsUser: 1000\n",
        ),
    );
    node.start();
    node.wait_running("fine");
    for (name, _, _, want) in cases {
        let (reason, message) = node.wait_for(&format!("{name} config error"), MINUTE, |s| {
            match &node.pod(s, name)?.container_statuses[0].state {
                ContainerState::Waiting { reason, message } if reason != "ContainerCreating" => {
                    Some((reason.clone(), message.clone()))
                }
                _ => None,
            }
        });
        assert_eq!(reason, "CreateContainerConfigError", "{name}: {message}");
        assert!(message.contains(want), "{name}: {message}");
    }
    assert_eq!(
        node.runc_ids().len(),
        1,
        "only the good pod's container exists"
    );
}

#[test]
fn a_localhost_seccomp_profile_comes_from_the_data_dir() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    let dir = node.path("state/data/seccomp/profiles");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    let manifest = |name: &str, profile: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  securityContext:\n    seccompProfile: {{type: Localhost, localhostProfile: {profile}}}\n  containers:\n  - name: app\n    image: busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", \"(mkdir /tmp/d 2>/dev/null && echo made) || echo refused; echo end; exec sleep 1000\"]\n"
        )
    };
    node.write_manifest(
        "nomkdir.yaml",
        &manifest("nomkdir", "profiles/no-mkdir.json"),
    );
    node.write_manifest("missing.yaml", &manifest("missing", "profiles/none.json"));
    node.start();
    let pod = node.wait_running("nomkdir");
    let out = node.wait_for("output", MINUTE, |_| {
        let out = node.output(&pod, "app");
        out.contains("end\n").then_some(out)
    });
    assert_eq!(out, "refused\nend\n");
    let message = node.wait_for("missing profile error", MINUTE, |s| {
        match &node.pod(s, "missing")?.container_statuses[0].state {
            ContainerState::Waiting { reason, message }
                if reason == "CreateContainerConfigError" =>
            {
                Some(message.clone())
            }
            _ => None,
        }
    });
    assert!(
        message.contains("seccomp profile") && message.contains("profiles/none.json"),
        "{message}"
    );
}
