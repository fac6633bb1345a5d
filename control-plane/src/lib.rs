//! agentd's control plane: it decides *what is allowed* and alone writes the audit trail.
//!
//! - [`identity`]: who is calling (HS256 JWTs).
//! - [`governance`]: Cedar policies turned into a [`Verdict`]: allow, deny or require approval.
//! - [`hitl`]: durable approval requests, decided once by a reviewer who is not the requester.
//! - [`store`]: the SQLite file holding approvals and the hash-chained audit log.
//! - [`trace`]: W3C trace context.
//! - [`run`]: run lifecycle: immutable events with Lamport clocks, state derived by `reduce`.
//! - [`provenance`]: a run's provenance as W3C PROV-O JSON-LD, from the audit log.
//! - [`autonomy`]: autonomy levels L1-L5, certificates, demotion, budgets.
//! - [`emitter`]: the kernel emitter: idempotent telemetry, governance, LLM and connector
//!   records with costs.
//!
//! [`ControlPlane`] ties them together for the runtime: authenticate, govern (decide and audit),
//! request approval, review, record outcomes, and replace the policy set (admin only, audited).
//!
//! **Architecture invariant:** control-plane never depends on agent-runtime and never on
//! wasmtime; it knows skills only as [`plugin_abi::SkillSummary`] values.

pub mod autonomy;
pub mod emitter;
pub mod governance;
pub mod hitl;
pub mod identity;
pub mod provenance;
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
pub use store::{AuditEntry, Bundle, ChainVerification, Committed, RunEventDraft, RunStoreError, Store, StoreError};
pub use trace::TraceContext;

use std::sync::{Arc, RwLock};

pub use autonomy::{AutonomyAssessment, AutonomyCertificate, AutonomyLevel, Budgets, ErrorBudget};
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
    /// The certificate could not be signed.
    #[error("cannot sign the autonomy certificate: {0}")]
    Certificate(#[from] IdentityError),
}

impl AdminError {
    /// Whether retrying can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            AdminError::NotAdmin { .. } | AdminError::Certificate(_) => false,
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
    limits: RwLock<AutonomyLimits>,
}

/// The error budget and spending budgets in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AutonomyLimits {
    /// Failures and escalations tolerated before a demotion.
    pub error_budget: ErrorBudget,
    /// Spending limits.
    pub budgets: Budgets,
}

impl ControlPlane {
    /// Assembles a control plane.
    pub fn new(identity: Identity, policy: PolicyEngine, store: Store) -> Self {
        ControlPlane {
            identity,
            policy: RwLock::new(Arc::new(policy)),
            store,
            limits: RwLock::new(AutonomyLimits::default()),
        }
    }

    /// The error budget and spending budgets in force.
    pub fn limits(&self) -> AutonomyLimits {
        match self.limits.read() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Changes the error budget and spending budgets: an enforcement change (admin only,
    /// audited before it takes effect).
    ///
    /// # Errors
    ///
    /// [`AdminError::NotAdmin`] or [`AdminError::Store`]; nothing changes then.
    pub async fn set_limits(&self, admin: &Principal, limits: AutonomyLimits) -> Result<(), AdminError> {
        if !admin.has_role(Role::Admin) {
            return Err(AdminError::NotAdmin {
                principal: admin.to_string(),
            });
        }
        let payload = serde_json::json!({ "change": "autonomy-limits", "old": self.limits(), "new": limits });
        self.store.append_audit("enforcement-change", admin, &payload).await?;
        match self.limits.write() {
            Ok(mut guard) => *guard = limits,
            Err(poisoned) => *poisoned.into_inner() = limits,
        }
        Ok(())
    }

    /// Issues a signed autonomy certificate capping `agent`'s level for `skill` (`*` for all)
    /// in the admin's tenant for `ttl_secs`, and stores it (audited).
    ///
    /// # Errors
    ///
    /// [`AdminError::NotAdmin`], [`AdminError::Store`]; an identity error is reported as
    /// [`AdminError::Certificate`].
    pub async fn grant_autonomy(
        &self,
        admin: &Principal,
        agent: &str,
        skill: &str,
        level: AutonomyLevel,
        ttl_secs: u64,
    ) -> Result<String, AdminError> {
        if !admin.has_role(Role::Admin) {
            return Err(AdminError::NotAdmin {
                principal: admin.to_string(),
            });
        }
        let issued_at = u64::try_from(now_ms() / 1_000).unwrap_or(0);
        let certificate = AutonomyCertificate {
            agent: agent.to_owned(),
            skill: skill.to_owned(),
            tenant: admin.tenant.clone(),
            level,
            issued_by: admin.subject.clone(),
            issued_at,
            expires_at: issued_at.saturating_add(ttl_secs),
        };
        let token = self.identity.sign_certificate(&certificate)?;
        self.store.put_certificate(admin, &certificate, &token).await?;
        Ok(token)
    }

    /// The autonomy level of `agent` for `skill` now: the newest valid certificate's
    /// level (a skill-specific one before a `*` one; a certificate that no longer verifies is
    /// skipped), else [`autonomy::DEFAULT_LEVEL`], lowered one step per demotion since it was
    /// issued; with where it came from.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn autonomy_level(
        &self,
        agent: &Principal,
        skill: &str,
    ) -> Result<(AutonomyLevel, Vec<String>), StoreError> {
        let mut source = Vec::new();
        let mut level = autonomy::DEFAULT_LEVEL;
        let mut since = i64::MIN;
        for (token, issued_at_ms) in self.store.certificates(&agent.tenant, &agent.subject, skill).await? {
            match self.identity.verify_certificate(&token) {
                Ok(certificate) if certificate.tenant == agent.tenant => {
                    level = certificate.level;
                    since = issued_at_ms;
                    source.push(format!(
                        "certificate {} (skill {})",
                        certificate.level, certificate.skill
                    ));
                    break;
                }
                Ok(_) | Err(_) => source.push("an invalid or expired certificate was skipped".into()),
            }
        }
        if since == i64::MIN {
            source.push(format!("default {level}"));
        }
        let demotions = self
            .store
            .demotions_since(&agent.tenant, &agent.subject, skill, since)
            .await?;
        for _ in 0..demotions {
            level = level.demoted();
        }
        if demotions > 0 {
            source.push(format!("demoted {demotions} time(s) to {level}"));
        }
        Ok((level, source))
    }

    /// Records a step outcome for autonomy's error budget: `failure` or `escalation` count
    /// against it, and exceeding it demotes the agent one level (audited). Returns whether a
    /// demotion happened.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn record_outcome(&self, agent: &Principal, skill: &str, kind: &str) -> Result<bool, StoreError> {
        self.store
            .record_outcome(agent, skill, kind, self.limits().error_budget, now_ms())
            .await
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
        self.govern_step(principal, step, requested_skill, skill, input_digest, None)
            .await
            .map_err(|error| match error {
                RunStoreError::Store(error) => error,
                RunStoreError::Run(error) => StoreError::Corrupt(error.to_string()),
            })
    }

    /// Like [`ControlPlane::govern`], and in the same transaction (one fsync) appends
    /// `run_event` (by `node_id`) to the step's run and a `governance` kernel record of the
    /// decision (its own span under the step's trace).
    ///
    /// # Errors
    ///
    /// [`RunStoreError::Run`] when the run event is illegal for the run,
    /// [`RunStoreError::Store`] when the decision could not be audited; the caller must then
    /// treat the step as denied (fail closed).
    pub async fn govern_step(
        &self,
        principal: &Principal,
        step: &StepContext,
        requested_skill: &str,
        skill: Option<&SkillSummary>,
        input_digest: &str,
        run_event: Option<(&str, RunEventPayload)>,
    ) -> Result<Decision, RunStoreError> {
        let now = now_ms();
        let mut decision = self.policy().decide(principal, requested_skill, skill, now);
        if let Some(skill) = skill
            && !matches!(decision.verdict, Verdict::Deny { .. })
        {
            self.apply_autonomy(principal, step, skill, &mut decision, now).await?;
        }
        let payload = serde_json::json!({
            "step": step,
            "skill": { "requested": requested_skill, "resolved": skill },
            "input_digest": input_digest,
            "decision": decision,
        });
        let mut bundle = Bundle {
            audit: Some(("verdict", principal, &payload)),
            ..Bundle::default()
        };
        if let Ok(trace) = step.traceparent.parse::<TraceContext>() {
            bundle.records.push(emitter::Record {
                tenant: principal.tenant.clone(),
                trace_id: trace.trace_id_hex(),
                span_id: trace.child().span_id_hex(),
                event_type: "governance".into(),
                run_id: Some(step.run_id.clone()),
                content: serde_json::to_value(&decision).unwrap_or_default(),
                cost: None,
            });
        }
        if let Some((node_id, payload)) = run_event {
            bundle.run_events.push(RunEventDraft {
                run_id: step.run_id.clone(),
                node_id: node_id.to_owned(),
                traceparent: step.traceparent.clone(),
                payload,
            });
        }
        self.store.commit(bundle).await?;
        tracing::info!(
            principal = %principal, skill = requested_skill, verdict = decision.verdict.name(),
            run_id = %step.run_id, traceparent = %step.traceparent, "governance verdict"
        );
        Ok(decision)
    }

    /// Autonomy gates: the level (certificate, default, demotions, policy cap) may turn an
    /// allow into require-approval, as may an exceeded run or tenant budget (an escalation to a
    /// human). Gates only ever add approvals.
    async fn apply_autonomy(
        &self,
        principal: &Principal,
        step: &StepContext,
        skill: &SkillSummary,
        decision: &mut Decision,
        now: i64,
    ) -> Result<(), StoreError> {
        let (mut level, mut source) = self.autonomy_level(principal, &skill.id).await?;
        if let Some(cap) = decision.autonomy_cap
            && cap < level
        {
            level = cap;
            source.push(format!("policy cap {cap}"));
        }
        let effectful = skill.side_effect == plugin_abi::SideEffect::Effectful;
        let mut gates = Vec::new();
        if level.requires_approval(decision.risk_tier, effectful) {
            gates.push(format!(
                "autonomy {level} requires approval for {}-risk {} skills",
                decision.risk_tier, skill.side_effect
            ));
        }
        let budgets = self.limits().budgets;
        if let Some(limit) = budgets.per_run_micro_eur {
            let spent = self
                .store
                .spent_micro_eur(&principal.tenant, Some(&step.run_id))
                .await?;
            if spent >= limit {
                gates.push(format!("run budget exceeded: spent {spent} of {limit} micro-EUR"));
            }
        }
        if let Some(limit) = budgets.per_tenant_micro_eur {
            let spent = self.store.spent_micro_eur(&principal.tenant, None).await?;
            if spent >= limit {
                gates.push(format!("tenant budget exceeded: spent {spent} of {limit} micro-EUR"));
            }
        }
        if !gates.is_empty()
            && let Verdict::Allow { obligations } = &decision.verdict
        {
            decision.verdict = Verdict::RequireApproval {
                reviewer_role: Role::Reviewer,
                quorum: Quorum::default(),
                expires_at_ms: now.saturating_add(governance::DEFAULT_APPROVAL_TTL_SECS * 1_000),
                allowed_decisions: vec![
                    ReviewDecisionKind::Approve,
                    ReviewDecisionKind::Deny,
                    ReviewDecisionKind::Modify,
                ],
                obligations: obligations.clone(),
            };
        }
        decision.autonomy = Some(AutonomyAssessment { level, source, gates });
        Ok(())
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

    /// The PROV-O JSON-LD provenance of `run_id`, from the audit entries of `tenant`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the log cannot be read.
    pub async fn provenance(&self, tenant: &str, run_id: &str) -> Result<serde_json::Value, StoreError> {
        let entries: Vec<AuditEntry> = self
            .store
            .audit_entries()
            .await?
            .into_iter()
            .filter(|entry| entry.tenant == tenant)
            .collect();
        Ok(provenance::run_provenance(&entries, run_id))
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

    /// Records a step's final dispatch outcome, the run event it causes and a `telemetry`
    /// kernel record (`skill.dispatch`, its own span) in one transaction (one fsync).
    ///
    /// # Errors
    ///
    /// [`RunStoreError::Run`] when the run event is illegal, [`RunStoreError::Store`] when the
    /// write fails; nothing is stored then.
    pub async fn record_step_end(
        &self,
        principal: &Principal,
        step: &StepContext,
        outcome: &serde_json::Value,
        run_event: Option<(&str, RunEventPayload)>,
        telemetry: Option<serde_json::Value>,
    ) -> Result<(), RunStoreError> {
        let payload = serde_json::json!({ "step": step, "outcome": outcome });
        let mut bundle = Bundle {
            audit: Some(("dispatch", principal, &payload)),
            ..Bundle::default()
        };
        if let Some((node_id, payload)) = run_event {
            bundle.run_events.push(RunEventDraft {
                run_id: step.run_id.clone(),
                node_id: node_id.to_owned(),
                traceparent: step.traceparent.clone(),
                payload,
            });
        }
        if let (Some(attributes), Ok(trace)) = (telemetry, step.traceparent.parse::<TraceContext>()) {
            bundle.records.push(emitter::Record {
                tenant: principal.tenant.clone(),
                trace_id: trace.trace_id_hex(),
                span_id: trace.child().span_id_hex(),
                event_type: "telemetry:skill.dispatch".into(),
                run_id: Some(step.run_id.clone()),
                content: attributes,
                cost: None,
            });
        }
        self.store.commit(bundle).await?;
        Ok(())
    }
}
