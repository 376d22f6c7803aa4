//! CrashLoopBackOff timing, as kubelet's `flowcontrol.Backoff` does it for container restarts.
//!
//! The first restart after a crash is immediate; each further crash waits twice as long as the
//! last (10 s, 20 s, 40 s, … capped at 300 s). A container that stayed up for more than twice
//! the cap (10 minutes) since the last restart starts again from the initial delay.
//! Pure: time is passed in.

use std::time::{Duration, Instant};

/// Initial and maximum delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

/// One container's back-off entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    /// The current delay and when it was last raised (at a restart).
    entry: Option<(Duration, Instant)>,
}

impl Backoff {
    fn is_expired(&self, policy: &BackoffPolicy, event: Instant) -> bool {
        self.entry
            .is_none_or(|(_, last)| event.saturating_duration_since(last) > policy.max * 2)
    }

    /// If a restart after a crash that finished at `finished` must still wait at `now`, until when.
    pub fn wait_until(
        &self,
        policy: &BackoffPolicy,
        finished: Instant,
        now: Instant,
    ) -> Option<Instant> {
        if self.is_expired(policy, finished) {
            return None;
        }
        let (delay, _) = self.entry?;
        let until = finished + delay;
        (now < until).then_some(until)
    }

    /// Records a restart made at `now` after a crash that finished at `finished`.
    pub fn record_restart(&mut self, policy: &BackoffPolicy, finished: Instant, now: Instant) {
        let delay = match self.entry {
            Some((delay, _)) if !self.is_expired(policy, finished) => (delay * 2).min(policy.max),
            _ => policy.initial,
        };
        self.entry = Some((delay, now));
    }

    /// The delay the next crash will wait, for messages ("back-off 20s restarting …").
    pub fn delay(&self) -> Option<Duration> {
        self.entry.map(|(d, _)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn delays_double_from_the_second_restart_and_cap_at_max() {
        let p = BackoffPolicy::default();
        let t0 = Instant::now();
        let mut b = Backoff::default();
        // Crash 1 at t0+1: immediate restart.
        assert_eq!(b.wait_until(&p, t0 + s(1), t0 + s(1)), None);
        b.record_restart(&p, t0 + s(1), t0 + s(1));
        // Crash 2 at t0+2: wait until t0+12.
        assert_eq!(b.wait_until(&p, t0 + s(2), t0 + s(2)), Some(t0 + s(12)));
        assert_eq!(b.wait_until(&p, t0 + s(2), t0 + s(12)), None);
        b.record_restart(&p, t0 + s(2), t0 + s(12));
        // Crash 3 right away: 20 s.
        assert_eq!(b.wait_until(&p, t0 + s(13), t0 + s(13)), Some(t0 + s(33)));
        let mut now = t0 + s(33);
        b.record_restart(&p, t0 + s(13), now);
        let mut delays = vec![];
        for _ in 0..6 {
            let until = b.wait_until(&p, now, now).unwrap();
            delays.push(until - now);
            now = until;
            b.record_restart(&p, now, now);
        }
        assert_eq!(delays, vec![s(40), s(80), s(160), s(300), s(300), s(300)]);
    }

    #[test]
    fn resets_after_running_longer_than_twice_the_cap() {
        let p = BackoffPolicy::default();
        let t0 = Instant::now();
        let mut b = Backoff::default();
        b.record_restart(&p, t0, t0);
        b.record_restart(&p, t0, t0);
        assert_eq!(b.delay(), Some(s(20)));
        // Ran 11 minutes, then crashed: immediate restart, delay back to the initial value.
        let crash = t0 + s(660);
        assert_eq!(b.wait_until(&p, crash, crash), None);
        b.record_restart(&p, crash, crash);
        assert_eq!(b.delay(), Some(s(10)));
    }
}
