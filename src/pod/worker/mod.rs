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
//! The worker owns its pod's containers; nothing else starts or stops them. One file per verb:
//! [`start`](start.rs) (image, sandbox, bundle, runc), [`stop`](stop.rs) (exits, termination,
//! clean-up), [`adopt`](adopt.rs) (taking over after a nanolet restart); this file holds the
//! loop, the events and the status it publishes.

mod adopt;
mod network;
mod probes;
mod queue;
mod start;
mod stop;

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_executor::LocalExecutor;
use async_io::Timer;
use futures_lite::FutureExt;

use super::backoff::BackoffPolicy;
use super::board::Board;
use super::config::{self, Addresses, PodFiles};
use super::events::{self, Transition};
use super::images::{self, PullAction, Puller};
use super::lifecycle::{self, RestartPolicy, Slot};
use super::resources::{PodResources, QosClass};
use super::status::{Condition, ContainerState, Phase, PodIp, PodStatus, Terminated};
use super::volumes::{self, PodVolumes};
use crate::api::events::ObjectRef;
use crate::config::NodeConfig;
use crate::image::gc::UseLog;
use crate::image::{Image, ImageStore};
use crate::k8s::object::ObjectSource;
use crate::k8s::{self, Pod};
use crate::runtime::bundle::{Bundle, Record};
use crate::runtime::log_pump::pump as pump_logs;
use crate::runtime::logs::LogWriter;
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
    /// Kubernetes Events (a no-op without an API server).
    pub events: crate::api::events::Recorder,
    /// The pod network: addresses, veth pairs or CNI, host ports.
    pub network: crate::net::Network,
    /// Where ConfigMaps and Secrets come from (files for static pods).
    pub objects: Box<dyn ObjectSource>,
    /// ConfigMaps, Secrets and tokens of API pods (with a kubeconfig).
    pub api_objects: Option<Rc<crate::source::api::objects::ApiObjects>>,
}

/// Orders for a worker.
#[derive(Debug)]
pub enum Command {
    /// Stop the pod gracefully and clean up everything it had.
    Stop,
    /// Stop as [`Command::Stop`] does, within this grace period in seconds (an API pod's
    /// `deletionGracePeriodSeconds`) instead of the spec's `terminationGracePeriodSeconds`.
    StopWithin(i64),
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
    /// A container's probes or hooks found something (see [`probes`]).
    Probe {
        slot: usize,
        id: String,
        verdict: probes::Verdict,
    },
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
    pub commands: Commands,
    pub task: async_executor::Task<()>,
}

/// Where the agent sends a worker its orders: straight into the worker's event queue (a
/// channel and a forwarding task per pod cost ~3 KiB for nothing).
pub struct Commands(queue::Sender<Event>);

impl Commands {
    /// Queues `command`; fails only when the worker is gone.
    pub fn try_send(&self, command: Command) -> Result<(), Command> {
        self.0.send(Event::Command(command)).map_err(|e| match e {
            Event::Command(c) => c,
            // Only commands are sent here.
            _ => Command::Stop,
        })
    }
}

/// Starts a worker for `pod` (validated, with its uid set) on the context's executor.
pub fn spawn(ctx: Rc<Context>, pod: Rc<Pod>, source: String, adopted: Vec<Adopted>) -> Handle {
    let (events, events_rx) = queue::unbounded();
    let commands = Commands(events.clone());
    let worker = Worker::new(ctx.clone(), pod, source, events, events_rx);
    let task = ctx.executor.spawn(worker.run(adopted));
    Handle { commands, task }
}

struct Worker {
    ctx: Rc<Context>,
    /// Shared with the source set that holds it (static pods): one copy per pod.
    pod: Rc<Pod>,
    source: String,
    restart: RestartPolicy,
    slots: Vec<Slot>,
    running: Vec<Option<Running>>,
    sandbox: Sandbox,
    pod_dir: PathBuf,
    files: PodFiles,
    volumes: PodVolumes,
    /// When the pod's data volumes are next refreshed (`None`: it has none to refresh).
    next_volume_sync: Option<Instant>,
    start_time: i64,
    conditions: Vec<Condition>,
    events: queue::Sender<Event>,
    events_rx: queue::Receiver<Event>,
    terminating: bool,
    /// Each slot's probe task while its container runs.
    probing: Vec<Option<probes::Probing>>,
    /// Decides where the pod's cgroup is; a pod with bad quantities starts no container and
    /// shows as BestEffort.
    qos: QosClass,
    /// The pod's addresses once its network is up.
    pod_ips: Vec<std::net::Ipv4Addr>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Worker {
    fn new(
        ctx: Rc<Context>,
        pod: Rc<Pod>,
        source: String,
        events: queue::Sender<Event>,
        events_rx: queue::Receiver<Event>,
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
        let has_data_volumes = spec.volumes.iter().any(|v| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some()
        });
        let qos = PodResources::of(&pod, -1).map_or(QosClass::BestEffort, |r| r.qos);
        Worker {
            qos,
            volumes: PodVolumes::new(&ctx.config.data_dir, &pod.metadata.uid),
            next_volume_sync: has_data_volumes.then(|| Instant::now() + ctx.config.sync_frequency),
            sandbox: Sandbox {
                dir: pod_dir.join("ns"),
                host_network: spec.host_network,
            },
            running: slots.iter().map(|_| None).collect(),
            probing: slots.iter().map(|_| None).collect(),
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
            pod_ips: Vec::new(),
        }
    }

    fn name(&self) -> String {
        k8s::pod_full_name(&self.pod)
    }

    /// Records the Events kubelet records for transition `t` of container slot `i` (which
    /// ones is decided in [`events`], pure; the recorder's task sends them).
    fn record(&self, i: usize, t: &Transition<'_>) {
        let slot = &self.slots[i];
        for e in events::events(&slot.status.name, t) {
            let container = e.about_container.then_some(&*slot.status.name);
            let object = event_object(&self.pod, container, slot.is_init);
            self.ctx
                .events
                .record(&object, e.event_type, e.reason, e.message);
        }
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
        // The verbs below are boxed: their states (runc, pulls, netlink, the sandbox child)
        // are large and live only while they run, and a worker spends its life waiting, where
        // an inline state would hold its largest verb's size for good (~12 KiB per pod).
        Box::pin(self.adopt_all(adopted)).await;
        Box::pin(self.resume_network()).await;
        loop {
            // Orders and exits that are already queued come first: a Stop never waits behind starts.
            while let Some(event) = self.events_rx.try_recv() {
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
                    Box::pin(self.start(i)).await;
                }
                self.publish();
                continue;
            }
            self.publish();
            if let Some(at) = self.next_volume_sync
                && at <= now
            {
                // Boxed like the verbs: it may fetch from the API server (a client request's
                // state), which inline would stay in every worker's task for good.
                Box::pin(self.sync_volumes(now)).await;
                continue;
            }
            let wake_at = match (plan.wake_at, self.next_volume_sync) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let next = self.events_rx.recv();
            let event = match wake_at {
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
                Box::pin(self.on_exit(slot, &id, exit)).await;
                false
            }
            Event::Probe { slot, id, verdict } => {
                self.on_verdict(slot, &id, verdict);
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
                Box::pin(self.terminate(None)).await;
                true
            }
            Event::Command(Command::StopWithin(seconds)) => {
                Box::pin(self.terminate(Some(seconds))).await;
                true
            }
        }
    }

    /// The pod's addresses for field references: the node's (`nodeIP`, or the source address
    /// of the host's route out, as [`crate::net::Network`] found it) and the pod's own, which a
    /// hostNetwork pod shares with the node.
    fn addresses(&self) -> Addresses {
        let host_ips: Vec<String> = self
            .ctx
            .network
            .host_ip
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        Addresses {
            pod_ips: if self.pod.spec.host_network {
                host_ips.clone()
            } else {
                self.pod_ips.iter().map(|ip| ip.to_string()).collect()
            },
            host_ips,
        }
    }

    /// Where this pod's ConfigMaps, Secrets and tokens come from: the API server's (cached)
    /// for API pods, the configuration directory's files for static pods.
    fn objects(&self) -> &dyn ObjectSource {
        match &self.ctx.api_objects {
            Some(api) if self.source == "api" => &**api,
            _ => &*self.ctx.objects,
        }
    }

    /// Brings the copies of an API pod's objects and tokens up to date before they are read.
    async fn fetch_objects(&self) {
        if let Some(api) = &self.ctx.api_objects
            && self.source == "api"
        {
            api.fetch_for(&self.pod).await;
        }
    }

    /// kubelet's periodic resync of data volumes: edited ConfigMaps and Secrets reach the
    /// running pod (atomically; an unchanged payload writes nothing).
    async fn sync_volumes(&mut self, now: Instant) {
        self.next_volume_sync = Some(now + self.ctx.config.sync_frequency);
        if !self.running.iter().any(Option::is_some) {
            return;
        }
        self.fetch_objects().await;
        let addresses = self.addresses();
        let inputs = volumes::Inputs {
            pod: &self.pod,
            objects: self.objects(),
            addresses: &addresses,
        };
        if let Err(e) = self.volumes.set_up(&self.pod, &inputs) {
            log::warn!("pod {}: {e}", self.name());
            // As kubelet's remounts: a FailedMount, and the running pod keeps its last contents.
            let message = e.to_string();
            self.record(0, &Transition::MountFailed { message: &message });
        }
    }

    fn show_backoff(&mut self, i: usize, left: Duration) {
        let pod = self.pod.metadata.kubelet_ref();
        let slot = &mut self.slots[i];
        if let ContainerState::Terminated(t) = &slot.status.state {
            slot.status.last_state = Some(t.clone());
        }
        let delay = slot.backoff.delay().unwrap_or(left);
        let entering = !matches!(&slot.status.state,
            ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff");
        slot.status.state = ContainerState::Waiting {
            reason: "CrashLoopBackOff".to_string(),
            message: lifecycle::backoff_message(delay, &slot.status.name, &pod),
        };
        if entering {
            let m = &self.pod.metadata;
            let transition = Transition::BackOff {
                namespace: &m.namespace,
                pod: &m.name,
                uid: &m.uid,
            };
            self.record(i, &transition);
        }
    }

    fn create_error(&mut self, i: usize, reason: &str, message: String) {
        log::warn!(
            "pod {}: container {:?}: {reason}: {message}",
            self.name(),
            self.slots[i].status.name
        );
        // The container keeps waiting as ContainerCreating while a volume cannot be set up.
        let transition = match reason {
            "ContainerCreating" => Transition::MountFailed { message: &message },
            "CreatePodSandboxError" => Transition::SandboxFailed { message: &message },
            _ => Transition::CreateFailed {
                image: &self.container(i).image,
                reason,
                message: &message,
            },
        };
        self.record(i, &transition);
        self.slots[i].record_create_error(reason, message, Instant::now());
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
            qos_class: self.qos.as_str().to_string(),
            pod_ip: self
                .pod_ips
                .first()
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            pod_ips: self
                .pod_ips
                .iter()
                .map(|ip| PodIp { ip: ip.to_string() })
                .collect(),
            host_ip: self
                .ctx
                .network
                .host_ip
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
        };
        if phase == Phase::Failed || phase == Phase::Succeeded {
            log::debug!("pod {}: phase {phase:?}", self.name());
        }
        self.ctx.board.publish(status);
    }
}

/// The `involvedObject` of an event about `pod`, or about one of its containers
/// (`spec.containers{app}`, `spec.initContainers{setup}`).
fn event_object(pod: &Pod, container: Option<&str>, is_init: bool) -> ObjectRef {
    let m = &pod.metadata;
    let mut object = ObjectRef::pod(&m.namespace, &m.name, &m.uid, container);
    if let Some(name) = container.filter(|_| is_init) {
        object.field_path = format!("spec.initContainers{{{name}}}");
    }
    object
}
