//! The audit vocabulary: every kind of entry the audit log holds, as one typed enum.
//!
//! An entry is stored as a `kind` and a JSON `payload`; [`AuditEvent`] is exactly that pair
//! (serde's adjacent tagging), so the checked-in JSON Schema
//! (`control-plane/schemas/audit-event.v1.json`) describes the stored rows, writers cannot
//! invent a shape, and readers such as the PROV-O export match on variants instead of guessing
//! fields by JSON pointer. The payload shapes are those agentd has always written, so logs
//! written before this vocabulary existed read back as the same events.

use plugin_abi::SkillSummary;
use serde::{Deserialize, Serialize};

use crate::autonomy::{AutonomyLevel, AutonomyLimits};
use crate::governance::Decision;
use crate::hitl::{ApprovalStatus, Quorum, ReviewDecisionKind};
use crate::identity::Role;
use crate::run::{RunState, StepContext};

/// One audited state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", content = "payload", rename_all = "kebab-case")]
pub enum AuditEvent {
    /// A governance verdict, recorded before anything it allows runs.
    Verdict(VerdictRecord),
    /// One dispatch attempt of a step (or its refusal before any instance existed).
    Dispatch(DispatchEntry),
    /// An approval request was stored.
    ApprovalRequested(ApprovalRequested),
    /// A reviewer voted; the request is still pending.
    ApprovalVote(VoteRecord),
    /// A request reached a terminal (or approved) status: a deciding vote, a cancellation or an
    /// expiry.
    ApprovalDecision(ApprovalDecided),
    /// An approved request was consumed by the dispatch it was granted for.
    ApprovalConsumed(ApprovalConsumed),
    /// Enforcement changed: a policy set, the autonomy limits, an autonomy certificate.
    EnforcementChange(EnforcementChange),
    /// An agent spent its error budget and was demoted one autonomy level.
    AutonomyDemotion(Demotion),
    /// A run was taken over from an owner whose lease lapsed, cancelled, or timed out.
    RunControl(RunControl),
}

impl AuditEvent {
    /// The stored `kind`: `verdict`, `dispatch`, `approval-requested`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::Verdict(_) => "verdict",
            AuditEvent::Dispatch(_) => "dispatch",
            AuditEvent::ApprovalRequested(_) => "approval-requested",
            AuditEvent::ApprovalVote(_) => "approval-vote",
            AuditEvent::ApprovalDecision(_) => "approval-decision",
            AuditEvent::ApprovalConsumed(_) => "approval-consumed",
            AuditEvent::EnforcementChange(_) => "enforcement-change",
            AuditEvent::AutonomyDemotion(_) => "autonomy-demotion",
            AuditEvent::RunControl(_) => "run-control",
        }
    }

    /// The stored payload: compact JSON with object keys in sorted order.
    ///
    /// # Errors
    ///
    /// A serialization error, which the vocabulary's types cannot produce in practice.
    pub fn payload_json(&self) -> Result<String, serde_json::Error> {
        let mut tagged = serde_json::to_value(self)?;
        Ok(tagged
            .get_mut("payload")
            .map(serde_json::Value::take)
            .unwrap_or_default()
            .to_string())
    }

    /// Reads a stored entry back.
    ///
    /// # Errors
    ///
    /// When `kind` is not in the vocabulary or `payload` does not have its shape.
    pub fn parse(kind: &str, payload: &str) -> Result<Self, serde_json::Error> {
        let payload: serde_json::Value = serde_json::from_str(payload)?;
        serde_json::from_value(serde_json::json!({ "kind": kind, "payload": payload }))
    }

    /// The run the event belongs to, when it belongs to one.
    pub fn run_id(&self) -> Option<&str> {
        match self {
            AuditEvent::Verdict(record) => Some(&record.step.run_id),
            AuditEvent::Dispatch(entry) => Some(&entry.step.run_id),
            AuditEvent::ApprovalRequested(record) => Some(&record.run_id),
            AuditEvent::ApprovalVote(record) => Some(&record.run_id),
            AuditEvent::ApprovalDecision(decided) => Some(decided.run_id()),
            AuditEvent::ApprovalConsumed(record) => Some(&record.run_id),
            AuditEvent::RunControl(record) => Some(&record.run_id),
            AuditEvent::EnforcementChange(_) | AuditEvent::AutonomyDemotion(_) => None,
        }
    }

    /// The step the event belongs to, when it belongs to one.
    pub fn step_id(&self) -> Option<&str> {
        match self {
            AuditEvent::Verdict(record) => Some(&record.step.step_id),
            AuditEvent::Dispatch(entry) => Some(&entry.step.step_id),
            AuditEvent::ApprovalRequested(record) => Some(&record.step_id),
            AuditEvent::ApprovalVote(record) => Some(&record.step_id),
            AuditEvent::ApprovalDecision(decided) => Some(decided.step_id()),
            AuditEvent::ApprovalConsumed(record) => Some(&record.step_id),
            AuditEvent::EnforcementChange(_) | AuditEvent::AutonomyDemotion(_) | AuditEvent::RunControl(_) => None,
        }
    }
}

/// The skill a verdict was asked about, and what it resolved to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SkillResolution {
    /// The skill id asked for.
    pub requested: String,
    /// The verified package it resolved to; `None` when none provides it (the verdict then
    /// fails closed).
    pub resolved: Option<SkillSummary>,
}

/// A governance verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VerdictRecord {
    /// The step.
    pub step: StepContext,
    /// The skill.
    pub skill: SkillResolution,
    /// `sha256:<hex>` of the input the verdict binds.
    pub input_digest: String,
    /// The decision, with its provenance.
    pub decision: Decision,
}

/// A dispatch attempt, with the step it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DispatchEntry {
    /// The step.
    pub step: StepContext,
    /// What happened.
    pub outcome: DispatchRecord,
}

/// How a dispatch attempt ended, as the runtime reports it to the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DispatchRecord {
    /// The skill dispatched (or refused).
    #[serde(default)]
    pub skill_id: String,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_version: Option<String>,
    /// `sha256:<hex>` of its component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The rung of the escalation ladder: `primary`, or `fallback <id>@<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rung: Option<String>,
    /// The attempt on this rung, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Attempts allowed on this rung.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// How the candidate was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<SelectionRecord>,
    /// How it ended.
    pub outcome: OutcomeKind,
    /// Whether a retry could help.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// Why it was refused without an instance (an unsupported obligation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The output's digest, or the runtime's account of the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<DispatchDetail>,
    /// What the attempt cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<DispatchMetrics>,
}

impl DispatchRecord {
    /// The output digest of a completed dispatch.
    pub fn output_digest(&self) -> Option<&str> {
        match &self.detail {
            Some(DispatchDetail::Output { output_digest }) => Some(output_digest),
            _ => None,
        }
    }
}

/// The detail of a dispatch record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum DispatchDetail {
    /// A completed dispatch: the digest of its output.
    Output {
        /// `sha256:<hex>` of the output JSON.
        output_digest: String,
    },
    /// Anything else: the runtime's outcome as JSON (its `outcome`, `failure` or `error` and
    /// their fields).
    Failure(serde_json::Value),
}

/// Measurements of one invocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DispatchMetrics {
    /// Time to instantiate from the `InstancePre`, µs (0 for a reused warm instance).
    pub instantiate_us: u64,
    /// Time inside `invoke`, µs.
    pub execute_us: u64,
    /// Fuel consumed. When an epoch deadline interrupts the guest this is a lower bound:
    /// compiled code keeps its fuel counter in a register and flushes it to the store at calls
    /// and returns, not at the interruption. Equal inputs burn equal fuel only in a guest that
    /// reads no randomness: Rust's `HashMap` seeds itself from WASI `random`, which varies the
    /// work by a few hundred units in a million.
    pub fuel_consumed: u64,
    /// Largest linear memory reached, bytes.
    pub peak_memory_bytes: u64,
    /// Host function calls made by the guest.
    pub host_calls: u64,
    /// Capability denials.
    pub denials: u64,
}

/// How the runtime's selector chose a candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SelectionRecord {
    /// Usable versions, best first.
    pub candidates: Vec<String>,
    /// Versions that could not be used, and why.
    pub rejected: Vec<RejectedCandidate>,
}

/// A candidate the selector (or the verdict) ruled out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RejectedCandidate {
    /// Its version.
    pub version: String,
    /// Why.
    pub reason: String,
}

/// How an invocation ended, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// The skill returned an output.
    Completed,
    /// The skill refused its input.
    InvalidInput,
    /// The skill reported a passing fault.
    Transient,
    /// The skill reported a permanent error.
    Permanent,
    /// The skill asked for a human.
    NeedsHuman,
    /// The deadline passed.
    Timeout,
    /// The fuel budget ran out.
    FuelExhausted,
    /// Linear memory would have grown past the limit.
    MemoryLimit,
    /// The guest trapped.
    Trap,
    /// The guest needed a capability that was not granted.
    CapabilityDenied,
    /// The guest's output was not a valid envelope.
    InvalidOutput,
    /// The host failed around the guest.
    HostError,
    /// Every slot was busy and the queue full.
    Overloaded,
    /// Not dispatched: the verdict carried an obligation the runtime cannot fulfil.
    Refused,
}

impl OutcomeKind {
    /// The kebab-case name: `completed`, `invalid-input`, `timeout`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Completed => "completed",
            OutcomeKind::InvalidInput => "invalid-input",
            OutcomeKind::Transient => "transient",
            OutcomeKind::Permanent => "permanent",
            OutcomeKind::NeedsHuman => "needs-human",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::FuelExhausted => "fuel-exhausted",
            OutcomeKind::MemoryLimit => "memory-limit",
            OutcomeKind::Trap => "trap",
            OutcomeKind::CapabilityDenied => "capability-denied",
            OutcomeKind::InvalidOutput => "invalid-output",
            OutcomeKind::HostError => "host-error",
            OutcomeKind::Overloaded => "overloaded",
            OutcomeKind::Refused => "refused",
        }
    }
}

impl std::fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// An approval request as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApprovalRequested {
    /// Request id.
    pub approval_id: i64,
    /// Run id.
    pub run_id: String,
    /// Step id.
    pub step_id: String,
    /// W3C `traceparent`.
    pub traceparent: String,
    /// Subject of the acting agent.
    pub acting_agent: String,
    /// The skill as governed.
    pub skill: SkillSummary,
    /// Input digest the approval binds.
    pub input_digest: String,
    /// Policy version the approval binds.
    pub policy_version: String,
    /// Role every reviewer must hold.
    pub reviewer_role: Role,
    /// Approvals needed and denials that deny.
    pub quorum: Quorum,
    /// Expiry, ms since the Unix epoch.
    pub expires_at_ms: i64,
    /// What reviewers may answer.
    pub allowed_decisions: Vec<ReviewDecisionKind>,
    /// The request this one replaces after a modification.
    pub parent_id: Option<i64>,
}

/// One reviewer's vote, with where the request stands after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VoteRecord {
    /// Request id.
    pub approval_id: i64,
    /// The answer.
    pub vote: ReviewDecisionKind,
    /// The reviewer's subject.
    pub reviewer: String,
    /// The reviewer's roles.
    pub reviewer_roles: Vec<Role>,
    /// Why.
    pub reason: Option<String>,
    /// Approving votes so far.
    pub approvals: u32,
    /// Denying votes so far.
    pub denials: u32,
    /// The quorum.
    pub quorum: Quorum,
    /// The status after the vote.
    pub status: ApprovalStatus,
    /// `sha256:<hex>` of the edited request of a modification.
    pub modified_request_digest: Option<String>,
    /// The requester's subject.
    pub requester: String,
    /// The acting agent's subject.
    pub acting_agent: String,
    /// Run id.
    pub run_id: String,
    /// Step id.
    pub step_id: String,
    /// W3C `traceparent`.
    pub traceparent: String,
    /// Skill id.
    pub skill_id: String,
    /// Skill version.
    pub skill_version: String,
    /// Component digest.
    pub skill_digest: String,
    /// Input digest the request binds.
    pub input_digest: String,
    /// Policy version the request binds.
    pub policy_version: String,
}

/// How a request reached its decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ApprovalDecided {
    /// A vote completed the quorum, reached the deny threshold, or modified the request.
    Vote(Box<VoteRecord>),
    /// The stored expiry passed (decided by `system:approval-expiry`).
    Expired(ExpiryRecord),
    /// The requester or an admin withdrew it.
    Cancelled(CancellationRecord),
}

impl ApprovalDecided {
    fn run_id(&self) -> &str {
        match self {
            ApprovalDecided::Vote(record) => &record.run_id,
            ApprovalDecided::Expired(record) => &record.run_id,
            ApprovalDecided::Cancelled(record) => &record.run_id,
        }
    }

    fn step_id(&self) -> &str {
        match self {
            ApprovalDecided::Vote(record) => &record.step_id,
            ApprovalDecided::Expired(record) => &record.step_id,
            ApprovalDecided::Cancelled(record) => &record.step_id,
        }
    }

    /// The status the request reached.
    pub fn status(&self) -> ApprovalStatus {
        match self {
            ApprovalDecided::Vote(record) => record.status,
            ApprovalDecided::Expired(record) => record.status,
            ApprovalDecided::Cancelled(record) => record.status,
        }
    }
}

/// An expiry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExpiryRecord {
    /// Request id.
    pub approval_id: i64,
    /// `expired`.
    pub status: ApprovalStatus,
    /// The status it expired from (`pending` or `approved`).
    pub was: ApprovalStatus,
    /// The stored expiry, ms since the Unix epoch.
    pub expires_at_ms: i64,
    /// Run id.
    pub run_id: String,
    /// Step id.
    pub step_id: String,
    /// Skill id.
    pub skill_id: String,
    /// Input digest the request bound.
    pub input_digest: String,
    /// Policy version the request bound.
    pub policy_version: String,
}

/// A cancellation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CancellationRecord {
    /// Request id.
    pub approval_id: i64,
    /// `cancelled`.
    pub status: ApprovalStatus,
    /// Why.
    pub reason: Option<String>,
    /// Run id.
    pub run_id: String,
    /// Step id.
    pub step_id: String,
    /// Skill id.
    pub skill_id: String,
    /// Input digest the request bound.
    pub input_digest: String,
    /// Policy version the request bound.
    pub policy_version: String,
}

/// A consumption: the approved dispatch is about to happen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApprovalConsumed {
    /// Request id.
    pub approval_id: i64,
    /// Run id.
    pub run_id: String,
    /// Step id.
    pub step_id: String,
    /// Skill id.
    pub skill_id: String,
    /// Component digest the approval bound.
    pub skill_digest: String,
    /// Input digest the approval bound.
    pub input_digest: String,
    /// Policy version the dispatch was governed under.
    pub policy_version: String,
}

/// An enforcement change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum EnforcementChange {
    /// The policy set was replaced.
    PolicySet {
        /// Where the new text came from.
        origin: String,
        /// The version in force before.
        old_version: String,
        /// The new version.
        new_version: String,
        /// Policies in the new set.
        policies: usize,
    },
    /// The error budget and spending budgets changed.
    AutonomyLimits {
        /// Before.
        old: AutonomyLimits,
        /// After.
        new: AutonomyLimits,
    },
    /// An autonomy certificate was issued.
    AutonomyCertificate {
        /// Its row id.
        certificate_id: i64,
        /// The agent it caps.
        agent: String,
        /// The skill, or `*`.
        skill: String,
        /// The level.
        level: AutonomyLevel,
        /// Expiry, seconds since the Unix epoch.
        expires_at: u64,
    },
}

/// A demotion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Demotion {
    /// The agent demoted.
    pub agent: String,
    /// For which skill.
    pub skill: String,
    /// Why.
    pub reason: String,
}

/// What was done to a run from outside its own steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunControlAction {
    /// A recovery pass took the run over from an owner whose lease lapsed.
    TakenOver,
    /// Its requester or an admin cancelled it.
    Cancelled,
    /// Its deadline passed while it was working.
    TimedOut,
}

/// A run taken over, cancelled or timed out: by whom (the entry's principal), from which state
/// and owner, under which new fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunControl {
    /// The run.
    pub run_id: String,
    /// What was done.
    pub action: RunControlAction,
    /// Why, in words.
    pub reason: String,
    /// The run's state before.
    pub previous_state: RunState,
    /// Its owner before, if any.
    pub previous_owner: Option<String>,
    /// The fencing token after: writes under any older token are refused.
    pub fencing_token: u64,
}
