//! The pod worker: one task per pod that carries out [`lifecycle`]'s decisions with the runtime.
//!
//! ```text
//!   loop {
//!     plan = lifecycle::plan(slots, now)          pure
//!     start what the plan says                    sandbox, bundle, runc run --detach
//!     publish status                              to the board
//!     wait for: container exit | back-off timer | Stop | images changed
//!   }
//!   Stop: StopSignal → grace period → SIGKILL → runc delete → unmount → namespaces → cgroups
//! ```
//!
//! The worker owns its pod's containers; nothing else starts or stops them.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_executor::LocalExecutor;
use async_io::Timer;
use futures_lite::{AsyncReadExt, FutureExt};

use super::backoff::BackoffPolicy;
use super::board::Board;
use super::config::{self, PodFiles};
use super::images::{self, PullAction, Puller};
use super::lifecycle::{self, RestartPolicy, Slot};
use super::status::{Condition, ContainerState, Phase, PodStatus, Terminated};
use crate::config::NodeConfig;
use crate::image::gc::UseLog;
use crate::image::{Image, ImageStore};
use crate::k8s::{self, Pod};
use crate::runtime::bundle::{Bundle, LogPipes, Record};
use crate::runtime::logs::{LogWriter, Stream};
use crate::runtime::runc::{self, Runc};
use crate::runtime::spec::{self, HostLimits};
use crate::runtime::user;
use crate::state::remove_tree;
use crate::sys::reaper::{self, Exit, Reaper};
use crate::sys::sandbox::Sandbox;
use crate::sys::{cgroup, inroot};

/// How often a container waiting for a pull shows its progress.
const PROGRESS_PERIOD: Duration = Duration::from_secs(1);

/// What every worker shares.
pub struct Context {
    pub config: NodeConfig,
    pub runc: Runc,
    pub reaper: Reaper,
    pub images: ImageStore,
    /// nanolet's own executable, for the `internal-sandbox` child.
    pub exe: PathBuf,
    pub host: HostLimits,
    pub backoff: BackoffPolicy,
    pub board: Board,
    pub executor: Rc<LocalExecutor<'static>>,
    pub puller: Puller,
    /// When each image was last used, for image GC (see [`crate::image::gc`]).
    pub images_used: std::cell::RefCell<UseLog>,
}

/// Orders for a worker.
#[derive(Debug)]
pub enum Command {
    /// Stop the pod gracefully and clean up everything it had.
    Stop,
    /// The image store changed: retry containers waiting for an image now.
    ImagesChanged,
}

/// A container found running (or stopped) when nanolet started, handed to its pod's worker.
pub struct Adopted {
    pub record: Record,
    pub state: runc::State,
}

enum Event {
    Exited {
        slot: usize,
        id: String,
        exit: Option<Exit>,
    },
    Command(Command),
}

/// A container this worker runs now.
struct Running {
    id: String,
    bundle: Bundle,
    pid: i32,
    stop_signal: String,
}

/// The handle the agent keeps for each worker.
pub struct Handle {
    pub commands: async_channel::Sender<Command>,
    pub task: async_executor::Task<()>,
}

/// Starts a worker for `pod` (validated, with its uid set) on the context's executor.
pub fn spawn(ctx: Rc<Context>, pod: Pod, source: String, adopted: Vec<Adopted>) -> Handle {
    let (commands, commands_rx) = async_channel::unbounded();
    let (events, events_rx) = async_channel::unbounded();
    let forward = events.clone();
    ctx.executor
        .spawn(async move {
            while let Ok(c) = commands_rx.recv().await {
                if forward.send(Event::Command(c)).await.is_err() {
                    return;
                }
            }
        })
        .detach();
    let worker = Worker::new(ctx.clone(), pod, source, events, events_rx);
    let task = ctx.executor.spawn(worker.run(adopted));
    Handle { commands, task }
}

struct Worker {
    ctx: Rc<Context>,
    pod: Pod,
    source: String,
    restart: RestartPolicy,
    slots: Vec<Slot>,
    running: Vec<Option<Running>>,
    sandbox: Sandbox,
    pod_dir: PathBuf,
    files: PodFiles,
    start_time: i64,
    conditions: Vec<Condition>,
    events: async_channel::Sender<Event>,
    events_rx: async_channel::Receiver<Event>,
    terminating: bool,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Worker {
    fn new(
        ctx: Rc<Context>,
        pod: Pod,
        source: String,
        events: async_channel::Sender<Event>,
        events_rx: async_channel::Receiver<Event>,
    ) -> Worker {
        let spec = &pod.spec;
        let slots: Vec<Slot> = spec
            .init_containers
            .iter()
            .map(|c| Slot::new(&c.name, &c.image, true))
            .chain(
                spec.containers
                    .iter()
                    .map(|c| Slot::new(&c.name, &c.image, false)),
            )
            .collect();
        let pod_dir = ctx.config.run_dir.join("pods").join(&pod.metadata.uid);
        let files = PodFiles {
            hosts: pod_dir.join("hosts"),
            hostname: pod_dir.join("hostname"),
            resolv_conf: pod_dir.join("resolv.conf"),
        };
        let restart = match spec.restart_policy {
            k8s::RestartPolicy::Always => RestartPolicy::Always,
            k8s::RestartPolicy::OnFailure => RestartPolicy::OnFailure,
            k8s::RestartPolicy::Never => RestartPolicy::Never,
        };
        Worker {
            sandbox: Sandbox {
                dir: pod_dir.join("ns"),
                host_network: spec.host_network,
            },
            running: slots.iter().map(|_| None).collect(),
            slots,
            restart,
            pod_dir,
            files,
            start_time: unix_now(),
            conditions: Vec::new(),
            ctx,
            pod,
            source,
            events,
            events_rx,
            terminating: false,
        }
    }

    fn name(&self) -> String {
        k8s::pod_full_name(&self.pod)
    }

    fn container(&self, slot: usize) -> &k8s::Container {
        let spec = &self.pod.spec;
        let n = spec.init_containers.len();
        if slot < n {
            &spec.init_containers[slot]
        } else {
            &spec.containers[slot - n]
        }
    }

    async fn run(mut self, adopted: Vec<Adopted>) {
        log::info!(
            "pod {}: starting (uid {}, from {})",
            self.name(),
            self.pod.metadata.uid,
            self.source
        );
        self.adopt_all(adopted).await;
        loop {
            // Orders and exits that are already queued come first: a Stop never waits behind starts.
            while let Ok(event) = self.events_rx.try_recv() {
                if self.handle(event).await {
                    return;
                }
            }
            let now = Instant::now();
            let plan = lifecycle::plan(self.restart, &self.slots, &self.ctx.backoff, now);
            for &(i, until) in &plan.backing_off {
                self.show_backoff(i, until.saturating_duration_since(now));
            }
            if !plan.start.is_empty() {
                for i in plan.start {
                    self.start(i).await;
                }
                self.publish();
                continue;
            }
            self.publish();
            let next = async { self.events_rx.recv().await.ok() };
            let event = match plan.wake_at {
                Some(at) => {
                    next.or(async {
                        Timer::at(at).await;
                        None
                    })
                    .await
                }
                None => next.await,
            };
            if let Some(event) = event
                && self.handle(event).await
            {
                return;
            }
        }
    }

    /// Handles one event; true when the worker is done.
    async fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Exited { slot, id, exit } => {
                self.on_exit(slot, &id, exit).await;
                false
            }
            Event::Command(Command::ImagesChanged) => {
                for slot in &mut self.slots {
                    if matches!(&slot.status.state, ContainerState::Waiting { reason, .. } if reason.starts_with("ErrImage"))
                    {
                        slot.retry_at = None;
                    }
                }
                false
            }
            Event::Command(Command::Stop) => {
                self.terminate().await;
                true
            }
        }
    }

    fn show_backoff(&mut self, i: usize, left: Duration) {
        let pod = self.pod.metadata.name.clone();
        let slot = &mut self.slots[i];
        if let ContainerState::Terminated(t) = &slot.status.state {
            slot.status.last_state = Some(t.clone());
        }
        let delay = slot.backoff.delay().unwrap_or(left);
        slot.status.state = ContainerState::Waiting {
            reason: "CrashLoopBackOff".to_string(),
            message: lifecycle::backoff_message(delay, &slot.status.name, &pod),
        };
    }

    fn create_error(&mut self, i: usize, reason: &str, message: String) {
        log::warn!(
            "pod {}: container {:?}: {reason}: {message}",
            self.name(),
            self.slots[i].status.name
        );
        self.slots[i].record_create_error(reason, message, Instant::now());
    }

    /// Finds (pulling as `imagePullPolicy` says) a container's image and its shared rootfs.
    async fn image_for(&mut self, i: usize) -> Result<(Image, PathBuf), (&'static str, String)> {
        let c = self.container(i).clone();
        let lookup = |ctx: &Context| {
            ctx.images
                .resolve(&c.image)
                .map_err(|e| ("ErrImagePull", format!("image {:?}: {e}", c.image)))
        };
        let present = lookup(&self.ctx)?;
        let image = match images::decide(c.image_pull_policy(), present.is_some()) {
            PullAction::Use => present,
            PullAction::Missing => None,
            PullAction::Pull { fallback } => {
                self.slots[i].status.state = ContainerState::Waiting {
                    reason: "ContainerCreating".to_string(),
                    message: format!("pulling image {:?}", c.image),
                };
                self.publish();
                match self.pull_showing_progress(i, &c.image).await {
                    Ok(()) => lookup(&self.ctx)?,
                    Err(e) if fallback => {
                        log::warn!(
                            "pod {}: container {:?}: pulling {:?} failed ({e}); using the image already in the store",
                            self.name(),
                            c.name,
                            c.image
                        );
                        present
                    }
                    Err(e) => {
                        let again = matches!(&self.slots[i].status.state, ContainerState::Waiting { reason, .. }
                            if reason == "ErrImagePull" || reason == "ImagePullBackOff");
                        let reason = if again {
                            "ImagePullBackOff"
                        } else {
                            "ErrImagePull"
                        };
                        return Err((reason, format!("image {:?}: {e}", c.image)));
                    }
                }
            }
        };
        let Some(image) = image else {
            return Err((
                "ErrImageNeverPull",
                format!(
                    "image {:?} is not present in the image store and imagePullPolicy is Never; add it to {} or run `nanolet pull`",
                    c.image,
                    self.ctx.config.images_path.display()
                ),
            ));
        };
        match self.ctx.images.rootfs(&image) {
            Ok(rootfs) => Ok((image, rootfs)),
            Err(e) => Err(("ErrImagePull", format!("image {:?}: {e}", c.image))),
        }
    }

    /// Pulls `reference` for container `i`, publishing the pull's progress in the container's
    /// status message at most once per [`PROGRESS_PERIOD`].
    async fn pull_showing_progress(&mut self, i: usize, reference: &str) -> Result<(), String> {
        let puller = self.ctx.puller.clone();
        let pull = puller.pull(reference);
        futures_lite::pin!(pull);
        let mut shown = String::new();
        loop {
            let done = async { Some(pull.as_mut().await) };
            let tick = async {
                Timer::after(PROGRESS_PERIOD).await;
                None
            };
            if let Some(result) = done.or(tick).await {
                return result;
            }
            // A pull this worker joined shows the progress of the child it shares.
            let Some(message) = puller.progress(reference) else {
                continue;
            };
            if message != shown {
                shown = message.clone();
                self.slots[i].status.state = ContainerState::Waiting {
                    reason: "ContainerCreating".to_string(),
                    message,
                };
                self.publish();
            }
        }
    }

    async fn ensure_sandbox(&mut self) -> Result<(), String> {
        if self.sandbox.is_complete() {
            return Ok(());
        }
        let _ = self.sandbox.destroy();
        std::fs::create_dir_all(&self.pod_dir)
            .map_err(|e| format!("{}: {e}", self.pod_dir.display()))?;
        let hostname = if self.pod.spec.host_network {
            crate::config::hostname()
        } else {
            self.pod.metadata.name.clone()
        };
        self.write_pod_files(&hostname)
            .map_err(|e| format!("writing {}: {e}", self.pod_dir.display()))?;
        self.sandbox
            .create(&self.ctx.reaper, &self.ctx.exe, &hostname)
            .await
            .map_err(|e| e.to_string())
    }

    /// `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` as kubelet writes them.
    fn write_pod_files(&self, hostname: &str) -> std::io::Result<()> {
        let hosts = if self.pod.spec.host_network {
            let host = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
            format!("# Kubernetes-managed hosts file (host network).\n{host}")
        } else {
            format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
            )
        };
        crate::state::write_atomic(&self.files.hosts, hosts.as_bytes())?;
        crate::state::write_atomic(&self.files.hostname, format!("{hostname}\n").as_bytes())?;
        let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        crate::state::write_atomic(&self.files.resolv_conf, &resolv)
    }

    fn log_path(&self, name: &str, attempt: u32) -> PathBuf {
        let m = &self.pod.metadata;
        self.ctx
            .config
            .pod_logs_dir
            .join(format!("{}_{}_{}", m.namespace, m.name, m.uid))
            .join(name)
            .join(format!("{attempt}.log"))
    }

    /// Starts container `i`: everything up to `runc run --detach`.
    async fn start(&mut self, i: usize) {
        let now = Instant::now();
        let (image, image_rootfs) = match self.image_for(i).await {
            Ok(found) => found,
            Err((reason, message)) => return self.create_error(i, reason, message),
        };
        // Recorded before the container exists, so image GC never takes an image being started.
        self.ctx
            .images_used
            .borrow_mut()
            .record_use(&image.manifest_digest.to_string(), unix_now());
        if let Err(e) = self.ensure_sandbox().await {
            return self.create_error(i, "CreatePodSandboxError", e);
        }
        let c = self.container(i).clone();
        let passwd = inroot::read_to_string(&image_rootfs, "/etc/passwd", 1 << 20)
            .ok()
            .flatten();
        let group = inroot::read_to_string(&image_rootfs, "/etc/group", 1 << 20)
            .ok()
            .flatten();
        let user = match user::resolve_user(
            &image.config.user,
            passwd.as_deref(),
            group.as_deref(),
            &[],
        ) {
            Ok(u) => u,
            Err(e) => {
                return self.create_error(
                    i,
                    "CreateContainerConfigError",
                    format!("image user: {e}"),
                );
            }
        };
        // The attempt number names the container and its log file.
        let attempt = self.slots[i].status.restart_count
            + u32::from(self.slots[i].status.last_termination().is_some());
        let id = format!("{}-{}-{}", self.pod.metadata.uid, c.name, attempt);
        let bundle = Bundle::new(&self.ctx.config.run_dir, &self.ctx.config.data_dir, &id);
        let inputs = config::Inputs {
            pod: &self.pod,
            container: &c,
            image: &image.config,
            user,
            sandbox: &self.sandbox,
            files: &self.files,
            cgroup_parent: &self.ctx.config.cgroup_parent,
            container_id: &id,
            attempt,
            rootfs: bundle.rootfs(),
        };
        let cfg = match config::container_config(&inputs) {
            Ok(cfg) => cfg,
            Err(e) => return self.create_error(i, "CreateContainerConfigError", e.0),
        };
        let (runtime_spec, warnings) = spec::runtime_spec(&cfg, &self.ctx.host);
        for w in warnings {
            log::warn!("pod {}: container {:?}: {w}", self.name(), c.name);
        }
        if bundle.dir.exists() {
            // Left by an attempt that did not finish (nanolet stopped in the middle of it).
            let _ = self.ctx.runc.delete(&id).await;
            let _ = bundle.remove();
        }
        let log_path = self.log_path(&c.name, attempt);
        let prepared = bundle
            .create(&image_rootfs)
            .and_then(|_| bundle.write_config(&runtime_spec))
            .and_then(|_| bundle.open_stdio())
            .and_then(|(stdio, pipes)| {
                let writer = LogWriter::open(
                    &log_path,
                    self.ctx.config.container_log_max_size,
                    self.ctx.config.container_log_max_files,
                )?;
                Ok((stdio, pipes, writer))
            });
        let (stdio, pipes, writer) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = bundle.remove();
                return self.create_error(
                    i,
                    "CreateContainerError",
                    format!("preparing bundle {}: {e}", bundle.dir.display()),
                );
            }
        };
        self.slots[i].begin_attempt(&self.ctx.backoff, now);
        self.ctx.executor.spawn(pump_logs(pipes, writer)).detach();
        let image_id = image.config_digest.to_string();
        match self.ctx.runc.run_detached(&id, &bundle.dir, stdio).await {
            Ok(pid) => {
                let started_at = unix_now();
                log::info!(
                    "pod {}: container {:?} started (attempt {attempt}, pid {pid})",
                    self.name(),
                    c.name
                );
                let record = Record {
                    pod_uid: self.pod.metadata.uid.clone(),
                    container: c.name.clone(),
                    attempt,
                    pid,
                    started_at,
                    image: c.image.clone(),
                    image_id: image_id.clone(),
                    log_path,
                    stop_signal: image
                        .config
                        .stop_signal
                        .clone()
                        .unwrap_or_else(|| "SIGTERM".to_string()),
                    grace_period_seconds: self.pod.spec.termination_grace_period_seconds().max(0)
                        as u64,
                };
                if let Err(e) = bundle.write_record(&record) {
                    log::warn!(
                        "pod {}: container {:?}: recording it for adoption: {e}",
                        self.name(),
                        c.name
                    );
                }
                self.slots[i].record_start(id.clone(), image_id, started_at);
                self.watch_exit(i, id.clone(), pid, true);
                let stop_signal = image
                    .config
                    .stop_signal
                    .clone()
                    .unwrap_or_else(|| "SIGTERM".to_string());
                self.running[i] = Some(Running {
                    id,
                    bundle,
                    pid,
                    stop_signal,
                });
            }
            Err(e) => {
                log::warn!("pod {}: container {:?}: {e}", self.name(), c.name);
                let _ = self.ctx.runc.delete(&id).await;
                let _ = bundle.remove();
                let now_wall = unix_now();
                self.slots[i].record_exit(
                    Terminated {
                        exit_code: 128,
                        signal: None,
                        reason: "StartError".to_string(),
                        message: e.to_string(),
                        started_at: None,
                        finished_at: now_wall,
                        container_id: id,
                    },
                    Instant::now(),
                );
            }
        }
    }

    /// Sends an `Exited` event when container `id` in slot `i` ends.
    fn watch_exit(&self, slot: usize, id: String, pid: i32, is_child: bool) {
        let events = self.events.clone();
        let reaper = self.ctx.reaper.clone();
        self.ctx
            .executor
            .spawn(async move {
                let exit = if is_child {
                    Some(reaper.wait(pid).await)
                } else {
                    let _ = reaper::wait_foreign(pid).await;
                    None
                };
                let _ = events.send(Event::Exited { slot, id, exit }).await;
            })
            .detach();
    }

    async fn on_exit(&mut self, i: usize, id: &str, exit: Option<Exit>) {
        let Some(running) = self.running[i].take_if(|r| r.id == id) else {
            return;
        };
        let started_at = match self.slots[i].status.state {
            ContainerState::Running { started_at } => Some(started_at),
            _ => None,
        };
        let (exit_code, signal, reason, message) = match exit {
            Some(e) => {
                let reason = if e.code() == 0 { "Completed" } else { "Error" };
                let signal = match e {
                    Exit::Signal(s) => Some(s),
                    Exit::Code(_) => None,
                };
                (e.code(), signal, reason, String::new())
            }
            // kubelet's words for a container whose end it did not see.
            None => (
                137,
                None,
                "ContainerStatusUnknown",
                "the container exited while nanolet was not running; its exit status is unknown"
                    .to_string(),
            ),
        };
        log::info!(
            "pod {}: container {:?} exited with code {exit_code} ({reason})",
            self.name(),
            self.slots[i].status.name
        );
        self.slots[i].record_exit(
            Terminated {
                exit_code,
                signal,
                reason: reason.to_string(),
                message,
                started_at,
                finished_at: unix_now(),
                container_id: running.id.clone(),
            },
            Instant::now(),
        );
        self.remove_container(&running).await;
        self.prune_logs(i);
    }

    /// Keeps the current and the previous attempt's logs (what `logs --previous` needs).
    fn prune_logs(&self, i: usize) {
        let status = &self.slots[i].status;
        let dir = self.log_path(&status.name, 0);
        let Some(dir) = dir.parent() else { return };
        let keep_from = status.restart_count.saturating_sub(1);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let attempt = name.split('.').next().and_then(|n| n.parse::<u32>().ok());
            if attempt.is_some_and(|a| a < keep_from) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    async fn remove_container(&self, running: &Running) {
        if let Err(e) = self.ctx.runc.delete(&running.id).await {
            log::warn!("pod {}: {e}", self.name());
        }
        if let Err(e) = running.bundle.remove() {
            log::warn!(
                "pod {}: removing bundle {}: {e}",
                self.name(),
                running.bundle.dir.display()
            );
        }
    }

    /// Takes over a container a previous nanolet started.
    /// Takes over what an earlier nanolet left: per container, the latest attempt is adopted
    /// and older ones are removed (a pod never runs twice). Init containers of a pod whose app
    /// containers had started are complete: they are not run again, as kubelet would not.
    async fn adopt_all(&mut self, mut adopted: Vec<Adopted>) {
        adopted.sort_by(|a, b| {
            (&a.record.container, a.record.attempt).cmp(&(&b.record.container, b.record.attempt))
        });
        let mut latest: Vec<Adopted> = Vec::new();
        for a in adopted {
            match latest.last() {
                Some(prev) if prev.record.container == a.record.container => {
                    if let Some(old) = latest.pop() {
                        self.remove_leftover(&old).await;
                    }
                }
                _ => {}
            }
            latest.push(a);
        }
        let n_init = self.pod.spec.init_containers.len();
        let app_started = latest.iter().any(|a| {
            self.slots
                .iter()
                .position(|s| s.status.name == a.record.container)
                .is_some_and(|i| i >= n_init)
        });
        for a in latest {
            self.adopt(a).await;
        }
        if app_started {
            let now = unix_now();
            for slot in self.slots.iter_mut().take(n_init) {
                if slot.status.is_running() {
                    continue;
                }
                slot.status.state = ContainerState::Terminated(Terminated {
                    exit_code: 0,
                    signal: None,
                    reason: "Completed".to_string(),
                    message: "completed before nanolet restarted".to_string(),
                    started_at: None,
                    finished_at: now,
                    container_id: String::new(),
                });
            }
        }
    }

    /// Removes a container of an older attempt that a newer one replaced.
    async fn remove_leftover(&self, a: &Adopted) {
        log::warn!(
            "pod {}: container {} is an older attempt of {:?}; removing it",
            self.name(),
            a.state.id,
            a.record.container
        );
        if a.state.is_running() {
            let _ = self.ctx.runc.kill(&a.state.id, "SIGKILL").await;
        }
        let leftover = Running {
            id: a.state.id.clone(),
            bundle: Bundle {
                id: a.state.id.clone(),
                dir: a.state.bundle.clone(),
                layer: self
                    .ctx
                    .config
                    .data_dir
                    .join("containers")
                    .join(&a.state.id),
            },
            pid: a.state.pid,
            stop_signal: String::new(),
        };
        self.remove_container(&leftover).await;
    }

    async fn adopt(&mut self, a: Adopted) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.status.name == a.record.container)
        else {
            return;
        };
        let bundle = Bundle {
            id: a.state.id.clone(),
            dir: a.state.bundle.clone(),
            layer: self
                .ctx
                .config
                .data_dir
                .join("containers")
                .join(&a.state.id),
        };
        let slot = &mut self.slots[i];
        slot.status.restart_count = a.record.attempt;
        if a.state.is_running() && self.running[i].is_none() {
            slot.record_start(
                a.state.id.clone(),
                a.record.image_id.clone(),
                a.record.started_at,
            );
            self.start_time = self.start_time.min(a.record.started_at);
            match (
                bundle.open_log_pipes(),
                LogWriter::open(
                    &a.record.log_path,
                    self.ctx.config.container_log_max_size,
                    self.ctx.config.container_log_max_files,
                ),
            ) {
                (Ok(pipes), Ok(writer)) => {
                    self.ctx.executor.spawn(pump_logs(pipes, writer)).detach()
                }
                (Err(e), _) | (_, Err(e)) => log::warn!(
                    "pod {}: container {:?}: reopening its log: {e}",
                    self.name(),
                    a.record.container
                ),
            }
            self.watch_exit(i, a.state.id.clone(), a.state.pid, false);
            log::info!(
                "pod {}: adopted running container {:?} (pid {})",
                self.name(),
                a.record.container,
                a.state.pid
            );
            let stop_signal = a.record.stop_signal.clone();
            self.running[i] = Some(Running {
                id: a.state.id,
                bundle,
                pid: a.state.pid,
                stop_signal,
            });
        } else {
            // It ended while nanolet was away.
            slot.record_start(
                a.state.id.clone(),
                a.record.image_id.clone(),
                a.record.started_at,
            );
            let running = Running {
                id: a.state.id.clone(),
                bundle,
                pid: a.state.pid,
                stop_signal: String::new(),
            };
            self.running[i] = Some(running);
            self.on_exit(i, &a.state.id, None).await;
        }
    }

    /// Graceful termination, then removal of everything the pod had.
    async fn terminate(&mut self) {
        self.terminating = true;
        self.publish();
        let grace =
            Duration::from_secs(self.pod.spec.termination_grace_period_seconds().max(0) as u64);
        log::info!(
            "pod {}: stopping (grace period {}s)",
            self.name(),
            grace.as_secs()
        );
        for r in self.running.iter().flatten() {
            let signal = if grace.is_zero() {
                "SIGKILL"
            } else {
                r.stop_signal.as_str()
            };
            if let Err(e) = self.ctx.runc.kill(&r.id, signal).await {
                log::warn!("pod {}: {e}", self.name());
            }
        }
        self.wait_for_exits(Instant::now() + grace).await;
        if self.running.iter().any(Option::is_some) {
            log::info!(
                "pod {}: grace period over; killing what is left",
                self.name()
            );
            for r in self.running.iter().flatten() {
                let _ = self.ctx.runc.kill(&r.id, "SIGKILL").await;
            }
            self.wait_for_exits(Instant::now() + Duration::from_secs(10))
                .await;
        }
        for i in 0..self.running.len() {
            if let Some(r) = self.running[i].take() {
                log::warn!(
                    "pod {}: container {} (pid {}) did not exit after SIGKILL; removing it",
                    self.name(),
                    r.id,
                    r.pid
                );
                self.remove_container(&r).await;
            }
        }
        self.cleanup();
        self.ctx.board.remove(&self.pod.metadata.uid);
        log::info!("pod {}: stopped and removed", self.name());
    }

    async fn wait_for_exits(&mut self, deadline: Instant) {
        while self.running.iter().any(Option::is_some) {
            let event = async { self.events_rx.recv().await.ok() }
                .or(async {
                    Timer::at(deadline).await;
                    None
                })
                .await;
            match event {
                Some(Event::Exited { slot, id, exit }) => self.on_exit(slot, &id, exit).await,
                Some(Event::Command(_)) => {}
                None => return,
            }
        }
    }

    /// Removes the pod's namespaces, cgroups, files and logs.
    fn cleanup(&self) {
        let name = self.name();
        if let Err(e) = self.sandbox.destroy() {
            log::warn!("pod {name}: removing namespaces: {e}");
        }
        let relative = format!(
            "{}/pod{}",
            self.ctx.config.cgroup_parent.trim_matches('/'),
            self.pod.metadata.uid
        );
        if let Err(e) = cgroup::remove(std::path::Path::new(cgroup::CGROUP_ROOT), &relative) {
            log::warn!("pod {name}: {e}");
        }
        if let Err(e) = remove_tree(&self.pod_dir) {
            log::warn!("pod {name}: removing {}: {e}", self.pod_dir.display());
        }
        let logs = self.log_path("x", 0);
        if let Some(dir) = logs.parent().and_then(|p| p.parent())
            && let Err(e) = remove_tree(dir)
        {
            log::warn!("pod {name}: removing logs {}: {e}", dir.display());
        }
    }

    fn publish(&mut self) {
        let phase = lifecycle::phase(self.restart, &self.slots);
        let now = unix_now();
        let n_init = self.pod.spec.init_containers.len();
        let initialized = self.slots[..n_init]
            .iter()
            .all(|s| matches!(&s.status.state, ContainerState::Terminated(t) if t.exit_code == 0));
        let ready = self.slots[n_init..].iter().all(|s| s.status.ready);
        let bool_str = |b: bool| if b { "True" } else { "False" }.to_string();
        let wanted = [
            ("PodScheduled", "True".to_string()),
            ("Initialized", bool_str(initialized)),
            ("ContainersReady", bool_str(ready)),
            ("Ready", bool_str(ready && !self.terminating)),
        ];
        // A condition's transition time changes only when its status does.
        let conditions = wanted
            .into_iter()
            .map(
                |(kind, status)| match self.conditions.iter().find(|c| c.kind == kind) {
                    Some(c) if c.status == status => c.clone(),
                    _ => Condition {
                        kind: kind.to_string(),
                        status,
                        last_transition_time: now,
                    },
                },
            )
            .collect();
        self.conditions = conditions;
        let (init, main): (Vec<_>, Vec<_>) = self.slots.iter().partition(|s| s.is_init);
        let status = PodStatus {
            namespace: self.pod.metadata.namespace.clone(),
            name: self.pod.metadata.name.clone(),
            uid: self.pod.metadata.uid.clone(),
            source: self.source.clone(),
            phase,
            reason: String::new(),
            message: String::new(),
            start_time: Some(self.start_time),
            conditions: self.conditions.clone(),
            init_container_statuses: init.into_iter().map(|s| s.status.clone()).collect(),
            container_statuses: main.into_iter().map(|s| s.status.clone()).collect(),
            host_network: self.pod.spec.host_network,
            terminating: self.terminating,
        };
        if phase == Phase::Failed || phase == Phase::Succeeded {
            log::debug!("pod {}: phase {phase:?}", self.name());
        }
        self.ctx.board.publish(status);
    }
}

/// Copies a container's stdout and stderr into its CRI log file until both reach end-of-file.
async fn pump_logs(pipes: LogPipes, writer: LogWriter) {
    let writer = std::cell::RefCell::new(writer);
    let pump = |mut pipe: async_io::Async<std::fs::File>, stream: Stream| {
        let writer = &writer;
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Err(e) =
                            writer
                                .borrow_mut()
                                .write(stream, &buf[..n], SystemTime::now())
                        {
                            log::warn!("container log: {e}");
                        }
                    }
                }
            }
            let _ = writer.borrow_mut().flush_partial(stream, SystemTime::now());
        }
    };
    futures_lite::future::zip(
        pump(pipes.stdout, Stream::Stdout),
        pump(pipes.stderr, Stream::Stderr),
    )
    .await;
}
