//! [`RiskTier`]: how risky a skill is, from its side effect and capabilities. Policies see it as
//! `resource.risk_tier`; autonomy levels gate on it. It sits below both, so governance and
//! autonomy each import it and neither imports the other's rules for it.

use std::fmt;

use plugin_abi::{SideEffect, SkillSummary};

/// How risky a skill is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RiskTier {
    /// Pure or read-only, no capabilities.
    Low,
    /// Effectful, or requests capabilities none of which is high-risk.
    Medium,
    /// Requests a high-risk capability (any write: `fs.write`, `kv.write`).
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
