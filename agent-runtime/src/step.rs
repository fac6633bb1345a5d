//! The typed step that travels the pipeline (plan → policy enforcement point → ladder →
//! dispatch), how a step ends ([`StepOutcome`], a value) and why it could not be carried
//! through ([`StepError`]).
//!
//! A [`Step`] holds its request as a parsed [`InvokeRequest`]; the input's canonical JSON text
//! and its digest are computed once, when the step is made, and every later stage (the verdict,
//! an approval request, the dispatch, an escalation) reads them from the step.

use std::future::Future;

use control_plane::{
    ApprovalError, ApprovalRequest, ApprovalStatus, Decision, Lease, Obligation, RunStoreError, StepContext, StoreError,
};
use plugin_abi::{Capability, EnvelopeError, InvokeRequest};

use crate::dispatch::DispatchRequest;
use crate::outcome::DispatchReport;
use crate::package::sha256_digest;

/// One step of a run: where it belongs, the skill asked for, its input, and the claim on the
/// run under which its events are written.
#[derive(Debug, Clone)]
pub struct Step {
    /// Run, step and trace context.
    pub context: StepContext,
    /// The skill id asked for.
    pub skill_id: String,
    /// The claim on the run: every run event of this step is written under it (fenced).
    pub lease: Lease,
    /// How the step begins.
    pub begin: Begin,
    request: InvokeRequest,
    input_json: String,
    input_digest: String,
}

/// How a step begins, which says what its starting transaction records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// A step of the plan starts: `step-started`.
    Fresh,
    /// A step resumes under approval request `approval_id` (approved, or modified with this
    /// step's input): `step-started` consuming the approval in the same transaction.
    Resume {
        /// The approval.
        approval_id: i64,
    },
    /// A recovery dispatches a step again whose owner vanished after it started:
    /// `step-recovered`, same idempotency key.
    Recover {
        /// The owner whose lease lapsed.
        previous_owner: String,
    },
}

impl Step {
    /// The step `context` asking `skill_id` to run on `request`, under `lease`, beginning as
    /// `begin` says.
    pub fn new(
        context: StepContext,
        skill_id: impl Into<String>,
        request: InvokeRequest,
        lease: Lease,
        begin: Begin,
    ) -> Self {
        let input_json = request.input_json();
        let input_digest = sha256_digest(input_json.as_bytes());
        Step {
            context,
            skill_id: skill_id.into(),
            lease,
            begin,
            request,
            input_json,
            input_digest,
        }
    }

    /// The request, as parsed.
    pub fn request(&self) -> &InvokeRequest {
        &self.request
    }

    /// The input object as compact JSON text: what the guest is given.
    pub fn input_json(&self) -> &str {
        &self.input_json
    }

    /// `sha256:<hex>` of [`Step::input_json`]: what verdicts and approvals bind.
    pub fn input_digest(&self) -> &str {
        &self.input_digest
    }

    /// The full `agentd.invoke.v1` request as JSON text, stored with an approval request so the
    /// step can resume after the decision.
    pub fn request_json(&self) -> String {
        serde_json::to_string(&self.request).unwrap_or_default()
    }

    /// The idempotency key of the step in `tenant`: stable across retries, fallbacks and
    /// resumption, so effects can be deduplicated.
    pub fn idempotency_key(&self, tenant: &str) -> String {
        format!("{tenant}/{}/{}", self.context.run_id, self.context.step_id)
    }

    /// The invocation of this step in `tenant` with `grants`.
    pub fn dispatch_request(&self, tenant: &str, grants: &[Capability]) -> DispatchRequest {
        DispatchRequest {
            run_id: self.context.run_id.clone(),
            step_id: self.context.step_id.clone(),
            traceparent: self.context.traceparent.clone(),
            idempotency_key: self.idempotency_key(tenant),
            input_json: self.input_json.clone(),
            tenant: tenant.to_owned(),
            grants: grants.to_vec(),
        }
    }
}

/// How a step ended. Verdicts are values: a denial is an outcome, not an error.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum StepOutcome {
    /// Governance allowed it and it ran.
    Dispatched {
        /// The step.
        context: StepContext,
        /// The verdict it ran under.
        decision: Decision,
        /// What happened.
        report: DispatchReport,
    },
    /// Governance denied it.
    Denied {
        /// The step.
        context: StepContext,
        /// The verdict.
        decision: Decision,
    },
    /// It kept failing with retryable errors (or its circuit is open): a human was asked, through
    /// an approval request whose approval runs the step again.
    Escalated {
        /// The step.
        context: StepContext,
        /// The last attempt.
        report: DispatchReport,
        /// Every failed attempt, oldest first.
        history: Vec<String>,
        /// The escalation request.
        approval: Box<ApprovalRequest>,
    },
    /// It waits for a reviewer.
    AwaitingApproval {
        /// The step.
        context: StepContext,
        /// The verdict.
        decision: Decision,
        /// The stored request.
        approval: Box<ApprovalRequest>,
    },
}

/// Why a step could not be carried through. Each says whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The control plane's store failed; the step did not run (fail closed).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An approval could not be used.
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    /// The run's event log refused a transition, or could not be written.
    #[error(transparent)]
    Run(#[from] RunStoreError),
    /// A stored request no longer parses.
    #[error("the stored request of approval {id} is invalid: {source}")]
    StoredRequest {
        /// Approval id.
        id: i64,
        /// What is wrong.
        source: EnvelopeError,
    },
    /// The verdict carries an obligation this runtime cannot fulfil, so it did not dispatch.
    #[error("the verdict obliges `{}`, which this runtime cannot fulfil; the step did not run", .0 .0)]
    UnsupportedObligation(Obligation),
    /// Another owner holds the run under a live lease (another process resuming or running
    /// it). Retryable: after its lease lapses a recovery pass takes the run over.
    #[error("run `{run_id}` is being worked on by another owner; retry after its lease lapses")]
    RunHeld {
        /// The run.
        run_id: String,
    },
    /// The run no longer waits on the approval being resumed (it was resumed already, or
    /// finished).
    #[error("run `{run_id}` no longer waits on approval #{id}: it is {state}; nothing was resumed")]
    NotWaiting {
        /// Approval id.
        id: i64,
        /// The run.
        run_id: String,
        /// Where the run stands.
        state: control_plane::RunState,
    },
    /// The run's deadline passed: `run-timed-out` was recorded and no further step starts.
    #[error("run `{run_id}` passed its deadline ({deadline_ms} ms since the Unix epoch) and timed out")]
    TimedOut {
        /// The run.
        run_id: String,
        /// Its deadline.
        deadline_ms: i64,
    },
    /// The approved component is no longer loaded.
    #[error("approval {id} was granted for {skill} with digest {digest}, which is no longer loaded")]
    SkillChanged {
        /// Approval id.
        id: i64,
        /// Skill id.
        skill: String,
        /// The approved digest.
        digest: String,
    },
    /// A reviewer's answer was recorded, but the step it released could not resume.
    #[error("the answer to approval #{id} was recorded ({status}), but the step could not resume: {source}")]
    NotResumed {
        /// Approval id.
        id: i64,
        /// The status the answer left the request in.
        status: ApprovalStatus,
        /// Why the step did not resume.
        source: Box<StepError>,
    },
}

impl StepError {
    /// Whether retrying can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            StepError::Store(error) => error.is_retryable(),
            StepError::Approval(error) => error.is_retryable(),
            StepError::Run(error) => error.is_retryable(),
            StepError::NotResumed { source, .. } => source.is_retryable(),
            StepError::RunHeld { .. } => true,
            StepError::NotWaiting { .. } | StepError::TimedOut { .. } => false,
            StepError::StoredRequest { .. } | StepError::SkillChanged { .. } | StepError::UnsupportedObligation(_) => {
                false
            }
        }
    }
}

/// This process's node id for run events: `$AGENTD_NODE_ID`, else `node-<pid>`.
pub fn node_id() -> String {
    std::env::var("AGENTD_NODE_ID").unwrap_or_else(|_| format!("node-{}", std::process::id()))
}

/// Appends `payload` to the run of `step`, under its lease.
pub(crate) async fn record_event(
    control_plane: &control_plane::ControlPlane,
    step: &Step,
    payload: control_plane::RunEventPayload,
) -> Result<(), StepError> {
    control_plane
        .append_run_event(control_plane::RunEventDraft::of_step(
            &step.context,
            &step.lease,
            payload,
        ))
        .await?;
    Ok(())
}

/// Runs `work` while renewing `lease` every third of the lease TTL, so a long dispatch keeps
/// its run; renewal stops quietly once the lease is gone (the run was released, taken over or
/// cancelled: the work's next write is refused then).
pub(crate) async fn with_lease<F: Future>(
    control_plane: &control_plane::ControlPlane,
    lease: &Lease,
    work: F,
) -> F::Output {
    let period = std::time::Duration::from_millis(u64::try_from(control_plane.lease_ttl_ms() / 3).unwrap_or(1).max(1));
    let renew = async {
        loop {
            tokio::time::sleep(period).await;
            match control_plane.renew_lease(lease).await {
                Ok(_) => {}
                Err(error) if error.is_retryable() => {}
                Err(_) => break,
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::pin!(work);
    tokio::select! {
        output = &mut work => output,
        () = renew => unreachable!("renewal never finishes"),
    }
}
