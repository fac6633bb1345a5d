//! Runs: a sequence of steps whose state is derived only by [`reduce`] from immutable events.
//!
//! Every state change is a [`RunEvent`] (event id, run id, Lamport clock, node id, trace context,
//! schema version, payload). The store appends an event only if `reduce(events + [event])`
//! succeeds, so an illegal transition is a typed error ([`RunError::IllegalTransition`]) and
//! never reaches the log. Lamport clocks after Lamport, "Time, Clocks, and the Ordering of
//! Events in a Distributed System" (CACM 21(7), 1978): each event's clock is one more than the
//! highest clock the appending node has seen for the run.
//!
//! A step's input may reference an earlier step's output: `{"$from": "<step id>", "pointer":
//! "/json/pointer"}` (RFC 6901) anywhere in the input is replaced by that value when the step
//! starts ([`RunView::resolve_input`]).
//!
//! Appending is split the same way as every write of the control plane: [`next_event`] is the
//! pure rule (the next clock, and whether the run still reduces with the event), the store only
//! inserts the event it is given.

pub mod lease;
mod reduce;

pub use lease::RecoveryAction;
pub use reduce::{next_event, reduce};

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Version of the event payload schema written by this build (`schemas/run-event.v1.json`).
/// Version 2 added `step-recovered`, a run's `deadline_ms` and the approval a step starts under.
pub const RUN_EVENT_SCHEMA_VERSION: u32 = 2;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Created; no step started.
    Pending,
    /// A step is running (or about to).
    Running,
    /// A step waits for an approval decision.
    AwaitingApproval,
    /// Every step succeeded; terminal.
    Succeeded,
    /// A step failed for good; terminal.
    Failed,
    /// Retries and fallbacks are exhausted and a human was asked; resumes or fails.
    Escalated,
    /// Cancelled; terminal.
    Cancelled,
    /// The run's deadline passed; terminal.
    TimedOut,
}

impl RunState {
    /// `pending`, `running`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::AwaitingApproval => "awaiting-approval",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Escalated => "escalated",
            RunState::Cancelled => "cancelled",
            RunState::TimedOut => "timed-out",
        }
    }

    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled | RunState::TimedOut
        )
    }

    /// The transition table: whether `self -> next` is legal.
    ///
    /// ```text
    /// Pending          -> Running | Cancelled | TimedOut
    /// Running          -> Running (next step) | AwaitingApproval | Succeeded | Failed | Escalated | Cancelled | TimedOut
    /// AwaitingApproval -> Running | Failed (denied, expired) | Cancelled | TimedOut
    /// Escalated        -> Running | Failed | Cancelled | TimedOut
    /// ```
    pub fn can_become(self, next: RunState) -> bool {
        use RunState::*;
        match self {
            Pending => matches!(next, Running | Cancelled | TimedOut),
            Running => matches!(
                next,
                Running | AwaitingApproval | Succeeded | Failed | Escalated | Cancelled | TimedOut
            ),
            AwaitingApproval | Escalated => matches!(next, Running | Failed | Cancelled | TimedOut),
            Succeeded | Failed | Cancelled | TimedOut => false,
        }
    }
}

impl std::str::FromStr for RunState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        use RunState::*;
        [
            Pending,
            Running,
            AwaitingApproval,
            Succeeded,
            Failed,
            Escalated,
            Cancelled,
            TimedOut,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
        .ok_or_else(|| format!("unknown run state `{text}`"))
    }
}

impl RunState {
    /// Whether the run waits for a human: its current step waits on an approval request.
    pub fn is_waiting(self) -> bool {
        matches!(self, RunState::AwaitingApproval | RunState::Escalated)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The step a decision or record is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepContext {
    /// Run id.
    pub run_id: String,
    /// Step id within the run.
    pub step_id: String,
    /// W3C trace context of the step.
    pub traceparent: String,
}

/// A run event to append: its id, Lamport clock and time are assigned when it is stored.
#[derive(Debug, Clone)]
pub struct RunEventDraft {
    /// The run.
    pub run_id: String,
    /// The appending node: it must own the run.
    pub node_id: String,
    /// The fencing token of the appending node's claim ([`Lease::token`]): the store refuses
    /// the event when the run's token moved on.
    pub fencing_token: u64,
    /// W3C `traceparent`.
    pub traceparent: String,
    /// What happened.
    pub payload: RunEventPayload,
}

impl RunEventDraft {
    /// The event `payload` of `step`'s run, appended by the holder of `lease` under the step's
    /// trace.
    pub fn of_step(step: &StepContext, lease: &Lease, payload: RunEventPayload) -> Self {
        RunEventDraft {
            run_id: step.run_id.clone(),
            node_id: lease.owner.clone(),
            fencing_token: lease.token,
            traceparent: step.traceparent.clone(),
            payload,
        }
    }
}

/// The right to write a run's events: held by one owner at a time, until `expires_at_ms`
/// unless renewed, and fenced by a token that grows with every claim, so a writer that was
/// paused past its lease cannot write after another took the run over (Kleppmann, "How to do
/// distributed locking", 2016).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// The run.
    pub run_id: String,
    /// The owner (a node id).
    pub owner: String,
    /// The fencing token of this claim.
    pub token: u64,
    /// When the lease lapses unless renewed, ms since the Unix epoch.
    pub expires_at_ms: i64,
}

/// What the store keeps about a run beside its events: its derived state, its owner and lease,
/// its deadline and the approval it waits on (kept in step with the events, in the same
/// transaction).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    /// The run.
    pub run_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its state, as `reduce` derived it from its events.
    pub state: RunState,
    /// Who owns it; `None` while nobody works on it (waiting for a human, or finished).
    pub owner: Option<String>,
    /// When the owner's lease lapses, ms since the Unix epoch.
    pub lease_expires_at_ms: i64,
    /// The fencing token of the latest claim.
    pub fencing_token: u64,
    /// The run's deadline, ms since the Unix epoch.
    pub deadline_ms: Option<i64>,
    /// The approval request its current step waits on (or last waited on).
    pub approval_id: Option<i64>,
}

/// Why a run event was not stored or a run cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RunStoreError {
    /// The run's rules refused it.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The writer's lease is no longer the run's: another owner claimed the run (or it was
    /// cancelled) after this writer's claim. Not retryable: the writer must stop.
    #[error("run `{run_id}` is no longer yours: your claim has fencing token {offered}, the run's is {current} (owner {})", owner.as_deref().unwrap_or("none"))]
    LeaseLost {
        /// The run.
        run_id: String,
        /// The token the writer holds.
        offered: u64,
        /// The run's current token.
        current: u64,
        /// The run's current owner.
        owner: Option<String>,
    },
    /// The approval the step was to start under could not be consumed (nothing is stored,
    /// except an expiry found on the way, which is recorded with its run's end).
    #[error(transparent)]
    Approval(#[from] crate::hitl::ApprovalError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RunStoreError {
    /// Whether retrying can help: only a store failure may clear.
    pub fn is_retryable(&self) -> bool {
        match self {
            RunStoreError::Store(error) => error.is_retryable(),
            RunStoreError::Approval(error) => error.is_retryable(),
            RunStoreError::Run(_) | RunStoreError::LeaseLost { .. } => false,
        }
    }
}

/// One step of a run, as planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepSpec {
    /// Unique within the run.
    pub step_id: String,
    /// The skill to invoke.
    pub skill: String,
    /// The input object; may hold `{"$from": "<step id>", "pointer": "/..."}` references.
    pub input: serde_json::Value,
}

/// What happened. Each variant is one state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum RunEventPayload {
    /// The run exists with its plan.
    RunCreated {
        /// Tenant.
        tenant: String,
        /// Who asked, `subject@tenant`.
        principal: String,
        /// The steps, in order.
        steps: Vec<StepSpec>,
        /// When the run times out if it is still working, ms since the Unix epoch (a run
        /// waiting for a human follows its approval's expiry instead).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<i64>,
        /// The principal's roles, so a recovery governs its steps as the same principal.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        principal_roles: Vec<crate::identity::Role>,
    },
    /// A step started (or restarted after an approval or escalation): its verdict is recorded
    /// and its dispatch is about to happen. This is the dispatch intent a recovery acts on.
    StepStarted {
        /// The step.
        step_id: String,
        /// The approval consumed for this dispatch, in the same transaction.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_id: Option<i64>,
    },
    /// The owner of a running step vanished before recording how it ended; a recovery took the
    /// run over and dispatches the step again under the same idempotency key.
    StepRecovered {
        /// The step.
        step_id: String,
        /// The owner whose lease expired.
        previous_owner: String,
    },
    /// A step waits for approval request `approval_id`.
    StepAwaitingApproval {
        /// The step.
        step_id: String,
        /// The approval request.
        approval_id: i64,
    },
    /// A step finished; the run succeeds after its last step.
    StepSucceeded {
        /// The step.
        step_id: String,
        /// `sha256:<hex>` of the output JSON.
        output_digest: String,
        /// The output, for later steps' references.
        output: serde_json::Value,
    },
    /// A step failed for good (denied, expired, or a permanent error); the run fails.
    StepFailed {
        /// The step.
        step_id: String,
        /// Why.
        reason: String,
    },
    /// Retries and fallbacks are exhausted; a human was asked.
    StepEscalated {
        /// The step.
        step_id: String,
        /// Why, with the failure history in summary.
        reason: String,
    },
    /// The run was cancelled.
    RunCancelled {
        /// Why.
        reason: String,
    },
    /// The run's deadline passed.
    RunTimedOut {
        /// The deadline, ms since the Unix epoch.
        deadline_ms: i64,
    },
}

impl RunEventPayload {
    /// The kebab-case type name.
    pub fn name(&self) -> &'static str {
        match self {
            RunEventPayload::RunCreated { .. } => "run-created",
            RunEventPayload::StepStarted { .. } => "step-started",
            RunEventPayload::StepRecovered { .. } => "step-recovered",
            RunEventPayload::StepAwaitingApproval { .. } => "step-awaiting-approval",
            RunEventPayload::StepSucceeded { .. } => "step-succeeded",
            RunEventPayload::StepFailed { .. } => "step-failed",
            RunEventPayload::StepEscalated { .. } => "step-escalated",
            RunEventPayload::RunCancelled { .. } => "run-cancelled",
            RunEventPayload::RunTimedOut { .. } => "run-timed-out",
        }
    }
}

/// An immutable, stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunEvent {
    /// Unique id (`evt-<hex>`).
    pub event_id: String,
    /// The run.
    pub run_id: String,
    /// Lamport clock: strictly increasing within the run.
    pub lamport: u64,
    /// The node that appended it.
    pub node_id: String,
    /// The fencing token of the lease it was written under (ADR 0011): along a run's Lamport
    /// order these never decrease, which is the evidence that no superseded owner wrote after a
    /// takeover. 0 for a run's creation and for events stored before the token was recorded
    /// (SQLite schema 5, PostgreSQL migration 2).
    #[serde(default)]
    pub fencing_token: u64,
    /// W3C `traceparent` of the work that caused it.
    pub traceparent: String,
    /// Payload schema version ([`RUN_EVENT_SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// When it was recorded, ms since the Unix epoch.
    pub recorded_at_ms: i64,
    /// What happened.
    pub payload: RunEventPayload,
}

/// An idempotency key a run is started with, bound to the digest of the request that started
/// it (IETF httpapi-idempotency-key draft, draft-ietf-httpapi-idempotency-key-header): the
/// same key with the same request names the same run; with another request it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// The client's key (1 to [`RequestKey::MAX_BYTES`] bytes of visible ASCII).
    pub key: String,
    /// `sha256:<hex>` of the request (its canonical form is the caller's choice, applied
    /// consistently).
    pub request_digest: String,
}

impl RequestKey {
    /// Longest key accepted, bytes.
    pub const MAX_BYTES: usize = 255;

    /// Checks `key` and binds it to `request_digest`.
    ///
    /// # Errors
    ///
    /// A message naming what is wrong when `key` is empty, longer than
    /// [`RequestKey::MAX_BYTES`] or holds anything but visible ASCII.
    pub fn new(key: &str, request_digest: String) -> Result<Self, String> {
        if key.is_empty() || key.len() > Self::MAX_BYTES {
            return Err(format!(
                "an idempotency key has 1 to {} bytes, not {}",
                Self::MAX_BYTES,
                key.len()
            ));
        }
        if let Some(bad) = key.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!("an idempotency key holds visible ASCII only, not {bad:?}"));
        }
        Ok(RequestKey {
            key: key.to_owned(),
            request_digest,
        })
    }
}

/// What creating a run under an idempotency key did.
#[derive(Debug, Clone, PartialEq)]
pub enum RunCreation {
    /// The run was created; the caller owns it under this lease.
    Created(Lease),
    /// The key was used before with the same request: that earlier run is the answer.
    Replayed {
        /// The earlier run.
        run_id: String,
    },
    /// The key was used before with another request: nothing was created.
    KeyConflict {
        /// The run the key names.
        run_id: String,
    },
}

/// A step as derived from the events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepView {
    /// The plan.
    pub spec: StepSpec,
    /// `pending`, `running`, `awaiting-approval`, `succeeded`, `failed`, `escalated`.
    pub state: RunState,
    /// The approval request it waits or waited on.
    pub approval_id: Option<i64>,
    /// The approval consumed by its latest start (the dispatch intent), if any.
    pub started_with_approval: Option<i64>,
    /// Its output, once succeeded.
    pub output: Option<serde_json::Value>,
    /// `sha256:<hex>` of the output.
    pub output_digest: Option<String>,
}

/// A run as derived by [`reduce`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunView {
    /// The run.
    pub run_id: String,
    /// Tenant.
    pub tenant: String,
    /// Who asked.
    pub principal: String,
    /// The run's state.
    pub state: RunState,
    /// Its steps.
    pub steps: Vec<StepView>,
    /// The run's deadline, ms since the Unix epoch.
    pub deadline_ms: Option<i64>,
    /// The principal's roles (empty for runs created before they were recorded).
    pub principal_roles: Vec<crate::identity::Role>,
    /// The highest Lamport clock seen.
    pub lamport: u64,
    /// Events reduced.
    pub events: usize,
}

/// Why an event cannot be applied, or a run cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunError {
    /// The run has no events.
    #[error("run `{0}` does not exist")]
    NotFound(String),
    /// The first event must create the run, and only the first.
    #[error("run `{run_id}`: {message}")]
    BadCreation {
        /// The run.
        run_id: String,
        /// What is wrong.
        message: String,
    },
    /// The event would make an illegal transition.
    #[error("run `{run_id}`: `{event}` would move {subject} from {from} to {to}, which the transition table forbids")]
    IllegalTransition {
        /// The run.
        run_id: String,
        /// The event type.
        event: &'static str,
        /// `the run` or `step <id>`.
        subject: String,
        /// Current state.
        from: RunState,
        /// Requested state.
        to: RunState,
    },
    /// The event names a step the run does not have, or not the current one.
    #[error("run `{run_id}`: {message}")]
    BadStep {
        /// The run.
        run_id: String,
        /// What is wrong.
        message: String,
    },
    /// Events out of Lamport order, or of another run, or from a newer schema.
    #[error("run `{run_id}`: {message}")]
    BadEvent {
        /// The run.
        run_id: String,
        /// What is wrong.
        message: String,
    },
    /// An input reference cannot be resolved.
    #[error("run `{run_id}` step `{step_id}`: {message}")]
    BadReference {
        /// The run.
        run_id: String,
        /// The step.
        step_id: String,
        /// What is wrong.
        message: String,
    },
}
