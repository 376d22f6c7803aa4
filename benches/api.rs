//! `cargo bench --bench api` (root): bytes on the wire per idle minute between the agent and
//! the API server (Lease renewals and node status), measured at the fake API server on
//! loopback (plain HTTP, so these are HTTP bytes; TLS adds ~30 bytes per record).
//!
//! The agent runs with `nodeStatusReportFrequency: 20s` so that the window holds periodic
//! status reports too; each exchange is measured, and the idle minute at kubelet's defaults
//! (a Lease renewal every 10 s, a status report every 5 min) is computed from the sizes.
//!
//! Baseline, measured in the same run: the same node reporting its full status every 10 s
//! (kubelet's behaviour before node Leases), i.e. six of nanolet's own full status PATCH
//! exchanges per minute, replayed against the same fake.
//!
//! `NANOLET_BENCH_SECONDS` changes the window (default 60). The bytes do not depend on the
//! build profile: `cargo bench --bench api --profile dev` gives the same numbers sooner.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::{ApiServer, raw_request};

fn main() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("api bench: skipped (needs root: the agent runs as it would on a node)");
        return;
    }
    let seconds: u64 = std::env::var("NANOLET_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let server = ApiServer::start();
    let dir = tempfile::Builder::new()
        .prefix("nanolet-bench-api-")
        .tempdir()
        .unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("manifests")).unwrap();
    let name = format!("bench-{}", std::process::id());
    std::fs::write(
        root.join("nanolet.yaml"),
        format!(
            "nodeName: {name}\ndataDir: {d}/data\nrunDir: {d}/run\npodLogsDir: {d}/logs\ncgroupParent: nanolet-bench-{p}\nlogLevel: info\nnodeStatusReportFrequency: 20s\n",
            d = root.display(),
            p = std::process::id()
        ),
    )
    .unwrap();
    server.write_kubeconfig(root, Some("bench-token"));
    server.faults(|f| f.token = Some("bench-token".into()));
    let mut agent = Command::new(env!("CARGO_BIN_EXE_nanolet"))
        .args(["agent", "--config-dir"])
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = server.wait_for(Duration::from_secs(30), |s| {
        s.count("PATCH", "/status") >= 1 && s.count("PUT", "/leases/") >= 1
    });
    assert!(ready, "the agent did not register");
    let (in0, out0) = server.bytes();
    let (requests0, connections0) = {
        let s = server.state();
        (s.requests.len(), s.connections)
    };
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let elapsed = start.elapsed().as_secs_f64();
    let (in1, out1) = server.bytes();
    let (window, connections) = {
        let s = server.state();
        (
            s.requests[requests0..].to_vec(),
            s.connections - connections0,
        )
    };
    let _ = agent.kill();
    let _ = agent.wait();
    let per_minute = |b: u64| b as f64 * 60.0 / elapsed;
    let total = (in1 - in0) + (out1 - out0);
    let count = |m: &str, p: &str| {
        window
            .iter()
            .filter(|r| r.method == m && r.path.contains(p))
            .count()
    };

    // Baseline: the agent's own first (full) status PATCH, six times a minute.
    let full = server
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH" && r.path.ends_with("/status"))
        .unwrap();
    let body = serde_json::to_vec(&full.body).unwrap();
    let (b_in0, b_out0) = server.bytes();
    let auth = "Bearer bench-token";
    let (status, _, _) = raw_request(
        server.addr(),
        "PATCH",
        &full.path,
        &[
            ("Authorization", auth),
            ("Content-Type", "application/strategic-merge-patch+json"),
            ("Accept-Encoding", "gzip"),
            ("User-Agent", "kubelet"),
        ],
        Some(&body),
    );
    assert_eq!(status, 200);
    let (b_in1, b_out1) = server.bytes();
    let one_full = (b_in1 - b_in0) + (b_out1 - b_out0);
    let baseline = one_full * 6;

    println!("api: idle node over {elapsed:.0} s (bytes at the API server, both directions)");
    println!(
        "  requests: {} lease PUT, {} status PATCH, {} other; new TCP connections: {connections}",
        count("PUT", "/leases/"),
        count("PATCH", "/status"),
        window.len() - count("PUT", "/leases/") - count("PATCH", "/status")
    );
    println!(
        "  nanolet: {:.0} bytes/min ({:.0} sent by the agent, {:.0} answered)",
        per_minute(total),
        per_minute(in1 - in0),
        per_minute(out1 - out0)
    );
    let mean = |m: &str, p: &str| {
        let sizes: Vec<u64> = window
            .iter()
            .filter(|r| r.method == m && r.path.contains(p))
            .map(|r| r.wire_bytes)
            .collect();
        sizes.iter().sum::<u64>() as f64 / sizes.len().max(1) as f64
    };
    let (lease, report) = (mean("PUT", "/leases/"), mean("PATCH", "/status"));
    let idle = 6.0 * lease + report / 5.0;
    println!(
        "  one Lease renewal: {lease:.0} bytes; one periodic status report (conditions only): {report:.0} bytes"
    );
    println!("  idle minute at kubelet's defaults (6 renewals + 1/5 report): {idle:.0} bytes");
    println!(
        "  baseline (full status every 10 s, no Lease): {baseline} bytes/min ({one_full} per report)"
    );
    println!("  ratio nanolet / baseline: {:.2}x", idle / baseline as f64);
}
