//! One governed step: ask the control plane, then dispatch, then record. The runtime asks before
//! every dispatch, including a step resumed after approval.

use control_plane::{
    ApprovalBinding, ApprovalError, ApprovalRequest, ApprovalStatus, ControlPlane, Decision, NewApproval, Obligation,
    Principal, RunEventPayload, RunState, RunStoreError, StepContext, StepSpec, StoreError, TraceContext, Verdict,
};
use plugin_abi::{EnvelopeError, InvokeRequest};
use sha2::{Digest, Sha256};

use crate::resilience::{Admission, CircuitBreakers};
use crate::runtime::{DispatchReport, DispatchRequest, Runtime};

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
}

impl StepError {
    /// Whether retrying can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            StepError::Store(error) => error.is_retryable(),
            StepError::Approval(error) => error.is_retryable(),
            StepError::Run(error) => error.is_retryable(),
            StepError::StoredRequest { .. } | StepError::SkillChanged { .. } | StepError::UnsupportedObligation(_) => {
                false
            }
        }
    }
}

/// `sha256:<hex>` of the input JSON text.
pub fn input_digest(input_json: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(input_json.as_bytes())))
}

/// Obligations this runtime fulfils: it always records the output's digest in the audit log.
pub const SUPPORTED_OBLIGATIONS: &[&str] = &["record-output-digest"];

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

/// Starts a run of several steps, executed in order. A step's input may reference an earlier
/// step's output (`{"$from": "<step id>", "pointer": "/json/pointer"}`), resolved when the step
/// starts. The run stops at the first step that is denied, fails or waits for approval; after
/// the approval, [`resume_approved`] runs that step and carries on with the rest. Returns the
/// outcome of the last step that was attempted.
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
async fn continue_run(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    principal: &Principal,
    run_id: &str,
    parent: &TraceContext,
    mut last: Option<StepOutcome>,
) -> Result<StepOutcome, StepError> {
    loop {
        let view = control_plane.store().run(run_id).await?;
        if view.state.is_terminal() {
            break;
        }
        let Some(step) = view.current_step().cloned() else {
            break;
        };
        if step.state != RunState::Pending {
            // Waiting for approval or a human: resumed by the decision, not here.
            break;
        }
        let input = view.resolve_input(&step.spec.step_id).map_err(RunStoreError::from)?;
        let serde_json::Value::Object(input) = input else {
            return Err(StepError::Run(RunStoreError::Run(
                control_plane::RunError::BadReference {
                    run_id: run_id.to_owned(),
                    step_id: step.spec.step_id.clone(),
                    message: "the resolved input is not a JSON object".into(),
                },
            )));
        };
        let context = StepContext {
            run_id: run_id.to_owned(),
            step_id: step.spec.step_id.clone(),
            traceparent: parent.child().to_string(),
        };
        let outcome = govern_step(
            runtime,
            control_plane,
            principal,
            context,
            &step.spec.skill,
            &InvokeRequest::new(input),
            None,
        )
        .await?;
        let completed = matches!(
            &outcome,
            StepOutcome::Dispatched { report, .. } if matches!(report.outcome, crate::runtime::Outcome::Completed { .. })
        );
        last = Some(outcome);
        if !completed {
            break;
        }
    }
    last.ok_or_else(|| {
        StepError::Run(RunStoreError::Run(control_plane::RunError::BadStep {
            run_id: run_id.to_owned(),
            message: "the run has no step left to run".into(),
        }))
    })
}

/// This process's node id for run events: `$AGENTD_NODE_ID`, else `node-<pid>`.
pub fn node_id() -> String {
    std::env::var("AGENTD_NODE_ID").unwrap_or_else(|_| format!("node-{}", std::process::id()))
}

async fn record_event(
    control_plane: &ControlPlane,
    context: &StepContext,
    payload: RunEventPayload,
) -> Result<(), StepError> {
    control_plane
        .store()
        .append_run_event(&context.run_id, &node_id(), &context.traceparent, payload)
        .await?;
    Ok(())
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

/// Governs a step and then dispatches it, asks for approval, or reports the denial.
async fn govern_step(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    principal: &Principal,
    context: StepContext,
    skill_id: &str,
    request: &InvokeRequest,
    parent_id: Option<i64>,
) -> Result<StepOutcome, StepError> {
    // The selector: highest loaded version whose circuit is not open, every rejection explained.
    let selection = crate::resilience::select(
        runtime,
        skill_id,
        &semver::VersionReq::STAR,
        None,
        runtime.breakers(),
        &principal.tenant,
    );
    let skill = selection
        .candidates
        .first()
        .cloned()
        .or_else(|| runtime.lookup(skill_id));
    let explanation = serde_json::to_value(&selection).unwrap_or_default();
    let input_json = request.input_json();
    let digest = input_digest(&input_json);
    let decision = start_and_govern(
        control_plane,
        principal,
        &context,
        skill_id,
        skill.as_ref().map(|s| &s.summary),
        &digest,
    )
    .await?;
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
            let approval = control_plane
                .request_approval(&NewApproval {
                    reviewer_role: *reviewer_role,
                    quorum: *quorum,
                    expires_at_ms: *expires_at_ms,
                    allowed_decisions: allowed_decisions.clone(),
                    parent_id,
                    ..approval_for(
                        principal,
                        &context,
                        &skill,
                        digest,
                        serde_json::to_string(request).unwrap_or_default(),
                        decision.policy_version.clone(),
                    )
                })
                .await?;
            record_event(
                control_plane,
                &context,
                RunEventPayload::StepAwaitingApproval {
                    step_id: context.step_id.clone(),
                    approval_id: approval.id,
                },
            )
            .await?;
            return Ok(StepOutcome::AwaitingApproval {
                context,
                decision,
                approval: Box::new(approval),
            });
        }
        _ => {
            record_event(
                control_plane,
                &context,
                RunEventPayload::StepFailed {
                    step_id: context.step_id.clone(),
                    reason: format!("governance verdict: {}", decision.verdict.name()),
                },
            )
            .await?;
            return Ok(StepOutcome::Denied { context, decision });
        }
    };
    // Fallbacks, in ladder order: the other usable versions (best first), then the plugins
    // the manifest names, each at its best usable version.
    let mut fallbacks: Vec<_> = selection
        .candidates
        .iter()
        .filter(|candidate| candidate.summary.digest != skill.summary.digest)
        .cloned()
        .collect();
    for fallback_id in &skill.manifest.fallbacks {
        let other = crate::resilience::select(
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
    let (mut skill, mut decision, mut explanation) = (skill, decision, explanation);
    let mut remaining = fallbacks.into_iter();
    while let Some(withheld) = decision.withheld_capabilities.first().cloned() {
        let reason = format!(
            "{}@{} requests `{withheld}`, which the policy did not grant",
            skill.summary.id, skill.summary.version
        );
        if let Some(rejected) = explanation
            .get_mut("rejected")
            .and_then(serde_json::Value::as_array_mut)
        {
            rejected.push(serde_json::json!({ "version": skill.summary.version.to_string(), "reason": reason }));
        }
        let mut skipped = Vec::new();
        let replacement = next_allowed_fallback(
            control_plane,
            principal,
            &context,
            &digest,
            &mut remaining,
            None,
            &mut skipped,
        )
        .await?;
        let Some((candidate, verdict)) = replacement else {
            let report = DispatchReport::not_dispatched(
                &skill,
                crate::runtime::Outcome::Failed {
                    failure: crate::runtime::RuntimeFailure::CapabilityDenied {
                        capability: withheld,
                        message: format!("not dispatched: {reason}, and no other candidate is allowed"),
                    },
                },
            );
            let refused = serde_json::json!({
                "skill_id": report.skill_id,
                "skill_version": report.skill_version,
                "digest": report.digest,
                "outcome": report.outcome.name(),
                "selection": explanation,
                "detail": report.outcome,
            });
            let node = node_id();
            let payload = RunEventPayload::StepFailed {
                step_id: context.step_id.clone(),
                reason: format!("capability-denied (not retryable): {reason}"),
            };
            control_plane
                .record_step_end(principal, &context, &refused, Some((&node, payload)), None)
                .await?;
            return Ok(StepOutcome::Dispatched {
                context,
                decision,
                report,
            });
        };
        skill = candidate;
        decision = verdict;
    }
    dispatch_and_record(
        runtime,
        control_plane,
        principal,
        context,
        decision,
        skill,
        remaining.collect(),
        input_json,
        Some(explanation),
    )
    .await
}

/// Records that the step started and governs it, in one transaction with the verdict's audit
/// entry and its governance record (the verdict is audited before anything runs).
async fn start_and_govern(
    control_plane: &ControlPlane,
    principal: &Principal,
    context: &StepContext,
    skill_id: &str,
    skill: Option<&plugin_abi::SkillSummary>,
    digest: &str,
) -> Result<Decision, StepError> {
    let node = node_id();
    let started = RunEventPayload::StepStarted {
        step_id: context.step_id.clone(),
    };
    // The step's start, its verdict (audited) and the governance record: one transaction.
    let decision = control_plane
        .govern_step(principal, context, skill_id, skill, digest, Some((&node, started)))
        .await?;
    Ok(decision)
}

/// Carries on the step an approval request was waiting on, after its decision:
///
/// - **approved**: governs it again as the requester, consumes the approval (bound to tenant,
///   run, step, skill, component digest, input digest and policy version) and dispatches;
/// - **modified**: governs the reviewer's edited request as a new step attempt (same run and
///   step): it may run, be denied, or wait for a new approval request linked to this one.
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
        .store()
        .approval(tenant, approval_id)
        .await?
        .ok_or(ApprovalError::NotFound { id: approval_id })?;
    let principal = approval.requester_principal();
    let parent: Option<TraceContext> = approval.traceparent.parse().ok();
    let context = StepContext {
        run_id: approval.run_id.clone(),
        step_id: approval.step_id.clone(),
        traceparent: parent
            .map_or_else(TraceContext::new_root, |parent| parent.child())
            .to_string(),
    };
    if approval.status == ApprovalStatus::Modified {
        let edited = approval.modified_request_json.as_deref().unwrap_or_default();
        let request = InvokeRequest::parse(edited).map_err(|source| StepError::StoredRequest {
            id: approval_id,
            source,
        })?;
        let parent_trace: TraceContext = context.traceparent.parse().unwrap_or_else(|_| TraceContext::new_root());
        let outcome = govern_step(
            runtime,
            control_plane,
            &principal,
            context,
            &approval.skill.id,
            &request,
            Some(approval_id),
        )
        .await?;
        return continue_run(
            runtime,
            control_plane,
            &principal,
            &approval.run_id,
            &parent_trace,
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
    let request = InvokeRequest::parse(&approval.request_json).map_err(|source| StepError::StoredRequest {
        id: approval_id,
        source,
    })?;
    let skill = runtime
        .lookup_digest(&approval.skill.id, &approval.skill.digest)
        .ok_or_else(|| StepError::SkillChanged {
            id: approval_id,
            skill: approval.skill.id.clone(),
            digest: approval.skill.digest.clone(),
        })?;
    let input_json = request.input_json();
    let digest = input_digest(&input_json);
    let decision = start_and_govern(
        control_plane,
        &principal,
        &context,
        &approval.skill.id,
        Some(&skill.summary),
        &digest,
    )
    .await?;
    if let Verdict::Deny { .. } = &decision.verdict {
        record_event(
            control_plane,
            &context,
            RunEventPayload::StepFailed {
                step_id: context.step_id.clone(),
                reason: "denied when governed again after approval".into(),
            },
        )
        .await?;
        return Ok(StepOutcome::Denied { context, decision });
    }
    control_plane
        .store()
        .consume_approval(
            approval_id,
            &ApprovalBinding {
                tenant: tenant.to_owned(),
                run_id: approval.run_id.clone(),
                step_id: approval.step_id.clone(),
                skill_id: skill.summary.id.clone(),
                skill_digest: skill.summary.digest.clone(),
                input_digest: digest,
                policy_version: decision.policy_version.clone(),
            },
            control_plane::now_ms(),
        )
        .await?;
    let parent_trace: TraceContext = context.traceparent.parse().unwrap_or_else(|_| TraceContext::new_root());
    let outcome = dispatch_and_record(
        runtime,
        control_plane,
        &principal,
        context,
        decision,
        skill,
        Vec::new(),
        input_json,
        None,
    )
    .await?;
    // Carry on with the run's remaining steps.
    continue_run(
        runtime,
        control_plane,
        &principal,
        &approval.run_id,
        &parent_trace,
        Some(outcome),
    )
    .await
}

/// An approval request by `principal` for the step in `context`, with the defaults of an
/// escalation: one reviewer, a day to answer, approve, deny or modify.
fn approval_for(
    principal: &Principal,
    context: &StepContext,
    skill: &crate::runtime::LoadedSkill,
    input_digest: String,
    request_json: String,
    policy_version: String,
) -> NewApproval {
    NewApproval {
        requester: principal.clone(),
        acting_agent: principal.subject.clone(),
        run_id: context.run_id.clone(),
        step_id: context.step_id.clone(),
        traceparent: context.traceparent.clone(),
        skill: skill.summary.clone(),
        input_digest,
        request_json,
        policy_version,
        reviewer_role: control_plane::Role::Reviewer,
        quorum: control_plane::Quorum::default(),
        expires_at_ms: control_plane::now_ms() + control_plane::governance::DEFAULT_APPROVAL_TTL_SECS * 1_000,
        allowed_decisions: vec![
            control_plane::ReviewDecisionKind::Approve,
            control_plane::ReviewDecisionKind::Deny,
            control_plane::ReviewDecisionKind::Modify,
        ],
        parent_id: None,
    }
}

/// The last rung of the escalation ladder: a human. Stores an approval request (reviewer role,
/// one approval, a day to answer) carrying the failure history; approving it runs the step
/// again. The run is marked escalated, and the escalation counts against the agent's autonomy
/// error budget.
async fn escalate(
    control_plane: &ControlPlane,
    principal: &Principal,
    context: StepContext,
    skill: &crate::runtime::LoadedSkill,
    request: &DispatchRequest,
    report: Option<DispatchReport>,
    history: Vec<String>,
) -> Result<StepOutcome, StepError> {
    let invoke = InvokeRequest::parse(&format!(
        "{{\"schema_version\":\"{}\",\"input\":{}}}",
        plugin_abi::INVOKE_SCHEMA_V1,
        request.input_json
    ))
    .map_err(|source| StepError::StoredRequest { id: 0, source })?;
    let approval = control_plane
        .request_approval(&approval_for(
            principal,
            &context,
            skill,
            input_digest(&request.input_json),
            serde_json::to_string(&invoke).unwrap_or_default(),
            control_plane.policy().version().to_owned(),
        ))
        .await?;
    record_event(
        control_plane,
        &context,
        RunEventPayload::StepEscalated {
            step_id: context.step_id.clone(),
            reason: format!(
                "escalated to a human (request #{}): {}",
                approval.id,
                history.join("; ")
            ),
        },
    )
    .await?;
    control_plane
        .record_outcome(principal, &skill.summary.id, "escalation")
        .await?;
    let report = report.unwrap_or_else(|| {
        DispatchReport::not_dispatched(
            skill,
            crate::runtime::Outcome::Failed {
                failure: crate::runtime::RuntimeFailure::Host {
                    message: "not dispatched: the circuit is open".into(),
                },
            },
        )
    });
    Ok(StepOutcome::Escalated {
        context,
        report,
        history,
        approval: Box::new(approval),
    })
}

/// The attempts made on one candidate of the escalation ladder.
struct Attempts {
    /// The last attempt and its audit record; `None` when the circuit refused the first one.
    last: Option<(DispatchReport, serde_json::Value)>,
    /// Retries are exhausted (or the circuit is open) with the failure still retryable: the
    /// ladder moves to its next rung.
    exhausted: bool,
}

/// Why the ladder stopped before a result: governance denied a retry.
enum AttemptsStopped {
    Denied(Decision),
}

/// Attempts one candidate: retries retryable failures with seeded backoff (`backon`), asking the
/// control plane again before every retry; every attempt is audited and feeds the circuit
/// breaker. The retry budget is the manifest's unless the verdict's `@max_attempts` overrides it.
#[expect(
    clippy::too_many_arguments,
    reason = "one private call site, the ladder in dispatch_and_record"
)]
async fn attempt_candidate(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    principal: &Principal,
    context: &StepContext,
    skill: &crate::runtime::LoadedSkill,
    decision: &Decision,
    request: &DispatchRequest,
    rung: &str,
    selection: &Option<serde_json::Value>,
    history: &mut Vec<String>,
) -> Result<Result<Attempts, AttemptsStopped>, StepError> {
    let mut policy = skill.manifest.retry.clone();
    if let Some(max_attempts) = decision.max_attempts {
        policy.max_attempts = max_attempts;
    }
    let digest = input_digest(&request.input_json);
    let delays = policy.delays(&context.run_id, &context.step_id);
    let total_deadline = std::time::Duration::from_millis(policy.total_deadline_ms);
    let started = std::time::Instant::now();
    let breakers = runtime.breakers();
    let key = CircuitBreakers::key(skill, &principal.tenant);
    let version = format!("{}@{}", skill.summary.id, skill.summary.version);
    let mut attempt = 0_usize;
    loop {
        if breakers.admit(&key, std::time::Instant::now()) == Admission::Rejected {
            history.push(format!(
                "{version} attempt {}: not made, its circuit is open",
                attempt + 1
            ));
            return Ok(Ok(Attempts {
                last: None,
                exhausted: true,
            }));
        }
        let report = runtime.dispatch(skill, request).await;
        let completed = matches!(report.outcome, crate::runtime::Outcome::Completed { .. });
        breakers.record(&key, completed, std::time::Instant::now());
        let audited = serde_json::json!({
            "skill_id": report.skill_id,
            "skill_version": report.skill_version,
            "digest": report.digest,
            "rung": rung,
            "attempt": attempt + 1,
            "max_attempts": policy.max_attempts,
            "selection": selection,
            "outcome": report.outcome.name(),
            "retryable": report.outcome.is_retryable(),
            "detail": match &report.outcome {
                crate::runtime::Outcome::Completed { output } => serde_json::json!({ "output_digest": input_digest(&serde_json::Value::Object(output.clone()).to_string()) }),
                other => serde_json::to_value(other).unwrap_or_default(),
            },
            "metrics": report.metrics,
        });
        if completed || !policy.should_retry(&report.outcome) {
            return Ok(Ok(Attempts {
                last: Some((report, audited)),
                exhausted: false,
            }));
        }
        history.push(format!("{version} attempt {}: {}", attempt + 1, report.outcome.name()));
        let out_of_budget = match delays.get(attempt).copied() {
            None => true,
            Some(delay) => started.elapsed() + delay > total_deadline,
        };
        if out_of_budget {
            return Ok(Ok(Attempts {
                last: Some((report, audited)),
                exhausted: true,
            }));
        }
        // This attempt will be retried: record it now; the last one is recorded with the
        // step's end (or the escalation).
        control_plane.record_dispatch(principal, context, &audited).await?;
        tokio::time::sleep(delays[attempt]).await;
        attempt += 1;
        let again = control_plane
            .govern(principal, context, &skill.summary.id, Some(&skill.summary), &digest)
            .await?;
        if let Verdict::Deny { .. } = &again.verdict {
            return Ok(Err(AttemptsStopped::Denied(again)));
        }
    }
}

/// The next of `fallbacks` that its own verdict allows, each skipped one noted in `history`:
/// one more effectful than `ceiling` is skipped without asking, one the policy does not allow
/// after asking.
async fn next_allowed_fallback(
    control_plane: &ControlPlane,
    principal: &Principal,
    context: &StepContext,
    input_digest: &str,
    fallbacks: &mut impl Iterator<Item = std::sync::Arc<crate::runtime::LoadedSkill>>,
    ceiling: Option<plugin_abi::SideEffect>,
    history: &mut Vec<String>,
) -> Result<Option<(std::sync::Arc<crate::runtime::LoadedSkill>, Decision)>, StepError> {
    for candidate in fallbacks {
        let name = format!("{}@{}", candidate.summary.id, candidate.summary.version);
        if let Some(ceiling) = ceiling
            && candidate.summary.side_effect > ceiling
        {
            history.push(format!(
                "fallback {name} skipped: it is {}, more than {ceiling}",
                candidate.summary.side_effect
            ));
            continue;
        }
        let verdict = control_plane
            .govern(
                principal,
                context,
                &candidate.summary.id,
                Some(&candidate.summary),
                input_digest,
            )
            .await?;
        if !matches!(verdict.verdict, Verdict::Allow { .. }) {
            history.push(format!(
                "fallback {name} skipped: governance said {}",
                verdict.verdict.name()
            ));
            continue;
        }
        history.push(format!("falling back to {name}"));
        return Ok(Some((candidate, verdict)));
    }
    Ok(None)
}

/// Dispatches a governed step through the escalation ladder and records how it ended:
///
/// 1. the selected candidate, with retries;
/// 2. each fallback in turn (lower compatible versions, then the plugins the manifest names in
///    `fallbacks`), each governed on its own: a fallback the policy does not allow is skipped;
/// 3. a human: an approval request carrying the failure history.
///
/// Every rung is in the audit log (`rung` on each dispatch record) and the history.
#[expect(
    clippy::too_many_arguments,
    reason = "two private call sites: a new step and a resumed one"
)]
async fn dispatch_and_record(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    principal: &Principal,
    context: StepContext,
    decision: Decision,
    skill: std::sync::Arc<crate::runtime::LoadedSkill>,
    fallbacks: Vec<std::sync::Arc<crate::runtime::LoadedSkill>>,
    input_json: String,
    selection: Option<serde_json::Value>,
) -> Result<StepOutcome, StepError> {
    if let Some(obligation) = decision
        .verdict
        .obligations()
        .iter()
        .find(|obligation| !SUPPORTED_OBLIGATIONS.contains(&obligation.0.as_str()))
    {
        let refused = serde_json::json!({
            "skill_id": skill.summary.id,
            "outcome": "refused",
            "reason": format!("unsupported obligation `{}`", obligation.0),
        });
        control_plane.record_dispatch(principal, &context, &refused).await?;
        return Err(StepError::UnsupportedObligation(obligation.clone()));
    }
    let digest = input_digest(&input_json);
    let mut request = DispatchRequest {
        run_id: context.run_id.clone(),
        step_id: context.step_id.clone(),
        traceparent: context.traceparent.clone(),
        idempotency_key: format!("{}/{}/{}", principal.tenant, context.run_id, context.step_id),
        input_json,
        tenant: principal.tenant.clone(),
        grants: decision.grants(),
    };
    let mut history: Vec<String> = Vec::new();
    let mut current = skill;
    let mut decision = decision;
    let mut rung = "primary".to_owned();
    let mut fallbacks = fallbacks.into_iter();
    let (report, audited) = loop {
        let attempts = match attempt_candidate(
            runtime,
            control_plane,
            principal,
            &context,
            &current,
            &decision,
            &request,
            &rung,
            &selection,
            &mut history,
        )
        .await?
        {
            Ok(attempts) => attempts,
            Err(AttemptsStopped::Denied(again)) => {
                record_event(
                    control_plane,
                    &context,
                    RunEventPayload::StepFailed {
                        step_id: context.step_id.clone(),
                        reason: "denied when governed again before a retry".into(),
                    },
                )
                .await?;
                return Ok(StepOutcome::Denied {
                    context,
                    decision: again,
                });
            }
        };
        if !attempts.exhausted {
            let Some(last) = attempts.last else {
                unreachable!("a candidate that was not exhausted made an attempt");
            };
            break last;
        }
        if let Some((_, audited)) = &attempts.last {
            control_plane.record_dispatch(principal, &context, audited).await?;
        }
        // The next rung: a fallback candidate with a verdict of its own, else a human.
        let next = next_allowed_fallback(
            control_plane,
            principal,
            &context,
            &digest,
            &mut fallbacks,
            Some(current.summary.side_effect),
            &mut history,
        )
        .await?;
        match next {
            Some((candidate, verdict)) => {
                request.grants = verdict.grants();
                rung = format!("fallback {}@{}", candidate.summary.id, candidate.summary.version);
                current = candidate;
                decision = verdict;
            }
            None => {
                let report = attempts.last.map(|(report, _)| report);
                return escalate(control_plane, principal, context, &current, &request, report, history).await;
            }
        }
    };

    let payload = match &report.outcome {
        crate::runtime::Outcome::Completed { output } => {
            let output = serde_json::Value::Object(output.clone());
            RunEventPayload::StepSucceeded {
                step_id: context.step_id.clone(),
                output_digest: input_digest(&output.to_string()),
                output,
            }
        }
        other => RunEventPayload::StepFailed {
            step_id: context.step_id.clone(),
            reason: format!(
                "{} ({})",
                other.name(),
                if other.is_retryable() {
                    "retryable"
                } else {
                    "not retryable"
                }
            ),
        },
    };
    let telemetry = serde_json::json!({
        "run_id": context.run_id,
        "skill_id": report.skill_id,
        "skill_version": report.skill_version,
        "digest": report.digest,
        "outcome": report.outcome.name(),
        "metrics": report.metrics,
    });
    // The dispatch's audit entry, the run event and the telemetry record: one transaction.
    let node = node_id();
    control_plane
        .record_step_end(principal, &context, &audited, Some((&node, payload)), Some(telemetry))
        .await?;
    // Only failures count against the autonomy error budget; successes need no write.
    if !matches!(report.outcome, crate::runtime::Outcome::Completed { .. })
        && control_plane
            .record_outcome(principal, &current.summary.id, "failure")
            .await?
    {
        tracing::warn!(agent = %principal, skill = %current.summary.id, "autonomy level demoted: error budget exceeded");
    }
    Ok(StepOutcome::Dispatched {
        context,
        decision,
        report,
    })
}
