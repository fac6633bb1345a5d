//! Runs: events are appended only when the run still reduces; state survives reopening.

use control_plane::{RunError, RunEventPayload, RunState, RunStoreError, StepSpec, Store};

use crate::temp_store;

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

#[tokio::test]
async fn a_waiting_run_survives_a_reopen_and_illegal_events_are_refused() {
    let (dir, store) = temp_store().await;
    store.append_run_event("run-1", "node-a", TP, created()).await.unwrap();
    store
        .append_run_event(
            "run-1",
            "node-a",
            TP,
            RunEventPayload::StepStarted {
                step_id: "publish".into(),
            },
        )
        .await
        .unwrap();
    let waiting = store
        .append_run_event(
            "run-1",
            "node-a",
            TP,
            RunEventPayload::StepAwaitingApproval {
                step_id: "publish".into(),
                approval_id: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(waiting.lamport, 3);

    // Succeeding a step that waits for approval is illegal and is not stored.
    let error = store
        .append_run_event(
            "run-1",
            "node-b",
            TP,
            RunEventPayload::StepSucceeded {
                step_id: "publish".into(),
                output_digest: "sha256:00".into(),
                output: serde_json::json!({}),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, RunStoreError::Run(RunError::IllegalTransition { .. })),
        "{error}"
    );
    // Events for a run that does not exist, and a second creation, are refused.
    let error = store
        .append_run_event(
            "run-9",
            "node-a",
            TP,
            RunEventPayload::StepStarted { step_id: "x".into() },
        )
        .await
        .unwrap_err();
    assert!(matches!(error, RunStoreError::Run(RunError::NotFound(_))), "{error}");
    let error = store
        .append_run_event("run-1", "node-a", TP, created())
        .await
        .unwrap_err();
    assert!(
        matches!(error, RunStoreError::Run(RunError::BadCreation { .. })),
        "{error}"
    );
    drop(store);

    let store = Store::open(&dir.path().join("state.db")).await.unwrap();
    let view = store.run("run-1").await.unwrap();
    assert_eq!(view.state, RunState::AwaitingApproval);
    assert_eq!(view.steps[0].approval_id, Some(1));
    assert_eq!(view.events, 3);
    assert_eq!(
        store.runs_in_state("acme", RunState::AwaitingApproval).await.unwrap(),
        vec!["run-1".to_owned()]
    );
    // Resume after the decision.
    store
        .append_run_event(
            "run-1",
            "node-b",
            TP,
            RunEventPayload::StepStarted {
                step_id: "publish".into(),
            },
        )
        .await
        .unwrap();
    store
        .append_run_event(
            "run-1",
            "node-b",
            TP,
            RunEventPayload::StepSucceeded {
                step_id: "publish".into(),
                output_digest: "sha256:00".into(),
                output: serde_json::json!({ "path": "reports/t.md" }),
            },
        )
        .await
        .unwrap();
    assert_eq!(store.run("run-1").await.unwrap().state, RunState::Succeeded);
}
