//! The agent: sources, pod workers and the status snapshot, wired on one executor thread.
//!
//! ```text
//!   start: config → dirs → boot check (reboot? clear stale state) → subreaper → images import
//!          → adopt runc containers → first full manifest scan → one worker per desired pod
//!   loop:  inotify | periodic rescan | a pod finished stopping
//!          → rescan → StaticPodSet (pure merge) → start new workers, Stop removed ones
//!   tick:  images/ changed? → import;  disk above imageGCHighThresholdPercent? → image GC
//!          (image::gc decides, `nanolet rmi` children remove)
//!   pull done: ImagesChanged to every worker (containers waiting for an image retry at once)
//!   SIGTERM/SIGINT: nanolet exits and its pods keep running; the next nanolet adopts them.
//!   SIGUSR1 (`nanolet shutdown`): node shutdown: every pod stops gracefully, then nanolet exits.
//! ```
//!
//! Nothing destructive happens before the first full scan: a container whose pod is no longer
//! desired is stopped only after the manifests folder has been read completely once.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command as ProcessCommand;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_executor::LocalExecutor;
use async_io::Timer;
use async_signal::{Signal, Signals};
use futures_lite::{FutureExt, StreamExt};

use crate::config::{self, NodeConfig};
use crate::ctl::ps::SNAPSHOT_FILE;
use crate::image::gc::{self, Thresholds, UseLog};
use crate::image::{Image, ImageStore};
use crate::k8s::Pod;
use crate::pod::backoff::BackoffPolicy;
use crate::pod::board::Board;
use crate::pod::config::ANNOTATION_POD_UID;
use crate::pod::status::SourceError;
use crate::pod::worker::{self, Adopted, Command, Context, Handle};
use crate::report::{self, status::NodeFacts};
use crate::runtime::bundle::Bundle;
use crate::runtime::runc::Runc;
use crate::runtime::spec::HostLimits;
use crate::source::api::client::PodApi;
use crate::source::api::set::Terminating;
use crate::source::api::{ApiPods, confirm_deletion};
use crate::source::{self, StaticPodSet, watch::DirWatch};
use crate::state::pods::PodStore;
use crate::state::{self, boot};
use crate::sys::reaper::Reaper;
use crate::sys::sandbox::Sandbox;
use crate::sys::{cgroup, process};

/// Why the agent could not start.
#[derive(Debug)]
pub enum Error {
    Config(config::ConfigError),
    Setup {
        what: String,
        source: std::io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Setup { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

fn setup<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T, Error> {
    r.map_err(|source| Error::Setup {
        what: what.into(),
        source,
    })
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config_dir: &Path) -> Result<(), Error> {
    let config = config::load(config_dir).map_err(Error::Config)?;
    log::set_max_level(config.log_level);
    for dir in [
        &config.run_dir,
        &config.data_dir,
        &config.runc_root,
        &config.pod_logs_dir,
    ] {
        setup(
            format!("creating {}", dir.display()),
            std::fs::create_dir_all(dir),
        )?;
    }
    let boot_record = config.data_dir.join("boot_id");
    let boot_id = setup("reading the boot id", boot::current())?;
    if boot::classify(&boot_record, &boot_id) == boot::Start::Boot {
        log::info!("first start in this boot: clearing runtime state the last boot left");
        clear_stale_state(&config);
        setup(
            "recording the boot id",
            boot::record(&boot_record, &boot_id),
        )?;
    }
    let (reaper, child_signals) = setup("becoming a child subreaper", Reaper::install())?;
    let stop_signals = setup(
        "installing signal handlers",
        Signals::new([Signal::Term, Signal::Int, Signal::Usr1]),
    )?;
    let images = ImageStore::open(&config.data_dir.join("images")).map_err(|e| Error::Setup {
        what: "opening the image store".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let exe = setup("finding nanolet's own executable", std::env::current_exe())?;
    let network = crate::net::Network::new(&config).map_err(|e| Error::Setup {
        what: "pod network".into(),
        source: std::io::Error::other(e),
    })?;
    setup("setting up the pod network", network.setup_host())?;
    let executor = Rc::new(LocalExecutor::new());
    let (events, api) = crate::node::connect(config_dir, &config);
    let (pulled_tx, pulled_rx) = async_channel::unbounded();
    let ctx = Rc::new(Context {
        runc: Runc::new(
            config.runc_path.clone(),
            config.runc_root.clone(),
            reaper.clone(),
        ),
        reaper: reaper.clone(),
        images,
        exe: exe.clone(),
        host: host_limits(),
        backoff: BackoffPolicy {
            initial: config.crash_loop_backoff_initial,
            max: config.crash_loop_backoff_max,
        },
        board: Board::default(),
        executor: executor.clone(),
        puller: crate::pod::images::Puller::new(
            exe.clone(),
            config_dir.to_path_buf(),
            reaper.clone(),
            pulled_tx,
        ),
        images_used: std::cell::RefCell::new(UseLog::new(unix_now())),
        network,
        objects: Box::new(crate::source::objects::FileObjects {
            config_maps: config.config_maps_path.clone(),
            secrets: config.secrets_path.clone(),
        }),
        events,
        config: config.clone(),
    });
    executor.spawn(reaper.run(child_signals)).detach();
    let mut agent = Agent::new(ctx.clone(), config_dir.to_path_buf(), pulled_rx);
    if let Some(api) = api {
        // Pods bound to this node by the API server run beside the static pods.
        let client = api.client();
        let facts_client = client.clone();
        let facts = Rc::new(move || NodeFacts {
            host_ip: facts_client.local_ip().map(|ip| ip.to_string()),
        });
        agent.proxy_api = Some(client.clone());
        agent.connect_api(client, facts);
        // The API tasks never hold up pods: they start beside them and only log their trouble.
        let ctx = ctx.clone();
        executor
            .spawn(async move {
                let version = ctx.runc.version().await.unwrap_or_else(|e| {
                    log::warn!("runc --version: {e}");
                    "unknown".into()
                });
                api.run(version).await;
            })
            .detach();
    }
    async_io::block_on(executor.run(agent.run(stop_signals)));
    Ok(())
}

/// After a reboot nothing of the last boot runs: remove its bundles, runc state, namespace
/// files and writable layers (the run dir may not be on tmpfs in every setup).
fn clear_stale_state(config: &NodeConfig) {
    let pods = config.run_dir.join("pods");
    if let Ok(entries) = std::fs::read_dir(&pods) {
        for entry in entries.flatten() {
            let _ = Sandbox {
                dir: entry.path().join("ns"),
                host_network: false,
            }
            .destroy();
        }
    }
    if let Ok(entries) = std::fs::read_dir(config.run_dir.join("containers")) {
        for entry in entries.flatten() {
            let _ = crate::sys::mount::unmount(&entry.path().join("rootfs"));
        }
    }
    // Volumes' tmpfs and subPath binds belong to the last boot; emptyDir content on disk
    // stays for the pod's next start, as kubelet keeps it.
    let _ = crate::sys::volume_mount::unmount_below(&config.data_dir.join("pods"));
    for dir in [
        pods,
        config.run_dir.join("containers"),
        config.data_dir.join("containers"),
    ] {
        if let Err(e) = state::remove_tree(&dir) {
            log::warn!("removing stale {}: {e}", dir.display());
        }
    }
    if let Ok(entries) = std::fs::read_dir(&config.runc_root) {
        for entry in entries.flatten() {
            let _ = state::remove_tree(&entry.path());
        }
    }
}

/// What this host lets a container ask for (see the runtime spec's clamping).
fn host_limits() -> HostLimits {
    let nofile_hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    // Lowering an oom_score_adj needs CAP_SYS_RESOURCE (bit 24 of the effective set).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let can_lower = cap_eff & (1 << 24) != 0;
    if !can_lower {
        log::warn!("no CAP_SYS_RESOURCE: negative oom_score_adj values are clamped to 0");
    }
    HostLimits {
        can_lower_oom_score_adj: can_lower,
        capabilities: cap_eff,
        nofile_hard,
    }
}

struct Agent {
    ctx: Rc<Context>,
    config_dir: PathBuf,
    set: StaticPodSet,
    workers: HashMap<String, Handle>,
    /// Workers told to stop, until they are done.
    stopping: HashMap<String, async_executor::Task<()>>,
    reconcile_tx: async_channel::Sender<()>,
    reconcile_rx: async_channel::Receiver<()>,
    images_signature: Vec<(String, u64, i64)>,
    logged_errors: Vec<SourceError>,
    /// References the Puller pulled successfully.
    pulled: async_channel::Receiver<String>,
    /// The image GC removals under way, if any.
    image_gc: Option<async_executor::Task<()>>,
    /// The disk is above the high threshold with nothing to remove, and that was logged.
    image_gc_stuck: bool,
    /// Pods from the API server, when nanolet is a node of a cluster.
    api: Option<ApiLink>,
    /// With a kubeconfig, the proxy takes Services from the API server (only).
    proxy_api: Option<Rc<crate::api::Client>>,
}

/// The agent's side of the API pod source (see [`crate::source::api`]).
struct ApiLink {
    pods: Rc<ApiPods>,
    /// Starts the final DELETE of a terminated pod (on a task of its own).
    confirm: Rc<dyn Fn(Terminating)>,
}

impl Agent {
    fn new(
        ctx: Rc<Context>,
        config_dir: PathBuf,
        pulled: async_channel::Receiver<String>,
    ) -> Agent {
        let (reconcile_tx, reconcile_rx) = async_channel::bounded(1);
        Agent {
            ctx,
            config_dir,
            set: StaticPodSet::new(),
            workers: HashMap::new(),
            stopping: HashMap::new(),
            reconcile_tx,
            reconcile_rx,
            images_signature: Vec::new(),
            logged_errors: Vec::new(),
            pulled,
            image_gc: None,
            image_gc_stuck: false,
            api: None,
            proxy_api: None,
        }
    }

    /// Makes this agent a node of a cluster: pods bound to it by the API server run next to the
    /// static pods (stored ones at once, before the API server answers), their status is
    /// reported, static pods get mirror pods. `facts` tells the node's host IP.
    fn connect_api<A: PodApi + 'static>(&mut self, api: Rc<A>, facts: Rc<dyn Fn() -> NodeFacts>) {
        let cfg = self.config();
        let store = match PodStore::open(&cfg.data_dir.join("api-pods")) {
            Ok(store) => store,
            Err(e) => {
                log::error!(
                    "pod store {}: {e}; API pods are not run",
                    cfg.data_dir.display()
                );
                return;
            }
        };
        let pods = Rc::new(ApiPods::new(
            cfg.node_name.clone(),
            store,
            self.reconcile_tx.clone(),
        ));
        let executor = &self.ctx.executor;
        executor
            .spawn(crate::source::api::run_watch(api.clone(), pods.clone()))
            .detach();
        executor
            .spawn(report::sync::run_status(
                api.clone(),
                self.ctx.board.clone(),
                pods.clone(),
                facts,
            ))
            .detach();
        executor
            .spawn(report::sync::run_mirrors(api.clone(), pods.clone()))
            .detach();
        let confirm_pods = pods.clone();
        let confirm_executor = executor.clone();
        let confirm = Rc::new(move |t: Terminating| {
            let (api, pods) = (api.clone(), confirm_pods.clone());
            confirm_executor
                .spawn(async move { confirm_deletion(&*api, &pods, t).await })
                .detach();
        });
        self.api = Some(ApiLink { pods, confirm });
    }

    fn config(&self) -> &NodeConfig {
        &self.ctx.config
    }

    async fn run(mut self, mut stop_signals: Signals) {
        let cfg = self.config().clone();
        log::info!(
            "nanolet {} on node {:?}: manifests {}, images {}",
            env!("CARGO_PKG_VERSION"),
            cfg.node_name,
            cfg.static_pod_path.display(),
            cfg.images_path.display()
        );
        self.ctx
            .executor
            .spawn(write_snapshots(self.ctx.clone()))
            .detach();
        let (exe, reaper) = (self.ctx.exe.clone(), self.ctx.reaper.clone());
        match (cfg.proxy.clone(), self.proxy_api.clone()) {
            (Some(proxy), Some(client)) => {
                let task = crate::proxy::api::run(proxy, client, exe, reaper);
                self.ctx.executor.spawn(task).detach();
            }
            (Some(proxy), None) => {
                let task = crate::proxy::run::run(proxy, exe, reaper);
                self.ctx.executor.spawn(task).detach();
            }
            (None, _) => {}
        }
        self.import_images_if_changed().await;
        // The first full scan comes before anything is stopped: see the module doc.
        let mut adopted = self.adoptable().await;
        self.rescan();
        self.reconcile(&mut adopted);
        self.stop_orphans(adopted);
        // Addresses and CNI attachments of pods that went while nanolet was away.
        let live: std::collections::HashSet<String> = self.workers.keys().cloned().collect();
        self.ctx.network.reconcile(&self.ctx.reaper, &live).await;
        let mut watch = match DirWatch::new(&cfg.static_pod_path) {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!(
                    "watching {}: {e}; relying on the periodic rescan",
                    cfg.static_pod_path.display()
                );
                None
            }
        };
        loop {
            let tick = async {
                Timer::after(cfg.file_check_frequency).await;
                Wake::Tick
            };
            let changed = async {
                match watch.as_mut() {
                    Some(w) => match w.changed().await {
                        Ok(()) => Wake::Changed,
                        Err(_) => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            };
            let reconcile = async {
                let _ = self.reconcile_rx.recv().await;
                Wake::Changed
            };
            let pulled = async {
                match self.pulled.recv().await {
                    Ok(reference) => Wake::Pulled(reference),
                    Err(_) => std::future::pending().await,
                }
            };
            let stop = async {
                match stop_signals.next().await {
                    Some(Ok(Signal::Usr1)) => Wake::Shutdown,
                    _ => Wake::Stop,
                }
            };
            match tick.or(changed).or(reconcile).or(pulled).or(stop).await {
                Wake::Stop => break,
                Wake::Shutdown => {
                    self.shutdown_pods().await;
                    write_snapshot(&self.ctx);
                    log::info!("node shutdown: every pod is stopped; nanolet exits");
                    return;
                }
                Wake::Tick => {
                    self.import_images_if_changed().await;
                    self.collect_images();
                }
                Wake::Changed => {}
                Wake::Pulled(reference) => {
                    log::debug!("image {reference:?} pulled: telling every pod");
                    self.tell_images_changed();
                    continue;
                }
            }
            self.rescan();
            self.reconcile(&mut BTreeMap::new());
        }
        log::info!("nanolet stopping; its pods keep running and the next nanolet adopts them");
        write_snapshot(&self.ctx);
    }

    /// Graceful node shutdown: every pod is stopped as a manifest removal stops it (all at
    /// once), within `shutdownGracePeriod`; whatever still runs then is killed.
    async fn shutdown_pods(&mut self) {
        let budget = self.config().shutdown_grace_period;
        log::info!(
            "node shutdown: stopping {} pod(s) within {}s",
            self.workers.len(),
            budget.as_secs()
        );
        let mut waiting = Vec::new();
        for (_, handle) in self.workers.drain() {
            let _ = handle.commands.try_send(Command::Stop);
            waiting.push(handle.task);
        }
        waiting.extend(self.stopping.drain().map(|(_, task)| task));
        let all_stopped = async {
            for task in waiting {
                task.await;
            }
            true
        };
        let in_time = all_stopped
            .or(async {
                Timer::after(budget).await;
                false
            })
            .await;
        if !in_time {
            log::warn!("node shutdown: shutdownGracePeriod is over; killing what is left");
            if let Ok(list) = self.ctx.runc.list().await {
                for state in list {
                    let _ = self.ctx.runc.delete(&state.id).await;
                }
            }
        }
    }

    fn rescan(&mut self) {
        let cfg = self.config();
        match source::scan_dir(&cfg.static_pod_path, &cfg.node_name) {
            Ok(scan) => {
                let changes = self.set.apply_scan(scan);
                if !changes.is_empty() {
                    log::info!(
                        "manifests changed: added {:?}, updated {:?}, removed {:?}",
                        changes.added,
                        changes.updated,
                        changes.removed
                    );
                }
            }
            Err(e) => log::warn!("{e}"),
        }
        let errors: Vec<SourceError> = self
            .set
            .errors()
            .into_iter()
            .map(|(path, error)| SourceError {
                source: path.display().to_string(),
                error,
            })
            .collect();
        // One log line per problem, when it first appears (not on every rescan).
        for e in errors.iter().filter(|e| !self.logged_errors.contains(e)) {
            log::error!("{}", e.error);
        }
        self.logged_errors = errors.clone();
        self.ctx.board.set_source_errors(errors);
        if let Some(api) = &self.api {
            api.pods
                .set_static_pods(self.set.desired().into_iter().cloned().collect());
        }
    }

    /// Starts workers for new pods and stops workers whose pod is gone.
    fn reconcile(&mut self, adopted: &mut BTreeMap<String, Vec<Adopted>>) {
        self.stopping.retain(|_, task| !task.is_finished());
        let mut desired: Vec<(String, Pod, String)> = self
            .set
            .desired_with_source()
            .into_iter()
            .map(|(path, pod)| {
                (
                    pod.metadata.uid.clone(),
                    pod.clone(),
                    path.display().to_string(),
                )
            })
            .collect();
        if let Some(api) = &self.api {
            // On disk before it runs: after a reboot without the API server it runs again.
            api.pods.flush();
            desired.extend(
                api.pods
                    .desired()
                    .into_iter()
                    .map(|pod| (pod.metadata.uid.clone(), pod, "api".to_string())),
            );
        }
        let wanted: std::collections::HashSet<&str> =
            desired.iter().map(|(uid, _, _)| uid.as_str()).collect();
        let api = self.api.as_ref().map(|a| a.pods.clone());
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|uid| {
                !wanted.contains(uid.as_str()) || api.as_ref().is_some_and(|a| a.spec_changed(uid))
            })
            .cloned()
            .collect();
        for uid in gone {
            if let Some(handle) = self.workers.remove(&uid) {
                let deletion = self.api.as_ref().and_then(|a| a.pods.deletion_grace(&uid));
                let _ = handle
                    .commands
                    .try_send(deletion.map_or(Command::Stop, Command::StopWithin));
                let done = self.reconcile_tx.clone();
                let task = self.ctx.executor.spawn(async move {
                    handle.task.await;
                    let _ = done.try_send(());
                });
                self.stopping.insert(uid, task);
            }
        }
        let max_pods = self.config().max_pods as usize;
        for (uid, pod, source) in desired {
            if self.workers.contains_key(&uid) || self.stopping.contains_key(&uid) {
                continue;
            }
            if self.workers.len() >= max_pods {
                log::error!(
                    "pod {}/{}: not started: maxPods ({max_pods}) pods already run",
                    pod.metadata.namespace,
                    pod.metadata.name
                );
                continue;
            }
            let mine = adopted.remove(&uid).unwrap_or_default();
            if let Some(api) = api.as_ref().filter(|_| source == "api") {
                api.record_started(&pod);
            }
            let handle = worker::spawn(self.ctx.clone(), pod, source, mine);
            self.workers.insert(uid, handle);
        }
        if let Some(api) = &self.api {
            // Terminating API pods that nothing runs any more: confirm their deletion.
            let busy =
                |uid: &str| self.workers.contains_key(uid) || self.stopping.contains_key(uid);
            for t in api.pods.idle_terminating(&busy) {
                (api.confirm)(t);
            }
        }
    }

    /// Containers under nanolet's runc root, by pod uid, with their records.
    async fn adoptable(&self) -> BTreeMap<String, Vec<Adopted>> {
        let mut by_pod: BTreeMap<String, Vec<Adopted>> = BTreeMap::new();
        let list = match self.ctx.runc.list().await {
            Ok(list) => list,
            Err(e) => {
                log::error!("listing containers to adopt: {e}");
                return by_pod;
            }
        };
        for state in list {
            let bundle = Bundle {
                id: state.id.clone(),
                dir: state.bundle.clone(),
                layer: PathBuf::new(),
            };
            let uid = state
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_POD_UID))
                .cloned();
            match (uid, bundle.read_record()) {
                (Some(uid), Ok(record)) if record.pod_uid == uid => by_pod
                    .entry(uid)
                    .or_default()
                    .push(Adopted { record, state }),
                _ => {
                    log::warn!(
                        "container {}: not nanolet's or its record is missing; removing it",
                        state.id
                    );
                    let _ = self.ctx.runc.delete(&state.id).await;
                }
            }
        }
        by_pod
    }

    /// Stops containers whose pod is no longer desired (removed while nanolet was away), and
    /// removes pod folders nothing uses.
    fn stop_orphans(&self, orphans: BTreeMap<String, Vec<Adopted>>) {
        let ctx = self.ctx.clone();
        let live: std::collections::HashSet<String> = self.workers.keys().cloned().collect();
        // All orphan pods stop at once, each as its spec said (recorded with each container).
        let stops: Vec<_> = orphans
            .into_iter()
            .map(|(uid, containers)| {
                self.ctx
                    .executor
                    .spawn(stop_orphan(ctx.clone(), uid, containers))
            })
            .collect();
        self.ctx
            .executor
            .spawn(async move {
                for stop in stops {
                    stop.await;
                }
                remove_unused_pod_dirs(&ctx, &live);
            })
            .detach();
    }

    /// Imports `images/` again when its listing changed (names, sizes, times), in a child process.
    async fn import_images_if_changed(&mut self) {
        let dir = self.config().images_path.clone();
        let signature = dir_signature(&dir);
        if signature == self.images_signature {
            return;
        }
        self.images_signature = signature;
        if self.images_signature.is_empty() {
            return;
        }
        let mut cmd = ProcessCommand::new(&self.ctx.exe);
        cmd.arg("internal-import")
            .arg("--config-dir")
            .arg(&self.config_dir);
        match process::output(&self.ctx.reaper, cmd).await {
            Ok(out) => {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    log::info!("images: {line}");
                }
                for line in String::from_utf8_lossy(&out.stderr).lines() {
                    log::warn!("images: {line}");
                }
            }
            Err(e) => log::error!("importing images from {}: {e}", dir.display()),
        }
        self.tell_images_changed();
    }

    fn tell_images_changed(&self) {
        for handle in self.workers.values() {
            let _ = handle.commands.try_send(Command::ImagesChanged);
        }
    }

    /// Image GC, as kubelet does it (see [`gc`]): decides now, removes in `nanolet rmi`
    /// children on a task of its own. One round at a time.
    fn collect_images(&mut self) {
        if self.image_gc.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let cfg = self.config();
        let thresholds = Thresholds {
            high_percent: cfg.image_gc_high_threshold_percent,
            low_percent: cfg.image_gc_low_threshold_percent,
            minimum_age: cfg.image_minimum_gc_age,
        };
        if thresholds.high_percent >= 100 {
            return; // imageGCHighThresholdPercent: 100 disables image GC.
        }
        let store_dir = cfg.data_dir.join("images");
        let images = match self.ctx.images.list() {
            Ok(images) => images,
            Err(e) => return log::warn!("image gc: listing images: {e}"),
        };
        let in_use = self.images_in_use(&images);
        let now = unix_now();
        // Every tick, so an image's first detection is known before the disk fills up.
        let candidates = self.ctx.images_used.borrow_mut().candidates(
            images
                .iter()
                .map(|i| (i.manifest_digest.to_string(), i.names.clone(), i.size)),
            &in_use,
            now,
        );
        let usage = match gc::disk_usage(&store_dir) {
            Ok(usage) => usage,
            Err(e) => return log::warn!("image gc: {e}"),
        };
        let Some(plan) = gc::plan(usage, &candidates, now, &thresholds) else {
            self.image_gc_stuck = false;
            return;
        };
        let why = format!(
            "disk of {} is {}% used (imageGCHighThresholdPercent {}%); freeing {} to reach {}%",
            store_dir.display(),
            plan.used_percent,
            thresholds.high_percent,
            gc::mib(plan.bytes_to_free),
            thresholds.low_percent
        );
        if plan.remove.is_empty() {
            // Once per episode: the tick comes back every fileCheckFrequency.
            if !std::mem::replace(&mut self.image_gc_stuck, true) {
                log::warn!("image gc: {why}: no unused image is old enough to remove");
            }
            return;
        }
        self.image_gc_stuck = false;
        log::info!("image gc: {why}: removing {} image(s)", plan.remove.len());
        if plan.shortfall > 0 {
            log::warn!(
                "image gc: removing every unused image old enough still leaves {} to free",
                gc::mib(plan.shortfall)
            );
        }
        let ctx = self.ctx.clone();
        let config_dir = self.config_dir.clone();
        self.image_gc = Some(self.ctx.executor.spawn(async move {
            for image in plan.remove {
                remove_image(&ctx, &config_dir, &image, now).await;
            }
        }));
    }

    /// The images (by manifest digest) a container of a pod nanolet runs, stops or wants to
    /// run uses: by the references in the desired pods and the pods on the board, and by the
    /// image IDs of the containers on the board.
    fn images_in_use(&self, images: &[Image]) -> std::collections::HashSet<String> {
        let snapshot = self.ctx.board.snapshot(0, "", 0);
        let statuses = snapshot.pods.iter().flat_map(|p| {
            p.init_container_statuses
                .iter()
                .chain(&p.container_statuses)
        });
        let mut references: std::collections::BTreeSet<&str> = self
            .set
            .desired()
            .into_iter()
            .flat_map(|pod| pod.spec.init_containers.iter().chain(&pod.spec.containers))
            .map(|c| c.image.as_str())
            .collect();
        let mut image_ids = std::collections::HashSet::new();
        for s in statuses {
            references.insert(s.image.as_str());
            if !s.image_id.is_empty() {
                image_ids.insert(s.image_id.as_str());
            }
        }
        let mut in_use: std::collections::HashSet<String> = images
            .iter()
            .filter(|i| image_ids.contains(i.config_digest.to_string().as_str()))
            .map(|i| i.manifest_digest.to_string())
            .collect();
        for reference in references {
            if let Ok(Some(image)) = self.ctx.images.resolve(reference) {
                in_use.insert(image.manifest_digest.to_string());
            }
        }
        in_use
    }
}

/// Removes one image chosen by image GC, in a `nanolet rmi` child (removal deletes trees).
async fn remove_image(ctx: &Context, config_dir: &Path, image: &gc::Candidate, now: i64) {
    let name = image.names.first().unwrap_or(&image.id);
    if ctx.images_used.borrow().is_used_since(&image.id, now) {
        return log::info!("image gc: keeping image {name}: a container started with it just now");
    }
    log::info!(
        "image gc: removing image {name} ({}, unused for {}s)",
        gc::mib(image.size),
        now - image.last_used
    );
    let mut cmd = ProcessCommand::new(&ctx.exe);
    cmd.arg("rmi")
        .arg("--config-dir")
        .arg(config_dir)
        .arg(&image.id);
    match process::output(&ctx.reaper, cmd).await {
        Ok(out) if out.is_success() => {}
        Ok(out) => log::warn!("image gc: removing image {name}: {}", out.stderr_tail()),
        Err(e) => log::warn!("image gc: removing image {name}: running rmi: {e}"),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Stops the containers of a pod that no manifest defines any more: stop signal, grace period,
/// then `runc delete --force` (SIGKILL).
async fn stop_orphan(ctx: Rc<Context>, uid: String, containers: Vec<Adopted>) {
    log::info!(
        "pod uid {uid}: no manifest defines it any more; stopping its {} container(s)",
        containers.len()
    );
    for a in &containers {
        if let Err(e) = ctx.runc.kill(&a.state.id, &a.record.stop_signal).await {
            log::warn!("pod uid {uid}: {e}");
        }
    }
    let grace = containers
        .iter()
        .map(|a| a.record.grace_period_seconds)
        .max()
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(grace);
    for a in &containers {
        // Not our children (an earlier nanolet started them): a pidfd tells their end.
        let exited = async {
            let _ = crate::sys::reaper::wait_foreign(a.state.pid).await;
        };
        exited
            .or(async {
                Timer::at(deadline).await;
            })
            .await;
        if let Err(e) = ctx.runc.delete(&a.state.id).await {
            log::warn!("pod uid {uid}: {e}");
        }
        let layer = ctx.config.data_dir.join("containers").join(&a.state.id);
        let bundle = Bundle {
            id: a.state.id.clone(),
            dir: a.state.bundle.clone(),
            layer,
        };
        if let Err(e) = bundle.remove() {
            log::warn!("pod uid {uid}: removing {}: {e}", bundle.dir.display());
        }
        log::info!(
            "pod uid {uid}: container {} stopped and removed",
            a.state.id
        );
    }
}

enum Wake {
    Tick,
    Changed,
    /// An image was pulled: containers waiting for it retry now.
    Pulled(String),
    /// SIGTERM or SIGINT: nanolet exits, its pods keep running.
    Stop,
    /// SIGUSR1 (`nanolet shutdown`): the node goes down; stop every pod first.
    Shutdown,
}

fn dir_signature(dir: &Path) -> Vec<(String, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut sig: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    e.metadata().ok().map(|m| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            m.size(),
                            m.mtime(),
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    sig.sort();
    sig
}

fn remove_unused_pod_dirs(ctx: &Context, live: &std::collections::HashSet<String>) {
    // Volumes (in the data dir) of pods that are gone.
    if let Ok(entries) = std::fs::read_dir(ctx.config.data_dir.join("pods")) {
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&uid) {
                let volumes = crate::pod::volumes::PodVolumes::new(&ctx.config.data_dir, &uid);
                if let Err(e) = volumes.tear_down() {
                    log::warn!("removing volumes of gone pod {uid}: {e}");
                }
            }
        }
    }
    let Ok(entries) = std::fs::read_dir(ctx.config.run_dir.join("pods")) else {
        return;
    };
    for entry in entries.flatten() {
        let uid = entry.file_name().to_string_lossy().into_owned();
        if live.contains(&uid) {
            continue;
        }
        let _ = Sandbox {
            dir: entry.path().join("ns"),
            host_network: false,
        }
        .destroy();
        for relative in crate::pod::resources::pod_cgroup_paths(&ctx.config.cgroup_parent, &uid) {
            let _ = cgroup::remove(Path::new(cgroup::CGROUP_ROOT), &relative);
        }
        let _ = state::remove_tree(&entry.path());
    }
}

fn write_snapshot(ctx: &Context) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let snapshot = ctx
        .board
        .snapshot(std::process::id() as i32, &ctx.config.node_name, now);
    let path = ctx.config.run_dir.join(SNAPSHOT_FILE);
    match serde_json::to_vec_pretty(&snapshot) {
        Ok(bytes) => {
            if let Err(e) = state::write_atomic(&path, &bytes) {
                log::warn!("writing {}: {e}", path.display());
            }
        }
        Err(e) => log::warn!("encoding the status snapshot: {e}"),
    }
}

/// Writes the snapshot after each change (changes that come together are written once).
async fn write_snapshots(ctx: Rc<Context>) {
    loop {
        write_snapshot(&ctx);
        ctx.board.changed().await;
    }
}
