//! Runs: a plan of steps executed in order, each governed, each recorded as run events. A
//! step's input may reference an earlier step's output (`{"$from": "<step id>", "pointer":
//! "/json/pointer"}`), resolved when the step starts.

use control_plane::{
    ControlPlane, Principal, RunError, RunEventPayload, RunState, RunStoreError, StepContext, StepSpec, TraceContext,
};
use plugin_abi::InvokeRequest;

use crate::outcome::Outcome;
use crate::pep::govern_step;
use crate::runtime::Runtime;
use crate::step::{Step, StepError, StepOutcome, record_event};

/// Governs and, if allowed, dispatches one step of a new run (a run with one step).
///
/// # Errors
///
/// [`StepError::Store`] when the control plane could not record the decision; nothing ran.
pub async fn run_step(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    principal: &Principal,
    skill_id: &str,
    request: &InvokeRequest,
) -> Result<StepOutcome, StepError> {
    let steps = vec![StepSpec {
        step_id: "step-1".to_owned(),
        skill: skill_id.to_owned(),
        input: serde_json::Value::Object(request.input.clone()),
    }];
    run_plan(runtime, control_plane, principal, steps).await
}

/// Starts a run of several steps, executed in order. The run stops at the first step that is
/// denied, fails or waits for approval; after the approval,
/// [`resume_approved`](crate::resume_approved) runs that step and carries on with the rest.
/// Returns the outcome of the last step that was attempted.
///
/// # Errors
///
/// [`StepError::Run`] when the plan is invalid (no steps, duplicate step ids) or a reference
/// cannot be resolved; [`StepError::Store`] when a decision cannot be recorded.
pub async fn run_plan(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    principal: &Principal,
    steps: Vec<StepSpec>,
) -> Result<StepOutcome, StepError> {
    let run_id = control_plane::trace::random_id("run");
    let root = TraceContext::new_root();
    let context = StepContext {
        run_id: run_id.clone(),
        step_id: steps.first().map(|step| step.step_id.clone()).unwrap_or_default(),
        traceparent: root.to_string(),
    };
    record_event(
        control_plane,
        &context,
        RunEventPayload::RunCreated {
            tenant: principal.tenant.clone(),
            principal: principal.to_string(),
            steps,
        },
    )
    .await?;
    continue_run(runtime, control_plane, principal, &run_id, &root, None).await
}

/// Runs the remaining steps of `run_id` in order, from its current step. `last` is the outcome
/// of the step just finished, returned when no step remains.
pub(crate) async fn continue_run(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    principal: &Principal,
    run_id: &str,
    parent: &TraceContext,
    mut last: Option<StepOutcome>,
) -> Result<StepOutcome, StepError> {
    loop {
        let view = control_plane.run(&principal.tenant, run_id).await?;
        if view.state.is_terminal() {
            break;
        }
        let Some(current) = view.current_step().cloned() else {
            break;
        };
        if current.state != RunState::Pending {
            // Waiting for approval or a human: resumed by the decision, not here.
            break;
        }
        let input = view.resolve_input(&current.spec.step_id).map_err(RunStoreError::from)?;
        let serde_json::Value::Object(input) = input else {
            return Err(StepError::Run(RunStoreError::Run(RunError::BadReference {
                run_id: run_id.to_owned(),
                step_id: current.spec.step_id.clone(),
                message: "the resolved input is not a JSON object".into(),
            })));
        };
        let step = Step::new(
            StepContext {
                run_id: run_id.to_owned(),
                step_id: current.spec.step_id.clone(),
                traceparent: parent.child().to_string(),
            },
            current.spec.skill.clone(),
            InvokeRequest::new(input),
        );
        let outcome = govern_step(runtime, control_plane, principal, step, None).await?;
        let completed = matches!(
            &outcome,
            StepOutcome::Dispatched { report, .. } if matches!(report.outcome, Outcome::Completed { .. })
        );
        last = Some(outcome);
        if !completed {
            break;
        }
    }
    last.ok_or_else(|| {
        StepError::Run(RunStoreError::Run(RunError::BadStep {
            run_id: run_id.to_owned(),
            message: "the run has no step left to run".into(),
        }))
    })
}
