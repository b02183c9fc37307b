//! Capped exponential backoff with full jitter, for reconnecting peers.
//!
//! Full jitter (a uniform delay between zero and the current cap) keeps many
//! peers that lost the same server from reconnecting in lockstep.
//!
//! The random source is the caller's: a seeded one makes a run repeat its
//! delays exactly; a caller without a seed passes one from the OS
//! (`rand::make_rng()`).

use std::time::Duration;

use rand::RngExt;
use rand::rngs::SmallRng;

/// Delays between attempts: the n-th is uniform in `[base·2ⁿ / 2, base·2ⁿ]`,
/// never above `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    /// The jitter's source.
    rng: SmallRng,
}

impl Backoff {
    /// A backoff starting near `base` and never exceeding `max`, whose
    /// jitter comes from `rng`.
    pub fn new(base: Duration, max: Duration, rng: SmallRng) -> Self {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
            rng,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay; each call doubles the ceiling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        // Half fixed, half random: never a zero delay, still spread out.
        let half = ceiling / 2;
        half + self.rng.random_range(Duration::ZERO..=ceiling - half)
    }

    /// Attempts made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn seeded(seed: u64) -> SmallRng {
        SmallRng::seed_from_u64(seed)
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
            seeded(1),
        );
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay();
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "{delay:?} vs {ceiling:?}"
            );
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 2000, 2000, 2000, 2000, 2000]
        );
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), seeded(2));
        for _ in 0..100 {
            assert!(backoff.next_delay() <= Duration::from_secs(30));
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let delays = |seed| {
            let mut backoff = Backoff::new(
                Duration::from_millis(100),
                Duration::from_secs(5),
                seeded(seed),
            );
            (0..8).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(7), delays(7));
        assert_ne!(
            delays(7),
            delays(8),
            "the seed must be what varies the jitter"
        );
    }
}
