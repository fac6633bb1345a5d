//! Kernel records: telemetry, governance, LLM and connector calls with their costs, each stored
//! once under an idempotency key. The values and the idempotency rule live here; the
//! [`KernelEmitter`](crate::KernelEmitter) is the recording API that stores them.
//!
//! Each record is stored under an idempotency key: SHA-256 over (tenant, trace id, span id, event type,
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

use crate::error::StoreError;

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

/// What the store found when it inserted a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insertion {
    /// Stored as a new row.
    Inserted {
        /// Row id.
        id: i64,
    },
    /// A record with the same logical identity exists.
    Existing {
        /// Its row id.
        id: i64,
        /// Its content hash.
        content_hash: String,
    },
}

/// The idempotency rule: a new row is a fresh record; an existing one with the same content is
/// a replay of it; an existing one with other content is a conflict.
///
/// # Errors
///
/// [`EmitError::IdempotencyConflict`] for the same logical identity with different content.
pub fn judge(record: &Record, insertion: Insertion) -> Result<Recorded, EmitError> {
    match insertion {
        Insertion::Inserted { id } => Ok(Recorded { id, replayed: false }),
        Insertion::Existing { id, content_hash } => {
            let offered = record.content_hash();
            if content_hash == offered {
                Ok(Recorded { id, replayed: true })
            } else {
                Err(EmitError::IdempotencyConflict(Box::new(Conflict {
                    tenant: record.tenant.clone(),
                    trace_id: record.trace_id.clone(),
                    span_id: record.span_id.clone(),
                    event_type: record.event_type.clone(),
                    stored: content_hash,
                    offered,
                })))
            }
        }
    }
}

/// Checks a cost for consistency: an amount exactly when `calculated`, never negative, always
/// with its pricing version.
///
/// # Errors
///
/// [`EmitError::Invalid`] naming the inconsistency.
pub fn validate_cost(event_type: &str, cost: &Cost) -> Result<(), EmitError> {
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
