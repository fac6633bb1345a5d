//! control-plane integration tests: the SQLite store, approvals and the audit chain.

#![allow(missing_docs, reason = "test helpers are not public API")]

mod approvals;
mod audit;
mod autonomy;
mod emitter;
mod migration;
mod properties;
mod restart;
mod runs;
mod schemas;

use std::collections::BTreeSet;

use control_plane::{ApprovalBinding, NewApproval, Principal, Quorum, ReviewDecisionKind, Role, Store};
use plugin_abi::{SideEffect, SkillSummary};

/// A store in a fresh temporary directory (kept alive by the returned guard).
pub async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).await.unwrap();
    (dir, store)
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
