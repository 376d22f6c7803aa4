//! Which status patches to send: only changes, coalesced per pod, retried with back-off.
//!
//! ```text
//!   offer(body) ── same as last acknowledged? ──► nothing
//!        │ no: pending[uid] = body (replaces an older pending one: coalesced)
//!        ▼
//!   next(now) ──► one pending patch whose back-off is over ──► the caller PATCHes it
//!        ▼
//!   finished(outcome):  Sent  → acknowledged[uid] = sha256(body) (unless a newer one is pending)
//!                       Gone  (404, 422: the pod with this UID is no more) → forget the pod
//!                       Retry (409, 429, 5xx, no connection) → pending again after a back-off
//! ```
//!
//! Pure: time is passed in. Of an acknowledged status only its [`Fingerprint`] is kept: the
//! server has the status itself, and a full copy per pod was the largest per-pod item of an API
//! pod after its spec.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::k8s::fingerprint;

/// The sha256 of a status body's JSON text (see [`fingerprint`]).
type Fingerprint = [u8; 32];

/// One status patch to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub body: Value,
}

/// How a PATCH ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// 404 Not Found or 422 Invalid (a different UID under this name): nothing to report to.
    Gone,
    /// Anything that may work later.
    Retry,
}

impl Outcome {
    /// The outcome of an HTTP status code (`None`: no answer at all).
    pub fn of(code: Option<u16>) -> Outcome {
        match code {
            Some(200..=299) => Outcome::Sent,
            Some(404 | 422) => Outcome::Gone,
            _ => Outcome::Retry,
        }
    }
}

#[derive(Debug)]
struct Pending {
    patch: Patch,
    not_before: Option<Instant>,
}

/// The per-pod status patches still to send.
#[derive(Debug, Default)]
pub struct StatusQueue {
    acknowledged: HashMap<String, Fingerprint>,
    pending: BTreeMap<String, Pending>,
    /// Pods whose last patch was answered Gone: nothing more is sent for them.
    gone: std::collections::HashSet<String>,
    /// Failures in a row, per pod.
    failures: HashMap<String, u32>,
}

const RETRY_INITIAL: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

impl StatusQueue {
    pub fn new() -> StatusQueue {
        StatusQueue::default()
    }

    /// A pod's current status body; queued only if it differs from what the server has.
    pub fn offer(&mut self, patch: Patch) {
        if self.gone.contains(&patch.uid) {
            return;
        }
        if self.acknowledged.get(&patch.uid) == Some(&fingerprint(&patch.body)) {
            self.pending.remove(&patch.uid);
            return;
        }
        let not_before = self.pending.get(&patch.uid).and_then(|p| p.not_before);
        self.pending
            .insert(patch.uid.clone(), Pending { patch, not_before });
    }

    /// The next patch to send now, if any (taken out of the queue until [`Self::finished`]).
    pub fn next(&mut self, now: Instant) -> Option<Patch> {
        let uid = self
            .pending
            .iter()
            .find(|(_, p)| p.not_before.is_none_or(|t| t <= now))
            .map(|(uid, _)| uid.clone())?;
        self.pending.remove(&uid).map(|p| p.patch)
    }

    /// When the earliest backed-off patch may go (for the caller's timer).
    pub fn next_wake(&self) -> Option<Instant> {
        self.pending.values().filter_map(|p| p.not_before).min()
    }

    /// Whether anything is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Records how sending `patch` ended.
    pub fn finished(&mut self, patch: Patch, outcome: Outcome, now: Instant) {
        // A newer status for the pod arrived meanwhile if pending holds a different body.
        let newer = self
            .pending
            .get(&patch.uid)
            .is_some_and(|p| p.patch.body != patch.body);
        match outcome {
            Outcome::Sent => {
                self.failures.remove(&patch.uid);
                if !newer {
                    self.pending.remove(&patch.uid);
                }
                self.acknowledged
                    .insert(patch.uid.clone(), fingerprint(&patch.body));
            }
            Outcome::Gone => self.forget(&patch.uid, true),
            Outcome::Retry => {
                let failures = self.failures.entry(patch.uid.clone()).or_default();
                *failures += 1;
                let delay = RETRY_INITIAL
                    .saturating_mul(1 << (*failures).min(8))
                    .min(RETRY_MAX);
                let latest = match self.pending.remove(&patch.uid) {
                    Some(p) if newer => p.patch,
                    _ => patch,
                };
                self.pending.insert(
                    latest.uid.clone(),
                    Pending {
                        patch: latest,
                        not_before: Some(now + delay),
                    },
                );
            }
        }
    }

    /// Forgets a pod (it stopped, or the server no longer has it). `gone`: never send for this
    /// UID again.
    pub fn forget(&mut self, uid: &str, gone: bool) {
        self.pending.remove(uid);
        self.acknowledged.remove(uid);
        self.failures.remove(uid);
        if gone {
            self.gone.insert(uid.to_string());
        }
    }

    /// Forgets every pod whose UID `keep` refuses (pods that stopped): memory stays bounded by
    /// the pods that run.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.pending.retain(|uid, _| keep(uid));
        self.acknowledged.retain(|uid, _| keep(uid));
        self.failures.retain(|uid, _| keep(uid));
        self.gone.retain(|uid| keep(uid));
    }

    /// Makes every acknowledged status count as unsent: after a reconnection the server may
    /// have missed patches it seemed to take, and pods' status must be reported again.
    pub fn resend_all(&mut self) {
        self.acknowledged.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch(uid: &str, phase: &str) -> Patch {
        Patch {
            uid: uid.into(),
            namespace: "default".into(),
            name: uid.into(),
            body: json!({"status": {"phase": phase}}),
        }
    }

    #[test]
    fn only_changes_are_sent_and_coalesced_per_pod() {
        let now = Instant::now();
        let mut q = StatusQueue::new();
        q.offer(patch("a", "Pending"));
        q.offer(patch("a", "Running"));
        q.offer(patch("b", "Running"));
        let first = q.next(now).unwrap();
        assert_eq!(first, patch("a", "Running"), "the newest status only");
        q.finished(first, Outcome::Sent, now);
        let second = q.next(now).unwrap();
        assert_eq!(second.uid, "b");
        q.finished(second, Outcome::Sent, now);
        assert!(q.next(now).is_none());
        // The same status again: nothing to send.
        q.offer(patch("a", "Running"));
        assert!(q.next(now).is_none());
        // A pod that stopped is forgotten.
        q.retain(|uid| uid != "b");
        assert!(!q.acknowledged.contains_key("b"));
        // After a reconnection: everything again.
        q.resend_all();
        q.offer(patch("a", "Running"));
        assert_eq!(q.next(now).unwrap().uid, "a");
    }

    #[test]
    fn failures_retry_later_and_newer_statuses_win() {
        let now = Instant::now();
        let mut q = StatusQueue::new();
        q.offer(patch("a", "Pending"));
        let p = q.next(now).unwrap();
        q.finished(p, Outcome::of(Some(503)), now);
        assert!(q.next(now).is_none(), "backing off");
        let wake = q.next_wake().unwrap();
        assert!(wake > now);
        let p = q.next(wake).unwrap();
        assert_eq!(p, patch("a", "Pending"));
        // While in flight a newer status comes; the old one fails: the newer is what is retried.
        q.offer(patch("a", "Running"));
        q.finished(p, Outcome::of(None), wake);
        let later = q.next_wake().unwrap();
        assert_eq!(q.next(later).unwrap(), patch("a", "Running"));
    }

    #[test]
    fn a_sent_patch_does_not_hide_a_newer_one() {
        let now = Instant::now();
        let mut q = StatusQueue::new();
        q.offer(patch("a", "Pending"));
        let p = q.next(now).unwrap();
        q.offer(patch("a", "Running"));
        q.finished(p, Outcome::Sent, now);
        assert_eq!(q.next(now).unwrap(), patch("a", "Running"));
    }

    #[test]
    fn gone_pods_are_never_patched_again() {
        let now = Instant::now();
        let mut q = StatusQueue::new();
        q.offer(patch("a", "Running"));
        let p = q.next(now).unwrap();
        q.finished(p, Outcome::of(Some(422)), now);
        q.offer(patch("a", "Failed"));
        assert!(q.is_empty());
        assert_eq!(Outcome::of(Some(404)), Outcome::Gone);
        assert_eq!(Outcome::of(Some(409)), Outcome::Retry);
        assert_eq!(Outcome::of(Some(201)), Outcome::Sent);
    }
}
