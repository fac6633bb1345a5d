//! [`PolicyEngine`]: a loaded, validated policy set and the decisions it makes.

use std::path::Path;
use std::str::FromStr;
use std::sync::LazyLock;

use cedar_policy::{Decision as CedarDecision, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use plugin_abi::SkillSummary;
use sha2::{Digest, Sha256};

use super::annotations::{self, Annotations, ApprovalSettings};
use super::cedar::{CedarSet, capability_resource, miette_free, skill_resource, string};
use super::{DEFAULT_APPROVAL_TTL_SECS, Decision, DenyKind, Obligation, PolicyError, SCHEMA, Verdict};
use crate::hitl::{Quorum, ReviewDecisionKind};
use crate::identity::{Principal, Role};
use crate::risk::RiskTier;

static PARSED_SCHEMA: LazyLock<Result<Schema, String>> = LazyLock::new(|| {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(schema, _warnings)| schema)
        .map_err(|error| error.to_string())
});

/// A loaded, validated Cedar policy set: the policy decision point.
///
/// Its decisions are cached: a decision is a function of the principal (subject, tenant,
/// roles), the skill's summary (id, version, side effect, capabilities, digest) and this
/// policy set, and of nothing else Cedar reads (the requests carry no time and no other
/// context), so [`decide`](Self::decide) evaluates each such combination once. The cache
/// belongs to the engine: a policy change builds a new engine and starts empty. Callers still
/// audit every decision they act on; the cache only spares the evaluation.
#[derive(Debug)]
pub struct PolicyEngine {
    cedar: CedarSet,
    version: String,
    annotations: Annotations,
    cache: std::sync::RwLock<std::collections::HashMap<DecisionKey, Decision>>,
}

/// Everything of a decision's inputs that Cedar reads: the principal entity and the skill
/// resource with all their attributes (the action and the context follow from these).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    subject: String,
    tenant: String,
    roles: Vec<Role>,
    skill: String,
    version: String,
    side_effect: plugin_abi::SideEffect,
    capabilities: Vec<plugin_abi::Capability>,
    digest: String,
    cpu_metering: plugin_abi::CpuMetering,
}

impl DecisionKey {
    fn of(principal: &Principal, skill: &SkillSummary) -> Self {
        DecisionKey {
            subject: principal.subject.clone(),
            tenant: principal.tenant.clone(),
            roles: principal.roles.iter().copied().collect(),
            skill: skill.id.clone(),
            version: skill.version.to_string(),
            side_effect: skill.side_effect,
            capabilities: skill.capabilities.clone(),
            digest: skill.digest.clone(),
            cpu_metering: skill.cpu_metering,
        }
    }
}

/// Decisions kept per engine; when full, the cache is emptied and refilled (principals times
/// skill versions in use, far below this in practice).
const DECISION_CACHE_ENTRIES: usize = 16_384;

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
    /// validation error, [`PolicyError::Annotations`] with every malformed or misplaced agentd
    /// annotation (approval settings on a `forbid`, an unknown role, a quorum of 0, ...).
    pub fn from_text(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let schema = PARSED_SCHEMA.clone().map_err(PolicyError::Schema)?;
        let policies = PolicySet::from_str(text).map_err(|error| PolicyError::Parse {
            origin: origin.to_owned(),
            message: miette_free(&error),
        })?;
        let validation = Validator::new(schema).validate(&policies, ValidationMode::Strict);
        if !validation.validation_passed() {
            return Err(PolicyError::Invalid {
                origin: origin.to_owned(),
                problems: validation.validation_errors().map(ToString::to_string).collect(),
            });
        }
        let annotations = annotations::read(&policies).map_err(|problems| PolicyError::Annotations {
            origin: origin.to_owned(),
            problems,
        })?;
        let version = format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())));
        Ok(PolicyEngine {
            cedar: CedarSet::new(policies),
            version,
            annotations,
            cache: std::sync::RwLock::default(),
        })
    }

    /// A policy's name: its `@id("...")` annotation, else Cedar's positional id (`policy0`, ...).
    fn policy_name(&self, id: &PolicyId) -> String {
        self.annotations
            .names
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    /// `sha256:<hex>` of the policy text.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of policies in the set.
    pub fn len(&self) -> usize {
        self.annotations.names.len()
    }

    /// Whether the set has no policies (everything is then denied).
    pub fn is_empty(&self) -> bool {
        self.annotations.names.is_empty()
    }

    /// Decides whether `principal` may invoke `skill` at `now_ms`; `None` means the skill is
    /// unknown. The same as [`decide_uncached`](Self::decide_uncached), from the engine's
    /// cache when this principal and skill were decided before (the decision's times,
    /// `decided_at_ms` and an approval's `expires_at_ms`, are those of `now_ms`).
    ///
    /// Never fails: anything that prevents a decision yields [`Verdict::Deny`] with
    /// [`DenyKind::FailedClosed`] (never cached).
    pub fn decide(
        &self,
        principal: &Principal,
        requested_skill: &str,
        skill: Option<&SkillSummary>,
        now_ms: i64,
    ) -> Decision {
        let Some(summary) = skill else {
            return self.decide_uncached(principal, requested_skill, skill, now_ms);
        };
        let key = DecisionKey::of(principal, summary);
        let cached = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        let decision = match cached {
            Some(decision) => decision,
            None => {
                // Decided at time 0, so that its times are offsets to rebase.
                let decision = self.decide_uncached(principal, requested_skill, skill, 0);
                if !matches!(
                    decision.verdict,
                    Verdict::Deny {
                        kind: DenyKind::FailedClosed,
                        ..
                    }
                ) {
                    let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if cache.len() >= DECISION_CACHE_ENTRIES {
                        cache.clear();
                    }
                    cache.insert(key, decision.clone());
                }
                decision
            }
        };
        at(decision, now_ms)
    }

    /// Decides whether `principal` may invoke `skill` at `now_ms` by evaluating the policies
    /// now, bypassing the cache (benchmarks compare the two; [`decide`](Self::decide) is the
    /// one to call).
    pub fn decide_uncached(
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
        let invoke = match self
            .cedar
            .evaluate(principal, "invoke", skill_resource(skill), Vec::new())
        {
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
            match self
                .cedar
                .evaluate(principal, "use-capability", capability_resource(capability), context)
            {
                Ok(outcome) if outcome.decision == CedarDecision::Allow => grants.push(capability.clone()),
                Ok(_) => withheld.push(capability.clone()),
                Err(reason) => return fail_closed(reason),
            }
        }

        let mut obligations: Vec<Obligation> = invoke
            .policies
            .iter()
            .filter_map(|id| self.annotations.obligations.get(id))
            .flatten()
            .cloned()
            .collect();
        obligations.sort();
        obligations.dedup();
        // Several approval policies may apply: the strictest setting of each kind wins.
        let settings: Vec<&ApprovalSettings> = invoke
            .policies
            .iter()
            .filter_map(|id| self.annotations.approvals.get(id))
            .collect();
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
            .filter_map(|id| self.annotations.autonomy_caps.get(id))
            .min()
            .copied();
        let max_attempts = invoke
            .policies
            .iter()
            .filter_map(|id| self.annotations.max_attempts.get(id))
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
        let outcome = self
            .cedar
            .evaluate(reviewer, "review", skill_resource(skill), context)?;
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
}

/// `decision`, made at time 0, as made at `now_ms`.
fn at(mut decision: Decision, now_ms: i64) -> Decision {
    decision.decided_at_ms = now_ms;
    if let Verdict::RequireApproval { expires_at_ms, .. } = &mut decision.verdict {
        *expires_at_ms = now_ms.saturating_add(*expires_at_ms);
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::annotations::parse_duration_secs;
    use plugin_abi::SideEffect;
    use std::collections::BTreeSet;

    const DEFAULT_POLICY: &str = include_str!("../../../policies/default.cedar");
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
            cpu_metering: plugin_abi::CpuMetering::Fuel,
        }
    }

    #[test]
    fn a_cached_decision_is_the_evaluated_one_at_its_own_time_and_keyed_by_every_input() {
        let engine = PolicyEngine::from_text(DEFAULT_POLICY, "test").unwrap();
        let agent = principal(&[Role::Agent]);
        let reviewer = principal(&[Role::Reviewer]);
        let cases = [
            (agent.clone(), skill(SideEffect::Pure, &[])),
            (agent.clone(), skill(SideEffect::Effectful, &["fs.write:reports/"])),
            (
                agent.clone(),
                skill(SideEffect::Effectful, &["net.http:https://example.org"]),
            ),
            (reviewer.clone(), skill(SideEffect::Pure, &[])),
        ];
        for round in 0..3 {
            for (who, summary) in &cases {
                let now = NOW + round * 60_000;
                let cached = engine.decide(who, &summary.id, Some(summary), now);
                let evaluated = engine.decide_uncached(who, &summary.id, Some(summary), now);
                assert_eq!(
                    format!("{cached:?}"),
                    format!("{evaluated:?}"),
                    "round {round}: {who} on {summary:?}"
                );
            }
        }
        // A change to any input is a different decision, never a stale hit: the same skill id
        // and version with another capability, digest or side effect, or another role.
        let granted = engine.decide(
            &agent,
            "demo",
            Some(&skill(SideEffect::Effectful, &["fs.write:reports/"])),
            NOW,
        );
        let other = engine.decide(
            &agent,
            "demo",
            Some(&skill(SideEffect::Effectful, &["fs.write:etc/"])),
            NOW,
        );
        assert_ne!(granted.granted_capabilities, other.granted_capabilities);
        let mut redigested = skill(SideEffect::Pure, &[]);
        redigested.digest = "sha256:11".into();
        assert_ne!(
            DecisionKey::of(&agent, &redigested),
            DecisionKey::of(&agent, &skill(SideEffect::Pure, &[]))
        );
        let nobody = engine.decide(&principal(&[]), "demo", Some(&skill(SideEffect::Pure, &[])), NOW);
        assert_eq!(deny_kind(&nobody), Some(DenyKind::FailedClosed));
    }

    #[test]
    fn epoch_only_cpu_is_allowed_for_pure_skills_only_and_is_part_of_the_cached_key() {
        let engine = PolicyEngine::from_text(DEFAULT_POLICY, "default.cedar").unwrap();
        let agent = principal(&[Role::Agent]);
        let epoch = |side_effect, capabilities: &[&str]| SkillSummary {
            cpu_metering: plugin_abi::CpuMetering::Epoch,
            ..skill(side_effect, capabilities)
        };
        let pure = engine.decide(&agent, "demo", Some(&epoch(SideEffect::Pure, &[])), NOW);
        assert_eq!(pure.verdict, Verdict::Allow { obligations: vec![] });
        for side_effect in [SideEffect::ReadOnly, SideEffect::Effectful] {
            // The same skill is allowed (or sent for review) under fuel metering ...
            let fuel = engine.decide(&agent, "demo", Some(&skill(side_effect, &[])), NOW);
            assert_ne!(deny_kind(&fuel), Some(DenyKind::Forbidden), "{fuel:?}");
            // ... and forbidden, naming the rule, when it asks for the epoch alone; the
            // cache, which holds the fuel decision, must not answer for it.
            let decision = engine.decide(&agent, "demo", Some(&epoch(side_effect, &[])), NOW);
            assert_eq!(deny_kind(&decision), Some(DenyKind::Forbidden), "{decision:?}");
            assert!(
                format!("{:?}", decision.verdict).contains("epoch-only-cpu-only-for-pure-skills"),
                "{decision:?}"
            );
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
        assert_eq!(
            effectful.granted_capabilities,
            vec!["fs.write:reports/".parse().unwrap()]
        );
        assert_eq!(
            effectful.withheld_capabilities,
            vec!["fs.write:etc/".parse::<plugin_abi::Capability>().unwrap()]
        );
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
    fn every_annotation_problem_is_reported_at_once() {
        let text = r#"
            @require_approval("boss")
            @quorum("0")
            @approval_ttl("soon")
            permit(principal, action, resource);
            @id("second")
            @max_attempts("0")
            @max_autonomy("L9")
            permit(principal, action, resource);
            @id("third")
            @obligations("audit")
            forbid(principal, action, resource);
        "#;
        let PolicyError::Annotations { problems, .. } = PolicyEngine::from_text(text, "many").unwrap_err() else {
            panic!("expected annotation problems");
        };
        let found: Vec<(&str, &str)> = problems
            .iter()
            .map(|problem| (problem.policy.as_str(), problem.message.as_str()))
            .collect();
        assert_eq!(found.len(), 6, "{found:#?}");
        assert!(found[0].1.starts_with("unknown role `boss`"), "{found:#?}");
        assert!(found[1].1.contains("@quorum(\"0\")"), "{found:#?}");
        assert!(found[2].1.contains("@approval_ttl(\"soon\")"), "{found:#?}");
        assert_eq!((found[3].0, found[4].0), ("second", "second"));
        assert!(found[3].1.contains("L9"), "{found:#?}");
        assert!(found[4].1.contains("@max_attempts(\"0\")"), "{found:#?}");
        assert_eq!(
            found[5],
            (
                "third",
                "approval and obligation annotations only apply to `permit` policies"
            )
        );
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
