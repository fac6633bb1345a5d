//! Governance: Cedar policies (<https://www.cedarpolicy.com>) turned into agentd verdicts.
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
//! strict mode) when loaded; an invalid set refuses to load with every problem listed.
//!
//! The entity model (see the schema):
//! - principal `Agentd::Principal::"<tenant>/<subject>"` with `subject`, `tenant`, `roles`;
//! - action `invoke` on `Agentd::Skill::"<id>"` with `id`, `version`, `side_effect`, `digest`,
//!   `capabilities`, `risk_tier`;
//! - action `use-capability` on `Agentd::Capability::"<text>"` with `kind` and `scope`, context
//!   `skill` and `side_effect`;
//! - action `review` on the skill, context `tenant`, `risk_tier` and `requester`.
//!
//! Governance fails closed: an empty policy set, an unknown skill, an incomplete principal, a
//! policy evaluation error (an erroring `forbid` counts as matching) give [`Verdict::Deny`] with
//! the reason. A store error while auditing is returned to the caller, which must not dispatch.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::LazyLock;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityUid, PolicyId, PolicySet,
    Request, ResourceConstraint, RestrictedExpression, Schema, ValidationMode, Validator,
};
use plugin_abi::{Capability, SideEffect, SkillSummary};
use sha2::{Digest, Sha256};

use crate::autonomy::{AutonomyAssessment, AutonomyLevel};
use crate::identity::{Principal, Role};

/// The Cedar schema every policy set is validated against.
pub const SCHEMA: &str = include_str!("../../policies/agentd.cedarschema");

static PARSED_SCHEMA: LazyLock<Result<Schema, String>> = LazyLock::new(|| {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(schema, _warnings)| schema)
        .map_err(|error| error.to_string())
});

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

/// How risky a skill is, from its side effect and capabilities. Policies see it as
/// `resource.risk_tier`; autonomy levels gate on it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RiskTier {
    /// Pure or read-only, no capabilities.
    Low,
    /// Effectful, or requests capabilities none of which is high-risk.
    Medium,
    /// Requests a high-risk capability (any write: `fs.write`).
    High,
}

impl RiskTier {
    /// The tier of `skill`.
    pub fn of(skill: &SkillSummary) -> Self {
        if skill
            .capabilities
            .iter()
            .any(|capability| capability.kind().ends_with(".write"))
        {
            RiskTier::High
        } else if skill.side_effect == SideEffect::Effectful || !skill.capabilities.is_empty() {
            RiskTier::Medium
        } else {
            RiskTier::Low
        }
    }

    /// `low`, `medium` or `high`.
    pub fn as_str(self) -> &'static str {
        match self {
            RiskTier::Low => "low",
            RiskTier::Medium => "medium",
            RiskTier::High => "high",
        }
    }
}

impl fmt::Display for RiskTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

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
    pub granted_capabilities: Vec<String>,
    /// Requested capabilities the policy did not grant.
    pub withheld_capabilities: Vec<String>,
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
    /// The granted capabilities, parsed.
    pub fn grants(&self) -> Vec<Capability> {
        self.granted_capabilities
            .iter()
            .filter_map(|text| text.parse().ok())
            .collect()
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
    /// An agentd annotation is malformed or misplaced.
    #[error("policy `{policy}` in {origin}: {message}")]
    Annotation {
        /// Where the text came from.
        origin: String,
        /// The policy id.
        policy: String,
        /// What is wrong.
        message: String,
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

/// The approval settings of one `permit` policy, from its annotations.
#[derive(Debug, Clone)]
struct ApprovalSettings {
    reviewer_role: Role,
    quorum: Quorum,
    ttl_secs: i64,
    allowed_decisions: Vec<ReviewDecisionKind>,
}

/// Parses `30s`, `15m`, `2h`, `1d` or a bare number of seconds.
fn parse_duration_secs(text: &str) -> Option<i64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last()? {
        (index, 's') => (&text[..index], 1),
        (index, 'm') => (&text[..index], 60),
        (index, 'h') => (&text[..index], 3_600),
        (index, 'd') => (&text[..index], 86_400),
        _ => (text, 1),
    };
    let value: i64 = number.trim().parse().ok()?;
    (value > 0).then(|| value.checked_mul(unit)).flatten()
}

/// A loaded, validated Cedar policy set.
#[derive(Debug)]
pub struct PolicyEngine {
    policies: PolicySet,
    version: String,
    authorizer: Authorizer,
    approvals: std::collections::BTreeMap<PolicyId, ApprovalSettings>,
    obligations: std::collections::BTreeMap<PolicyId, Vec<Obligation>>,
    autonomy_caps: std::collections::BTreeMap<PolicyId, AutonomyLevel>,
    max_attempts: std::collections::BTreeMap<PolicyId, u32>,
    names: std::collections::BTreeMap<PolicyId, String>,
    /// Policy slices by (action, resource): only policies whose scope can match are evaluated.
    slices: std::sync::RwLock<std::collections::HashMap<(String, String), std::sync::Arc<PolicySet>>>,
}

/// Bound on cached slices; past it the cache starts over (it is only a cache).
const MAX_SLICES: usize = 10_000;

impl PolicyEngine {
    /// Reads and loads the policy file at `path`.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Read`], or as [`PolicyEngine::from_text`].
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_text(&text, &path.display().to_string())
    }

    /// Parses `text` (Cedar syntax) and validates it against [`SCHEMA`]. `origin` names it in
    /// errors.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Parse`] with every Cedar diagnostic, [`PolicyError::Invalid`] with every
    /// validation error, [`PolicyError::Annotation`] for a malformed or misplaced agentd
    /// annotation (approval settings on a `forbid`, an unknown role, a quorum of 0, ...).
    pub fn from_text(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let schema = PARSED_SCHEMA.clone().map_err(PolicyError::Schema)?;
        let policies = PolicySet::from_str(text).map_err(|error| PolicyError::Parse {
            origin: origin.to_owned(),
            message: miette_free(&error),
        })?;
        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !validation.validation_passed() {
            return Err(PolicyError::Invalid {
                origin: origin.to_owned(),
                problems: validation.validation_errors().map(ToString::to_string).collect(),
            });
        }
        let mut approvals = std::collections::BTreeMap::new();
        let mut obligations = std::collections::BTreeMap::new();
        let mut autonomy_caps = std::collections::BTreeMap::new();
        let mut max_attempts = std::collections::BTreeMap::new();
        let mut names = std::collections::BTreeMap::new();
        for policy in policies.policies() {
            let name = policy
                .annotation("id")
                .map_or_else(|| policy.id().to_string(), str::to_owned);
            let problem = |message: String| PolicyError::Annotation {
                origin: origin.to_owned(),
                policy: name.clone(),
                message,
            };
            let approval_keys = [
                "require_approval",
                "quorum",
                "deny_threshold",
                "approval_ttl",
                "allowed_decisions",
            ];
            let has_approval_keys = approval_keys.iter().any(|key| policy.annotation(key).is_some());
            if policy.effect() == cedar_policy::Effect::Forbid
                && (has_approval_keys || policy.annotation("obligations").is_some())
            {
                return Err(problem(
                    "approval and obligation annotations only apply to `permit` policies".into(),
                ));
            }
            if let Some(role) = policy.annotation(REQUIRE_APPROVAL_ANNOTATION) {
                let reviewer_role = role.parse::<Role>().map_err(|error| problem(error.to_string()))?;
                let count =
                    |key: &str| -> Result<u32, PolicyError> {
                        match policy.annotation(key) {
                            None => Ok(1),
                            Some(text) => text.trim().parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                                problem(format!("@{key}(\"{text}\") must be a whole number of at least 1"))
                            }),
                        }
                    };
                let quorum = Quorum {
                    required: count("quorum")?,
                    deny_threshold: count("deny_threshold")?,
                };
                let ttl_secs = match policy.annotation("approval_ttl") {
                    None => DEFAULT_APPROVAL_TTL_SECS,
                    Some(text) => parse_duration_secs(text).ok_or_else(|| {
                        problem(format!(
                            "@approval_ttl(\"{text}\") must be a duration such as 30m, 2h or 1d"
                        ))
                    })?,
                };
                let allowed_decisions = match policy.annotation("allowed_decisions") {
                    None => vec![ReviewDecisionKind::Approve, ReviewDecisionKind::Deny],
                    Some(text) => {
                        let mut kinds = text
                            .split(',')
                            .map(str::parse::<ReviewDecisionKind>)
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(problem)?;
                        kinds.sort();
                        kinds.dedup();
                        if !kinds.contains(&ReviewDecisionKind::Deny) {
                            return Err(problem("@allowed_decisions must include `deny`".into()));
                        }
                        kinds
                    }
                };
                approvals.insert(
                    policy.id().clone(),
                    ApprovalSettings {
                        reviewer_role,
                        quorum,
                        ttl_secs,
                        allowed_decisions,
                    },
                );
            } else if has_approval_keys {
                return Err(problem(format!(
                    "approval settings need `@{REQUIRE_APPROVAL_ANNOTATION}(\"<role>\")` on the same policy"
                )));
            }
            if let Some(text) = policy.annotation("max_autonomy") {
                if policy.effect() == cedar_policy::Effect::Forbid {
                    return Err(problem("`@max_autonomy` only applies to `permit` policies".into()));
                }
                autonomy_caps.insert(policy.id().clone(), text.parse::<AutonomyLevel>().map_err(problem)?);
            }
            if let Some(text) = policy.annotation("max_attempts") {
                if policy.effect() == cedar_policy::Effect::Forbid {
                    return Err(problem("`@max_attempts` only applies to `permit` policies".into()));
                }
                let attempts = text
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| {
                        problem(format!(
                            "@max_attempts(\"{text}\") must be a whole number from 1 to 100"
                        ))
                    })?;
                max_attempts.insert(policy.id().clone(), attempts);
            }
            if let Some(text) = policy.annotation("obligations") {
                let list: Vec<Obligation> = text
                    .split(',')
                    .map(|name| name.trim())
                    .filter(|name| !name.is_empty())
                    .map(|name| Obligation(name.to_owned()))
                    .collect();
                obligations.insert(policy.id().clone(), list);
            }
            names.insert(policy.id().clone(), name);
        }
        let version = format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())));
        Ok(PolicyEngine {
            policies,
            version,
            authorizer: Authorizer::new(),
            approvals,
            obligations,
            autonomy_caps,
            max_attempts,
            names,
            slices: std::sync::RwLock::new(std::collections::HashMap::new()),
        })
    }

    /// A policy's name: its `@id("...")` annotation, else Cedar's positional id (`policy0`, ...).
    fn policy_name(&self, id: &PolicyId) -> String {
        self.names.get(id).cloned().unwrap_or_else(|| id.to_string())
    }

    /// `sha256:<hex>` of the policy text.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of policies in the set.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the set has no policies (everything is then denied).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Decides whether `principal` may invoke `skill` at `now_ms`; `None` means the skill is
    /// unknown.
    ///
    /// Never fails: anything that prevents a decision yields [`Verdict::Deny`] with
    /// [`DenyKind::FailedClosed`].
    pub fn decide(
        &self,
        principal: &Principal,
        requested_skill: &str,
        skill: Option<&SkillSummary>,
        now_ms: i64,
    ) -> Decision {
        let risk_tier = skill.map_or(RiskTier::Low, RiskTier::of);
        let fail_closed = |reason: String| Decision {
            verdict: Verdict::Deny {
                kind: DenyKind::FailedClosed,
                reasons: vec![reason],
                determining_policies: Vec::new(),
            },
            determining_policies: Vec::new(),
            granted_capabilities: Vec::new(),
            withheld_capabilities: Vec::new(),
            risk_tier,
            policy_version: self.version.clone(),
            decided_at_ms: now_ms,
            autonomy_cap: None,
            max_attempts: None,
            autonomy: None,
        };
        if principal.subject.is_empty() || principal.tenant.is_empty() || principal.roles.is_empty() {
            return fail_closed(format!("unknown principal `{principal}`: no subject, tenant or role"));
        }
        let Some(skill) = skill else {
            return fail_closed(format!(
                "unknown skill `{requested_skill}`: no verified package provides it"
            ));
        };
        let invoke = match self.evaluate(principal, "invoke", skill_resource(skill), Vec::new()) {
            Ok(outcome) => outcome,
            Err(reason) => return fail_closed(reason),
        };
        let determining_policies: Vec<String> = invoke.policies.iter().map(|id| self.policy_name(id)).collect();
        if invoke.decision == CedarDecision::Deny {
            let (kind, reasons) = if determining_policies.is_empty() {
                (
                    DenyKind::NotPermitted,
                    vec![format!(
                        "no policy permits `{}` to invoke `{}` ({} skill)",
                        principal, skill.id, skill.side_effect
                    )],
                )
            } else {
                (
                    DenyKind::Forbidden,
                    determining_policies
                        .iter()
                        .map(|id| format!("forbidden by policy `{id}`"))
                        .collect(),
                )
            };
            return Decision {
                verdict: Verdict::Deny {
                    kind,
                    reasons,
                    determining_policies: determining_policies.clone(),
                },
                determining_policies,
                granted_capabilities: Vec::new(),
                withheld_capabilities: Vec::new(),
                risk_tier,
                policy_version: self.version.clone(),
                decided_at_ms: now_ms,
                autonomy_cap: None,
                max_attempts: None,
                autonomy: None,
            };
        }

        let mut grants = Vec::new();
        let mut withheld = Vec::new();
        for capability in &skill.capabilities {
            let context = vec![
                ("skill".to_owned(), string(&skill.id)),
                ("side_effect".to_owned(), string(skill.side_effect.as_str())),
            ];
            match self.evaluate(principal, "use-capability", capability_resource(capability), context) {
                Ok(outcome) if outcome.decision == CedarDecision::Allow => grants.push(capability.to_string()),
                Ok(_) => withheld.push(capability.to_string()),
                Err(reason) => return fail_closed(reason),
            }
        }

        let mut obligations: Vec<Obligation> = invoke
            .policies
            .iter()
            .filter_map(|id| self.obligations.get(id))
            .flatten()
            .cloned()
            .collect();
        obligations.sort();
        obligations.dedup();
        // Several approval policies may apply: the strictest setting of each kind wins.
        let settings: Vec<&ApprovalSettings> = invoke.policies.iter().filter_map(|id| self.approvals.get(id)).collect();
        let verdict = if settings.is_empty() {
            Verdict::Allow { obligations }
        } else {
            let reviewer_role = settings.iter().map(|s| s.reviewer_role).max().unwrap_or(Role::Reviewer);
            let required = settings.iter().map(|s| s.quorum.required).max().unwrap_or(1);
            let deny_threshold = settings.iter().map(|s| s.quorum.deny_threshold).min().unwrap_or(1);
            let ttl_secs = settings
                .iter()
                .map(|s| s.ttl_secs)
                .min()
                .unwrap_or(DEFAULT_APPROVAL_TTL_SECS);
            let mut allowed_decisions: Vec<ReviewDecisionKind> = settings[0].allowed_decisions.clone();
            for other in &settings[1..] {
                allowed_decisions.retain(|kind| other.allowed_decisions.contains(kind));
            }
            Verdict::RequireApproval {
                reviewer_role,
                quorum: Quorum {
                    required,
                    deny_threshold,
                },
                expires_at_ms: now_ms.saturating_add(ttl_secs.saturating_mul(1_000)),
                allowed_decisions,
                obligations,
            }
        };
        let autonomy_cap = invoke
            .policies
            .iter()
            .filter_map(|id| self.autonomy_caps.get(id))
            .min()
            .copied();
        let max_attempts = invoke
            .policies
            .iter()
            .filter_map(|id| self.max_attempts.get(id))
            .min()
            .copied();
        Decision {
            verdict,
            determining_policies,
            granted_capabilities: grants,
            withheld_capabilities: withheld,
            risk_tier,
            policy_version: self.version.clone(),
            decided_at_ms: now_ms,
            autonomy_cap,
            max_attempts,
            autonomy: None,
        }
    }

    /// Whether policy lets `reviewer` decide an approval request for `skill` in `tenant`,
    /// requested by `requester`. Fails closed: an evaluation error is a refusal.
    ///
    /// # Errors
    ///
    /// The reason the review is not permitted.
    pub fn may_review(
        &self,
        reviewer: &Principal,
        skill: &SkillSummary,
        tenant: &str,
        requester: &str,
    ) -> Result<(), String> {
        let context = vec![
            ("tenant".to_owned(), string(tenant)),
            ("risk_tier".to_owned(), string(RiskTier::of(skill).as_str())),
            ("requester".to_owned(), string(requester)),
        ];
        let outcome = self.evaluate(reviewer, "review", skill_resource(skill), context)?;
        if outcome.decision == CedarDecision::Allow {
            Ok(())
        } else {
            Err(format!(
                "no policy permits `{reviewer}` to review `{}` ({} risk) in tenant `{tenant}`",
                skill.id,
                RiskTier::of(skill)
            ))
        }
    }

    /// The policies whose scope can match `action` on `resource`: action `==`/`in` it or
    /// unconstrained, and resource unconstrained, `==` it, `is` its type, or `in` something (kept
    /// conservatively: hierarchies are not resolved here). Evaluation is linear in the policies
    /// it sees, so slicing by scope keeps a verdict fast in large policy sets. Cached per pair.
    fn slice(&self, action: &EntityUid, resource: &EntityUid) -> std::sync::Arc<PolicySet> {
        let key = (action.to_string(), resource.to_string());
        if let Ok(cache) = self.slices.read()
            && let Some(slice) = cache.get(&key)
        {
            return std::sync::Arc::clone(slice);
        }
        let resource_type = resource.type_name();
        let selected = self.policies.policies().filter(|policy| {
            let action_matches = match policy.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(uid) => &uid == action,
                ActionConstraint::In(uids) => uids.iter().any(|uid| uid == action),
            };
            let resource_matches = match policy.resource_constraint() {
                ResourceConstraint::Any | ResourceConstraint::In(_) | ResourceConstraint::IsIn(..) => true,
                ResourceConstraint::Eq(uid) => &uid == resource,
                ResourceConstraint::Is(type_name) => &type_name == resource_type,
            };
            action_matches && resource_matches
        });
        let slice =
            std::sync::Arc::new(PolicySet::from_policies(selected.cloned()).unwrap_or_else(|_| self.policies.clone()));
        if let Ok(mut cache) = self.slices.write() {
            if cache.len() >= MAX_SLICES {
                cache.clear();
            }
            cache.insert(key, std::sync::Arc::clone(&slice));
        }
        slice
    }

    fn evaluate(
        &self,
        principal: &Principal,
        action: &str,
        resource: (EntityUid, Result<Entity, String>),
        context: Vec<(String, RestrictedExpression)>,
    ) -> Result<Evaluation, String> {
        let principal_uid = uid("Principal", &format!("{}/{}", principal.tenant, principal.subject))?;
        let action_uid = uid("Action", action)?;
        let principal_entity = Entity::new(
            principal_uid.clone(),
            std::collections::HashMap::from([
                (
                    "subject".to_owned(),
                    RestrictedExpression::new_string(principal.subject.clone()),
                ),
                (
                    "tenant".to_owned(),
                    RestrictedExpression::new_string(principal.tenant.clone()),
                ),
                (
                    "roles".to_owned(),
                    RestrictedExpression::new_set(
                        principal
                            .roles
                            .iter()
                            .map(|role| RestrictedExpression::new_string(role.as_str().to_owned())),
                    ),
                ),
            ]),
            std::collections::HashSet::new(),
        )
        .map_err(|error| format!("entity error: {error}"))?;
        let (resource_uid, resource_entity) = resource;
        let entities = Entities::from_entities([principal_entity, resource_entity?], None)
            .map_err(|error| format!("entity error: {error}"))?;
        let context = Context::from_pairs(context).map_err(|error| format!("context error: {error}"))?;
        let slice = self.slice(&action_uid, &resource_uid);
        let request = Request::new(principal_uid, action_uid, resource_uid, context, None)
            .map_err(|error| format!("request error: {error}"))?;
        let response = self.authorizer.is_authorized(&request, &slice, &entities);
        let errors: Vec<String> = response.diagnostics().errors().map(ToString::to_string).collect();
        if !errors.is_empty() {
            return Err(format!("policy evaluation failed, denying: {}", errors.join("; ")));
        }
        Ok(Evaluation {
            decision: response.decision(),
            policies: response.diagnostics().reason().cloned().collect(),
        })
    }
}

struct Evaluation {
    decision: CedarDecision,
    policies: Vec<PolicyId>,
}

/// The entity types of the schema, parsed once: building a uid from a parsed type name and an
/// id skips Cedar's parser, which was most of a verdict's fixed cost.
static ENTITY_TYPES: LazyLock<std::collections::HashMap<&'static str, cedar_policy::EntityTypeName>> =
    LazyLock::new(|| {
        ["Principal", "Action", "Skill", "Capability"]
            .into_iter()
            .filter_map(|kind| {
                cedar_policy::EntityTypeName::from_str(&format!("Agentd::{kind}"))
                    .ok()
                    .map(|name| (kind, name))
            })
            .collect()
    });

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    match ENTITY_TYPES.get(kind) {
        Some(type_name) => Ok(EntityUid::from_type_name_and_id(
            type_name.clone(),
            cedar_policy::EntityId::new(id),
        )),
        None => {
            let text = format!("Agentd::{kind}::{}", serde_json::Value::String(id.to_owned()));
            EntityUid::from_str(&text).map_err(|error| format!("invalid entity id {text}: {error}"))
        }
    }
}

fn string(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_owned())
}

fn skill_resource(skill: &SkillSummary) -> (EntityUid, Result<Entity, String>) {
    let uid = uid("Skill", &skill.id).unwrap_or_else(|_| unreachable_uid());
    let entity = Entity::new(
        uid.clone(),
        std::collections::HashMap::from([
            ("id".to_owned(), string(&skill.id)),
            ("version".to_owned(), string(&skill.version.to_string())),
            ("side_effect".to_owned(), string(skill.side_effect.as_str())),
            ("digest".to_owned(), string(&skill.digest)),
            (
                "capabilities".to_owned(),
                RestrictedExpression::new_set(skill.capabilities.iter().map(|c| string(&c.to_string()))),
            ),
            ("risk_tier".to_owned(), string(RiskTier::of(skill).as_str())),
        ]),
        std::collections::HashSet::new(),
    )
    .map_err(|error| format!("entity error: {error}"));
    (uid, entity)
}

fn capability_resource(capability: &Capability) -> (EntityUid, Result<Entity, String>) {
    let uid = uid("Capability", &capability.to_string()).unwrap_or_else(|_| unreachable_uid());
    let entity = Entity::new(
        uid.clone(),
        std::collections::HashMap::from([
            ("kind".to_owned(), string(capability.kind())),
            ("scope".to_owned(), string(&capability.scope())),
        ]),
        std::collections::HashSet::new(),
    )
    .map_err(|error| format!("entity error: {error}"));
    (uid, entity)
}

/// Any string is a valid Cedar entity id once quoted, so `uid` cannot fail for our types; this
/// keeps the code total without a panic.
fn unreachable_uid() -> EntityUid {
    EntityUid::from_str(r#"Agentd::Invalid::"invalid""#).expect("a literal entity uid parses")
}

/// Renders Cedar's parse errors as plain text, one per line, without terminal colours.
fn miette_free(error: &cedar_policy::ParseErrors) -> String {
    error.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_abi::SideEffect;
    use std::collections::BTreeSet;

    const DEFAULT_POLICY: &str = include_str!("../../policies/default.cedar");
    const NOW: i64 = 1_700_000_000_000;

    fn principal(roles: &[Role]) -> Principal {
        Principal {
            subject: "alice".into(),
            tenant: "acme".into(),
            roles: roles.iter().copied().collect::<BTreeSet<_>>(),
        }
    }

    fn skill(side_effect: SideEffect, capabilities: &[&str]) -> SkillSummary {
        SkillSummary {
            id: "demo".into(),
            version: semver::Version::new(0, 1, 0),
            side_effect,
            capabilities: capabilities.iter().map(|c| c.parse().unwrap()).collect(),
            digest: "sha256:00".into(),
        }
    }

    fn deny_kind(decision: &Decision) -> Option<DenyKind> {
        match &decision.verdict {
            Verdict::Deny { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    #[test]
    fn default_policy_verdicts() {
        let engine = PolicyEngine::from_text(DEFAULT_POLICY, "default.cedar").unwrap();
        let agent = principal(&[Role::Agent]);

        let pure = engine.decide(&agent, "demo", Some(&skill(SideEffect::Pure, &[])), NOW);
        assert_eq!(pure.verdict, Verdict::Allow { obligations: vec![] });
        assert_eq!(pure.risk_tier, RiskTier::Low);

        let effectful = engine.decide(
            &agent,
            "demo",
            Some(&skill(SideEffect::Effectful, &["fs.write:reports/", "fs.write:etc/"])),
            NOW,
        );
        assert_eq!(
            effectful.verdict,
            Verdict::RequireApproval {
                reviewer_role: Role::Reviewer,
                quorum: Quorum::default(),
                expires_at_ms: NOW + 86_400_000,
                allowed_decisions: vec![
                    ReviewDecisionKind::Approve,
                    ReviewDecisionKind::Deny,
                    ReviewDecisionKind::Modify
                ],
                obligations: vec![],
            }
        );
        assert_eq!(effectful.granted_capabilities, vec!["fs.write:reports/".to_owned()]);
        assert_eq!(effectful.withheld_capabilities, vec!["fs.write:etc/".to_owned()]);
        assert_eq!(effectful.risk_tier, RiskTier::High);

        let reviewer_only = engine.decide(
            &principal(&[Role::Reviewer]),
            "demo",
            Some(&skill(SideEffect::Pure, &[])),
            NOW,
        );
        assert_eq!(deny_kind(&reviewer_only), Some(DenyKind::NotPermitted));

        let unknown = engine.decide(&agent, "ghost", None, NOW);
        assert_eq!(
            unknown.verdict,
            Verdict::Deny {
                kind: DenyKind::FailedClosed,
                reasons: vec!["unknown skill `ghost`: no verified package provides it".into()],
                determining_policies: vec![],
            }
        );
        let nobody = engine.decide(&principal(&[]), "demo", Some(&skill(SideEffect::Pure, &[])), NOW);
        assert_eq!(deny_kind(&nobody), Some(DenyKind::FailedClosed));
    }

    #[test]
    fn approval_annotations_set_quorum_ttl_decisions_and_obligations() {
        let text = r#"
            @id("two-reviewers")
            @require_approval("reviewer")
            @quorum("2")
            @deny_threshold("1")
            @approval_ttl("30m")
            @allowed_decisions("approve,deny")
            @obligations("record-output-digest")
            permit(principal, action == Agentd::Action::"invoke", resource)
            when { resource.risk_tier == "high" };
        "#;
        let engine = PolicyEngine::from_text(text, "test").unwrap();
        let decision = engine.decide(
            &principal(&[Role::Agent]),
            "demo",
            Some(&skill(SideEffect::Effectful, &["fs.write:x/"])),
            NOW,
        );
        assert_eq!(
            decision.verdict,
            Verdict::RequireApproval {
                reviewer_role: Role::Reviewer,
                quorum: Quorum {
                    required: 2,
                    deny_threshold: 1
                },
                expires_at_ms: NOW + 30 * 60_000,
                allowed_decisions: vec![ReviewDecisionKind::Approve, ReviewDecisionKind::Deny],
                obligations: vec![Obligation("record-output-digest".into())],
            }
        );
        assert_eq!(decision.determining_policies, vec!["two-reviewers".to_owned()]);
    }

    #[test]
    fn empty_policy_set_denies_everything() {
        let engine = PolicyEngine::from_text("", "empty").unwrap();
        let decision = engine.decide(
            &principal(&[Role::Agent, Role::Admin]),
            "demo",
            Some(&skill(SideEffect::Pure, &[])),
            NOW,
        );
        assert_eq!(deny_kind(&decision), Some(DenyKind::NotPermitted));
    }

    #[test]
    fn forbid_wins_and_is_named() {
        let text = format!(
            "{DEFAULT_POLICY}\n@id(\"no-demo\")\nforbid(principal, action, resource == Agentd::Skill::\"demo\");"
        );
        let engine = PolicyEngine::from_text(&text, "test").unwrap();
        let decision = engine.decide(
            &principal(&[Role::Agent]),
            "demo",
            Some(&skill(SideEffect::Pure, &[])),
            NOW,
        );
        assert_eq!(
            decision.verdict,
            Verdict::Deny {
                kind: DenyKind::Forbidden,
                reasons: vec!["forbidden by policy `no-demo`".into()],
                determining_policies: vec!["no-demo".into()],
            }
        );
    }

    #[test]
    fn an_erroring_forbid_counts_as_matching() {
        // Integer overflow is a run-time error that validation cannot rule out. Cedar itself
        // ignores an erroring policy (and would allow here); agentd denies.
        let text = format!(
            "{DEFAULT_POLICY}\n@id(\"overflowing-forbid\")\nforbid(principal, action, resource) when {{ 9223372036854775807 + resource.id.like_len() > 0 }};"
        );
        // `like_len` does not exist: that is a validation error, listed at load.
        assert!(matches!(
            PolicyEngine::from_text(&text, "test"),
            Err(PolicyError::Parse { .. } | PolicyError::Invalid { .. })
        ));
        let text = format!(
            "{DEFAULT_POLICY}\n@id(\"overflowing-forbid\")\nforbid(principal, action == Agentd::Action::\"invoke\", resource) when {{ 9223372036854775807 + 1 > 0 }};"
        );
        let engine = PolicyEngine::from_text(&text, "test").unwrap();
        let decision = engine.decide(
            &principal(&[Role::Agent]),
            "demo",
            Some(&skill(SideEffect::Pure, &[])),
            NOW,
        );
        assert_eq!(deny_kind(&decision), Some(DenyKind::FailedClosed), "{decision:?}");
    }

    #[test]
    fn invalid_policies_refuse_to_load_with_every_problem() {
        let error = PolicyEngine::from_text("permit(principal, action, resource", "bad.cedar").unwrap_err();
        assert!(
            error.to_string().starts_with("policy set bad.cedar does not parse: "),
            "{error}"
        );
        let text = r#"
            permit(principal, action == Agentd::Action::"invoke", resource) when { resource.missing == 1 };
            permit(principal, action == Agentd::Action::"invoke", resource) when { principal.rolez.contains("x") };
        "#;
        match PolicyEngine::from_text(text, "typos").unwrap_err() {
            PolicyError::Invalid { problems, .. } => assert_eq!(problems.len(), 2, "{problems:?}"),
            other => panic!("{other}"),
        }
        let error = PolicyEngine::from_text("@require_approval(\"boss\")\npermit(principal, action, resource);", "x")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "policy `policy0` in x: unknown role `boss`: expected `agent`, `reviewer` or `admin`"
        );
        for (annotations, message) in [
            (
                "@require_approval(\"reviewer\") @quorum(\"0\")",
                "must be a whole number of at least 1",
            ),
            (
                "@require_approval(\"reviewer\") @approval_ttl(\"soon\")",
                "must be a duration",
            ),
            (
                "@require_approval(\"reviewer\") @allowed_decisions(\"approve\")",
                "must include `deny`",
            ),
            ("@quorum(\"2\")", "need `@require_approval"),
        ] {
            let text = format!("{annotations}\npermit(principal, action, resource);");
            let error = PolicyEngine::from_text(&text, "x").unwrap_err().to_string();
            assert!(error.contains(message), "{annotations}: {error}");
        }
        let error = PolicyEngine::from_text(
            "@require_approval(\"reviewer\")\nforbid(principal, action, resource);",
            "x",
        )
        .unwrap_err();
        assert!(error.to_string().contains("only apply to `permit`"), "{error}");
    }

    #[test]
    fn reviews_are_governed_too() {
        let engine = PolicyEngine::from_text(DEFAULT_POLICY, "default.cedar").unwrap();
        let demo = skill(SideEffect::Effectful, &["fs.write:reports/"]);
        let bob = Principal {
            subject: "bob".into(),
            tenant: "acme".into(),
            roles: [Role::Reviewer].into_iter().collect(),
        };
        assert!(engine.may_review(&bob, &demo, "acme", "alice").is_ok());
        assert!(engine.may_review(&bob, &demo, "globex", "alice").is_err());
        assert!(
            engine
                .may_review(&principal(&[Role::Agent]), &demo, "acme", "carol")
                .is_err()
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_secs("90"), Some(90));
        assert_eq!(parse_duration_secs("30m"), Some(1_800));
        assert_eq!(parse_duration_secs("2h"), Some(7_200));
        assert_eq!(parse_duration_secs("1d"), Some(86_400));
        assert_eq!(parse_duration_secs("0s"), None);
        assert_eq!(parse_duration_secs("soon"), None);
    }
}
