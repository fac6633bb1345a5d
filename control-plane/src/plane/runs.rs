//! Runs: appending events under the run's rules, reading runs back (tenant-scoped), and
//! recording how a step's dispatch ended together with its run event and telemetry.

use super::{ControlPlane, audit_log};
use crate::audit::{AuditEntry, AuditEvent, DispatchEntry, DispatchRecord};
use crate::error::StoreError;
use crate::identity::Principal;
use crate::records::{self, EmitError, Record, Recorded};
use crate::run::{
    self, Lease, RunError, RunEvent, RunEventDraft, RunEventPayload, RunRecord, RunState, RunStoreError, RunView,
    StepContext, lease,
};
use crate::storage::{LockKey, UnitOfWork};
use crate::trace::{TraceContext, random_id};

/// Appends a run event inside `unit`, at the next Lamport clock, only if the run still reduces
/// and the writer holds the run (its node id and fencing token are the run's: the check and
/// the write are one transaction). The run's record follows: a new run is owned by its creator
/// (fencing token 1), a write renews the owner's lease, and a run that now waits for a human or
/// is finished is released. Locks the run first ([`LockKey::Run`]): a unit that locks the
/// run's approval too must lock the run before it.
pub(super) async fn append_run_event(
    unit: &mut dyn UnitOfWork,
    draft: RunEventDraft,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<RunEvent, RunStoreError> {
    unit.lock(LockKey::Run(&draft.run_id)).await?;
    let existing = unit.run_events(&draft.run_id).await?;
    let creating = matches!(draft.payload, RunEventPayload::RunCreated { .. });
    let stored = if existing.is_empty() || creating {
        // A creation of an existing run is refused below, by the run's rules.
        None
    } else {
        let record = unit
            .run_record(&draft.run_id)
            .await?
            .ok_or_else(|| StoreError::corrupt(format!("run `{}` has events but no run record", draft.run_id)))?;
        lease::check_fence(&record, &draft.node_id, draft.fencing_token)?;
        Some(record)
    };
    let owner = draft.node_id.clone();
    let (event, view) = run::next_event(&existing, draft, random_id("evt"), now_ms)?;
    unit.insert_run_event(&event).await?;
    match stored {
        Some(record) => {
            let next = lease::after_event(&record, &view, now_ms, ttl_ms);
            if !unit.replace_run_record(&next, record.fencing_token).await? {
                return Err(RunStoreError::LeaseLost {
                    run_id: record.run_id.clone(),
                    offered: record.fencing_token,
                    current: record.fencing_token,
                    owner: record.owner.clone(),
                });
            }
        }
        None => {
            let created = RunRecord {
                run_id: view.run_id.clone(),
                tenant: view.tenant.clone(),
                state: view.state,
                owner: Some(owner),
                lease_expires_at_ms: now_ms.saturating_add(ttl_ms),
                fencing_token: 1,
                deadline_ms: view.deadline_ms,
                approval_id: None,
            };
            unit.put_run_record(&lease::after_event(&created, &view, now_ms, ttl_ms))
                .await?;
        }
    }
    Ok(event)
}

/// Stores a kernel record inside `unit` under its idempotency key.
pub(super) async fn put_record(unit: &mut dyn UnitOfWork, record: &Record, now_ms: i64) -> Result<Recorded, EmitError> {
    let insertion = unit.insert_record(record, now_ms).await?;
    records::judge(record, insertion)
}

/// A kernel record of `event_type` about `step`, on a new span under the step's trace; `None`
/// when the step's `traceparent` does not parse.
pub(super) fn step_record(
    principal: &Principal,
    step: &StepContext,
    event_type: &str,
    content: serde_json::Value,
) -> Option<Record> {
    let trace = step.traceparent.parse::<TraceContext>().ok()?;
    Some(Record {
        tenant: principal.tenant.clone(),
        trace_id: trace.trace_id_hex(),
        span_id: trace.child().span_id_hex(),
        event_type: event_type.to_owned(),
        run_id: Some(step.run_id.clone()),
        content,
        cost: None,
    })
}

/// Stores a record that copies an audited fact (telemetry of a verdict or a dispatch): a
/// conflicting copy is skipped and logged, since the audit entry is the record of authority.
pub(super) async fn put_copy_record(unit: &mut dyn UnitOfWork, record: &Record, now_ms: i64) -> Result<(), StoreError> {
    match put_record(unit, record, now_ms).await {
        Ok(_) => Ok(()),
        Err(EmitError::Store(error)) => Err(error),
        Err(error) => {
            tracing::warn!(%error, "a kernel record copying an audited fact was skipped");
            Ok(())
        }
    }
}

impl ControlPlane {
    /// Appends a run event at the next Lamport clock of its run, only if the run's events with
    /// it still reduce ([`crate::run::reduce`]) and `draft`'s node holds the run with
    /// `draft.fencing_token`. A `run-created` event creates the run owned by its node with
    /// fencing token 1 (prefer [`ControlPlane::create_run`], which returns the lease).
    ///
    /// # Errors
    ///
    /// [`RunStoreError::Run`] for an illegal transition or a bad creation,
    /// [`RunStoreError::LeaseLost`] when the writer no longer holds the run,
    /// [`RunStoreError::Store`] when the write fails; nothing is stored then.
    pub async fn append_run_event(&self, draft: RunEventDraft) -> Result<RunEvent, RunStoreError> {
        let now = self.now_ms();
        let mut unit = self.write().await?;
        let event = append_run_event(&mut *unit, draft, now, self.lease_ttl_ms).await?;
        unit.commit().await?;
        Ok(event)
    }

    /// Run events of every tenant as their transactions commit, from now on: for live views
    /// (`agentd serve`'s event streams) that read a run's earlier events with
    /// [`run_events`](Self::run_events) and then follow. The receiver must filter by run (and
    /// so tenant); one that falls more than 4,096 events behind gets
    /// `RecvError::Lagged` and should read the store again. Events are published only after
    /// their commit: a listener never sees an event the store does not hold.
    pub fn subscribe_run_events(&self) -> tokio::sync::broadcast::Receiver<RunEvent> {
        self.store.backend().feed().subscribe()
    }

    /// A count that moves whenever [`subscribe_run_events`](Self::subscribe_run_events) may
    /// have missed events committed meanwhile: on PostgreSQL, when this node's listener for
    /// other nodes' events lost its connection (PostgreSQL keeps no notice for a closed
    /// session); it has listened again by the time the count moves. A live view then reads
    /// its runs from the store again, as after `RecvError::Lagged`. SQLite's never moves.
    pub fn subscribe_run_event_gaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.backend().feed().gaps()
    }

    /// Closes the store's connections and waits for them: on SQLite the write-ahead log is
    /// folded into the database file, so a read-only copy or mount of the state afterwards
    /// holds every committed transaction. A process that exits right after its last commit
    /// (the CLI) calls it; a unit begun afterwards fails.
    pub async fn close(&self) {
        self.store.backend().close().await;
    }

    /// Durable write commits, the transactions and the fsyncs that held them, since the store
    /// was opened. On SQLite concurrent units share transactions and fsyncs (group commit), so
    /// under load the last two grow slower than the first.
    pub fn commit_stats(&self) -> crate::store::CommitStats {
        self.store.backend().commit_stats()
    }

    /// The events of `run_id` in Lamport order, if the run belongs to `tenant`.
    ///
    /// # Errors
    ///
    /// [`RunStoreError::Run`] with [`RunError::NotFound`] when the run does not exist in
    /// `tenant`; [`RunStoreError::Store`].
    pub async fn run_events(&self, tenant: &str, run_id: &str) -> Result<Vec<RunEvent>, RunStoreError> {
        let mut unit = self.read().await?;
        let events = unit.run_events(run_id).await?;
        let view = reduce_existing(run_id, &events)?;
        if view.tenant != tenant {
            return Err(RunError::NotFound(run_id.to_owned()).into());
        }
        Ok(events)
    }

    /// The run as [`crate::run::reduce`] derives it from its stored events, if it belongs to
    /// `tenant`.
    ///
    /// # Errors
    ///
    /// [`RunStoreError::Run`] when the run does not exist in `tenant` or its events do not
    /// reduce; [`RunStoreError::Store`].
    pub async fn run(&self, tenant: &str, run_id: &str) -> Result<RunView, RunStoreError> {
        let mut unit = self.read().await?;
        let events = unit.run_events(run_id).await?;
        let view = reduce_existing(run_id, &events)?;
        if view.tenant != tenant {
            return Err(RunError::NotFound(run_id.to_owned()).into());
        }
        Ok(view)
    }

    /// Ids of the runs of `tenant` currently in `state` (derived by reducing each run).
    ///
    /// # Errors
    ///
    /// [`RunStoreError`].
    pub async fn runs_in_state(&self, tenant: &str, state: RunState) -> Result<Vec<String>, RunStoreError> {
        let mut unit = self.read().await?;
        let mut found = Vec::new();
        for id in unit.run_ids().await? {
            let events = unit.run_events(&id).await?;
            let view = reduce_existing(&id, &events)?;
            if view.tenant == tenant && view.state == state {
                found.push(id);
            }
        }
        Ok(found)
    }

    /// Records one dispatch attempt of a step in the audit log (an attempt that will be
    /// retried, or a refusal).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the entry could not be written.
    pub async fn record_dispatch(
        &self,
        principal: &Principal,
        step: &StepContext,
        record: &DispatchRecord,
    ) -> Result<AuditEntry, StoreError> {
        let event = AuditEvent::Dispatch(DispatchEntry {
            step: step.clone(),
            outcome: record.clone(),
        });
        self.append_audit(&event, principal).await
    }

    /// Records a step's final dispatch outcome, the run event it causes and a `telemetry`
    /// kernel record (`skill.dispatch`, its own span) in one unit of work (one fsync).
    ///
    /// # Errors
    ///
    /// [`RunStoreError::Run`] when the run event is illegal, [`RunStoreError::Store`] when the
    /// write fails; nothing is stored then.
    pub async fn record_step_end(
        &self,
        principal: &Principal,
        step: &StepContext,
        record: &DispatchRecord,
        run_event: Option<(&Lease, RunEventPayload)>,
        telemetry: Option<serde_json::Value>,
    ) -> Result<(), RunStoreError> {
        let now = self.now_ms();
        let mut unit = self.write().await?;
        let event = AuditEvent::Dispatch(DispatchEntry {
            step: step.clone(),
            outcome: record.clone(),
        });
        audit_log::append(&mut *unit, self.store.anchor_key(), &event, principal, now).await?;
        if let Some((lease, payload)) = run_event {
            append_run_event(
                &mut *unit,
                RunEventDraft::of_step(step, lease, payload),
                now,
                self.lease_ttl_ms,
            )
            .await?;
        }
        if let Some(record) =
            telemetry.and_then(|attributes| step_record(principal, step, "telemetry:skill.dispatch", attributes))
        {
            put_copy_record(&mut *unit, &record, now).await?;
        }
        unit.commit().await?;
        Ok(())
    }
}

/// Reduces the stored events of a run that must exist.
fn reduce_existing(run_id: &str, events: &[RunEvent]) -> Result<RunView, RunStoreError> {
    if events.is_empty() {
        return Err(RunError::NotFound(run_id.to_owned()).into());
    }
    Ok(run::reduce(events)?)
}
