//! A run's provenance as W3C PROV-O (<https://www.w3.org/TR/prov-o/>) in JSON-LD, built from the
//! audit log alone (the system of record):
//!
//! - each skill invocation is a `prov:Activity` that `prov:used` its input (an entity named by
//!   the input digest) and `prov:generated` its output (named by the output digest);
//! - the skill is a `prov:SoftwareAgent` that `prov:actedOnBehalfOf` the principal who asked,
//!   and reviewers who decided approvals are `prov:Agent`s associated with the activity;
//! - the policy version a verdict was made under is the association's `prov:hadPlan`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::store::AuditEntry;

fn id(kind: &str, name: &str) -> String {
    format!("urn:agentd:{kind}:{name}")
}

/// The PROV-O JSON-LD document of `run_id`, from the audit entries (in chain order). Entries of
/// other runs are ignored; an unknown run gives a graph with the run activity only.
pub fn run_provenance(entries: &[AuditEntry], run_id: &str) -> Value {
    let mut nodes: BTreeMap<String, Value> = BTreeMap::new();
    let run = id("run", run_id);
    nodes.insert(
        run.clone(),
        json!({ "@id": run, "@type": "prov:Activity", "prov:label": format!("agentd run {run_id}") }),
    );
    for entry in entries {
        let Ok(payload) = serde_json::from_str::<Value>(&entry.payload) else {
            continue;
        };
        let entry_run = payload
            .pointer("/step/run_id")
            .or_else(|| payload.get("run_id"))
            .and_then(Value::as_str);
        if entry_run != Some(run_id) {
            continue;
        }
        let step_id = payload
            .pointer("/step/step_id")
            .or_else(|| payload.get("step_id"))
            .and_then(Value::as_str)
            .unwrap_or("step");
        let invocation = id("invocation", &format!("{run_id}/{step_id}"));
        let principal = id("principal", &entry.principal);
        match entry.kind.as_str() {
            "verdict" => {
                let skill = payload
                    .pointer("/skill/resolved/id")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown");
                let version = payload
                    .pointer("/skill/resolved/version")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let digest = payload
                    .pointer("/skill/resolved/digest")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let skill_agent = id("skill", &format!("{skill}@{version}"));
                let input = payload.get("input_digest").and_then(Value::as_str).unwrap_or("");
                let policy = payload
                    .pointer("/decision/policy_version")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let verdict = payload
                    .pointer("/decision/verdict/verdict")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                nodes.insert(
                    principal.clone(),
                    json!({ "@id": principal, "@type": "prov:Agent", "prov:label": entry.principal }),
                );
                nodes.insert(
                    skill_agent.clone(),
                    json!({
                        "@id": skill_agent, "@type": "prov:SoftwareAgent", "prov:label": skill,
                        "agentd:componentDigest": digest, "prov:actedOnBehalfOf": { "@id": principal },
                    }),
                );
                let input_entity = id("digest", input);
                nodes.insert(
                    input_entity.clone(),
                    json!({ "@id": input_entity, "@type": "prov:Entity" }),
                );
                let plan = id("policy", policy);
                nodes.insert(
                    plan.clone(),
                    json!({ "@id": plan, "@type": ["prov:Entity", "prov:Plan"] }),
                );
                let node = nodes.entry(invocation.clone()).or_insert_with(|| {
                    json!({
                        "@id": invocation, "@type": "prov:Activity", "prov:wasInformedBy": { "@id": run },
                        "prov:used": [], "prov:generated": [], "prov:qualifiedAssociation": [],
                    })
                });
                push(node, "prov:used", json!({ "@id": input_entity }));
                push(
                    node,
                    "prov:qualifiedAssociation",
                    json!({
                        "@type": "prov:Association", "prov:agent": { "@id": skill_agent },
                        "prov:hadPlan": { "@id": plan }, "agentd:verdict": verdict, "agentd:auditSeq": entry.seq,
                        "agentd:autonomyLevel": payload.pointer("/decision/autonomy/level"),
                    }),
                );
            }
            "approval-decision" | "approval-vote" => {
                let reviewer = id("principal", &entry.principal);
                nodes.insert(
                    reviewer.clone(),
                    json!({ "@id": reviewer, "@type": "prov:Agent", "prov:label": entry.principal }),
                );
                let node = nodes.entry(invocation.clone()).or_insert_with(|| {
                    json!({
                        "@id": invocation, "@type": "prov:Activity", "prov:wasInformedBy": { "@id": run },
                        "prov:used": [], "prov:generated": [], "prov:qualifiedAssociation": [],
                    })
                });
                push(
                    node,
                    "prov:qualifiedAssociation",
                    json!({
                        "@type": "prov:Association", "prov:agent": { "@id": reviewer }, "prov:hadRole": "reviewer",
                        "agentd:decision": payload.get("vote").or_else(|| payload.get("status")),
                        "agentd:auditSeq": entry.seq,
                    }),
                );
            }
            "dispatch" => {
                if let Some(output) = payload.pointer("/outcome/detail/output_digest").and_then(Value::as_str) {
                    let output_entity = id("digest", output);
                    nodes.insert(
                        output_entity.clone(),
                        json!({ "@id": output_entity, "@type": "prov:Entity", "prov:wasGeneratedBy": { "@id": invocation } }),
                    );
                    if let Some(node) = nodes.get_mut(&invocation) {
                        push(node, "prov:generated", json!({ "@id": output_entity }));
                        node["agentd:outcome"] = payload.pointer("/outcome/outcome").cloned().unwrap_or(Value::Null);
                    }
                } else if let Some(node) = nodes.get_mut(&invocation) {
                    node["agentd:outcome"] = payload.pointer("/outcome/outcome").cloned().unwrap_or(Value::Null);
                }
            }
            _ => {}
        }
    }
    json!({
        "@context": {
            "prov": "http://www.w3.org/ns/prov#",
            "agentd": "urn:agentd:vocab#",
        },
        "@graph": nodes.into_values().collect::<Vec<_>>(),
    })
}

fn push(node: &mut Value, key: &str, value: Value) {
    if let Some(list) = node.get_mut(key).and_then(Value::as_array_mut)
        && !list.contains(&value)
    {
        list.push(value);
    }
}
