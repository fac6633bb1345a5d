//! Run ownership as pure rules: who may write a run's events ([`check_fence`]), who may take a
//! run over ([`claim`]), what a stored event does to the run's record ([`after_event`]), and
//! what a recovery pass does with a run it finds ([`next_action`]).
//!
//! A lease is a time-bounded claim fenced by a token that grows with every claim (Kleppmann,
//! "How to do distributed locking", 2016; Gray and Cheriton, "Leases", SOSP 1989): a writer
//! paused past its lease cannot write after another took the run over, because the store
//! compares its token with the run's in the writing transaction.

use super::{Lease, RunRecord, RunState, RunStoreError, RunView};
use crate::hitl::{ApprovalRequest, ApprovalStatus};

/// How long a lease lasts unless renewed, by default: 30 s. Owners renew every third of it.
pub const DEFAULT_LEASE_TTL_MS: i64 = 30_000;

/// How long a run may work, by default, from its creation: 1 hour. A run waiting for a human
/// follows its approval's expiry instead.
pub const DEFAULT_RUN_DEADLINE_MS: i64 = 3_600_000;

/// Whether `owner` holding fencing token `token` may write `record`'s run now: it must be the
/// run's owner with the run's current token. The lease's expiry is not checked here: an owner
/// whose lease lapsed may still write until someone else claims the run (then the token moves).
///
/// # Errors
///
/// [`RunStoreError::LeaseLost`] naming both tokens and the current owner.
pub fn check_fence(record: &RunRecord, owner: &str, token: u64) -> Result<(), RunStoreError> {
    if record.owner.as_deref() == Some(owner) && record.fencing_token == token {
        return Ok(());
    }
    Err(RunStoreError::LeaseLost {
        run_id: record.run_id.clone(),
        offered: token,
        current: record.fencing_token,
        owner: record.owner.clone(),
    })
}

/// The record after `owner` claims `record`'s run at `now_ms` for `ttl_ms`, with the next
/// fencing token; `None` when the run is finished or someone else holds an unexpired lease.
pub fn claim(record: &RunRecord, owner: &str, now_ms: i64, ttl_ms: i64) -> Option<RunRecord> {
    if record.state.is_terminal() {
        return None;
    }
    let free = match &record.owner {
        None => true,
        Some(current) => current == owner || record.lease_expires_at_ms < now_ms,
    };
    free.then(|| RunRecord {
        owner: Some(owner.to_owned()),
        lease_expires_at_ms: now_ms.saturating_add(ttl_ms),
        fencing_token: record.fencing_token + 1,
        ..record.clone()
    })
}

/// The record after `owner` seizes `record`'s run at `now_ms` whoever holds it (to cancel it):
/// the next fencing token, so the holder's next write is refused.
pub fn seize(record: &RunRecord, owner: &str, now_ms: i64, ttl_ms: i64) -> RunRecord {
    RunRecord {
        owner: Some(owner.to_owned()),
        lease_expires_at_ms: now_ms.saturating_add(ttl_ms),
        fencing_token: record.fencing_token + 1,
        ..record.clone()
    }
}

/// The lease a claimed record gives its owner.
pub fn lease_of(record: &RunRecord) -> Option<Lease> {
    Some(Lease {
        run_id: record.run_id.clone(),
        owner: record.owner.clone()?,
        token: record.fencing_token,
        expires_at_ms: record.lease_expires_at_ms,
    })
}

/// The record after an event left the run as `view`, written by its owner at `now_ms`: the
/// derived state and awaited approval follow the events; a write renews the lease; a run that
/// waits for a human or is finished has no owner (nobody works on it).
pub fn after_event(record: &RunRecord, view: &RunView, now_ms: i64, ttl_ms: i64) -> RunRecord {
    let released = view.state.is_terminal() || view.state.is_waiting();
    RunRecord {
        state: view.state,
        owner: if released { None } else { record.owner.clone() },
        lease_expires_at_ms: if released { 0 } else { now_ms.saturating_add(ttl_ms) },
        approval_id: view
            .current_step()
            .and_then(|step| step.approval_id.or(step.started_with_approval))
            .or(record.approval_id),
        ..record.clone()
    }
}

/// What a recovery pass does with a run it found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum RecoveryAction {
    /// Nothing: it is finished, owned under a live lease, or waits on a live approval.
    Leave,
    /// Its deadline passed while it was working: record `run-timed-out`.
    TimeOut {
        /// The deadline, ms since the Unix epoch.
        deadline_ms: i64,
    },
    /// Its current step has not started: run it and the rest of the plan.
    Continue,
    /// Its current step started (the verdict and the dispatch intent are recorded) but how it
    /// ended is not: dispatch it again under the same idempotency key.
    Redispatch {
        /// The approval consumed when the step started, whose request it dispatches.
        approval_id: Option<i64>,
    },
    /// Its approval was granted (or modified) but the step never resumed: resume it.
    Resume {
        /// The approval.
        approval_id: i64,
    },
    /// Its approval is still pending but past its expiry: record the expiry, then close.
    Expire {
        /// The approval.
        approval_id: i64,
    },
    /// Its approval ended without it (denied, expired, cancelled): record that the step will
    /// not run.
    Close {
        /// The approval.
        approval_id: i64,
    },
    /// It waits on an approval that does not exist: fail it, naming the missing request.
    FailOrphan {
        /// Why.
        reason: String,
    },
}

/// What to do with run `record` (its events reduced to `view`; `approval` is the request it
/// waits on, if any) at `now_ms`. Pure: the recovery pass claims the run and carries it out.
pub fn next_action(
    record: &RunRecord,
    view: &RunView,
    approval: Option<&ApprovalRequest>,
    now_ms: i64,
) -> RecoveryAction {
    if view.state.is_terminal() {
        return RecoveryAction::Leave;
    }
    if record.owner.is_some() && record.lease_expires_at_ms >= now_ms {
        return RecoveryAction::Leave;
    }
    if view.state.is_waiting() {
        let Some(approval_id) = view.current_step().and_then(|step| step.approval_id) else {
            return RecoveryAction::FailOrphan {
                reason: "the run waits for a human but names no approval request".into(),
            };
        };
        let Some(approval) = approval.filter(|approval| approval.id == approval_id) else {
            return RecoveryAction::FailOrphan {
                reason: format!("the run waits on approval request #{approval_id}, which does not exist"),
            };
        };
        return match approval.status {
            ApprovalStatus::Pending if approval.expires_at_ms <= now_ms => RecoveryAction::Expire { approval_id },
            ApprovalStatus::Pending => RecoveryAction::Leave,
            ApprovalStatus::Approved | ApprovalStatus::Modified => RecoveryAction::Resume { approval_id },
            ApprovalStatus::Denied | ApprovalStatus::Expired | ApprovalStatus::Cancelled => {
                RecoveryAction::Close { approval_id }
            }
            // A waiting step whose approval was consumed: the consumption and the step's start are
            // one transaction, so this is a run stopped by an older agentd between the two. The
            // step did not start: nothing was dispatched. It cannot be consumed again.
            ApprovalStatus::Consumed => RecoveryAction::FailOrphan {
                reason: format!(
                    "approval request #{approval_id} was consumed but its step never started (an interrupted older agentd); ask again"
                ),
            },
        };
    }
    if let Some(deadline_ms) = view.deadline_ms
        && deadline_ms <= now_ms
    {
        return RecoveryAction::TimeOut { deadline_ms };
    }
    match view.current_step().map(|step| (step.state, step.started_with_approval)) {
        Some((RunState::Running, approval_id)) => RecoveryAction::Redispatch { approval_id },
        _ => RecoveryAction::Continue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{RunEvent, RunEventPayload, StepSpec, reduce};

    fn record(owner: Option<&str>, expires: i64, token: u64) -> RunRecord {
        RunRecord {
            run_id: "run-1".into(),
            tenant: "acme".into(),
            state: RunState::Running,
            owner: owner.map(str::to_owned),
            lease_expires_at_ms: expires,
            fencing_token: token,
            deadline_ms: Some(10_000),
            approval_id: None,
        }
    }

    fn view(payloads: Vec<RunEventPayload>) -> RunView {
        let mut events = vec![RunEvent {
            event_id: "e0".into(),
            run_id: "run-1".into(),
            lamport: 1,
            node_id: "n".into(),
            fencing_token: 1,
            recorded_at_ms: 0,
            traceparent: String::new(),
            schema_version: 2,
            payload: RunEventPayload::RunCreated {
                tenant: "acme".into(),
                principal: "alice@acme".into(),
                steps: vec![StepSpec {
                    step_id: "s".into(),
                    skill: "k".into(),
                    input: serde_json::json!({}),
                }],
                deadline_ms: Some(10_000),
                principal_roles: Vec::new(),
            },
        }];
        for (index, payload) in payloads.into_iter().enumerate() {
            events.push(RunEvent {
                event_id: format!("e{}", index + 1),
                lamport: index as u64 + 2,
                payload,
                ..events[0].clone()
            });
        }
        reduce(&events).unwrap()
    }

    #[test]
    fn only_the_current_owner_with_the_current_token_writes_and_claims_fence_the_old_one_out() {
        let held = record(Some("a"), 1_000, 3);
        assert!(check_fence(&held, "a", 3).is_ok());
        assert!(matches!(
            check_fence(&held, "a", 2),
            Err(RunStoreError::LeaseLost {
                offered: 2,
                current: 3,
                ..
            })
        ));
        assert!(check_fence(&held, "b", 3).is_err());
        // b cannot claim a live lease; it can once it lapsed, and a's token is then stale.
        assert_eq!(claim(&held, "b", 999, 100), None);
        let taken = claim(&held, "b", 1_001, 100).unwrap();
        assert_eq!((taken.owner.as_deref(), taken.fencing_token), (Some("b"), 4));
        assert!(check_fence(&taken, "a", 3).is_err());
        // A finished run is nobody's to claim.
        let done = RunRecord {
            state: RunState::Succeeded,
            owner: None,
            ..held
        };
        assert_eq!(claim(&done, "b", 5_000, 100), None);
    }

    #[test]
    fn recovery_decides_from_the_events_the_lease_and_the_approval() {
        let lapsed = record(Some("a"), 100, 1);
        // Created, nothing started: continue.
        assert_eq!(next_action(&lapsed, &view(vec![]), None, 200), RecoveryAction::Continue);
        // A live lease: leave it.
        assert_eq!(next_action(&lapsed, &view(vec![]), None, 50), RecoveryAction::Leave);
        // Started, not ended: redispatch; under the consumed approval if it started with one.
        let started = view(vec![RunEventPayload::StepStarted {
            step_id: "s".into(),
            approval_id: Some(7),
        }]);
        assert_eq!(
            next_action(&lapsed, &started, None, 200),
            RecoveryAction::Redispatch { approval_id: Some(7) }
        );
        // Past the deadline while working: time out.
        assert_eq!(
            next_action(&lapsed, &started, None, 10_000),
            RecoveryAction::TimeOut { deadline_ms: 10_000 }
        );
        // Waiting on an approval that does not exist: fail, naming it.
        let waiting = view(vec![
            RunEventPayload::StepStarted {
                step_id: "s".into(),
                approval_id: None,
            },
            RunEventPayload::StepAwaitingApproval {
                step_id: "s".into(),
                approval_id: 9,
            },
        ]);
        let unowned = record(None, 0, 1);
        assert!(matches!(
            next_action(&unowned, &waiting, None, 200),
            RecoveryAction::FailOrphan { .. }
        ));
    }
}
