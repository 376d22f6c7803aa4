//! The agent's RSS around a pull (part of `cargo bench --bench pull`; root only).
//!
//! A running agent pulls the bench image for a pod, in its `internal-pull` child; the
//! agent's own `VmRSS` (`/proc/<pid>/status`) must not grow with the image (target ± 256
//! KiB). A pod costs the agent some memory of its own (status, worker task), so the same
//! run has a baseline: a second, identical pod of the same image, now in the store (no
//! pull). The pull's share is `(after pull − before) − (after second pod − after pull)`.
//!
//! The image holds no runnable program, so each pod's container fails to start
//! (`restartPolicy: Never`): the pull and the pod's bookkeeping happen all the same, and no
//! container keeps running. Pods use the host network (no bridge or netns to create).
//!
//! The agent is `NANOLET_BENCH_AGENT`, else the static musl release build when it exists
//! (`cargo build --release --target x86_64-unknown-linux-musl`), else the host build (glibc:
//! its malloc arenas make the numbers larger and noisier; the report says which ran).

use nanolet::pod::status::{ContainerState, Snapshot};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Time for the agent to go quiet after each step, before its RSS is read.
const SETTLE: Duration = Duration::from_secs(3);
const TIMEOUT: Duration = Duration::from_secs(120);

pub struct AgentRss {
    pub agent: PathBuf,
    pub before_kib: u64,
    pub after_pull_kib: u64,
    pub after_second_pod_kib: u64,
}

impl AgentRss {
    /// RSS growth over the pull and its pod.
    pub fn pull_and_pod_kib(&self) -> i64 {
        self.after_pull_kib as i64 - self.before_kib as i64
    }

    /// RSS growth over a pod whose image is in the store.
    pub fn pod_kib(&self) -> i64 {
        self.after_second_pod_kib as i64 - self.after_pull_kib as i64
    }

    /// The pull's own share.
    pub fn pull_kib(&self) -> i64 {
        self.pull_and_pod_kib() - self.pod_kib()
    }
}

fn agent_binary() -> (PathBuf, bool) {
    if let Some(p) = std::env::var_os("NANOLET_BENCH_AGENT") {
        return (PathBuf::from(p), true);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    let musl = target.join("x86_64-unknown-linux-musl/release/nanolet");
    if cfg!(target_arch = "x86_64") && musl.is_file() {
        return (musl, true);
    }
    (PathBuf::from(env!("CARGO_BIN_EXE_nanolet")), false)
}

fn vm_rss_kib(pid: u32) -> Result<u64, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| "no VmRSS".to_string())
}

fn pod_manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  hostNetwork: true\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 0\n  containers:\n    - name: app\n      image: {image}\n      imagePullPolicy: IfNotPresent\n"
    )
}

/// The agent, its config dir and node name; stopped (pods first) on drop.
struct Agent {
    child: Child,
    dir: PathBuf,
    node: String,
}

impl Agent {
    fn snapshot(&self) -> Option<Snapshot> {
        nanolet::ctl::ps::read_snapshot(&self.dir.join("run")).ok()
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut(&Snapshot) -> bool) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < TIMEOUT {
            if self.snapshot().is_some_and(|s| done(&s)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("agent bench: timed out waiting for {what}"))
    }

    /// Whether pod `name`'s container is past its image (started or failed to).
    fn is_past_image(s: &Snapshot, name: &str) -> bool {
        s.pods.iter().any(|p| {
            p.name.starts_with(name)
                && p.container_statuses.iter().all(|c| {
                    !matches!(&c.state, ContainerState::Waiting { reason, .. }
                        if reason == "ContainerCreating")
                })
                && !p.container_statuses.is_empty()
        })
    }

    /// Adds the pod, waits until its container is past the image, lets the agent settle,
    /// and reads its RSS.
    fn add_pod(&self, name: &str, image: &str) -> Result<u64, String> {
        let manifests = self.dir.join("manifests");
        let tmp = self.dir.join(format!(".{name}.yaml"));
        fs::write(&tmp, pod_manifest(name, image)).map_err(|e| e.to_string())?;
        fs::rename(&tmp, manifests.join(format!("{name}.yaml"))).map_err(|e| e.to_string())?;
        self.wait_for(&format!("pod {name}"), |s| Self::is_past_image(s, name))?;
        std::thread::sleep(SETTLE);
        vm_rss_kib(self.child.id())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(self.dir.join("manifests")) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        if let Err(e) = self.wait_for("the pods to stop", |s| s.pods.is_empty()) {
            eprintln!("{e} (node {})", self.node);
        }
        // SIGTERM: the agent exits (its pods are gone already).
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

/// Runs the measurement in `work` (a fresh directory); `None` without root.
pub fn measure(reference: &str, work: &Path) -> Result<Option<AgentRss>, String> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let (agent, _) = agent_binary();
    let dir = work.join("agent");
    fs::create_dir_all(dir.join("manifests")).map_err(|e| e.to_string())?;
    fs::create_dir_all(dir.join("images")).map_err(|e| e.to_string())?;
    let node = format!("bench-rss-{}", std::process::id());
    let d = dir.display();
    let config = format!(
        "nodeName: {node}\ndataDir: {d}/data\nrunDir: {d}/run\npodLogsDir: {d}/logs\ncgroupParent: nanolet-bench-{}\nfileCheckFrequency: 1s\n",
        std::process::id()
    );
    fs::write(dir.join("nanolet.yaml"), config).map_err(|e| e.to_string())?;
    let log = fs::File::create(dir.join("agent.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&agent)
        .args(["agent", "--config-dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", agent.display()))?;
    let agent_proc = Agent {
        child,
        dir: dir.clone(),
        node,
    };
    agent_proc.wait_for("the agent's first status snapshot", |_| true)?;
    std::thread::sleep(SETTLE);
    let before_kib = vm_rss_kib(agent_proc.child.id())?;
    let after_pull_kib = agent_proc.add_pod("pulled", reference)?;
    let records = fs::read_to_string(dir.join("data/images/index.json")).unwrap_or_default();
    if !records.contains(reference) {
        let status = agent_proc.snapshot().map(|s| format!("{:?}", s.pods));
        return Err(format!(
            "agent bench: the pod's image was not pulled: {status:?}"
        ));
    }
    let after_second_pod_kib = agent_proc.add_pod("stored", reference)?;
    drop(agent_proc);
    Ok(Some(AgentRss {
        agent,
        before_kib,
        after_pull_kib,
        after_second_pod_kib,
    }))
}
