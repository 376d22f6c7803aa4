//! What resources and security contexts cost a pod start (root, runc).
//!
//! ```text
//! sudo -E cargo bench --bench resources
//! ```
//!
//! Ratios against baselines measured in the same run, never asserted:
//!
//! 1. **Pod start**: manifest written until the status snapshot shows the container running, for
//!    a pod with everything of this issue (Guaranteed limits, `podPidsLimit`, the RuntimeDefault
//!    seccomp profile, all capabilities dropped but one, read-only rootfs, a runAsUser, a sysctl)
//!    against a plain BestEffort pod; 10 of each, interleaved, medians.
//! 2. **Pod cgroup**: `sys::cgroup::create` of a pod cgroup with limits plus its removal, against
//!    creating and removing the same folders without writing any value; 200 of each, medians.
//!
//! Runs on its own test node (see `tests/common/mod.rs`): unique folders and cgroup parent,
//! everything taken down afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Node;
use nanolet::sys::cgroup::{self, CgroupValues};

const STARTS: usize = 10;
const CGROUPS: usize = 200;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pod(name: &str, with_everything: bool) -> String {
    let (spec, container) = if with_everything {
        (
            "  securityContext:\n    runAsUser: 1000\n    sysctls: [{name: net.ipv4.tcp_syncookies, value: \"0\"}]\n",
            "    resources:\n      limits: {cpu: 500m, memory: 64Mi}\n    securityContext:\n      readOnlyRootFilesystem: true\n      allowPrivilegeEscalation: false\n      capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}\n      seccompProfile: {type: RuntimeDefault}\n",
        )
    } else {
        ("", "")
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 0\n{spec}  containers:\n  - name: app\n    image: busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [sleep, \"1000\"]\n{container}"
    )
}

/// Writes the manifest, waits (polling every 2 ms, 60 s at most) until the pod runs, then
/// removes it and waits until it is gone. Returns the time to running.
fn start_once(node: &Node, name: &str, with_everything: bool) -> Duration {
    let file = format!("{name}.yaml");
    let at = Instant::now();
    node.write_manifest(&file, &pod(name, with_everything));
    let full = format!("{name}-{}", node.name);
    let deadline = at + Duration::from_secs(60);
    let running = loop {
        let running = node.snapshot().is_some_and(|s| {
            s.pods.iter().any(|p| {
                p.name == full
                    && !p.container_statuses.is_empty()
                    && p.container_statuses.iter().all(|c| c.is_running())
            })
        });
        if running {
            break at.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} did not start\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    node.remove_manifest(&file);
    node.wait_gone(name);
    running
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !common::root_or_skip() {
        return;
    }
    let mut node = Node::new("podPidsLimit: 200\n");
    node.start();
    // Warm-up: the image is imported and unpacked once.
    start_once(&node, "warmup", false);
    let (mut plain, mut full) = (Vec::new(), Vec::new());
    for i in 0..STARTS {
        plain.push(start_once(&node, &format!("plain{i}"), false));
        full.push(start_once(&node, &format!("full{i}"), true));
    }
    let (p, f) = (median(plain), median(full));
    println!(
        "pod start, resources + security context vs plain BestEffort (median of {STARTS}): {:.1} ms vs {:.1} ms = {:.2}x",
        f.as_secs_f64() * 1e3,
        p.as_secs_f64() * 1e3,
        f.as_secs_f64() / p.as_secs_f64()
    );

    let root = Path::new(cgroup::CGROUP_ROOT);
    let parent = format!("{}-bench", node.cgroup_parent);
    let values = CgroupValues {
        cpu_shares: Some(512),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        memory_limit: Some(64 << 20),
        pids_limit: Some(100),
    };
    let (mut with_values, mut bare) = (Vec::new(), Vec::new());
    for i in 0..CGROUPS {
        let rel = format!("{parent}/pod{i}");
        let at = Instant::now();
        cgroup::create(root, &rel, &values).unwrap();
        cgroup::remove(root, &rel).unwrap();
        with_values.push(at.elapsed());
        let at = Instant::now();
        cgroup::create(root, &rel, &CgroupValues::default()).unwrap();
        cgroup::remove(root, &rel).unwrap();
        bare.push(at.elapsed());
    }
    let _ = cgroup::remove(root, &parent);
    let (w, b) = (median(with_values), median(bare));
    println!(
        "pod cgroup create + remove, with limits vs folders only (median of {CGROUPS}): {:.0} µs vs {:.0} µs = {:.2}x",
        w.as_secs_f64() * 1e6,
        b.as_secs_f64() * 1e6,
        w.as_secs_f64() / b.as_secs_f64()
    );
}
