//! A run's provenance as W3C PROV-O (<https://www.w3.org/TR/prov-o/>) in JSON-LD, built from the
//! audit log alone (the system of record), reading its typed [`AuditEvent`]s:
//!
//! - each skill invocation is a `prov:Activity` that `prov:used` its input (an entity named by
//!   the input digest) and `prov:generated` its output (named by the output digest);
//! - the skill is a `prov:SoftwareAgent` that `prov:actedOnBehalfOf` the principal who asked,
//!   and reviewers who decided approvals are `prov:Agent`s associated with the activity;
//! - the policy version a verdict was made under is the association's `prov:hadPlan`.
//!
//! An entry whose payload is not in the vocabulary is skipped and counted in
//! `agentd:unreadableEntries`, never guessed at.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{ApprovalDecided, AuditEntry, AuditEvent};

fn id(kind: &str, name: &str) -> String {
    format!("urn:agentd:{kind}:{name}")
}

fn invocation_node<'n>(nodes: &'n mut BTreeMap<String, Value>, invocation: &str, run: &str) -> &'n mut Value {
    nodes.entry(invocation.to_owned()).or_insert_with(|| {
        json!({
            "@id": invocation, "@type": "prov:Activity", "prov:wasInformedBy": { "@id": run },
            "prov:used": [], "prov:generated": [], "prov:qualifiedAssociation": [],
        })
    })
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
    let mut unreadable = 0_u64;
    for entry in entries {
        let Ok(event) = entry.event() else {
            unreadable += 1;
            continue;
        };
        if event.run_id() != Some(run_id) {
            continue;
        }
        let step_id = event.step_id().unwrap_or("step");
        let invocation = id("invocation", &format!("{run_id}/{step_id}"));
        match &event {
            AuditEvent::Verdict(record) => {
                let principal = id("principal", &entry.principal);
                let (skill, version, digest) = match &record.skill.resolved {
                    Some(summary) => (summary.id.clone(), summary.version.to_string(), summary.digest.clone()),
                    None => ("unknown".to_owned(), String::new(), String::new()),
                };
                let skill_agent = id("skill", &format!("{skill}@{version}"));
                let decision = &record.decision;
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
                let input_entity = id("digest", &record.input_digest);
                nodes.insert(
                    input_entity.clone(),
                    json!({ "@id": input_entity, "@type": "prov:Entity" }),
                );
                let plan = id("policy", &decision.policy_version);
                nodes.insert(
                    plan.clone(),
                    json!({ "@id": plan, "@type": ["prov:Entity", "prov:Plan"] }),
                );
                let node = invocation_node(&mut nodes, &invocation, &run);
                push(node, "prov:used", json!({ "@id": input_entity }));
                push(
                    node,
                    "prov:qualifiedAssociation",
                    json!({
                        "@type": "prov:Association", "prov:agent": { "@id": skill_agent },
                        "prov:hadPlan": { "@id": plan }, "agentd:verdict": decision.verdict.name(),
                        "agentd:auditSeq": entry.seq,
                        "agentd:autonomyLevel": decision.autonomy.as_ref().map(|autonomy| autonomy.level),
                    }),
                );
            }
            AuditEvent::ApprovalVote(_) | AuditEvent::ApprovalDecision(_) => {
                let reviewer = id("principal", &entry.principal);
                nodes.insert(
                    reviewer.clone(),
                    json!({ "@id": reviewer, "@type": "prov:Agent", "prov:label": entry.principal }),
                );
                let decision = match &event {
                    AuditEvent::ApprovalVote(record) => record.vote.as_str(),
                    AuditEvent::ApprovalDecision(ApprovalDecided::Vote(record)) => record.vote.as_str(),
                    AuditEvent::ApprovalDecision(decided) => decided.status().as_str(),
                    _ => "",
                };
                let node = invocation_node(&mut nodes, &invocation, &run);
                push(
                    node,
                    "prov:qualifiedAssociation",
                    json!({
                        "@type": "prov:Association", "prov:agent": { "@id": reviewer }, "prov:hadRole": "reviewer",
                        "agentd:decision": decision, "agentd:auditSeq": entry.seq,
                    }),
                );
            }
            AuditEvent::Dispatch(dispatch) => {
                let record = &dispatch.outcome;
                if let Some(output) = record.output_digest() {
                    let output_entity = id("digest", output);
                    nodes.insert(
                        output_entity.clone(),
                        json!({ "@id": output_entity, "@type": "prov:Entity", "prov:wasGeneratedBy": { "@id": invocation } }),
                    );
                    if let Some(node) = nodes.get_mut(&invocation) {
                        push(node, "prov:generated", json!({ "@id": output_entity }));
                    }
                }
                if let Some(node) = nodes.get_mut(&invocation) {
                    node["agentd:outcome"] = json!(record.outcome);
                }
            }
            AuditEvent::ApprovalRequested(_)
            | AuditEvent::ApprovalConsumed(_)
            | AuditEvent::EnforcementChange(_)
            | AuditEvent::AutonomyDemotion(_)
            | AuditEvent::RunControl(_) => {}
        }
    }
    let mut document = json!({
        "@context": {
            "prov": "http://www.w3.org/ns/prov#",
            "agentd": "urn:agentd:vocab#",
        },
        "@graph": nodes.into_values().collect::<Vec<_>>(),
    });
    if unreadable > 0 {
        document["agentd:unreadableEntries"] = json!(unreadable);
    }
    document
}

fn push(node: &mut Value, key: &str, value: Value) {
    if let Some(list) = node.get_mut(key).and_then(Value::as_array_mut)
        && !list.contains(&value)
    {
        list.push(value);
    }
}
