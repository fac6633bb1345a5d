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
