//! Runs: events are appended only when the run still reduces; state survives reopening.

use control_plane::{RunError, RunEventDraft, RunEventPayload, RunState, RunStoreError, StepSpec};

use crate::{DEFAULT_POLICY, open_plane, plane};

fn created() -> RunEventPayload {
    RunEventPayload::RunCreated {
        tenant: "acme".into(),
        principal: "alice@acme".into(),
        steps: vec![StepSpec {
            step_id: "publish".into(),
            skill: "publish-report".into(),
            input: serde_json::json!({ "title": "t" }),
        }],
    }
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn draft(run_id: &str, node_id: &str, payload: RunEventPayload) -> RunEventDraft {
    RunEventDraft {
        run_id: run_id.into(),
        node_id: node_id.into(),
        traceparent: TP.into(),
        payload,
    }
}

#[tokio::test]
async fn a_waiting_run_survives_a_reopen_and_illegal_events_are_refused() {
    let plane = plane().await;
    let control = &plane.control;
    control
        .append_run_event(draft("run-1", "node-a", created()))
        .await
        .unwrap();
    control
        .append_run_event(draft(
            "run-1",
            "node-a",
            RunEventPayload::StepStarted {
                step_id: "publish".into(),
            },
        ))
        .await
        .unwrap();
    let waiting = control
        .append_run_event(draft(
            "run-1",
            "node-a",
            RunEventPayload::StepAwaitingApproval {
                step_id: "publish".into(),
                approval_id: 1,
            },
        ))
        .await
        .unwrap();
    assert_eq!(waiting.lamport, 3);

    // Succeeding a step that waits for approval is illegal and is not stored.
    let error = control
        .append_run_event(draft(
            "run-1",
            "node-b",
            RunEventPayload::StepSucceeded {
                step_id: "publish".into(),
                output_digest: "sha256:00".into(),
                output: serde_json::json!({}),
            },
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RunStoreError::Run(RunError::IllegalTransition { .. })),
        "{error}"
    );
    // Events for a run that does not exist, and a second creation, are refused.
    let error = control
        .append_run_event(draft(
            "run-9",
            "node-a",
            RunEventPayload::StepStarted { step_id: "x".into() },
        ))
        .await
        .unwrap_err();
    assert!(matches!(error, RunStoreError::Run(RunError::NotFound(_))), "{error}");
    let error = control
        .append_run_event(draft("run-1", "node-a", created()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RunStoreError::Run(RunError::BadCreation { .. })),
        "{error}"
    );
    let path = plane.state_file();
    let crate::Plane {
        dir: _dir,
        control,
        clock,
    } = plane;
    drop(control);

    let control = open_plane(&path, DEFAULT_POLICY, clock).await;
    let view = control.run("acme", "run-1").await.unwrap();
    assert_eq!(view.state, RunState::AwaitingApproval);
    assert_eq!(view.steps[0].approval_id, Some(1));
    assert_eq!(view.events, 3);
    assert_eq!(
        control.runs_in_state("acme", RunState::AwaitingApproval).await.unwrap(),
        vec!["run-1".to_owned()]
    );
    // Resume after the decision.
    control
        .append_run_event(draft(
            "run-1",
            "node-b",
            RunEventPayload::StepStarted {
                step_id: "publish".into(),
            },
        ))
        .await
        .unwrap();
    control
        .append_run_event(draft(
            "run-1",
            "node-b",
            RunEventPayload::StepSucceeded {
                step_id: "publish".into(),
                output_digest: "sha256:00".into(),
                output: serde_json::json!({ "path": "reports/t.md" }),
            },
        ))
        .await
        .unwrap();
    assert_eq!(control.run("acme", "run-1").await.unwrap().state, RunState::Succeeded);
    // Runs are read within their tenant only.
    assert!(matches!(
        control.run("globex", "run-1").await.unwrap_err(),
        RunStoreError::Run(RunError::NotFound(_))
    ));
}
