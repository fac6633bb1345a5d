//! The policy enforcement point (PEP): before a step runs, the runtime selects a candidate,
//! asks the control plane (the policy decision point) and does what the verdict says: dispatch
//! through the ladder, store an approval request and wait, or record the denial. A candidate
//! runs only with every capability it requests granted by its own verdict.

use std::sync::Arc;

use control_plane::{
    ApprovalBinding, ControlPlane, Decision, NewApproval, Principal, RejectedCandidate, RunEventPayload, StepStart,
    Verdict,
};

use crate::ladder::{self, approval_for, next_allowed_fallback};
use crate::outcome::{DispatchReport, Outcome, RuntimeFailure};
use crate::registry::LoadedSkill;
use crate::runtime::Runtime;
use crate::selector::select;
use crate::step::{Begin, Step, StepError, StepOutcome, record_event};

/// Governs `step` and then dispatches it, asks for approval, or records the denial. A step
/// resuming a modified request links a new approval request to it (`parent_id`).
///
/// # Errors
///
/// [`StepError`] when the verdict or the run's events cannot be recorded; nothing ran then.
pub(crate) async fn govern_step(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    principal: &Principal,
    step: Step,
) -> Result<StepOutcome, StepError> {
    let parent_id = match step.begin {
        Begin::Resume { approval_id } => Some(approval_id),
        Begin::Fresh | Begin::Recover { .. } => None,
    };
    // The selector: highest loaded version whose circuit is not open, every rejection explained.
    let selection = select(
        runtime,
        &step.skill_id,
        &semver::VersionReq::STAR,
        None,
        runtime.breakers(),
        &principal.tenant,
    );
    let skill = selection
        .candidates
        .first()
        .cloned()
        .or_else(|| runtime.lookup(&step.skill_id));
    let mut explanation = selection.record();
    let decision = start_and_govern(control_plane, principal, &step, skill.as_ref().map(|s| &s.summary)).await?;
    let skill = match (&decision.verdict, skill) {
        (Verdict::Allow { .. }, Some(skill)) => skill,
        (
            Verdict::RequireApproval {
                reviewer_role,
                quorum,
                expires_at_ms,
                allowed_decisions,
                ..
            },
            Some(skill),
        ) => {
            // The request and the run's wait on it are one transaction.
            let (approval, _) = control_plane
                .request_step_approval(
                    &NewApproval {
                        reviewer_role: *reviewer_role,
                        quorum: *quorum,
                        expires_at_ms: *expires_at_ms,
                        allowed_decisions: allowed_decisions.clone(),
                        parent_id,
                        ..approval_for(control_plane, principal, &step, &skill, decision.policy_version.clone())
                    },
                    |approval_id| {
                        control_plane::RunEventDraft::of_step(
                            &step.context,
                            &step.lease,
                            RunEventPayload::StepAwaitingApproval {
                                step_id: step.context.step_id.clone(),
                                approval_id,
                            },
                        )
                    },
                )
                .await?;
            return Ok(StepOutcome::AwaitingApproval {
                context: step.context,
                decision,
                approval: Box::new(approval),
            });
        }
        _ => {
            record_event(
                control_plane,
                &step,
                RunEventPayload::StepFailed {
                    step_id: step.context.step_id.clone(),
                    reason: format!("governance verdict: {}", decision.verdict.name()),
                },
            )
            .await?;
            return Ok(StepOutcome::Denied {
                context: step.context,
                decision,
            });
        }
    };
    // Fallbacks, in ladder order: the other usable versions (best first), then the plugins
    // the manifest names, each at its best usable version.
    let mut fallbacks: Vec<Arc<LoadedSkill>> = selection
        .candidates
        .iter()
        .filter(|candidate| candidate.summary.digest != skill.summary.digest)
        .cloned()
        .collect();
    for fallback_id in &skill.manifest.fallbacks {
        let other = select(
            runtime,
            fallback_id,
            &semver::VersionReq::STAR,
            None,
            runtime.breakers(),
            &principal.tenant,
        );
        fallbacks.extend(other.candidates.first().cloned());
    }
    // The selector's rule: a candidate runs only with every capability it requests granted.
    // When the verdict withheld one, the next candidate is governed in its place; when none is
    // left, the step fails as `capability-denied` without creating an instance.
    let (mut skill, mut decision) = (skill, decision);
    let mut remaining = fallbacks.into_iter();
    while let Some(withheld) = decision.withheld_capabilities.first().cloned() {
        let reason = format!(
            "{}@{} requests `{withheld}`, which the policy did not grant",
            skill.summary.id, skill.summary.version
        );
        explanation.rejected.push(RejectedCandidate {
            version: skill.summary.version.to_string(),
            reason: reason.clone(),
        });
        let mut skipped = Vec::new();
        let replacement =
            next_allowed_fallback(control_plane, principal, &step, &mut remaining, None, &mut skipped).await?;
        let Some((candidate, verdict)) = replacement else {
            let report = DispatchReport::not_dispatched(
                &skill.summary,
                Outcome::Failed {
                    failure: RuntimeFailure::CapabilityDenied {
                        capability: withheld,
                        message: format!("not dispatched: {reason}, and no other candidate is allowed"),
                    },
                },
            );
            let refused = ladder::refusal_record(&report, explanation);
            let payload = RunEventPayload::StepFailed {
                step_id: step.context.step_id.clone(),
                reason: format!("capability-denied (not retryable): {reason}"),
            };
            control_plane
                .record_step_end(principal, &step.context, &refused, Some((&step.lease, payload)), None)
                .await?;
            return Ok(StepOutcome::Dispatched {
                context: step.context,
                decision,
                report,
            });
        };
        skill = candidate;
        decision = verdict;
    }
    ladder::dispatch_and_record(
        runtime,
        control_plane,
        principal,
        step,
        decision,
        skill,
        remaining.collect(),
        Some(explanation),
    )
    .await
}

/// Records that the step started (or was recovered) and governs it, in one transaction with
/// the verdict's audit entry and its governance record (the verdict is audited before anything
/// runs). A step resuming an approval consumes it in that transaction, unless the verdict is a
/// denial.
pub(crate) async fn start_and_govern(
    control_plane: &ControlPlane,
    principal: &Principal,
    step: &Step,
    skill: Option<&plugin_abi::SkillSummary>,
) -> Result<Decision, StepError> {
    let step_id = step.context.step_id.clone();
    let (payload, approval_id) = match &step.begin {
        Begin::Fresh => (
            RunEventPayload::StepStarted {
                step_id,
                approval_id: None,
            },
            None,
        ),
        Begin::Resume { approval_id } => (
            RunEventPayload::StepStarted {
                step_id,
                approval_id: Some(*approval_id),
            },
            Some(*approval_id),
        ),
        Begin::Recover { previous_owner } => (
            RunEventPayload::StepRecovered {
                step_id,
                previous_owner: previous_owner.clone(),
            },
            None,
        ),
    };
    let binding = approval_id.zip(skill).map(|(_, skill)| ApprovalBinding {
        tenant: principal.tenant.clone(),
        run_id: step.context.run_id.clone(),
        step_id: step.context.step_id.clone(),
        skill_id: skill.id.clone(),
        skill_digest: skill.digest.clone(),
        input_digest: step.input_digest().to_owned(),
        policy_version: String::new(),
    });
    let decision = control_plane
        .govern_step(
            principal,
            &step.context,
            &step.skill_id,
            skill,
            step.input_digest(),
            Some(StepStart {
                lease: &step.lease,
                payload,
                approval_id,
                consume: binding.as_ref(),
            }),
        )
        .await?;
    Ok(decision)
}
