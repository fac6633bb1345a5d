//! control-plane integration tests: the SQLite store, approvals and the audit chain.

#![allow(missing_docs, reason = "test helpers are not public API")]

mod approvals;
mod audit;

use std::collections::BTreeSet;

use control_plane::{NewApproval, Principal, Role, Store};

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

/// An approval request by `alice` for `publish-report`.
pub fn new_approval() -> NewApproval {
    NewApproval {
        requester: principal("alice", &[Role::Agent]),
        run_id: "run-1".into(),
        step_id: "step-1".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        skill_id: "publish-report".into(),
        skill_version: "0.1.0".into(),
        skill_digest: "sha256:aa".into(),
        input_digest: "sha256:bb".into(),
        request_json: r#"{"schema_version":"agentd.invoke.v1","input":{}}"#.into(),
        policy_version: "sha256:cc".into(),
        reviewer_role: Role::Reviewer,
    }
}
