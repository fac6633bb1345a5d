//! The approval rules as pure functions: a stored [`ApprovalRequest`] and an answer in, the
//! [`ApprovalTransition`] to apply (or the [`ApprovalError`] naming the rule) out.
//!
//! Nothing here reads a clock or a store: the caller passes `now_ms` and the request it read
//! inside its transaction, then applies the transition as a compare-and-set on `from`. Every
//! transition is checked against [`ApprovalStatus::can_become`], so a rule cannot produce a
//! move the state machine does not have.

use super::{
    ApprovalBinding, ApprovalError, ApprovalRequest, ApprovalStatus, ApprovalTransition, Decided, ReviewDecisionKind,
    Vote, decisions_text,
};
use crate::identity::{Principal, Role};

impl ApprovalTransition {
    fn new(
        request: &ApprovalRequest,
        to: ApprovalStatus,
        at_ms: i64,
        decided: Option<Decided>,
    ) -> Result<Self, ApprovalError> {
        if !request.status.can_become(to) {
            return Err(ApprovalError::IllegalTransition {
                id: request.id,
                from: request.status,
                to,
            });
        }
        Ok(ApprovalTransition {
            id: request.id,
            from: request.status,
            to,
            at_ms,
            decided,
        })
    }
}

/// The subject of the system job that records expiries.
pub const EXPIRY_JOB: &str = "approval-expiry";

/// If `request` is in status `live` and its stored `expires_at_ms` is at or before `now_ms`:
/// the expiry transition (decided by `system:approval-expiry`; it counts as denied).
pub fn expiry(request: &ApprovalRequest, live: ApprovalStatus, now_ms: i64) -> Option<ApprovalTransition> {
    if request.status != live || now_ms < request.expires_at_ms {
        return None;
    }
    ApprovalTransition::new(
        request,
        ApprovalStatus::Expired,
        now_ms,
        Some(Decided {
            by: format!("{}{EXPIRY_JOB}", crate::identity::SYSTEM_SUBJECT_PREFIX),
            reason: Some("expired: counts as denied".to_owned()),
            modified_request_json: None,
        }),
    )
    .ok()
}

/// What one reviewer's answer does: the vote to record, the counts after it, and the transition
/// it completes, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteOutcome {
    /// The vote to record.
    pub vote: Vote,
    /// Approving votes including this one.
    pub approvals: u32,
    /// Denying votes including this one.
    pub denials: u32,
    /// The transition the vote completes: approved at the quorum, denied at the deny threshold,
    /// modified at the first modification; `None` while still pending.
    pub transition: Option<ApprovalTransition>,
}

/// The rules of an answer: the request is pending; separation of duties (the reviewer holds the
/// request's role, and is neither the requester nor the acting agent); the answer is allowed; a
/// modification, and only a modification, carries the edited request; one vote per reviewer.
/// The caller checks the policy permission to review and the tenant (a request of another
/// tenant does not exist for the reviewer).
///
/// # Errors
///
/// The [`ApprovalError`] of the first rule that refuses the answer.
pub fn vote(
    request: &ApprovalRequest,
    reviewer: &Principal,
    decision: ReviewDecisionKind,
    reason: Option<&str>,
    modified_request_json: Option<&str>,
    now_ms: i64,
) -> Result<VoteOutcome, ApprovalError> {
    let id = request.id;
    if request.status != ApprovalStatus::Pending {
        return Err(ApprovalError::AlreadyDecided {
            id,
            status: request.status,
            decided_by: request.decided_by.clone(),
        });
    }
    if !reviewer.has_role(request.reviewer_role) {
        return Err(ApprovalError::NotAReviewer {
            id,
            required: request.reviewer_role,
        });
    }
    if reviewer.subject == request.requester {
        return Err(ApprovalError::SelfApproval { id, who: "requester" });
    }
    if reviewer.subject == request.acting_agent {
        return Err(ApprovalError::SelfApproval {
            id,
            who: "acting agent",
        });
    }
    if !request.allowed_decisions.contains(&decision) {
        return Err(ApprovalError::DecisionNotAllowed {
            id,
            decision,
            allowed: decisions_text(&request.allowed_decisions),
        });
    }
    match (decision, modified_request_json) {
        (ReviewDecisionKind::Modify, None) => {
            return Err(ApprovalError::BadModification {
                id,
                message: "a modification needs the edited request".into(),
            });
        }
        (ReviewDecisionKind::Approve | ReviewDecisionKind::Deny, Some(_)) => {
            return Err(ApprovalError::BadModification {
                id,
                message: "only a modification carries an edited request".into(),
            });
        }
        _ => {}
    }
    if let Some(earlier) = request.votes.iter().find(|vote| vote.reviewer == reviewer.subject) {
        return Err(ApprovalError::AlreadyVoted {
            id,
            decision: earlier.decision,
        });
    }
    let approvals = request.approvals() + u32::from(decision == ReviewDecisionKind::Approve);
    let denials = request.denials() + u32::from(decision == ReviewDecisionKind::Deny);
    let next = match decision {
        ReviewDecisionKind::Modify => Some(ApprovalStatus::Modified),
        _ if denials >= request.quorum.deny_threshold => Some(ApprovalStatus::Denied),
        _ if approvals >= request.quorum.required => Some(ApprovalStatus::Approved),
        _ => None,
    };
    let transition = next
        .map(|to| {
            ApprovalTransition::new(
                request,
                to,
                now_ms,
                Some(Decided {
                    by: reviewer.subject.clone(),
                    reason: reason.map(str::to_owned),
                    modified_request_json: modified_request_json.map(str::to_owned),
                }),
            )
        })
        .transpose()?;
    Ok(VoteOutcome {
        vote: Vote {
            reviewer: reviewer.subject.clone(),
            decision,
            reason: reason.map(str::to_owned),
            at_ms: now_ms,
        },
        approvals,
        denials,
        transition,
    })
}

/// Withdrawing a pending request: only its requester or an admin of its tenant may.
///
/// # Errors
///
/// [`ApprovalError::NotAllowedToCancel`] or [`ApprovalError::AlreadyDecided`].
pub fn cancel(
    request: &ApprovalRequest,
    principal: &Principal,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<ApprovalTransition, ApprovalError> {
    if principal.subject != request.requester && !principal.has_role(Role::Admin) {
        return Err(ApprovalError::NotAllowedToCancel { id: request.id });
    }
    if request.status != ApprovalStatus::Pending {
        return Err(ApprovalError::AlreadyDecided {
            id: request.id,
            status: request.status,
            decided_by: request.decided_by.clone(),
        });
    }
    ApprovalTransition::new(
        request,
        ApprovalStatus::Cancelled,
        now_ms,
        Some(Decided {
            by: principal.subject.clone(),
            reason: reason.map(str::to_owned),
            modified_request_json: None,
        }),
    )
}

/// Consuming a decided request for the dispatch it released, once:
///
/// - an **approved** request: every bound field (run id, step id, skill id, skill digest, input
///   digest, policy version) must equal what the dispatch offers;
/// - a **modified** request: the run, step and skill must match and the offered input digest
///   must be the reviewer's edited input's ([`modified_input_digest`]); the edited step is
///   governed again under the policy in force, so skill digest and policy version are whatever
///   that verdict ran under.
///
/// The caller checks the tenant and expiry first.
///
/// # Errors
///
/// [`ApprovalError::NotApproved`] (any other status, including `consumed`: a second
/// consumption) or [`ApprovalError::BindingMismatch`] naming the first field that differs.
pub fn consume(
    request: &ApprovalRequest,
    binding: &ApprovalBinding,
    now_ms: i64,
) -> Result<ApprovalTransition, ApprovalError> {
    let id = request.id;
    let modified_digest;
    let bound: Vec<(&'static str, &String, &String)> = match request.status {
        ApprovalStatus::Approved => vec![
            ("run id", &request.run_id, &binding.run_id),
            ("step id", &request.step_id, &binding.step_id),
            ("skill id", &request.skill.id, &binding.skill_id),
            ("skill digest", &request.skill.digest, &binding.skill_digest),
            ("input digest", &request.input_digest, &binding.input_digest),
            ("policy version", &request.policy_version, &binding.policy_version),
        ],
        ApprovalStatus::Modified => {
            modified_digest = modified_input_digest(request).unwrap_or_default();
            vec![
                ("run id", &request.run_id, &binding.run_id),
                ("step id", &request.step_id, &binding.step_id),
                ("skill id", &request.skill.id, &binding.skill_id),
                ("edited input digest", &modified_digest, &binding.input_digest),
            ]
        }
        status => return Err(ApprovalError::NotApproved { id, status }),
    };
    for (what, bound, offered) in bound {
        if bound != offered {
            return Err(ApprovalError::BindingMismatch {
                id,
                what,
                bound: bound.clone(),
                offered: offered.clone(),
            });
        }
    }
    ApprovalTransition::new(request, ApprovalStatus::Consumed, now_ms, None)
}

/// `sha256:<hex>` of the edited input of a modified request (its canonical JSON text, as a
/// step computes it); `None` when there is none or it does not parse.
pub fn modified_input_digest(request: &ApprovalRequest) -> Option<String> {
    use sha2::Digest as _;
    let edited = plugin_abi::InvokeRequest::parse(request.modified_request_json.as_deref()?).ok()?;
    Some(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(edited.input_json().as_bytes()))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hitl::Quorum;
    use std::collections::BTreeSet;

    fn principal(subject: &str, roles: &[Role]) -> Principal {
        Principal {
            subject: subject.into(),
            tenant: "acme".into(),
            roles: roles.iter().copied().collect::<BTreeSet<_>>(),
        }
    }

    fn request(status: ApprovalStatus) -> ApprovalRequest {
        ApprovalRequest {
            id: 1,
            created_at_ms: 0,
            tenant: "acme".into(),
            requester: "alice".into(),
            requester_roles: [Role::Agent].into_iter().collect(),
            acting_agent: "robot".into(),
            run_id: "run-1".into(),
            step_id: "step-1".into(),
            traceparent: String::new(),
            skill: plugin_abi::SkillSummary {
                id: "publish-report".into(),
                version: semver::Version::new(0, 1, 0),
                side_effect: plugin_abi::SideEffect::Effectful,
                capabilities: vec![],
                digest: "sha256:aa".into(),
                cpu_metering: plugin_abi::CpuMetering::Fuel,
            },
            input_digest: "sha256:bb".into(),
            request_json: String::new(),
            policy_version: "sha256:cc".into(),
            reviewer_role: Role::Reviewer,
            quorum: Quorum {
                required: 2,
                deny_threshold: 1,
            },
            expires_at_ms: 1_000,
            allowed_decisions: vec![ReviewDecisionKind::Approve, ReviewDecisionKind::Deny],
            parent_id: None,
            status,
            votes: Vec::new(),
            decided_by: None,
            decided_at_ms: None,
            decision_reason: None,
            modified_request_json: None,
            consumed_at_ms: None,
        }
    }

    #[test]
    fn every_rule_returns_a_transition_the_state_machine_has() {
        let bob = principal("bob", &[Role::Reviewer]);
        let pending = request(ApprovalStatus::Pending);
        let first = vote(&pending, &bob, ReviewDecisionKind::Approve, None, None, 10).unwrap();
        assert_eq!((first.approvals, first.transition), (1, None));
        let mut one_in = pending.clone();
        one_in.votes.push(first.vote);
        let carol = principal("carol", &[Role::Reviewer]);
        let second = vote(&one_in, &carol, ReviewDecisionKind::Approve, None, None, 20).unwrap();
        let transition = second.transition.unwrap();
        assert_eq!(
            (transition.from, transition.to),
            (ApprovalStatus::Pending, ApprovalStatus::Approved)
        );
        assert!(transition.from.can_become(transition.to));
        assert!(matches!(
            vote(&one_in, &bob, ReviewDecisionKind::Deny, None, None, 20),
            Err(ApprovalError::AlreadyVoted { .. })
        ));

        // Expiry applies only to the live status it is asked about, from the stored time.
        assert_eq!(expiry(&pending, ApprovalStatus::Pending, 999), None);
        let expired = expiry(&pending, ApprovalStatus::Pending, 1_000).unwrap();
        assert_eq!(expired.to, ApprovalStatus::Expired);
        assert_eq!(expired.decided.unwrap().by, "system:approval-expiry");
        assert_eq!(expiry(&pending, ApprovalStatus::Approved, 5_000), None);

        // A terminal request makes no transition, whatever rule is asked.
        for status in [
            ApprovalStatus::Denied,
            ApprovalStatus::Consumed,
            ApprovalStatus::Cancelled,
        ] {
            let done = request(status);
            assert!(vote(&done, &bob, ReviewDecisionKind::Approve, None, None, 1).is_err());
            assert!(cancel(&done, &principal("alice", &[Role::Agent]), None, 1).is_err());
            assert!(consume(&done, &binding(), 1).is_err());
            assert_eq!(expiry(&done, status, 5_000), None);
        }
        let approved = request(ApprovalStatus::Approved);
        let consumed = consume(&approved, &binding(), 30).unwrap();
        assert_eq!((consumed.to, consumed.decided), (ApprovalStatus::Consumed, None));
    }

    fn binding() -> ApprovalBinding {
        ApprovalBinding {
            tenant: "acme".into(),
            run_id: "run-1".into(),
            step_id: "step-1".into(),
            skill_id: "publish-report".into(),
            skill_digest: "sha256:aa".into(),
            input_digest: "sha256:bb".into(),
            policy_version: "sha256:cc".into(),
        }
    }
}
