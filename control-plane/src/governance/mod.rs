//! Governance, the policy decision point (PDP): Cedar policies (<https://www.cedarpolicy.com>)
//! turned into agentd verdicts. The runtime is the policy enforcement point (PEP): it asks
//! before every dispatch and does what the verdict says.
//!
//! Cedar answers allow or deny; agentd adds "require approval" by annotating a `permit` policy
//! (Cedar has no such verdict). Annotations on a `permit` that determined an allow:
//!
//! | annotation | meaning | default |
//! |---|---|---|
//! | `@require_approval("<role>")` | the allow becomes [`Verdict::RequireApproval`]; reviewers hold `<role>` | none |
//! | `@quorum("<n>")` | `n` distinct reviewers must approve | 1 |
//! | `@deny_threshold("<n>")` | `n` denials end the request as denied | 1 |
//! | `@approval_ttl("<n>[s|m|h|d]")` | the request expires (counts as denied) after this | 1 day |
//! | `@allowed_decisions("approve,deny,modify")` | what a reviewer may answer | `approve,deny` |
//! | `@obligations("<name>,...")` | duties the runtime must fulfil or refuse to dispatch | none |
//! | `@max_autonomy("L1".."L5")` | caps the agent's autonomy level (never raises it) | none |
//! | `@max_attempts("<n>")` | overrides the skill manifest's `retry.max_attempts` (the lowest wins when several decide) | the manifest's |
//!
//! Policies are validated against the Cedar schema [`SCHEMA`] (`policies/agentd.cedarschema`,
//! strict mode) when loaded; an invalid set refuses to load with every problem listed, and so
//! does a set with malformed annotations (cargo-deny style: all problems at once).
//!
//! The entity model (see the schema):
//! - principal `Agentd::Principal::"<tenant>/<subject>"` with `subject`, `tenant`, `roles`;
//! - action `invoke` on `Agentd::Skill::"<id>"` with `id`, `version`, `side_effect`, `digest`,
//!   `capabilities`, `risk_tier`, `cpu_metering` (`fuel` or `epoch`);
//! - action `use-capability` on `Agentd::Capability::"<text>"` with `kind` and `scope`, context
//!   `skill` and `side_effect`;
//! - action `review` on the skill, context `tenant`, `risk_tier` and `requester`.
//!
//! Governance fails closed: an empty policy set, an unknown skill, an incomplete principal, a
//! policy evaluation error (an erroring `forbid` counts as matching) give [`Verdict::Deny`] with
//! the reason. A store error while auditing is returned to the caller, which must not dispatch.
//!
//! - [`policy`]: [`PolicyEngine`], loading and deciding;
//! - `annotations`: agentd's annotations, parsed and validated;
//! - `cedar`: entities, scope slicing and evaluation.

mod annotations;
mod cedar;
pub mod policy;

pub use annotations::AnnotationProblem;
pub use policy::PolicyEngine;

pub use crate::hitl::{Quorum, ReviewDecisionKind};
pub use crate::risk::RiskTier;

use plugin_abi::Capability;

use crate::autonomy::{AutonomyAssessment, AutonomyLevel};
use crate::identity::Role;

/// The Cedar schema every policy set is validated against.
pub const SCHEMA: &str = include_str!("../../../policies/agentd.cedarschema");

/// The annotation on a `permit` policy that turns its allow into a require-approval verdict;
/// its value names the reviewer role.
pub const REQUIRE_APPROVAL_ANNOTATION: &str = "require_approval";

/// Default time an approval request stays open: one day, in seconds.
pub const DEFAULT_APPROVAL_TTL_SECS: i64 = 86_400;

/// Why an action was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DenyKind {
    /// A `forbid` policy matched.
    Forbidden,
    /// No `permit` policy matched.
    NotPermitted,
    /// Governance could not decide (unknown skill or principal, evaluation error) and failed
    /// closed.
    FailedClosed,
}

/// A duty attached to a verdict that the runtime must fulfil, or else not dispatch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Obligation(pub String);

/// The answer to "may this principal run this skill?". A value, never an error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Run it (with the granted capabilities of the [`Decision`]), fulfilling the obligations.
    Allow {
        /// Duties the runtime must fulfil.
        obligations: Vec<Obligation>,
    },
    /// Do not run it.
    Deny {
        /// Forbidden, not permitted, or failed closed.
        kind: DenyKind,
        /// Human-readable reasons, with policy ids where a policy decided.
        reasons: Vec<String>,
        /// Ids of the policies that decided (empty when none matched or governance failed).
        determining_policies: Vec<String>,
    },
    /// Run it once reviewers with `reviewer_role` approve, before `expires_at_ms`.
    RequireApproval {
        /// Role every reviewer must hold.
        reviewer_role: Role,
        /// How many must approve, how many denials deny.
        quorum: Quorum,
        /// When the request expires (counts as denied), ms since the Unix epoch.
        expires_at_ms: i64,
        /// What reviewers may answer.
        allowed_decisions: Vec<ReviewDecisionKind>,
        /// Duties the runtime must fulfil once approved.
        obligations: Vec<Obligation>,
    },
}

impl Verdict {
    /// The verdict's kebab-case name: `allow`, `deny`, `require-approval`.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Allow { .. } => "allow",
            Verdict::Deny { .. } => "deny",
            Verdict::RequireApproval { .. } => "require-approval",
        }
    }

    /// The obligations of an allow or require-approval verdict.
    pub fn obligations(&self) -> &[Obligation] {
        match self {
            Verdict::Allow { obligations } | Verdict::RequireApproval { obligations, .. } => obligations,
            Verdict::Deny { .. } => &[],
        }
    }
}

/// A verdict with its provenance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// Ids of the policies that determined it.
    pub determining_policies: Vec<String>,
    /// Requested capabilities the policy granted (used only if the verdict lets the step run).
    pub granted_capabilities: Vec<Capability>,
    /// Requested capabilities the policy did not grant.
    pub withheld_capabilities: Vec<Capability>,
    /// The skill's risk tier (low when the skill is unknown).
    pub risk_tier: RiskTier,
    /// `sha256:<hex>` of the policy text the decision was made under.
    pub policy_version: String,
    /// When it was decided, ms since the Unix epoch.
    pub decided_at_ms: i64,
    /// The lowest `@max_autonomy` of the policies that decided, if any.
    pub autonomy_cap: Option<AutonomyLevel>,
    /// The lowest `@max_attempts` of the policies that decided, if any: the retry budget the
    /// runtime must use instead of the manifest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// How the agent's autonomy level shaped the verdict (set by the control plane).
    pub autonomy: Option<AutonomyAssessment>,
}

impl Decision {
    /// The granted capabilities: the only ones a dispatch under this decision may use.
    pub fn grants(&self) -> &[Capability] {
        &self.granted_capabilities
    }
}

/// Why a policy set refused to load.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid Cedar.
    #[error("policy set {origin} does not parse: {message}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// Cedar's diagnostics.
        message: String,
    },
    /// The policies do not validate against the schema.
    #[error("policy set {origin} does not validate against the agentd schema ({} problems): {}", problems.len(), problems.join("; "))]
    Invalid {
        /// Where the text came from.
        origin: String,
        /// Every validation error.
        problems: Vec<String>,
    },
    /// agentd annotations are malformed or misplaced: every problem of the set, in policy order.
    #[error("{}", annotation_summary(origin, problems))]
    Annotations {
        /// Where the text came from.
        origin: String,
        /// Every problem found.
        problems: Vec<AnnotationProblem>,
    },
    /// The built-in schema does not parse (a build defect).
    #[error("the built-in Cedar schema does not parse: {0}")]
    Schema(String),
}

impl PolicyError {
    /// Whether retrying can help: only reading the file might.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PolicyError::Read { .. })
    }
}

fn annotation_summary(origin: &str, problems: &[AnnotationProblem]) -> String {
    match problems {
        [only] => format!("policy `{}` in {origin}: {}", only.policy, only.message),
        _ => format!(
            "policy set {origin} has {} annotation problems: {}",
            problems.len(),
            problems
                .iter()
                .map(|problem| format!("policy `{}`: {}", problem.policy, problem.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}
