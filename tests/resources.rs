//! Requests and limits end to end, as root with real runc: the values in the kernel's cgroup
//! files (read inside the container and from the host), the QoS class and its cgroup layout,
//! `oom_score_adj`, `podPidsLimit`, OOM kills, bad quantities, and nothing left in any cgroup
//! hierarchy after removal. See `tests/common/mod.rs` for the test node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Node, root_or_skip, terminated};
use nanolet::pod::status::{ContainerState, PodStatus};
use nanolet::sys::cgroup;

const MINUTE: Duration = Duration::from_secs(60);
const ROOT: &str = "/sys/fs/cgroup";

/// A pod with one busybox container running `script`, with `resources` (YAML, indented for
/// the container) and extra spec lines.
fn pod(name: &str, script: &str, resources: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{extra_spec}  containers:\n  - name: app\n    image: busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", {script:?}]\n{resources}"
    )
}

/// Reads `file` of cgroup `relative` in the hierarchy that has it (v2: unified; v1: the
/// controller named by the file's prefix).
fn cgroup_file(relative: &str, file: &str) -> String {
    let root = Path::new(ROOT);
    let dir: PathBuf = if cgroup::is_unified(root) {
        root.join(relative)
    } else {
        let controller = file.split('.').next().unwrap();
        root.join(controller).join(relative)
    };
    fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

fn mem_total() -> i64 {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let kib: i64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap())
        .unwrap();
    kib * 1024
}

/// Whether this process may lower an `oom_score_adj` (CAP_SYS_RESOURCE).
fn can_lower_oom_score_adj() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    cap_eff & (1 << 24) != 0
}

const SHOW: &str = "cat /proc/self/oom_score_adj; \
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max; \
    else cat /sys/fs/cgroup/cpu/cpu.shares /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/memory/memory.limit_in_bytes; fi; \
    exec sleep 1000";

#[test]
fn limits_reach_the_kernel_by_qos_class_and_leave_nothing_behind() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("podPidsLimit: 100\n");
    let burstable = "    resources:\n      requests: {cpu: 250m, memory: 32Mi}\n      limits: {cpu: 500m, memory: 64Mi}\n";
    let guaranteed = "    resources:\n      limits: {cpu: \"1\", memory: 48Mi}\n";
    node.write_manifest("burst.yaml", &pod("burst", SHOW, burstable, ""));
    node.write_manifest("guar.yaml", &pod("guar", SHOW, guaranteed, ""));
    node.write_manifest("best.yaml", &pod("best", SHOW, "", ""));
    // A limit bigger than this machine: kubelet runs it (only a scheduler would refuse).
    // Its env sees the limit through resourceFieldRef, and the node's CPUs for the unset one.
    let huge = "    resources:\n      limits: {memory: 100Gi}\n    env:\n    - name: MEM\n      valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Gi}}\n    - name: CPU\n      valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}\n";
    node.write_manifest(
        "huge.yaml",
        &pod("huge", "echo mem=$MEM cpu=$CPU; exec sleep 1000", huge, ""),
    );
    node.start();
    let pods: Vec<PodStatus> = ["burst", "guar", "best", "huge"]
        .iter()
        .map(|n| node.wait_running(n))
        .collect();
    let qos: Vec<&str> = pods.iter().map(|p| p.qos_class.as_str()).collect();
    assert_eq!(qos, ["Burstable", "Guaranteed", "BestEffort", "Burstable"]);

    let parent = &node.cgroup_parent;
    let v2 = cgroup::is_unified(Path::new(ROOT));
    let (burst, guar, best) = (&pods[0], &pods[1], &pods[2]);
    let burst_cg = format!("{parent}/burstable/pod{}", burst.uid);
    let guar_cg = format!("{parent}/pod{}", guar.uid);
    let best_cg = format!("{parent}/besteffort/pod{}", best.uid);
    let container = |pod_cg: &str, p: &PodStatus| format!("{pod_cg}/{}-app-0", p.uid);

    // From the host's side: the container's and the pod's cgroups.
    if v2 {
        assert_eq!(
            cgroup_file(&container(&burst_cg, burst), "cpu.max"),
            "50000 100000"
        );
        assert_eq!(
            cgroup_file(&container(&burst_cg, burst), "memory.max"),
            (64 << 20).to_string()
        );
        assert_eq!(cgroup_file(&burst_cg, "cpu.weight"), "10");
        assert_eq!(cgroup_file(&burst_cg, "pids.max"), "100");
        assert_eq!(cgroup_file(&guar_cg, "memory.max"), (48 << 20).to_string());
        assert_eq!(cgroup_file(&best_cg, "cpu.weight"), "1");
    } else {
        let c = container(&burst_cg, burst);
        assert_eq!(cgroup_file(&c, "cpu.shares"), "256");
        assert_eq!(cgroup_file(&c, "cpu.cfs_quota_us"), "50000");
        assert_eq!(cgroup_file(&c, "cpu.cfs_period_us"), "100000");
        assert_eq!(
            cgroup_file(&c, "memory.limit_in_bytes"),
            (64 << 20).to_string()
        );
        assert_eq!(cgroup_file(&burst_cg, "cpu.shares"), "256");
        assert_eq!(cgroup_file(&burst_cg, "cpu.cfs_quota_us"), "50000");
        assert_eq!(
            cgroup_file(&burst_cg, "memory.limit_in_bytes"),
            (64 << 20).to_string()
        );
        assert_eq!(cgroup_file(&burst_cg, "pids.max"), "100");
        assert_eq!(cgroup_file(&guar_cg, "cpu.shares"), "1024");
        assert_eq!(cgroup_file(&guar_cg, "cpu.cfs_quota_us"), "100000");
        assert_eq!(
            cgroup_file(&guar_cg, "memory.limit_in_bytes"),
            (48 << 20).to_string()
        );
        assert_eq!(cgroup_file(&best_cg, "cpu.shares"), "2");
        assert_eq!(cgroup_file(&container(&best_cg, best), "cpu.shares"), "2");
        assert_eq!(
            cgroup_file(&container(&best_cg, best), "cpu.cfs_quota_us"),
            "-1"
        );
    }

    // From inside: oom_score_adj as kubelet computes it (Guaranteed clamped to 0 where the
    // agent lacks CAP_SYS_RESOURCE), and the container's own cgroup files.
    let burst_adj = (1000 - 1000 * (32i64 << 20) / mem_total()).max(3);
    let guar_adj = if can_lower_oom_score_adj() { -997 } else { 0 };
    let want = |adj: i64, v1: &str, v2_: &str| format!("{adj}\n{}", if v2 { v2_ } else { v1 });
    let cases = [
        (
            burst,
            want(
                burst_adj,
                "256\n50000\n67108864\n",
                "50000 100000\n67108864\n",
            ),
        ),
        (
            guar,
            want(
                guar_adj,
                "1024\n100000\n50331648\n",
                "100000 100000\n50331648\n",
            ),
        ),
        (best, want(1000, "2\n-1\n", "max 100000\nmax\n")),
    ];
    for (p, want) in cases {
        let got = node.wait_for("container output", MINUTE, |_| {
            let out = node.output(p, "app");
            (out.lines().count() >= want.lines().count()).then_some(out)
        });
        if v2 || p.qos_class != "BestEffort" {
            assert_eq!(got, want, "{}", p.name);
        } else {
            // No memory limit: v1 shows the kernel's "unlimited", a page-rounded maximum.
            assert!(got.starts_with(&want), "{}: {got:?}", p.name);
        }
    }
    let cpus = std::thread::available_parallelism().unwrap().get();
    let want = format!("mem=100 cpu={}\n", cpus * 1000);
    let got = node.wait_for("huge output", MINUTE, |_| {
        let out = node.output(&pods[3], "app");
        (!out.is_empty()).then_some(out)
    });
    assert_eq!(got, want);
    if !can_lower_oom_score_adj() {
        let log = node.agent_log();
        assert_eq!(
            log.matches("oomScoreAdj -997: lowering the OOM score needs CAP_SYS_RESOURCE")
                .count(),
            1,
            "the clamp is logged once:\n{log}"
        );
    }

    for n in ["burst", "guar", "best", "huge"] {
        node.remove_manifest(&format!("{n}.yaml"));
    }
    for (p, n) in pods.iter().zip(["burst", "guar", "best", "huge"]) {
        node.wait_gone(n);
        assert_eq!(
            node.cgroups(&p.uid),
            Vec::<PathBuf>::new(),
            "{n}: cgroups left"
        );
    }
}

#[test]
fn a_container_past_its_memory_limit_is_oom_killed() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    // awk doubles a string until the kernel kills it: the container's main process.
    let script = "echo start; exec awk 'BEGIN { s = \"xxxxxxxxxxxxxxxx\"; while (1) s = s s }'";
    let limits = "    resources:\n      limits: {memory: 32Mi}\n";
    node.write_manifest(
        "hog.yaml",
        &pod("hog", script, limits, "  restartPolicy: Never\n"),
    );
    node.start();
    let hog = node.wait_for("hog terminated", MINUTE, |s| {
        node.pod(s, "hog")
            .filter(|p| terminated(&p.container_statuses[0]).is_some())
            .cloned()
    });
    let t = terminated(&hog.container_statuses[0]).unwrap();
    assert_eq!(
        (t.reason.as_str(), t.exit_code),
        ("OOMKilled", 137),
        "{t:?}"
    );
    node.remove_manifest("hog.yaml");
    node.wait_gone("hog");
    assert!(node.cgroups(&hog.uid).is_empty());
}

#[test]
fn bad_quantities_are_create_container_config_errors() {
    if !root_or_skip() {
        return;
    }
    let mut node = Node::new("");
    let cases = [
        (
            "toolarge",
            "limits: {memory: 1e1000}",
            "resources.limits.memory: quantity \"1e1000\": too large",
        ),
        (
            "negative",
            "requests: {cpu: \"-1\"}",
            "resources.requests.cpu: quantity \"-1\": must be greater than or equal to 0",
        ),
        (
            "garbage",
            "limits: {cpu: lots}",
            "resources.limits.cpu: quantity \"lots\": not a quantity",
        ),
        (
            "inverted",
            "requests: {memory: 2Gi}\n      limits: {memory: 1Gi}",
            "must be less than or equal to memory limit",
        ),
    ];
    for (name, resources, _) in &cases {
        let res = format!("    resources:\n      {resources}\n");
        node.write_manifest(
            &format!("{name}.yaml"),
            &pod(name, "exec sleep 1000", &res, ""),
        );
    }
    node.write_manifest("fine.yaml", &pod("fine", "exec sleep 1000", "", ""));
    node.start();
    // One broken pod never stops another.
    node.wait_running("fine");
    for (name, _, want) in cases {
        let (reason, message) = node.wait_for(&format!("{name} config error"), MINUTE, |s| {
            match &node.pod(s, name)?.container_statuses[0].state {
                ContainerState::Waiting { reason, message } if reason != "ContainerCreating" => {
                    Some((reason.clone(), message.clone()))
                }
                _ => None,
            }
        });
        assert_eq!(reason, "CreateContainerConfigError", "{name}: {message}");
        assert!(
            message.starts_with("container \"app\": ") && message.contains(want),
            "{name}: {message}"
        );
    }
    assert_eq!(
        node.runc_ids().len(),
        1,
        "only the good pod's container exists"
    );
}
