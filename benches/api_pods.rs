//! Pods through the API server: start latency against the same pods as static pods, and the
//! agent's memory with 50 API pods.
//!
//! ```text
//! sudo -E cargo bench --bench api_pods      # root and runc; the fake API server on loopback
//! ```
//!
//! 1. **Start latency**: 50 pods through the API (created with `spec.nodeName` on the fake API
//!    server, tests/common/apiserver.rs, until the server holds a status with phase Running and
//!    condition Ready True, as `kubectl get pods` would show) against 50 static pods (manifest
//!    renamed into `manifests/` until the agent's status snapshot shows the container running
//!    and Ready), one pod at a time, interleaved so both see the same machine load; median and
//!    p99, and their ratio.
//! 2. **Agent memory**: VmRSS of the agent with the 51 API pods running (5 s after the static
//!    pods are gone), against the 6 MiB target, split into RssAnon (heap, stacks) and RssFile
//!    (the binary's resident text and read-only data). `NANOLET_BENCH_SMAPS=<file>` also copies
//!    the agent's `/proc/<pid>/smaps` there at that moment, and to `<file>.30s` 30 s later,
//!    after clearing the accessed bits (`Referenced` is then what those 30 s touched).
//!
//! Reported, never asserted. The agent is the binary cargo builds for the bench profile, or
//! `NANOLET_BENCH_AGENT` (a glibc host build carries ~2.5 MiB of malloc arenas that the static
//! musl build does not: `NANOLET_BENCH_AGENT=$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/nanolet`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::apiserver::ApiServer;
use common::{Node, pod_yaml, root_or_skip};
use serde_json::json;

const PODS: usize = 50;
const RSS_TARGET_KIB: u64 = 6 * 1024;
const COMMAND: &str = "echo started; exec sleep 1000";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !root_or_skip() {
        eprintln!("api_pods bench: needs root and runc");
        return;
    }
    let api = ApiServer::start();
    let mut node = Node::new("");
    api.write_kubeconfig(node.dir.path(), None);
    node.start();
    // Warm-up: the first pod of each kind unpacks the image and connects.
    api_start(&api, &node, "warm-api");
    static_start(&node, "warm-static");

    let mut through_api = Vec::new();
    let mut as_static = Vec::new();
    for i in 0..PODS {
        through_api.push(api_start(&api, &node, &format!("api-{i}")));
        as_static.push(static_start(&node, &format!("static-{i}")));
    }
    for i in 0..PODS {
        node.remove_manifest(&format!("static-{i}.yaml"));
    }
    node.remove_manifest("warm-static.yaml");
    // Measured once the static pods are gone (stopping 51 pods takes seconds on a busy
    // machine; measured 5 s after the removal, their workers were still in the figure).
    let deadline = Instant::now() + Duration::from_secs(120);
    while node.snapshot().is_none_or(|s| s.pods.len() != PODS + 1) {
        assert!(
            Instant::now() < deadline,
            "static pods did not stop\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(5));
    let pid = node.agent_pid().unwrap();
    let (rss, anon, file) = (
        status_kib(pid, "VmRSS"),
        status_kib(pid, "RssAnon"),
        status_kib(pid, "RssFile"),
    );
    if let Some(to) = std::env::var_os("NANOLET_BENCH_SMAPS") {
        std::fs::copy(format!("/proc/{pid}/smaps"), &to).unwrap();
        // And what the agent touches in 30 s of that steady state: `Referenced` of each
        // mapping, after its page tables' accessed bits were cleared.
        std::fs::write(format!("/proc/{pid}/clear_refs"), "1").unwrap();
        std::thread::sleep(Duration::from_secs(30));
        let mut to = to;
        to.push(".30s");
        std::fs::copy(format!("/proc/{pid}/smaps"), to).unwrap();
    }

    let (api_med, api_p99) = (percentile(&through_api, 50), percentile(&through_api, 99));
    let (st_med, st_p99) = (percentile(&as_static, 50), percentile(&as_static, 99));
    println!("\nnanolet API pod benchmarks ({PODS} pods each, one at a time)\n");
    println!("| measure | value | baseline | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| pod start through the API, median | {} | static pod {} | {:.2}x |",
        ms(api_med),
        ms(st_med),
        api_med.as_secs_f64() / st_med.as_secs_f64()
    );
    println!(
        "| pod start through the API, p99 | {} | static pod {} | {:.2}x |",
        ms(api_p99),
        ms(st_p99),
        api_p99.as_secs_f64() / st_p99.as_secs_f64()
    );
    println!(
        "| agent VmRSS with {} API pods | {:.2} MiB | target 6 MiB | {:.2}x |",
        PODS + 1,
        rss as f64 / 1024.0,
        rss as f64 / RSS_TARGET_KIB as f64
    );
    println!("| of it RssAnon (heap, stacks) | {anon} KiB | | |");
    println!("| of it RssFile (the binary's resident pages) | {file} KiB | | |");
    let (bytes_in, bytes_out) = api.bytes();
    println!("\n(fake API server: {bytes_in} bytes in, {bytes_out} bytes out over the run)");
    node.stop_agent();
}

fn api_start(api: &ApiServer, node: &Node, name: &str) -> Duration {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node.name, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "app", "image": "busybox:latest",
                                 "imagePullPolicy": "IfNotPresent",
                                 "command": ["sh", "-c", COMMAND]}]}
    });
    let start = Instant::now();
    api.create("pods", Some("default"), pod);
    let ok = api.wait_for(Duration::from_secs(120), |s| {
        s.object("pods", Some("default"), name).is_some_and(|p| {
            p["status"]["phase"] == "Running"
                && p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
    });
    assert!(ok, "pod {name} did not start\n{}", node.agent_log());
    start.elapsed()
}

fn static_start(node: &Node, name: &str) -> Duration {
    let start = Instant::now();
    node.write_manifest(
        &format!("{name}.yaml"),
        &pod_yaml(name, COMMAND, "  terminationGracePeriodSeconds: 0\n"),
    );
    let full = format!("{name}-{}", node.name);
    loop {
        if let Some(s) = node.snapshot()
            && s.pods.iter().any(|p| {
                p.name == full
                    && p.conditions
                        .iter()
                        .any(|c| c.kind == "Ready" && c.status == "True")
            })
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "static pod {name} did not start"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() * p).div_ceil(100)).saturating_sub(1);
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `RssAnon`, `RssFile`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}
