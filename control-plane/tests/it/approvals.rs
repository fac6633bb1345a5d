//! Approvals as durable state machines: quorum of distinct reviewers, separation of duties,
//! expiry from the stored time, modification, cancellation, exactly one terminal transition,
//! and consumption once for exactly what was approved.

use control_plane::{
    ApprovalError, ApprovalStatus, ChainVerification, ControlPlane, Identity, IdentityConfig, PolicyEngine, Quorum,
    ReviewDecisionKind::{Approve, Deny, Modify},
    Role,
};

use crate::{NOW, binding, new_approval, principal, temp_store};

#[tokio::test]
async fn separation_of_duties_and_a_single_decision() {
    let (_dir, store) = temp_store().await;
    let mut asked = new_approval();
    asked.acting_agent = "robot-7".into();
    let request = store.create_approval(&asked, &serde_json::json!({})).await.unwrap();
    assert_eq!(request.status, ApprovalStatus::Pending);

    // The requester may not review, even holding the role; nor may the acting agent.
    let requester = principal("alice", &[Role::Agent, Role::Reviewer]);
    let error = store
        .cast_vote(request.id, &requester, Approve, None, None, NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApprovalError::SelfApproval { who: "requester", .. }),
        "{error}"
    );
    let robot = principal("robot-7", &[Role::Reviewer]);
    let error = store
        .cast_vote(request.id, &robot, Approve, None, None, NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ApprovalError::SelfApproval {
                who: "acting agent",
                ..
            }
        ),
        "{error}"
    );
    // Without the role, or from another tenant, or for an unknown id: refused.
    let agent = principal("carol", &[Role::Agent]);
    let error = store
        .cast_vote(request.id, &agent, Approve, None, None, NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ApprovalError::NotAReviewer {
                required: Role::Reviewer,
                ..
            }
        ),
        "{error}"
    );
    let mut other_tenant = principal("bob", &[Role::Reviewer]);
    other_tenant.tenant = "globex".into();
    let error = store
        .cast_vote(request.id, &other_tenant, Approve, None, None, NOW)
        .await
        .unwrap_err();
    assert!(matches!(error, ApprovalError::NotFound { .. }), "{error}");
    let error = store
        .cast_vote(999, &principal("bob", &[Role::Reviewer]), Approve, None, None, NOW)
        .await
        .unwrap_err();
    assert!(matches!(error, ApprovalError::NotFound { id: 999 }), "{error}");

    let bob = principal("bob", &[Role::Reviewer]);
    let decided = store
        .cast_vote(request.id, &bob, Approve, Some("fine"), None, NOW)
        .await
        .unwrap();
    assert_eq!(decided.status, ApprovalStatus::Approved);
    assert_eq!(decided.decided_by.as_deref(), Some("bob"));
    assert_eq!(decided.votes.len(), 1);
    let error = store
        .cast_vote(
            request.id,
            &principal("carol", &[Role::Reviewer]),
            Deny,
            None,
            None,
            NOW,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ApprovalError::AlreadyDecided {
                status: ApprovalStatus::Approved,
                ..
            }
        ),
        "{error}"
    );
    // Requested + decided: two audit entries, chained.
    assert!(matches!(
        store.verify_audit().await.unwrap(),
        ChainVerification::Intact { entries: 2, .. }
    ));
}

#[tokio::test]
async fn a_quorum_needs_distinct_reviewers_and_a_deny_threshold_ends_it() {
    let (_dir, store) = temp_store().await;
    let mut asked = new_approval();
    asked.quorum = Quorum {
        required: 2,
        deny_threshold: 2,
    };
    let request = store.create_approval(&asked, &serde_json::json!({})).await.unwrap();
    let bob = principal("bob", &[Role::Reviewer]);
    let after_one = store
        .cast_vote(request.id, &bob, Approve, None, None, NOW)
        .await
        .unwrap();
    assert_eq!(after_one.status, ApprovalStatus::Pending);
    assert_eq!(after_one.approvals(), 1);
    let error = store
        .cast_vote(request.id, &bob, Approve, None, None, NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApprovalError::AlreadyVoted { decision: Approve, .. }),
        "{error}"
    );
    let carol = principal("carol", &[Role::Reviewer]);
    let approved = store
        .cast_vote(request.id, &carol, Approve, None, None, NOW)
        .await
        .unwrap();
    assert_eq!(approved.status, ApprovalStatus::Approved);
    assert_eq!(approved.decided_by.as_deref(), Some("carol"));

    // Two denials deny, one does not.
    let request = store.create_approval(&asked, &serde_json::json!({})).await.unwrap();
    let once = store.cast_vote(request.id, &bob, Deny, None, None, NOW).await.unwrap();
    assert_eq!(once.status, ApprovalStatus::Pending);
    let twice = store
        .cast_vote(request.id, &carol, Deny, Some("no"), None, NOW)
        .await
        .unwrap();
    assert_eq!(twice.status, ApprovalStatus::Denied);
}

#[tokio::test]
async fn concurrent_reviewers_produce_exactly_one_terminal_transition() {
    let (_dir, store) = temp_store().await;
    let request = store
        .create_approval(&new_approval(), &serde_json::json!({}))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for index in 0..8 {
        let store = store.clone();
        let decision = if index % 2 == 0 { Approve } else { Deny };
        tasks.push(tokio::spawn(async move {
            store
                .cast_vote(
                    request.id,
                    &principal(&format!("reviewer-{index}"), &[Role::Reviewer]),
                    decision,
                    None,
                    None,
                    NOW,
                )
                .await
        }));
    }
    let mut decided = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(request) => {
                assert!(request.status.is_terminal() || request.status == ApprovalStatus::Approved);
                decided += 1;
            }
            Err(ApprovalError::AlreadyDecided { .. }) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(decided, 1);
    let stored = store.approval("acme", request.id).await.unwrap().unwrap();
    assert_eq!(stored.votes.len(), 1, "only the deciding vote is recorded");
    assert!(matches!(
        store.verify_audit().await.unwrap(),
        ChainVerification::Intact { entries: 2, .. }
    ));
}

#[tokio::test]
async fn expiry_comes_from_the_stored_time_and_counts_as_denied() {
    let (_dir, store) = temp_store().await;
    let request = store
        .create_approval(&new_approval(), &serde_json::json!({}))
        .await
        .unwrap();
    let late = request.expires_at_ms;
    let error = store
        .cast_vote(
            request.id,
            &principal("bob", &[Role::Reviewer]),
            Approve,
            None,
            None,
            late,
        )
        .await
        .unwrap_err();
    assert!(matches!(error, ApprovalError::Expired { .. }), "{error}");
    let stored = store.approval("acme", request.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ApprovalStatus::Expired);
    assert_eq!(stored.decided_by.as_deref(), Some("system:approval-expiry"));

    // The sweep expires pending and approved-but-unconsumed requests, and nothing else.
    let pending = store
        .create_approval(&new_approval(), &serde_json::json!({}))
        .await
        .unwrap();
    let approved = store
        .create_approval(&new_approval(), &serde_json::json!({}))
        .await
        .unwrap();
    store
        .cast_vote(
            approved.id,
            &principal("bob", &[Role::Reviewer]),
            Approve,
            None,
            None,
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(store.expire_due(NOW).await.unwrap(), Vec::<i64>::new());
    assert_eq!(store.expire_due(late).await.unwrap(), vec![pending.id, approved.id]);
    let error = store.consume_approval(approved.id, &binding(), late).await.unwrap_err();
    assert!(
        matches!(
            error,
            ApprovalError::NotApproved {
                status: ApprovalStatus::Expired,
                ..
            }
        ),
        "{error}"
    );
    let entries = store.audit_entries().await.unwrap();
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.principal == "system:approval-expiry@acme")
            .count(),
        3
    );
    assert!(matches!(
        store.verify_audit().await.unwrap(),
        ChainVerification::Intact { .. }
    ));
}

#[tokio::test]
async fn modify_records_the_edit_and_only_allowed_answers_count() {
    let (_dir, store) = temp_store().await;
    let request = store
        .create_approval(&new_approval(), &serde_json::json!({}))
        .await
        .unwrap();
    let bob = principal("bob", &[Role::Reviewer]);
    let error = store
        .cast_vote(request.id, &bob, Modify, None, None, NOW)
        .await
        .unwrap_err();
    assert!(matches!(error, ApprovalError::BadModification { .. }), "{error}");
    let edited = r#"{"schema_version":"agentd.invoke.v1","input":{"title":"edited"}}"#;
    let modified = store
        .cast_vote(request.id, &bob, Modify, Some("tone it down"), Some(edited), NOW)
        .await
        .unwrap();
    assert_eq!(modified.status, ApprovalStatus::Modified);
    assert_eq!(modified.modified_request_json.as_deref(), Some(edited));
    let error = store.consume_approval(request.id, &binding(), NOW).await.unwrap_err();
    assert!(matches!(
        error,
        ApprovalError::NotApproved {
            status: ApprovalStatus::Modified,
            ..
        }
    ));

    let mut strict = new_approval();
    strict.allowed_decisions = vec![Approve, Deny];
    let request = store.create_approval(&strict, &serde_json::json!({})).await.unwrap();
    let error = store
        .cast_vote(request.id, &bob, Modify, None, Some(edited), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApprovalError::DecisionNotAllowed { decision: Modify, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn only_the_requester_or_an_admin_cancels() {
    let (_dir, store) = temp_store().await;
    let request = store
        .create_approval(&new_approval(), &serde_json::json!({}))
        .await
        .unwrap();
    let error = store
        .cancel_approval(request.id, &principal("bob", &[Role::Reviewer]), None, NOW)
        .await
        .unwrap_err();
    assert!(matches!(error, ApprovalError::NotAllowedToCancel { .. }), "{error}");
    let cancelled = store
        .cancel_approval(request.id, &principal("alice", &[Role::Agent]), Some("not needed"), NOW)
        .await
        .unwrap();
    assert_eq!(cancelled.status, ApprovalStatus::Cancelled);
    let request = store
        .create_approval(&new_approval(), &serde_json::json!({}))
        .await
        .unwrap();
    let by_admin = store
        .cancel_approval(request.id, &principal("root", &[Role::Admin]), None, NOW)
        .await
        .unwrap();
    assert_eq!(by_admin.status, ApprovalStatus::Cancelled);
}

#[tokio::test]
async fn an_approval_is_consumed_once_and_only_for_what_was_approved() {
    let (_dir, store) = temp_store().await;
    let request = store
        .create_approval(&new_approval(), &serde_json::json!({}))
        .await
        .unwrap();
    let error = store.consume_approval(request.id, &binding(), NOW).await.unwrap_err();
    assert!(
        matches!(
            error,
            ApprovalError::NotApproved {
                status: ApprovalStatus::Pending,
                ..
            }
        ),
        "{error}"
    );
    store
        .cast_vote(
            request.id,
            &principal("bob", &[Role::Reviewer]),
            Approve,
            None,
            None,
            NOW,
        )
        .await
        .unwrap();
    type Edit = fn(&mut control_plane::ApprovalBinding);
    let edits: [(Edit, &str); 6] = [
        (|b| b.run_id = "run-2".into(), "run id"),
        (|b| b.step_id = "step-2".into(), "step id"),
        (|b| b.skill_id = "other".into(), "skill id"),
        (|b| b.skill_digest = "sha256:xx".into(), "skill digest"),
        (|b| b.input_digest = "sha256:xx".into(), "input digest"),
        (|b| b.policy_version = "sha256:xx".into(), "policy version"),
    ];
    for (edit, what) in edits {
        let mut offered = binding();
        edit(&mut offered);
        let error = store.consume_approval(request.id, &offered, NOW).await.unwrap_err();
        assert!(
            matches!(error, ApprovalError::BindingMismatch { what: found, .. } if found == what),
            "{what}: {error}"
        );
    }
    let mut other_tenant = binding();
    other_tenant.tenant = "globex".into();
    assert!(matches!(
        store
            .consume_approval(request.id, &other_tenant, NOW)
            .await
            .unwrap_err(),
        ApprovalError::NotFound { .. }
    ));
    let consumed = store.consume_approval(request.id, &binding(), NOW).await.unwrap();
    assert_eq!(consumed.status, ApprovalStatus::Consumed);
    let replay = store.consume_approval(request.id, &binding(), NOW).await.unwrap_err();
    assert!(
        matches!(
            replay,
            ApprovalError::NotApproved {
                status: ApprovalStatus::Consumed,
                ..
            }
        ),
        "{replay}"
    );
}

#[tokio::test]
async fn the_control_plane_asks_policy_before_recording_a_review() {
    let dir = tempfile::tempdir().unwrap();
    let store = control_plane::Store::open(&dir.path().join("state.db")).await.unwrap();
    let policy = PolicyEngine::from_text(include_str!("../../../policies/default.cedar"), "default.cedar").unwrap();
    let identity = Identity::from_secret(&[7; 32], IdentityConfig::default()).unwrap();
    let control = ControlPlane::new(identity, policy, store);
    // The control plane decides at the wall-clock time: the request must still be open then.
    let mut asked = new_approval();
    asked.expires_at_ms = control_plane::now_ms() + 3_600_000;
    let request = control
        .store()
        .create_approval(&asked, &serde_json::json!({}))
        .await
        .unwrap();
    // An admin without the reviewer role is refused by policy before the store is touched.
    let error = control
        .review(request.id, &principal("root", &[Role::Admin]), Approve, None, None)
        .await
        .unwrap_err();
    assert!(matches!(error, ApprovalError::ReviewNotPermitted { .. }), "{error}");
    let approved = control
        .review(request.id, &principal("bob", &[Role::Reviewer]), Approve, None, None)
        .await
        .unwrap();
    assert_eq!(approved.status, ApprovalStatus::Approved);

    // Changing enforcement needs an admin and is audited; a bad policy set changes nothing.
    let agent = principal("alice", &[Role::Agent]);
    assert!(control.replace_policy(&agent, "", "empty").await.is_err());
    let before = control.policy().version().to_owned();
    assert!(
        control
            .replace_policy(&principal("root", &[Role::Admin]), "permit(", "broken")
            .await
            .is_err()
    );
    assert_eq!(control.policy().version(), before);
    let version = control
        .replace_policy(&principal("root", &[Role::Admin]), "", "empty")
        .await
        .unwrap();
    assert_ne!(version, before);
    let entries = control.store().audit_entries().await.unwrap();
    let change = entries.iter().find(|e| e.kind == "enforcement-change").unwrap();
    assert!(change.payload.contains(&before) && change.payload.contains(&version));
}
