//! The escalation ladder: how a governed step is dispatched and what happens when it keeps
//! failing.
//!
//! 1. the selected candidate, with retries (`backon`, seeded jitter), governed again before
//!    every retry;
//! 2. each fallback in turn (lower compatible versions, then the plugins the manifest names in
//!    `fallbacks`), each under its own verdict; a fallback the policy does not allow, or one
//!    more effectful than the candidate it replaces, is skipped;
//! 3. a human: an approval request carrying the failure history.
//!
//! Every attempt is audited (with its `rung`) and feeds the circuit breaker of its version.

use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::{
    ControlPlane, Decision, DispatchDetail, DispatchRecord, NewApproval, OutcomeKind, Principal, Quorum,
    ReviewDecisionKind, Role, RunEventPayload, SelectionRecord, StepResult, Verdict,
};
use plugin_abi::SideEffect;

use crate::breaker::{Admission, CircuitBreakers};
use crate::dispatch::DispatchRequest;
use crate::outcome::{DispatchReport, Outcome, RuntimeFailure, SkillFailure};
use crate::package::sha256_digest;
use crate::registry::LoadedSkill;
use crate::runtime::Runtime;
use crate::step::{Step, StepError, StepOutcome, record_event};

/// Obligations this runtime fulfils: it always records the output's digest in the audit log.
pub const SUPPORTED_OBLIGATIONS: &[&str] = &["record-output-digest"];

/// The audit record of an attempt on `rung`.
fn attempt_record(
    report: &DispatchReport,
    rung: &str,
    attempt: u32,
    max_attempts: u32,
    selection: Option<&SelectionRecord>,
) -> DispatchRecord {
    let detail = match &report.outcome {
        Outcome::Completed { output } => DispatchDetail::Output {
            output_digest: sha256_digest(serde_json::Value::Object(output.clone()).to_string().as_bytes()),
        },
        other => DispatchDetail::Failure(serde_json::to_value(other).unwrap_or_default()),
    };
    DispatchRecord {
        skill_id: report.skill_id.clone(),
        skill_version: Some(report.skill_version.clone()),
        digest: Some(report.digest.clone()),
        rung: Some(rung.to_owned()),
        attempt: Some(attempt),
        max_attempts: Some(max_attempts),
        selection: selection.cloned(),
        outcome: report.outcome.kind(),
        retryable: Some(report.outcome.is_retryable()),
        reason: None,
        detail: Some(detail),
        metrics: Some(report.metrics),
    }
}

/// The audit record of a dispatch refused before any instance existed.
pub(crate) fn refusal_record(report: &DispatchReport, selection: SelectionRecord) -> DispatchRecord {
    DispatchRecord {
        skill_id: report.skill_id.clone(),
        skill_version: Some(report.skill_version.clone()),
        digest: Some(report.digest.clone()),
        rung: None,
        attempt: None,
        max_attempts: None,
        selection: Some(selection),
        outcome: report.outcome.kind(),
        retryable: Some(report.outcome.is_retryable()),
        reason: None,
        detail: Some(DispatchDetail::Failure(
            serde_json::to_value(&report.outcome).unwrap_or_default(),
        )),
        metrics: None,
    }
}

/// An approval request by `principal` for `step` on `skill`, with the defaults of an
/// escalation: one reviewer, a day to answer, approve, deny or modify.
pub(crate) fn approval_for(
    control_plane: &ControlPlane,
    principal: &Principal,
    step: &Step,
    skill: &LoadedSkill,
    policy_version: String,
) -> NewApproval {
    NewApproval {
        requester: principal.clone(),
        acting_agent: principal.subject.clone(),
        run_id: step.context.run_id.clone(),
        step_id: step.context.step_id.clone(),
        traceparent: step.context.traceparent.clone(),
        skill: skill.summary.clone(),
        input_digest: step.input_digest().to_owned(),
        request_json: step.request_json(),
        policy_version,
        reviewer_role: Role::Reviewer,
        quorum: Quorum::default(),
        expires_at_ms: control_plane.now_ms() + control_plane::governance::DEFAULT_APPROVAL_TTL_SECS * 1_000,
        allowed_decisions: vec![
            ReviewDecisionKind::Approve,
            ReviewDecisionKind::Deny,
            ReviewDecisionKind::Modify,
        ],
        parent_id: None,
    }
}

/// The last rung of the escalation ladder: a human. Stores an approval request carrying the
/// failure history; approving it runs the step again. The run is marked escalated, and the
/// escalation counts against the agent's autonomy error budget.
async fn escalate(
    control_plane: &ControlPlane,
    principal: &Principal,
    step: Step,
    skill: &LoadedSkill,
    report: Option<DispatchReport>,
    history: Vec<String>,
) -> Result<StepOutcome, StepError> {
    // The request and the run's escalation to it are one transaction.
    let (approval, _) = control_plane
        .request_step_approval(
            &approval_for(
                control_plane,
                principal,
                &step,
                skill,
                control_plane.policy().version().to_owned(),
            ),
            |approval_id| {
                control_plane::RunEventDraft::of_step(
                    &step.context,
                    &step.lease,
                    RunEventPayload::StepEscalated {
                        step_id: step.context.step_id.clone(),
                        reason: format!("escalated to a human (request #{approval_id}): {}", history.join("; ")),
                    },
                )
            },
        )
        .await?;
    control_plane
        .record_outcome(principal, &skill.summary.id, StepResult::Escalation)
        .await?;
    let report = report.unwrap_or_else(|| {
        DispatchReport::not_dispatched(
            &skill.summary,
            Outcome::Failed {
                failure: RuntimeFailure::Host {
                    message: "not dispatched: the circuit is open".into(),
                },
            },
        )
    });
    Ok(StepOutcome::Escalated {
        context: step.context,
        report,
        history,
        approval: Box::new(approval),
    })
}

/// The attempts made on one candidate of the escalation ladder.
struct Attempts {
    /// The last attempt and its audit record; `None` when the circuit refused the first one.
    last: Option<(DispatchReport, DispatchRecord)>,
    /// Retries are exhausted (or the circuit is open) with the failure still retryable: the
    /// ladder moves to its next rung.
    exhausted: bool,
}

/// Why the ladder stopped before a result: governance denied a retry.
enum AttemptsStopped {
    Denied(Decision),
}

/// One rung of the ladder in progress.
struct Rung<'a> {
    skill: &'a LoadedSkill,
    decision: &'a Decision,
    request: &'a DispatchRequest,
    name: &'a str,
    selection: Option<&'a SelectionRecord>,
}

/// Attempts one candidate: retries retryable failures with seeded backoff, asking the control
/// plane again before every retry; every attempt is audited and feeds the circuit breaker. The
/// retry budget is the manifest's unless the verdict's `@max_attempts` overrides it.
async fn attempt_candidate(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    principal: &Principal,
    step: &Step,
    rung: Rung<'_>,
    history: &mut Vec<String>,
) -> Result<Result<Attempts, AttemptsStopped>, StepError> {
    let skill = rung.skill;
    let mut policy = skill.manifest.retry.clone();
    if let Some(max_attempts) = rung.decision.max_attempts {
        policy.max_attempts = max_attempts;
    }
    let delays = policy.delays(&step.context.run_id, &step.context.step_id);
    let total_deadline = Duration::from_millis(policy.total_deadline_ms);
    let started = Instant::now();
    let breakers = runtime.breakers();
    let key = CircuitBreakers::key(&skill.summary, &principal.tenant);
    let version = format!("{}@{}", skill.summary.id, skill.summary.version);
    // The input must match this candidate's own input schema (a fallback may declare another):
    // a skill never sees input its contract refuses, and no attempt is made or retried.
    if let Err(violation) = skill.check_input(&serde_json::Value::Object(step.request().input.clone())) {
        let report = DispatchReport::not_dispatched(
            &skill.summary,
            Outcome::SkillFailed {
                error: SkillFailure::InvalidInput(violation.to_string()),
            },
        );
        let audited = attempt_record(&report, rung.name, 1, policy.max_attempts, rung.selection);
        history.push(format!("{version}: not dispatched, {violation}"));
        return Ok(Ok(Attempts {
            last: Some((report, audited)),
            exhausted: false,
        }));
    }
    let mut attempt = 0_usize;
    loop {
        if breakers.admit(&key, Instant::now()) == Admission::Rejected {
            history.push(format!(
                "{version} attempt {}: not made, its circuit is open",
                attempt + 1
            ));
            return Ok(Ok(Attempts {
                last: None,
                exhausted: true,
            }));
        }
        let report = runtime.dispatch(skill, rung.request).await;
        let completed = matches!(report.outcome, Outcome::Completed { .. });
        breakers.record(&key, completed, Instant::now());
        let audited = attempt_record(
            &report,
            rung.name,
            u32::try_from(attempt + 1).unwrap_or(u32::MAX),
            policy.max_attempts,
            rung.selection,
        );
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
        control_plane
            .record_dispatch(principal, &step.context, &audited)
            .await?;
        tokio::time::sleep(delays[attempt]).await;
        attempt += 1;
        let again = control_plane
            .govern(
                principal,
                &step.context,
                &skill.summary.id,
                Some(&skill.summary),
                step.input_digest(),
            )
            .await?;
        if let Verdict::Deny { .. } = &again.verdict {
            return Ok(Err(AttemptsStopped::Denied(again)));
        }
    }
}

/// The next of `fallbacks` that its own verdict allows, each skipped one noted in `history`:
/// one more effectful than `ceiling` is skipped without asking, one the policy does not allow
/// after asking.
pub(crate) async fn next_allowed_fallback(
    control_plane: &ControlPlane,
    principal: &Principal,
    step: &Step,
    fallbacks: &mut impl Iterator<Item = Arc<LoadedSkill>>,
    ceiling: Option<SideEffect>,
    history: &mut Vec<String>,
) -> Result<Option<(Arc<LoadedSkill>, Decision)>, StepError> {
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
                &step.context,
                &candidate.summary.id,
                Some(&candidate.summary),
                step.input_digest(),
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

/// Dispatches a governed step through the escalation ladder (this module's three rungs) and
/// records how it ended: the dispatch's audit entry, the run event and the telemetry in one
/// transaction.
///
/// # Errors
///
/// [`StepError::UnsupportedObligation`] (audited as a refusal) when the verdict obliges
/// something this runtime cannot do; [`StepError`] when a record cannot be written.
#[expect(
    clippy::too_many_arguments,
    reason = "two call sites: the enforcement point and a resumed step"
)]
pub(crate) async fn dispatch_and_record(
    runtime: &Runtime,
    control_plane: &ControlPlane,
    principal: &Principal,
    step: Step,
    decision: Decision,
    skill: Arc<LoadedSkill>,
    fallbacks: Vec<Arc<LoadedSkill>>,
    selection: Option<SelectionRecord>,
) -> Result<StepOutcome, StepError> {
    if let Some(obligation) = decision
        .verdict
        .obligations()
        .iter()
        .find(|obligation| !SUPPORTED_OBLIGATIONS.contains(&obligation.0.as_str()))
    {
        let refused = DispatchRecord {
            skill_id: skill.summary.id.clone(),
            skill_version: None,
            digest: None,
            rung: None,
            attempt: None,
            max_attempts: None,
            selection: None,
            outcome: OutcomeKind::Refused,
            retryable: None,
            reason: Some(format!("unsupported obligation `{}`", obligation.0)),
            detail: None,
            metrics: None,
        };
        control_plane
            .record_dispatch(principal, &step.context, &refused)
            .await?;
        return Err(StepError::UnsupportedObligation(obligation.clone()));
    }
    let mut request = step.dispatch_request(&principal.tenant, decision.grants());
    let mut history: Vec<String> = Vec::new();
    let mut current = skill;
    let mut decision = decision;
    let mut rung = "primary".to_owned();
    let mut fallbacks = fallbacks.into_iter();
    let (report, audited) = loop {
        let attempts = attempt_candidate(
            runtime,
            control_plane,
            principal,
            &step,
            Rung {
                skill: &current,
                decision: &decision,
                request: &request,
                name: &rung,
                selection: selection.as_ref(),
            },
            &mut history,
        )
        .await?;
        let attempts = match attempts {
            Ok(attempts) => attempts,
            Err(AttemptsStopped::Denied(again)) => {
                record_event(
                    control_plane,
                    &step,
                    RunEventPayload::StepFailed {
                        step_id: step.context.step_id.clone(),
                        reason: "denied when governed again before a retry".into(),
                    },
                )
                .await?;
                return Ok(StepOutcome::Denied {
                    context: step.context,
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
            control_plane.record_dispatch(principal, &step.context, audited).await?;
        }
        // The next rung: a fallback candidate with a verdict of its own, else a human.
        let next = next_allowed_fallback(
            control_plane,
            principal,
            &step,
            &mut fallbacks,
            Some(current.summary.side_effect),
            &mut history,
        )
        .await?;
        match next {
            Some((candidate, verdict)) => {
                request.grants = verdict.grants().to_vec();
                rung = format!("fallback {}@{}", candidate.summary.id, candidate.summary.version);
                current = candidate;
                decision = verdict;
            }
            None => {
                let report = attempts.last.map(|(report, _)| report);
                return escalate(control_plane, principal, step, &current, report, history).await;
            }
        }
    };
    record_step_end(control_plane, principal, &step, &report, &audited).await?;
    // Only failures count against the autonomy error budget; successes need no write.
    if !matches!(report.outcome, Outcome::Completed { .. })
        && control_plane
            .record_outcome(principal, &current.summary.id, StepResult::Failure)
            .await?
    {
        tracing::warn!(agent = %principal, skill = %current.summary.id, "autonomy level demoted: error budget exceeded");
    }
    Ok(StepOutcome::Dispatched {
        context: step.context,
        decision,
        report,
    })
}

/// The dispatch's audit entry, the run event it causes and the telemetry record: one
/// transaction.
async fn record_step_end(
    control_plane: &ControlPlane,
    principal: &Principal,
    step: &Step,
    report: &DispatchReport,
    audited: &DispatchRecord,
) -> Result<(), StepError> {
    let payload = match &report.outcome {
        Outcome::Completed { output } => {
            let output = serde_json::Value::Object(output.clone());
            RunEventPayload::StepSucceeded {
                step_id: step.context.step_id.clone(),
                output_digest: sha256_digest(output.to_string().as_bytes()),
                output,
            }
        }
        other => RunEventPayload::StepFailed {
            step_id: step.context.step_id.clone(),
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
        "run_id": step.context.run_id,
        "skill_id": report.skill_id,
        "skill_version": report.skill_version,
        "digest": report.digest,
        "outcome": report.outcome.name(),
        "metrics": report.metrics,
    });
    control_plane
        .record_step_end(
            principal,
            &step.context,
            audited,
            Some((&step.lease, payload)),
            Some(telemetry),
        )
        .await?;
    Ok(())
}
