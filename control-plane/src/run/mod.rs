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

mod reduce;

pub use reduce::{next_event, reduce};

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Version of the event payload schema written by this build (`schemas/run-event.v1.json`).
pub const RUN_EVENT_SCHEMA_VERSION: u32 = 1;

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
    /// The appending node.
    pub node_id: String,
    /// W3C `traceparent`.
    pub traceparent: String,
    /// What happened.
    pub payload: RunEventPayload,
}

impl RunEventDraft {
    /// The event `payload` of `step`'s run, appended by `node_id` under the step's trace.
    pub fn of_step(step: &StepContext, node_id: &str, payload: RunEventPayload) -> Self {
        RunEventDraft {
            run_id: step.run_id.clone(),
            node_id: node_id.to_owned(),
            traceparent: step.traceparent.clone(),
            payload,
        }
    }
}

/// Why a run event was not stored or a run cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RunStoreError {
    /// The run's rules refused it.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RunStoreError {
    /// Whether retrying can help: only a store failure may clear.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RunStoreError::Store(error) if error.is_retryable())
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
    },
    /// A step started (or restarted after an approval or escalation).
    StepStarted {
        /// The step.
        step_id: String,
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
    /// W3C `traceparent` of the work that caused it.
    pub traceparent: String,
    /// Payload schema version ([`RUN_EVENT_SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// When it was recorded, ms since the Unix epoch.
    pub recorded_at_ms: i64,
    /// What happened.
    pub payload: RunEventPayload,
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
