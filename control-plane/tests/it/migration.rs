//! A state file written by schema 1 is migrated in place: nothing already stored is lost.

use std::sync::Arc;

use control_plane::{ApprovalStatus, ChainVerification, ManualClock, ReviewDecisionKind};

use crate::{DEFAULT_POLICY, NOW, open_plane};

/// Schema 1 exactly as agentd 0.1 (issue 2) created it.
const SCHEMA_1: &str = r#"
CREATE TABLE audit (seq INTEGER PRIMARY KEY, recorded_at_ms INTEGER NOT NULL, kind TEXT NOT NULL, tenant TEXT NOT NULL,
    principal TEXT NOT NULL, payload TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE approvals (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at_ms INTEGER NOT NULL, tenant TEXT NOT NULL,
    requester TEXT NOT NULL, requester_roles TEXT NOT NULL, run_id TEXT NOT NULL, step_id TEXT NOT NULL,
    traceparent TEXT NOT NULL, skill_id TEXT NOT NULL, skill_version TEXT NOT NULL, skill_digest TEXT NOT NULL,
    input_digest TEXT NOT NULL, request_json TEXT NOT NULL, policy_version TEXT NOT NULL, reviewer_role TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'consumed')), decided_by TEXT,
    decided_at_ms INTEGER, decision_reason TEXT, consumed_at_ms INTEGER);
CREATE INDEX approvals_by_tenant_status ON approvals (tenant, status);
INSERT INTO approvals VALUES (1, 1000, 'acme', 'alice', '["agent"]', 'run-1', 'step-1', 'tp', 'publish-report', '0.1.0',
    'sha256:aa', 'sha256:bb', '{}', 'sha256:cc', 'reviewer', 'pending', NULL, NULL, NULL, NULL);
INSERT INTO approvals VALUES (2, 2000, 'acme', 'alice', '["agent"]', 'run-2', 'step-1', 'tp', 'publish-report', '0.1.0',
    'sha256:aa', 'sha256:bb', '{}', 'sha256:cc', 'reviewer', 'denied', 'bob', 2500, 'no', NULL);
PRAGMA user_version = 1;
"#;

#[tokio::test]
async fn schema_1_files_are_migrated_with_every_request_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        use sqlx::ConnectOptions;
        let mut connection = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        sqlx::raw_sql(SCHEMA_1).execute(&mut connection).await.unwrap();
    }
    let clock = Arc::new(ManualClock::new(NOW));
    let control = open_plane(&path, DEFAULT_POLICY, Arc::clone(&clock)).await;
    let requests = control.list_approvals("acme", None).await.unwrap();
    assert_eq!(requests.len(), 2);
    let denied = &requests[0];
    assert_eq!((denied.id, denied.status), (2, ApprovalStatus::Denied));
    assert_eq!(denied.votes.len(), 1);
    assert_eq!(denied.votes[0].decision, ReviewDecisionKind::Deny);
    assert_eq!(denied.votes[0].reviewer, "bob");
    let pending = &requests[1];
    assert_eq!((pending.id, pending.status), (1, ApprovalStatus::Pending));
    assert_eq!(pending.skill.id, "publish-report");
    assert_eq!(pending.skill.version.to_string(), "0.1.0");
    assert_eq!(pending.expires_at_ms, 1000 + 86_400_000);
    assert_eq!(pending.acting_agent, "alice");
    assert!(matches!(
        control.verify_audit().await.unwrap(),
        ChainVerification::Intact { entries: 0, .. }
    ));
    drop(control);
    // Opening again is a no-op.
    let again = open_plane(&path, DEFAULT_POLICY, clock).await;
    assert_eq!(again.list_approvals("acme", None).await.unwrap().len(), 2);
}

#[tokio::test]
async fn schema_3_files_gain_idempotency_keys_without_touching_runs_or_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let clock = Arc::new(ManualClock::new(NOW));
    let alice = crate::principal("alice", &[control_plane::Role::Agent]);
    let steps = vec![control_plane::StepSpec {
        step_id: "step-1".into(),
        skill: "publish-report".into(),
        input: serde_json::json!({ "title": "t" }),
    }];
    {
        let control = open_plane(&path, DEFAULT_POLICY, Arc::clone(&clock)).await;
        control
            .create_run("run-1", &alice, steps.clone(), "tp", "node-a")
            .await
            .unwrap();
        control.request_approval(&crate::new_approval()).await.unwrap();
    }
    // Back to schema 3 as agentd wrote it before keys existed.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::raw_sql(
        "DROP TABLE run_requests; ALTER TABLE run_events DROP COLUMN fencing_token; PRAGMA user_version = 3;",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let control = open_plane(&path, DEFAULT_POLICY, clock).await;
    let records = control.run_records("acme").await.unwrap();
    assert_eq!(records.len(), 1);
    // The owner and its fencing token are kept (a schema 2 backfill would have cleared them).
    assert_eq!(records[0].owner.as_deref(), Some("node-a"));
    assert_eq!(records[0].fencing_token, 1);
    assert!(matches!(
        control.verify_audit().await.unwrap(),
        ChainVerification::Intact { entries: 1, .. }
    ));
    let key = control_plane::RequestKey::new("k", "sha256:aa".into()).unwrap();
    let created = control
        .create_run_keyed("run-2", &alice, steps, "tp", "node-a", Some(&key))
        .await
        .unwrap();
    assert!(matches!(created, control_plane::RunCreation::Created(_)));
}
