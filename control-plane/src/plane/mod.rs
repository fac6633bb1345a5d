//! [`ControlPlane`]: the one door into the control plane. Every state change goes through one
//! of its methods, which applies the domain rule (a pure function of `hitl`, `run`, `audit`,
//! `records` or `autonomy`), stores the result and its audit entry in one unit of work, and
//! commits. Callers never see the store.
//!
//! - `govern`: verdicts (the policy decision point) with autonomy gates;
//! - `approvals`: requesting, reviewing, cancelling, expiring and consuming approvals;
//! - `runs`: run events, and recording how steps ended;
//! - `admin`: enforcement changes (policy set, limits, certificates) and the error budget;
//! - `audit_log`: appending to, verifying and exporting the audit log;
//! - `emitter`: [`KernelEmitter`], the recording API for telemetry and costs.

mod admin;
mod approvals;
mod audit_log;
mod emitter;
mod govern;
mod ownership;
mod runs;

pub use admin::AdminError;
pub(crate) use audit_log::verify_in;
pub use emitter::KernelEmitter;
pub use govern::StepStart;
pub use ownership::{CancelError, RECOVERY_JOB, RecoveryCandidate};

use std::sync::{Arc, RwLock};

use crate::autonomy::AutonomyLimits;
use crate::clock::{Clock, SystemClock};
use crate::error::StoreError;
use crate::governance::PolicyEngine;
use crate::identity::{IdentityError, Principal, TokenAuthority};
use crate::storage::{Access, UnitOfWork};
use crate::store::Store;

/// The control plane: token authority, policy and store behind one handle. `Send + Sync`; the
/// policy set can be replaced while it is in use (callers holding the old one finish with it).
#[derive(Debug)]
pub struct ControlPlane {
    authority: TokenAuthority,
    policy: RwLock<Arc<PolicyEngine>>,
    store: Store,
    limits: RwLock<AutonomyLimits>,
    clock: Arc<dyn Clock>,
    lease_ttl_ms: i64,
    run_deadline_ms: i64,
    auth_failures: AuthFailures,
}

/// Failed authentications: counted always, logged at most once per
/// [`AUTH_FAILURE_LOG_INTERVAL_MS`] with the number suppressed since the last line, so a
/// flood of forged tokens cannot flood the log. The token itself is never logged.
#[derive(Debug, Default)]
struct AuthFailures {
    total: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
    last_logged_ms: std::sync::atomic::AtomicI64,
}

/// Shortest interval between two log lines about failed authentications, ms.
pub const AUTH_FAILURE_LOG_INTERVAL_MS: i64 = 1_000;

impl ControlPlane {
    /// Assembles a control plane reading the system clock.
    pub fn new(authority: TokenAuthority, policy: PolicyEngine, store: Store) -> Self {
        ControlPlane {
            authority,
            policy: RwLock::new(Arc::new(policy)),
            store,
            limits: RwLock::new(AutonomyLimits::default()),
            clock: Arc::new(SystemClock),
            lease_ttl_ms: crate::run::lease::DEFAULT_LEASE_TTL_MS,
            run_deadline_ms: crate::run::lease::DEFAULT_RUN_DEADLINE_MS,
            auth_failures: AuthFailures {
                last_logged_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
                ..AuthFailures::default()
            },
        }
    }

    /// The same control plane granting run leases of `ttl_ms` (default
    /// [`DEFAULT_LEASE_TTL_MS`](crate::run::lease::DEFAULT_LEASE_TTL_MS)): how long a run whose
    /// owner vanished waits before a recovery pass takes it over.
    #[must_use]
    pub fn with_lease_ttl_ms(mut self, ttl_ms: i64) -> Self {
        self.lease_ttl_ms = ttl_ms.max(1);
        self
    }

    /// The same control plane giving new runs `deadline_ms` to work, from their creation
    /// (default [`DEFAULT_RUN_DEADLINE_MS`](crate::run::lease::DEFAULT_RUN_DEADLINE_MS)).
    #[must_use]
    pub fn with_run_deadline_ms(mut self, deadline_ms: i64) -> Self {
        self.run_deadline_ms = deadline_ms.max(1);
        self
    }

    /// How long a run lease lasts unless renewed, ms.
    pub fn lease_ttl_ms(&self) -> i64 {
        self.lease_ttl_ms
    }

    /// The same control plane reading `clock` (tests move time with a
    /// [`ManualClock`](crate::ManualClock)).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Now, by this control plane's clock, ms since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The token issuer and verifier.
    pub fn authority(&self) -> &TokenAuthority {
        &self.authority
    }

    /// Verifies a bearer token.
    ///
    /// # Errors
    ///
    /// [`IdentityError`] naming what is wrong with the token.
    pub fn authenticate(&self, token: &str) -> Result<Principal, IdentityError> {
        use std::sync::atomic::Ordering::Relaxed;
        let result = self.authority.verify(token);
        if let Err(error) = &result {
            let failures = &self.auth_failures;
            failures.total.fetch_add(1, Relaxed);
            let now = self.now_ms();
            let last = failures.last_logged_ms.load(Relaxed);
            if now.saturating_sub(last) >= AUTH_FAILURE_LOG_INTERVAL_MS
                && failures
                    .last_logged_ms
                    .compare_exchange(last, now, Relaxed, Relaxed)
                    .is_ok()
            {
                let suppressed = failures.suppressed.swap(0, Relaxed);
                tracing::warn!(%error, suppressed, "authentication failed");
            } else {
                failures.suppressed.fetch_add(1, Relaxed);
            }
        }
        result
    }

    /// Failed authentications since this control plane was built (for metrics).
    pub fn failed_authentications(&self) -> u64 {
        self.auth_failures.total.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The policy set in force.
    pub fn policy(&self) -> Arc<PolicyEngine> {
        match self.policy.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The error budget and spending budgets in force.
    pub fn limits(&self) -> AutonomyLimits {
        match self.limits.read() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Where the state is stored, for messages.
    pub fn store_location(&self) -> &str {
        self.store.location()
    }

    async fn write(&self) -> Result<Box<dyn UnitOfWork>, StoreError> {
        self.store.backend().begin(Access::Write).await
    }

    async fn read(&self) -> Result<Box<dyn UnitOfWork>, StoreError> {
        self.store.backend().begin(Access::Read).await
    }
}
