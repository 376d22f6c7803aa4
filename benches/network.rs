//! Pod networking's cost: pod start with a network (bridge mode: IPAM, veth pair, addresses,
//! routes, NAT table) against the same pod with `hostNetwork: true`, on one agent.
//!
//! ```text
//! sudo -E cargo bench --bench network      # root and runc; ~1 min after the build
//! ```
//!
//! Each start is a manifest renamed into `manifests/` until the agent's status snapshot shows
//! the container running (the foundation bench's measure and its lab, see
//! `benches/foundation/lab.rs`), then the pod is removed and waited for. 20 starts each,
//! interleaved, after one warm-up each; the overhead is the difference of the medians
//! (target <= 15 ms), and the ratio is reported beside it. Nothing is asserted. The bridge
//! (`nlbench0`, podCIDR 10.254.254.0/24, routed nowhere else) and its NAT table are removed at
//! the end.

#[allow(dead_code)]
#[path = "../tests/common/busybox.rs"]
mod busybox;
#[path = "foundation/lab.rs"]
#[allow(dead_code)]
mod lab;
#[path = "foundation/procfs.rs"]
#[allow(dead_code)]
mod procfs;
#[path = "foundation/report.rs"]
#[allow(dead_code)]
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lab::{Error, Lab, pod_manifest};
use report::{median, millis};

const COMMAND: &str = "echo started; exec sleep 1000";
const ITERATIONS: usize = 20;
const BRIDGE: &str = "nlbench0";
const POD_CIDR: &str = "10.254.254.0/24";
const TARGET_MS: f64 = 15.0;

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    if !rustix::process::geteuid().is_root() {
        println!("not root: the network bench needs root and runc");
        return ExitCode::SUCCESS;
    }
    let result = bench();
    let _ = nanolet::net::nat::remove(BRIDGE);
    if let Ok(mut sock) = nanolet::netlink::route::open() {
        let _ = nanolet::netlink::route::delete_link(&mut sock, BRIDGE);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<(), Error> {
    let agent_exe = std::env::var_os("NANOLET_BENCH_AGENT")
        .map_or(PathBuf::from(env!("CARGO_BIN_EXE_nanolet")), PathBuf::from);
    let base = std::env::var_os("NANOLET_BENCH_DIR")
        .map_or(PathBuf::from("/tmp/nanolet-network-bench"), PathBuf::from);
    let image = std::env::var_os("NANOLET_BENCH_IMAGE").map(PathBuf::from);
    println!("agent binary: {}", agent_exe.display());
    let mut lab = Lab::create(&base, &agent_exe, image.as_deref())?;
    // Its own cgroup parent (the foundation bench may run beside it) and the bridge network.
    let config_path = base.join("cfg/nanolet.yaml");
    let config = std::fs::read_to_string(&config_path)
        .map_err(lab::io_err("reading nanolet.yaml"))?
        .replace(lab::CGROUP_PARENT, "nanolet-network-bench");
    std::fs::write(
        &config_path,
        format!("{config}podCIDR: {POD_CIDR}\npodBridgeName: {BRIDGE}\n"),
    )
    .map_err(lab::io_err("writing nanolet.yaml"))?;
    lab.start_agent()?;

    start_and_stop(&lab, "warmup-net", false)?;
    start_and_stop(&lab, "warmup-host", true)?;
    let (mut net, mut host) = (Vec::new(), Vec::new());
    for i in 1..=ITERATIONS {
        let n = start_and_stop(&lab, &format!("net-{i}"), false)?;
        let h = start_and_stop(&lab, &format!("host-{i}"), true)?;
        eprintln!(
            "start {i}/{ITERATIONS}: bridge network {}, hostNetwork {}",
            millis(n),
            millis(h)
        );
        net.push(n);
        host.push(h);
    }
    let (Some(n), Some(h)) = (median(&net), median(&host)) else {
        return Ok(());
    };
    let overhead_ms = (n.as_secs_f64() - h.as_secs_f64()) * 1000.0;
    println!(
        "\npod start with networking (median of {ITERATIONS}): {} vs hostNetwork {} = {:.2}x; overhead {overhead_ms:.1} ms (target <= {TARGET_MS} ms): {}",
        millis(n),
        millis(h),
        n.as_secs_f64() / h.as_secs_f64(),
        if overhead_ms <= TARGET_MS {
            "meets target"
        } else {
            "MISSES target"
        }
    );
    drop(lab);
    Ok(())
}

/// Starts pod `name` (with `hostNetwork` or not), waits until it runs, removes it and waits
/// until it is gone. Returns manifest rename → running.
fn start_and_stop(lab: &Lab, name: &str, host_network: bool) -> Result<Duration, Error> {
    let mut manifest = pod_manifest(name, COMMAND);
    if host_network {
        manifest = manifest.replace("spec:\n", "spec:\n  hostNetwork: true\n");
    }
    lab.start_and_stop(name, &manifest)
}
