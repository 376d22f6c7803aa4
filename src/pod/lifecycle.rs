//! The pod lifecycle's decisions, pure: given the containers' statuses, what to start next,
//! what waits for back-off, and the pod's phase. No I/O; time is passed in.
//!
//! Each container is a [`Slot`] whose state is one `ContainerState` (waiting, running,
//! terminated: one enum, never parallel booleans). A slot moves like this:
//!
//! ```text
//!   Waiting(ContainerCreating) ──start ok──► Running ──exit──► Terminated
//!        │   ▲                                  ▲                  │
//!        │   └──create failed (retry later)     │                  │ restart? (restartPolicy)
//!        ▼                                      │                  ▼
//!   Waiting(ErrImageNeverPull, …)               └──back-off over── Waiting(CrashLoopBackOff)
//! ```
//!
//! Init containers run one at a time, in order, each to a successful exit, before any app
//! container starts; app containers then all start together.

use std::time::{Duration, Instant};

use super::backoff::{Backoff, BackoffPolicy};
use super::status::{ContainerState, ContainerStatus, Phase, Terminated};

/// `spec.restartPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Whether a container that exited with `exit_code` is started again.
    pub fn should_restart(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// How long a container that could not be created waits before the next try.
pub const CREATE_RETRY: Duration = Duration::from_secs(10);

/// One container of the pod, with what the decisions need beyond its status.
#[derive(Clone, Debug)]
pub struct Slot {
    pub status: ContainerStatus,
    pub is_init: bool,
    pub backoff: Backoff,
    /// When (monotonic) the last run ended, for back-off.
    pub finished: Option<Instant>,
    /// A failed create is retried no earlier than this.
    pub retry_at: Option<Instant>,
}

impl Slot {
    pub fn new(name: &str, image: &str, is_init: bool) -> Slot {
        Slot {
            status: ContainerStatus::new(name, image),
            is_init,
            backoff: Backoff::default(),
            finished: None,
            retry_at: None,
        }
    }

    /// Init container finished successfully.
    fn is_completed(&self) -> bool {
        matches!(&self.status.state, ContainerState::Terminated(t) if t.exit_code == 0)
    }

    /// Begins a new attempt at `now`: a previous run moves to `lastState`, the restart count
    /// grows, and back-off is raised. Returns the attempt number (the restart count), which
    /// names the attempt's log file.
    pub fn begin_attempt(&mut self, policy: &BackoffPolicy, now: Instant) -> u32 {
        if let Some(t) = self.status.last_termination().cloned() {
            self.status.last_state = Some(t);
            self.status.restart_count += 1;
            self.backoff
                .record_restart(policy, self.finished.unwrap_or(now), now);
        }
        self.retry_at = None;
        self.status.restart_count
    }

    /// Records that the attempt is running.
    pub fn record_start(&mut self, container_id: String, image_id: String, started_at: i64) {
        self.status.container_id = container_id;
        self.status.image_id = image_id;
        self.status.state = ContainerState::Running { started_at };
        self.status.started = true;
        // Without probes a running app container is ready; the worker's probes refine both.
        self.status.ready = !self.is_init;
    }

    /// Records the end of the attempt: the process exited, or it could not be started
    /// (kubelet's StartError, exit code 128).
    pub fn record_exit(&mut self, terminated: Terminated, now: Instant) {
        self.status.state = ContainerState::Terminated(terminated);
        self.status.ready = false;
        self.status.started = false;
        self.finished = Some(now);
    }

    /// Records that the container could not be created (image missing, bad config): it stays
    /// waiting with `reason` and is retried later.
    pub fn record_create_error(&mut self, reason: &str, message: String, now: Instant) {
        if let ContainerState::Terminated(t) = &self.status.state {
            self.status.last_state = Some(t.clone());
        }
        self.status.state = ContainerState::Waiting {
            reason: reason.to_string(),
            message,
        };
        self.status.ready = false;
        self.retry_at = Some(now + CREATE_RETRY);
    }
}

/// What to do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Slots to start now, in this order.
    pub start: Vec<usize>,
    /// Slots that must wait for their back-off, and until when.
    pub backing_off: Vec<(usize, Instant)>,
    /// The earliest time at which the plan may change without an event.
    pub wake_at: Option<Instant>,
}

enum Gate {
    Start,
    Wait(Instant),
    Never,
}

fn gate(slot: &Slot, restart: RestartPolicy, policy: &BackoffPolicy, now: Instant) -> Gate {
    if slot.status.is_running() {
        return Gate::Never;
    }
    let mut not_before = slot.retry_at.filter(|t| *t > now);
    if let Some(t) = slot.status.last_termination() {
        if !restart.should_restart(t.exit_code) {
            return Gate::Never;
        }
        if let Some(finished) = slot.finished
            && let Some(until) = slot.backoff.wait_until(policy, finished, now)
        {
            not_before = Some(not_before.map_or(until, |t| t.max(until)));
        }
    }
    match not_before {
        Some(t) => Gate::Wait(t),
        None => Gate::Start,
    }
}

/// Decides what to start now. Terminal pods do nothing.
pub fn plan(restart: RestartPolicy, slots: &[Slot], policy: &BackoffPolicy, now: Instant) -> Plan {
    let mut plan = Plan::default();
    if phase(restart, slots).is_terminal() {
        return plan;
    }
    let wait = |plan: &mut Plan, i: usize, until: Instant, slot: &Slot| {
        if slot.status.last_termination().is_some() {
            plan.backing_off.push((i, until));
        }
        plan.wake_at = Some(plan.wake_at.map_or(until, |w: Instant| w.min(until)));
    };
    // Init containers: one at a time, in order, each to success.
    for (i, slot) in slots.iter().enumerate().filter(|(_, s)| s.is_init) {
        if slot.is_completed() {
            continue;
        }
        match gate(slot, restart, policy, now) {
            Gate::Start => plan.start.push(i),
            Gate::Wait(until) => wait(&mut plan, i, until, slot),
            Gate::Never => {}
        }
        return plan;
    }
    for (i, slot) in slots.iter().enumerate().filter(|(_, s)| !s.is_init) {
        match gate(slot, restart, policy, now) {
            Gate::Start => plan.start.push(i),
            Gate::Wait(until) => wait(&mut plan, i, until, slot),
            Gate::Never => {}
        }
    }
    plan
}

/// The pod's phase, as kubelet's `getPhase` computes it.
pub fn phase(restart: RestartPolicy, slots: &[Slot]) -> Phase {
    let init_failed = slots.iter().filter(|s| s.is_init).any(|s| {
        matches!(&s.status.state, ContainerState::Terminated(t) if t.exit_code != 0)
            && restart == RestartPolicy::Never
    });
    if init_failed {
        return Phase::Failed;
    }
    if slots
        .iter()
        .filter(|s| s.is_init)
        .any(|s| !s.is_completed())
    {
        return Phase::Pending;
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for slot in slots.iter().filter(|s| !s.is_init) {
        match &slot.status.state {
            ContainerState::Running { .. } => running += 1,
            ContainerState::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            ContainerState::Waiting { .. } if slot.status.last_state.is_some() => stopped += 1,
            ContainerState::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 {
        Phase::Pending
    } else if running > 0 {
        Phase::Running
    } else if stopped > 0 {
        if restart == RestartPolicy::Always {
            Phase::Running
        } else if stopped == succeeded {
            Phase::Succeeded
        } else if restart == RestartPolicy::Never {
            Phase::Failed
        } else {
            Phase::Running
        }
    } else {
        Phase::Pending
    }
}

/// The waiting message of a container in CrashLoopBackOff, as kubelet writes it; `pod` is
/// kubelet's `name_namespace(uid)`.
pub fn backoff_message(delay: Duration, container: &str, pod: &str) -> String {
    format!(
        "back-off {}s restarting failed container={container} pod={pod}",
        delay.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(code: i32) -> Terminated {
        Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.to_string(),
            message: String::new(),
            started_at: Some(0),
            finished_at: 1,
            container_id: "c".to_string(),
        }
    }

    struct Pod {
        slots: Vec<Slot>,
        policy: BackoffPolicy,
        t0: Instant,
    }

    impl Pod {
        fn new(init: &[&str], main: &[&str]) -> Pod {
            let mut slots: Vec<Slot> = init.iter().map(|n| Slot::new(n, "busybox", true)).collect();
            slots.extend(main.iter().map(|n| Slot::new(n, "busybox", false)));
            Pod {
                slots,
                policy: BackoffPolicy::default(),
                t0: Instant::now(),
            }
        }
        fn at(&self, secs: u64) -> Instant {
            self.t0 + Duration::from_secs(secs)
        }
        fn start(&mut self, i: usize, secs: u64) {
            let now = self.at(secs);
            self.slots[i].begin_attempt(&self.policy, now);
            self.slots[i].record_start(format!("c{i}"), String::new(), secs as i64);
        }
        fn exit(&mut self, i: usize, code: i32, secs: u64) {
            let now = self.at(secs);
            self.slots[i].record_exit(term(code), now);
        }
        fn plan(&self, restart: RestartPolicy, secs: u64) -> Plan {
            plan(restart, &self.slots, &self.policy, self.at(secs))
        }
    }

    #[test]
    fn init_containers_run_one_at_a_time_before_app_containers() {
        let mut p = Pod::new(&["i1", "i2"], &["a", "b"]);
        assert_eq!(p.plan(RestartPolicy::Always, 0).start, vec![0]);
        assert_eq!(phase(RestartPolicy::Always, &p.slots), Phase::Pending);
        p.start(0, 0);
        assert!(p.plan(RestartPolicy::Always, 0).start.is_empty());
        p.exit(0, 0, 1);
        assert_eq!(p.plan(RestartPolicy::Always, 1).start, vec![1]);
        p.start(1, 1);
        p.exit(1, 0, 2);
        assert_eq!(p.plan(RestartPolicy::Always, 2).start, vec![2, 3]);
        p.start(2, 2);
        p.start(3, 2);
        assert_eq!(phase(RestartPolicy::Always, &p.slots), Phase::Running);
    }

    #[test]
    fn failed_init_container_fails_the_pod_under_never_and_retries_otherwise() {
        let mut p = Pod::new(&["i"], &["a"]);
        p.start(0, 0);
        p.exit(0, 1, 1);
        assert_eq!(phase(RestartPolicy::Never, &p.slots), Phase::Failed);
        assert_eq!(p.plan(RestartPolicy::Never, 1), Plan::default());
        assert_eq!(phase(RestartPolicy::OnFailure, &p.slots), Phase::Pending);
        assert_eq!(p.plan(RestartPolicy::OnFailure, 1).start, vec![0]);
    }

    #[test]
    fn restart_policy_decides_which_exits_restart() {
        for (policy, code, restarts, phase_after) in [
            (RestartPolicy::Always, 0, true, Phase::Running),
            (RestartPolicy::Always, 1, true, Phase::Running),
            (RestartPolicy::OnFailure, 0, false, Phase::Succeeded),
            (RestartPolicy::OnFailure, 2, true, Phase::Running),
            (RestartPolicy::Never, 0, false, Phase::Succeeded),
            (RestartPolicy::Never, 3, false, Phase::Failed),
        ] {
            let mut p = Pod::new(&[], &["a"]);
            p.start(0, 0);
            p.exit(0, code, 5);
            let plan = p.plan(policy, 5);
            assert_eq!(!plan.start.is_empty(), restarts, "{policy:?} exit {code}");
            assert_eq!(
                phase(policy, &p.slots),
                phase_after,
                "{policy:?} exit {code}"
            );
        }
    }

    #[test]
    fn crash_loop_backs_off_and_counts_restarts() {
        let mut p = Pod::new(&[], &["a"]);
        p.start(0, 0);
        p.exit(0, 1, 1);
        // First restart: immediate.
        assert_eq!(p.plan(RestartPolicy::Always, 1).start, vec![0]);
        p.start(0, 1);
        assert_eq!(p.slots[0].status.restart_count, 1);
        assert_eq!(p.slots[0].status.last_state.as_ref().unwrap().exit_code, 1);
        p.exit(0, 1, 2);
        // Second: 10 s after the crash.
        let plan = p.plan(RestartPolicy::Always, 3);
        assert!(plan.start.is_empty());
        assert_eq!(plan.backing_off, vec![(0, p.at(12))]);
        assert_eq!(plan.wake_at, Some(p.at(12)));
        assert_eq!(p.plan(RestartPolicy::Always, 12).start, vec![0]);
        p.start(0, 12);
        p.exit(0, 1, 13);
        assert_eq!(p.plan(RestartPolicy::Always, 14).wake_at, Some(p.at(33)));
        assert_eq!(p.slots[0].status.restart_count, 2);
    }

    #[test]
    fn a_container_that_cannot_be_created_is_retried_later() {
        let mut p = Pod::new(&[], &["a", "b"]);
        let now = p.at(0);
        p.slots[0].record_create_error("ErrImageNeverPull", "image missing".into(), now);
        p.start(1, 0);
        let plan = p.plan(RestartPolicy::Always, 1);
        assert!(plan.start.is_empty());
        assert!(plan.backing_off.is_empty(), "not a crash loop");
        assert_eq!(plan.wake_at, Some(p.at(10)));
        assert_eq!(phase(RestartPolicy::Always, &p.slots), Phase::Pending);
        assert_eq!(p.plan(RestartPolicy::Always, 10).start, vec![0]);
    }

    #[test]
    fn start_errors_count_as_restarts() {
        let mut p = Pod::new(&[], &["a"]);
        // runc could not exec the command: StartError, exit 128, no run.
        let t = p.at(0);
        assert_eq!(p.slots[0].begin_attempt(&p.policy, t), 0);
        p.exit(0, 128, 0);
        assert_eq!(p.slots[0].status.restart_count, 0);
        assert_eq!(p.plan(RestartPolicy::Always, 0).start, vec![0]);
        assert_eq!(p.slots[0].begin_attempt(&p.policy, t), 1);
        p.exit(0, 128, 1);
        assert_eq!(p.slots[0].status.restart_count, 1);
        assert_eq!(p.plan(RestartPolicy::Always, 2).wake_at, Some(p.at(11)));
    }
}
