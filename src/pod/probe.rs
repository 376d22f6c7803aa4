//! The probes of one running container, as kubelet's prober workers decide them, pure: when
//! each probe is due, and what a run of results means (ready, started, kill). No I/O; time is
//! passed in. The worker's probe task (worker/probes.rs) runs what is due and reports here.
//!
//! Each probe is one [`Prober`] whose [`Phase`] moves like this:
//!
//! ```text
//!   Probing ──startup: successThreshold successes──► Done        (container started)
//!      │
//!      └──liveness/startup: failureThreshold failures──► OnHold  (container killed; a new
//!                                                                 attempt gets new probers)
//!   readiness: Probing forever; failureThreshold failures → not ready,
//!              successThreshold successes → ready
//! ```
//!
//! kubelet's rules kept here: nothing is probed before `initialDelaySeconds` after the start;
//! liveness and readiness wait until the startup probe has succeeded; a result changes only
//! after `failureThreshold` (or `successThreshold`) equal outcomes in a row; readiness starts
//! as failure, liveness as success; the next run is due `periodSeconds` after the last began.

use std::time::{Duration, Instant};

use crate::k8s::probe::{ProbeKind, Timing};

/// What one probe run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// With kubelet-style detail, e.g. `HTTP probe failed with statuscode: 500`.
    Failure(String),
}

/// What the worker must do after a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The startup probe succeeded: `started` becomes true (and liveness/readiness begin).
    Started,
    /// The container's `ready` changes.
    Ready(bool),
    /// Liveness or startup failed: kill the container (it restarts as `restartPolicy` says).
    Kill {
        kind: ProbeKind,
        /// kubelet's words, e.g. `Liveness probe failed: ...`.
        message: String,
        /// The probe's own `terminationGracePeriodSeconds`, else the pod's.
        grace_seconds: Option<u64>,
    },
}

/// Where one probe is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Probing,
    /// Startup succeeded: never probed again for this attempt.
    Done,
    /// Liveness or startup failed: the container is being killed; no more probes.
    OnHold,
}

/// One probe of one container attempt.
#[derive(Debug, Clone)]
pub struct Prober {
    pub kind: ProbeKind,
    pub timing: Timing,
    pub phase: Phase,
    /// The result as kubelet reports it (readiness: false until proven).
    pub result: bool,
    /// The last outcome and how many times in a row it came.
    last: Option<bool>,
    run: u32,
    next_at: Instant,
}

impl Prober {
    fn new(kind: ProbeKind, timing: Timing, started_at: Instant) -> Prober {
        Prober {
            kind,
            timing,
            phase: Phase::Probing,
            result: kind == ProbeKind::Liveness,
            last: None,
            run: 0,
            next_at: started_at + Duration::from_secs(timing.initial_delay_seconds.into()),
        }
    }

    fn record(&mut self, outcome: &Outcome, began: Instant) -> Option<Effect> {
        if self.phase != Phase::Probing {
            return None;
        }
        self.next_at = began + Duration::from_secs(self.timing.period_seconds.into());
        let success = *outcome == Outcome::Success;
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold = if success {
            self.timing.success_threshold
        } else {
            self.timing.failure_threshold
        };
        if self.run < threshold {
            return None;
        }
        let changed = self.result != success;
        self.result = success;
        match (self.kind, success) {
            // Startup: its first success ends it.
            (ProbeKind::Startup, true) => {
                self.phase = Phase::Done;
                Some(Effect::Started)
            }
            // Liveness/startup: failureThreshold failures in a row kill the container.
            (ProbeKind::Liveness | ProbeKind::Startup, false) => {
                self.phase = Phase::OnHold;
                let detail = match outcome {
                    Outcome::Failure(d) => d.as_str(),
                    Outcome::Success => "",
                };
                Some(Effect::Kill {
                    kind: self.kind,
                    message: format!("{} probe failed: {detail}", self.kind.word()),
                    grace_seconds: self.timing.termination_grace_period_seconds,
                })
            }
            (ProbeKind::Liveness, true) => None,
            // Readiness: the result itself is the effect.
            (ProbeKind::Readiness, ready) => changed.then_some(Effect::Ready(ready)),
        }
    }
}

/// The probes of one container attempt.
#[derive(Debug, Clone)]
pub struct ContainerProbes {
    probers: Vec<Prober>,
}

impl ContainerProbes {
    /// Probers for a container attempt that started running at `started_at`.
    pub fn new(
        liveness: Option<Timing>,
        readiness: Option<Timing>,
        startup: Option<Timing>,
        started_at: Instant,
    ) -> ContainerProbes {
        let probers = [
            (ProbeKind::Startup, startup),
            (ProbeKind::Liveness, liveness),
            (ProbeKind::Readiness, readiness),
        ]
        .into_iter()
        .filter_map(|(kind, t)| t.map(|t| Prober::new(kind, t, started_at)))
        .collect();
        ContainerProbes { probers }
    }

    fn get(&self, kind: ProbeKind) -> Option<&Prober> {
        self.probers.iter().find(|p| p.kind == kind)
    }

    /// Whether the container counts as started: no startup probe, or it succeeded.
    pub fn is_started(&self) -> bool {
        self.get(ProbeKind::Startup)
            .is_none_or(|p| p.phase == Phase::Done)
    }

    /// Whether the container counts as ready: started, and its readiness probe (if any) says so.
    pub fn is_ready(&self) -> bool {
        self.is_started() && self.get(ProbeKind::Readiness).is_none_or(|p| p.result)
    }

    /// Whether a prober may run now: it is probing, and liveness/readiness wait for startup.
    fn is_active(&self, p: &Prober) -> bool {
        p.phase == Phase::Probing && (p.kind == ProbeKind::Startup || self.is_started())
    }

    /// Whether any probe will ever run again for this attempt.
    fn is_finished(&self) -> bool {
        self.probers.iter().all(|p| p.phase != Phase::Probing)
            || self.probers.iter().any(|p| p.phase == Phase::OnHold)
    }

    /// The probes to run now.
    pub fn due(&self, now: Instant) -> Vec<(ProbeKind, Timing)> {
        if self.is_finished() {
            return Vec::new();
        }
        self.probers
            .iter()
            .filter(|p| self.is_active(p) && p.next_at <= now)
            .map(|p| (p.kind, p.timing))
            .collect()
    }

    /// When the next probe is due; `None` when no probe will run again.
    pub fn next_wake(&self) -> Option<Instant> {
        if self.is_finished() {
            return None;
        }
        self.probers
            .iter()
            .filter(|p| self.is_active(p))
            .map(|p| p.next_at)
            .min()
    }

    /// Records the outcome of a run of `kind` that began at `began`.
    pub fn record(&mut self, kind: ProbeKind, outcome: &Outcome, began: Instant) -> Option<Effect> {
        if self.is_finished() {
            return None;
        }
        let p = self.probers.iter_mut().find(|p| p.kind == kind)?;
        p.record(outcome, began)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn timing(delay: u32, period: u32, success: u32, failure: u32) -> Timing {
        Timing {
            initial_delay_seconds: delay,
            timeout_seconds: 1,
            period_seconds: period,
            success_threshold: success,
            failure_threshold: failure,
            termination_grace_period_seconds: None,
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn fail() -> Outcome {
        Outcome::Failure("boom".into())
    }

    #[test]
    fn nothing_runs_before_the_initial_delay_then_every_period() {
        let t0 = Instant::now();
        let mut p = ContainerProbes::new(Some(timing(5, 2, 1, 3)), None, None, t0);
        assert!(p.due(t0 + s(4)).is_empty());
        assert_eq!(p.next_wake(), Some(t0 + s(5)));
        assert_eq!(p.due(t0 + s(5)).len(), 1);
        assert_eq!(
            p.record(ProbeKind::Liveness, &Outcome::Success, t0 + s(5)),
            None
        );
        assert!(p.due(t0 + s(6)).is_empty());
        assert_eq!(p.next_wake(), Some(t0 + s(7)));
    }

    #[test]
    fn liveness_kills_after_failure_threshold_failures_in_a_row() {
        let t0 = Instant::now();
        let mut p = ContainerProbes::new(Some(timing(0, 1, 1, 3)), None, None, t0);
        let l = ProbeKind::Liveness;
        assert_eq!(p.record(l, &fail(), t0), None);
        assert_eq!(p.record(l, &fail(), t0 + s(1)), None);
        // A success in between starts the count again.
        assert_eq!(p.record(l, &Outcome::Success, t0 + s(2)), None);
        assert_eq!(p.record(l, &fail(), t0 + s(3)), None);
        assert_eq!(p.record(l, &fail(), t0 + s(4)), None);
        assert_eq!(
            p.record(l, &fail(), t0 + s(5)),
            Some(Effect::Kill {
                kind: l,
                message: "Liveness probe failed: boom".into(),
                grace_seconds: None
            })
        );
        // On hold until the next attempt: nothing more runs.
        assert!(p.due(t0 + s(100)).is_empty());
        assert_eq!(p.next_wake(), None);
        assert_eq!(p.record(l, &fail(), t0 + s(6)), None);
    }

    #[test]
    fn readiness_starts_false_and_follows_its_thresholds() {
        let t0 = Instant::now();
        let r = ProbeKind::Readiness;
        let mut p = ContainerProbes::new(None, Some(timing(0, 1, 2, 2)), None, t0);
        assert!(!p.is_ready());
        assert_eq!(p.record(r, &Outcome::Success, t0), None);
        assert_eq!(
            p.record(r, &Outcome::Success, t0 + s(1)),
            Some(Effect::Ready(true))
        );
        assert!(p.is_ready());
        assert_eq!(p.record(r, &Outcome::Success, t0 + s(2)), None);
        assert_eq!(p.record(r, &fail(), t0 + s(3)), None);
        assert_eq!(p.record(r, &fail(), t0 + s(4)), Some(Effect::Ready(false)));
        assert!(!p.is_ready());
        // Readiness never stops probing.
        assert_eq!(p.due(t0 + s(5)).len(), 1);
    }

    #[test]
    fn startup_gates_liveness_and_readiness() {
        let t0 = Instant::now();
        let mut p = ContainerProbes::new(
            Some(timing(0, 1, 1, 1)),
            Some(timing(0, 1, 1, 1)),
            Some(timing(0, 1, 1, 5)),
            t0,
        );
        assert!(!p.is_started());
        let due: Vec<_> = p.due(t0).into_iter().map(|(k, _)| k).collect();
        assert_eq!(due, [ProbeKind::Startup]);
        assert_eq!(p.record(ProbeKind::Startup, &fail(), t0), None);
        assert_eq!(
            p.record(ProbeKind::Startup, &Outcome::Success, t0 + s(1)),
            Some(Effect::Started)
        );
        assert!(p.is_started());
        assert!(!p.is_ready(), "readiness not proven yet");
        let due: Vec<_> = p.due(t0 + s(2)).into_iter().map(|(k, _)| k).collect();
        assert_eq!(due, [ProbeKind::Liveness, ProbeKind::Readiness]);
    }

    #[test]
    fn a_failed_startup_probe_kills_with_the_probes_grace_period() {
        let t0 = Instant::now();
        let mut t = timing(0, 1, 1, 2);
        t.termination_grace_period_seconds = Some(3);
        let mut p = ContainerProbes::new(Some(timing(0, 1, 1, 1)), None, Some(t), t0);
        assert_eq!(p.record(ProbeKind::Startup, &fail(), t0), None);
        assert_eq!(
            p.record(ProbeKind::Startup, &fail(), t0 + s(1)),
            Some(Effect::Kill {
                kind: ProbeKind::Startup,
                message: "Startup probe failed: boom".into(),
                grace_seconds: Some(3)
            })
        );
        assert_eq!(p.next_wake(), None);
    }

    #[test]
    fn without_probes_a_container_is_started_and_ready_and_nothing_is_due() {
        let t0 = Instant::now();
        let p = ContainerProbes::new(None, None, None, t0);
        assert!(p.is_started() && p.is_ready());
        assert_eq!(p.next_wake(), None);
    }
}
