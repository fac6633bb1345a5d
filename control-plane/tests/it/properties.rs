//! Property tests (proptest) over random sequences of approval requests, answers, cancellations,
//! clock jumps and dispatch attempts:
//!
//! - no dispatch (consumption) succeeds without a matching, unexpired, unconsumed approval that
//!   a quorum of distinct reviewers other than the requester granted;
//! - a terminal status never changes;
//! - under concurrent deciders exactly one deciding transition happens per request.

use std::collections::{BTreeMap, BTreeSet};

use control_plane::{ApprovalStatus, Clock, Quorum, ReviewDecisionKind, Role};
use proptest::prelude::*;

use crate::{binding, new_approval, plane, principal};

#[derive(Debug, Clone)]
enum Op {
    Create {
        required: u32,
        deny_threshold: u32,
        ttl_ms: i64,
    },
    Vote {
        request: usize,
        reviewer: usize,
        decision: u8,
    },
    Cancel {
        request: usize,
        by_requester: bool,
    },
    Advance {
        ms: i64,
    },
    Consume {
        request: usize,
        tamper: u8,
    },
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1u32..=2, 1u32..=2, 1i64..=3_000).prop_map(|(required, deny_threshold, ttl_ms)| Op::Create {
            required,
            deny_threshold,
            ttl_ms
        }),
        3 => (0usize..2, 0usize..5, prop_oneof![3 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)]).prop_map(|(request, reviewer, decision)| Op::Vote {
            request,
            reviewer,
            decision
        }),
        1 => (0usize..2, any::<bool>()).prop_map(|(request, by_requester)| Op::Cancel { request, by_requester }),
        2 => (0i64..2_000).prop_map(|ms| Op::Advance { ms }),
        3 => (0usize..2, prop_oneof![3 => Just(0u8), 1 => 1u8..4]).prop_map(|(request, tamper)| Op::Consume { request, tamper }),
        1 => Just(Op::Sweep),
    ]
}

/// Reviewers 0..4; reviewer 4 is `alice`, the requester (always refused).
fn reviewer(index: usize) -> control_plane::Principal {
    if index == 4 {
        principal("alice", &[Role::Agent, Role::Reviewer])
    } else {
        principal(&format!("reviewer-{index}"), &[Role::Reviewer])
    }
}

async fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let plane = plane().await;
    let (control, clock) = (&plane.control, &plane.clock);
    let mut ids: Vec<i64> = Vec::new();
    let mut terminal: BTreeMap<i64, ApprovalStatus> = BTreeMap::new();
    let mut consumed: BTreeSet<i64> = BTreeSet::new();
    for op in ops {
        match op {
            Op::Create {
                required,
                deny_threshold,
                ttl_ms,
            } => {
                let mut asked = new_approval();
                asked.quorum = Quorum {
                    required,
                    deny_threshold,
                };
                asked.expires_at_ms = clock.now_ms() + ttl_ms;
                ids.push(control.request_approval(&asked).await.unwrap().id);
            }
            Op::Vote {
                request,
                reviewer: who,
                decision,
            } => {
                let Some(&id) = ids.get(request) else { continue };
                let decision = [
                    ReviewDecisionKind::Approve,
                    ReviewDecisionKind::Deny,
                    ReviewDecisionKind::Modify,
                ][decision as usize];
                let edited = (decision == ReviewDecisionKind::Modify)
                    .then_some("{\"schema_version\":\"agentd.invoke.v1\",\"input\":{}}");
                let _ = control.review(id, &reviewer(who), decision, None, edited).await;
            }
            Op::Cancel { request, by_requester } => {
                let Some(&id) = ids.get(request) else { continue };
                let who = if by_requester {
                    principal("alice", &[Role::Agent])
                } else {
                    reviewer(0)
                };
                let _ = control.cancel_approval(id, &who, None).await;
            }
            Op::Advance { ms } => clock.advance(ms),
            Op::Consume { request, tamper } => {
                let Some(&id) = ids.get(request) else { continue };
                let before = control.approval("acme", id).await.unwrap().unwrap();
                let now = clock.now_ms();
                let mut offered = binding();
                match tamper {
                    1 => offered.input_digest = "sha256:other".into(),
                    2 => offered.step_id = "step-2".into(),
                    3 => offered.policy_version = "sha256:newer".into(),
                    _ => {}
                }
                if control.consume_approval(id, &offered).await.is_ok() {
                    // The property: only an approved, unexpired, never-consumed request, for
                    // exactly what was approved, by a quorum of distinct non-requesters.
                    prop_assert_eq!(before.status, ApprovalStatus::Approved);
                    prop_assert!(now < before.expires_at_ms, "consumed after expiry");
                    prop_assert_eq!(tamper, 0, "consumed with a different binding");
                    prop_assert!(consumed.insert(id), "consumed twice");
                    let approvers: BTreeSet<&str> = before
                        .votes
                        .iter()
                        .filter(|v| v.decision == ReviewDecisionKind::Approve)
                        .map(|v| v.reviewer.as_str())
                        .collect();
                    prop_assert!(approvers.len() as u32 >= before.quorum.required);
                    prop_assert!(!approvers.contains("alice"));
                }
            }
            Op::Sweep => {
                control.expire_due().await.unwrap();
            }
        }
        // Terminal statuses never change.
        for &id in &ids {
            let status = control.approval("acme", id).await.unwrap().unwrap().status;
            if let Some(&was) = terminal.get(&id) {
                prop_assert_eq!(status, was, "request {} left terminal status {}", id, was);
            } else if status.is_terminal() {
                terminal.insert(id, status);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn no_dispatch_without_a_matching_unexpired_unconsumed_approval(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_ops(ops))?;
    }

    #[test]
    fn concurrent_deciders_make_exactly_one_deciding_transition(
        required in 1u32..=3,
        deny_threshold in 1u32..=3,
        votes in proptest::collection::vec(0u8..2, 1..8),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
        runtime.block_on(async move {
            let plane = plane().await;
            let control = &plane.control;
            let mut asked = new_approval();
            asked.quorum = Quorum { required, deny_threshold };
            let id = control.request_approval(&asked).await.unwrap().id;
            let mut tasks = Vec::new();
            for (index, vote) in votes.iter().enumerate() {
                let control = std::sync::Arc::clone(control);
                let decision = if *vote == 0 { ReviewDecisionKind::Approve } else { ReviewDecisionKind::Deny };
                tasks.push(tokio::spawn(async move {
                    control.review(id, &principal(&format!("r{index}"), &[Role::Reviewer]), decision, None, None).await
                }));
            }
            for task in tasks {
                let _ = task.await.unwrap();
            }
            let stored = control.approval("acme", id).await.unwrap().unwrap();
            let decisions = control
                .audit_entries()
                .await
                .unwrap()
                .iter()
                .filter(|e| e.kind == "approval-decision")
                .count();
            let approvals = stored.approvals();
            let denials = stored.denials();
            match stored.status {
                ApprovalStatus::Pending => {
                    prop_assert_eq!(decisions, 0);
                    prop_assert!(approvals < required && denials < deny_threshold);
                }
                ApprovalStatus::Approved => {
                    prop_assert_eq!(decisions, 1);
                    prop_assert_eq!(approvals, required);
                    prop_assert!(denials < deny_threshold);
                }
                ApprovalStatus::Denied => {
                    prop_assert_eq!(decisions, 1);
                    prop_assert_eq!(denials, deny_threshold);
                    prop_assert!(approvals < required);
                }
                other => prop_assert!(false, "unexpected status {}", other),
            }
            Ok(())
        })?;
    }
}
