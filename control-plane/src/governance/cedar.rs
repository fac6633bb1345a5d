//! Cedar plumbing: entities built from agentd's values, policy slices by scope, and one
//! evaluation that reports Cedar's errors (so the caller can fail closed).

use std::str::FromStr;
use std::sync::{Arc, LazyLock, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityUid, PolicyId, PolicySet,
    Request, ResourceConstraint, RestrictedExpression,
};
use plugin_abi::{Capability, SkillSummary};

use crate::identity::Principal;
use crate::risk::RiskTier;

/// Bound on cached slices; past it the cache starts over (it is only a cache).
const MAX_SLICES: usize = 10_000;

/// A validated policy set with its authorizer and a cache of slices by (action, resource).
#[derive(Debug)]
pub(super) struct CedarSet {
    pub(super) policies: PolicySet,
    authorizer: Authorizer,
    /// Policy slices by (action, resource): only policies whose scope can match are evaluated.
    slices: RwLock<std::collections::HashMap<(String, String), Arc<PolicySet>>>,
}

impl CedarSet {
    pub(super) fn new(policies: PolicySet) -> Self {
        CedarSet {
            policies,
            authorizer: Authorizer::new(),
            slices: RwLock::new(std::collections::HashMap::new()),
        }
    }

    /// The policies whose scope can match `action` on `resource`: action `==`/`in` it or
    /// unconstrained, and resource unconstrained, `==` it, `is` its type, or `in` something (kept
    /// conservatively: hierarchies are not resolved here). Evaluation is linear in the policies
    /// it sees, so slicing by scope keeps a verdict fast in large policy sets. Cached per pair.
    fn slice(&self, action: &EntityUid, resource: &EntityUid) -> Arc<PolicySet> {
        let key = (action.to_string(), resource.to_string());
        if let Ok(cache) = self.slices.read()
            && let Some(slice) = cache.get(&key)
        {
            return Arc::clone(slice);
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
        let slice = Arc::new(PolicySet::from_policies(selected.cloned()).unwrap_or_else(|_| self.policies.clone()));
        if let Ok(mut cache) = self.slices.write() {
            if cache.len() >= MAX_SLICES {
                cache.clear();
            }
            cache.insert(key, Arc::clone(&slice));
        }
        slice
    }

    pub(super) fn evaluate(
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

pub(super) struct Evaluation {
    pub(super) decision: CedarDecision,
    pub(super) policies: Vec<PolicyId>,
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

pub(super) fn string(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_owned())
}

pub(super) fn skill_resource(skill: &SkillSummary) -> (EntityUid, Result<Entity, String>) {
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
            ("cpu_metering".to_owned(), string(skill.cpu_metering.as_str())),
        ]),
        std::collections::HashSet::new(),
    )
    .map_err(|error| format!("entity error: {error}"));
    (uid, entity)
}

pub(super) fn capability_resource(capability: &Capability) -> (EntityUid, Result<Entity, String>) {
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
pub(super) fn miette_free(error: &cedar_policy::ParseErrors) -> String {
    error.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
