//! Probes and lifecycle hooks of the worker's containers.
//!
//! Each running container with a postStart hook or a probe gets one task (dropped, hence
//! cancelled, when the container ends) that runs the hook, then the probes that
//! [`ContainerProbes`] says are due, and reports to the worker only what changes the
//! container: `started`/`ready` and kills. The worker owns the kills: preStop within the grace
//! period, the stop signal, SIGKILL when the grace period is over; the exit then restarts the
//! container as `restartPolicy` says, with the usual back-off.
//!
//! ```text
//!   task: [postStart] ──fail──► Kill(FailedPostStartHook)
//!            │ ok
//!            ▼
//!         loop { wait for next_wake; run what is due (concurrently); record → Status | Kill }
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use super::*;
use crate::api::events::Recorder;
use crate::k8s::probe::{Action, ProbeKind, Timing};
use crate::pod::probe::{ContainerProbes, Effect, Outcome};
use crate::prober::{self, Target};

/// postStart has no timeout in kubelet; this one only keeps deadlines finite.
const HOOK_TIMEOUT: Duration = Duration::from_secs(1 << 31);

/// What a container's probe task tells its worker.
#[derive(Debug)]
pub(super) enum Verdict {
    /// `started` and `ready` as the probes now say.
    Status { started: bool, ready: bool },
    /// Kill the container: a liveness or startup probe failed, or the postStart hook did.
    Kill {
        message: String,
        grace_seconds: Option<u64>,
        /// The probe that failed; `None`: the postStart hook did.
        probe: Option<ProbeKind>,
    },
}

/// The probe task of one container attempt, and why the worker killed it (if it did).
pub(super) struct Probing {
    id: String,
    _task: Option<async_executor::Task<()>>,
    /// Set when the worker kills the container; shown on its termination.
    pub(super) kill_message: Option<String>,
}

/// A container's probes and postStart hook, resolved.
struct Plan {
    probes: [(ProbeKind, Option<(Timing, Action)>); 3],
    post_start: Option<Action>,
}

impl Plan {
    fn new(c: &k8s::Container) -> Result<Plan, String> {
        let resolve = |p: Option<&k8s::probe::Probe>| -> Result<Option<(Timing, Action)>, String> {
            p.map(|p| Ok((p.timing(), p.action(c.ports.as_ref())?)))
                .transpose()
        };
        let post_start = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
            .map(|h| h.action(c.ports.as_ref()))
            .transpose()?;
        Ok(Plan {
            probes: [
                (ProbeKind::Startup, resolve(c.startup_probe.as_deref())?),
                (ProbeKind::Liveness, resolve(c.liveness_probe.as_deref())?),
                (ProbeKind::Readiness, resolve(c.readiness_probe.as_deref())?),
            ],
            post_start,
        })
    }

    fn timing(&self, kind: ProbeKind) -> Option<Timing> {
        self.probes
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, p)| p.as_ref().map(|(t, _)| *t))
    }

    fn action(&self, kind: ProbeKind) -> Option<&Action> {
        self.probes
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, p)| p.as_ref().map(|(_, a)| a))
    }

    fn is_empty(&self) -> bool {
        self.post_start.is_none() && self.probes.iter().all(|(_, p)| p.is_none())
    }
}

impl Worker {
    /// The address probes and hooks go to. The one place that knows: 127.0.0.1 for a
    /// hostNetwork pod, else the pod's first IP (none until its network is up).
    pub(super) fn probe_ip(&self) -> Option<IpAddr> {
        if self.pod.spec.host_network {
            return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        self.pod_ips.first().map(|ip| IpAddr::V4(*ip))
    }

    /// Starts the probe task of container `i`, which runs as `id` since `running_for`; sets
    /// its `started` and `ready` as kubelet does before any probe has run.
    pub(super) fn start_probes(&mut self, i: usize, id: &str, running_for: Duration) {
        let c = self.container(i).clone();
        let plan = match Plan::new(&c) {
            Ok(plan) => plan,
            // Validation resolved these already; a failure here is a bug, not bad input.
            Err(e) => {
                log::error!("pod {}: container {:?}: {e}", self.name(), c.name);
                return;
            }
        };
        let started_at = Instant::now()
            .checked_sub(running_for)
            .unwrap_or_else(Instant::now);
        let machine = ContainerProbes::new(
            plan.timing(ProbeKind::Liveness),
            plan.timing(ProbeKind::Readiness),
            plan.timing(ProbeKind::Startup),
            started_at,
        );
        let slot = &mut self.slots[i];
        slot.status.started = machine.is_started();
        slot.status.ready = !slot.is_init && machine.is_ready();
        let task = (!plan.is_empty()).then(|| {
            let dir = self.running[i]
                .as_ref()
                .map(|r| r.bundle.dir.clone())
                .unwrap_or_default();
            let run = ProbeTask {
                runc: self.ctx.runc.clone(),
                id: id.to_string(),
                dir,
                pod_ip: self.probe_ip(),
                events: self.events.clone(),
                slot: i,
                label: format!("pod {}: container {:?}", self.name(), c.name),
                recorder: self.ctx.events.clone(),
                object: event_object(&self.pod, Some(&c.name), self.slots[i].is_init),
                container: c.name.clone(),
            };
            self.ctx.executor.spawn(run.run(plan, machine))
        });
        self.probing[i] = Some(Probing {
            id: id.to_string(),
            _task: task,
            kill_message: None,
        });
    }

    /// Stops the probe task of container `i` (it ended); returns why it was killed, if it was.
    pub(super) fn stop_probes(&mut self, i: usize) -> Option<String> {
        self.probing[i].take().and_then(|p| p.kill_message)
    }

    /// Applies what a probe task found.
    pub(super) fn on_verdict(&mut self, i: usize, id: &str, verdict: Verdict) {
        if self.probing[i].as_ref().is_none_or(|p| p.id != id) {
            return;
        }
        match verdict {
            Verdict::Status { started, ready } => {
                let name = self.name();
                let slot = &mut self.slots[i];
                if slot.status.ready != ready {
                    log::info!(
                        "pod {name}: container {:?} ready: {ready}",
                        slot.status.name
                    );
                }
                slot.status.started = started;
                slot.status.ready = ready && !slot.is_init;
            }
            Verdict::Kill {
                message,
                grace_seconds,
                probe,
            } => {
                if let Some(kind) = probe {
                    let restarts = self.restart != RestartPolicy::Never;
                    self.record(i, &Transition::ProbeKill { kind, restarts });
                }
                let name = self.slots[i].status.name.clone();
                log::warn!(
                    "pod {}: container {name:?}: {message}; killing it (restartPolicy decides a restart)",
                    self.name()
                );
                self.slots[i].status.ready = false;
                if let Some(p) = self.probing[i].as_mut() {
                    p.kill_message = Some(message);
                }
                let grace = grace_seconds
                    .unwrap_or(self.pod.spec.termination_grace_period_seconds().max(0) as u64);
                if let Some(kill) = self.kill_task(i, Duration::from_secs(grace)) {
                    self.ctx.executor.spawn(kill).detach();
                }
            }
        }
    }

    /// A future that stops container `i` as kubelet does: preStop (within `grace`), the stop
    /// signal, then SIGKILL when `grace` is over. Its exit comes to the worker as usual.
    pub(super) fn kill_task(
        &self,
        i: usize,
        grace: Duration,
    ) -> Option<impl Future<Output = ()> + 'static> {
        let r = self.running[i].as_ref()?;
        let c = self.container(i);
        let pre_stop = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.action(c.ports.as_ref()).ok());
        let runc = self.ctx.runc.clone();
        let id = r.id.clone();
        let pid_file = r.bundle.dir.join("pre-stop.pid");
        let signal = if grace.is_zero() {
            "SIGKILL".to_string()
        } else {
            r.stop_signal.clone()
        };
        let pod_ip = self.probe_ip();
        let label = format!("pod {}: container {:?}", self.name(), c.name);
        Some(async move {
            let deadline = Instant::now() + grace;
            if let Some(hook) = pre_stop
                && !grace.is_zero()
            {
                let target = Target {
                    runc: &runc,
                    container_id: &id,
                    pid_file: &pid_file,
                    pod_ip,
                };
                let hook = async { Some(prober::run(&hook, &target, grace).await) };
                let over = async {
                    Timer::at(deadline).await;
                    None
                };
                match hook.or(over).await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => log::warn!("{label}: FailedPreStopHook: {e}"),
                    None => log::warn!("{label}: preStop hook did not finish in the grace period"),
                }
            }
            if let Err(e) = runc.kill(&id, &signal).await {
                log::debug!("{label}: {e}");
            }
            Timer::at(deadline).await;
            // Gone by now, usually: then runc says so, and that is fine.
            let _ = runc.kill(&id, "SIGKILL").await;
        })
    }
}

/// What the probe task of one container needs.
struct ProbeTask {
    runc: Runc,
    id: String,
    /// The bundle folder, for exec pid files.
    dir: PathBuf,
    pod_ip: Option<IpAddr>,
    events: super::queue::Sender<Event>,
    slot: usize,
    label: String,
    /// Where this container's Unhealthy and FailedPostStartHook events go.
    recorder: Recorder,
    object: ObjectRef,
    container: String,
}

impl ProbeTask {
    fn send(&self, verdict: Verdict) {
        let _ = self.events.send(Event::Probe {
            slot: self.slot,
            id: self.id.clone(),
            verdict,
        });
    }

    /// Records the Events of transition `t` of this container (see [`events`]).
    fn record(&self, t: &Transition<'_>) {
        for e in events::events(&self.container, t) {
            self.recorder
                .record(&self.object, e.event_type, e.reason, e.message);
        }
    }

    /// `pid_file`: one per concurrent exec (probes of different kinds run at once).
    fn target<'a>(&'a self, pid_file: &'a Path) -> Target<'a> {
        Target {
            runc: &self.runc,
            container_id: &self.id,
            pid_file,
            pod_ip: self.pod_ip,
        }
    }

    async fn run(self, plan: Plan, mut machine: ContainerProbes) {
        if let Some(hook) = &plan.post_start {
            // kubelet gives postStart no timeout of its own; a hung hook holds the container
            // un-probed until it is killed or removed, as there.
            let pid_file = self.dir.join("post-start.pid");
            let target = self.target(&pid_file);
            if let Err(e) = Box::pin(prober::run(hook, &target, HOOK_TIMEOUT)).await {
                self.record(&Transition::PostStartFailed { output: &e });
                self.send(Verdict::Kill {
                    message: format!("FailedPostStartHook: {e}"),
                    grace_seconds: None,
                    probe: None,
                });
                return;
            }
        }
        let mut shown = (machine.is_started(), machine.is_ready());
        loop {
            let now = Instant::now();
            let due = machine.due(now);
            if due.is_empty() {
                match machine.next_wake() {
                    Some(at) => {
                        Timer::at(at).await;
                        continue;
                    }
                    None => return,
                }
            }
            let this = &self;
            let plan = &plan;
            let due = &due;
            let run = |kind: ProbeKind| {
                let timing = due.iter().find(|(k, _)| *k == kind).map(|(_, t)| *t);
                let action = plan.action(kind);
                async move {
                    let (timing, action) = (timing?, action?);
                    let timeout = Duration::from_secs(timing.timeout_seconds.into());
                    let pid_file = this.dir.join(format!("{}.pid", kind.field()));
                    // Boxed: an idle task (most of the time) then holds a pointer, not the
                    // largest probe's state (socket buffers) inline; 100 tasks add up.
                    let target = this.target(&pid_file);
                    let result = Box::pin(prober::run(action, &target, timeout)).await;
                    Some((kind, result))
                }
            };
            let ((startup, liveness), readiness) = futures_lite::future::zip(
                futures_lite::future::zip(run(ProbeKind::Startup), run(ProbeKind::Liveness)),
                run(ProbeKind::Readiness),
            )
            .await;
            for (kind, result) in [startup, liveness, readiness].into_iter().flatten() {
                let outcome = match result {
                    Ok(warning) => {
                        if let Some(output) = &warning {
                            self.record(&Transition::ProbeWarning { kind, output });
                        }
                        Outcome::Success
                    }
                    Err(e) => {
                        log::debug!("{}: {} probe failed: {e}", self.label, kind.word());
                        self.record(&Transition::Unhealthy { kind, output: &e });
                        Outcome::Failure(e)
                    }
                };
                match machine.record(kind, &outcome, now) {
                    Some(Effect::Kill {
                        message,
                        grace_seconds,
                        kind,
                    }) => {
                        self.send(Verdict::Kill {
                            message,
                            grace_seconds,
                            probe: Some(kind),
                        });
                        return;
                    }
                    Some(Effect::Started | Effect::Ready(_)) | None => {}
                }
            }
            let now_shown = (machine.is_started(), machine.is_ready());
            if now_shown != shown {
                shown = now_shown;
                self.send(Verdict::Status {
                    started: shown.0,
                    ready: shown.1,
                });
            }
        }
    }
}
