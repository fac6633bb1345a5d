//! Autonomy levels: how much an agent may do before a human is asked.
//!
//! Levels after Feng, McDonald & Zhang, "Levels of Autonomy for AI Agents" (2025,
//! arXiv:2506.12469), named by the role the user plays. agentd maps each level to concrete
//! approval gates by the skill's [`RiskTier`]:
//!
//! | level | user is | approval required for |
//! |---|---|---|
//! | L1 | operator | every invocation |
//! | L2 | collaborator | every skill that is effectful or requests a capability (medium and high risk) |
//! | L3 | consultant | effectful skills (and every high-risk one) |
//! | L4 | approver | high-risk capabilities only (any write) |
//! | L5 | observer | nothing beyond policy and budgets |
//!
//! An [`AutonomyCertificate`] (per agent, skill and tenant; issued by an admin; signed as a JWT
//! with its own audience, so it can never pass as an access token) caps the level. Without one
//! the level is [`DEFAULT_LEVEL`]. Policy can lower the level (`@max_autonomy("L2")` on a permit
//! that decided) but never raise it above the certificate. Autonomy gates only add approvals: a
//! policy's deny or require-approval always stands.
//!
//! Automatic demotion: when an agent's failures and escalations for a skill exceed the
//! [`ErrorBudget`] within its window, its level drops one step (audited), down to L1.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::risk::RiskTier;

/// The level used when an agent has no valid certificate for a skill.
pub const DEFAULT_LEVEL: AutonomyLevel = AutonomyLevel::L2;

/// The JWT audience of autonomy certificates (access tokens use another, so neither passes as
/// the other).
pub const CERTIFICATE_AUDIENCE: &str = "agentd-autonomy";

/// An autonomy level, L1 (least autonomous) to L5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum AutonomyLevel {
    /// The user operates; the agent acts only with approval.
    L1,
    /// The user collaborates; approval for anything effectful or capability-bearing.
    L2,
    /// The user is consulted; approval for effectful skills.
    L3,
    /// The user approves high-risk actions only.
    L4,
    /// The user observes.
    L5,
}

impl AutonomyLevel {
    /// `L1` ... `L5`.
    pub fn as_str(self) -> &'static str {
        match self {
            AutonomyLevel::L1 => "L1",
            AutonomyLevel::L2 => "L2",
            AutonomyLevel::L3 => "L3",
            AutonomyLevel::L4 => "L4",
            AutonomyLevel::L5 => "L5",
        }
    }

    /// One level down (L1 stays L1).
    pub fn demoted(self) -> Self {
        match self {
            AutonomyLevel::L1 | AutonomyLevel::L2 => AutonomyLevel::L1,
            AutonomyLevel::L3 => AutonomyLevel::L2,
            AutonomyLevel::L4 => AutonomyLevel::L3,
            AutonomyLevel::L5 => AutonomyLevel::L4,
        }
    }

    /// Whether a skill of `tier` (with `effectful` side effect) needs approval at this level.
    pub fn requires_approval(self, tier: RiskTier, effectful: bool) -> bool {
        match self {
            AutonomyLevel::L1 => true,
            AutonomyLevel::L2 => tier >= RiskTier::Medium,
            AutonomyLevel::L3 => effectful || tier == RiskTier::High,
            AutonomyLevel::L4 => tier == RiskTier::High,
            AutonomyLevel::L5 => false,
        }
    }
}

impl fmt::Display for AutonomyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for AutonomyLevel {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "L1" | "l1" => Ok(AutonomyLevel::L1),
            "L2" | "l2" => Ok(AutonomyLevel::L2),
            "L3" | "l3" => Ok(AutonomyLevel::L3),
            "L4" | "l4" => Ok(AutonomyLevel::L4),
            "L5" | "l5" => Ok(AutonomyLevel::L5),
            other => Err(format!("unknown autonomy level `{other}`: expected L1 to L5")),
        }
    }
}

/// What an autonomy certificate says. Signed by the control plane's key as a JWT with audience
/// [`CERTIFICATE_AUDIENCE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutonomyCertificate {
    /// The agent (principal subject) it applies to.
    pub agent: String,
    /// The skill id, or `*` for every skill.
    pub skill: String,
    /// The tenant.
    pub tenant: String,
    /// The highest level the agent may act at.
    pub level: AutonomyLevel,
    /// The admin who issued it.
    pub issued_by: String,
    /// Issue time, seconds since the Unix epoch.
    pub issued_at: u64,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Failures and escalations an agent may have per skill within `window_ms` before it is
/// demoted one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBudget {
    /// Failures and escalations allowed in the window; one more demotes.
    pub allowed: u32,
    /// The window, ms.
    pub window_ms: i64,
}

impl Default for ErrorBudget {
    fn default() -> Self {
        ErrorBudget {
            allowed: 5,
            window_ms: 3_600_000,
        }
    }
}

/// Spending limits, micro-euros; over a limit, a step is escalated to a human.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Budgets {
    /// Per run.
    pub per_run_micro_eur: Option<i64>,
    /// Per tenant (all time).
    pub per_tenant_micro_eur: Option<i64>,
}

/// The error budget and spending budgets in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AutonomyLimits {
    /// Failures and escalations tolerated before a demotion.
    pub error_budget: ErrorBudget,
    /// Spending limits.
    pub budgets: Budgets,
}

/// How a step ended, as far as the error budget is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StepResult {
    /// It did its work.
    Success,
    /// It failed for good; counts against the budget.
    Failure,
    /// A human had to be asked; counts against the budget.
    Escalation,
}

impl StepResult {
    /// `success`, `failure` or `escalation`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            StepResult::Success => "success",
            StepResult::Failure => "failure",
            StepResult::Escalation => "escalation",
        }
    }

    /// Whether it counts against the error budget.
    pub fn counts_against_budget(self) -> bool {
        !matches!(self, StepResult::Success)
    }
}

/// The demotion rule: `bad` failures and escalations counted since the budget window opened
/// (or since the last demotion, whichever is later) demote the agent one level when they exceed
/// `budget.allowed`. Returns the recorded reason, or `None` when the budget holds.
pub fn demotion_due(bad: u32, budget: ErrorBudget) -> Option<String> {
    (bad > budget.allowed).then(|| {
        format!(
            "{bad} failures and escalations within {} ms exceed the error budget of {}",
            budget.window_ms, budget.allowed
        )
    })
}

/// Where the error budget's window opens at `now_ms`: `window_ms` back, or just after the last
/// demotion if that is later (a demotion spends the budget).
pub fn budget_window_start(now_ms: i64, budget: ErrorBudget, last_demotion_ms: Option<i64>) -> i64 {
    (now_ms - budget.window_ms).max(last_demotion_ms.map_or(i64::MIN, |at| at + 1))
}

/// How autonomy shaped a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AutonomyAssessment {
    /// The level in force.
    pub level: AutonomyLevel,
    /// Where it came from: `certificate`, `default`, `demoted`, `policy-cap`.
    pub source: Vec<String>,
    /// Gates that turned an allow into require-approval (`autonomy L2 requires approval for
    /// medium risk`, `run budget exceeded`).
    pub gates: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_gates_by_risk_tier() {
        use AutonomyLevel::*;
        use RiskTier::*;
        let table = [
            (L1, [true, true, true, true]),
            (L2, [false, true, true, true]),
            (L3, [false, false, true, true]),
            (L4, [false, false, false, true]),
            (L5, [false, false, false, false]),
        ];
        for (level, expected) in table {
            let observed = [
                level.requires_approval(Low, false),
                level.requires_approval(Medium, false),
                level.requires_approval(Medium, true),
                level.requires_approval(High, true),
            ];
            assert_eq!(observed, expected, "{level}");
        }
        assert_eq!(L5.demoted(), L4);
        assert_eq!(L1.demoted(), L1);
        assert!("L9".parse::<AutonomyLevel>().is_err());
    }

    #[test]
    fn the_budget_demotes_past_its_allowance_and_restarts_after_a_demotion() {
        let budget = ErrorBudget {
            allowed: 2,
            window_ms: 60_000,
        };
        assert_eq!(demotion_due(2, budget), None);
        assert_eq!(
            demotion_due(3, budget).as_deref(),
            Some("3 failures and escalations within 60000 ms exceed the error budget of 2")
        );
        assert_eq!(budget_window_start(100_000, budget, None), 40_000);
        assert_eq!(budget_window_start(100_000, budget, Some(90_000)), 90_001);
        assert_eq!(budget_window_start(100_000, budget, Some(10_000)), 40_000);
    }
}
