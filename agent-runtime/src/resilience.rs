//! Retries, circuit breakers and candidate selection.
//!
//! - [`RetryPolicy`]: attempts, exponential backoff with a coefficient and a cap, jitter, a total
//!   deadline and non-retryable outcome classes. Delays come from `backon` (ADR 0004); the jitter
//!   is seeded from the run and step ids, so a replayed run reproduces its delays. Invalid input,
//!   permanent skill errors, traps and capability denials are never retried (they are not
//!   [`Outcome::is_retryable`]); timeouts and transient errors are.
//! - [`CircuitBreakers`]: one breaker per (skill version, tenant): closed, open after N
//!   consecutive failures, half-open after a cool-down admitting exactly one probe (Nygard,
//!   *Release It!*, 2007).
//! - [`select`]: the highest loaded version matching a semver requirement whose capabilities
//!   are all granted and whose circuit admits a call, with every rejected candidate explained.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use plugin_abi::Capability;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::runtime::{LoadedSkill, Outcome, Runtime};

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

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum CircuitState {
    /// Calls pass; counts consecutive failures.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe call is in flight; its result closes or reopens the circuit.
    HalfOpen,
}

/// Whether a call may go through a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Admission {
    /// The circuit is closed.
    Allowed,
    /// The cool-down ended: this call is the single probe.
    Probe,
    /// The circuit is open (or a probe is already in flight).
    Rejected,
}

#[derive(Debug)]
struct Circuit {
    state: CircuitState,
    opened_at: Option<Instant>,
}

/// Circuit breakers keyed by (skill id, version, tenant). Each breaker has its own lock; no lock
/// is held while a call runs.
#[derive(Debug)]
pub struct CircuitBreakers {
    failure_threshold: u32,
    cool_down: Duration,
    circuits: RwLock<HashMap<String, Arc<Mutex<Circuit>>>>,
}

impl CircuitBreakers {
    /// Breakers that open after `failure_threshold` consecutive failures and probe after
    /// `cool_down`.
    pub fn new(failure_threshold: u32, cool_down: Duration) -> Self {
        CircuitBreakers {
            failure_threshold: failure_threshold.max(1),
            cool_down,
            circuits: RwLock::new(HashMap::new()),
        }
    }

    fn circuit(&self, key: &str) -> Arc<Mutex<Circuit>> {
        if let Ok(map) = self.circuits.read()
            && let Some(circuit) = map.get(key)
        {
            return Arc::clone(circuit);
        }
        let mut map = match self.circuits.write() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        Arc::clone(map.entry(key.to_owned()).or_insert_with(|| {
            Arc::new(Mutex::new(Circuit {
                state: CircuitState::Closed { failures: 0 },
                opened_at: None,
            }))
        }))
    }

    /// The key of a skill version in a tenant.
    pub fn key(skill: &LoadedSkill, tenant: &str) -> String {
        format!("{}@{}/{tenant}", skill.summary.id, skill.summary.version)
    }

    /// Asks to make a call at `now`.
    pub fn admit(&self, key: &str, now: Instant) -> Admission {
        let circuit = self.circuit(key);
        let mut circuit = match circuit.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match circuit.state {
            CircuitState::Closed { .. } => Admission::Allowed,
            CircuitState::HalfOpen => Admission::Rejected,
            CircuitState::Open => {
                if circuit
                    .opened_at
                    .is_some_and(|at| now.duration_since(at) >= self.cool_down)
                {
                    circuit.state = CircuitState::HalfOpen;
                    Admission::Probe
                } else {
                    Admission::Rejected
                }
            }
        }
    }

    /// Records the result of an admitted call at `now`.
    pub fn record(&self, key: &str, success: bool, now: Instant) {
        let circuit = self.circuit(key);
        let mut circuit = match circuit.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        circuit.state = match (circuit.state, success) {
            (_, true) => CircuitState::Closed { failures: 0 },
            (CircuitState::Closed { failures }, false) if failures + 1 < self.failure_threshold => {
                CircuitState::Closed { failures: failures + 1 }
            }
            (_, false) => {
                circuit.opened_at = Some(now);
                CircuitState::Open
            }
        };
    }

    /// The state of `key` (closed with no failures when never used).
    pub fn state(&self, key: &str) -> CircuitState {
        let circuit = self.circuit(key);
        let guard = circuit.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.state
    }
}

/// Why a candidate was not chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The candidate's version.
    pub version: String,
    /// Why.
    pub reason: String,
}

/// The outcome of [`select`]: candidates in the order they should be tried, and the rejected.
#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    /// Usable candidates, best first (the rest are fallbacks).
    #[serde(serialize_with = "versions")]
    pub candidates: Vec<Arc<LoadedSkill>>,
    /// Candidates that cannot be used, with the reason.
    pub rejected: Vec<Rejection>,
}

fn versions<S: serde::Serializer>(skills: &[Arc<LoadedSkill>], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(skills.iter().map(|skill| skill.summary.version.to_string()))
}

/// Chooses among the loaded versions of `skill_id` matching `requirement`: every requested
/// capability must be in `granted` (when given) and the circuit for (version, tenant) must not be
/// open. Best first: highest version, then lowest recent mean latency. Deterministic for a given
/// state.
pub fn select(
    runtime: &Runtime,
    skill_id: &str,
    requirement: &semver::VersionReq,
    granted: Option<&[Capability]>,
    breakers: &CircuitBreakers,
    tenant: &str,
) -> Selection {
    let mut candidates = Vec::new();
    let mut rejected = Vec::new();
    for skill in runtime.versions(skill_id) {
        let version = skill.summary.version.to_string();
        if !requirement.matches(&skill.summary.version) {
            rejected.push(Rejection {
                version,
                reason: format!("does not match `{requirement}`"),
            });
            continue;
        }
        if let Some(granted) = granted
            && let Some(missing) = skill.summary.capabilities.iter().find(|c| !granted.contains(c))
        {
            rejected.push(Rejection {
                version,
                reason: format!("requests `{missing}`, which is not granted"),
            });
            continue;
        }
        if breakers.state(&CircuitBreakers::key(&skill, tenant)) == CircuitState::Open {
            rejected.push(Rejection {
                version,
                reason: "its circuit is open".into(),
            });
            continue;
        }
        candidates.push(skill);
    }
    candidates.sort_by(|a, b| {
        b.summary
            .version
            .cmp(&a.summary.version)
            .then_with(|| a.recent_latency_us().cmp(&b.recent_latency_us()))
    });
    Selection { candidates, rejected }
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

    #[test]
    fn a_breaker_opens_then_admits_exactly_one_probe() {
        let breakers = CircuitBreakers::new(3, Duration::from_millis(50));
        let start = Instant::now();
        for _ in 0..2 {
            assert_eq!(breakers.admit("k", start), Admission::Allowed);
            breakers.record("k", false, start);
        }
        assert_eq!(breakers.state("k"), CircuitState::Closed { failures: 2 });
        breakers.record("k", false, start);
        assert_eq!(breakers.state("k"), CircuitState::Open);
        assert_eq!(
            breakers.admit("k", start + Duration::from_millis(10)),
            Admission::Rejected
        );
        let later = start + Duration::from_millis(60);
        assert_eq!(breakers.admit("k", later), Admission::Probe);
        assert_eq!(breakers.admit("k", later), Admission::Rejected, "only one probe");
        breakers.record("k", false, later);
        assert_eq!(breakers.state("k"), CircuitState::Open);
        let much_later = later + Duration::from_millis(60);
        assert_eq!(breakers.admit("k", much_later), Admission::Probe);
        breakers.record("k", true, much_later);
        assert_eq!(breakers.state("k"), CircuitState::Closed { failures: 0 });
        // Another key is independent.
        assert_eq!(breakers.admit("other", much_later), Admission::Allowed);
    }
}
