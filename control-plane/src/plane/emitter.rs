//! The kernel emitter: the recording API for telemetry, governance, LLM and connector records,
//! each stored once under its idempotency key ([`crate::records`]).

use std::sync::Arc;

use super::{ControlPlane, runs};
use crate::clock::Clock;
use crate::error::StoreError;
use crate::governance::Decision;
use crate::records::{ConnectorCall, Cost, EmitError, LlmCall, Record, Recorded, validate_cost};
use crate::storage::Access;
use crate::store::Store;
use crate::trace::TraceContext;

/// The recording API over the control plane's store. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct KernelEmitter {
    store: Store,
    clock: Arc<dyn Clock>,
}

impl ControlPlane {
    /// The kernel emitter writing to this control plane's store.
    pub fn emitter(&self) -> KernelEmitter {
        KernelEmitter {
            store: self.store.clone(),
            clock: Arc::clone(&self.clock),
        }
    }
}

fn record(
    tenant: &str,
    trace: &TraceContext,
    event_type: String,
    run_id: Option<String>,
    content: serde_json::Value,
    cost: Option<Cost>,
) -> Record {
    Record {
        tenant: tenant.to_owned(),
        trace_id: trace.trace_id_hex(),
        span_id: trace.span_id_hex(),
        event_type,
        run_id,
        content,
        cost,
    }
}

fn content_of<T: serde::Serialize>(event_type: &str, value: &T) -> Result<serde_json::Value, EmitError> {
    serde_json::to_value(value).map_err(|error| EmitError::Invalid {
        event_type: event_type.to_owned(),
        message: error.to_string(),
    })
}

impl KernelEmitter {
    /// Records a telemetry event `name` with `attributes`.
    ///
    /// # Errors
    ///
    /// [`EmitError::IdempotencyConflict`] when the same span already emitted `name` with other
    /// attributes; [`EmitError::Store`].
    pub async fn emit_telemetry(
        &self,
        tenant: &str,
        trace: &TraceContext,
        name: &str,
        attributes: serde_json::Value,
    ) -> Result<Recorded, EmitError> {
        self.put(&record(
            tenant,
            trace,
            format!("telemetry:{name}"),
            None,
            attributes,
            None,
        ))
        .await
    }

    /// Records a governance decision made for `run_id`.
    ///
    /// # Errors
    ///
    /// As [`KernelEmitter::emit_telemetry`].
    pub async fn emit_governance(
        &self,
        tenant: &str,
        trace: &TraceContext,
        run_id: &str,
        decision: &Decision,
    ) -> Result<Recorded, EmitError> {
        let content = content_of("governance", decision)?;
        self.put(&record(
            tenant,
            trace,
            "governance".into(),
            Some(run_id.to_owned()),
            content,
            None,
        ))
        .await
    }

    /// Records an LLM call with its cost.
    ///
    /// # Errors
    ///
    /// [`EmitError::Invalid`] for an inconsistent cost (an amount without `calculated`, a
    /// negative amount, no pricing version); otherwise as [`KernelEmitter::emit_telemetry`].
    pub async fn record_llm_call(
        &self,
        tenant: &str,
        trace: &TraceContext,
        call: &LlmCall,
    ) -> Result<Recorded, EmitError> {
        self.record_call(tenant, trace, "llm-call", &call.run_id, &call.cost, call)
            .await
    }

    /// Records a connector call with its cost.
    ///
    /// # Errors
    ///
    /// As [`KernelEmitter::record_llm_call`].
    pub async fn record_connector_call(
        &self,
        tenant: &str,
        trace: &TraceContext,
        call: &ConnectorCall,
    ) -> Result<Recorded, EmitError> {
        self.record_call(tenant, trace, "connector-call", &call.run_id, &call.cost, call)
            .await
    }

    async fn record_call<T: serde::Serialize>(
        &self,
        tenant: &str,
        trace: &TraceContext,
        event_type: &str,
        run_id: &str,
        cost: &Cost,
        call: &T,
    ) -> Result<Recorded, EmitError> {
        validate_cost(event_type, cost)?;
        let content = content_of(event_type, call)?;
        self.put(&record(
            tenant,
            trace,
            event_type.to_owned(),
            Some(run_id.to_owned()),
            content,
            Some(cost.clone()),
        ))
        .await
    }

    /// Stores several records in one unit of work (for throughput); each is judged like a
    /// single emit, and the first conflict aborts the whole batch.
    ///
    /// # Errors
    ///
    /// [`EmitError`]; nothing of the batch is stored then.
    pub async fn record_batch(&self, records: &[Record]) -> Result<Vec<Recorded>, EmitError> {
        let now = self.clock.now_ms();
        let mut unit = self.store.backend().begin(Access::Write).await?;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            out.push(runs::put_record(&mut *unit, record, now).await?);
        }
        unit.commit().await?;
        Ok(out)
    }

    /// Calculated spend in micro-euros of `tenant`, or of one run when `run_id` is given.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn spent_micro_eur(&self, tenant: &str, run_id: Option<&str>) -> Result<i64, StoreError> {
        let mut unit = self.store.backend().begin(Access::Read).await?;
        unit.spent_micro_eur(tenant, run_id).await
    }

    /// Stored records of `tenant`.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn record_count(&self, tenant: &str) -> Result<i64, StoreError> {
        let mut unit = self.store.backend().begin(Access::Read).await?;
        unit.record_count(tenant).await
    }

    async fn put(&self, record: &Record) -> Result<Recorded, EmitError> {
        let now = self.clock.now_ms();
        let mut unit = self.store.backend().begin(Access::Write).await?;
        let recorded = runs::put_record(&mut *unit, record, now).await?;
        unit.commit().await?;
        Ok(recorded)
    }
}
