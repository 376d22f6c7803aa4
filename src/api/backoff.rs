//! Jittered exponential back-off for reconnects and retries (pure; randomness passed in).
//!
//! Delays double from `initial` up to `max`, each multiplied by a random factor in
//! `[1 - jitter, 1]` so that a fleet of nodes that lost the API server together does not
//! come back in lock-step. A server's `Retry-After` is a floor: nanolet never retries sooner
//! than asked.

use std::time::Duration;

/// Back-off state.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    next: Duration,
    rng: u64,
}

impl Backoff {
    /// Starts at `initial`, caps at `max`; `seed` feeds the jitter.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            initial,
            max,
            jitter: 0.5,
            next: initial,
            rng: seed | 1,
        }
    }

    /// The delay before the next attempt; at least `retry_after` when the server gave one.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let factor = 1.0 - self.jitter * self.random_unit();
        let delay = base.mul_f64(factor).max(Duration::from_millis(1));
        match retry_after {
            Some(r) => delay.max(r),
            None => delay,
        }
    }

    /// Back to `initial` after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// xorshift64*: in [0, 1).
    fn random_unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (r >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A seed that differs between processes and starts (the pid and the clock's nanoseconds).
pub fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (u64::from(std::process::id()) << 32) ^ u64::from(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap_and_resets() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(30), 42);
        let mut last_base = 1.0;
        for _ in 0..10 {
            let d = b.next_delay(None).as_secs_f64();
            assert!(
                d <= last_base && d >= last_base / 2.0,
                "{d} not in [{}, {last_base}]",
                last_base / 2.0
            );
            last_base = (last_base * 2.0_f64).min(30.0);
        }
        b.reset();
        assert!(b.next_delay(None) <= s(1));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 7);
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn jitter_spreads_nodes() {
        let mut a = Backoff::new(Duration::from_secs(8), Duration::from_secs(8), 1);
        let mut b = Backoff::new(Duration::from_secs(8), Duration::from_secs(8), 2);
        assert_ne!(a.next_delay(None), b.next_delay(None));
    }
}
