//! Human in the loop: durable approval requests and the rules for deciding them.
//!
//! A request is `pending` until a reviewer approves or denies it (once; a compare-and-set in
//! [`Store::decide_approval`](crate::store::Store::decide_approval)); an approved request is
//! `consumed` by exactly one dispatch that matches what was approved.

use std::fmt;
use std::str::FromStr;

use crate::identity::{Principal, Role};
use crate::store::StoreError;

/// Where an approval request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalStatus {
    /// Waiting for a reviewer.
    Pending,
    /// Approved; not yet dispatched.
    Approved,
    /// Denied; terminal.
    Denied,
    /// Approved and dispatched; terminal.
    Consumed,
}

impl ApprovalStatus {
    /// The status's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Consumed => "consumed",
        }
    }
}

impl fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Error of [`ApprovalStatus::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown approval status `{0}`: expected pending, approved, denied or consumed")]
pub struct ApprovalStatusParseError(pub String);

impl FromStr for ApprovalStatus {
    type Err = ApprovalStatusParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "pending" => Ok(ApprovalStatus::Pending),
            "approved" => Ok(ApprovalStatus::Approved),
            "denied" => Ok(ApprovalStatus::Denied),
            "consumed" => Ok(ApprovalStatus::Consumed),
            other => Err(ApprovalStatusParseError(other.to_owned())),
        }
    }
}

/// What is asked to be approved.
#[derive(Debug, Clone)]
pub struct NewApproval {
    /// Who asked (the acting agent).
    pub requester: Principal,
    /// The run the step belongs to.
    pub run_id: String,
    /// The step awaiting approval.
    pub step_id: String,
    /// W3C `traceparent` of the step.
    pub traceparent: String,
    /// Skill id.
    pub skill_id: String,
    /// Skill version.
    pub skill_version: String,
    /// `sha256:<hex>` of the component.
    pub skill_digest: String,
    /// `sha256:<hex>` of the input JSON text.
    pub input_digest: String,
    /// The full `agentd.invoke.v1` request, so the run can resume after the decision.
    pub request_json: String,
    /// Policy version the verdict was made under.
    pub policy_version: String,
    /// Role a reviewer must hold.
    pub reviewer_role: Role,
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
    /// Component digest the approval binds.
    pub skill_digest: String,
    /// Input digest the approval binds.
    pub input_digest: String,
    /// The stored `agentd.invoke.v1` request.
    pub request_json: String,
    /// Policy version the approval binds.
    pub policy_version: String,
    /// Role a reviewer must hold.
    pub reviewer_role: Role,
    /// Current status.
    pub status: ApprovalStatus,
    /// Reviewer's subject, once decided.
    pub decided_by: Option<String>,
    /// Decision time, ms since the Unix epoch.
    pub decided_at_ms: Option<i64>,
    /// Reviewer's reason.
    pub decision_reason: Option<String>,
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
    /// The reviewer is the requester (separation of duties).
    #[error("approval request {id} was requested by you; another reviewer must decide it")]
    SelfApproval {
        /// The id.
        id: i64,
    },
    /// The request was already decided.
    #[error("approval request {id} was already decided ({status} by `{decided_by}`); a decision is recorded once")]
    AlreadyDecided {
        /// The id.
        id: i64,
        /// Its status.
        status: ApprovalStatus,
        /// Who decided it.
        decided_by: String,
    },
    /// Dispatch needs an approved request.
    #[error("approval request {id} is {status}, not approved")]
    NotApproved {
        /// The id.
        id: i64,
        /// Its status.
        status: ApprovalStatus,
    },
    /// The dispatch differs from what was approved.
    #[error("approval request {id} was granted for {what} {bound}, not {offered}")]
    BindingMismatch {
        /// The id.
        id: i64,
        /// What differs: skill digest, input digest or policy version.
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
    /// The requester as they were when asking: the principal a resumed step runs as.
    pub fn requester_principal(&self) -> Principal {
        Principal {
            subject: self.requester.clone(),
            tenant: self.tenant.clone(),
            roles: self.requester_roles.clone(),
        }
    }
}
