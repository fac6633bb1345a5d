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

/// A store with entries 1..=n and a raw connection that bypasses it (the attacker's).
async fn tampered_setup(n: i64) -> (tempfile::TempDir, Store, sqlx::SqlitePool) {
    let (dir, store) = temp_store().await;
    let alice = principal("alice", &[Role::Agent]);
    for i in 1..=n {
        store.append_audit("verdict", &alice, &json!({ "n": i })).await.unwrap();
    }
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("state.db").display()))
        .await
        .unwrap();
    sqlx::raw_sql("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete")
        .execute(&pool)
        .await
        .unwrap();
    (dir, store, pool)
}

async fn broken_at(store: &Store) -> (i64, String) {
    match store.verify_audit().await.unwrap() {
        ChainVerification::Broken { seq, reason, .. } => (seq, reason),
        intact => panic!("tampering went unnoticed: {intact:?}"),
    }
}

#[tokio::test]
async fn deleting_reordering_and_truncating_are_detected() {
    // Delete a middle entry.
    let (_dir, store, pool) = tampered_setup(5).await;
    sqlx::query("DELETE FROM audit WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let (seq, reason) = broken_at(&store).await;
    assert_eq!(seq, 4);
    assert!(reason.contains("sequence gap"), "{reason}");

    // Reorder two entries (swap their contents but keep the sequence numbers).
    let (_dir, store, pool) = tampered_setup(5).await;
    sqlx::raw_sql(
        "UPDATE audit SET seq = -2 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = -2",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (seq, _) = broken_at(&store).await;
    assert_eq!(seq, 2);

    // Truncate the tail: the chain that is left is internally consistent, the anchor is not.
    let (_dir, store, pool) = tampered_setup(5).await;
    sqlx::query("DELETE FROM audit WHERE seq > 3")
        .execute(&pool)
        .await
        .unwrap();
    let (seq, reason) = broken_at(&store).await;
    assert_eq!(seq, 4);
    assert!(
        reason.starts_with("truncated: the anchor records 5 entries, the log holds 3"),
        "{reason}"
    );
}

#[tokio::test]
async fn re_hashing_the_tail_or_forging_the_anchor_is_detected() {
    let (_dir, store, pool) = tampered_setup(5).await;
    // Edit entry 3 and recompute every hash from there on: the chain itself verifies again.
    sqlx::query("UPDATE audit SET payload = '{\"n\":30}' WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let entries = store.audit_entries().await.unwrap();
    let mut prev = entries[1].hash.clone();
    for entry in &entries[2..] {
        let hash = control_plane::store::entry_hash(
            &prev,
            entry.seq,
            entry.recorded_at_ms,
            &entry.kind,
            &entry.tenant,
            &entry.principal,
            &entry.payload,
        );
        sqlx::query("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?")
            .bind(&prev)
            .bind(&hash)
            .bind(entry.seq)
            .execute(&pool)
            .await
            .unwrap();
        prev = hash;
    }
    assert!(matches!(
        control_plane::store::verify_chain(&store.audit_entries().await.unwrap()),
        ChainVerification::Intact { .. }
    ));
    let (seq, reason) = broken_at(&store).await;
    assert_eq!(seq, 5);
    assert!(reason.contains("the tail was re-hashed"), "{reason}");

    // Moving the anchor to the forged head without the key does not help.
    sqlx::query("UPDATE audit_anchor SET hash = ?")
        .bind(&prev)
        .execute(&pool)
        .await
        .unwrap();
    let (_, reason) = broken_at(&store).await;
    assert!(reason.contains("MAC does not verify"), "{reason}");
}

#[tokio::test]
async fn entries_appended_without_the_key_are_detected() {
    let (_dir, store, pool) = tampered_setup(2).await;
    let entries = store.audit_entries().await.unwrap();
    let forged = control_plane::store::entry_hash(&entries[1].hash, 3, 0, "verdict", "acme", "mallory@acme", "{}");
    sqlx::query(
        "INSERT INTO audit (seq, recorded_at_ms, kind, tenant, principal, payload, prev_hash, hash) VALUES (3, 0, 'verdict', 'acme', 'mallory@acme', '{}', ?, ?)",
    )
    .bind(&entries[1].hash)
    .bind(&forged)
    .execute(&pool)
    .await
    .unwrap();
    let (seq, reason) = broken_at(&store).await;
    assert_eq!(seq, 3);
    assert!(reason.contains("appended without the anchor key"), "{reason}");
}

#[tokio::test]
async fn a_run_exports_as_prov_o_json_ld() {
    use control_plane::{ControlPlane, Identity, IdentityConfig, PolicyEngine, StepContext};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).await.unwrap();
    let policy = PolicyEngine::from_text(include_str!("../../../policies/default.cedar"), "default").unwrap();
    let control = ControlPlane::new(
        Identity::from_secret(&[3; 32], IdentityConfig::default()).unwrap(),
        policy,
        store,
    );
    let alice = principal("alice", &[Role::Agent]);
    let step = StepContext {
        run_id: "run-7".into(),
        step_id: "step-1".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    };
    let skill = plugin_abi::SkillSummary {
        id: "pii-redact".into(),
        version: semver::Version::new(0, 1, 0),
        side_effect: plugin_abi::SideEffect::Pure,
        capabilities: vec![],
        digest: "sha256:cafe".into(),
    };
    control
        .govern(&alice, &step, "pii-redact", Some(&skill), "sha256:input")
        .await
        .unwrap();
    control
        .record_dispatch(
            &alice,
            &step,
            &json!({ "outcome": "completed", "detail": { "output_digest": "sha256:output" } }),
        )
        .await
        .unwrap();
    let document = control.provenance("acme", "run-7").await.unwrap();
    assert_eq!(document["@context"]["prov"], "http://www.w3.org/ns/prov#");
    let graph = document["@graph"].as_array().unwrap();
    let node = |id: &str| {
        graph
            .iter()
            .find(|n| n["@id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {document:#}"))
    };
    let invocation = node("urn:agentd:invocation:run-7/step-1");
    assert_eq!(invocation["@type"], "prov:Activity");
    assert_eq!(invocation["prov:used"][0]["@id"], "urn:agentd:digest:sha256:input");
    assert_eq!(
        invocation["prov:generated"][0]["@id"],
        "urn:agentd:digest:sha256:output"
    );
    let association = &invocation["prov:qualifiedAssociation"][0];
    assert_eq!(association["prov:agent"]["@id"], "urn:agentd:skill:pii-redact@0.1.0");
    assert!(
        association["prov:hadPlan"]["@id"]
            .as_str()
            .unwrap()
            .starts_with("urn:agentd:policy:sha256:")
    );
    let skill_agent = node("urn:agentd:skill:pii-redact@0.1.0");
    assert_eq!(
        skill_agent["prov:actedOnBehalfOf"]["@id"],
        "urn:agentd:principal:alice@acme"
    );
    assert_eq!(node("urn:agentd:principal:alice@acme")["@type"], "prov:Agent");
    // Other tenants see nothing of it.
    let other = control.provenance("globex", "run-7").await.unwrap();
    assert_eq!(other["@graph"].as_array().unwrap().len(), 1);
}
