//! Reconnect delays: exponential with full jitter, reset once a session has been stable.
//!
//! Full jitter (a uniform draw in `[0, cap]`) spreads the reconnects of many cameras that failed
//! together (a switch reboot) instead of hammering the network in lockstep.

use std::time::Duration;

/// Backoff settings.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
    /// A session that lasted this long resets the backoff to `initial`.
    pub stable_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
        }
    }
}

/// Backoff state for one stream.
#[derive(Debug)]
pub struct Backoff {
    cfg: BackoffConfig,
    failures: u32,
}

impl Backoff {
    pub fn new(cfg: BackoffConfig) -> Self {
        Backoff { cfg, failures: 0 }
    }

    /// The upper bound of the next delay: `initial * 2^failures`, capped at `max`.
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(30)).unwrap_or(u32::MAX);
        self.cfg.initial.saturating_mul(factor).min(self.cfg.max)
    }

    /// Records a failed session that ran for `ran_for` and returns how long to wait.
    /// `unit` is a uniform draw in `[0, 1)`, injected so tests are deterministic.
    pub fn next_delay(&mut self, ran_for: Duration, unit: f64) -> Duration {
        if ran_for >= self.cfg.stable_after {
            self.failures = 0;
        }
        let cap = self.cap();
        self.failures = self.failures.saturating_add(1);
        cap.mul_f64(unit.clamp(0.0, 1.0))
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_jitters_below_it() {
        let mut b = Backoff::new(BackoffConfig::default());
        let caps: Vec<u64> = (0..9)
            .map(|_| {
                let cap = b.cap().as_secs();
                assert_eq!(b.next_delay(Duration::ZERO, 1.0).as_secs(), cap);
                cap
            })
            .collect();
        assert_eq!(caps, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.next_delay(Duration::ZERO, 0.5), Duration::from_secs(30));
        assert_eq!(b.next_delay(Duration::ZERO, 0.0), Duration::ZERO);
    }

    #[test]
    fn a_stable_session_resets() {
        let mut b = Backoff::new(BackoffConfig::default());
        for _ in 0..5 {
            b.next_delay(Duration::from_secs(1), 1.0);
        }
        assert_eq!(b.cap(), Duration::from_secs(32));
        let d = b.next_delay(Duration::from_secs(61), 1.0);
        assert_eq!(d, Duration::from_secs(1));
        assert_eq!(b.failures(), 1);
    }
}
