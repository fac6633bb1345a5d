//! The selector: among the loaded versions of a skill, the usable ones best first (highest
//! version matching a semver requirement, capabilities granted, circuit not open; ties broken by
//! recent latency), every rejected candidate explained.

use std::sync::Arc;

use control_plane::{RejectedCandidate, SelectionRecord};
use plugin_abi::Capability;
use serde::Serialize;

use crate::breaker::{CircuitBreakers, CircuitState};
use crate::registry::LoadedSkill;
use crate::runtime::Runtime;

/// Why a candidate was not chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The candidate's version.
    pub version: String,
    /// Why.
    pub reason: String,
}

/// The outcome of [`select`]: candidates in the order they should be tried, and the rejected.
#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    /// Usable candidates, best first (the rest are fallbacks).
    #[serde(serialize_with = "versions")]
    pub candidates: Vec<Arc<LoadedSkill>>,
    /// Candidates that cannot be used, with the reason.
    pub rejected: Vec<Rejection>,
}

fn versions<S: serde::Serializer>(skills: &[Arc<LoadedSkill>], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(skills.iter().map(|skill| skill.summary.version.to_string()))
}

/// Chooses among the loaded versions of `skill_id` matching `requirement`: every requested
/// capability must be in `granted` (when given) and the circuit for (version, tenant) must not be
/// open. Best first: highest version, then lowest recent mean latency. Deterministic for a given
/// state.
pub fn select(
    runtime: &Runtime,
    skill_id: &str,
    requirement: &semver::VersionReq,
    granted: Option<&[Capability]>,
    breakers: &CircuitBreakers,
    tenant: &str,
) -> Selection {
    let mut candidates = Vec::new();
    let mut rejected = Vec::new();
    for skill in runtime.versions(skill_id) {
        let version = skill.summary.version.to_string();
        if !requirement.matches(&skill.summary.version) {
            rejected.push(Rejection {
                version,
                reason: format!("does not match `{requirement}`"),
            });
            continue;
        }
        if let Some(granted) = granted
            && let Some(missing) = skill.summary.capabilities.iter().find(|c| !granted.contains(c))
        {
            rejected.push(Rejection {
                version,
                reason: format!("requests `{missing}`, which is not granted"),
            });
            continue;
        }
        if breakers.state(&CircuitBreakers::key(&skill.summary, tenant)) == CircuitState::Open {
            rejected.push(Rejection {
                version,
                reason: "its circuit is open".into(),
            });
            continue;
        }
        candidates.push(skill);
    }
    candidates.sort_by(|a, b| {
        b.summary
            .version
            .cmp(&a.summary.version)
            .then_with(|| a.recent_latency_us().cmp(&b.recent_latency_us()))
    });
    Selection { candidates, rejected }
}

impl Selection {
    /// The explanation recorded with each dispatch in the audit log.
    pub fn record(&self) -> SelectionRecord {
        SelectionRecord {
            candidates: self
                .candidates
                .iter()
                .map(|skill| skill.summary.version.to_string())
                .collect(),
            rejected: self
                .rejected
                .iter()
                .map(|rejection| RejectedCandidate {
                    version: rejection.version.clone(),
                    reason: rejection.reason.clone(),
                })
                .collect(),
        }
    }
}
