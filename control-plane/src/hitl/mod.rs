//! Human in the loop: durable approval requests and the rules for deciding them.
//!
//! A request is a state machine, persisted before anyone is told about it:
//!
//! ```text
//! Pending -> Approved -> Consumed          (quorum of distinct approvals; one dispatch)
//! Pending -> Denied                        (deny threshold reached)
//! Pending -> Modified                      (a reviewer edited the input; the edit is governed anew)
//! Pending | Approved -> Expired            (the stored expires_at passed: counts as denied)
//! Pending -> Cancelled                     (the requester or an admin withdrew it)
//! ```
//!
//! The rules are pure functions over values ([`rules`]): given a stored request and an answer,
//! they return the [`ApprovalTransition`] to apply (checked against
//! [`ApprovalStatus::can_become`]) or the [`ApprovalError`] naming the rule that refused it.
//! The control plane applies a transition as a compare-and-set on the status it read, in one
//! transaction with its audit entry, so exactly one terminal transition happens even with
//! concurrent reviewers. Expiry is decided from the stored `expires_at_ms`, never from a
//! client's wait.

pub mod rules;

pub use rules::VoteOutcome;

use std::fmt;
use std::str::FromStr;

use plugin_abi::SkillSummary;

use crate::error::StoreError;
use crate::identity::{Principal, Role};

/// What a reviewer may answer to an approval request.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ReviewDecisionKind {
    /// Let the step run as requested.
    Approve,
    /// Refuse it.
    Deny,
    /// Edit the input; the edited step is governed again as a new request.
    Modify,
}

impl ReviewDecisionKind {
    /// `approve`, `deny` or `modify`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewDecisionKind::Approve => "approve",
            ReviewDecisionKind::Deny => "deny",
            ReviewDecisionKind::Modify => "modify",
        }
    }
}

impl FromStr for ReviewDecisionKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "approve" => Ok(ReviewDecisionKind::Approve),
            "deny" => Ok(ReviewDecisionKind::Deny),
            "modify" => Ok(ReviewDecisionKind::Modify),
            other => Err(format!(
                "unknown review decision `{other}`: expected approve, deny or modify"
            )),
        }
    }
}

impl fmt::Display for ReviewDecisionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// M-of-N approval: `required` distinct approvals approve, `deny_threshold` denials deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Quorum {
    /// Distinct approving reviewers needed (at least 1).
    pub required: u32,
    /// Denials that end the request as denied (at least 1).
    pub deny_threshold: u32,
}

impl Default for Quorum {
    fn default() -> Self {
        Quorum {
            required: 1,
            deny_threshold: 1,
        }
    }
}

/// Where an approval request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalStatus {
    /// Waiting for reviewers.
    Pending,
    /// Approved by the quorum; not yet dispatched.
    Approved,
    /// Denied; terminal.
    Denied,
    /// A reviewer edited the input; terminal (the edited step is a new request).
    Modified,
    /// Its `expires_at_ms` passed before it was decided or dispatched; terminal, counts as denied.
    Expired,
    /// Withdrawn by the requester or an admin; terminal.
    Cancelled,
    /// Approved and dispatched; terminal.
    Consumed,
}

impl ApprovalStatus {
    /// Every status.
    pub const ALL: [ApprovalStatus; 7] = [
        ApprovalStatus::Pending,
        ApprovalStatus::Approved,
        ApprovalStatus::Denied,
        ApprovalStatus::Modified,
        ApprovalStatus::Expired,
        ApprovalStatus::Cancelled,
        ApprovalStatus::Consumed,
    ];

    /// The status's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Modified => "modified",
            ApprovalStatus::Expired => "expired",
            ApprovalStatus::Cancelled => "cancelled",
            ApprovalStatus::Consumed => "consumed",
        }
    }

    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        !matches!(self, ApprovalStatus::Pending | ApprovalStatus::Approved)
    }

    /// The transition table: whether `self -> next` is legal.
    pub fn can_become(self, next: ApprovalStatus) -> bool {
        use ApprovalStatus::*;
        matches!(
            (self, next),
            (Pending, Approved | Denied | Modified | Expired | Cancelled)
                | (Approved, Consumed | Expired)
                | (Modified, Consumed)
        )
    }
}

impl fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Error of [`ApprovalStatus::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown approval status `{0}`: expected pending, approved, denied, modified, expired, cancelled or consumed")]
pub struct ApprovalStatusParseError(pub String);

impl FromStr for ApprovalStatus {
    type Err = ApprovalStatusParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ApprovalStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| ApprovalStatusParseError(text.to_owned()))
    }
}

/// One reviewer's answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Vote {
    /// The reviewer's subject.
    pub reviewer: String,
    /// What they answered.
    pub decision: ReviewDecisionKind,
    /// Why.
    pub reason: Option<String>,
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
}

/// What a dispatch offers when it consumes an approval; every field must equal what was approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalBinding {
    /// Tenant.
    pub tenant: String,
    /// Run id.
    pub run_id: String,
    /// Step id.
    pub step_id: String,
    /// Skill id.
    pub skill_id: String,
    /// `sha256:<hex>` of the component.
    pub skill_digest: String,
    /// `sha256:<hex>` of the input.
    pub input_digest: String,
    /// Policy version the dispatch was governed under.
    pub policy_version: String,
}

/// What is asked to be approved.
#[derive(Debug, Clone)]
pub struct NewApproval {
    /// On whose behalf the step runs.
    pub requester: Principal,
    /// The subject of the agent acting (may differ from the requester); it may not review.
    pub acting_agent: String,
    /// The run the step belongs to.
    pub run_id: String,
    /// The step awaiting approval.
    pub step_id: String,
    /// W3C `traceparent` of the step.
    pub traceparent: String,
    /// The skill as governed (id, version, digest, side effect, capabilities).
    pub skill: SkillSummary,
    /// `sha256:<hex>` of the input JSON text.
    pub input_digest: String,
    /// The full `agentd.invoke.v1` request, so the run can resume after the decision.
    pub request_json: String,
    /// Policy version the verdict was made under.
    pub policy_version: String,
    /// Role every reviewer must hold.
    pub reviewer_role: Role,
    /// Approvals needed and denials that deny.
    pub quorum: Quorum,
    /// When the request expires, ms since the Unix epoch.
    pub expires_at_ms: i64,
    /// What reviewers may answer.
    pub allowed_decisions: Vec<ReviewDecisionKind>,
    /// The request this one replaces after a reviewer modified its input.
    pub parent_id: Option<i64>,
}

/// A stored approval request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApprovalRequest {
    /// Request id.
    pub id: i64,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Tenant.
    pub tenant: String,
    /// Requester's subject.
    pub requester: String,
    /// Requester's roles when asking; the resumed step is governed with them again.
    pub requester_roles: std::collections::BTreeSet<Role>,
    /// Subject of the acting agent.
    pub acting_agent: String,
    /// Run id.
    pub run_id: String,
    /// Step id.
    pub step_id: String,
    /// W3C `traceparent`.
    pub traceparent: String,
    /// The skill as governed.
    pub skill: SkillSummary,
    /// Input digest the approval binds.
    pub input_digest: String,
    /// The stored `agentd.invoke.v1` request.
    pub request_json: String,
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
    /// The request this one replaces, after a modification.
    pub parent_id: Option<i64>,
    /// Current status.
    pub status: ApprovalStatus,
    /// Votes so far, oldest first.
    pub votes: Vec<Vote>,
    /// Who made the terminal transition (the last voter, the canceller, `system:approval-expiry`).
    pub decided_by: Option<String>,
    /// Time of the terminal (or approving) transition, ms since the Unix epoch.
    pub decided_at_ms: Option<i64>,
    /// The deciding reason.
    pub decision_reason: Option<String>,
    /// For a modified request: the edited `agentd.invoke.v1` request.
    pub modified_request_json: Option<String>,
    /// Consumption time, ms since the Unix epoch.
    pub consumed_at_ms: Option<i64>,
}

/// Why an approval operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// No request with this id in the caller's tenant.
    #[error("approval request {id} does not exist in your tenant; `agentd hitl list` shows the pending ones")]
    NotFound {
        /// The id asked for.
        id: i64,
    },
    /// The reviewer lacks the role the request needs.
    #[error("approval request {id} needs a principal with the `{required}` role")]
    NotAReviewer {
        /// The id.
        id: i64,
        /// The role needed.
        required: Role,
    },
    /// Policy does not let this reviewer review this skill, tenant and risk tier.
    #[error("approval request {id}: {reason}")]
    ReviewNotPermitted {
        /// The id.
        id: i64,
        /// Why.
        reason: String,
    },
    /// The reviewer is the requester or the acting agent (separation of duties).
    #[error("approval request {id}: you are its {who}; another reviewer must decide it (separation of duties)")]
    SelfApproval {
        /// The id.
        id: i64,
        /// `requester` or `acting agent`.
        who: &'static str,
    },
    /// This reviewer already voted (quorum needs distinct reviewers).
    #[error("you already answered approval request {id} ({decision}); a quorum needs distinct reviewers")]
    AlreadyVoted {
        /// The id.
        id: i64,
        /// The earlier answer.
        decision: ReviewDecisionKind,
    },
    /// The answer is not among the request's allowed decisions.
    #[error("approval request {id} does not accept `{decision}`; allowed: {allowed}")]
    DecisionNotAllowed {
        /// The id.
        id: i64,
        /// The answer given.
        decision: ReviewDecisionKind,
        /// The allowed answers, comma-separated.
        allowed: String,
    },
    /// A modification needs the edited request, and only a modification takes one.
    #[error("approval request {id}: {message}")]
    BadModification {
        /// The id.
        id: i64,
        /// What is wrong.
        message: String,
    },
    /// The request is no longer pending.
    #[error("approval request {id} was already decided ({status}{}); a decision is recorded once", decided_by.as_deref().map(|by| format!(" by `{by}`")).unwrap_or_default())]
    AlreadyDecided {
        /// The id.
        id: i64,
        /// Its status.
        status: ApprovalStatus,
        /// Who decided it.
        decided_by: Option<String>,
    },
    /// The request expired (its stored `expires_at_ms` passed); it now counts as denied.
    #[error("approval request {id} expired at {expires_at_ms} ms since the epoch and counts as denied")]
    Expired {
        /// The id.
        id: i64,
        /// Its expiry.
        expires_at_ms: i64,
    },
    /// Only the requester or an admin may cancel.
    #[error("approval request {id} can be cancelled only by its requester or an admin")]
    NotAllowedToCancel {
        /// The id.
        id: i64,
    },
    /// Dispatch needs an approved request.
    #[error("approval request {id} is {status}, not approved")]
    NotApproved {
        /// The id.
        id: i64,
        /// Its status.
        status: ApprovalStatus,
    },
    /// A transition the state machine does not have (a defect in a rule, reported rather than
    /// stored).
    #[error("approval request {id} cannot move from {from} to {to}")]
    IllegalTransition {
        /// The id.
        id: i64,
        /// Its status.
        from: ApprovalStatus,
        /// The status asked for.
        to: ApprovalStatus,
    },
    /// The dispatch differs from what was approved.
    #[error("approval request {id} was granted for {what} {bound}, not {offered}")]
    BindingMismatch {
        /// The id.
        id: i64,
        /// What differs: tenant, run id, step id, skill id, skill digest, input digest or policy
        /// version.
        what: &'static str,
        /// What was approved.
        bound: String,
        /// What was offered.
        offered: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApprovalError {
    /// Whether retrying can help: only a store failure may clear.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApprovalError::Store(error) => error.is_retryable(),
            _ => false,
        }
    }
}

impl ApprovalRequest {
    /// Approving votes so far.
    pub fn approvals(&self) -> u32 {
        u32::try_from(
            self.votes
                .iter()
                .filter(|v| v.decision == ReviewDecisionKind::Approve)
                .count(),
        )
        .unwrap_or(u32::MAX)
    }

    /// Denying votes so far.
    pub fn denials(&self) -> u32 {
        u32::try_from(
            self.votes
                .iter()
                .filter(|v| v.decision == ReviewDecisionKind::Deny)
                .count(),
        )
        .unwrap_or(u32::MAX)
    }

    /// The requester as they were when asking: the principal a resumed step runs as.
    pub fn requester_principal(&self) -> Principal {
        Principal {
            subject: self.requester.clone(),
            tenant: self.tenant.clone(),
            roles: self.requester_roles.clone(),
        }
    }
}

/// Who decided a transition, and why (absent for a consumption, which is the dispatch itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The deciding subject (the last voter, the canceller, `system:approval-expiry`).
    pub by: String,
    /// The reason given.
    pub reason: Option<String>,
    /// For a modification: the edited `agentd.invoke.v1` request.
    pub modified_request_json: Option<String>,
}

/// A compare-and-set: request `id` moves from `from` to `to` at `at_ms`, if it is still `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalTransition {
    /// The request.
    pub id: i64,
    /// The status it was read in.
    pub from: ApprovalStatus,
    /// The status it moves to.
    pub to: ApprovalStatus,
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// Who decided; `None` for a consumption.
    pub decided: Option<Decided>,
}

/// The allowed decisions as stored and shown: `approve,deny,modify`.
pub fn decisions_text(decisions: &[ReviewDecisionKind]) -> String {
    decisions.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(",")
}
