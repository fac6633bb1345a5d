//! Verdicts: the policy decision point asked, autonomy gates applied, and the decision audited
//! before it is returned.

use plugin_abi::SkillSummary;

use super::{ControlPlane, audit_log, runs};
use crate::audit::{AuditEvent, SkillResolution, VerdictRecord};
use crate::autonomy::{self, AutonomyAssessment, AutonomyLevel};
use crate::error::StoreError;
use crate::governance::{self, Decision, Quorum, ReviewDecisionKind, Verdict};
use crate::hitl::{ApprovalBinding, ApprovalError};
use crate::identity::{Principal, Role};
use crate::run::{Lease, RunEventDraft, RunEventPayload, RunStoreError, StepContext};
use crate::storage::{LockKey, UnitOfWork};

/// How a governed step starts, in the verdict's transaction.
#[derive(Debug, Clone)]
pub struct StepStart<'a> {
    /// The writer's claim on the run.
    pub lease: &'a Lease,
    /// The event to append: `step-started` (or `step-recovered`).
    pub payload: RunEventPayload,
    /// The approval to consume for this dispatch, if it resumes one.
    pub approval_id: Option<i64>,
    /// Its binding (the policy version is filled in from the new verdict).
    pub consume: Option<&'a ApprovalBinding>,
}

impl ControlPlane {
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
                other => StoreError::corrupt(other),
            })
    }

    /// Like [`ControlPlane::govern`], and in the same unit of work (one fsync) starts the step:
    /// appends `start.payload` (by the holder of `start.lease`, fenced) to the step's run, a
    /// `governance` kernel record of the decision (its own span under the step's trace) and,
    /// when `start.consume` names an approval and the verdict is not a denial, consumes it
    /// (audited) and records it in the `step-started` event: consuming an approval and
    /// recording the dispatch intent are one transaction, so a crash leaves either both or
    /// neither. The binding's policy version is the new verdict's.
    ///
    /// # Errors
    ///
    /// [`RunStoreError::Run`] when the run event is illegal for the run,
    /// [`RunStoreError::LeaseLost`] when the run is no longer the writer's,
    /// [`RunStoreError::Approval`] when the approval cannot be consumed (an expiry found on the
    /// way is recorded, with its run's end), [`RunStoreError::Store`] when the decision could
    /// not be audited; the caller must then treat the step as not started (fail closed).
    pub async fn govern_step(
        &self,
        principal: &Principal,
        step: &StepContext,
        requested_skill: &str,
        skill: Option<&SkillSummary>,
        input_digest: &str,
        start: Option<StepStart<'_>>,
    ) -> Result<Decision, RunStoreError> {
        let now = self.now_ms();
        let mut decision = self.policy().decide(principal, requested_skill, skill, now);
        let mut unit = self.write().await?;
        if start.is_some() {
            // The run before the approval it may consume (the lock order, ADR 0020).
            unit.lock(LockKey::Run(&step.run_id)).await?;
        }
        if let Some(skill) = skill
            && !matches!(decision.verdict, Verdict::Deny { .. })
        {
            self.apply_autonomy(&mut *unit, principal, step, skill, &mut decision, now)
                .await?;
        }
        let event = AuditEvent::Verdict(VerdictRecord {
            step: step.clone(),
            skill: SkillResolution {
                requested: requested_skill.to_owned(),
                resolved: skill.cloned(),
            },
            input_digest: input_digest.to_owned(),
            decision: decision.clone(),
        });
        audit_log::append(&mut *unit, self.store.anchor_key(), &event, principal, now).await?;
        if let Some(start) = start {
            let mut payload = start.payload;
            match (start.consume, &decision.verdict) {
                (Some(binding), verdict) if !matches!(verdict, Verdict::Deny { .. }) => {
                    let binding = ApprovalBinding {
                        policy_version: decision.policy_version.clone(),
                        ..binding.clone()
                    };
                    let id = start.approval_id.unwrap_or_default();
                    match self.consume_in(&mut *unit, id, &binding, now).await {
                        Ok(()) => {}
                        Err(error @ ApprovalError::Expired { .. }) => {
                            // The expiry (and its run's end) is recorded; the verdict is not.
                            drop(unit);
                            self.expire_due().await?;
                            return Err(error.into());
                        }
                        Err(error) => return Err(error.into()),
                    }
                    if let RunEventPayload::StepStarted { approval_id, .. } = &mut payload {
                        *approval_id = Some(id);
                    }
                }
                _ => {
                    if let RunEventPayload::StepStarted { approval_id, .. } = &mut payload {
                        *approval_id = None;
                    }
                }
            }
            runs::append_run_event(
                &mut *unit,
                RunEventDraft::of_step(step, start.lease, payload),
                now,
                self.lease_ttl_ms,
            )
            .await?;
        }
        let content = serde_json::to_value(&decision).unwrap_or_default();
        if let Some(record) = runs::step_record(principal, step, "governance", content) {
            runs::put_copy_record(&mut *unit, &record, now).await?;
        }
        unit.commit().await?;
        tracing::info!(
            principal = %principal, skill = requested_skill, verdict = decision.verdict.name(),
            run_id = %step.run_id, traceparent = %step.traceparent, "governance verdict"
        );
        Ok(decision)
    }

    /// The autonomy level of `agent` for `skill` now: the newest valid certificate's level (a
    /// skill-specific one before a `*` one; a certificate that no longer verifies is skipped),
    /// else [`autonomy::DEFAULT_LEVEL`], lowered one step per demotion since it was issued; with
    /// where it came from.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn autonomy_level(
        &self,
        agent: &Principal,
        skill: &str,
    ) -> Result<(AutonomyLevel, Vec<String>), StoreError> {
        let mut unit = self.read().await?;
        self.autonomy_level_in(&mut *unit, agent, skill).await
    }

    async fn autonomy_level_in(
        &self,
        unit: &mut dyn UnitOfWork,
        agent: &Principal,
        skill: &str,
    ) -> Result<(AutonomyLevel, Vec<String>), StoreError> {
        let mut source = Vec::new();
        let mut level = autonomy::DEFAULT_LEVEL;
        let mut since = i64::MIN;
        for (token, issued_at_ms) in unit.certificates(&agent.tenant, &agent.subject, skill).await? {
            match self.authority.verify_certificate(&token) {
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
        let demotions = unit
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

    /// Autonomy gates: the level (certificate, default, demotions, policy cap) may turn an
    /// allow into require-approval, as may an exceeded run or tenant budget (an escalation to a
    /// human). Gates only ever add approvals.
    async fn apply_autonomy(
        &self,
        unit: &mut dyn UnitOfWork,
        principal: &Principal,
        step: &StepContext,
        skill: &SkillSummary,
        decision: &mut Decision,
        now: i64,
    ) -> Result<(), StoreError> {
        let (mut level, mut source) = self.autonomy_level_in(unit, principal, &skill.id).await?;
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
            let spent = unit.spent_micro_eur(&principal.tenant, Some(&step.run_id)).await?;
            if spent >= limit {
                gates.push(format!("run budget exceeded: spent {spent} of {limit} micro-EUR"));
            }
        }
        if let Some(limit) = budgets.per_tenant_micro_eur {
            let spent = unit.spent_micro_eur(&principal.tenant, None).await?;
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
}
