//! A test node: one nanolet agent with its own configuration directory, state folders and
//! cgroup parent, driven through files (manifests in, status snapshot and logs out) exactly as
//! a user drives it. Every node cleans up after itself, even when its test fails.
//!
//! These tests need root, runc and the busybox image script (apt). Without root they print
//! "skipped"; with `NANOLET_REQUIRE_ROOT_TESTS=1` (set by `.ci/test`) a skip is a failure.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod apiserver;
pub mod busybox;
pub mod cluster;
pub mod registry;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nanolet::pod::status::{ContainerState, PodStatus, Snapshot};

/// Whether root tests can run here; panics when they must but cannot.
pub fn root_or_skip() -> bool {
    if rustix::process::geteuid().is_root()
        && Command::new("runc").arg("--version").output().is_ok()
    {
        return true;
    }
    if std::env::var_os("NANOLET_REQUIRE_ROOT_TESTS").is_some() {
        panic!("root tests are required here but cannot run: need root and runc");
    }
    eprintln!("skipped: needs root and runc");
    false
}

/// The busybox OCI layout, built once per test process.
pub fn busybox_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("nanolet-test-busybox-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        if let Err(e) = busybox::build_layout(&dir) {
            panic!("{e}");
        }
        dir
    })
}

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Node {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub cgroup_parent: String,
    agent: Option<Child>,
}

impl Node {
    /// A node whose configuration directory holds the busybox image and `extra` settings.
    pub fn new(extra: &str) -> Node {
        let node = Node::without_images(extra);
        copy_dir(busybox_layout(), &node.path("images/busybox"));
        node
    }

    /// A node with an empty `images/`: its pods' images must be pulled.
    pub fn without_images(extra: &str) -> Node {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = tempfile::Builder::new()
            .prefix("nanolet-node-")
            .tempdir()
            .unwrap();
        let name = format!("t{}-{n}", std::process::id());
        let cgroup_parent = format!("nanolet-test-{}-{n}", std::process::id());
        let root = dir.path();
        fs::create_dir_all(root.join("manifests")).unwrap();
        fs::create_dir_all(root.join("images")).unwrap();
        let config = format!(
            "nodeName: {name}\ndataDir: {d}/state/data\nrunDir: {d}/state/run\npodLogsDir: {d}/state/logs\ncgroupParent: {cgroup_parent}\nfileCheckFrequency: 1s\nlogLevel: debug\ncrashLoopBackOff:\n  initialContainerRestartPeriod: 1s\n  maxContainerRestartPeriod: 4s\n{extra}",
            d = root.display()
        );
        fs::write(root.join("nanolet.yaml"), config).unwrap();
        Node {
            dir,
            name,
            cgroup_parent,
            agent: None,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn run_dir(&self) -> PathBuf {
        self.path("state/run")
    }

    pub fn runc_root(&self) -> PathBuf {
        self.path("state/run/runc")
    }

    pub fn start(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("agent.log"))
            .unwrap();
        // Benches may run another build (the static musl one, for memory numbers).
        let exe = std::env::var_os("NANOLET_BENCH_AGENT")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_nanolet").into());
        let child = Command::new(exe)
            .args(["agent", "--config-dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// SIGTERM: the agent exits and leaves its pods running.
    pub fn stop_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent did not exit on SIGTERM\n{}", self.agent_log());
        }
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// Writes a manifest the way a careful tool does: a dotfile, then a rename.
    pub fn write_manifest(&self, file: &str, text: &str) {
        let tmp = self.path(&format!("manifests/.{file}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.path(&format!("manifests/{file}"))).unwrap();
    }

    /// Writes the manifest `<name>.yaml`: [`pod_yaml`] with `extra_spec`.
    pub fn write_pod(&self, name: &str, script: &str, extra_spec: &str) {
        self.write_manifest(&format!("{name}.yaml"), &pod_yaml(name, script, extra_spec));
    }

    pub fn remove_manifest(&self, file: &str) {
        fs::remove_file(self.path(&format!("manifests/{file}"))).unwrap();
    }

    pub fn snapshot(&self) -> Option<Snapshot> {
        let bytes = fs::read(self.run_dir().join("status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Polls the status snapshot until `check` holds; panics with the last snapshot and the
    /// agent's log after `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Snapshot) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(s) = self.snapshot() {
                if let Some(v) = check(&s) {
                    return v;
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}\nlast snapshot: {}\nagent log:\n{}",
            serde_json::to_string_pretty(&last).unwrap(),
            self.agent_log()
        );
    }

    /// The static pod's status by its manifest name (`web` → `web-<node>`).
    pub fn pod<'a>(&self, s: &'a Snapshot, name: &str) -> Option<&'a PodStatus> {
        let full = format!("{name}-{}", self.name);
        s.pods.iter().find(|p| p.name == full)
    }

    pub fn wait_running(&self, name: &str) -> PodStatus {
        self.wait_for(
            &format!("pod {name} running"),
            Duration::from_secs(60),
            |s| {
                self.pod(s, name)
                    .filter(|p| {
                        !p.container_statuses.is_empty()
                            && p.container_statuses.iter().all(|c| c.is_running())
                    })
                    .cloned()
            },
        )
    }

    pub fn wait_gone(&self, name: &str) {
        self.wait_for(&format!("pod {name} gone"), Duration::from_secs(60), |s| {
            self.pod(s, name).is_none().then_some(())
        });
    }

    /// IDs of the containers runc knows under this node's root.
    pub fn runc_ids(&self) -> Vec<String> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.runc_root())
            .args(["list", "-q"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    pub fn log_path(&self, pod: &PodStatus, container: &str, attempt: u32) -> PathBuf {
        self.path(&format!(
            "state/logs/{}_{}_{}/{container}/{attempt}.log",
            pod.namespace, pod.name, pod.uid
        ))
    }

    /// Mount points below this node's folder.
    pub fn mounts(&self) -> Vec<String> {
        let root = self.dir.path().display().to_string();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect()
    }

    /// A pod's cgroup folders, in every hierarchy and under every QoS class.
    pub fn cgroups(&self, pod_uid: &str) -> Vec<PathBuf> {
        nanolet::pod::resources::pod_cgroup_paths(&self.cgroup_parent, pod_uid)
            .iter()
            .flat_map(|rel| nanolet::sys::cgroup::find(Path::new("/sys/fs/cgroup"), rel))
            .collect()
    }

    /// What container `container` of `pod` wrote to stdout in its first attempt, without the
    /// CRI prefix.
    pub fn output(&self, pod: &PodStatus, container: &str) -> String {
        fs::read_to_string(self.log_path(pod, container, 0))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Force: the tests that check graceful stops do so themselves.
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for id in self.runc_ids() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(self.runc_root())
                .args(["delete", "-f", &id])
                .output();
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
        let _ = nanolet::sys::cgroup::remove(Path::new("/sys/fs/cgroup"), &self.cgroup_parent);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A pod manifest with one busybox container running `script` under `sh -c`.
pub fn pod_yaml(name: &str, script: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{extra_spec}  containers:\n  - name: app\n    image: busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", {script:?}]\n"
    )
}

pub fn terminated(
    c: &nanolet::pod::status::ContainerStatus,
) -> Option<&nanolet::pod::status::Terminated> {
    match &c.state {
        ContainerState::Terminated(t) => Some(t),
        _ => None,
    }
}
