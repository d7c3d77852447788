//! Reconnect backoff: exponential with full jitter, capped, reset only after a stable connection.
//! Pure: the random source is passed in, so tests are deterministic.

use std::time::Duration;

use rand::Rng;

use crate::core::config::ReconnectConfig;

/// Backoff state for one client.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: ReconnectConfig,
    failures: u32,
}

impl Backoff {
    /// Starts with no failures.
    #[must_use]
    pub fn new(config: ReconnectConfig) -> Self {
        Self {
            config,
            failures: 0,
        }
    }

    /// Consecutive failed attempts so far.
    #[must_use]
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether `max_attempts` (if any) has been used up.
    #[must_use]
    pub fn exhausted(&self) -> bool {
        self.config.max_attempts != 0 && self.failures >= self.config.max_attempts
    }

    /// The delay before the next attempt; counts one more failure.
    /// Without jitter: `min_delay * 2^k` capped at `max_delay`. With jitter: uniform in
    /// `[min_delay, that]`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let exp = self.failures.min(30);
        self.failures = self.failures.saturating_add(1);
        let ceiling = self
            .config
            .min_delay
            .saturating_mul(1u32 << exp)
            .min(self.config.max_delay);
        if !self.config.jitter || ceiling <= self.config.min_delay {
            return ceiling;
        }
        let lo = self.config.min_delay.as_secs_f64();
        let hi = ceiling.as_secs_f64();
        Duration::from_secs_f64(rng.random_range(lo..=hi))
    }

    /// Called when a connection ends: resets the backoff if it stayed up for `reset_after`.
    pub fn connection_ended(&mut self, stayed_up: Duration) {
        if stayed_up >= self.config.reset_after {
            self.failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cfg(jitter: bool) -> ReconnectConfig {
        ReconnectConfig {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(5),
            jitter,
            max_attempts: 0,
            reset_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_without_jitter() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut b = Backoff::new(cfg(false));
        let got: Vec<u128> = (0..7).map(|_| b.next_delay(&mut rng).as_millis()).collect();
        assert_eq!(got, vec![500, 1000, 2000, 4000, 5000, 5000, 5000]);
    }

    #[test]
    fn jittered_delays_stay_within_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut b = Backoff::new(cfg(true));
        for k in 0..20u32 {
            let d = b.next_delay(&mut rng);
            let ceiling =
                Duration::from_millis(500 * 2u64.pow(k.min(10))).min(Duration::from_secs(5));
            assert!(
                d >= Duration::from_millis(500) && d <= ceiling,
                "{k}: {d:?}"
            );
        }
    }

    #[test]
    fn reset_needs_a_stable_connection() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut b = Backoff::new(cfg(false));
        b.next_delay(&mut rng);
        b.next_delay(&mut rng);
        b.connection_ended(Duration::from_secs(29));
        assert_eq!(b.next_delay(&mut rng), Duration::from_secs(2));
        b.connection_ended(Duration::from_secs(30));
        assert_eq!(b.next_delay(&mut rng), Duration::from_millis(500));
    }

    #[test]
    fn max_attempts_limits_the_attempts() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut b = Backoff::new(ReconnectConfig {
            max_attempts: 2,
            ..cfg(false)
        });
        assert!(!b.exhausted());
        b.next_delay(&mut rng);
        b.next_delay(&mut rng);
        assert!(b.exhausted());
    }
}
