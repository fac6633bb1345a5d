//! control-plane integration tests, through the one door (`ControlPlane`): approvals, the audit
//! chain, runs, records, autonomy, schema migration and crash safety.

#![allow(missing_docs, reason = "test helpers are not public API")]

mod approvals;
mod audit;
mod autonomy;
mod emitter;
mod jwks;
mod migration;
mod properties;
mod restart;
mod runs;
mod schemas;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use control_plane::{
    ApprovalBinding, ControlPlane, ManualClock, NewApproval, PolicyEngine, Principal, Quorum, ReviewDecisionKind, Role,
    Store, TokenAuthority, TokenConfig,
};
use plugin_abi::{SideEffect, SkillSummary};

/// The default policy.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.cedar");

/// Lets every principal review, so that the approval rules themselves (not policy) decide who
/// may answer.
pub const ANYONE_REVIEWS: &str =
    "@id(\"anyone-reviews\")\npermit(principal, action == Agentd::Action::\"review\", resource);\n";

/// A control plane over a fresh state directory, its clock set to [`NOW`].
pub struct Plane {
    /// Keeps the state directory alive.
    pub dir: tempfile::TempDir,
    /// The control plane.
    pub control: Arc<ControlPlane>,
    /// Its clock.
    pub clock: Arc<ManualClock>,
}

impl Plane {
    /// The SQLite file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }
}

/// The token authority of the tests.
pub fn authority() -> TokenAuthority {
    TokenAuthority::from_secret(&[9; 32], TokenConfig::default()).unwrap()
}

/// A control plane over the store at `path` under `policy`, reading `clock`.
pub async fn open_plane(path: &std::path::Path, policy: &str, clock: Arc<ManualClock>) -> ControlPlane {
    let store = Store::open(path).await.unwrap();
    let policy = PolicyEngine::from_text(policy, "test").unwrap();
    ControlPlane::new(authority(), policy, store).with_clock(clock)
}

/// A fresh control plane under `policy`, its clock at [`NOW`].
pub async fn plane_with(policy: &str) -> Plane {
    plane_at(policy, NOW).await
}

/// A fresh control plane under `policy`, its clock at `now_ms` (tokens and certificates are
/// checked against the system clock, so tests of them start at the real time).
pub async fn plane_at(policy: &str, now_ms: i64) -> Plane {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(now_ms));
    let control = open_plane(&dir.path().join("state.db"), policy, Arc::clone(&clock)).await;
    Plane {
        dir,
        control: Arc::new(control),
        clock,
    }
}

/// A fresh control plane under the default policy in which anyone may review.
pub async fn plane() -> Plane {
    plane_with(&format!("{DEFAULT_POLICY}\n{ANYONE_REVIEWS}")).await
}

/// A principal of tenant `acme`.
pub fn principal(subject: &str, roles: &[Role]) -> Principal {
    Principal {
        subject: subject.into(),
        tenant: "acme".into(),
        roles: roles.iter().copied().collect::<BTreeSet<_>>(),
    }
}

/// The time tests decide at: well before [`new_approval`]'s expiry.
pub const NOW: i64 = 1_700_000_000_000;

/// `publish-report` as governed.
pub fn skill() -> SkillSummary {
    SkillSummary {
        id: "publish-report".into(),
        version: semver::Version::new(0, 1, 0),
        side_effect: SideEffect::Effectful,
        capabilities: vec!["fs.write:reports/".parse().unwrap()],
        digest: "sha256:aa".into(),
    }
}

/// An approval request by `alice` for `publish-report`: quorum 1 of 1, approve/deny/modify,
/// expiring an hour after [`NOW`].
pub fn new_approval() -> NewApproval {
    NewApproval {
        requester: principal("alice", &[Role::Agent]),
        acting_agent: "alice".into(),
        run_id: "run-1".into(),
        step_id: "step-1".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        skill: skill(),
        input_digest: "sha256:bb".into(),
        request_json: r#"{"schema_version":"agentd.invoke.v1","input":{}}"#.into(),
        policy_version: "sha256:cc".into(),
        reviewer_role: Role::Reviewer,
        quorum: Quorum::default(),
        expires_at_ms: NOW + 3_600_000,
        allowed_decisions: vec![
            ReviewDecisionKind::Approve,
            ReviewDecisionKind::Deny,
            ReviewDecisionKind::Modify,
        ],
        parent_id: None,
    }
}

/// What a dispatch of [`new_approval`]'s step offers.
pub fn binding() -> ApprovalBinding {
    ApprovalBinding {
        tenant: "acme".into(),
        run_id: "run-1".into(),
        step_id: "step-1".into(),
        skill_id: "publish-report".into(),
        skill_digest: "sha256:aa".into(),
        input_digest: "sha256:bb".into(),
        policy_version: "sha256:cc".into(),
    }
}
