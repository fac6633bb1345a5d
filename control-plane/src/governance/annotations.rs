//! agentd's policy annotations (`@require_approval`, `@quorum`, `@obligations`, ...), parsed
//! and validated for a whole policy set at once: every problem of every policy is collected,
//! so an author fixes them in one pass (cargo-deny style).

use std::collections::BTreeMap;

use cedar_policy::{Policy, PolicyId, PolicySet};

use super::{DEFAULT_APPROVAL_TTL_SECS, Obligation, REQUIRE_APPROVAL_ANNOTATION};
use crate::autonomy::AutonomyLevel;
use crate::hitl::{Quorum, ReviewDecisionKind};
use crate::identity::Role;

/// One malformed or misplaced annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationProblem {
    /// The policy's name: its `@id`, else Cedar's positional id (`policy0`, ...).
    pub policy: String,
    /// What is wrong.
    pub message: String,
}

/// The approval settings of one `permit` policy.
#[derive(Debug, Clone)]
pub(super) struct ApprovalSettings {
    pub(super) reviewer_role: Role,
    pub(super) quorum: Quorum,
    pub(super) ttl_secs: i64,
    pub(super) allowed_decisions: Vec<ReviewDecisionKind>,
}

/// Every policy's annotations, by policy id.
#[derive(Debug, Default)]
pub(super) struct Annotations {
    pub(super) approvals: BTreeMap<PolicyId, ApprovalSettings>,
    pub(super) obligations: BTreeMap<PolicyId, Vec<Obligation>>,
    pub(super) autonomy_caps: BTreeMap<PolicyId, AutonomyLevel>,
    pub(super) max_attempts: BTreeMap<PolicyId, u32>,
    pub(super) names: BTreeMap<PolicyId, String>,
}

const APPROVAL_KEYS: [&str; 5] = [
    REQUIRE_APPROVAL_ANNOTATION,
    "quorum",
    "deny_threshold",
    "approval_ttl",
    "allowed_decisions",
];

/// Reads the annotations of every policy in `policies`.
///
/// # Errors
///
/// Every [`AnnotationProblem`] found, in policy order.
pub(super) fn read(policies: &PolicySet) -> Result<Annotations, Vec<AnnotationProblem>> {
    let mut annotations = Annotations::default();
    let mut problems = Vec::new();
    for policy in policies.policies() {
        let name = policy
            .annotation("id")
            .map_or_else(|| policy.id().to_string(), str::to_owned);
        let mut problem = |message: String| {
            problems.push(AnnotationProblem {
                policy: name.clone(),
                message,
            });
        };
        read_policy(policy, &mut annotations, &mut problem);
        annotations.names.insert(policy.id().clone(), name);
    }
    if problems.is_empty() {
        Ok(annotations)
    } else {
        Err(problems)
    }
}

fn read_policy(policy: &Policy, annotations: &mut Annotations, problem: &mut impl FnMut(String)) {
    let forbid = policy.effect() == cedar_policy::Effect::Forbid;
    let has_approval_keys = APPROVAL_KEYS.iter().any(|key| policy.annotation(key).is_some());
    if forbid && (has_approval_keys || policy.annotation("obligations").is_some()) {
        problem("approval and obligation annotations only apply to `permit` policies".into());
    }
    match policy.annotation(REQUIRE_APPROVAL_ANNOTATION) {
        Some(role) if !forbid => {
            if let Some(settings) = approval_settings(policy, role, problem) {
                annotations.approvals.insert(policy.id().clone(), settings);
            }
        }
        Some(_) => {}
        None if has_approval_keys => problem(format!(
            "approval settings need `@{REQUIRE_APPROVAL_ANNOTATION}(\"<role>\")` on the same policy"
        )),
        None => {}
    }
    if let Some(text) = policy.annotation("max_autonomy") {
        if forbid {
            problem("`@max_autonomy` only applies to `permit` policies".into());
        } else {
            match text.parse::<AutonomyLevel>() {
                Ok(level) => {
                    annotations.autonomy_caps.insert(policy.id().clone(), level);
                }
                Err(message) => problem(message),
            }
        }
    }
    if let Some(text) = policy.annotation("max_attempts") {
        if forbid {
            problem("`@max_attempts` only applies to `permit` policies".into());
        } else {
            match text.trim().parse::<u32>().ok().filter(|n| (1..=100).contains(n)) {
                Some(attempts) => {
                    annotations.max_attempts.insert(policy.id().clone(), attempts);
                }
                None => problem(format!(
                    "@max_attempts(\"{text}\") must be a whole number from 1 to 100"
                )),
            }
        }
    }
    if let Some(text) = policy.annotation("obligations")
        && !forbid
    {
        let list: Vec<Obligation> = text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| Obligation(name.to_owned()))
            .collect();
        annotations.obligations.insert(policy.id().clone(), list);
    }
}

/// The approval settings of a `permit` with `@require_approval(role)`; `None` (with the problems
/// reported) when any of them is malformed.
fn approval_settings(policy: &Policy, role: &str, problem: &mut impl FnMut(String)) -> Option<ApprovalSettings> {
    let reviewer_role = role.parse::<Role>().map_err(|error| problem(error.to_string())).ok();
    let mut count = |key: &str| -> Option<u32> {
        match policy.annotation(key) {
            None => Some(1),
            Some(text) => {
                let parsed = text.trim().parse::<u32>().ok().filter(|n| *n >= 1);
                if parsed.is_none() {
                    problem(format!("@{key}(\"{text}\") must be a whole number of at least 1"));
                }
                parsed
            }
        }
    };
    let required = count("quorum");
    let deny_threshold = count("deny_threshold");
    let ttl_secs = match policy.annotation("approval_ttl") {
        None => Some(DEFAULT_APPROVAL_TTL_SECS),
        Some(text) => {
            let parsed = parse_duration_secs(text);
            if parsed.is_none() {
                problem(format!(
                    "@approval_ttl(\"{text}\") must be a duration such as 30m, 2h or 1d"
                ));
            }
            parsed
        }
    };
    let allowed_decisions = match policy.annotation("allowed_decisions") {
        None => Some(vec![ReviewDecisionKind::Approve, ReviewDecisionKind::Deny]),
        Some(text) => match text
            .split(',')
            .map(str::parse::<ReviewDecisionKind>)
            .collect::<Result<Vec<_>, _>>()
        {
            Err(message) => {
                problem(message);
                None
            }
            Ok(mut kinds) => {
                kinds.sort();
                kinds.dedup();
                if kinds.contains(&ReviewDecisionKind::Deny) {
                    Some(kinds)
                } else {
                    problem("@allowed_decisions must include `deny`".into());
                    None
                }
            }
        },
    };
    Some(ApprovalSettings {
        reviewer_role: reviewer_role?,
        quorum: Quorum {
            required: required?,
            deny_threshold: deny_threshold?,
        },
        ttl_secs: ttl_secs?,
        allowed_decisions: allowed_decisions?,
    })
}

/// Parses `30s`, `15m`, `2h`, `1d` or a bare number of seconds.
pub(super) fn parse_duration_secs(text: &str) -> Option<i64> {
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
