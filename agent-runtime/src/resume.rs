//! After a human decides: the approval flow as library functions ([`answer_approval`]: record
//! the answer, then close the run or resume the step; [`cancel_approval`]: withdraw a request and
//! cancel its run), resuming an approved or modified step ([`resume_approved`]), and closing a run
//! whose approval ended without it ([`close_unapproved`]).

use control_plane::{
    ApprovalError, ApprovalRequest, ApprovalStatus, ControlPlane, Lease, Principal, ReviewDecisionKind,
    RunEventPayload, StepContext, TraceContext, Verdict,
};
use plugin_abi::InvokeRequest;

use crate::ladder::dispatch_and_record;
use crate::pep::{govern_step, start_and_govern};
use crate::plan::continue_run;
use crate::runtime::Runtime;
use crate::step::{Begin, Step, StepError, StepOutcome, node_id, record_event, with_lease};

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
    // A denial, and an expiry found while answering, close the waiting run in the deciding
    // transaction.
    let decided = control_plane
        .review(id, reviewer, decision, reason, modified_request_json)
        .await?;
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

/// The requester (or an admin) withdraws a pending request; its run is cancelled in the same
/// transaction.
///
/// # Errors
///
/// [`StepError::Approval`] naming the rule that refused the cancellation
/// (`NotAllowedToCancel`, `AlreadyDecided`, `NotFound`).
pub async fn cancel_approval(
    control_plane: &ControlPlane,
    principal: &Principal,
    id: i64,
    reason: Option<&str>,
) -> Result<ApprovalRequest, StepError> {
    Ok(control_plane.cancel_approval(id, principal, reason).await?)
}

/// Records in the run's log that a step whose approval request ended without running
/// (denied, expired, cancelled) will not run, if the run still waits on it: the run fails (or
/// is cancelled). The control plane does this in the deciding transaction; this closes runs
/// left waiting by an interrupted older agentd. Returns whether a run was closed.
///
/// # Errors
///
/// [`StepError::Store`] when the event cannot be written.
pub async fn close_unapproved(control_plane: &ControlPlane, approval: &ApprovalRequest) -> Result<bool, StepError> {
    Ok(control_plane
        .close_after_approval(&approval.tenant, approval.id)
        .await?)
}

/// Carries on the step an approval request was waiting on, after its decision. The run is
/// claimed first (a run someone else is working on is refused with [`StepError::RunHeld`];
/// one that no longer waits on this request with [`StepError::NotWaiting`]); then:
///
/// - **approved**: governs it again as the requester and, in the same transaction, consumes
///   the approval (bound to tenant, run, step, skill, component digest, input digest and
///   policy version; audited) and records the step's start; then dispatches;
/// - **modified**: governs the reviewer's edited request as a new step attempt (same run and
///   step), consuming the modified request in its starting transaction: it may run, be
///   denied, or wait for a new approval request linked to this one. A second resume finds the
///   request consumed and is refused.
///
/// Then the run's remaining steps run.
///
/// # Errors
///
/// [`StepError::Approval`] when the request is missing, undecided, denied, expired, already
/// consumed, or no longer matches; [`StepError::SkillChanged`] when the approved component is
/// gone; [`StepError::RunHeld`], [`StepError::NotWaiting`].
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
    // Checked here so that a request that cannot be consumed is not governed (and audited)
    // again; the consumption in the step's starting transaction is the compare-and-set that
    // decides.
    if !matches!(approval.status, ApprovalStatus::Approved | ApprovalStatus::Modified) {
        return Err(ApprovalError::NotApproved {
            id: approval_id,
            status: approval.status,
        }
        .into());
    }
    let lease = claim_waiting(control_plane, tenant, &approval).await?;
    let resumed = resume_claimed(
        runtime,
        control_plane,
        &approval,
        lease.clone(),
        Begin::Resume { approval_id },
    )
    .await;
    if let Err(error) = &resumed {
        // Give the run back so it waits for a later resume (or a recovery pass) at once.
        tracing::warn!(%error, approval_id, run_id = %approval.run_id, "resume failed; the run is released");
        control_plane.release_run(&lease).await?;
    }
    resumed
}

/// Claims the run `approval` released, which must still wait on it.
async fn claim_waiting(
    control_plane: &ControlPlane,
    tenant: &str,
    approval: &ApprovalRequest,
) -> Result<Lease, StepError> {
    let not_waiting = |state| StepError::NotWaiting {
        id: approval.id,
        run_id: approval.run_id.clone(),
        state,
    };
    let view = control_plane.run(tenant, &approval.run_id).await?;
    let waits_on_it =
        view.state.is_waiting() && view.current_step().and_then(|step| step.approval_id) == Some(approval.id);
    if !waits_on_it {
        return Err(not_waiting(view.state));
    }
    match control_plane.claim_run(&approval.run_id, &node_id()).await? {
        Some(lease) => Ok(lease),
        None => {
            let view = control_plane.run(tenant, &approval.run_id).await?;
            if view.state.is_terminal() {
                Err(not_waiting(view.state))
            } else {
                Err(StepError::RunHeld {
                    run_id: approval.run_id.clone(),
                })
            }
        }
    }
}

/// Resumes (or, for a recovery, re-dispatches) the step of `approval` under `lease`, then runs
/// the rest of the run.
pub(crate) async fn resume_claimed(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    approval: &ApprovalRequest,
    lease: Lease,
    begin: Begin,
) -> Result<StepOutcome, StepError> {
    let approval_id = approval.id;
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
    let modified = approval.status == ApprovalStatus::Modified
        || (approval.status == ApprovalStatus::Consumed && approval.modified_request_json.is_some());
    if modified {
        let edited = stored_request(approval.modified_request_json.as_deref().unwrap_or_default())?;
        let step = Step::new(context, approval.skill.id.clone(), edited, lease.clone(), begin);
        let outcome = with_lease(
            control_plane,
            &lease,
            govern_step(runtime, control_plane, &principal, step),
        )
        .await?;
        return continue_run(runtime, control_plane, &principal, &trace, lease, Some(outcome)).await;
    }
    let step = Step::new(
        context,
        approval.skill.id.clone(),
        stored_request(&approval.request_json)?,
        lease.clone(),
        begin,
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
            &step,
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
    let outcome = with_lease(
        control_plane,
        &lease,
        dispatch_and_record(
            runtime,
            control_plane,
            &principal,
            step,
            decision,
            skill,
            Vec::new(),
            None,
        ),
    )
    .await?;
    // Carry on with the run's remaining steps.
    continue_run(runtime, control_plane, &principal, &trace, lease, Some(outcome)).await
}
