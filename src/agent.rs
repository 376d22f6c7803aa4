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
//!
//! This file is the wiring and the main loop; the chores live beside it: `api_link` (joining
//! a cluster: the API pod source and the tasks it spawns), `images` (re-import, image GC),
//! `leftovers` (what the last boot or the last nanolet left behind).

mod api_link;
mod images;
mod leftovers;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_executor::LocalExecutor;
use async_io::Timer;
use async_signal::{Signal, Signals};
use futures_lite::{FutureExt, StreamExt};

use crate::config::{self, NodeConfig};
use crate::ctl::ps::SNAPSHOT_FILE;
use crate::image::ImageStore;
use crate::image::gc::UseLog;
use crate::k8s::Pod;
use crate::pod::backoff::BackoffPolicy;
use crate::pod::board::Board;
use crate::pod::status::SourceError;
use crate::pod::worker::{self, Adopted, Command, Context, Handle};
use crate::runtime::runc::Runc;
use crate::runtime::spec::HostLimits;
use crate::source::{self, StaticPodSet, watch::DirWatch};
use crate::state::{self, boot};
use crate::sys::reaper::Reaper;
use api_link::ApiLink;
use leftovers::clear_stale_state;

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
        api_objects: api.as_ref().map(|api| {
            Rc::new(crate::source::api::objects::ApiObjects::new(
                api.client(),
                config.data_dir.join("api-objects"),
                config.sync_frequency,
            ))
        }),
        events,
        config: config.clone(),
    });
    executor.spawn(reaper.run(child_signals)).detach();
    let mut agent = Agent::new(ctx.clone(), config_dir.to_path_buf(), pulled_rx);
    if let Some(api) = api {
        // Pods bound to this node by the API server run beside the static pods.
        agent.join_cluster(api);
    }
    async_io::block_on(executor.run(agent.run(stop_signals)));
    Ok(())
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
                Wake::Reconcile
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
                Wake::Reconcile => {
                    // API pods changed or a pod finished stopping: the manifests folder has
                    // its own watch, so it is not read again here.
                    self.reconcile(&mut BTreeMap::new());
                    continue;
                }
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
            api.pods.set_static_pods(self.set.desired_shared());
        }
    }

    /// Starts workers for new pods and stops workers whose pod is gone.
    fn reconcile(&mut self, adopted: &mut BTreeMap<String, Vec<Adopted>>) {
        self.stopping.retain(|_, task| !task.is_finished());
        let mut desired: Vec<(String, Rc<Pod>, String)> = self
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
            if api.pods.flush() {
                self.prune_api_objects();
            }
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
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

enum Wake {
    Tick,
    /// The manifests folder changed.
    Changed,
    /// API pods changed, or a pod finished stopping: reconcile, without reading manifests/.
    Reconcile,
    /// An image was pulled: containers waiting for it retry now.
    Pulled(String),
    /// SIGTERM or SIGINT: nanolet exits, its pods keep running.
    Stop,
    /// SIGUSR1 (`nanolet shutdown`): the node goes down; stop every pod first.
    Shutdown,
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
