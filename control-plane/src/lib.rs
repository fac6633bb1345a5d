//! agentd's control plane: it decides *what is allowed* and alone writes the audit trail.
//!
//! - [`identity`]: who is calling (HS256 JWTs).
//! - [`governance`]: Cedar policies turned into a [`Verdict`]: allow, deny or require approval.
//! - [`hitl`]: durable approval requests, decided once by a reviewer who is not the requester.
//! - [`store`]: the SQLite file holding approvals and the hash-chained audit log.
//! - [`trace`]: W3C trace context.
//!
//! [`ControlPlane`] ties them together for the runtime: authenticate, govern (decide and audit),
//! request approval, record outcomes.
//!
//! **Architecture invariant:** control-plane never depends on agent-runtime and never on
//! wasmtime; it knows skills only as [`plugin_abi::SkillSummary`] values.

pub mod governance;
pub mod hitl;
pub mod identity;
pub mod store;
pub mod trace;

pub use governance::{Decision, DenyKind, PolicyEngine, PolicyError, Verdict};
pub use hitl::{ApprovalError, ApprovalRequest, ApprovalStatus, NewApproval};
pub use identity::{Identity, IdentityConfig, IdentityError, Principal, Role};
pub use store::{AuditEntry, ChainVerification, Store, StoreError};
pub use trace::TraceContext;

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

/// The control plane: identity, policy and store behind one handle.
#[derive(Debug)]
pub struct ControlPlane {
    identity: Identity,
    policy: PolicyEngine,
    store: Store,
}

impl ControlPlane {
    /// Assembles a control plane.
    pub fn new(identity: Identity, policy: PolicyEngine, store: Store) -> Self {
        ControlPlane {
            identity,
            policy,
            store,
        }
    }

    /// The token issuer and verifier.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The loaded policy set.
    pub fn policy(&self) -> &PolicyEngine {
        &self.policy
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
        let decision = self.policy.decide(principal, requested_skill, skill);
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

    /// Stores a pending approval request (audited in the same transaction).
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing is stored then.
    pub async fn request_approval(&self, request: &NewApproval) -> Result<ApprovalRequest, StoreError> {
        let payload = serde_json::json!({
            "run_id": request.run_id,
            "step_id": request.step_id,
            "traceparent": request.traceparent,
            "skill_id": request.skill_id,
            "skill_version": request.skill_version,
            "skill_digest": request.skill_digest,
            "input_digest": request.input_digest,
            "policy_version": request.policy_version,
            "reviewer_role": request.reviewer_role,
        });
        self.store.create_approval(request, &payload).await
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
