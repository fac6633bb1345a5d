//! The PostgreSQL backend's own properties, on the pass of this suite that runs on PostgreSQL
//! (`AGENTD_TEST_STORE=postgres`): several nodes on one database keep one audit log, the
//! database refuses to rewrite history, and a newer schema is refused.

use std::sync::Arc;

use control_plane::{ChainVerification, ControlPlane, ManualClock, PolicyEngine, Store, StoreError};

use crate::{Backend, DEFAULT_POLICY, NOW, authority, plane_on};

/// The test's PostgreSQL URL, or `None` (the test then has nothing to check) on SQLite.
fn postgres() -> Option<String> {
    match Backend::from_env() {
        Backend::Postgres(url) => Some(url),
        Backend::Sqlite => None,
    }
}

/// The URL of `plane`'s own schema.
fn scoped(url: &str, plane: &crate::Plane) -> String {
    crate::scoped_url(url, &plane.schema.as_ref().expect("a PostgreSQL plane").1)
}

/// A second node's control plane on `plane`'s schema and keys.
async fn another_node(url: &str, plane: &crate::Plane) -> Arc<ControlPlane> {
    let store = Store::open_postgres(&scoped(url, plane), plane.dir.path())
        .await
        .unwrap();
    let policy = PolicyEngine::from_text(DEFAULT_POLICY, "test").unwrap();
    Arc::new(ControlPlane::new(authority(), policy, store).with_clock(Arc::new(ManualClock::new(NOW))))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_event_committed_on_one_node_reaches_the_feed_of_another() {
    let Some(url) = postgres() else { return };
    let first = plane_on(&Backend::Postgres(url.clone()), DEFAULT_POLICY, NOW).await;
    let second = another_node(&url, &first).await;
    let mut heard = second.subscribe_run_events();
    // Let the second node's listener start listening before the commit.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let alice = crate::principal("alice", &[control_plane::Role::Agent]);
    first
        .control
        .create_run("run-1", &alice, crate::runs::steps(), crate::runs::TP, "node-a")
        .await
        .unwrap();
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), heard.recv())
        .await
        .expect("node B never heard node A's commit")
        .unwrap();
    assert_eq!((event.run_id.as_str(), event.lamport), ("run-1", 1));
    assert_eq!(event.payload.name(), "run-created");
    // Each event once: node A's own feed is not sent its events a second time.
    let mut own = first.control.subscribe_run_events();
    let lease = first
        .control
        .create_run("run-2", &alice, crate::runs::steps(), crate::runs::TP, "node-a")
        .await
        .unwrap();
    assert_eq!(own.recv().await.unwrap().run_id, lease.run_id);
    let echo = tokio::time::timeout(std::time::Duration::from_millis(700), own.recv()).await;
    assert!(echo.is_err(), "node A heard its own event twice: {echo:?}");
}

/// PostgreSQL keeps no notice for a closed session: when a node's listener loses its
/// connection, the events other nodes commit meanwhile never reach its feed. The node listens
/// again on a new connection and then moves its gap count, which tells live views to read the
/// store; events committed after that reach the feed again.
#[tokio::test(flavor = "multi_thread")]
async fn a_listener_that_lost_its_connection_listens_again_and_reports_the_gap() {
    let Some(url) = postgres() else { return };
    let first = plane_on(&Backend::Postgres(url.clone()), DEFAULT_POLICY, NOW).await;
    let second = another_node(&url, &first).await;
    let mut gaps = second.subscribe_run_event_gaps();
    let mut heard = second.subscribe_run_events();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(*gaps.borrow_and_update(), 0);
    // Cut every session listening on this schema's channel, as a server restart or a network
    // fault would.
    let schema = &first.schema.as_ref().unwrap().1;
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE query LIKE 'LISTEN%' AND query LIKE '%' || $1 || '%'",
    )
    .bind(format!("agentd_run_events_{schema}"))
    .fetch_all(&admin)
    .await
    .unwrap();
    admin.close().await;
    assert!(!cut.is_empty(), "no listening session was found to cut");
    tokio::time::timeout(std::time::Duration::from_secs(10), gaps.changed())
        .await
        .expect("the second node never reported the gap")
        .unwrap();
    assert!(*gaps.borrow() >= 1);
    let alice = crate::principal("alice", &[control_plane::Role::Agent]);
    first
        .control
        .create_run("run-after-gap", &alice, crate::runs::steps(), crate::runs::TP, "node-a")
        .await
        .unwrap();
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), heard.recv())
        .await
        .expect("the second node no longer hears the first after listening again")
        .unwrap();
    assert_eq!(event.run_id, "run-after-gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_append_to_one_audit_log_in_one_order() {
    let Some(url) = postgres() else { return };
    let first = plane_on(&Backend::Postgres(url.clone()), DEFAULT_POLICY, NOW).await;
    // Two more nodes: their own stores and control planes on the same schema and keys.
    let mut nodes = vec![Arc::clone(&first.control)];
    for _ in 0..2 {
        let store = Store::open_postgres(&scoped(&url, &first), first.dir.path())
            .await
            .unwrap();
        let policy = PolicyEngine::from_text(DEFAULT_POLICY, "test").unwrap();
        let control = ControlPlane::new(authority(), policy, store).with_clock(Arc::new(ManualClock::new(NOW)));
        nodes.push(Arc::new(control));
    }
    let appends: Vec<_> = nodes
        .iter()
        .enumerate()
        .flat_map(|(node, control)| {
            (0..30).map(move |n| {
                let control = Arc::clone(control);
                tokio::spawn(async move { crate::audit::append(&control, (node * 1000 + n) as i64).await })
            })
        })
        .collect();
    for append in appends {
        append.await.unwrap();
    }
    // Every node reads the same intact log: 90 entries, one chain, one tree.
    let mut heads = Vec::new();
    for control in &nodes {
        let ChainVerification::Intact { entries, head, .. } = control.verify_audit().await.unwrap() else {
            panic!("the shared log does not verify")
        };
        assert_eq!(entries, 90);
        heads.push(head);
    }
    heads.dedup();
    assert_eq!(heads.len(), 1, "nodes disagree on the head: {heads:?}");
}

/// Reviewers on three nodes vote on one request with a quorum of three at the same moment.
/// Each vote reads the votes so far and decides whether it completes the quorum; write units
/// no longer queue on one lock (ADR 0020), so without the request's row lock each could see
/// fewer than three votes and the request would stay pending with three approvals.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reviewers_on_three_nodes_reach_a_quorum_of_three_exactly_once() {
    use control_plane::{ApprovalStatus, Quorum, ReviewDecisionKind, Role};
    let Some(url) = postgres() else { return };
    let first = plane_on(&Backend::Postgres(url.clone()), DEFAULT_POLICY, NOW).await;
    let nodes = [
        Arc::clone(&first.control),
        another_node(&url, &first).await,
        another_node(&url, &first).await,
    ];
    let mut asked = crate::new_approval();
    asked.quorum = Quorum {
        required: 3,
        deny_threshold: 3,
    };
    for round in 0..12 {
        let request = first.control.request_approval(&asked).await.unwrap();
        let votes: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(index, control)| {
                let control = Arc::clone(control);
                let reviewer = crate::principal(&format!("reviewer-{index}"), &[Role::Reviewer]);
                tokio::spawn(async move {
                    control
                        .review(request.id, &reviewer, ReviewDecisionKind::Approve, None, None)
                        .await
                })
            })
            .collect();
        for vote in votes {
            vote.await.unwrap().unwrap();
        }
        let decided = first.control.approval("acme", request.id).await.unwrap().unwrap();
        assert_eq!(
            (decided.status, decided.approvals()),
            (ApprovalStatus::Approved, 3),
            "round {round}: three approvals, and the quorum was never seen"
        );
    }
    let ChainVerification::Intact { entries, .. } = first.control.verify_audit().await.unwrap() else {
        panic!("the shared log does not verify")
    };
    // Per request: asked, two votes, one deciding vote.
    assert_eq!(entries, 12 * 4);
}

/// A claim does not wait for a unit writing the run: it skips the run (`FOR UPDATE SKIP
/// LOCKED`) as another node's, and takes it once the row is free.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_skips_a_run_another_node_is_writing() {
    let Some(url) = postgres() else { return };
    let plane = plane_on(&Backend::Postgres(url.clone()), DEFAULT_POLICY, NOW).await;
    let control = &plane.control;
    let alice = crate::principal("alice", &[control_plane::Role::Agent]);
    control
        .create_run("run-1", &alice, crate::runs::steps(), crate::runs::TP, "node-a")
        .await
        .unwrap();
    plane.clock.advance(control.lease_ttl_ms() + 1);
    // Another node, mid-write on the run.
    let pool = sqlx::PgPool::connect(&scoped(&url, &plane)).await.unwrap();
    let mut writing = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM runs WHERE run_id = 'run-1' FOR UPDATE")
        .execute(&mut *writing)
        .await
        .unwrap();
    let skipped = tokio::time::timeout(std::time::Duration::from_secs(5), control.claim_run("run-1", "node-b"))
        .await
        .expect("the claim waited for the unit writing the run");
    assert_eq!(skipped.unwrap(), None);
    writing.rollback().await.unwrap();
    let lease = control.claim_run("run-1", "node-b").await.unwrap().unwrap();
    assert_eq!((lease.owner.as_str(), lease.token), ("node-b", 2));
    // A run that does not exist is still not found, not "held".
    let error = control.claim_run("run-9", "node-b").await.unwrap_err();
    assert!(
        matches!(
            error,
            control_plane::RunStoreError::Run(control_plane::RunError::NotFound(_))
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_database_refuses_to_rewrite_the_audit_log_or_run_events() {
    let Some(url) = postgres() else { return };
    let plane = plane_on(&Backend::Postgres(url.clone()), DEFAULT_POLICY, NOW).await;
    crate::audit::append(&plane.control, 1).await;
    // The attacker's own connection, with write access to every table.
    let pool = sqlx::PgPool::connect(&scoped(&url, &plane)).await.unwrap();
    for statement in [
        "UPDATE audit SET kind = 'x'",
        "DELETE FROM audit",
        "TRUNCATE audit",
        "TRUNCATE run_events",
    ] {
        let error = sqlx::query(statement).execute(&pool).await.unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("append-only") || message.contains("immutable"),
            "{statement}: {message}"
        );
    }
    let ChainVerification::Intact { entries, .. } = plane.control.verify_audit().await.unwrap() else {
        panic!("refused statements changed the log")
    };
    assert_eq!(entries, 1);
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_agentd_is_refused() {
    let Some(url) = postgres() else { return };
    let plane = plane_on(&Backend::Postgres(url.clone()), DEFAULT_POLICY, NOW).await;
    let scoped = scoped(&url, &plane);
    let pool = sqlx::PgPool::connect(&scoped).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let error = Store::open_postgres(&scoped, plane.dir.path()).await.unwrap_err();
    assert!(matches!(error, StoreError::NewerSchema { found: 99, .. }), "{error:?}");
    // Nothing was touched: the plane still works on what it has.
    crate::audit::append(&plane.control, 2).await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_typed_retryable_open_error() {
    if postgres().is_none() {
        return;
    }
    // Port 9 (discard) on loopback: nothing listens there.
    let error = Store::open_postgres(
        "postgres://agentd@127.0.0.1:9/none",
        std::path::Path::new("/nonexistent"),
    )
    .await
    .unwrap_err();
    let StoreError::Open { location, cause } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(location, "postgres://agentd@127.0.0.1:9/none");
    assert!(cause.is_retryable(), "{cause:?}");
}

/// A SQLite state with rows in every table: audit entries, approvals (approved, pending,
/// modified), votes, runs with records and idempotency keys, kernel records,
/// autonomy certificates and outcomes.
async fn busy_sqlite_state() -> crate::Plane {
    use control_plane::{AutonomyLevel, Cost, CostStatus, LlmCall, RequestKey, ReviewDecisionKind, StepResult};
    let plane = crate::sqlite_plane().await;
    let control = &plane.control;
    for n in 1..=3 {
        crate::audit::append(control, n).await;
    }
    let bob = crate::principal("bob", &[control_plane::Role::Reviewer]);
    let approved = control.request_approval(&crate::new_approval()).await.unwrap();
    control
        .review(approved.id, &bob, ReviewDecisionKind::Approve, Some("fine"), None)
        .await
        .unwrap();
    control.request_approval(&crate::new_approval()).await.unwrap();
    let modified = control.request_approval(&crate::new_approval()).await.unwrap();
    control
        .review(
            modified.id,
            &bob,
            ReviewDecisionKind::Modify,
            Some("smaller"),
            Some(r#"{"schema_version":"agentd.invoke.v1","input":{"title":"short"}}"#),
        )
        .await
        .unwrap();
    let alice = crate::principal("alice", &[control_plane::Role::Agent]);
    control
        .create_run("run-1", &alice, crate::runs::steps(), crate::runs::TP, "node-a")
        .await
        .unwrap();
    let key = RequestKey {
        key: "key-1".into(),
        request_digest: "sha256:00".into(),
    };
    control
        .create_run_keyed(
            "run-2",
            &alice,
            crate::runs::steps(),
            crate::runs::TP,
            "node-a",
            Some(&key),
        )
        .await
        .unwrap();
    let call = LlmCall {
        run_id: "run-1".into(),
        provider: "local".into(),
        model: "tiny".into(),
        input_tokens: 100,
        output_tokens: 10,
        cost: Cost {
            micro_eur: Some(1_250),
            status: CostStatus::Calculated,
            pricing_version: "local-2026-11".into(),
        },
    };
    control
        .emitter()
        .record_llm_call("acme", &control_plane::TraceContext::new_root(), &call)
        .await
        .unwrap();
    let admin = crate::principal("root", &[control_plane::Role::Admin]);
    control
        .grant_autonomy(&admin, "alice", "demo", AutonomyLevel::L2, 3_600)
        .await
        .unwrap();
    control
        .record_outcome(&alice, "demo", StepResult::Success)
        .await
        .unwrap();
    plane
}

/// A schema of this test's own, with no store opened on it, dropped at the end.
async fn empty_target(url: &str) -> (String, crate::Schema) {
    let schema = crate::fresh_schema(url).await;
    (crate::scoped_url(url, &schema), crate::Schema(url.to_owned(), schema))
}

/// A control plane on the PostgreSQL `target` with keys in `key_dir`.
async fn node_on(target: &str, key_dir: &std::path::Path) -> ControlPlane {
    let store = Store::open_postgres(target, key_dir).await.unwrap();
    let policy = PolicyEngine::from_text(&format!("{DEFAULT_POLICY}\n{}", crate::ANYONE_REVIEWS), "test").unwrap();
    ControlPlane::new(authority(), policy, store).with_clock(Arc::new(ManualClock::new(NOW)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_state_moves_to_postgres_whole_verified_and_as_the_same_log() {
    use control_plane::audit::proof::CheckpointCheck;
    let Some(url) = postgres() else { return };
    let source = busy_sqlite_state().await;
    let before = source.control.checkpoint().await.unwrap();
    let verifier = source.control.checkpoint_verifier().await.unwrap();
    let ChainVerification::Intact { entries, head, root } = source.control.verify_audit().await.unwrap() else {
        panic!("the source does not verify")
    };
    let approvals = source.control.list_approvals("acme", None).await.unwrap();
    let run = source.control.run("acme", "run-2").await.unwrap();
    let (target, _schema) = empty_target(&url).await;
    let keys = tempfile::tempdir().unwrap();

    let report = control_plane::migrate_sqlite_to_postgres(&source.state_file(), None, &target, keys.path())
        .await
        .unwrap();
    assert_eq!(
        (report.audit_entries, &report.audit_head, &report.merkle_root),
        (entries, &head, &root)
    );
    // Every table of the source, row for row (and every table had rows to copy but one).
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", source.state_file().display()))
        .await
        .unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(tables.len(), report.tables.len(), "{tables:?} {:?}", report.tables);
    for (table, copied) in &report.tables {
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(*copied, count as u64, "{table}");
        assert!(
            count > 0 || table == "autonomy_demotions",
            "{table} had nothing to copy"
        );
    }
    pool.close().await;

    let node = node_on(&target, keys.path()).await;
    let ChainVerification::Intact {
        entries: moved,
        head: moved_head,
        root: moved_root,
    } = node.verify_audit().await.unwrap()
    else {
        panic!("the copy does not verify on a node")
    };
    assert_eq!((moved, moved_head, moved_root), (entries, head, root));
    // The same log to a witness: the checkpoint signed on SQLite is extended on PostgreSQL.
    let (_, check) = node.verify_audit_against(&before.note, &verifier).await.unwrap();
    assert!(matches!(check, CheckpointCheck::Extends { .. }), "{check:?}");
    assert_eq!(
        node.checkpoint_verifier().await.unwrap().to_string(),
        verifier.to_string()
    );
    assert_eq!(
        serde_json::to_value(node.list_approvals("acme", None).await.unwrap()).unwrap(),
        serde_json::to_value(&approvals).unwrap()
    );
    assert_eq!(
        format!("{:?}", node.run("acme", "run-2").await.unwrap()),
        format!("{run:?}")
    );
    // Work goes on: ids continue after the copied ones, appends link to the copied head.
    let next = node.request_approval(&crate::new_approval()).await.unwrap();
    assert_eq!(next.id, approvals.iter().map(|request| request.id).max().unwrap() + 1);
    assert!(matches!(
        node.verify_audit().await.unwrap(),
        ChainVerification::Intact { entries: grown, .. } if grown == entries + 1
    ));

    // A second migration into the now non-empty target is refused; the target is unchanged.
    let error = control_plane::migrate_sqlite_to_postgres(&source.state_file(), None, &target, keys.path())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, control_plane::MigrateError::TargetNotEmpty { table, .. } if table == "audit"),
        "{error}"
    );
    assert!(!error.is_retryable());
    assert!(matches!(
        node.verify_audit().await.unwrap(),
        ChainVerification::Intact { entries: kept, .. } if kept == entries + 1
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_refuses_a_broken_source_and_a_foreign_key_and_leaves_the_target_empty() {
    use control_plane::MigrateError;
    let Some(url) = postgres() else { return };
    let source = busy_sqlite_state().await;

    // The key directory already holds another log's anchor key.
    let (target, _schema) = empty_target(&url).await;
    let keys = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(keys.path()).unwrap();
    control_plane::keys::load_or_create_exact::<32>(&keys.path().join("postgres.audit-key")).unwrap();
    let error = control_plane::migrate_sqlite_to_postgres(&source.state_file(), None, &target, keys.path())
        .await
        .unwrap_err();
    assert!(matches!(error, MigrateError::KeyMismatch { .. }), "{error}");
    assert!(!keys.path().join("postgres.checkpoint-key").exists());
    let node = node_on(&target, keys.path()).await;
    assert!(matches!(
        node.verify_audit().await.unwrap(),
        ChainVerification::Intact { entries: 0, .. }
    ));

    // A source whose audit log was edited is not copied (into an empty target).
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", source.state_file().display()))
        .await
        .unwrap();
    sqlx::raw_sql("DROP TRIGGER audit_no_update; UPDATE audit SET payload = '{\"n\":20}' WHERE seq = 2")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (target, _schema) = empty_target(&url).await;
    let keys = tempfile::tempdir().unwrap();
    let error = control_plane::migrate_sqlite_to_postgres(&source.state_file(), None, &target, keys.path())
        .await
        .unwrap_err();
    assert!(matches!(error, MigrateError::SourceBroken { seq: 2, .. }), "{error}");
    assert!(error.to_string().contains("nothing was copied"), "{error}");
    assert!(
        !keys.path().join("postgres.audit-key").exists(),
        "a refused source left a key behind"
    );

    // Not a state file at all.
    let error =
        control_plane::migrate_sqlite_to_postgres(std::path::Path::new("/nonexistent.db"), None, &target, keys.path())
            .await
            .unwrap_err();
    assert!(matches!(error, MigrateError::Store(StoreError::Open { .. })), "{error}");
}
