//! Approvals: the HITL rules of [`crate::hitl::rules`] applied as compare-and-sets, each with its
//! audit entry in the same unit of work.

use sha2::{Digest, Sha256};

use super::{ControlPlane, audit_log, ownership, runs};
use crate::audit::{
    ApprovalConsumed, ApprovalDecided, ApprovalRequested, AuditEvent, CancellationRecord, ExpiryRecord, VoteRecord,
};
use crate::error::StoreError;
use crate::hitl::ApprovalTransition;
use crate::hitl::rules::{self, EXPIRY_JOB, VoteOutcome};
use crate::hitl::{ApprovalBinding, ApprovalError, ApprovalRequest, ApprovalStatus, NewApproval, ReviewDecisionKind};
use crate::identity::{Principal, Role, with_system_identity};
use crate::run::{RunEvent, RunEventDraft, RunStoreError};
use crate::storage::{LockKey, UnitOfWork};

/// Locks approval request `id` for a write unit (ADR 0020): its run first, as the lock order
/// has it (a unit holding that run already locks nothing more for it), then the request, so
/// votes, the transition's compare-and-set and the run's end see what was read.
async fn lock_approval(unit: &mut dyn UnitOfWork, id: i64) -> Result<(), StoreError> {
    // A request's run never changes, so reading it before the lock is safe.
    if let Some(request) = unit.approval(id).await? {
        unit.lock(LockKey::Run(&request.run_id)).await?;
    }
    unit.lock(LockKey::Approval(id)).await
}

impl ControlPlane {
    /// Stores a pending approval request (audited in the same unit of work), before anyone is
    /// notified.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing is stored then.
    pub async fn request_approval(&self, request: &NewApproval) -> Result<ApprovalRequest, StoreError> {
        let now = self.now_ms();
        let mut unit = self.write().await?;
        let stored = self.insert_approval_in(&mut *unit, request, now).await?;
        unit.commit().await?;
        Ok(stored)
    }

    /// Stores a pending approval request for a step of a run together with the run event that
    /// makes the run wait on it (`event(approval_id)`, typically `step-awaiting-approval` or
    /// `step-escalated`), in one transaction: a crash leaves either both or neither, so no
    /// approval is pending for a run that does not wait on it. The event is fenced by its
    /// draft's lease like every run write.
    ///
    /// # Errors
    ///
    /// [`RunStoreError::LeaseLost`] when the writer no longer holds the run, the run's rules'
    /// error when the event does not apply, [`StoreError`] otherwise; nothing is stored then.
    pub async fn request_step_approval(
        &self,
        request: &NewApproval,
        event: impl FnOnce(i64) -> RunEventDraft,
    ) -> Result<(ApprovalRequest, RunEvent), RunStoreError> {
        let now = self.now_ms();
        let mut unit = self.write().await?;
        // The run first, as every unit that writes a run and its approvals (ADR 0020).
        unit.lock(LockKey::Run(&request.run_id)).await?;
        let stored = self.insert_approval_in(&mut *unit, request, now).await?;
        let event = runs::append_run_event(&mut *unit, event(stored.id), now, self.lease_ttl_ms).await?;
        unit.commit().await?;
        Ok((stored, event))
    }

    async fn insert_approval_in(
        &self,
        unit: &mut dyn UnitOfWork,
        request: &NewApproval,
        now: i64,
    ) -> Result<ApprovalRequest, StoreError> {
        let id = unit.insert_approval(request, now).await?;
        let event = AuditEvent::ApprovalRequested(ApprovalRequested {
            approval_id: id,
            run_id: request.run_id.clone(),
            step_id: request.step_id.clone(),
            traceparent: request.traceparent.clone(),
            acting_agent: request.acting_agent.clone(),
            skill: request.skill.clone(),
            input_digest: request.input_digest.clone(),
            policy_version: request.policy_version.clone(),
            reviewer_role: request.reviewer_role,
            quorum: request.quorum,
            expires_at_ms: request.expires_at_ms,
            allowed_decisions: request.allowed_decisions.clone(),
            parent_id: request.parent_id,
        });
        audit_log::append(unit, self.store.anchor_key(), &event, &request.requester, now).await?;
        unit.approval(id)
            .await?
            .ok_or_else(|| StoreError::corrupt(format!("approval {id} vanished")))
    }

    /// One approval request of `tenant`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the read fails.
    pub async fn approval(&self, tenant: &str, id: i64) -> Result<Option<ApprovalRequest>, StoreError> {
        let mut unit = self.read().await?;
        Ok(unit.approval(id).await?.filter(|request| request.tenant == tenant))
    }

    /// How many requests of every tenant are in `status` (for metrics: pending approvals).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the read fails.
    pub async fn count_approvals(&self, status: ApprovalStatus) -> Result<i64, StoreError> {
        self.read().await?.count_approvals(status).await
    }

    /// Approval requests of `tenant`, newest first, optionally only those in `status`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the read fails.
    pub async fn list_approvals(
        &self,
        tenant: &str,
        status: Option<ApprovalStatus>,
    ) -> Result<Vec<ApprovalRequest>, StoreError> {
        let mut unit = self.read().await?;
        let mut requests = Vec::new();
        for id in unit.approval_ids(tenant, status).await? {
            if let Some(request) = unit.approval(id).await? {
                requests.push(request);
            }
        }
        Ok(requests)
    }

    /// A reviewer answers approval request `id`: policy must permit the review (action `review`
    /// on the skill, in the request's tenant and risk tier), then the vote is recorded under the
    /// rules of [`rules::vote`] (separation of duties, allowed answers, one vote per reviewer),
    /// and the transition it completes (quorum, deny threshold, modification) is a
    /// compare-and-set, made once even under concurrent reviewers. A request past its stored
    /// expiry becomes `expired` (audited) and the answer is refused.
    /// `modified_request_json` is the edited `agentd.invoke.v1` request of a `modify` answer.
    ///
    /// # Errors
    ///
    /// [`ApprovalError`] naming the rule that refused the answer; the stored request is
    /// unchanged then (except for an expiry, which is recorded).
    pub async fn review(
        &self,
        id: i64,
        reviewer: &Principal,
        decision: ReviewDecisionKind,
        reason: Option<&str>,
        modified_request_json: Option<&str>,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let request = self
            .approval(&reviewer.tenant, id)
            .await?
            .ok_or(ApprovalError::NotFound { id })?;
        self.policy()
            .may_review(reviewer, &request.skill, &request.tenant, &request.requester)
            .map_err(|reason| ApprovalError::ReviewNotPermitted { id, reason })?;
        let now = self.now_ms();
        let unit = self.write().await?;
        let (mut unit, request) = self
            .unexpired(unit, id, &reviewer.tenant, ApprovalStatus::Pending, now)
            .await?;
        let outcome = rules::vote(&request, reviewer, decision, reason, modified_request_json, now)?;
        unit.insert_vote(id, &outcome.vote).await?;
        if let Some(transition) = &outcome.transition {
            self.apply(&mut *unit, &request, transition).await?;
        }
        let record = vote_record(&request, reviewer, &outcome, modified_request_json);
        let event = match outcome.transition {
            Some(_) => AuditEvent::ApprovalDecision(ApprovalDecided::Vote(Box::new(record))),
            None => AuditEvent::ApprovalVote(record),
        };
        audit_log::append(&mut *unit, self.store.anchor_key(), &event, reviewer, now).await?;
        let decided = unit.approval(id).await?.ok_or(ApprovalError::NotFound { id })?;
        if let Some(payload) = ownership::closing_event(&decided) {
            let actor = format!("review:{reviewer}");
            ownership::close_waiting_run(&mut *unit, &decided, &actor, payload, now, self.lease_ttl_ms)
                .await
                .map_err(into_store)?;
        }
        unit.commit().await?;
        Ok(decided)
    }

    /// Withdraws a pending request: only its requester or an admin of its tenant may. The run
    /// waiting on it is cancelled in the same unit of work.
    ///
    /// # Errors
    ///
    /// [`ApprovalError::NotAllowedToCancel`], [`ApprovalError::AlreadyDecided`],
    /// [`ApprovalError::NotFound`], or a store error.
    pub async fn cancel_approval(
        &self,
        id: i64,
        principal: &Principal,
        reason: Option<&str>,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let now = self.now_ms();
        let mut unit = self.write().await?;
        let cancelled = self
            .cancel_pending_in(&mut *unit, id, principal, reason.unwrap_or_default(), now)
            .await?;
        if let Some(payload) = ownership::closing_event(&cancelled) {
            let actor = format!("cancel:{principal}");
            ownership::close_waiting_run(&mut *unit, &cancelled, &actor, payload, now, self.lease_ttl_ms)
                .await
                .map_err(into_store)?;
        }
        unit.commit().await?;
        Ok(cancelled)
    }

    /// Cancels pending request `id` inside `unit`, audited (not its run).
    pub(super) async fn cancel_pending_in(
        &self,
        unit: &mut dyn UnitOfWork,
        id: i64,
        principal: &Principal,
        reason: &str,
        now: i64,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let reason = Some(reason).filter(|reason| !reason.is_empty());
        lock_approval(unit, id).await?;
        let request = unit
            .approval(id)
            .await?
            .filter(|request| request.tenant == principal.tenant)
            .ok_or(ApprovalError::NotFound { id })?;
        let transition = rules::cancel(&request, principal, reason, now)?;
        self.apply(unit, &request, &transition).await?;
        let event = AuditEvent::ApprovalDecision(ApprovalDecided::Cancelled(CancellationRecord {
            approval_id: id,
            status: ApprovalStatus::Cancelled,
            reason: reason.map(str::to_owned),
            run_id: request.run_id.clone(),
            step_id: request.step_id.clone(),
            skill_id: request.skill.id.clone(),
            input_digest: request.input_digest.clone(),
            policy_version: request.policy_version.clone(),
        }));
        audit_log::append(unit, self.store.anchor_key(), &event, principal, now).await?;
        unit.approval(id).await?.ok_or(ApprovalError::NotFound { id })
    }

    /// Closes the run of approval request `id` of `tenant` if it still waits on it although the
    /// request ended without its step running (denied, expired, cancelled): for runs left so
    /// by an interrupted older agentd (this one closes them in the deciding transaction).
    /// `false` when there was nothing to close.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn close_after_approval(&self, tenant: &str, id: i64) -> Result<bool, StoreError> {
        let now = self.now_ms();
        let mut unit = self.write().await?;
        lock_approval(&mut *unit, id).await?;
        let Some(request) = unit.approval(id).await?.filter(|request| request.tenant == tenant) else {
            return Ok(false);
        };
        let Some(payload) = ownership::closing_event(&request) else {
            // Nothing written: ends the unit so its locks are free at once.
            unit.commit().await?;
            return Ok(false);
        };
        let closed = ownership::close_waiting_run(
            &mut *unit,
            &request,
            &format!("system:{}", ownership::RECOVERY_JOB),
            payload,
            now,
            self.lease_ttl_ms,
        )
        .await
        .map_err(into_store)?;
        unit.commit().await?;
        Ok(closed)
    }

    /// Expires every pending or approved-but-unconsumed request whose stored `expires_at_ms` is
    /// at or before now (each audited as decided by `system:approval-expiry`), and returns their
    /// ids.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; no request is expired then.
    pub async fn expire_due(&self) -> Result<Vec<i64>, StoreError> {
        let now = self.now_ms();
        if self.read().await?.due_approval_ids(now).await?.is_empty() {
            return Ok(Vec::new());
        }
        // Many approvals and their runs at once: every other writer waits (rare).
        let mut unit = self.store.backend().begin(crate::storage::Access::Exclusive).await?;
        let ids = unit.due_approval_ids(now).await?;
        for &id in &ids {
            if let Some(request) = unit.approval(id).await?
                && let Some(transition) = rules::expiry(&request, request.status, now)
            {
                self.record_expiry(&mut *unit, &request, &transition).await?;
            }
        }
        unit.commit().await?;
        Ok(ids)
    }

    /// Consumes a decided request for the dispatch it released, exactly once, and audits the
    /// consumption in the same unit of work. Runs start steps under an approval with
    /// [`ControlPlane::govern_step`], which consumes in the step's starting transaction.
    ///
    /// An approved request binds tenant, run id, step id, skill id, skill digest, input digest
    /// and policy version; a modified one binds run, step, skill and the edited input
    /// ([`rules::consume`]). Any difference, a second consumption or an expired approval is
    /// refused.
    ///
    /// # Errors
    ///
    /// [`ApprovalError::NotApproved`], [`ApprovalError::BindingMismatch`],
    /// [`ApprovalError::Expired`] or [`ApprovalError::NotFound`].
    pub async fn consume_approval(&self, id: i64, binding: &ApprovalBinding) -> Result<ApprovalRequest, ApprovalError> {
        let now = self.now_ms();
        let unit = self.write().await?;
        let (mut unit, _) = self
            .unexpired(unit, id, &binding.tenant, ApprovalStatus::Approved, now)
            .await?;
        self.consume_in(&mut *unit, id, binding, now).await?;
        let consumed = unit.approval(id).await?.ok_or(ApprovalError::NotFound { id })?;
        unit.commit().await?;
        Ok(consumed)
    }

    /// Consumes request `id` inside `unit` under `binding`, audited. An expired request is
    /// refused with [`ApprovalError::Expired`] (nothing written: the caller records the expiry).
    /// The caller has locked the request's run (or the binding's: a request of another run is
    /// refused by the binding); this locks the request.
    pub(super) async fn consume_in(
        &self,
        unit: &mut dyn UnitOfWork,
        id: i64,
        binding: &ApprovalBinding,
        now: i64,
    ) -> Result<(), ApprovalError> {
        unit.lock(LockKey::Approval(id)).await?;
        let request = unit
            .approval(id)
            .await?
            .filter(|request| request.tenant == binding.tenant)
            .ok_or(ApprovalError::NotFound { id })?;
        if rules::expiry(&request, request.status, now).is_some() {
            return Err(ApprovalError::Expired {
                id,
                expires_at_ms: request.expires_at_ms,
            });
        }
        let transition = rules::consume(&request, binding, now)?;
        self.apply(unit, &request, &transition).await?;
        let event = AuditEvent::ApprovalConsumed(ApprovalConsumed {
            approval_id: id,
            run_id: request.run_id.clone(),
            step_id: request.step_id.clone(),
            skill_id: request.skill.id.clone(),
            skill_digest: request.skill.digest.clone(),
            input_digest: binding.input_digest.clone(),
            policy_version: binding.policy_version.clone(),
        });
        let consumer = request.requester_principal();
        audit_log::append(unit, self.store.anchor_key(), &event, &consumer, now).await?;
        Ok(())
    }

    /// Fetches request `id` of `tenant` inside `unit`. If it is `live` but its stored
    /// `expires_at_ms` has passed, the expiry is recorded and committed, and the result is
    /// [`ApprovalError::Expired`]: expiry is decided from the stored time, never the caller's.
    async fn unexpired(
        &self,
        mut unit: Box<dyn UnitOfWork>,
        id: i64,
        tenant: &str,
        live: ApprovalStatus,
        now: i64,
    ) -> Result<(Box<dyn UnitOfWork>, ApprovalRequest), ApprovalError> {
        lock_approval(&mut *unit, id).await?;
        let request = unit
            .approval(id)
            .await?
            .filter(|request| request.tenant == tenant)
            .ok_or(ApprovalError::NotFound { id })?;
        if let Some(transition) = rules::expiry(&request, live, now) {
            self.record_expiry(&mut *unit, &request, &transition).await?;
            unit.commit().await?;
            return Err(ApprovalError::Expired {
                id,
                expires_at_ms: request.expires_at_ms,
            });
        }
        Ok((unit, request))
    }

    async fn record_expiry(
        &self,
        unit: &mut dyn UnitOfWork,
        request: &ApprovalRequest,
        transition: &ApprovalTransition,
    ) -> Result<(), StoreError> {
        if !unit.apply_transition(transition).await? {
            return Ok(());
        }
        let system = with_system_identity(EXPIRY_JOB, &request.tenant, &[Role::Admin]).map_err(StoreError::corrupt)?;
        let event = AuditEvent::ApprovalDecision(ApprovalDecided::Expired(ExpiryRecord {
            approval_id: request.id,
            status: ApprovalStatus::Expired,
            was: request.status,
            expires_at_ms: request.expires_at_ms,
            run_id: request.run_id.clone(),
            step_id: request.step_id.clone(),
            skill_id: request.skill.id.clone(),
            input_digest: request.input_digest.clone(),
            policy_version: request.policy_version.clone(),
        }));
        audit_log::append(unit, self.store.anchor_key(), &event, &system, transition.at_ms).await?;
        let expired = ApprovalRequest {
            status: ApprovalStatus::Expired,
            ..request.clone()
        };
        if let Some(payload) = ownership::closing_event(&expired) {
            ownership::close_waiting_run(
                unit,
                &expired,
                &system.to_string(),
                payload,
                transition.at_ms,
                self.lease_ttl_ms,
            )
            .await
            .map_err(into_store)?;
        }
        Ok(())
    }

    /// Executes `transition` as a compare-and-set; another writer got there first when it
    /// finds the request no longer in `transition.from`.
    async fn apply(
        &self,
        unit: &mut dyn UnitOfWork,
        request: &ApprovalRequest,
        transition: &ApprovalTransition,
    ) -> Result<(), ApprovalError> {
        if unit.apply_transition(transition).await? {
            return Ok(());
        }
        Err(match transition.to {
            ApprovalStatus::Consumed => ApprovalError::NotApproved {
                id: request.id,
                status: ApprovalStatus::Consumed,
            },
            _ => ApprovalError::AlreadyDecided {
                id: request.id,
                status: request.status,
                decided_by: request.decided_by.clone(),
            },
        })
    }
}

fn vote_record(
    request: &ApprovalRequest,
    reviewer: &Principal,
    outcome: &VoteOutcome,
    modified_request_json: Option<&str>,
) -> VoteRecord {
    VoteRecord {
        approval_id: request.id,
        vote: outcome.vote.decision,
        reviewer: reviewer.subject.clone(),
        reviewer_roles: reviewer.roles.iter().copied().collect(),
        reason: outcome.vote.reason.clone(),
        approvals: outcome.approvals,
        denials: outcome.denials,
        quorum: request.quorum,
        status: outcome
            .transition
            .as_ref()
            .map_or(ApprovalStatus::Pending, |transition| transition.to),
        modified_request_digest: modified_request_json
            .map(|text| format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))),
        requester: request.requester.clone(),
        acting_agent: request.acting_agent.clone(),
        run_id: request.run_id.clone(),
        step_id: request.step_id.clone(),
        traceparent: request.traceparent.clone(),
        skill_id: request.skill.id.clone(),
        skill_version: request.skill.version.to_string(),
        skill_digest: request.skill.digest.clone(),
        input_digest: request.input_digest.clone(),
        policy_version: request.policy_version.clone(),
    }
}

/// A run error met while an approval decision closes its run: the store's error, or a run
/// whose events no longer reduce (corrupt state).
fn into_store(error: RunStoreError) -> StoreError {
    match error {
        RunStoreError::Store(error) => error,
        other => StoreError::corrupt(other),
    }
}
