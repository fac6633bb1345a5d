//! [`CircuitBreakers`]: one breaker per (skill version, tenant): closed, open after N
//! consecutive failures, half-open after a cool-down admitting exactly one probe (Nygard,
//! *Release It!*, 2007). Breakers are in memory, per process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use plugin_abi::SkillSummary;
use serde::Serialize;

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
    pub fn key(skill: &SkillSummary, tenant: &str) -> String {
        format!("{}@{}/{tenant}", skill.id, skill.version)
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

    /// How many breakers are in each state: `(closed, open, half-open)` (for metrics).
    pub fn census(&self) -> (usize, usize, usize) {
        let map = self.circuits.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut counts = (0, 0, 0);
        for circuit in map.values() {
            match circuit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).state {
                CircuitState::Closed { .. } => counts.0 += 1,
                CircuitState::Open => counts.1 += 1,
                CircuitState::HalfOpen => counts.2 += 1,
            }
        }
        counts
    }

    /// The state of `key` (closed with no failures when never used).
    pub fn state(&self, key: &str) -> CircuitState {
        let circuit = self.circuit(key);
        let guard = circuit.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
