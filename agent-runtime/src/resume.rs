//! After a human decides: the approval flow as library functions ([`answer_approval`]: record
//! the answer, then close the run or resume the step; [`cancel_approval`]: withdraw a request and
//! cancel its run), resuming an approved or modified step ([`resume_approved`]), and closing a run
//! whose approval ended without it ([`close_unapproved`]).

use control_plane::{
    ApprovalBinding, ApprovalError, ApprovalRequest, ApprovalStatus, ControlPlane, Principal, ReviewDecisionKind,
    RunEventPayload, StepContext, TraceContext, Verdict,
};
use plugin_abi::InvokeRequest;

use crate::ladder::dispatch_and_record;
use crate::pep::{govern_step, start_and_govern};
use crate::plan::continue_run;
use crate::runtime::Runtime;
use crate::step::{Step, StepError, StepOutcome, record_event};

/// What a reviewer's answer did: the request as it now stands and, when the answer released
/// the step (approved at the quorum, or modified), how the resumed step ended.
#[derive(Debug)]
pub struct Answered {
    /// The request after the answer.
    pub approval: ApprovalRequest,
    /// The resumed step, if the answer released it.
    pub step: Option<StepOutcome>,
}

/// A reviewer answers approval request `id`: the control plane records the vote (policy,
/// separation of duties, quorum and expiry are its rules); a denial or an expiry closes the
/// waiting run; an approval at the quorum or a modification resumes the step (a modified step
/// is governed again with the edited input). While the quorum is not reached, no step runs.
///
/// # Errors
///
/// [`StepError::Approval`] naming the rule that refused the answer (an expiry found while
/// answering is recorded and its run closed first); [`StepError::NotResumed`] when the answer
/// was recorded but the released step could not resume (it can be resumed later with
/// [`resume_approved`]).
pub async fn answer_approval(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    reviewer: &Principal,
    id: i64,
    decision: ReviewDecisionKind,
    reason: Option<&str>,
    modified_request_json: Option<&str>,
) -> Result<Answered, StepError> {
    let decided = match control_plane
        .review(id, reviewer, decision, reason, modified_request_json)
        .await
    {
        Ok(decided) => decided,
        Err(error @ ApprovalError::Expired { .. }) => {
            // The expiry was recorded; the waiting run fails with it.
            if let Some(expired) = control_plane.approval(&reviewer.tenant, id).await? {
                close_unapproved(control_plane, &expired).await?;
            }
            return Err(error.into());
        }
        Err(error) => return Err(error.into()),
    };
    if decided.status == ApprovalStatus::Denied {
        close_unapproved(control_plane, &decided).await?;
    }
    if !matches!(decided.status, ApprovalStatus::Approved | ApprovalStatus::Modified) {
        return Ok(Answered {
            approval: decided,
            step: None,
        });
    }
    match resume_approved(runtime, control_plane, &reviewer.tenant, id).await {
        Ok(outcome) => Ok(Answered {
            approval: decided,
            step: Some(outcome),
        }),
        Err(source) => Err(StepError::NotResumed {
            id,
            status: decided.status,
            source: Box::new(source),
        }),
    }
}

/// The requester (or an admin) withdraws a pending request; its run is recorded as cancelled.
///
/// # Errors
///
/// [`StepError::Approval`] naming the rule that refused the cancellation
/// (`NotAllowedToCancel`, `AlreadyDecided`, `NotFound`); [`StepError::Run`] when the run's event
/// cannot be written.
pub async fn cancel_approval(
    control_plane: &ControlPlane,
    principal: &Principal,
    id: i64,
    reason: Option<&str>,
) -> Result<ApprovalRequest, StepError> {
    let cancelled = control_plane.cancel_approval(id, principal, reason).await?;
    close_unapproved(control_plane, &cancelled).await?;
    Ok(cancelled)
}

/// Records in the run's log that a step whose approval request ended without running
/// (denied, expired, cancelled) will not run: the run fails (or is cancelled).
///
/// # Errors
///
/// [`StepError::Run`] when the event cannot be written.
pub async fn close_unapproved(control_plane: &ControlPlane, approval: &ApprovalRequest) -> Result<(), StepError> {
    let context = StepContext {
        run_id: approval.run_id.clone(),
        step_id: approval.step_id.clone(),
        traceparent: approval.traceparent.clone(),
    };
    let payload = match approval.status {
        ApprovalStatus::Cancelled => RunEventPayload::RunCancelled {
            reason: format!("approval request #{} was cancelled", approval.id),
        },
        ApprovalStatus::Denied | ApprovalStatus::Expired => RunEventPayload::StepFailed {
            step_id: approval.step_id.clone(),
            reason: format!("approval request #{} was {}", approval.id, approval.status),
        },
        _ => return Ok(()),
    };
    record_event(control_plane, &context, payload).await
}

/// Carries on the step an approval request was waiting on, after its decision:
///
/// - **approved**: governs it again as the requester, consumes the approval (bound to tenant,
///   run, step, skill, component digest, input digest and policy version; audited) and
///   dispatches;
/// - **modified**: governs the reviewer's edited request as a new step attempt (same run and
///   step): it may run, be denied, or wait for a new approval request linked to this one.
///
/// Then the run's remaining steps run.
///
/// # Errors
///
/// [`StepError::Approval`] when the request is missing, undecided, denied, expired, already
/// consumed, or no longer matches; [`StepError::SkillChanged`] when the approved component is
/// gone.
pub async fn resume_approved(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    tenant: &str,
    approval_id: i64,
) -> Result<StepOutcome, StepError> {
    let approval = control_plane
        .approval(tenant, approval_id)
        .await?
        .ok_or(ApprovalError::NotFound { id: approval_id })?;
    let principal = approval.requester_principal();
    let parent: Option<TraceContext> = approval.traceparent.parse().ok();
    let trace = parent.map_or_else(TraceContext::new_root, |parent| parent.child());
    let context = StepContext {
        run_id: approval.run_id.clone(),
        step_id: approval.step_id.clone(),
        traceparent: trace.to_string(),
    };
    let stored_request = |text: &str| {
        InvokeRequest::parse(text).map_err(|source| StepError::StoredRequest {
            id: approval_id,
            source,
        })
    };
    if approval.status == ApprovalStatus::Modified {
        let edited = stored_request(approval.modified_request_json.as_deref().unwrap_or_default())?;
        let step = Step::new(context, approval.skill.id.clone(), edited);
        let outcome = govern_step(runtime, control_plane, &principal, step, Some(approval_id)).await?;
        return continue_run(
            runtime,
            control_plane,
            &principal,
            &approval.run_id,
            &trace,
            Some(outcome),
        )
        .await;
    }
    // Checked here so that a request that cannot be consumed is not governed (and audited) again;
    // the consumption below is still the compare-and-set that decides.
    if approval.status != ApprovalStatus::Approved {
        return Err(ApprovalError::NotApproved {
            id: approval_id,
            status: approval.status,
        }
        .into());
    }
    let step = Step::new(
        context,
        approval.skill.id.clone(),
        stored_request(&approval.request_json)?,
    );
    let skill = runtime
        .lookup_digest(&approval.skill.id, &approval.skill.digest)
        .ok_or_else(|| StepError::SkillChanged {
            id: approval_id,
            skill: approval.skill.id.clone(),
            digest: approval.skill.digest.clone(),
        })?;
    let decision = start_and_govern(control_plane, &principal, &step, Some(&skill.summary)).await?;
    if let Verdict::Deny { .. } = &decision.verdict {
        record_event(
            control_plane,
            &step.context,
            RunEventPayload::StepFailed {
                step_id: step.context.step_id.clone(),
                reason: "denied when governed again after approval".into(),
            },
        )
        .await?;
        return Ok(StepOutcome::Denied {
            context: step.context,
            decision,
        });
    }
    control_plane
        .consume_approval(
            approval_id,
            &ApprovalBinding {
                tenant: tenant.to_owned(),
                run_id: approval.run_id.clone(),
                step_id: approval.step_id.clone(),
                skill_id: skill.summary.id.clone(),
                skill_digest: skill.summary.digest.clone(),
                input_digest: step.input_digest().to_owned(),
                policy_version: decision.policy_version.clone(),
            },
        )
        .await?;
    let outcome = dispatch_and_record(
        runtime,
        control_plane,
        &principal,
        step,
        decision,
        skill,
        Vec::new(),
        None,
    )
    .await?;
    // Carry on with the run's remaining steps.
    continue_run(
        runtime,
        control_plane,
        &principal,
        &approval.run_id,
        &trace,
        Some(outcome),
    )
    .await
}
