//! Deriving a run's state from its events ([`reduce`]), resolving step input references, and
//! the append rule ([`next_event`]).

use super::{
    RUN_EVENT_SCHEMA_VERSION, RunError, RunEvent, RunEventDraft, RunEventPayload, RunState, RunView, StepView,
};

impl RunView {
    fn step_index(&self, step_id: &str) -> Result<usize, RunError> {
        self.steps
            .iter()
            .position(|step| step.spec.step_id == step_id)
            .ok_or_else(|| RunError::BadStep {
                run_id: self.run_id.clone(),
                message: format!("no step `{step_id}`"),
            })
    }

    /// The step that is not yet finished, if any (steps run in order).
    pub fn current_step(&self) -> Option<&StepView> {
        self.steps.iter().find(|step| step.state != RunState::Succeeded)
    }

    fn transition(&mut self, event: &'static str, to: RunState) -> Result<(), RunError> {
        if !self.state.can_become(to) {
            return Err(RunError::IllegalTransition {
                run_id: self.run_id.clone(),
                event,
                subject: "the run".into(),
                from: self.state,
                to,
            });
        }
        self.state = to;
        Ok(())
    }

    /// The current step must be `step_id`.
    fn require_current(&self, step_id: &str) -> Result<usize, RunError> {
        let index = self.step_index(step_id)?;
        let current = self.steps.iter().position(|step| step.state != RunState::Succeeded);
        if current != Some(index) {
            return Err(RunError::BadStep {
                run_id: self.run_id.clone(),
                message: format!("step `{step_id}` is not the current step; steps run in order"),
            });
        }
        Ok(index)
    }

    fn apply(&mut self, payload: &RunEventPayload) -> Result<(), RunError> {
        let event = payload.name();
        match payload {
            RunEventPayload::RunCreated { .. } => {
                return Err(RunError::BadCreation {
                    run_id: self.run_id.clone(),
                    message: "the run already exists".into(),
                });
            }
            RunEventPayload::StepStarted { step_id, approval_id } => {
                let index = self.require_current(step_id)?;
                let step_state = self.steps[index].state;
                if !matches!(
                    step_state,
                    RunState::Pending | RunState::AwaitingApproval | RunState::Escalated
                ) {
                    return Err(RunError::IllegalTransition {
                        run_id: self.run_id.clone(),
                        event,
                        subject: format!("step {step_id}"),
                        from: step_state,
                        to: RunState::Running,
                    });
                }
                self.transition(event, RunState::Running)?;
                self.steps[index].state = RunState::Running;
                self.steps[index].started_with_approval = *approval_id;
            }
            RunEventPayload::StepRecovered { step_id, .. } => {
                // The step stays running: only its owner changed.
                let index = self.require_current(step_id)?;
                self.require_step_running(index, event, RunState::Running)?;
                self.transition(event, RunState::Running)?;
            }
            RunEventPayload::StepAwaitingApproval { step_id, approval_id } => {
                let index = self.require_current(step_id)?;
                self.require_step_running(index, event, RunState::AwaitingApproval)?;
                self.transition(event, RunState::AwaitingApproval)?;
                self.steps[index].state = RunState::AwaitingApproval;
                self.steps[index].approval_id = Some(*approval_id);
            }
            RunEventPayload::StepSucceeded {
                step_id,
                output_digest,
                output,
            } => {
                let index = self.require_current(step_id)?;
                self.require_step_running(index, event, RunState::Succeeded)?;
                let last = index + 1 == self.steps.len();
                self.transition(event, if last { RunState::Succeeded } else { RunState::Running })?;
                let step = &mut self.steps[index];
                step.state = RunState::Succeeded;
                step.output = Some(output.clone());
                step.output_digest = Some(output_digest.clone());
            }
            RunEventPayload::StepFailed { step_id, .. } => {
                let index = self.require_current(step_id)?;
                self.transition(event, RunState::Failed)?;
                self.steps[index].state = RunState::Failed;
            }
            RunEventPayload::StepEscalated { step_id, .. } => {
                let index = self.require_current(step_id)?;
                self.require_step_running(index, event, RunState::Escalated)?;
                self.transition(event, RunState::Escalated)?;
                self.steps[index].state = RunState::Escalated;
            }
            RunEventPayload::RunCancelled { .. } => self.transition(event, RunState::Cancelled)?,
            RunEventPayload::RunTimedOut { .. } => self.transition(event, RunState::TimedOut)?,
        }
        Ok(())
    }

    fn require_step_running(&self, index: usize, event: &'static str, to: RunState) -> Result<(), RunError> {
        let step = &self.steps[index];
        if step.state == RunState::Running {
            Ok(())
        } else {
            Err(RunError::IllegalTransition {
                run_id: self.run_id.clone(),
                event,
                subject: format!("step {}", step.spec.step_id),
                from: step.state,
                to,
            })
        }
    }

    /// Step `step_id`'s input with every `{"$from": "<step>", "pointer": "/..."}` replaced by
    /// that earlier (succeeded) step's output at the JSON pointer (RFC 6901).
    ///
    /// # Errors
    ///
    /// [`RunError::BadReference`] for a reference to an unknown, later, or unfinished step, or
    /// a pointer that selects nothing.
    pub fn resolve_input(&self, step_id: &str) -> Result<serde_json::Value, RunError> {
        let index = self.step_index(step_id)?;
        let mut input = self.steps[index].spec.input.clone();
        self.resolve_value(step_id, index, &mut input)?;
        Ok(input)
    }

    fn resolve_value(&self, step_id: &str, index: usize, value: &mut serde_json::Value) -> Result<(), RunError> {
        let bad = |message: String| RunError::BadReference {
            run_id: self.run_id.clone(),
            step_id: step_id.to_owned(),
            message,
        };
        match value {
            serde_json::Value::Object(map) if map.contains_key("$from") => {
                let from = map.get("$from").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                let pointer = map.get("pointer").and_then(|v| v.as_str()).unwrap_or("").to_owned();
                let source = self
                    .steps
                    .iter()
                    .position(|step| step.spec.step_id == from)
                    .ok_or_else(|| bad(format!("references unknown step `{from}`")))?;
                if source >= index {
                    return Err(bad(format!("references step `{from}`, which does not come before it")));
                }
                let output = self.steps[source]
                    .output
                    .as_ref()
                    .ok_or_else(|| bad(format!("references step `{from}`, which has not succeeded")))?;
                *value = output
                    .pointer(&pointer)
                    .cloned()
                    .ok_or_else(|| bad(format!("pointer `{pointer}` selects nothing in the output of `{from}`")))?;
            }
            serde_json::Value::Object(map) => {
                for child in map.values_mut() {
                    self.resolve_value(step_id, index, child)?;
                }
            }
            serde_json::Value::Array(items) => {
                for child in items {
                    self.resolve_value(step_id, index, child)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The event that appending `draft` to a run whose stored events are `existing` (in Lamport
/// order) would store: the next Lamport clock, `event_id` and `recorded_at_ms` filled in, and
/// only if the run still reduces with it; with the run as it stands after it.
///
/// # Errors
///
/// [`RunError::NotFound`] when the run has no events and `draft` does not create it;
/// [`RunError::BadCreation`], [`RunError::IllegalTransition`], [`RunError::BadStep`] when the
/// run's rules refuse the event. Nothing is to be stored then.
pub fn next_event(
    existing: &[RunEvent],
    draft: RunEventDraft,
    event_id: String,
    recorded_at_ms: i64,
) -> Result<(RunEvent, RunView), RunError> {
    let event = RunEvent {
        event_id,
        lamport: existing.last().map_or(1, |event| event.lamport + 1),
        run_id: draft.run_id,
        node_id: draft.node_id,
        fencing_token: draft.fencing_token,
        traceparent: draft.traceparent,
        schema_version: RUN_EVENT_SCHEMA_VERSION,
        recorded_at_ms,
        payload: draft.payload,
    };
    if existing.is_empty() && !matches!(event.payload, RunEventPayload::RunCreated { .. }) {
        return Err(RunError::NotFound(event.run_id));
    }
    let mut events = existing.to_vec();
    events.push(event.clone());
    let view = reduce(&events)?;
    Ok((event, view))
}

/// Derives a run's state from its events: the only way run state is computed.
///
/// # Errors
///
/// [`RunError`] when the events are empty, do not start with `run-created`, are out of Lamport
/// order, mix runs, come from a newer schema, or make an illegal transition.
pub fn reduce(events: &[RunEvent]) -> Result<RunView, RunError> {
    let first = events.first().ok_or_else(|| RunError::NotFound(String::new()))?;
    let RunEventPayload::RunCreated {
        tenant,
        principal,
        steps,
        deadline_ms,
        principal_roles,
    } = &first.payload
    else {
        return Err(RunError::BadCreation {
            run_id: first.run_id.clone(),
            message: format!("the first event is `{}`, not `run-created`", first.payload.name()),
        });
    };
    let mut ids: Vec<&str> = steps.iter().map(|s| s.step_id.as_str()).collect();
    ids.sort_unstable();
    if steps.is_empty() || ids.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(RunError::BadCreation {
            run_id: first.run_id.clone(),
            message: "a run needs at least one step and unique step ids".into(),
        });
    }
    let mut view = RunView {
        run_id: first.run_id.clone(),
        tenant: tenant.clone(),
        principal: principal.clone(),
        state: RunState::Pending,
        steps: steps
            .iter()
            .map(|spec| StepView {
                spec: spec.clone(),
                state: RunState::Pending,
                approval_id: None,
                started_with_approval: None,
                output: None,
                output_digest: None,
            })
            .collect(),
        deadline_ms: *deadline_ms,
        principal_roles: principal_roles.clone(),
        lamport: first.lamport,
        events: 1,
    };
    for event in &events[1..] {
        let bad = |message: String| RunError::BadEvent {
            run_id: view.run_id.clone(),
            message,
        };
        if event.run_id != view.run_id {
            return Err(bad(format!(
                "event {} belongs to run `{}`",
                event.event_id, event.run_id
            )));
        }
        if event.lamport <= view.lamport {
            return Err(bad(format!(
                "event {} has Lamport clock {} after {}; clocks must increase",
                event.event_id, event.lamport, view.lamport
            )));
        }
        if event.schema_version > RUN_EVENT_SCHEMA_VERSION {
            return Err(bad(format!(
                "event {} has schema version {}; this build reads up to {RUN_EVENT_SCHEMA_VERSION}",
                event.event_id, event.schema_version
            )));
        }
        view.apply(&event.payload)?;
        view.lamport = event.lamport;
        view.events += 1;
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::StepSpec;

    fn event(lamport: u64, payload: RunEventPayload) -> RunEvent {
        RunEvent {
            event_id: format!("evt-{lamport}"),
            run_id: "run-1".into(),
            lamport,
            node_id: "node-a".into(),
            fencing_token: 1,
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            schema_version: RUN_EVENT_SCHEMA_VERSION,
            recorded_at_ms: 0,
            payload,
        }
    }

    fn created() -> RunEvent {
        event(
            1,
            RunEventPayload::RunCreated {
                tenant: "acme".into(),
                principal: "alice@acme".into(),
                steps: vec![
                    StepSpec {
                        step_id: "redact".into(),
                        skill: "pii-redact".into(),
                        input: serde_json::json!({ "text": "mail bob@example.com" }),
                    },
                    StepSpec {
                        step_id: "publish".into(),
                        skill: "publish-report".into(),
                        input: serde_json::json!({ "body": { "$from": "redact", "pointer": "/redacted" } }),
                    },
                ],
                deadline_ms: None,
                principal_roles: Vec::new(),
            },
        )
    }

    fn started(lamport: u64, step: &str) -> RunEvent {
        event(
            lamport,
            RunEventPayload::StepStarted {
                step_id: step.into(),
                approval_id: None,
            },
        )
    }

    #[test]
    fn a_two_step_run_with_an_approval_reduces_to_succeeded() {
        let events = vec![
            created(),
            started(2, "redact"),
            event(
                3,
                RunEventPayload::StepSucceeded {
                    step_id: "redact".into(),
                    output_digest: "sha256:01".into(),
                    output: serde_json::json!({ "redacted": "mail [email]" }),
                },
            ),
            started(4, "publish"),
            event(
                5,
                RunEventPayload::StepAwaitingApproval {
                    step_id: "publish".into(),
                    approval_id: 7,
                },
            ),
        ];
        let waiting = reduce(&events).unwrap();
        assert_eq!(waiting.state, RunState::AwaitingApproval);
        assert_eq!(
            waiting.resolve_input("publish").unwrap(),
            serde_json::json!({ "body": "mail [email]" })
        );
        let mut events = events;
        events.push(started(6, "publish"));
        events.push(event(
            7,
            RunEventPayload::StepSucceeded {
                step_id: "publish".into(),
                output_digest: "sha256:02".into(),
                output: serde_json::json!({ "path": "reports/x.md" }),
            },
        ));
        let done = reduce(&events).unwrap();
        assert_eq!(done.state, RunState::Succeeded);
        assert_eq!((done.lamport, done.events), (7, 7));
    }

    #[test]
    fn illegal_transitions_and_bad_events_are_typed_errors() {
        // A step cannot succeed before it starts.
        let error = reduce(&[
            created(),
            event(
                2,
                RunEventPayload::StepSucceeded {
                    step_id: "redact".into(),
                    output_digest: "sha256:01".into(),
                    output: serde_json::json!({}),
                },
            ),
        ])
        .unwrap_err();
        assert!(matches!(error, RunError::IllegalTransition { .. }), "{error}");
        // Steps run in order.
        let error = reduce(&[created(), started(2, "publish")]).unwrap_err();
        assert!(matches!(error, RunError::BadStep { .. }), "{error}");
        // Nothing follows a terminal state.
        let cancelled = event(3, RunEventPayload::RunCancelled { reason: "x".into() });
        let error = reduce(&[created(), cancelled, started(4, "redact")]).unwrap_err();
        assert!(
            matches!(
                error,
                RunError::IllegalTransition {
                    from: RunState::Cancelled,
                    ..
                }
            ),
            "{error}"
        );
        // Clocks must increase; the first event creates the run.
        let error = reduce(&[created(), started(1, "redact")]).unwrap_err();
        assert!(matches!(error, RunError::BadEvent { .. }), "{error}");
        let error = reduce(&[started(1, "redact")]).unwrap_err();
        assert!(matches!(error, RunError::BadCreation { .. }), "{error}");
        // A reference to a step that has not succeeded cannot be resolved.
        let view = reduce(&[created()]).unwrap();
        assert!(matches!(
            view.resolve_input("publish").unwrap_err(),
            RunError::BadReference { .. }
        ));
    }

    #[test]
    fn the_transition_table_has_no_exit_from_terminal_states() {
        use RunState::*;
        let all = [
            Pending,
            Running,
            AwaitingApproval,
            Succeeded,
            Failed,
            Escalated,
            Cancelled,
            TimedOut,
        ];
        for from in all {
            for to in all {
                if from.is_terminal() {
                    assert!(!from.can_become(to), "{from} -> {to}");
                }
            }
        }
        assert!(Pending.can_become(Running) && !Pending.can_become(Succeeded));
        assert!(AwaitingApproval.can_become(Running) && !AwaitingApproval.can_become(Succeeded));
    }
}
