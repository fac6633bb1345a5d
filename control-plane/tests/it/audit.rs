//! The audit log is append-only and its hash chain names the first tampered entry.

use std::sync::Arc;

use control_plane::audit::{self, GENESIS_HASH};
use control_plane::{
    ChainVerification, ControlPlane, DispatchDetail, DispatchRecord, ManualClock, OutcomeKind, Role, StepContext,
};

use crate::{DEFAULT_POLICY, NOW, Plane, open_plane, plane, principal};

/// Appends one audit entry: a verdict on a pure skill for run `run-<n>`.
pub async fn append(control: &ControlPlane, n: i64) {
    let step = StepContext {
        run_id: format!("run-{n}"),
        step_id: "step-1".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    };
    let skill = plugin_abi::SkillSummary {
        id: "pii-redact".into(),
        version: semver::Version::new(0, 1, 0),
        side_effect: plugin_abi::SideEffect::Pure,
        capabilities: vec![],
        digest: "sha256:cafe".into(),
        cpu_metering: plugin_abi::CpuMetering::Fuel,
    };
    control
        .govern(
            &principal("alice", &[Role::Agent]),
            &step,
            "pii-redact",
            Some(&skill),
            &format!("sha256:{n}"),
        )
        .await
        .unwrap();
}

fn pool_url(plane: &Plane) -> String {
    format!("sqlite://{}", plane.state_file().display())
}

#[tokio::test]
async fn chain_links_each_entry_to_the_previous_one() {
    let plane = plane().await;
    let control = &plane.control;
    let ChainVerification::Intact { entries, head, root } = control.verify_audit().await.unwrap() else {
        panic!("a new log verifies")
    };
    assert_eq!((entries, head.as_str()), (0, GENESIS_HASH));
    // The empty tree's root (RFC 9162): SHA-256 of nothing.
    assert_eq!(root, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    append(control, 1).await;
    append(control, 2).await;
    let entries = control.audit_entries().await.unwrap();
    let (first, second) = (entries[0].clone(), entries[1].clone());
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!(first.prev_hash, GENESIS_HASH);
    assert_eq!(second.prev_hash, first.hash);
    // Every entry reads back as a typed event of the vocabulary.
    assert!(matches!(first.event().unwrap(), control_plane::AuditEvent::Verdict(_)));
    let ChainVerification::Intact { entries, head, .. } = control.verify_audit().await.unwrap() else {
        panic!("an untouched log verifies")
    };
    assert_eq!((entries, head), (2, second.hash));
}

/// ADR 0019: on SQLite, write units that queue while the writer's transaction is open join
/// it; each append still reads the head the one before it wrote, so the chain stays one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_transactions_and_keep_one_chain() {
    let plane = plane().await;
    let control = &plane.control;
    let before = control.commit_stats();
    let appends: Vec<_> = (1..=64)
        .map(|n| {
            let control = Arc::clone(control);
            tokio::spawn(async move { append(&control, n).await })
        })
        .collect();
    for append in appends {
        append.await.unwrap();
    }
    let after = control.commit_stats();
    let ChainVerification::Intact { entries, .. } = control.verify_audit().await.unwrap() else {
        panic!("concurrent appends broke the chain")
    };
    assert_eq!(entries, 64);
    let mut seqs: Vec<i64> = control
        .audit_entries()
        .await
        .unwrap()
        .iter()
        .map(|entry| entry.seq)
        .collect();
    seqs.dedup();
    assert_eq!(seqs, (1..=64).collect::<Vec<_>>());
    assert_eq!(after.commits - before.commits, 64);
    if !control.store_location().starts_with("postgres") {
        assert!(
            after.transactions - before.transactions < 64,
            "64 concurrent appends took {} transactions: none shared",
            after.transactions - before.transactions
        );
    }
}

#[tokio::test]
async fn updates_and_deletes_are_refused_by_the_database() {
    let plane = crate::sqlite_plane().await;
    append(&plane.control, 1).await;
    let pool = sqlx::SqlitePool::connect(&pool_url(&plane)).await.unwrap();
    for statement in ["UPDATE audit SET kind = 'x'", "DELETE FROM audit"] {
        let error = sqlx::query(statement).execute(&pool).await.unwrap_err();
        assert!(error.to_string().contains("the audit log is append-only"), "{error}");
    }
}

#[tokio::test]
async fn tampering_is_detected_at_the_first_broken_entry() {
    let plane = crate::sqlite_plane().await;
    let control = &plane.control;
    for n in 1..=4 {
        append(control, n).await;
    }
    // An attacker with write access to the file drops the triggers and edits entry 3.
    let pool = sqlx::SqlitePool::connect(&pool_url(&plane)).await.unwrap();
    sqlx::raw_sql("DROP TRIGGER audit_no_update; UPDATE audit SET payload = '{\"n\":30}' WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let ChainVerification::Broken {
        seq,
        reason,
        verified_before,
    } = control.verify_audit().await.unwrap()
    else {
        panic!()
    };
    assert_eq!((seq, verified_before), (3, 2));
    assert!(
        reason.starts_with("content does not hash to the stored hash"),
        "{reason}"
    );

    // Re-hashing entry 3 to hide the edit breaks the link from entry 4 instead.
    let entries = control.audit_entries().await.unwrap();
    let forged = audit::entry_hash(
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
    let ChainVerification::Broken { seq, reason, .. } = control.verify_audit().await.unwrap() else {
        panic!()
    };
    assert_eq!(seq, 4);
    assert!(reason.contains("does not match the previous entry's hash"), "{reason}");
}

#[tokio::test]
async fn reopening_keeps_everything_and_newer_schemas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let clock = Arc::new(ManualClock::new(NOW));
    {
        let control = open_plane(&path, DEFAULT_POLICY, Arc::clone(&clock)).await;
        append(&control, 1).await;
    }
    let control = open_plane(&path, DEFAULT_POLICY, clock).await;
    assert!(matches!(
        control.verify_audit().await.unwrap(),
        ChainVerification::Intact { entries: 1, .. }
    ));
    drop(control);

    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::raw_sql("PRAGMA user_version = 99").execute(&pool).await.unwrap();
    pool.close().await;
    let error = control_plane::Store::open(&path).await.unwrap_err();
    assert!(!error.is_retryable());
    assert!(
        error.to_string().contains(&format!(
            "has schema version 99; this agentd understands up to {}",
            control_plane::SCHEMA_VERSION
        )),
        "{error}"
    );
}

/// A control plane with entries 1..=n and a raw connection that bypasses it (the attacker's).
async fn tampered_setup(n: i64) -> (Plane, sqlx::SqlitePool) {
    let plane = crate::sqlite_plane().await;
    for i in 1..=n {
        append(&plane.control, i).await;
    }
    let pool = sqlx::SqlitePool::connect(&pool_url(&plane)).await.unwrap();
    sqlx::raw_sql("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete")
        .execute(&pool)
        .await
        .unwrap();
    (plane, pool)
}

async fn broken_at(plane: &Plane) -> (i64, String) {
    match plane.control.verify_audit().await.unwrap() {
        ChainVerification::Broken { seq, reason, .. } => (seq, reason),
        intact => panic!("tampering went unnoticed: {intact:?}"),
    }
}

#[tokio::test]
async fn deleting_reordering_and_truncating_are_detected() {
    // Delete a middle entry.
    let (plane, pool) = tampered_setup(5).await;
    sqlx::query("DELETE FROM audit WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let (seq, reason) = broken_at(&plane).await;
    assert_eq!(seq, 4);
    assert!(reason.contains("sequence gap"), "{reason}");

    // Reorder two entries (swap their contents but keep the sequence numbers).
    let (plane, pool) = tampered_setup(5).await;
    sqlx::raw_sql(
        "UPDATE audit SET seq = -2 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = -2",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (seq, _) = broken_at(&plane).await;
    assert_eq!(seq, 2);

    // Truncate the tail: the chain that is left is internally consistent, the anchor is not.
    let (plane, pool) = tampered_setup(5).await;
    sqlx::query("DELETE FROM audit WHERE seq > 3")
        .execute(&pool)
        .await
        .unwrap();
    let (seq, reason) = broken_at(&plane).await;
    assert_eq!(seq, 4);
    assert!(
        reason.starts_with("truncated: the anchor records 5 entries, the log holds 3"),
        "{reason}"
    );
}

#[tokio::test]
async fn re_hashing_the_tail_or_forging_the_anchor_is_detected() {
    let (plane, pool) = tampered_setup(5).await;
    // Edit entry 3 and recompute every hash from there on: the chain itself verifies again.
    sqlx::query("UPDATE audit SET payload = '{\"n\":30}' WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let entries = plane.control.audit_entries().await.unwrap();
    let mut prev = entries[1].hash.clone();
    for entry in &entries[2..] {
        let hash = audit::entry_hash(
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
        audit::verify_chain(&plane.control.audit_entries().await.unwrap()),
        ChainVerification::Intact { .. }
    ));
    let (seq, reason) = broken_at(&plane).await;
    assert_eq!(seq, 5);
    assert!(reason.contains("the tail was re-hashed"), "{reason}");

    // Moving the anchor to the forged head without the key does not help.
    sqlx::query("UPDATE audit_anchor SET hash = ?")
        .bind(&prev)
        .execute(&pool)
        .await
        .unwrap();
    let (_, reason) = broken_at(&plane).await;
    assert!(reason.contains("MAC does not verify"), "{reason}");
}

#[tokio::test]
async fn entries_appended_without_the_key_are_detected() {
    let (plane, pool) = tampered_setup(2).await;
    let entries = plane.control.audit_entries().await.unwrap();
    let forged = audit::entry_hash(&entries[1].hash, 3, 0, "verdict", "acme", "mallory@acme", "{}");
    sqlx::query(
        "INSERT INTO audit (seq, recorded_at_ms, kind, tenant, principal, payload, prev_hash, hash) VALUES (3, 0, 'verdict', 'acme', 'mallory@acme', '{}', ?, ?)",
    )
    .bind(&entries[1].hash)
    .bind(&forged)
    .execute(&pool)
    .await
    .unwrap();
    let (seq, reason) = broken_at(&plane).await;
    assert_eq!(seq, 3);
    assert!(reason.contains("appended without the anchor key"), "{reason}");
}

#[tokio::test]
async fn a_run_exports_as_prov_o_json_ld() {
    let plane = plane().await;
    let control = &plane.control;
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
        cpu_metering: plugin_abi::CpuMetering::Fuel,
    };
    control
        .govern(&alice, &step, "pii-redact", Some(&skill), "sha256:input")
        .await
        .unwrap();
    control
        .record_dispatch(
            &alice,
            &step,
            &DispatchRecord {
                skill_id: "pii-redact".into(),
                skill_version: Some("0.1.0".into()),
                digest: Some("sha256:cafe".into()),
                rung: Some("primary".into()),
                attempt: Some(1),
                max_attempts: Some(1),
                selection: None,
                outcome: OutcomeKind::Completed,
                retryable: Some(false),
                reason: None,
                detail: Some(DispatchDetail::Output {
                    output_digest: "sha256:output".into(),
                }),
                metrics: None,
            },
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
    assert_eq!(invocation["agentd:outcome"], "completed");
    // Other tenants see nothing of it.
    let other = control.provenance("globex", "run-7").await.unwrap();
    assert_eq!(other["@graph"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn entries_written_before_the_typed_vocabulary_read_back_as_events() {
    // Payloads exactly as the untyped writer of issue 5 produced them.
    let old = [
        (
            "dispatch",
            r#"{"outcome":{"attempt":1,"detail":{"outcome":"failed","failure":{"deadline_ms":500,"failure":"timeout","in_guest":true}},"digest":"sha256:aa","max_attempts":3,"metrics":{"denials":0,"execute_us":5,"fuel_consumed":9,"host_calls":0,"instantiate_us":3,"peak_memory_bytes":65536},"outcome":"timeout","retryable":true,"rung":"primary","selection":null,"skill_id":"spin-forever","skill_version":"0.1.0"},"step":{"run_id":"run-1","step_id":"step-1","traceparent":"tp"}}"#,
        ),
        (
            "dispatch",
            r#"{"outcome":{"outcome":"refused","reason":"unsupported obligation `x`","skill_id":"publish-report"},"step":{"run_id":"run-1","step_id":"step-1","traceparent":"tp"}}"#,
        ),
        (
            "approval-decision",
            r#"{"approval_id":3,"expires_at_ms":10,"input_digest":"sha256:bb","policy_version":"sha256:cc","run_id":"run-1","skill_id":"s","status":"expired","step_id":"step-1","was":"pending"}"#,
        ),
        (
            "approval-decision",
            r#"{"approval_id":4,"input_digest":"sha256:bb","policy_version":"sha256:cc","reason":null,"run_id":"run-2","skill_id":"s","status":"cancelled","step_id":"step-1"}"#,
        ),
        (
            "enforcement-change",
            r#"{"change":"policy-set","new_version":"sha256:2","old_version":"sha256:1","origin":"x","policies":3}"#,
        ),
        ("autonomy-demotion", r#"{"agent":"alice","reason":"r","skill":"demo"}"#),
    ];
    for (kind, payload) in old {
        let event = control_plane::AuditEvent::parse(kind, payload).unwrap_or_else(|error| panic!("{kind}: {error}"));
        assert_eq!(event.kind(), kind);
    }
    let control_plane::AuditEvent::ApprovalDecision(decided) =
        control_plane::AuditEvent::parse(old[2].0, old[2].1).unwrap()
    else {
        panic!()
    };
    assert!(matches!(decided, audit::ApprovalDecided::Expired(_)));
    let control_plane::AuditEvent::ApprovalDecision(decided) =
        control_plane::AuditEvent::parse(old[3].0, old[3].1).unwrap()
    else {
        panic!()
    };
    assert!(matches!(decided, audit::ApprovalDecided::Cancelled(_)));
    // A kind outside the vocabulary is an error, not a guess.
    assert!(control_plane::AuditEvent::parse("mystery", "{}").is_err());
}
