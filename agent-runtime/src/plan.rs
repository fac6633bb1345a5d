//! Runs: a plan of steps executed in order, each governed, each recorded as run events. A
//! step's input may reference an earlier step's output (`{"$from": "<step id>", "pointer":
//! "/json/pointer"}`), resolved when the step starts.

use control_plane::{
    ControlPlane, Lease, Principal, RequestKey, RunCreation, RunError, RunState, RunStoreError, StepContext, StepSpec,
    TraceContext,
};
use plugin_abi::InvokeRequest;

use crate::outcome::Outcome;
use crate::pep::govern_step;
use crate::runtime::Runtime;
use crate::step::{Begin, Step, StepError, StepOutcome, node_id, with_lease};

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
    let lease = control_plane
        .create_run(&run_id, principal, steps, &root.to_string(), &node_id())
        .await?;
    continue_run(runtime, control_plane, principal, &root, lease, None).await
}

/// What [`start_plan`] did.
#[derive(Debug)]
pub enum Started {
    /// A new run was created and driven as far as it goes now.
    Ran(Box<StepOutcome>),
    /// The idempotency key was used before with the same request: its run is the answer and
    /// nothing ran again.
    Replayed {
        /// The earlier run.
        run_id: String,
    },
    /// The idempotency key was used before with another request: nothing was created.
    KeyConflict {
        /// The run the key names.
        run_id: String,
    },
}

/// [`run_plan`] under an optional idempotency key (IETF httpapi-idempotency-key draft): the key
/// is bound to the run in the transaction that creates it, so a client retrying after a lost
/// answer gets the run it started, never a second one.
///
/// # Errors
///
/// As [`run_plan`].
pub async fn start_plan(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    principal: &Principal,
    steps: Vec<StepSpec>,
    key: Option<&RequestKey>,
) -> Result<Started, StepError> {
    let run_id = control_plane::trace::random_id("run");
    let root = TraceContext::new_root();
    let created = control_plane
        .create_run_keyed(&run_id, principal, steps, &root.to_string(), &node_id(), key)
        .await?;
    Ok(match created {
        RunCreation::Created(lease) => Started::Ran(Box::new(
            continue_run(runtime, control_plane, principal, &root, lease, None).await?,
        )),
        RunCreation::Replayed { run_id } => Started::Replayed { run_id },
        RunCreation::KeyConflict { run_id } => Started::KeyConflict { run_id },
    })
}

/// Runs the remaining steps of `lease`'s run in order, from its current step, under the lease
/// (renewed while it works). `last` is the outcome of the step just finished, returned when no
/// step remains. A run past its deadline is timed out instead of starting another step.
///
/// # Errors
///
/// [`StepError::TimedOut`] when the run's deadline passed; [`StepError::Run`] when a
/// reference cannot be resolved or the lease was lost; [`StepError::Store`].
pub(crate) async fn continue_run(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    principal: &Principal,
    parent: &TraceContext,
    lease: Lease,
    mut last: Option<StepOutcome>,
) -> Result<StepOutcome, StepError> {
    let run_id = lease.run_id.clone();
    loop {
        let view = control_plane.run(&principal.tenant, &run_id).await?;
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
        if let Some(deadline_ms) = view.deadline_ms
            && deadline_ms <= control_plane.now_ms()
        {
            control_plane.time_out_run(&lease, &parent.to_string()).await?;
            return Err(StepError::TimedOut { run_id, deadline_ms });
        }
        let input = view.resolve_input(&current.spec.step_id).map_err(RunStoreError::from)?;
        let serde_json::Value::Object(input) = input else {
            return Err(StepError::Run(RunStoreError::Run(RunError::BadReference {
                run_id: run_id.clone(),
                step_id: current.spec.step_id.clone(),
                message: "the resolved input is not a JSON object".into(),
            })));
        };
        let step = Step::new(
            StepContext {
                run_id: run_id.clone(),
                step_id: current.spec.step_id.clone(),
                traceparent: parent.child().to_string(),
            },
            current.spec.skill.clone(),
            InvokeRequest::new(input),
            lease.clone(),
            Begin::Fresh,
        );
        let outcome = with_lease(
            control_plane,
            &lease,
            govern_step(runtime, control_plane, principal, step),
        )
        .await?;
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
            run_id: run_id.clone(),
            message: "the run has no step left to run".into(),
        }))
    })
}
