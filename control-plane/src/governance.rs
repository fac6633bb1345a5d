//! Governance: Cedar policies (<https://www.cedarpolicy.com>) turned into agentd verdicts.
//!
//! Cedar answers allow or deny; agentd adds "require approval" by annotating a `permit` policy
//! with `@require_approval("<role>")`. When any policy that determined an allow carries the
//! annotation, the verdict is [`Verdict::RequireApproval`].
//!
//! The entity model a policy sees:
//! - principal `Agentd::Principal::"<tenant>/<subject>"` with `subject`, `tenant`, `roles`
//!   (set of strings);
//! - action `Agentd::Action::"invoke"` on resource `Agentd::Skill::"<id>"` with `id`, `version`,
//!   `side_effect` (`pure | read-only | effectful`), `digest`, `capabilities` (set of strings);
//! - action `Agentd::Action::"use-capability"` on resource `Agentd::Capability::"<text>"` with
//!   `kind` and `scope`, and a context holding `skill` and `side_effect`.
//!
//! Governance fails closed: an unknown skill, a policy evaluation error or an empty policy set
//! gives [`Verdict::Deny`], with the reason.

use std::path::Path;
use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Decision as CedarDecision, Entities, EntityUid, PolicyId, Request};
use plugin_abi::{Capability, SkillSummary};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::identity::{Principal, Role};

/// The annotation on a `permit` policy that turns its allow into a require-approval verdict;
/// its value names the reviewer role.
pub const REQUIRE_APPROVAL_ANNOTATION: &str = "require_approval";

/// Why an action was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenyKind {
    /// A `forbid` policy matched.
    Forbidden,
    /// No `permit` policy matched.
    NotPermitted,
    /// Governance could not decide (unknown skill, evaluation error) and failed closed.
    FailedClosed,
}

/// The answer to "may this principal run this skill?". A value, never an error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Run it, with these capabilities granted.
    Allow {
        /// Requested capabilities the policy granted.
        grants: Vec<Capability>,
    },
    /// Do not run it.
    Deny {
        /// Forbidden, not permitted, or failed closed.
        kind: DenyKind,
        /// Human-readable reasons, with policy ids where a policy decided.
        reasons: Vec<String>,
    },
    /// Run it once a principal with `reviewer_role` approves.
    RequireApproval {
        /// Role a reviewer must hold.
        reviewer_role: Role,
        /// Capabilities granted once approved.
        grants: Vec<Capability>,
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
}

/// A verdict with its provenance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// Ids of the policies that determined it.
    pub determining_policies: Vec<String>,
    /// Requested capabilities the policy did not grant.
    pub withheld_capabilities: Vec<Capability>,
    /// `sha256:<hex>` of the policy text the decision was made under.
    pub policy_version: String,
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
    /// A `@require_approval` annotation names no known role or sits on a `forbid`.
    #[error("policy `{policy}` in {origin}: {message}")]
    Annotation {
        /// Where the text came from.
        origin: String,
        /// The policy id.
        policy: String,
        /// What is wrong.
        message: String,
    },
}

impl PolicyError {
    /// Whether retrying can help: only reading the file might.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PolicyError::Read { .. })
    }
}

/// A loaded, checked Cedar policy set.
#[derive(Debug)]
pub struct PolicyEngine {
    policies: cedar_policy::PolicySet,
    version: String,
    authorizer: Authorizer,
}

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

    /// Parses `text` (Cedar syntax). `origin` names it in errors.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Parse`] with every Cedar diagnostic, [`PolicyError::Annotation`] for a
    /// `@require_approval` naming an unknown role or placed on a `forbid`.
    pub fn from_text(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let policies = cedar_policy::PolicySet::from_str(text).map_err(|error| PolicyError::Parse {
            origin: origin.to_owned(),
            message: miette_free(&error),
        })?;
        for policy in policies.policies() {
            if let Some(role) = policy.annotation(REQUIRE_APPROVAL_ANNOTATION) {
                let problem = if policy.effect() == cedar_policy::Effect::Forbid {
                    Some(format!(
                        "`@{REQUIRE_APPROVAL_ANNOTATION}` only applies to `permit` policies"
                    ))
                } else {
                    role.parse::<Role>().err().map(|error| error.to_string())
                };
                if let Some(message) = problem {
                    return Err(PolicyError::Annotation {
                        origin: origin.to_owned(),
                        policy: policy
                            .annotation("id")
                            .map_or_else(|| policy.id().to_string(), str::to_owned),
                        message,
                    });
                }
            }
        }
        let version = format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())));
        Ok(PolicyEngine {
            policies,
            version,
            authorizer: Authorizer::new(),
        })
    }

    /// A policy's name: its `@id("...")` annotation, else Cedar's positional id (`policy0`, ...).
    fn policy_name(&self, id: &PolicyId) -> String {
        self.policies
            .annotation(id, "id")
            .map_or_else(|| id.to_string(), str::to_owned)
    }

    /// `sha256:<hex>` of the policy text.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Decides whether `principal` may invoke `skill`; `None` means the skill is unknown.
    ///
    /// Never fails: anything that prevents a decision yields [`Verdict::Deny`] with
    /// [`DenyKind::FailedClosed`].
    pub fn decide(&self, principal: &Principal, requested_skill: &str, skill: Option<&SkillSummary>) -> Decision {
        let fail_closed = |reason: String| Decision {
            verdict: Verdict::Deny {
                kind: DenyKind::FailedClosed,
                reasons: vec![reason],
            },
            determining_policies: Vec::new(),
            withheld_capabilities: Vec::new(),
            policy_version: self.version.clone(),
        };
        let Some(skill) = skill else {
            return fail_closed(format!(
                "unknown skill `{requested_skill}`: no verified package provides it"
            ));
        };
        let invoke = match self.evaluate(principal, "invoke", &skill_resource(skill), json!({})) {
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
                verdict: Verdict::Deny { kind, reasons },
                determining_policies,
                withheld_capabilities: Vec::new(),
                policy_version: self.version.clone(),
            };
        }

        let mut grants = Vec::new();
        let mut withheld = Vec::new();
        for capability in &skill.capabilities {
            let context = json!({ "skill": skill.id, "side_effect": skill.side_effect.as_str() });
            match self.evaluate(principal, "use-capability", &capability_resource(capability), context) {
                Ok(outcome) if outcome.decision == CedarDecision::Allow => grants.push(capability.clone()),
                Ok(_) => withheld.push(capability.clone()),
                Err(reason) => return fail_closed(reason),
            }
        }

        let reviewer_role = invoke
            .policies
            .iter()
            .filter_map(|id| self.policies.annotation(id, REQUIRE_APPROVAL_ANNOTATION))
            .filter_map(|role| role.parse::<Role>().ok())
            .max();
        let verdict = match reviewer_role {
            Some(reviewer_role) => Verdict::RequireApproval { reviewer_role, grants },
            None => Verdict::Allow { grants },
        };
        Decision {
            verdict,
            determining_policies,
            withheld_capabilities: withheld,
            policy_version: self.version.clone(),
        }
    }

    fn evaluate(
        &self,
        principal: &Principal,
        action: &str,
        resource: &(EntityUid, serde_json::Value),
        context: serde_json::Value,
    ) -> Result<Evaluation, String> {
        let principal_uid = uid("Principal", &format!("{}/{}", principal.tenant, principal.subject))?;
        let action_uid = uid("Action", action)?;
        let entities = json!([
            {
                "uid": { "type": "Agentd::Principal", "id": format!("{}/{}", principal.tenant, principal.subject) },
                "attrs": {
                    "subject": principal.subject,
                    "tenant": principal.tenant,
                    "roles": principal.roles.iter().map(|role| role.as_str()).collect::<Vec<_>>(),
                },
                "parents": []
            },
            resource.1,
        ]);
        let entities = Entities::from_json_value(entities, None).map_err(|error| format!("entity error: {error}"))?;
        let context = Context::from_json_value(context, None).map_err(|error| format!("context error: {error}"))?;
        let request = Request::new(principal_uid, action_uid, resource.0.clone(), context, None)
            .map_err(|error| format!("request error: {error}"))?;
        let response = self.authorizer.is_authorized(&request, &self.policies, &entities);
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

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let text = format!("Agentd::{kind}::{}", serde_json::Value::String(id.to_owned()));
    EntityUid::from_str(&text).map_err(|error| format!("invalid entity id {text}: {error}"))
}

fn skill_resource(skill: &SkillSummary) -> (EntityUid, serde_json::Value) {
    let entity = json!({
        "uid": { "type": "Agentd::Skill", "id": skill.id },
        "attrs": {
            "id": skill.id,
            "version": skill.version.to_string(),
            "side_effect": skill.side_effect.as_str(),
            "digest": skill.digest,
            "capabilities": skill.capabilities.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "parents": []
    });
    let uid = uid("Skill", &skill.id).unwrap_or_else(|_| unreachable_uid());
    (uid, entity)
}

fn capability_resource(capability: &Capability) -> (EntityUid, serde_json::Value) {
    let text = capability.to_string();
    let entity = json!({
        "uid": { "type": "Agentd::Capability", "id": text },
        "attrs": { "kind": capability.kind(), "scope": capability.scope() },
        "parents": []
    });
    let uid = uid("Capability", &text).unwrap_or_else(|_| unreachable_uid());
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

    #[test]
    fn default_policy_verdicts() {
        let engine = PolicyEngine::from_text(DEFAULT_POLICY, "default.cedar").unwrap();
        let agent = principal(&[Role::Agent]);

        let pure = engine.decide(&agent, "demo", Some(&skill(SideEffect::Pure, &[])));
        assert_eq!(pure.verdict, Verdict::Allow { grants: vec![] });

        let effectful = engine.decide(
            &agent,
            "demo",
            Some(&skill(SideEffect::Effectful, &["fs.write:reports/", "fs.write:etc/"])),
        );
        assert_eq!(
            effectful.verdict,
            Verdict::RequireApproval {
                reviewer_role: Role::Reviewer,
                grants: vec!["fs.write:reports/".parse().unwrap()],
            }
        );
        assert_eq!(
            effectful.withheld_capabilities,
            vec!["fs.write:etc/".parse::<Capability>().unwrap()]
        );

        let reviewer_only = engine.decide(
            &principal(&[Role::Reviewer]),
            "demo",
            Some(&skill(SideEffect::Pure, &[])),
        );
        assert!(matches!(
            reviewer_only.verdict,
            Verdict::Deny {
                kind: DenyKind::NotPermitted,
                ..
            }
        ));

        let unknown = engine.decide(&agent, "ghost", None);
        assert_eq!(
            unknown.verdict,
            Verdict::Deny {
                kind: DenyKind::FailedClosed,
                reasons: vec!["unknown skill `ghost`: no verified package provides it".into()]
            }
        );
    }

    #[test]
    fn empty_policy_set_denies_everything() {
        let engine = PolicyEngine::from_text("", "empty").unwrap();
        let decision = engine.decide(
            &principal(&[Role::Agent, Role::Admin]),
            "demo",
            Some(&skill(SideEffect::Pure, &[])),
        );
        assert!(matches!(
            decision.verdict,
            Verdict::Deny {
                kind: DenyKind::NotPermitted,
                ..
            }
        ));
    }

    #[test]
    fn forbid_wins_and_is_named() {
        let text = format!(
            "{DEFAULT_POLICY}\n@id(\"no-demo\")\nforbid(principal, action, resource == Agentd::Skill::\"demo\");"
        );
        let engine = PolicyEngine::from_text(&text, "test").unwrap();
        let decision = engine.decide(&principal(&[Role::Agent]), "demo", Some(&skill(SideEffect::Pure, &[])));
        assert_eq!(
            decision.verdict,
            Verdict::Deny {
                kind: DenyKind::Forbidden,
                reasons: vec!["forbidden by policy `no-demo`".into()]
            }
        );
    }

    #[test]
    fn evaluation_errors_fail_closed() {
        // `resource.missing` does not exist: Cedar reports an evaluation error for this policy.
        let text = "@id(\"broken\")\npermit(principal, action, resource) when { resource.missing == 1 };";
        let engine = PolicyEngine::from_text(text, "test").unwrap();
        let decision = engine.decide(&principal(&[Role::Agent]), "demo", Some(&skill(SideEffect::Pure, &[])));
        assert!(
            matches!(
                decision.verdict,
                Verdict::Deny {
                    kind: DenyKind::FailedClosed,
                    ..
                }
            ),
            "{decision:?}"
        );
    }

    #[test]
    fn bad_policy_text_refuses_to_load() {
        let error = PolicyEngine::from_text("permit(principal, action, resource", "bad.cedar").unwrap_err();
        assert!(
            error.to_string().starts_with("policy set bad.cedar does not parse: "),
            "{error}"
        );
        let error = PolicyEngine::from_text("@require_approval(\"boss\")\npermit(principal, action, resource);", "x")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "policy `policy0` in x: unknown role `boss`: expected `agent`, `reviewer` or `admin`"
        );
    }
}
