//! The bench's private node: a config dir, the busybox image, one nanolet agent (the release
//! binary cargo built), the runc baseline's bundles, and everything needed to take it all down.
//!
//! ```text
//!   <base>/cfg/nanolet.yaml        nodeName bench, cgroupParent nanolet-foundation-bench
//!   <base>/cfg/manifests/          the agent's static pods (written by rename from staging/)
//!   <base>/cfg/images/busybox/     OCI layout from images/build-busybox-image
//!   <base>/cfg/staging/            manifests are written here first, then renamed in
//!   <base>/state/{data,run,logs}   the agent's dataDir, runDir (a tmpfs), podLogsDir
//!   <base>/baseline/               rootfs copy, one bundle per `runc run -d`, runc --root (a tmpfs)
//!   <base>/agent.log, agent.pid    the agent's stderr, and its pid for a later stale cleanup
//! ```
//!
//! [`Lab`] is the cleanup guard: dropping it (at the end, on an error, or on a panic as it
//! unwinds) removes the manifests, waits for the agent to stop its pods, stops the agent,
//! `runc delete -f`s whatever is left in both runc roots, unmounts everything below `<base>`,
//! removes both cgroup parents and `<base>` itself. A run killed outright (SIGKILL, Ctrl-C) leaves
//! `<base>` behind; the next run finds it and takes it down first. `NANOLET_BENCH_KEEP_LOG=FILE`
//! keeps a copy of the agent's log.
//!
//! Never touches anything outside `<base>` but its own two cgroup parents.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nanolet::pod::status::{PodStatus, Snapshot};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fd::OwnedFd;
use rustix::fs::inotify;
use rustix::mount::{MountFlags, UnmountFlags};
use rustix::process::{Pid, Signal};

/// The agent's node name: static pods are named `<manifest name>-bench`.
pub const NODE_NAME: &str = "bench";
/// The agent's `cgroupParent`.
pub const CGROUP_PARENT: &str = "nanolet-foundation-bench";
/// The cgroup parent of the baseline's runc containers.
pub const BASELINE_CGROUP_PARENT: &str = "nanolet-foundation-bench-runc";

/// What went wrong setting up or driving the lab.
#[derive(Debug)]
pub enum Error {
    /// A file or folder operation failed.
    Io { what: String, source: io::Error },
    /// A helper program (runc, the image script) failed.
    Command { what: String, detail: String },
    /// The agent did not reach a state in time.
    Timeout { what: String, waited: Duration },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Command { what, detail } => write!(f, "{what}: {detail}"),
            Error::Timeout { what, waited } => {
                write!(f, "{what}: not reached after {:.1} s", waited.as_secs_f64())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Wraps an `io::Error` with what was being done.
pub fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Runs `cmd` to completion; its output is returned, a non-zero exit is an error with stderr.
pub fn run(cmd: &mut Command, what: &str) -> Result<String, Error> {
    let out = cmd.stdin(Stdio::null()).output().map_err(io_err(what))?;
    if !out.status.success() {
        return Err(Error::Command {
            what: what.to_string(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bench's node; dropping it takes everything down (see the module doc).
pub struct Lab {
    pub base: PathBuf,
    pub agent_exe: PathBuf,
    agent: Option<Child>,
    /// inotify on the run dir: wakes the bench when the agent renames a new status.json in.
    status_watch: Option<OwnedFd>,
}

impl Lab {
    /// Prepares `<base>` (taking down what an interrupted run left there) with the busybox image
    /// at `image` (an OCI layout), or built by `images/build-busybox-image` when `None`.
    pub fn create(base: &Path, agent_exe: &Path, image: Option<&Path>) -> Result<Lab, Error> {
        if base.exists() {
            eprintln!(
                "bench: {} exists (an interrupted run?): taking it down first",
                base.display()
            );
            take_down(base, None);
        }
        let lab = Lab {
            base: base.to_path_buf(),
            agent_exe: agent_exe.to_path_buf(),
            agent: None,
            status_watch: None,
        };
        for dir in [
            "cfg/manifests",
            "cfg/images",
            "cfg/staging",
            "state/run",
            "baseline/runc",
        ] {
            let dir = base.join(dir);
            fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        // An appliance's runDir (and so runc's state) is on tmpfs: so are both here.
        for dir in ["state/run", "baseline/runc"] {
            let dir = base.join(dir);
            rustix::mount::mount(
                "tmpfs",
                &dir,
                "tmpfs",
                MountFlags::NOSUID | MountFlags::NODEV,
                c"mode=0755",
            )
            .map_err(|e| io_err(format!("mounting a tmpfs on {}", dir.display()))(e.into()))?;
        }
        let image_dir = base.join("cfg/images/busybox");
        match image {
            Some(layout) => {
                run(
                    Command::new("cp").arg("-a").arg(layout).arg(&image_dir),
                    "copying the image",
                )?;
            }
            None => {
                crate::busybox::build_layout(&image_dir).map_err(|detail| Error::Command {
                    what: format!("building the busybox image into {}", image_dir.display()),
                    detail,
                })?;
            }
        }
        let state = base.join("state");
        let config = format!(
            "nodeName: {NODE_NAME}\ndataDir: {}\nrunDir: {}\npodLogsDir: {}\ncgroupParent: {CGROUP_PARENT}\n",
            state.join("data").display(),
            state.join("run").display(),
            state.join("logs").display(),
        );
        let path = base.join("cfg/nanolet.yaml");
        fs::write(&path, config).map_err(io_err(format!("writing {}", path.display())))?;
        Ok(lab)
    }

    pub fn run_dir(&self) -> PathBuf {
        self.base.join("state/run")
    }

    /// Starts the agent and waits for its first status snapshot.
    pub fn start_agent(&mut self) -> Result<u32, Error> {
        let log_path = self.base.join("agent.log");
        let log =
            File::create(&log_path).map_err(io_err(format!("creating {}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io_err("duplicating the agent log"))?;
        let child = Command::new(&self.agent_exe)
            .arg("agent")
            .arg("--config-dir")
            .arg(self.base.join("cfg"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err(format!("starting {}", self.agent_exe.display())))?;
        let pid = child.id();
        self.agent = Some(child);
        let pid_file = self.base.join("agent.pid");
        fs::write(&pid_file, pid.to_string())
            .map_err(io_err(format!("writing {}", pid_file.display())))?;
        let watch = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(|e| io_err("inotify_init")(e.into()))?;
        inotify::add_watch(
            &watch,
            self.run_dir(),
            inotify::WatchFlags::MOVED_TO | inotify::WatchFlags::CLOSE_WRITE,
        )
        .map_err(|e| io_err(format!("watching {}", self.run_dir().display()))(e.into()))?;
        self.status_watch = Some(watch);
        self.wait_for(
            "the agent's first status snapshot",
            Duration::from_secs(30),
            |s| s.agent_pid == pid as i32,
        )?;
        Ok(pid)
    }

    /// The agent's current snapshot, if it has written one that parses.
    pub fn snapshot(&self) -> Option<Snapshot> {
        nanolet::ctl::ps::read_snapshot(&self.run_dir()).ok()
    }

    /// Waits until the agent's snapshot satisfies `done`: rechecks whenever a new status.json is
    /// renamed into the run dir (and at least every 100 ms). Returns when it was seen.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Snapshot) -> bool,
    ) -> Result<Instant, Error> {
        let start = Instant::now();
        loop {
            if self.snapshot().is_some_and(|s| done(&s)) {
                return Ok(Instant::now());
            }
            if let Some(child) = &self.agent
                && !nanolet::sys::reaper::is_alive(child.id() as i32)
            {
                return Err(Error::Command {
                    what: what.to_string(),
                    detail: format!(
                        "the agent exited; see {}",
                        self.base.join("agent.log").display()
                    ),
                });
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    waited,
                });
            }
            self.wait_status_change((timeout - waited).min(Duration::from_millis(100)));
        }
    }

    fn wait_status_change(&self, at_most: Duration) {
        let Some(watch) = &self.status_watch else {
            std::thread::sleep(at_most);
            return;
        };
        let timeout = Timespec {
            tv_sec: at_most.as_secs() as _,
            tv_nsec: at_most.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(watch, PollFlags::IN)];
        if rustix::event::poll(&mut fds, Some(&timeout)).unwrap_or(0) > 0 {
            // Drain the events: which file changed does not matter, the snapshot is re-read.
            let mut buf = [0u8; 4096];
            while rustix::io::read(watch, &mut buf).is_ok_and(|n| n > 0) {}
        }
    }

    /// Writes a pod manifest into staging, then renames it into `manifests/` (what an atomic
    /// deployment does). Returns the instant of the rename.
    pub fn add_manifest(&self, name: &str, yaml: &str) -> Result<Instant, Error> {
        let staged = self.base.join("cfg/staging").join(format!("{name}.yaml"));
        fs::write(&staged, yaml).map_err(io_err(format!("writing {}", staged.display())))?;
        let target = self.base.join("cfg/manifests").join(format!("{name}.yaml"));
        let at = Instant::now();
        fs::rename(&staged, &target)
            .map_err(io_err(format!("renaming into {}", target.display())))?;
        Ok(at)
    }

    pub fn remove_manifest(&self, name: &str) -> Result<(), Error> {
        let path = self.base.join("cfg/manifests").join(format!("{name}.yaml"));
        fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))
    }

    /// Adds the static pod `name` from `yaml`, waits until it is running, removes it and waits
    /// until it is gone. Returns manifest rename → running.
    pub fn start_and_stop(&self, name: &str, yaml: &str) -> Result<Duration, Error> {
        let pod = pod_name(name);
        let at = self.add_manifest(name, yaml)?;
        let running = self.wait_for(
            &format!("pod {pod} running"),
            Duration::from_secs(60),
            |s| is_running(s, &pod),
        )?;
        self.remove_manifest(name)?;
        self.wait_for(
            &format!("pod {pod} removed"),
            Duration::from_secs(60),
            |s| is_gone(s, &pod),
        )?;
        Ok(running - at)
    }

    /// The runc root of the baseline containers.
    pub fn baseline_root(&self) -> PathBuf {
        self.base.join("baseline/runc")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let agent = self.agent.take();
        take_down(&self.base, agent.map(|child| (child, &*self)));
    }
}

/// A static pod manifest whose one container runs `command`; a grace period of 0 so that removal
/// does not wait 30 s for a `sleep` that ignores SIGTERM as PID 1.
pub fn pod_manifest(name: &str, command: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n    - name: app\n      image: busybox:latest\n      imagePullPolicy: IfNotPresent\n      command: [\"sh\", \"-c\", {command:?}]\n"
    )
}

/// The static pod's name in the snapshot.
pub fn pod_name(manifest_name: &str) -> String {
    format!("{manifest_name}-{NODE_NAME}")
}

/// Whether the snapshot shows `pod` with all its containers running.
pub fn is_running(snapshot: &Snapshot, pod: &str) -> bool {
    snapshot.pods.iter().any(|p| {
        p.name == pod
            && !p.container_statuses.is_empty()
            && p.container_statuses.iter().all(|c| c.is_running())
    })
}

pub fn is_gone(snapshot: &Snapshot, pod: &str) -> bool {
    !snapshot.pods.iter().any(|p: &PodStatus| p.name == pod)
}

/// Takes `base` down; `agent` is the running agent and its lab, for a graceful stop. Best
/// effort: every step runs even when an earlier one failed, and failures are printed.
fn take_down(base: &Path, agent: Option<(Child, &Lab)>) {
    let manifests = base.join("cfg/manifests");
    if let Ok(entries) = fs::read_dir(&manifests) {
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }
    match agent {
        Some((mut child, lab)) => {
            // The agent stops and cleans up the pods whose manifests are gone.
            if let Err(e) = lab.wait_for("all pods stopped", Duration::from_secs(60), |s| {
                s.pods.is_empty()
            }) {
                eprintln!("bench cleanup: {e}");
            }
            stop_process(&mut child);
        }
        None => kill_stale_agent(base),
    }
    for root in [base.join("state/run/runc"), base.join("baseline/runc")] {
        delete_runc_containers(&root);
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in crate::procfs::mounts_under(&mountinfo, base) {
        if let Err(e) = rustix::mount::unmount(point.as_str(), UnmountFlags::DETACH) {
            eprintln!("bench cleanup: unmounting {point}: {e}");
        }
    }
    let cgroups = Path::new(nanolet::sys::cgroup::CGROUP_ROOT);
    for parent in [CGROUP_PARENT, BASELINE_CGROUP_PARENT] {
        // A container's last process may still be exiting: retry briefly.
        let mut result = nanolet::sys::cgroup::remove(cgroups, parent);
        for _ in 0..50 {
            if result.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            result = nanolet::sys::cgroup::remove(cgroups, parent);
        }
        if let Err(e) = result {
            eprintln!("bench cleanup: {e}");
        }
    }
    if let Some(keep) = std::env::var_os("NANOLET_BENCH_KEEP_LOG")
        && let Err(e) = fs::copy(base.join("agent.log"), &keep)
    {
        let keep = Path::new(&keep).display();
        eprintln!("bench cleanup: keeping the agent log as {keep}: {e}");
    }
    if let Err(e) = fs::remove_dir_all(base) {
        eprintln!("bench cleanup: removing {}: {e}", base.display());
    }
}

/// SIGTERM, up to 10 s to exit, then SIGKILL.
fn stop_process(child: &mut Child) {
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("bench cleanup: the agent ignored SIGTERM for 10 s: SIGKILL");
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills an agent an interrupted run left running: the pid in `agent.pid`, if that process's
/// command line still names this base (the pid may have been reused).
fn kill_stale_agent(base: &Path) {
    let Some(pid) = fs::read_to_string(base.join("agent.pid"))
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .and_then(Pid::from_raw)
    else {
        return;
    };
    let cmdline = fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero())).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(&*base.join("cfg").to_string_lossy()) {
        return;
    }
    let _ = rustix::process::kill_process(pid, Signal::KILL);
    for _ in 0..500 {
        if !Path::new(&format!("/proc/{}", pid.as_raw_nonzero())).exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `runc delete -f` every container in `root`.
fn delete_runc_containers(root: &Path) {
    if !root.exists() {
        return;
    }
    let listed = run(
        Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["list", "-q"]),
        "runc list",
    );
    let ids = match listed {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!("bench cleanup: {e}");
            return;
        }
    };
    for id in ids.split_whitespace() {
        let deleted = run(
            Command::new("runc")
                .arg("--root")
                .arg(root)
                .args(["delete", "-f", id]),
            &format!("runc delete -f {id}"),
        );
        if let Err(e) = deleted {
            eprintln!("bench cleanup: {e}");
        }
    }
}
