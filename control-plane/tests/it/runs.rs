//! Runs: events are appended only when the run still reduces and the writer holds the run's
//! lease; state survives reopening; a paused owner cannot write after a takeover; cancellation
//! and approval decisions close runs in their own transaction; recovery finds what to do.

use std::sync::Arc;

use control_plane::{
    ApprovalStatus, CancelError, ControlPlane, Lease, RecoveryAction, ReviewDecisionKind, Role, RunError,
    RunEventDraft, RunEventPayload, RunState, RunStoreError, StepSpec,
};

use crate::{DEFAULT_POLICY, NOW, new_approval, open_plane, plane, principal};

pub const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

pub fn steps() -> Vec<StepSpec> {
    vec![StepSpec {
        step_id: "step-1".into(),
        skill: "publish-report".into(),
        input: serde_json::json!({ "title": "t" }),
    }]
}

fn draft(lease: &Lease, payload: RunEventPayload) -> RunEventDraft {
    RunEventDraft {
        run_id: lease.run_id.clone(),
        node_id: lease.owner.clone(),
        fencing_token: lease.token,
        traceparent: TP.into(),
        payload,
    }
}

fn started(approval_id: Option<i64>) -> RunEventPayload {
    RunEventPayload::StepStarted {
        step_id: "step-1".into(),
        approval_id,
    }
}

fn succeeded() -> RunEventPayload {
    RunEventPayload::StepSucceeded {
        step_id: "step-1".into(),
        output_digest: "sha256:00".into(),
        output: serde_json::json!({ "path": "reports/t.md" }),
    }
}

/// Creates `run-1` of alice, owned by `node-a`, and starts its step waiting on a new approval
/// request; returns the request id.
async fn waiting_run(control: &ControlPlane) -> i64 {
    let alice = principal("alice", &[Role::Agent]);
    let lease = control
        .create_run("run-1", &alice, steps(), TP, "node-a")
        .await
        .unwrap();
    control.append_run_event(draft(&lease, started(None))).await.unwrap();
    let approval = control.request_approval(&new_approval()).await.unwrap();
    control
        .append_run_event(draft(
            &lease,
            RunEventPayload::StepAwaitingApproval {
                step_id: "step-1".into(),
                approval_id: approval.id,
            },
        ))
        .await
        .unwrap();
    approval.id
}

#[tokio::test]
async fn a_waiting_run_survives_a_reopen_and_illegal_or_unfenced_events_are_refused() {
    let plane = crate::sqlite_plane().await;
    let control = &plane.control;
    let alice = principal("alice", &[Role::Agent]);
    let lease = control
        .create_run("run-1", &alice, steps(), TP, "node-a")
        .await
        .unwrap();
    assert_eq!((lease.owner.as_str(), lease.token), ("node-a", 1));
    control.append_run_event(draft(&lease, started(None))).await.unwrap();
    let waiting = control
        .append_run_event(draft(
            &lease,
            RunEventPayload::StepAwaitingApproval {
                step_id: "step-1".into(),
                approval_id: 1,
            },
        ))
        .await
        .unwrap();
    assert_eq!(waiting.lamport, 3);
    // A waiting run has no owner: node-a's lease ended with the wait.
    let records = control.run_records("acme").await.unwrap();
    assert_eq!((records[0].owner.as_deref(), records[0].approval_id), (None, Some(1)));
    let error = control.append_run_event(draft(&lease, succeeded())).await.unwrap_err();
    assert!(matches!(error, RunStoreError::LeaseLost { .. }), "{error}");
    // A node that claims it may write, but succeeding a step that waits is illegal.
    let b = control.claim_run("run-1", "node-b").await.unwrap().unwrap();
    assert_eq!(b.token, 2);
    let error = control.append_run_event(draft(&b, succeeded())).await.unwrap_err();
    assert!(
        matches!(error, RunStoreError::Run(RunError::IllegalTransition { .. })),
        "{error}"
    );
    // Events for a run that does not exist, and a second creation, are refused.
    let ghost = Lease {
        run_id: "run-9".into(),
        ..b.clone()
    };
    let error = control
        .append_run_event(draft(&ghost, started(None)))
        .await
        .unwrap_err();
    assert!(matches!(error, RunStoreError::Run(RunError::NotFound(_))), "{error}");
    let error = control
        .create_run("run-1", &alice, steps(), TP, "node-a")
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
        ..
    } = plane;
    drop(control);

    let control = open_plane(&path, DEFAULT_POLICY, clock).await;
    let view = control.run("acme", "run-1").await.unwrap();
    assert_eq!(view.state, RunState::AwaitingApproval);
    assert_eq!(view.steps[0].approval_id, Some(1));
    assert_eq!(view.events, 3);
    assert!(view.deadline_ms.is_some_and(|deadline| deadline > NOW));
    assert_eq!(view.principal_roles, vec![Role::Agent]);
    // node-b still holds its claim across the reopen; it resumes after the decision.
    control.append_run_event(draft(&b, started(Some(1)))).await.unwrap();
    control.append_run_event(draft(&b, succeeded())).await.unwrap();
    assert_eq!(control.run("acme", "run-1").await.unwrap().state, RunState::Succeeded);
    assert_eq!(control.run_records("acme").await.unwrap()[0].owner, None);
    // Runs are read within their tenant only.
    assert!(matches!(
        control.run("globex", "run-1").await.unwrap_err(),
        RunStoreError::Run(RunError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_paused_owner_cannot_write_after_its_run_was_taken_over() {
    let plane = plane().await;
    let control = &plane.control;
    let alice = principal("alice", &[Role::Agent]);
    let a = control
        .create_run("run-1", &alice, steps(), TP, "node-a")
        .await
        .unwrap();
    control.append_run_event(draft(&a, started(None))).await.unwrap();
    // While a's lease is live nobody else may claim; a renews.
    assert_eq!(control.claim_run("run-1", "node-b").await.unwrap(), None);
    plane.clock.advance(control.lease_ttl_ms() / 2);
    let a = control.renew_lease(&a).await.unwrap();
    plane.clock.advance(control.lease_ttl_ms() / 2 + 1);
    assert_eq!(control.claim_run("run-1", "node-b").await.unwrap(), None);
    // a pauses past its lease; b takes the run over (audited) with the next token.
    plane.clock.advance(control.lease_ttl_ms());
    let b = control.claim_run("run-1", "node-b").await.unwrap().unwrap();
    assert_eq!(b.token, a.token + 1);
    let entries = control.audit_entries().await.unwrap();
    let takeover = entries.last().unwrap();
    assert_eq!(takeover.kind, "run-control");
    assert!(takeover.payload.contains("\"taken-over\""), "{}", takeover.payload);
    // a wakes up: its write and its renewal are refused, naming both tokens.
    let error = control.append_run_event(draft(&a, succeeded())).await.unwrap_err();
    let RunStoreError::LeaseLost {
        offered,
        current,
        owner,
        ..
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!(
        (*offered, *current, owner.as_deref()),
        (a.token, b.token, Some("node-b"))
    );
    assert!(!error.is_retryable());
    assert!(control.renew_lease(&a).await.is_err());
    // b's write goes through; the run's events hold exactly one success.
    control.append_run_event(draft(&b, succeeded())).await.unwrap();
    let view = control.run("acme", "run-1").await.unwrap();
    assert_eq!((view.state, view.events), (RunState::Succeeded, 3));
    // Each stored event names the lease it was written under: the creation, a's start, b's end.
    let tokens: Vec<(String, u64)> = control
        .run_events("acme", "run-1")
        .await
        .unwrap()
        .into_iter()
        .map(|event| (event.node_id, event.fencing_token))
        .collect();
    assert_eq!(
        tokens,
        [
            ("node-a".to_owned(), 0),
            ("node-a".to_owned(), a.token),
            ("node-b".to_owned(), b.token)
        ]
    );
}

#[tokio::test]
async fn cancelling_takes_the_run_from_its_owner_and_cancels_its_pending_approval() {
    let plane = plane().await;
    let control = &plane.control;
    let approval_id = waiting_run(control).await;
    // Another agent may not cancel alice's run; alice may.
    let error = control
        .cancel_run(&principal("mallory", &[Role::Agent]), "run-1", "no")
        .await
        .unwrap_err();
    assert!(matches!(error, CancelError::NotAllowed { .. }), "{error}");
    let view = control
        .cancel_run(&principal("alice", &[Role::Agent]), "run-1", "changed my mind")
        .await
        .unwrap();
    assert_eq!(view.state, RunState::Cancelled);
    let approval = control.approval("acme", approval_id).await.unwrap().unwrap();
    assert_eq!(approval.status, ApprovalStatus::Cancelled);
    let kinds: Vec<String> = control
        .audit_entries()
        .await
        .unwrap()
        .iter()
        .map(|entry| entry.kind.clone())
        .collect();
    assert_eq!(&kinds[kinds.len() - 2..], ["approval-decision", "run-control"]);
    // Cancelling again names the end state.
    let error = control
        .cancel_run(&principal("alice", &[Role::Agent]), "run-1", "again")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            CancelError::Finished {
                state: RunState::Cancelled,
                ..
            }
        ),
        "{error}"
    );

    // A running run: an admin cancels it; its owner's next write is refused.
    let alice = principal("alice", &[Role::Agent]);
    let owner = control
        .create_run("run-2", &alice, steps(), TP, "node-a")
        .await
        .unwrap();
    control.append_run_event(draft(&owner, started(None))).await.unwrap();
    control
        .cancel_run(&principal("root", &[Role::Admin]), "run-2", "stop")
        .await
        .unwrap();
    let error = control.append_run_event(draft(&owner, succeeded())).await.unwrap_err();
    assert!(matches!(error, RunStoreError::LeaseLost { .. }), "{error}");
    // Another tenant's admin does not see the run.
    let outsider = control_plane::Principal {
        tenant: "globex".into(),
        ..principal("root", &[Role::Admin])
    };
    assert!(matches!(
        control.cancel_run(&outsider, "run-2", "x").await.unwrap_err(),
        CancelError::Run(RunStoreError::Run(RunError::NotFound(_)))
    ));
}

#[tokio::test]
async fn a_denial_or_an_expiry_closes_the_waiting_run_in_the_same_transaction() {
    let plane = plane().await;
    let control = &plane.control;
    let approval_id = waiting_run(control).await;
    control
        .review(
            approval_id,
            &principal("bob", &[Role::Reviewer]),
            ReviewDecisionKind::Deny,
            Some("no"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(control.run("acme", "run-1").await.unwrap().state, RunState::Failed);

    let plane = crate::plane().await;
    let control = &plane.control;
    waiting_run(control).await;
    plane.clock.advance(3_600_001);
    assert_eq!(control.expire_due().await.unwrap().len(), 1);
    let view = control.run("acme", "run-1").await.unwrap();
    assert_eq!(view.state, RunState::Failed);
    assert!(control.recovery_candidates(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn recovery_finds_each_interrupted_run_and_what_it_needs() {
    let plane = plane().await;
    let control: &Arc<ControlPlane> = &plane.control;
    let alice = principal("alice", &[Role::Agent]);
    // run-1 waits on a pending approval: nothing to do until it is decided.
    let approval_id = waiting_run(control).await;
    // run-2 was created and its owner vanished; run-3's owner vanished mid-dispatch.
    control
        .create_run("run-2", &alice, steps(), TP, "node-a")
        .await
        .unwrap();
    let three = control
        .create_run("run-3", &alice, steps(), TP, "node-a")
        .await
        .unwrap();
    control.append_run_event(draft(&three, started(None))).await.unwrap();
    assert!(
        control.recovery_candidates(10).await.unwrap().is_empty(),
        "live leases are left alone"
    );
    plane.clock.advance(control.lease_ttl_ms() + 1);
    let actions = |candidates: Vec<control_plane::RecoveryCandidate>| {
        candidates
            .into_iter()
            .map(|candidate| (candidate.record.run_id, candidate.action))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        actions(control.recovery_candidates(10).await.unwrap()),
        vec![
            ("run-2".to_owned(), RecoveryAction::Continue),
            ("run-3".to_owned(), RecoveryAction::Redispatch { approval_id: None }),
        ]
    );
    // The approval is granted but nobody resumed: resume it.
    control
        .review(
            approval_id,
            &principal("bob", &[Role::Reviewer]),
            ReviewDecisionKind::Approve,
            None,
            None,
        )
        .await
        .unwrap();
    let found = actions(control.recovery_candidates(10).await.unwrap());
    assert!(
        found.contains(&("run-1".to_owned(), RecoveryAction::Resume { approval_id })),
        "{found:?}"
    );
    // Past the deadline, working runs time out instead.
    plane.clock.advance(control_plane::run::lease::DEFAULT_RUN_DEADLINE_MS);
    let found = actions(control.recovery_candidates(10).await.unwrap());
    assert!(
        found
            .iter()
            .any(|(run, action)| run == "run-3" && matches!(action, RecoveryAction::TimeOut { .. })),
        "{found:?}"
    );
    let lease = control.claim_run("run-3", "recovery").await.unwrap().unwrap();
    control.time_out_run(&lease, TP).await.unwrap();
    assert_eq!(control.run("acme", "run-3").await.unwrap().state, RunState::TimedOut);
}

fn key(key: &str, body: &str) -> control_plane::RequestKey {
    control_plane::RequestKey::new(key, format!("sha256:{body}")).unwrap()
}

#[tokio::test]
async fn an_idempotency_key_names_one_run_per_tenant_and_refuses_another_request() {
    use control_plane::RunCreation;
    let plane = plane().await;
    let control = &plane.control;
    let alice = principal("alice", &[Role::Agent]);
    let first = control
        .create_run_keyed("run-1", &alice, steps(), TP, "node-a", Some(&key("k1", "aa")))
        .await
        .unwrap();
    assert!(matches!(first, RunCreation::Created(_)));
    let replay = control
        .create_run_keyed("run-2", &alice, steps(), TP, "node-a", Some(&key("k1", "aa")))
        .await
        .unwrap();
    assert_eq!(replay, RunCreation::Replayed { run_id: "run-1".into() });
    let conflict = control
        .create_run_keyed("run-3", &alice, steps(), TP, "node-a", Some(&key("k1", "bb")))
        .await
        .unwrap();
    assert_eq!(conflict, RunCreation::KeyConflict { run_id: "run-1".into() });
    // Neither the replay nor the conflict created anything.
    for run_id in ["run-2", "run-3"] {
        assert!(matches!(
            control.run("acme", run_id).await,
            Err(RunStoreError::Run(RunError::NotFound(_)))
        ));
    }
    // The same key in another tenant is another key.
    let mut eve = principal("eve", &[Role::Agent]);
    eve.tenant = "globex".into();
    let theirs = control
        .create_run_keyed("run-4", &eve, steps(), TP, "node-a", Some(&key("k1", "aa")))
        .await
        .unwrap();
    assert!(matches!(theirs, RunCreation::Created(_)));
    // A run refused by its rules binds no key: the key stays free.
    let refused = control
        .create_run_keyed("run-5", &alice, Vec::new(), TP, "node-a", Some(&key("k2", "cc")))
        .await;
    assert!(matches!(refused, Err(RunStoreError::Run(_))), "{refused:?}");
    let retried = control
        .create_run_keyed("run-6", &alice, steps(), TP, "node-a", Some(&key("k2", "dd")))
        .await
        .unwrap();
    assert!(matches!(retried, RunCreation::Created(_)));
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_run() {
    use control_plane::RunCreation;
    let plane = plane().await;
    let alice = principal("alice", &[Role::Agent]);
    let attempts = (0..8).map(|n| {
        let control = Arc::clone(&plane.control);
        let alice = alice.clone();
        tokio::spawn(async move {
            control
                .create_run_keyed(
                    &format!("run-{n}"),
                    &alice,
                    steps(),
                    TP,
                    "node-a",
                    Some(&key("once", "aa")),
                )
                .await
                .unwrap()
        })
    });
    let mut created = 0;
    let mut named = std::collections::BTreeSet::new();
    for attempt in attempts {
        match attempt.await.unwrap() {
            RunCreation::Created(lease) => {
                created += 1;
                named.insert(lease.run_id);
            }
            RunCreation::Replayed { run_id } => {
                named.insert(run_id);
            }
            RunCreation::KeyConflict { .. } => panic!("same body, no conflict"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(plane.control.run_records("acme").await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_run_feed_publishes_committed_events_only() {
    let plane = plane().await;
    let control = &plane.control;
    let mut feed = control.subscribe_run_events();
    let alice = principal("alice", &[Role::Agent]);
    let lease = control
        .create_run("run-1", &alice, steps(), TP, "node-a")
        .await
        .unwrap();
    let created = feed.try_recv().unwrap();
    assert_eq!((created.run_id.as_str(), created.lamport), ("run-1", 1));
    // A write refused inside its transaction (a stale fencing token) publishes nothing.
    let mut stale = draft(&lease, started(None));
    stale.fencing_token += 7;
    assert!(control.append_run_event(stale).await.is_err());
    assert!(feed.try_recv().is_err());
    control.append_run_event(draft(&lease, started(None))).await.unwrap();
    let event = feed.try_recv().unwrap();
    assert_eq!(event.lamport, 2);
    assert_eq!(control.run_events("acme", "run-1").await.unwrap()[1], event);
}
