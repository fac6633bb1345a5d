//! agentd's control plane: it decides *what is allowed* and alone writes the audit trail.
//!
//! - [`identity`]: who is calling (HS256 JWTs).
//! - [`governance`]: Cedar policies turned into a [`Verdict`]: allow, deny or require approval.
//! - [`hitl`]: durable approval requests, decided once by a reviewer who is not the requester.
//! - [`store`]: the SQLite file holding approvals and the hash-chained audit log.
//! - [`trace`]: W3C trace context.
//! - [`run`]: run lifecycle: immutable events with Lamport clocks, state derived by `reduce`.
//! - [`emitter`]: the kernel emitter: idempotent telemetry, governance, LLM and connector
//!   records with costs.
//!
//! [`ControlPlane`] ties them together for the runtime: authenticate, govern (decide and audit),
//! request approval, review, record outcomes, and replace the policy set (admin only, audited).
//!
//! **Architecture invariant:** control-plane never depends on agent-runtime and never on
//! wasmtime; it knows skills only as [`plugin_abi::SkillSummary`] values.

pub mod emitter;
pub mod governance;
pub mod hitl;
pub mod identity;
pub mod run;
pub mod store;
pub mod trace;

pub use emitter::{ConnectorCall, Cost, CostStatus, EmitError, KernelEmitter, LlmCall, Recorded};
pub use governance::{
    Decision, DenyKind, Obligation, PolicyEngine, PolicyError, Quorum, ReviewDecisionKind, RiskTier, Verdict,
};
pub use hitl::{ApprovalBinding, ApprovalError, ApprovalRequest, ApprovalStatus, NewApproval, Vote};
pub use identity::{Identity, IdentityConfig, IdentityError, Principal, Role};
pub use run::{RunError, RunEvent, RunEventPayload, RunState, RunView, StepSpec};
pub use store::now_ms;
pub use store::{AuditEntry, ChainVerification, RunStoreError, Store, StoreError};
pub use trace::TraceContext;

use std::sync::{Arc, RwLock};

use plugin_abi::SkillSummary;

/// The step a decision or record is about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StepContext {
    /// Run id.
    pub run_id: String,
    /// Step id within the run.
    pub step_id: String,
    /// W3C trace context of the step.
    pub traceparent: String,
}

/// Why an enforcement change (a new policy set) was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The principal is not an admin.
    #[error("`{principal}` is not an admin; changing enforcement needs the `admin` role")]
    NotAdmin {
        /// Who tried.
        principal: String,
    },
    /// The new policy set does not load; the old one stays in force.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The change could not be audited; the old policy set stays in force.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AdminError {
    /// Whether retrying can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            AdminError::NotAdmin { .. } => false,
            AdminError::Policy(error) => error.is_retryable(),
            AdminError::Store(error) => error.is_retryable(),
        }
    }
}

/// The control plane: identity, policy and store behind one handle. `Send + Sync`; the policy
/// set can be replaced while it is in use (callers holding the old one finish with it).
#[derive(Debug)]
pub struct ControlPlane {
    identity: Identity,
    policy: RwLock<Arc<PolicyEngine>>,
    store: Store,
}

impl ControlPlane {
    /// Assembles a control plane.
    pub fn new(identity: Identity, policy: PolicyEngine, store: Store) -> Self {
        ControlPlane {
            identity,
            policy: RwLock::new(Arc::new(policy)),
            store,
        }
    }

    /// The token issuer and verifier.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The policy set in force.
    pub fn policy(&self) -> Arc<PolicyEngine> {
        match self.policy.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the policy set: an enforcement change, so it needs an admin and is audited
    /// (old and new version) before it takes effect. Decisions already made keep the version
    /// they were made under, so approvals bound to the old version can no longer be consumed.
    ///
    /// # Errors
    ///
    /// [`AdminError::NotAdmin`], [`AdminError::Policy`] when the new set does not load (every
    /// problem listed), [`AdminError::Store`] when the change cannot be audited. The old set
    /// stays in force on any error.
    pub async fn replace_policy(&self, admin: &Principal, text: &str, origin: &str) -> Result<String, AdminError> {
        if !admin.has_role(Role::Admin) {
            return Err(AdminError::NotAdmin {
                principal: admin.to_string(),
            });
        }
        let engine = PolicyEngine::from_text(text, origin)?;
        let old = self.policy();
        let payload = serde_json::json!({
            "change": "policy-set",
            "origin": origin,
            "old_version": old.version(),
            "new_version": engine.version(),
            "policies": engine.len(),
        });
        self.store.append_audit("enforcement-change", admin, &payload).await?;
        let version = engine.version().to_owned();
        match self.policy.write() {
            Ok(mut guard) => *guard = Arc::new(engine),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(engine),
        }
        Ok(version)
    }

    /// The durable store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Verifies a bearer token.
    ///
    /// # Errors
    ///
    /// [`IdentityError`] naming what is wrong with the token.
    pub fn authenticate(&self, token: &str) -> Result<Principal, IdentityError> {
        self.identity.verify(token)
    }

    /// Decides whether `principal` may run `requested_skill` (`skill` is `None` when no verified
    /// package provides it) and appends the decision to the audit log before returning it.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the decision could not be audited; the caller must then treat the
    /// step as denied (fail closed).
    pub async fn govern(
        &self,
        principal: &Principal,
        step: &StepContext,
        requested_skill: &str,
        skill: Option<&SkillSummary>,
        input_digest: &str,
    ) -> Result<Decision, StoreError> {
        let decision = self.policy().decide(principal, requested_skill, skill, now_ms());
        let payload = serde_json::json!({
            "step": step,
            "skill": { "requested": requested_skill, "resolved": skill },
            "input_digest": input_digest,
            "decision": decision,
        });
        self.store.append_audit("verdict", principal, &payload).await?;
        tracing::info!(
            principal = %principal, skill = requested_skill, verdict = decision.verdict.name(),
            run_id = %step.run_id, traceparent = %step.traceparent, "governance verdict"
        );
        Ok(decision)
    }

    /// Stores a pending approval request (audited in the same transaction), before anyone is
    /// notified.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing is stored then.
    pub async fn request_approval(&self, request: &NewApproval) -> Result<ApprovalRequest, StoreError> {
        let payload = serde_json::json!({
            "run_id": request.run_id,
            "step_id": request.step_id,
            "traceparent": request.traceparent,
            "acting_agent": request.acting_agent,
            "skill": request.skill,
            "input_digest": request.input_digest,
            "policy_version": request.policy_version,
            "reviewer_role": request.reviewer_role,
            "quorum": request.quorum,
            "expires_at_ms": request.expires_at_ms,
            "allowed_decisions": request.allowed_decisions,
            "parent_id": request.parent_id,
        });
        self.store.create_approval(request, &payload).await
    }

    /// A reviewer answers approval request `id`: policy must permit the review (action
    /// `review` on the skill, in the request's tenant and risk tier), then the vote is recorded
    /// by [`Store::cast_vote`] (separation of duties, quorum, expiry, exactly-once transition).
    /// `modified_request_json` is the edited `agentd.invoke.v1` request of a `modify` answer.
    ///
    /// # Errors
    ///
    /// [`ApprovalError`] naming the rule that refused the answer.
    pub async fn review(
        &self,
        id: i64,
        reviewer: &Principal,
        decision: ReviewDecisionKind,
        reason: Option<&str>,
        modified_request_json: Option<&str>,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let request = self
            .store
            .approval(&reviewer.tenant, id)
            .await?
            .ok_or(ApprovalError::NotFound { id })?;
        self.policy()
            .may_review(reviewer, &request.skill, &request.tenant, &request.requester)
            .map_err(|reason| ApprovalError::ReviewNotPermitted { id, reason })?;
        self.store
            .cast_vote(id, reviewer, decision, reason, modified_request_json, now_ms())
            .await
    }

    /// Records a step's dispatch outcome in the audit log.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the entry could not be written.
    pub async fn record_dispatch(
        &self,
        principal: &Principal,
        step: &StepContext,
        outcome: &serde_json::Value,
    ) -> Result<AuditEntry, StoreError> {
        let payload = serde_json::json!({ "step": step, "outcome": outcome });
        self.store.append_audit("dispatch", principal, &payload).await
    }
}
