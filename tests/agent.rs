//! The agent end to end, as root, with real runc: static pods from a configuration directory.
//! See `tests/common/mod.rs` for the test node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use common::{Node, pod_yaml, root_or_skip, terminated};
use nanolet::pod::status::{ContainerState, Phase};

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn pods_start_run_and_report_exit_codes() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    node.write_pod("sleeper", "echo hello from $HOSTNAME; exec sleep 1000", "");
    node.write_pod("seven", "exit 7", "  restartPolicy: Never\n");
    node.write_pod("done", "true", "  restartPolicy: OnFailure\n");
    node.start();
    let sleeper = node.wait_running("sleeper");
    assert_eq!(sleeper.phase, Phase::Running);
    assert!(sleeper.container_statuses[0].ready);
    let seven = node.wait_for("seven failed", MINUTE, |s| {
        node.pod(s, "seven")
            .filter(|p| p.phase == Phase::Failed)
            .cloned()
    });
    let t = terminated(&seven.container_statuses[0]).expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_str()), (7, "Error"));
    assert_eq!(
        seven.container_statuses[0].restart_count, 0,
        "restartPolicy Never does not restart"
    );
    let done = node.wait_for("done succeeded", MINUTE, |s| {
        node.pod(s, "done")
            .filter(|p| p.phase == Phase::Succeeded)
            .cloned()
    });
    assert_eq!(
        terminated(&done.container_statuses[0]).unwrap().reason,
        "Completed"
    );
    // The log is in CRI format where kubelet keeps it, and `nanolet logs` reads it.
    let log = fs::read_to_string(node.log_path(&sleeper, "app", 0)).unwrap();
    let first = log.lines().next().unwrap();
    assert!(
        first.ends_with(&format!(" stdout F hello from sleeper-{}", node.name)),
        "{first}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nanolet"))
        .args(["logs", "sleeper", "--config-dir"])
        .arg(node.dir.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("hello from sleeper-{}\n", node.name)
    );
    // `nanolet ps` shows them while the agent runs.
    let ps = std::process::Command::new(env!("CARGO_BIN_EXE_nanolet"))
        .args(["ps", "--config-dir"])
        .arg(node.dir.path())
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        ps.contains(&format!("sleeper-{}", node.name)) && ps.contains("Running"),
        "{ps}"
    );
    assert!(!ps.contains("warning"), "{ps}");
}

#[test]
fn crashing_container_restarts_with_growing_back_off() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    node.write_pod("crash", "echo run; exit 3", "");
    node.start();
    // Record each attempt's start as the snapshot shows it.
    let mut starts: Vec<(u32, i64)> = Vec::new();
    let mut saw_backoff = false;
    node.wait_for("four restarts", MINUTE, |s| {
        let c = &node.pod(s, "crash")?.container_statuses[0];
        if let ContainerState::Waiting { reason, message } = &c.state
            && reason == "CrashLoopBackOff"
        {
            assert!(message.starts_with("back-off "), "{message}");
            saw_backoff = true;
        }
        if let Some(last) = &c.last_state {
            assert_eq!((last.exit_code, last.reason.as_str()), (3, "Error"));
            if starts.last().is_none_or(|(n, _)| *n < c.restart_count) {
                starts.push((c.restart_count, last.finished_at));
            }
        }
        (c.restart_count >= 4).then_some(())
    });
    assert!(saw_backoff, "CrashLoopBackOff was never shown");
    // Restart counts only grow, one at a time as seen by a poller at 100 ms.
    assert!(starts.windows(2).all(|w| w[0].0 < w[1].0), "{starts:?}");
    let pod = node
        .snapshot()
        .and_then(|s| node.pod(&s, "crash").cloned())
        .unwrap();
    assert_eq!(
        pod.phase,
        Phase::Running,
        "restartPolicy Always keeps the pod Running"
    );
}

#[test]
fn trapped_sigterm_gets_its_grace_period_and_ignoring_it_gets_sigkill() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    let graceful = "trap 'echo got TERM; sleep 2; echo bye; exit 0' TERM; echo ready; while true; do sleep 1 & wait; done";
    node.write_pod(
        "graceful",
        graceful,
        "  terminationGracePeriodSeconds: 30\n",
    );
    node.write_pod(
        "stubborn",
        "trap '' TERM; echo ready; while true; do sleep 1; done",
        "  terminationGracePeriodSeconds: 2\n",
    );
    node.start();
    let pod = node.wait_running("graceful");
    node.wait_running("stubborn");
    let log = node.log_path(&pod, "app", 0);
    node.wait_for("graceful ready", MINUTE, |_| {
        fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains("ready"))
            .map(drop)
    });
    node.remove_manifest("graceful.yaml");
    node.remove_manifest("stubborn.yaml");
    // The trap runs (its output reaches the log) while the pod is shown Terminating.
    node.wait_for("the TERM trap while terminating", MINUTE, |s| {
        let terminating = node
            .pod(s, "graceful")
            .is_some_and(|p| p.terminating && p.display_status() == "Terminating");
        let trapped = fs::read_to_string(&log).is_ok_and(|l| l.contains("got TERM"));
        (terminating && trapped).then_some(())
    });
    node.wait_gone("graceful");
    // A container that ignores SIGTERM is killed when its 2 s grace period ends.
    node.wait_gone("stubborn");
    assert!(node.runc_ids().is_empty(), "{:?}", node.runc_ids());
}

#[test]
fn removing_a_manifest_leaves_nothing_behind() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    let init = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: tidy\nspec:\n  initContainers:\n  - name: init\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"true\"]\n  containers:\n  - name: a\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sleep\", \"1000\"]\n  - name: b\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sleep\", \"1000\"]\n  terminationGracePeriodSeconds: 1\n";
    node.write_manifest("tidy.yaml", init);
    node.start();
    let pod = node.wait_running("tidy");
    assert_eq!(
        terminated(&pod.init_container_statuses[0]).unwrap().reason,
        "Completed"
    );
    assert_eq!(node.runc_ids().len(), 2);
    assert!(
        !node.mounts().is_empty(),
        "rootfs overlays and namespace files are mounted"
    );
    assert!(!node.cgroups(&pod.uid).is_empty(), "the pod has a cgroup");
    node.remove_manifest("tidy.yaml");
    node.wait_gone("tidy");
    assert!(
        node.runc_ids().is_empty(),
        "runc containers left: {:?}",
        node.runc_ids()
    );
    assert!(node.mounts().is_empty(), "mounts left: {:?}", node.mounts());
    assert!(
        node.cgroups(&pod.uid).is_empty(),
        "cgroups left: {:?}",
        node.cgroups(&pod.uid)
    );
    for dir in [
        "state/run/containers",
        "state/run/pods",
        "state/data/containers",
        "state/logs",
    ] {
        let left: Vec<_> = fs::read_dir(node.path(dir))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{dir} still holds {left:?}");
    }
}

#[test]
fn changing_a_manifest_recreates_the_pod() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    node.write_pod(
        "web",
        "echo v1; exec sleep 1000",
        "  terminationGracePeriodSeconds: 1\n",
    );
    node.start();
    let v1 = node.wait_running("web");
    let old_ids = node.runc_ids();
    node.write_pod(
        "web",
        "echo v2; exec sleep 1000",
        "  terminationGracePeriodSeconds: 1\n",
    );
    let v2 = node.wait_for("the new pod running", MINUTE, |s| {
        node.pod(s, "web")
            .filter(|p| p.uid != v1.uid && p.container_statuses[0].is_running())
            .cloned()
    });
    node.wait_for("only the new container", MINUTE, |_| {
        let ids = node.runc_ids();
        (ids.len() == 1 && !old_ids.contains(&ids[0])).then_some(())
    });
    let log = fs::read_to_string(node.log_path(&v2, "app", 0)).unwrap();
    assert!(log.contains("stdout F v2"), "{log}");
}

#[test]
fn a_restarted_agent_adopts_running_containers() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    node.write_pod(
        "keep",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
        "",
    );
    node.start();
    let before = node.wait_running("keep");
    let id = before.container_statuses[0].container_id.clone();
    node.stop_agent();
    assert_eq!(
        node.runc_ids(),
        vec![id.clone()],
        "the container keeps running without the agent"
    );
    node.start();
    let after = node.wait_for("a snapshot from the new agent", MINUTE, |s| {
        (Some(s.agent_pid as u32) == node.agent_pid())
            .then(|| node.pod(s, "keep").cloned())
            .flatten()
    });
    let c = &after.container_statuses[0];
    assert!(c.is_running(), "{c:?}");
    assert_eq!(c.container_id, id, "same container, not a new one");
    assert_eq!(c.restart_count, 0);
    assert_eq!(node.runc_ids(), vec![id], "no duplicate");
    // Its log keeps flowing into the same file through the new agent.
    let log = node.log_path(&after, "app", 0);
    let lines = |p: &std::path::Path| fs::read_to_string(p).unwrap_or_default().lines().count();
    let n = lines(&log);
    node.wait_for("more log lines after adoption", MINUTE, |_| {
        (lines(&log) > n + 3).then_some(())
    });
}

#[test]
fn twenty_pods_at_once() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    for i in 0..20 {
        node.write_manifest(
            &format!("p{i}.yaml"),
            &pod_yaml(
                &format!("p{i}"),
                "exec sleep 1000",
                "  terminationGracePeriodSeconds: 0\n",
            ),
        );
    }
    node.start();
    node.wait_for("20 running pods", Duration::from_secs(180), |s| {
        let running = s
            .pods
            .iter()
            .filter(|p| p.container_statuses.iter().all(|c| c.is_running()))
            .count();
        (running == 20).then_some(())
    });
    let ids: BTreeSet<String> = node.runc_ids().into_iter().collect();
    assert_eq!(ids.len(), 20);
}

#[test]
fn bad_manifests_are_reported_and_never_stop_the_others() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    let dir = node.path("manifests");
    node.write_pod("good", "exec sleep 1000", "");
    node.write_manifest(
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed\n",
    );
    node.write_manifest("broken.json", "{\"apiVersion\": \"v1\", \"kind\": ");
    node.write_manifest(
        "typo.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: typo\nspec:\n  contianers: []\n",
    );
    node.write_manifest("invalid.yaml", &pod_yaml("Invalid_Name", "true", ""));
    node.write_manifest("zz-duplicate.yaml", &pod_yaml("good", "echo other", ""));
    // Nothing listens on 127.0.0.1:1: the pull fails at once, and no traffic leaves the host.
    node.write_manifest(
        "noimage.yaml",
        &pod_yaml("noimage", "true", "").replace("busybox:latest", "127.0.0.1:1/absent:1.0"),
    );
    node.write_manifest(
        "neverpull.yaml",
        &pod_yaml("neverpull", "true", "")
            .replace("IfNotPresent", "Never")
            .replace("busybox:latest", "absent:1.0"),
    );
    node.write_manifest("nocmd.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nocmd\nspec:\n  containers:\n  - name: app\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"/no/such/binary\"]\n");
    fs::create_dir(dir.join("adir.yaml")).unwrap();
    std::os::unix::fs::symlink("loop2.yaml", dir.join("loop1.yaml")).unwrap();
    std::os::unix::fs::symlink("loop1.yaml", dir.join("loop2.yaml")).unwrap();
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        dir.join("fifo.yaml"),
        rustix::fs::Mode::from(0o644),
    )
    .unwrap();
    node.start();
    node.wait_running("good");
    let s = node.wait_for("all manifest errors", MINUTE, |s| {
        (s.source_errors.len() >= 9).then(|| s.clone())
    });
    let error_for = |file: &str| {
        s.source_errors
            .iter()
            .find(|e| e.source.ends_with(&format!("/{file}")))
            .map(|e| e.error.clone())
            .unwrap_or_else(|| panic!("no error for {file}: {:?}", s.source_errors))
    };
    for (file, words) in [
        ("broken.yaml", vec!["broken.yaml"]),
        ("broken.json", vec!["broken.json"]),
        ("typo.yaml", vec!["contianers"]),
        ("invalid.yaml", vec!["metadata.name"]),
        ("zz-duplicate.yaml", vec!["duplicate", "good.yaml"]),
        ("adir.yaml", vec!["adir.yaml"]),
        ("loop1.yaml", vec!["loop1.yaml"]),
        ("fifo.yaml", vec!["fifo.yaml"]),
    ] {
        let e = error_for(file);
        for w in words {
            assert!(e.contains(w), "error for {file} should name {w:?}: {e}");
        }
    }
    // A missing image and a missing command are the pod's problem, shown on the pod.
    let waiting_reason = |name: &str, want: &'static [&'static str]| {
        node.wait_for(&format!("{name} waiting"), MINUTE, |s| {
            match &node.pod(s, name)?.container_statuses[0].state {
                ContainerState::Waiting { reason, message } if want.contains(&reason.as_str()) => {
                    Some(message.clone())
                }
                _ => None,
            }
        })
    };
    let message = waiting_reason("noimage", &["ErrImagePull", "ImagePullBackOff"]);
    assert!(message.contains("127.0.0.1:1/absent:1.0"), "{message}");
    let message = waiting_reason("neverpull", &["ErrImageNeverPull"]);
    assert!(
        message.contains("absent:1.0") && message.contains("Never"),
        "{message}"
    );
    let nocmd = node.wait_for("nocmd start error", MINUTE, |s| {
        node.pod(s, "nocmd")
            .and_then(|p| p.container_statuses[0].last_termination().cloned())
    });
    assert_eq!(
        (nocmd.exit_code, nocmd.reason.as_str()),
        (128, "StartError")
    );
    assert!(
        nocmd.message.contains("/no/such/binary"),
        "{}",
        nocmd.message
    );
    // A half-written manifest keeps the last good pod running; completing it recreates the pod.
    let good = node.wait_running("good");
    fs::write(
        dir.join("good.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: go",
    )
    .unwrap();
    node.wait_for("the half-written error", MINUTE, |s| {
        s.source_errors
            .iter()
            .any(|e| e.source.ends_with("/good.yaml"))
            .then_some(())
    });
    let still = node
        .snapshot()
        .and_then(|s| node.pod(&s, "good").cloned())
        .expect("good keeps running");
    assert_eq!(still.uid, good.uid);
    assert!(still.container_statuses[0].is_running());
    // The other pods never noticed: the good one never restarted.
    assert_eq!(still.container_statuses[0].restart_count, 0);
}

#[test]
fn after_a_reboot_pods_start_fresh_and_stale_state_is_cleared() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    node.write_pod(
        "svc",
        "exec sleep 1000",
        "  terminationGracePeriodSeconds: 0\n",
    );
    node.start();
    node.wait_running("svc");
    node.stop_agent();
    // What a power cut does: every process is gone, tmpfs and mounts too, and the boot id
    // changes. The run dir here is not on tmpfs, so its stale files stay behind.
    for id in node.runc_ids() {
        let out = std::process::Command::new("runc")
            .arg("--root")
            .arg(node.runc_root())
            .args(["kill", &id, "KILL"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    node.wait_for("the container to die", MINUTE, |_| {
        let out = std::process::Command::new("runc")
            .arg("--root")
            .arg(node.runc_root())
            .args(["list", "--format", "json"])
            .output()
            .unwrap();
        (!String::from_utf8_lossy(&out.stdout).contains("\"running\"")).then_some(())
    });
    fs::write(
        node.path("state/data/boot_id"),
        "00000000-0000-0000-0000-000000000000\n",
    )
    .unwrap();
    node.start();
    let after = node.wait_for("the pod started fresh", MINUTE, |s| {
        (Some(s.agent_pid as u32) == node.agent_pid())
            .then(|| {
                node.pod(s, "svc")
                    .filter(|p| p.container_statuses[0].is_running())
                    .cloned()
            })
            .flatten()
    });
    let c = &after.container_statuses[0];
    assert_eq!(c.restart_count, 0, "a reboot starts pods fresh: {c:?}");
    assert!(c.last_state.is_none(), "{c:?}");
    assert_eq!(
        node.runc_ids().len(),
        1,
        "no stale container is left: {:?}",
        node.runc_ids()
    );
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(
        fs::read_to_string(node.path("state/data/boot_id"))
            .unwrap()
            .trim(),
        boot_id.trim()
    );
    assert!(node.agent_log().contains("first start in this boot"));
}

#[test]
fn a_pod_removed_while_the_agent_was_away_is_stopped_and_cleaned_up() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    node.write_pod(
        "gone",
        "exec sleep 1000",
        "  terminationGracePeriodSeconds: 1\n",
    );
    node.write_pod("stays", "exec sleep 1000", "");
    node.start();
    let gone = node.wait_running("gone");
    let stays = node.wait_running("stays");
    node.stop_agent();
    node.remove_manifest("gone.yaml");
    node.start();
    node.wait_for("the orphan container removed", MINUTE, |_| {
        (node.runc_ids().len() == 1).then_some(())
    });
    assert_eq!(
        node.runc_ids(),
        vec![stays.container_statuses[0].container_id.clone()]
    );
    node.wait_for("the orphan's cgroups and folders removed", MINUTE, |_| {
        let pod_dir = node.path(&format!("state/run/pods/{}", gone.uid));
        (node.cgroups(&gone.uid).is_empty() && !pod_dir.exists()).then_some(())
    });
    let s = node.snapshot().unwrap();
    assert!(node.pod(&s, "gone").is_none());
    assert_eq!(
        node.pod(&s, "stays").unwrap().container_statuses[0].restart_count,
        0
    );
}

#[test]
fn images_are_pulled_as_image_pull_policy_says_and_work_offline_once_stored() {
    if !root_or_skip() || !common::registry::tools_or_skip() {
        return;
    }
    let registry = common::registry::RealRegistry::start(None);
    registry.push(
        common::busybox_layout(),
        "busybox:latest",
        "edge/busybox",
        "1.0",
        None,
    );
    let image = format!("{}/edge/busybox:1.0", registry.host());
    let mut node = Node::without_images("");
    let with_policy = |name: &str, policy: &str| {
        pod_yaml(
            name,
            "exec sleep 1000",
            "  terminationGracePeriodSeconds: 0\n",
        )
        .replace("busybox:latest", &image)
        .replace("IfNotPresent", policy)
    };
    node.write_manifest("never.yaml", &with_policy("never", "Never"));
    node.write_manifest("pulled.yaml", &with_policy("pulled", "IfNotPresent"));
    node.start();
    // IfNotPresent pulls it; Never waits for it and starts once the pull stored it.
    let pulled = node.wait_running("pulled");
    assert!(pulled.container_statuses[0].image_id.starts_with("sha256:"));
    node.wait_running("never");
    let images = std::process::Command::new(env!("CARGO_BIN_EXE_nanolet"))
        .args(["images", "--config-dir"])
        .arg(node.dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&images.stdout).contains(&image));
    // The registry goes away: Always fails to pull, and the stored copy is used (edge autonomy).
    drop(registry);
    node.write_manifest("always.yaml", &with_policy("always", "Always"));
    node.wait_running("always");
    assert!(
        node.agent_log()
            .contains("using the image already in the store")
    );
}

#[test]
fn after_a_restart_init_containers_do_not_run_again_and_older_attempts_are_removed() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: staged\nspec:\n  terminationGracePeriodSeconds: 0\n  initContainers:\n  - name: init\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"true\"]\n  containers:\n  - name: app\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"sleep 1; exit 1\"]\n";
    node.write_manifest("staged.yaml", manifest);
    node.start();
    // Let the app crash a few times: each attempt is a runc container; old ones are removed.
    node.wait_for("two restarts", MINUTE, |s| {
        (node.pod(s, "staged")?.container_statuses[0].restart_count >= 2).then_some(())
    });
    node.stop_agent();
    let inits_before = node
        .agent_log()
        .matches("container \"init\" started")
        .count();
    assert_eq!(inits_before, 1);
    std::thread::sleep(Duration::from_secs(2));
    node.start();
    let pod = node.wait_for("the new agent's view", MINUTE, |s| {
        (Some(s.agent_pid as u32) == node.agent_pid())
            .then(|| node.pod(s, "staged").cloned())
            .flatten()
    });
    let init = &pod.init_container_statuses[0];
    assert_eq!(
        terminated(init).map(|t| t.reason.as_str()),
        Some("Completed"),
        "{init:?}"
    );
    node.wait_for("another restart of the app", MINUTE, |s| {
        (node.pod(s, "staged")?.container_statuses[0].restart_count >= 4).then_some(())
    });
    assert_eq!(
        node.agent_log()
            .matches("container \"init\" started")
            .count(),
        1,
        "the init container ran again after the restart"
    );
    assert!(node.runc_ids().len() <= 1, "{:?}", node.runc_ids());
}

#[test]
fn node_shutdown_stops_every_pod_gracefully_then_the_agent() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("shutdownGracePeriod: 20s\n");
    let graceful = "trap 'echo stopping; exit 0' TERM; while true; do sleep 1 & wait; done";
    node.write_pod("a", graceful, "");
    node.write_pod("b", graceful, "");
    node.start();
    let a = node.wait_running("a");
    node.wait_running("b");
    let log = node.log_path(&a, "app", 0);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nanolet"))
        .args(["shutdown", "--config-dir"])
        .arg(node.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 pod(s) left"));
    assert!(node.runc_ids().is_empty(), "{:?}", node.runc_ids());
    assert!(node.mounts().is_empty(), "{:?}", node.mounts());
    assert!(!log.exists(), "the pod's logs go with it");
    assert!(
        node.agent_log()
            .contains("node shutdown: every pod is stopped")
    );
    assert!(
        node.agent_log()
            .contains("\"app\" exited with code 0 (Completed)"),
        "the TERM trap ran"
    );
}

#[test]
fn image_gc_removes_unused_images_and_keeps_those_a_pod_uses() {
    if !root_or_skip() {
        return;
    }
    // Thresholds every real disk is above: GC runs on every tick (fileCheckFrequency 1s).
    let mut node = Node::new(
        "imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\nimageMinimumGCAge: 0s\n",
    );
    node.write_pod(
        "web",
        "exec sleep 1000",
        "  terminationGracePeriodSeconds: 0\n",
    );
    node.start();
    node.wait_running("web");
    let images = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nanolet"))
            .args(["images", "--config-dir"])
            .arg(node.dir.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // GC ran while the pod runs, and found nothing it may take.
    node.wait_for("an image gc round", Duration::from_secs(30), |_| {
        node.agent_log()
            .contains("no unused image is old enough to remove")
            .then_some(())
    });
    assert!(images().contains("busybox"), "{}", images());
    // Once no pod uses it, the image goes.
    node.remove_manifest("web.yaml");
    node.wait_gone("web");
    node.wait_for(
        "busybox removed by image gc",
        Duration::from_secs(30),
        |_| (!images().contains("busybox")).then_some(()),
    );
    let log = node.agent_log();
    assert!(
        log.contains("image gc: removing image docker.io/library/busybox:latest"),
        "{log}"
    );
}

#[test]
fn an_image_whose_rootfs_was_removed_is_unpacked_again_for_its_pod() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    // Import and unpack busybox as the agent would; then take away the rootfs, and the
    // archive (so nothing imports it again): the store has the image, not its rootfs.
    let import = std::process::Command::new(env!("CARGO_BIN_EXE_nanolet"))
        .args(["internal-import", "--config-dir"])
        .arg(node.dir.path())
        .output()
        .unwrap();
    assert!(import.status.success(), "{import:?}");
    let unpacked: Vec<_> = fs::read_dir(node.path("state/data/images/rootfs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    fs::remove_dir_all(&unpacked[0]).unwrap();
    fs::remove_dir_all(node.path("images/busybox")).unwrap();
    node.write_pod(
        "web",
        "exec sleep 1000",
        "  terminationGracePeriodSeconds: 0\n",
    );
    node.start();
    node.wait_running("web");
    assert!(unpacked[0].join("bin/busybox").is_file());
}
