//! The kernel emitter: the one recording API the runtime uses.
//!
//! [`KernelEmitter::emit_telemetry`], [`KernelEmitter::emit_governance`],
//! [`KernelEmitter::record_llm_call`] and [`KernelEmitter::record_connector_call`] each store
//! one record under an idempotency key: SHA-256 over (tenant, trace id, span id, event type,
//! SHA-256 of the canonical JSON content). The *logical identity* is (tenant, trace id, span id,
//! event type):
//!
//! - same identity, same content: a silent replay; the record is stored once
//!   ([`Recorded::replayed`] is `true`);
//! - same identity, different content: [`EmitError::IdempotencyConflict`]; nothing changes.
//!
//! Canonical JSON here is `serde_json`'s compact form of a value whose object keys are sorted
//! (the default `BTreeMap` map), which covers what RFC 8785 (JCS) needs for our content: we never
//! emit floats, only integers and strings. Costs are integer micro-euros, never floats.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::governance::Decision;
use crate::store::{Store, StoreError};
use crate::trace::TraceContext;

/// Whether a cost is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CostStatus {
    /// The provider has not reported usage yet.
    Pending,
    /// Computed from usage and the pricing table.
    Calculated,
    /// The provider gives no usage; the cost cannot be known.
    Unavailable,
}

impl CostStatus {
    /// `pending`, `calculated` or `unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            CostStatus::Pending => "pending",
            CostStatus::Calculated => "calculated",
            CostStatus::Unavailable => "unavailable",
        }
    }
}

/// The cost of a call, in EUR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Cost {
    /// Micro-euros (1 EUR = 1,000,000); `None` unless `status` is `calculated`.
    pub micro_eur: Option<i64>,
    /// Whether it is known.
    pub status: CostStatus,
    /// The pricing table version the amount was computed with (e.g. `openai-2026-10`).
    pub pricing_version: String,
}

/// One call to a language model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LlmCall {
    /// Run it belongs to.
    pub run_id: String,
    /// Provider (`openai`, `anthropic`, `local`).
    pub provider: String,
    /// Model name.
    pub model: String,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cost.
    pub cost: Cost,
}

/// One call to an external connector (an API, a database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConnectorCall {
    /// Run it belongs to.
    pub run_id: String,
    /// Connector name (`http`, `salesforce`, ...).
    pub connector: String,
    /// Operation (`GET /v1/accounts`, ...).
    pub operation: String,
    /// Outcome (`ok`, `error:<kind>`).
    pub outcome: String,
    /// Duration, µs.
    pub duration_us: u64,
    /// Cost.
    pub cost: Cost,
}

/// A stored record's id, and whether this emit was a replay of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Recorded {
    /// Row id.
    pub id: i64,
    /// `true` when an identical record already existed (nothing new was stored).
    pub replayed: bool,
}

/// A logical identity recorded twice with different content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Tenant.
    pub tenant: String,
    /// Trace id.
    pub trace_id: String,
    /// Span id.
    pub span_id: String,
    /// Event type.
    pub event_type: String,
    /// Content hash stored.
    pub stored: String,
    /// Content hash offered.
    pub offered: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} for trace {} span {} in tenant {} was already recorded with different content (stored sha256:{}, offered sha256:{})",
            self.event_type, self.trace_id, self.span_id, self.tenant, self.stored, self.offered
        )
    }
}

/// Why a record was not stored.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// The same logical identity was recorded with different content.
    #[error("idempotency conflict: {0}")]
    IdempotencyConflict(Box<Conflict>),
    /// The content is not valid for its kind.
    #[error("invalid {event_type} record: {message}")]
    Invalid {
        /// Event type.
        event_type: String,
        /// What is wrong.
        message: String,
    },
    /// The store failed; nothing was stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EmitError {
    /// Whether retrying the same emit can help: only a store failure may clear (a conflict
    /// never does).
    pub fn is_retryable(&self) -> bool {
        match self {
            EmitError::Store(error) => error.is_retryable(),
            EmitError::IdempotencyConflict(_) | EmitError::Invalid { .. } => false,
        }
    }
}

/// A record ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Tenant.
    pub tenant: String,
    /// W3C trace id (32 hex).
    pub trace_id: String,
    /// W3C span id (16 hex).
    pub span_id: String,
    /// `telemetry:<name>`, `governance`, `llm-call`, `connector-call`.
    pub event_type: String,
    /// Run id, when known.
    pub run_id: Option<String>,
    /// The content, canonicalised.
    pub content: serde_json::Value,
    /// Cost, for LLM and connector calls.
    pub cost: Option<Cost>,
}

impl Record {
    /// Canonical JSON text of the content.
    pub fn canonical_content(&self) -> String {
        self.content.to_string()
    }

    /// SHA-256 (hex) of the canonical content.
    pub fn content_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_content().as_bytes()))
    }

    /// The idempotency key: SHA-256 (hex) over the length-prefixed tenant, trace id, span id,
    /// event type and content hash.
    pub fn idempotency_key(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [
            &self.tenant,
            &self.trace_id,
            &self.span_id,
            &self.event_type,
            &self.content_hash(),
        ] {
            hasher.update(part.len().to_string().as_bytes());
            hasher.update(b":");
            hasher.update(part.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

/// The recording API over the control plane's store. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct KernelEmitter {
    store: Store,
}

fn validate_cost(event_type: &str, cost: &Cost) -> Result<(), EmitError> {
    let invalid = |message: &str| EmitError::Invalid {
        event_type: event_type.to_owned(),
        message: message.to_owned(),
    };
    match (cost.status, cost.micro_eur) {
        (CostStatus::Calculated, None) => Err(invalid("a calculated cost needs an amount")),
        (CostStatus::Pending | CostStatus::Unavailable, Some(_)) => {
            Err(invalid("only a calculated cost carries an amount"))
        }
        (_, Some(amount)) if amount < 0 => Err(invalid("a cost cannot be negative")),
        _ if cost.pricing_version.trim().is_empty() => Err(invalid("a cost needs its pricing version")),
        _ => Ok(()),
    }
}

impl KernelEmitter {
    /// An emitter writing to `store`.
    pub fn new(store: Store) -> Self {
        KernelEmitter { store }
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
        let record = Self::record(tenant, trace, format!("telemetry:{name}"), None, attributes, None);
        self.store.put_record(&record).await
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
        let content = serde_json::to_value(decision).map_err(|error| EmitError::Invalid {
            event_type: "governance".into(),
            message: error.to_string(),
        })?;
        let record = Self::record(
            tenant,
            trace,
            "governance".into(),
            Some(run_id.to_owned()),
            content,
            None,
        );
        self.store.put_record(&record).await
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
        validate_cost("llm-call", &call.cost)?;
        let content = serde_json::to_value(call).map_err(|error| EmitError::Invalid {
            event_type: "llm-call".into(),
            message: error.to_string(),
        })?;
        let record = Self::record(
            tenant,
            trace,
            "llm-call".into(),
            Some(call.run_id.clone()),
            content,
            Some(call.cost.clone()),
        );
        self.store.put_record(&record).await
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
        validate_cost("connector-call", &call.cost)?;
        let content = serde_json::to_value(call).map_err(|error| EmitError::Invalid {
            event_type: "connector-call".into(),
            message: error.to_string(),
        })?;
        let record = Self::record(
            tenant,
            trace,
            "connector-call".into(),
            Some(call.run_id.clone()),
            content,
            Some(call.cost.clone()),
        );
        self.store.put_record(&record).await
    }

    /// Stores several records in one transaction (for throughput); each is judged like a
    /// single emit, and the first conflict aborts the whole batch.
    ///
    /// # Errors
    ///
    /// [`EmitError`]; nothing of the batch is stored then.
    pub async fn record_batch(&self, records: &[Record]) -> Result<Vec<Recorded>, EmitError> {
        self.store.put_records(records).await
    }

    /// Calculated spend in micro-euros of `tenant`, or of one run when `run_id` is given.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn spent_micro_eur(&self, tenant: &str, run_id: Option<&str>) -> Result<i64, StoreError> {
        self.store.spent_micro_eur(tenant, run_id).await
    }
}
