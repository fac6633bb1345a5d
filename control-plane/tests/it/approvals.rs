//! Approvals as durable state machines: quorum of distinct reviewers, separation of duties,
//! expiry from the stored time, modification, cancellation, exactly one terminal transition,
//! and consumption once for exactly what was approved.

use control_plane::{
    ApprovalError, ApprovalStatus, AuditEvent, ChainVerification, Quorum,
    ReviewDecisionKind::{Approve, Deny, Modify},
    Role,
};

use crate::{DEFAULT_POLICY, NOW, binding, new_approval, plane, plane_with, principal};

#[tokio::test]
async fn separation_of_duties_and_a_single_decision() {
    let plane = plane().await;
    let control = &plane.control;
    let mut asked = new_approval();
    asked.acting_agent = "robot-7".into();
    let request = control.request_approval(&asked).await.unwrap();
    assert_eq!(request.status, ApprovalStatus::Pending);

    // The requester may not review, even holding the role; nor may the acting agent.
    let requester = principal("alice", &[Role::Agent, Role::Reviewer]);
    let error = control
        .review(request.id, &requester, Approve, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApprovalError::SelfApproval { who: "requester", .. }),
        "{error}"
    );
    let robot = principal("robot-7", &[Role::Reviewer]);
    let error = control
        .review(request.id, &robot, Approve, None, None)
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
    let error = control
        .review(request.id, &agent, Approve, None, None)
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
    let error = control
        .review(request.id, &other_tenant, Approve, None, None)
        .await
        .unwrap_err();
    assert!(matches!(error, ApprovalError::NotFound { .. }), "{error}");
    let error = control
        .review(999, &principal("bob", &[Role::Reviewer]), Approve, None, None)
        .await
        .unwrap_err();
    assert!(matches!(error, ApprovalError::NotFound { id: 999 }), "{error}");

    let bob = principal("bob", &[Role::Reviewer]);
    let decided = control
        .review(request.id, &bob, Approve, Some("fine"), None)
        .await
        .unwrap();
    assert_eq!(decided.status, ApprovalStatus::Approved);
    assert_eq!(decided.decided_by.as_deref(), Some("bob"));
    assert_eq!(decided.votes.len(), 1);
    let error = control
        .review(request.id, &principal("carol", &[Role::Reviewer]), Deny, None, None)
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
        control.verify_audit().await.unwrap(),
        ChainVerification::Intact { entries: 2, .. }
    ));
}

#[tokio::test]
async fn a_quorum_needs_distinct_reviewers_and_a_deny_threshold_ends_it() {
    let plane = plane().await;
    let control = &plane.control;
    let mut asked = new_approval();
    asked.quorum = Quorum {
        required: 2,
        deny_threshold: 2,
    };
    let request = control.request_approval(&asked).await.unwrap();
    let bob = principal("bob", &[Role::Reviewer]);
    let after_one = control.review(request.id, &bob, Approve, None, None).await.unwrap();
    assert_eq!(after_one.status, ApprovalStatus::Pending);
    assert_eq!(after_one.approvals(), 1);
    let error = control.review(request.id, &bob, Approve, None, None).await.unwrap_err();
    assert!(
        matches!(error, ApprovalError::AlreadyVoted { decision: Approve, .. }),
        "{error}"
    );
    let carol = principal("carol", &[Role::Reviewer]);
    let approved = control.review(request.id, &carol, Approve, None, None).await.unwrap();
    assert_eq!(approved.status, ApprovalStatus::Approved);
    assert_eq!(approved.decided_by.as_deref(), Some("carol"));

    // Two denials deny, one does not.
    let request = control.request_approval(&asked).await.unwrap();
    let once = control.review(request.id, &bob, Deny, None, None).await.unwrap();
    assert_eq!(once.status, ApprovalStatus::Pending);
    let twice = control
        .review(request.id, &carol, Deny, Some("no"), None)
        .await
        .unwrap();
    assert_eq!(twice.status, ApprovalStatus::Denied);
}

#[tokio::test]
async fn concurrent_reviewers_produce_exactly_one_terminal_transition() {
    let plane = plane().await;
    let control = &plane.control;
    let request = control.request_approval(&new_approval()).await.unwrap();
    let mut tasks = Vec::new();
    for index in 0..8 {
        let control = std::sync::Arc::clone(control);
        let decision = if index % 2 == 0 { Approve } else { Deny };
        tasks.push(tokio::spawn(async move {
            control
                .review(
                    request.id,
                    &principal(&format!("reviewer-{index}"), &[Role::Reviewer]),
                    decision,
                    None,
                    None,
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
    let stored = control.approval("acme", request.id).await.unwrap().unwrap();
    assert_eq!(stored.votes.len(), 1, "only the deciding vote is recorded");
    assert!(matches!(
        control.verify_audit().await.unwrap(),
        ChainVerification::Intact { entries: 2, .. }
    ));
}

#[tokio::test]
async fn expiry_comes_from_the_stored_time_and_counts_as_denied() {
    let plane = plane().await;
    let control = &plane.control;
    let request = control.request_approval(&new_approval()).await.unwrap();
    let late = request.expires_at_ms;
    plane.clock.set(late);
    let error = control
        .review(request.id, &principal("bob", &[Role::Reviewer]), Approve, None, None)
        .await
        .unwrap_err();
    assert!(matches!(error, ApprovalError::Expired { .. }), "{error}");
    let stored = control.approval("acme", request.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ApprovalStatus::Expired);
    assert_eq!(stored.decided_by.as_deref(), Some("system:approval-expiry"));

    // The sweep expires pending and approved-but-unconsumed requests, and nothing else.
    plane.clock.set(NOW);
    let pending = control.request_approval(&new_approval()).await.unwrap();
    let approved = control.request_approval(&new_approval()).await.unwrap();
    control
        .review(approved.id, &principal("bob", &[Role::Reviewer]), Approve, None, None)
        .await
        .unwrap();
    assert_eq!(control.expire_due().await.unwrap(), Vec::<i64>::new());
    assert_eq!(
        {
            plane.clock.set(late);
            control.expire_due().await
        }
        .unwrap(),
        vec![pending.id, approved.id]
    );
    let error = control.consume_approval(approved.id, &binding()).await.unwrap_err();
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
    let entries = control.audit_entries().await.unwrap();
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.principal == "system:approval-expiry@acme")
            .count(),
        3
    );
    assert!(matches!(
        control.verify_audit().await.unwrap(),
        ChainVerification::Intact { .. }
    ));
}

#[tokio::test]
async fn modify_records_the_edit_and_only_allowed_answers_count() {
    let plane = plane().await;
    let control = &plane.control;
    let request = control.request_approval(&new_approval()).await.unwrap();
    let bob = principal("bob", &[Role::Reviewer]);
    let error = control.review(request.id, &bob, Modify, None, None).await.unwrap_err();
    assert!(matches!(error, ApprovalError::BadModification { .. }), "{error}");
    let edited = r#"{"schema_version":"agentd.invoke.v1","input":{"title":"edited"}}"#;
    let modified = control
        .review(request.id, &bob, Modify, Some("tone it down"), Some(edited))
        .await
        .unwrap();
    assert_eq!(modified.status, ApprovalStatus::Modified);
    assert_eq!(modified.modified_request_json.as_deref(), Some(edited));
    // A modified request is consumed by a dispatch of the edited input only, and only once.
    let error = control.consume_approval(request.id, &binding()).await.unwrap_err();
    assert!(
        matches!(
            error,
            ApprovalError::BindingMismatch {
                what: "edited input digest",
                ..
            }
        ),
        "{error}"
    );
    let mut edited_binding = binding();
    edited_binding.input_digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(br#"{"title":"edited"}"#))
    );
    let consumed = control.consume_approval(request.id, &edited_binding).await.unwrap();
    assert_eq!(consumed.status, ApprovalStatus::Consumed);
    let error = control.consume_approval(request.id, &edited_binding).await.unwrap_err();
    assert!(
        matches!(
            error,
            ApprovalError::NotApproved {
                status: ApprovalStatus::Consumed,
                ..
            }
        ),
        "{error}"
    );

    let mut strict = new_approval();
    strict.allowed_decisions = vec![Approve, Deny];
    let request = control.request_approval(&strict).await.unwrap();
    let error = control
        .review(request.id, &bob, Modify, None, Some(edited))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ApprovalError::DecisionNotAllowed { decision: Modify, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn only_the_requester_or_an_admin_cancels() {
    let plane = plane().await;
    let control = &plane.control;
    let request = control.request_approval(&new_approval()).await.unwrap();
    let error = control
        .cancel_approval(request.id, &principal("bob", &[Role::Reviewer]), None)
        .await
        .unwrap_err();
    assert!(matches!(error, ApprovalError::NotAllowedToCancel { .. }), "{error}");
    let cancelled = control
        .cancel_approval(request.id, &principal("alice", &[Role::Agent]), Some("not needed"))
        .await
        .unwrap();
    assert_eq!(cancelled.status, ApprovalStatus::Cancelled);
    let request = control.request_approval(&new_approval()).await.unwrap();
    let by_admin = control
        .cancel_approval(request.id, &principal("root", &[Role::Admin]), None)
        .await
        .unwrap();
    assert_eq!(by_admin.status, ApprovalStatus::Cancelled);
}

#[tokio::test]
async fn an_approval_is_consumed_once_and_only_for_what_was_approved() {
    let plane = plane().await;
    let control = &plane.control;
    let request = control.request_approval(&new_approval()).await.unwrap();
    let error = control.consume_approval(request.id, &binding()).await.unwrap_err();
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
    control
        .review(request.id, &principal("bob", &[Role::Reviewer]), Approve, None, None)
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
        let error = control.consume_approval(request.id, &offered).await.unwrap_err();
        assert!(
            matches!(error, ApprovalError::BindingMismatch { what: found, .. } if found == what),
            "{what}: {error}"
        );
    }
    let mut other_tenant = binding();
    other_tenant.tenant = "globex".into();
    assert!(matches!(
        control.consume_approval(request.id, &other_tenant).await.unwrap_err(),
        ApprovalError::NotFound { .. }
    ));
    let before = control.audit_entries().await.unwrap().len();
    let consumed = control.consume_approval(request.id, &binding()).await.unwrap();
    assert_eq!(consumed.status, ApprovalStatus::Consumed);
    // Regression: consuming an approval wrote no audit entry. It is now audited, in the same
    // transaction, binding what was approved.
    let entries = control.audit_entries().await.unwrap();
    assert_eq!(entries.len(), before + 1);
    let consumption = entries.last().unwrap();
    assert_eq!(consumption.kind, "approval-consumed");
    assert_eq!(consumption.principal, "alice@acme");
    let AuditEvent::ApprovalConsumed(record) = consumption.event().unwrap() else {
        panic!("{consumption:?}")
    };
    assert_eq!(
        (
            record.approval_id,
            record.input_digest.as_str(),
            record.skill_digest.as_str()
        ),
        (request.id, "sha256:bb", "sha256:aa")
    );
    assert!(matches!(
        control.verify_audit().await.unwrap(),
        ChainVerification::Intact { .. }
    ));
    let replay = control.consume_approval(request.id, &binding()).await.unwrap_err();
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
    let plane = plane_with(DEFAULT_POLICY).await;
    let control = &plane.control;
    let request = control.request_approval(&new_approval()).await.unwrap();
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
    let entries = control.audit_entries().await.unwrap();
    let change = entries.iter().find(|e| e.kind == "enforcement-change").unwrap();
    assert!(change.payload.contains(&before) && change.payload.contains(&version));
}

#[tokio::test]
async fn failed_authentications_are_counted_and_a_case_variant_never_passes_for_the_requester() {
    let plane = plane().await;
    let control = &plane.control;
    assert_eq!(control.failed_authentications(), 0);
    let good = crate::authority()
        .issue("alice", "acme", &[Role::Reviewer], std::time::Duration::from_secs(600))
        .unwrap();
    assert!(control.authenticate(&good).is_ok());
    for forged in ["", "not.a.jwt", &good.replace('.', ",")] {
        for _ in 0..50 {
            assert!(control.authenticate(forged).is_err());
        }
    }
    assert_eq!(control.failed_authentications(), 150);
    // `Alice` cannot get a token that would pass separation of duties against `alice`.
    let forged = control_plane::TokenAuthority::from_secret(&[9; 32], control_plane::TokenConfig::default())
        .unwrap()
        .issue("Alice", "acme", &[Role::Reviewer], std::time::Duration::from_secs(600));
    assert!(forged.is_err());
}
