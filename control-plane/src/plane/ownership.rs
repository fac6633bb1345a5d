//! Run ownership: creating a run with its lease; claiming, renewing and releasing it; taking
//! over a run whose owner vanished; timing out and cancelling runs; closing the run of an
//! approval that ended without it; and what a recovery pass must do with each run.

use super::{ControlPlane, audit_log, runs};
use crate::audit::{AuditEvent, RunControl, RunControlAction};
use crate::error::StoreError;
use crate::hitl::ApprovalRequest;
use crate::identity::{Principal, Role, with_system_identity};
use crate::run::{
    self, Lease, RecoveryAction, RequestKey, RunCreation, RunError, RunEventDraft, RunEventPayload, RunRecord,
    RunState, RunStoreError, RunView, StepSpec, lease,
};
use crate::storage::{LockKey, UnitOfWork};

/// The system identity of recovery passes in the audit log (`system:run-recovery`).
pub const RECOVERY_JOB: &str = "run-recovery";

/// Why a run could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// Only the run's requester or an admin of its tenant may cancel it.
    #[error(
        "{principal} may not cancel run `{run_id}`: only its requester ({requester}) or an admin of its tenant may"
    )]
    NotAllowed {
        /// The run.
        run_id: String,
        /// Who asked.
        principal: String,
        /// Who started the run.
        requester: String,
    },
    /// The run already finished.
    #[error("run `{run_id}` already finished ({state}); there is nothing to cancel")]
    Finished {
        /// The run.
        run_id: String,
        /// How it finished.
        state: RunState,
    },
    /// The run could not be read or written.
    #[error(transparent)]
    Run(#[from] RunStoreError),
    /// The pending approval the run waits on could not be cancelled.
    #[error(transparent)]
    Approval(#[from] crate::hitl::ApprovalError),
}

impl CancelError {
    /// Whether retrying can help: only a busy or failing store.
    pub fn is_retryable(&self) -> bool {
        match self {
            CancelError::Run(error) => error.is_retryable(),
            CancelError::Approval(error) => error.is_retryable(),
            CancelError::NotAllowed { .. } | CancelError::Finished { .. } => false,
        }
    }
}

impl From<StoreError> for CancelError {
    fn from(error: StoreError) -> Self {
        CancelError::Run(error.into())
    }
}

/// A run a recovery pass found, and what it must do with it.
#[derive(Debug, Clone)]
pub struct RecoveryCandidate {
    /// Its record (owner, lease, token, deadline).
    pub record: RunRecord,
    /// Its events, reduced.
    pub view: RunView,
    /// The approval request its current step waits or waited on.
    pub approval: Option<ApprovalRequest>,
    /// What to do ([`lease::next_action`]).
    pub action: RecoveryAction,
}

impl ControlPlane {
    /// Creates run `run_id` of `principal` with `steps`, owned by `owner` under a new lease
    /// (fencing token 1), with a deadline this control plane's run deadline from now.
    ///
    /// # Errors
    ///
    /// [`RunStoreError::Run`] when the plan is invalid or the run exists;
    /// [`RunStoreError::Store`].
    pub async fn create_run(
        &self,
        run_id: &str,
        principal: &Principal,
        steps: Vec<StepSpec>,
        traceparent: &str,
        owner: &str,
    ) -> Result<Lease, RunStoreError> {
        match self
            .create_run_keyed(run_id, principal, steps, traceparent, owner, None)
            .await?
        {
            RunCreation::Created(lease) => Ok(lease),
            RunCreation::Replayed { .. } | RunCreation::KeyConflict { .. } => {
                Err(StoreError::corrupt("a run created without a key was replayed").into())
            }
        }
    }

    /// [`create_run`](Self::create_run) under an idempotency key of `principal`'s tenant: the
    /// key's binding to the run and the run's creation are one transaction, so a key never
    /// names a run that does not exist, and two requests racing with one key create one run.
    ///
    /// # Errors
    ///
    /// As [`create_run`](Self::create_run).
    pub async fn create_run_keyed(
        &self,
        run_id: &str,
        principal: &Principal,
        steps: Vec<StepSpec>,
        traceparent: &str,
        owner: &str,
        key: Option<&RequestKey>,
    ) -> Result<RunCreation, RunStoreError> {
        let now = self.now_ms();
        let mut unit = self.write().await?;
        if let Some(key) = key {
            // Two requests racing with one key: the second waits here and then finds the first's.
            unit.lock(LockKey::RequestKey {
                tenant: &principal.tenant,
                key: &key.key,
            })
            .await?;
            if let Some((digest, existing)) = unit.run_request(&principal.tenant, &key.key).await? {
                // Ends the unit now, so its lock is free at once (a dropped unit's rollback
                // reaches the server only when the pool next tests the connection).
                unit.commit().await?;
                return Ok(if digest == key.request_digest {
                    RunCreation::Replayed { run_id: existing }
                } else {
                    RunCreation::KeyConflict { run_id: existing }
                });
            }
            unit.insert_run_request(&principal.tenant, key, run_id, now).await?;
        }
        let draft = RunEventDraft {
            run_id: run_id.to_owned(),
            node_id: owner.to_owned(),
            fencing_token: 0,
            traceparent: traceparent.to_owned(),
            payload: RunEventPayload::RunCreated {
                tenant: principal.tenant.clone(),
                principal: principal.to_string(),
                steps,
                deadline_ms: Some(now.saturating_add(self.run_deadline_ms)),
                principal_roles: principal.roles.iter().copied().collect(),
            },
        };
        runs::append_run_event(&mut *unit, draft, now, self.lease_ttl_ms).await?;
        let record = unit
            .run_record(run_id)
            .await?
            .ok_or_else(|| StoreError::corrupt(format!("run `{run_id}` was created without a record")))?;
        unit.commit().await?;
        let lease = lease::lease_of(&record).ok_or_else(|| StoreError::corrupt("a new run has no owner"))?;
        Ok(RunCreation::Created(lease))
    }

    /// Claims run `run_id` for `owner`: granted when nobody holds it, its lease lapsed, or
    /// `owner` holds it already, with the next fencing token. `None` when someone else holds a
    /// live lease, the run finished, or another unit is writing the run at this moment (its
    /// row is locked: `FOR UPDATE SKIP LOCKED` on a shared database, so claiming nodes never
    /// queue on one run). Taking a run from an owner whose lease lapsed is audited
    /// (`run-control`, taken over).
    ///
    /// # Errors
    ///
    /// [`RunStoreError::Run`] with [`RunError::NotFound`]; [`RunStoreError::Store`].
    pub async fn claim_run(&self, run_id: &str, owner: &str) -> Result<Option<Lease>, RunStoreError> {
        let now = self.now_ms();
        let mut unit = self.write().await?;
        if !unit.try_lock_run(run_id).await? {
            return Ok(None);
        }
        let record = unit
            .run_record(run_id)
            .await?
            .ok_or_else(|| RunError::NotFound(run_id.to_owned()))?;
        let Some(next) = lease::claim(&record, owner, now, self.lease_ttl_ms) else {
            // Nothing written: ends the unit so the run's row lock is free at once.
            unit.commit().await?;
            return Ok(None);
        };
        if !unit.replace_run_record(&next, record.fencing_token).await? {
            unit.commit().await?;
            return Ok(None);
        }
        if let Some(previous) = record.owner.as_deref().filter(|previous| *previous != owner) {
            let event = AuditEvent::RunControl(RunControl {
                run_id: run_id.to_owned(),
                action: RunControlAction::TakenOver,
                reason: format!(
                    "the lease of {previous} lapsed at {} ms; {owner} took the run over",
                    record.lease_expires_at_ms
                ),
                previous_state: record.state,
                previous_owner: Some(previous.to_owned()),
                fencing_token: next.fencing_token,
            });
            let system = system_principal(&record.tenant)?;
            audit_log::append(&mut *unit, self.store.anchor_key(), &event, &system, now).await?;
        }
        unit.commit().await?;
        Ok(lease::lease_of(&next))
    }

    /// Extends `lease` by this control plane's lease TTL from now.
    ///
    /// # Errors
    ///
    /// [`RunStoreError::LeaseLost`] when the run is no longer the holder's (claimed by another,
    /// cancelled, or released because it waits for a human or finished).
    pub async fn renew_lease(&self, lease: &Lease) -> Result<Lease, RunStoreError> {
        let now = self.now_ms();
        let mut unit = self.write().await?;
        unit.lock(LockKey::Run(&lease.run_id)).await?;
        let record = unit
            .run_record(&lease.run_id)
            .await?
            .ok_or_else(|| RunError::NotFound(lease.run_id.clone()))?;
        lease::check_fence(&record, &lease.owner, lease.token)?;
        let renewed = RunRecord {
            lease_expires_at_ms: now.saturating_add(self.lease_ttl_ms),
            ..record
        };
        if !unit.replace_run_record(&renewed, lease.token).await? {
            return Err(lost(&renewed, lease.token));
        }
        unit.commit().await?;
        Ok(Lease {
            expires_at_ms: renewed.lease_expires_at_ms,
            ..lease.clone()
        })
    }

    /// Gives `lease`'s run up (a process stopping work on it): its owner is cleared, so a
    /// recovery pass can pick it up at once. A lease no longer held is ignored.
    ///
    /// # Errors
    ///
    /// [`RunStoreError::Store`].
    pub async fn release_run(&self, lease: &Lease) -> Result<(), RunStoreError> {
        let mut unit = self.write().await?;
        unit.lock(LockKey::Run(&lease.run_id)).await?;
        let Some(record) = unit.run_record(&lease.run_id).await? else {
            return Ok(());
        };
        if lease::check_fence(&record, &lease.owner, lease.token).is_err() {
            // Nothing written: ends the unit so the run's row lock is free at once.
            unit.commit().await?;
            return Ok(());
        }
        let released = RunRecord {
            owner: None,
            lease_expires_at_ms: 0,
            ..record
        };
        unit.replace_run_record(&released, lease.token).await?;
        unit.commit().await?;
        Ok(())
    }

    /// Records that `lease`'s run passed its deadline (`run-timed-out`) and audits it, in one
    /// unit of work.
    ///
    /// # Errors
    ///
    /// [`RunStoreError::LeaseLost`], [`RunStoreError::Run`] when the run cannot time out from
    /// its state, [`RunStoreError::Store`].
    pub async fn time_out_run(&self, lease: &Lease, traceparent: &str) -> Result<(), RunStoreError> {
        let now = self.now_ms();
        let mut unit = self.write().await?;
        unit.lock(LockKey::Run(&lease.run_id)).await?;
        let events = unit.run_events(&lease.run_id).await?;
        let view = run::reduce(&events)?;
        let deadline_ms = view.deadline_ms.unwrap_or(now);
        let draft = RunEventDraft {
            run_id: lease.run_id.clone(),
            node_id: lease.owner.clone(),
            fencing_token: lease.token,
            traceparent: traceparent.to_owned(),
            payload: RunEventPayload::RunTimedOut { deadline_ms },
        };
        runs::append_run_event(&mut *unit, draft, now, self.lease_ttl_ms).await?;
        let event = AuditEvent::RunControl(RunControl {
            run_id: lease.run_id.clone(),
            action: RunControlAction::TimedOut,
            reason: format!(
                "the run's deadline ({deadline_ms} ms) passed while it was {}",
                view.state
            ),
            previous_state: view.state,
            previous_owner: Some(lease.owner.clone()),
            fencing_token: lease.token,
        });
        let system = system_principal(&view.tenant)?;
        audit_log::append(&mut *unit, self.store.anchor_key(), &event, &system, now).await?;
        unit.commit().await?;
        Ok(())
    }

    /// Cancels run `run_id`: its requester or an admin of its tenant may. In one unit of work
    /// the run is taken from whoever holds it (the fencing token moves, so the holder's next
    /// write is refused; an effect already in flight may still complete), a pending approval
    /// it waits on is cancelled, `run-cancelled` is appended and the cancellation audited.
    ///
    /// # Errors
    ///
    /// [`CancelError::NotAllowed`], [`CancelError::Finished`], or [`CancelError::Run`] with
    /// [`RunError::NotFound`] when the run does not exist in the principal's tenant.
    pub async fn cancel_run(&self, principal: &Principal, run_id: &str, reason: &str) -> Result<RunView, CancelError> {
        let now = self.now_ms();
        let mut unit = self.write().await?;
        unit.lock(LockKey::Run(run_id)).await?;
        let events = unit.run_events(run_id).await?;
        let record = unit.run_record(run_id).await?;
        let (Some(record), false) = (record, events.is_empty()) else {
            return Err(RunStoreError::from(RunError::NotFound(run_id.to_owned())).into());
        };
        let view = run::reduce(&events).map_err(RunStoreError::from)?;
        if view.tenant != principal.tenant {
            return Err(RunStoreError::from(RunError::NotFound(run_id.to_owned())).into());
        }
        if view.principal != principal.to_string() && !principal.has_role(Role::Admin) {
            return Err(CancelError::NotAllowed {
                run_id: run_id.to_owned(),
                principal: principal.to_string(),
                requester: view.principal.clone(),
            });
        }
        if view.state.is_terminal() {
            return Err(CancelError::Finished {
                run_id: run_id.to_owned(),
                state: view.state,
            });
        }
        let actor = format!("cancel:{principal}");
        let seized = lease::seize(&record, &actor, now, self.lease_ttl_ms);
        if !unit.replace_run_record(&seized, record.fencing_token).await? {
            return Err(CancelError::Run(lost(&record, record.fencing_token)));
        }
        if view.state.is_waiting()
            && let Some(approval_id) = view.current_step().and_then(|step| step.approval_id)
            && unit
                .approval(approval_id)
                .await?
                .is_some_and(|request| request.status == crate::hitl::ApprovalStatus::Pending)
        {
            self.cancel_pending_in(&mut *unit, approval_id, principal, reason, now)
                .await?;
        }
        let traceparent = events.last().map(|event| event.traceparent.clone()).unwrap_or_default();
        let draft = RunEventDraft {
            run_id: run_id.to_owned(),
            node_id: actor,
            fencing_token: seized.fencing_token,
            traceparent,
            payload: RunEventPayload::RunCancelled {
                reason: format!("cancelled by {principal}: {reason}"),
            },
        };
        runs::append_run_event(&mut *unit, draft, now, self.lease_ttl_ms).await?;
        let event = AuditEvent::RunControl(RunControl {
            run_id: run_id.to_owned(),
            action: RunControlAction::Cancelled,
            reason: reason.to_owned(),
            previous_state: view.state,
            previous_owner: record.owner.clone(),
            fencing_token: seized.fencing_token,
        });
        audit_log::append(&mut *unit, self.store.anchor_key(), &event, principal, now).await?;
        let events = unit.run_events(run_id).await?;
        unit.commit().await?;
        Ok(run::reduce(&events).map_err(RunStoreError::from)?)
    }

    /// Up to `limit` runs a recovery pass must look at now, each with what to do: runs whose
    /// owner's lease lapsed, unowned runs that are pending or running, and runs waiting on an
    /// approval that was decided or is past its expiry. One consistent snapshot.
    ///
    /// # Errors
    ///
    /// [`RunStoreError`] when the runs cannot be read or a run's events do not reduce.
    pub async fn recovery_candidates(&self, limit: u32) -> Result<Vec<RecoveryCandidate>, RunStoreError> {
        let now = self.now_ms();
        let mut unit = self.read().await?;
        let mut found = Vec::new();
        for record in unit.runs_needing_attention(now, limit).await? {
            let events = unit.run_events(&record.run_id).await?;
            let view = run::reduce(&events)?;
            let approval = match view
                .current_step()
                .and_then(|step| step.approval_id.or(step.started_with_approval))
            {
                Some(id) => unit.approval(id).await?,
                None => None,
            };
            let action = lease::next_action(&record, &view, approval.as_ref(), now);
            found.push(RecoveryCandidate {
                record,
                view,
                approval,
                action,
            });
        }
        Ok(found)
    }

    /// The records (owner, lease, fencing token, deadline) of `tenant`'s runs, in run id order.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn run_records(&self, tenant: &str) -> Result<Vec<RunRecord>, StoreError> {
        let mut unit = self.read().await?;
        unit.run_records(tenant).await
    }
}

/// In `unit`: when `request`'s run waits on it, takes the run as `actor` (the next fencing
/// token, from whoever holds it: a resumer must not resume it now) and appends `payload`,
/// which closes it. Used by
/// the approval decisions that end a request without its step running (deny, expiry,
/// cancellation), so the decision and its run's end are one transaction. `false` when the run
/// does not exist or no longer waits on that request.
pub(super) async fn close_waiting_run(
    unit: &mut dyn UnitOfWork,
    request: &ApprovalRequest,
    actor: &str,
    payload: RunEventPayload,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<bool, RunStoreError> {
    // Locked by the caller before the approval already (the lock order); a no-op then.
    unit.lock(LockKey::Run(&request.run_id)).await?;
    let Some(record) = unit.run_record(&request.run_id).await? else {
        return Ok(false);
    };
    if !record.state.is_waiting() || record.approval_id != Some(request.id) {
        return Ok(false);
    }
    // Whoever holds a waiting run is about to resume it, and must not: the request ended.
    let claimed = lease::seize(&record, actor, now_ms, ttl_ms);
    if !unit.replace_run_record(&claimed, record.fencing_token).await? {
        return Ok(false);
    }
    let draft = RunEventDraft {
        run_id: request.run_id.clone(),
        node_id: actor.to_owned(),
        fencing_token: claimed.fencing_token,
        traceparent: request.traceparent.clone(),
        payload,
    };
    runs::append_run_event(unit, draft, now_ms, ttl_ms).await?;
    Ok(true)
}

/// The run event that closes a run whose approval `request` ended without its step running.
pub(super) fn closing_event(request: &ApprovalRequest) -> Option<RunEventPayload> {
    use crate::hitl::ApprovalStatus;
    match request.status {
        ApprovalStatus::Cancelled => Some(RunEventPayload::RunCancelled {
            reason: format!("approval request #{} was cancelled", request.id),
        }),
        ApprovalStatus::Denied | ApprovalStatus::Expired => Some(RunEventPayload::StepFailed {
            step_id: request.step_id.clone(),
            reason: format!("approval request #{} was {}", request.id, request.status),
        }),
        _ => None,
    }
}

fn system_principal(tenant: &str) -> Result<Principal, StoreError> {
    with_system_identity(RECOVERY_JOB, tenant, &[Role::Admin]).map_err(StoreError::corrupt)
}

fn lost(record: &RunRecord, offered: u64) -> RunStoreError {
    RunStoreError::LeaseLost {
        run_id: record.run_id.clone(),
        offered,
        current: record.fencing_token,
        owner: record.owner.clone(),
    }
}
