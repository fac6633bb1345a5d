//! Approvals: decided once, by a reviewer who is not the requester, consumed once for exactly
//! what was approved.

use control_plane::{ApprovalError, ApprovalStatus, ChainVerification, Role};

use crate::{new_approval, principal, temp_store};

#[tokio::test]
async fn separation_of_duties_and_a_single_decision() {
    let (_dir, store) = temp_store().await;
    let request = store
        .create_approval(&new_approval(), &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(request.status, ApprovalStatus::Pending);

    let requester_as_reviewer = principal("alice", &[Role::Agent, Role::Reviewer]);
    let error = store
        .decide_approval(request.id, &requester_as_reviewer, true, None)
        .await
        .unwrap_err();
    assert!(matches!(error, ApprovalError::SelfApproval { .. }), "{error}");

    let agent = principal("mallory", &[Role::Agent]);
    let error = store.decide_approval(request.id, &agent, true, None).await.unwrap_err();
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
        .decide_approval(request.id, &other_tenant, true, None)
        .await
        .unwrap_err();
    assert!(matches!(error, ApprovalError::NotFound { .. }), "{error}");

    let error = store
        .decide_approval(999, &principal("bob", &[Role::Reviewer]), true, None)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "approval request 999 does not exist in your tenant; `agentd hitl list` shows the pending ones"
    );

    let bob = principal("bob", &[Role::Reviewer]);
    let decided = store
        .decide_approval(request.id, &bob, true, Some("fine"))
        .await
        .unwrap();
    assert_eq!(
        (decided.status, decided.decided_by.as_deref()),
        (ApprovalStatus::Approved, Some("bob"))
    );
    let error = store
        .decide_approval(request.id, &principal("carol", &[Role::Reviewer]), false, None)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "approval request 1 was already decided (approved by `bob`); a decision is recorded once"
    );

    // Requested + decided = two audit entries; refused attempts wrote nothing.
    assert!(matches!(
        store.verify_audit().await.unwrap(),
        ChainVerification::Intact { entries: 2, .. }
    ));
}

#[tokio::test]
async fn concurrent_reviewers_produce_exactly_one_decision() {
    let (_dir, store) = temp_store().await;
    let request = store
        .create_approval(&new_approval(), &serde_json::json!({}))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for (index, approve) in [true, false, true, false, true, false].into_iter().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .decide_approval(
                    request.id,
                    &principal(&format!("reviewer-{index}"), &[Role::Reviewer]),
                    approve,
                    None,
                )
                .await
        }));
    }
    let mut decided = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => decided += 1,
            Err(ApprovalError::AlreadyDecided { .. }) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(decided, 1);
    assert!(matches!(
        store.verify_audit().await.unwrap(),
        ChainVerification::Intact { entries: 2, .. }
    ));
}

#[tokio::test]
async fn an_approval_is_consumed_once_and_only_for_what_was_approved() {
    let (_dir, store) = temp_store().await;
    let request = store
        .create_approval(&new_approval(), &serde_json::json!({}))
        .await
        .unwrap();
    let error = store
        .consume_approval(request.id, "acme", "sha256:aa", "sha256:bb", "sha256:cc")
        .await
        .unwrap_err();
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
        .decide_approval(request.id, &principal("bob", &[Role::Reviewer]), true, None)
        .await
        .unwrap();
    for (skill, input, policy, what) in [
        ("sha256:xx", "sha256:bb", "sha256:cc", "skill digest"),
        ("sha256:aa", "sha256:xx", "sha256:cc", "input digest"),
        ("sha256:aa", "sha256:bb", "sha256:xx", "policy version"),
    ] {
        let error = store
            .consume_approval(request.id, "acme", skill, input, policy)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ApprovalError::BindingMismatch { what: found, .. } if found == what),
            "{error}"
        );
    }
    let consumed = store
        .consume_approval(request.id, "acme", "sha256:aa", "sha256:bb", "sha256:cc")
        .await
        .unwrap();
    assert_eq!(consumed.status, ApprovalStatus::Consumed);
    let replay = store
        .consume_approval(request.id, "acme", "sha256:aa", "sha256:bb", "sha256:cc")
        .await
        .unwrap_err();
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

    let listed = store
        .list_approvals("acme", Some(ApprovalStatus::Consumed))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].requester_principal(), principal("alice", &[Role::Agent]));
    assert!(store.list_approvals("globex", None).await.unwrap().is_empty());
}
