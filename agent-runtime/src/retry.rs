//! [`RetryPolicy`]: attempts, exponential backoff with a coefficient and a cap, jitter, a total
//! deadline and non-retryable outcome classes (the manifest's `[retry]` table). Delays come from
//! `backon` (ADR 0004); the jitter is seeded from the run and step ids, so a replayed run
//! reproduces its delays. Invalid input, permanent skill errors, traps and capability denials
//! are never retried (they are not [`Outcome::is_retryable`]); timeouts and transient errors are.

use std::time::Duration;

use backon::BackoffBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::outcome::Outcome;

/// How a step is retried. The manifest's `[retry]` table, all keys optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry, ms.
    pub initial_interval_ms: u64,
    /// Factor applied to the delay after each retry (at least 1).
    pub backoff_coefficient: f32,
    /// Cap on one delay, ms.
    pub max_interval_ms: u64,
    /// Add seeded random jitter within the current delay.
    pub jitter: bool,
    /// All attempts and delays must fit in this, ms.
    pub total_deadline_ms: u64,
    /// Outcome names (`timeout`, `transient`, ...) never retried, on top of the non-retryable
    /// classes.
    pub non_retryable: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_interval_ms: 100,
            backoff_coefficient: 2.0,
            max_interval_ms: 5_000,
            jitter: true,
            total_deadline_ms: 60_000,
            non_retryable: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// The delays before retries 1, 2, ... (at most `max_attempts - 1`), deterministic for a
    /// given run and step.
    pub fn delays(&self, run_id: &str, step_id: &str) -> Vec<Duration> {
        let seed_bytes = Sha256::digest(format!("{run_id}\u{0}{step_id}").as_bytes());
        let seed = u64::from_le_bytes(seed_bytes[..8].try_into().unwrap_or([0; 8]));
        let mut builder = backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(self.initial_interval_ms))
            .with_max_delay(Duration::from_millis(
                self.max_interval_ms.max(self.initial_interval_ms),
            ))
            .with_factor(self.backoff_coefficient.max(1.0))
            .with_max_times(self.max_attempts.saturating_sub(1) as usize);
        if self.jitter {
            builder = builder.with_jitter().with_jitter_seed(seed);
        }
        builder.build().collect()
    }

    /// Whether `outcome` may be retried under this policy.
    pub fn should_retry(&self, outcome: &Outcome) -> bool {
        outcome.is_retryable() && !self.non_retryable.iter().any(|name| name == outcome.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_replay_identically() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_interval_ms: 100,
            backoff_coefficient: 2.0,
            max_interval_ms: 300,
            jitter: false,
            ..RetryPolicy::default()
        };
        let delays: Vec<u128> = policy
            .delays("run-1", "step-1")
            .iter()
            .map(Duration::as_millis)
            .collect();
        assert_eq!(delays, vec![100, 200, 300, 300]);
        let jittered = RetryPolicy {
            jitter: true,
            ..policy.clone()
        };
        assert_eq!(jittered.delays("run-1", "step-1"), jittered.delays("run-1", "step-1"));
        assert_ne!(jittered.delays("run-1", "step-1"), jittered.delays("run-2", "step-1"));
        assert!(
            RetryPolicy {
                max_attempts: 1,
                ..policy
            }
            .delays("r", "s")
            .is_empty()
        );
    }
}
