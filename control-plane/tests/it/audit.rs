//! The audit log is append-only and its hash chain names the first tampered entry.

use control_plane::store::GENESIS_HASH;
use control_plane::{ChainVerification, Role, Store};
use serde_json::json;

use crate::{principal, temp_store};

#[tokio::test]
async fn chain_links_each_entry_to_the_previous_one() {
    let (_dir, store) = temp_store().await;
    assert_eq!(
        store.verify_audit().await.unwrap(),
        ChainVerification::Intact {
            entries: 0,
            head: GENESIS_HASH.into()
        }
    );
    let alice = principal("alice", &[Role::Agent]);
    let first = store.append_audit("verdict", &alice, &json!({ "n": 1 })).await.unwrap();
    let second = store
        .append_audit("dispatch", &alice, &json!({ "n": 2 }))
        .await
        .unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!(first.prev_hash, GENESIS_HASH);
    assert_eq!(second.prev_hash, first.hash);
    assert_eq!(
        store.verify_audit().await.unwrap(),
        ChainVerification::Intact {
            entries: 2,
            head: second.hash
        }
    );
}

#[tokio::test]
async fn updates_and_deletes_are_refused_by_the_database() {
    let (dir, store) = temp_store().await;
    store
        .append_audit("verdict", &principal("alice", &[Role::Agent]), &json!({}))
        .await
        .unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("state.db").display()))
        .await
        .unwrap();
    for statement in ["UPDATE audit SET kind = 'x'", "DELETE FROM audit"] {
        let error = sqlx::query(statement).execute(&pool).await.unwrap_err();
        assert!(error.to_string().contains("the audit log is append-only"), "{error}");
    }
}

#[tokio::test]
async fn tampering_is_detected_at_the_first_broken_entry() {
    let (dir, store) = temp_store().await;
    let alice = principal("alice", &[Role::Agent]);
    for n in 1..=4 {
        store.append_audit("verdict", &alice, &json!({ "n": n })).await.unwrap();
    }
    // An attacker with write access to the file drops the triggers and edits entry 3.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("state.db").display()))
        .await
        .unwrap();
    sqlx::raw_sql("DROP TRIGGER audit_no_update; UPDATE audit SET payload = '{\"n\":30}' WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let ChainVerification::Broken {
        seq,
        reason,
        verified_before,
    } = store.verify_audit().await.unwrap()
    else {
        panic!()
    };
    assert_eq!((seq, verified_before), (3, 2));
    assert!(
        reason.starts_with("content does not hash to the stored hash"),
        "{reason}"
    );

    // Re-hashing entry 3 to hide the edit breaks the link from entry 4 instead.
    let entries = store.audit_entries().await.unwrap();
    let forged = control_plane::store::entry_hash(
        &entries[2].prev_hash,
        3,
        entries[2].recorded_at_ms,
        &entries[2].kind,
        &entries[2].tenant,
        &entries[2].principal,
        &entries[2].payload,
    );
    sqlx::query("UPDATE audit SET hash = ? WHERE seq = 3")
        .bind(&forged)
        .execute(&pool)
        .await
        .unwrap();
    let ChainVerification::Broken { seq, reason, .. } = store.verify_audit().await.unwrap() else {
        panic!()
    };
    assert_eq!(seq, 4);
    assert!(reason.contains("does not match the previous entry's hash"), "{reason}");
}

#[tokio::test]
async fn reopening_keeps_everything_and_newer_schemas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let store = Store::open(&path).await.unwrap();
        store
            .append_audit("verdict", &principal("alice", &[Role::Agent]), &json!({}))
            .await
            .unwrap();
    }
    let store = Store::open(&path).await.unwrap();
    assert!(matches!(
        store.verify_audit().await.unwrap(),
        ChainVerification::Intact { entries: 1, .. }
    ));
    drop(store);

    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::raw_sql("PRAGMA user_version = 99").execute(&pool).await.unwrap();
    pool.close().await;
    let error = Store::open(&path).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("has schema version 99; this agentd understands up to 2"),
        "{error}"
    );
}
