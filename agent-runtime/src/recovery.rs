//! The recovery pass: runs whose owner vanished (its lease lapsed), runs nobody owns while
//! they should be worked on, and runs whose approval was decided or expired while nobody
//! resumed them are driven on, each as [`control_plane::RecoveryAction`] says:
//!
//! - a step whose dispatch started but was not recorded is dispatched again under the same
//!   idempotency key (so the host's effects journal does not repeat its effects), recorded as
//!   `step-recovered`; a step that started under a consumed approval dispatches that
//!   approval's request without asking again;
//! - a run whose current step has not started runs on;
//! - an approved or modified request is resumed; an expired one recorded and its run closed;
//! - a run past its deadline times out.
//!
//! Every long-lived process runs a pass when it starts and periodically ([`recover_every`]);
//! CLI users run one with `agentd runs recover`.

use std::time::Duration;

use control_plane::{
    ApprovalStatus, ControlPlane, Principal, RecoveryAction, RecoveryCandidate, RunEventDraft, RunEventPayload,
    StepContext, TraceContext,
};
use plugin_abi::InvokeRequest;

use crate::pep::govern_step;
use crate::plan::continue_run;
use crate::resume::{resume_approved, resume_claimed};
use crate::runtime::Runtime;
use crate::step::{Begin, Step, StepError, node_id, with_lease};

/// How many runs one pass looks at, at most.
pub const PASS_LIMIT: u32 = 1_000;

/// What a recovery pass did with one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recovered {
    /// The run.
    pub run_id: String,
    /// What it needed.
    pub action: RecoveryAction,
    /// How it went: `done`, `skipped: ...` (someone else holds it) or `failed: ...`.
    pub result: String,
}

/// One pass over up to `limit` runs needing attention (see the module docs). A run that fails
/// to recover is reported, not retried here; the next pass looks at it again unless it failed
/// for good (then it is recorded as failed).
///
/// # Errors
///
/// [`StepError::Store`] when the candidates cannot be read.
pub async fn recover(runtime: &Runtime, control_plane: &ControlPlane, limit: u32) -> Result<Vec<Recovered>, StepError> {
    let mut report = Vec::new();
    for candidate in control_plane.recovery_candidates(limit).await? {
        if candidate.action == RecoveryAction::Leave {
            continue;
        }
        let run_id = candidate.record.run_id.clone();
        let action = candidate.action.clone();
        let result = match drive(runtime, control_plane, candidate).await {
            Ok(true) => "done".to_owned(),
            Ok(false) => "skipped: another owner holds the run".to_owned(),
            Err(error) => {
                tracing::warn!(%error, run_id, "recovery of a run failed");
                format!("failed: {error}")
            }
        };
        report.push(Recovered { run_id, action, result });
    }
    Ok(report)
}

/// Runs [`recover`] now and then every `period`, until the future is dropped. For long-lived
/// processes (`agentd serve`).
pub async fn recover_every(runtime: &Runtime, control_plane: &ControlPlane, period: Duration) {
    loop {
        match recover(runtime, control_plane, PASS_LIMIT).await {
            Ok(report) if !report.is_empty() => tracing::info!(runs = report.len(), "recovery pass"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "recovery pass failed"),
        }
        tokio::time::sleep(period).await;
    }
}

/// Carries out one candidate's action; `false` when another owner got the run first.
async fn drive(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    candidate: RecoveryCandidate,
) -> Result<bool, StepError> {
    let RecoveryCandidate {
        record,
        view,
        approval,
        action,
    } = candidate;
    let tenant = view.tenant.clone();
    match action {
        RecoveryAction::Leave => Ok(true),
        RecoveryAction::Expire { .. } => {
            // Records every due expiry, each closing its run in the same transaction.
            control_plane.expire_due().await?;
            Ok(true)
        }
        RecoveryAction::Close { approval_id } => {
            control_plane.close_after_approval(&tenant, approval_id).await?;
            Ok(true)
        }
        RecoveryAction::Resume { approval_id } => {
            match resume_approved(runtime, control_plane, &tenant, approval_id).await {
                Ok(_) => Ok(true),
                Err(StepError::RunHeld { .. }) => Ok(false),
                Err(error) => Err(error),
            }
        }
        RecoveryAction::TimeOut { .. } => {
            let Some(lease) = control_plane.claim_run(&record.run_id, &node_id()).await? else {
                return Ok(false);
            };
            control_plane
                .time_out_run(&lease, &TraceContext::new_root().to_string())
                .await?;
            Ok(true)
        }
        RecoveryAction::FailOrphan { reason } => {
            let Some(lease) = control_plane.claim_run(&record.run_id, &node_id()).await? else {
                return Ok(false);
            };
            let step_id = view
                .current_step()
                .map(|step| step.spec.step_id.clone())
                .unwrap_or_default();
            let context = StepContext {
                run_id: record.run_id.clone(),
                step_id: step_id.clone(),
                traceparent: TraceContext::new_root().to_string(),
            };
            control_plane
                .append_run_event(RunEventDraft::of_step(
                    &context,
                    &lease,
                    RunEventPayload::StepFailed { step_id, reason },
                ))
                .await?;
            Ok(true)
        }
        RecoveryAction::Continue => {
            let principal = run_principal(&view)?;
            let Some(lease) = control_plane.claim_run(&record.run_id, &node_id()).await? else {
                return Ok(false);
            };
            continue_run(
                runtime,
                control_plane,
                &principal,
                &TraceContext::new_root(),
                lease,
                None,
            )
            .await?;
            Ok(true)
        }
        RecoveryAction::Redispatch { approval_id } => {
            let previous_owner = record.owner.clone().unwrap_or_else(|| "nobody".to_owned());
            let Some(lease) = control_plane.claim_run(&record.run_id, &node_id()).await? else {
                return Ok(false);
            };
            let begin = Begin::Recover { previous_owner };
            // The approval the running step started under: named by its start, or (for a step
            // started by an older agentd, which consumed in a separate transaction) the step's
            // latest request if it is consumed.
            let consumed = approval.filter(|request| {
                Some(request.id) == approval_id
                    || (approval_id.is_none()
                        && request.status == ApprovalStatus::Consumed
                        && request.run_id == record.run_id)
            });
            if let Some(request) = consumed {
                resume_claimed(runtime, control_plane, &request, lease, begin).await?;
                return Ok(true);
            }
            let principal = run_principal(&view)?;
            let current = view.current_step().cloned().ok_or_else(|| {
                StepError::Run(
                    control_plane::RunError::BadStep {
                        run_id: record.run_id.clone(),
                        message: "a running run without a current step".into(),
                    }
                    .into(),
                )
            })?;
            let input = view
                .resolve_input(&current.spec.step_id)
                .map_err(control_plane::RunStoreError::from)?;
            let serde_json::Value::Object(input) = input else {
                return Err(StepError::Run(
                    control_plane::RunError::BadReference {
                        run_id: record.run_id.clone(),
                        step_id: current.spec.step_id.clone(),
                        message: "the resolved input is not a JSON object".into(),
                    }
                    .into(),
                ));
            };
            let root = TraceContext::new_root();
            let step = Step::new(
                StepContext {
                    run_id: record.run_id.clone(),
                    step_id: current.spec.step_id.clone(),
                    traceparent: root.child().to_string(),
                },
                current.spec.skill.clone(),
                InvokeRequest::new(input),
                lease.clone(),
                begin,
            );
            let outcome = with_lease(
                control_plane,
                &lease,
                govern_step(runtime, control_plane, &principal, step),
            )
            .await?;
            continue_run(runtime, control_plane, &principal, &root, lease, Some(outcome)).await?;
            Ok(true)
        }
    }
}

/// The principal a run was created by, with the roles it recorded.
fn run_principal(view: &control_plane::RunView) -> Result<Principal, StepError> {
    let subject = view
        .principal
        .strip_suffix(&format!("@{}", view.tenant))
        .unwrap_or(&view.principal)
        .to_owned();
    let mut roles: std::collections::BTreeSet<_> = view.principal_roles.iter().copied().collect();
    if roles.is_empty() {
        // Runs created before roles were recorded: the least privilege that can run a step.
        roles.insert(control_plane::Role::Agent);
    }
    Ok(Principal {
        subject,
        tenant: view.tenant.clone(),
        roles,
    })
}
