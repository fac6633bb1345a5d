//! Audit evidence that survives its writer: a tamper matrix (each case followed by an ordinary
//! run, then verify, locally and against a checkpoint kept outside the state directory),
//! checkpoints and proofs that check without the database, and a verify that writes nothing.

use std::path::Path;

use serde_json::json;

use crate::{Env, stderr, stdout, with_sqlite};

/// Re-hashes the chain from entry `from` on, as an attacker who edited it would.
fn rehash_from(env: &Env, from: i64) {
    with_sqlite(&env.state_dir().join("state.db"), async |pool| {
        let rows: Vec<(i64, i64, String, String, String, String, String)> = sqlx::query_as(
            "SELECT seq, recorded_at_ms, kind, tenant, principal, payload, prev_hash FROM audit ORDER BY seq",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let (mut prev,): (String,) = sqlx::query_as("SELECT hash FROM audit WHERE seq = ?")
            .bind(from - 1)
            .fetch_one(pool)
            .await
            .unwrap();
        for (seq, at, kind, tenant, principal, payload, _) in rows.into_iter().filter(|row| row.0 >= from) {
            let hash = control_plane::audit::entry_hash(&prev, seq, at, &kind, &tenant, &principal, &payload);
            sqlx::query("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?")
                .bind(&prev)
                .bind(&hash)
                .bind(seq)
                .execute(pool)
                .await
                .unwrap();
            prev = hash;
        }
    });
}

/// A state with `runs` pii-redact runs (two audit entries each), a checkpoint and its
/// verifier key saved outside the state directory.
fn setup(runs: usize) -> (Env, String, std::path::PathBuf, String) {
    let env = Env::new();
    let agent = env.token("alice", "agent");
    for n in 0..runs {
        let output = env.run_json("pii-redact", json!({ "text": format!("mail {n}@example.org") }), &agent);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let checkpoint = env.agentd(&["audit", "checkpoint"], None);
    assert!(checkpoint.status.success(), "{}", stderr(&checkpoint));
    let path = env.file("checkpoint.txt", &stdout(&checkpoint));
    let key = env.agentd(&["audit", "verifier-key"], None);
    assert!(key.status.success(), "{}", stderr(&key));
    (env, agent, path, stdout(&key).trim().to_owned())
}

/// `audit verify --checkpoint` as JSON: (exit ok, local status, checkpoint status, text).
fn verify(env: &Env, checkpoint: &Path, key: &str) -> (bool, String, String, String) {
    let output = env.agentd(
        &[
            "--json",
            "audit",
            "verify",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--key",
            key,
        ],
        None,
    );
    let value: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap_or_default();
    (
        output.status.success(),
        value["status"].as_str().unwrap_or_default().to_owned(),
        value["checkpoint"]["status"].as_str().unwrap_or_default().to_owned(),
        format!("{}{}", stdout(&output), stderr(&output)),
    )
}

#[test]
fn every_tampering_is_reported_and_an_append_after_it_fails_loudly() {
    struct Case {
        name: &'static str,
        tamper: fn(&Env),
        /// Whether an ordinary run afterwards must fail (the head no longer matches the anchor).
        append_fails: bool,
        /// What the checkpoint check must say.
        checkpoint: &'static str,
    }
    let cases = [
        Case {
            name: "byte flip inside entry 2",
            tamper: |env| {
                env.tamper_sql("DROP TRIGGER audit_no_update; UPDATE audit SET principal = 'alicf@acme' WHERE seq = 2")
            },
            append_fails: false,
            checkpoint: "diverged",
        },
        Case {
            name: "row 3 deleted with the triggers dropped",
            tamper: |env| env.tamper_sql("DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = 3"),
            append_fails: false,
            checkpoint: "diverged",
        },
        Case {
            name: "truncation to 4 entries",
            tamper: |env| env.tamper_sql("DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > 4"),
            append_fails: true,
            checkpoint: "diverged",
        },
        Case {
            name: "entry 3 edited and the tail re-hashed",
            tamper: |env| {
                env.tamper_sql(
                    "DROP TRIGGER audit_no_update; UPDATE audit SET payload = replace(payload, 'pii-redact', 'pii-redacx') WHERE seq = 3",
                );
                rehash_from(env, 3);
            },
            append_fails: true,
            checkpoint: "diverged",
        },
        Case {
            name: "anchor row deleted (and the log truncated)",
            tamper: |env| {
                env.tamper_sql(
                    "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > 4; DELETE FROM audit_anchor",
                )
            },
            append_fails: true,
            checkpoint: "diverged",
        },
        Case {
            name: "anchor table dropped (and the log truncated)",
            tamper: |env| {
                env.tamper_sql("DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > 4; DROP TABLE audit_anchor")
            },
            append_fails: true,
            checkpoint: "diverged",
        },
        Case {
            name: "tree state table dropped",
            tamper: |env| env.tamper_sql("DROP TABLE audit_log"),
            append_fails: true,
            checkpoint: "extends",
        },
        Case {
            name: "anchor key swapped",
            tamper: |env| std::fs::write(env.state_dir().join("state.db.audit-key"), [7u8; 32]).unwrap(),
            append_fails: true,
            checkpoint: "extends",
        },
        Case {
            name: "anchor key deleted (and the log truncated)",
            tamper: |env| {
                std::fs::remove_file(env.state_dir().join("state.db.audit-key")).unwrap();
                env.tamper_sql("DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > 4");
            },
            append_fails: true,
            checkpoint: "diverged",
        },
        Case {
            name: "the whole state replaced by a fresh one",
            tamper: |env| {
                for name in [
                    "state.db",
                    "state.db-wal",
                    "state.db-shm",
                    "state.db.audit-key",
                    "state.db.checkpoint-key",
                ] {
                    let _ = std::fs::remove_file(env.state_dir().join(name));
                }
            },
            append_fails: false,
            checkpoint: "diverged",
        },
    ];
    for case in cases {
        let (env, agent, checkpoint, key) = setup(3);
        let (ok, local, against, text) = verify(&env, &checkpoint, &key);
        assert!(
            ok && local == "intact" && against == "extends",
            "{}: before: {text}",
            case.name
        );
        (case.tamper)(&env);
        // An ordinary run after the tampering.
        let run = env.run_json("pii-redact", json!({ "text": "after" }), &agent);
        if case.append_fails {
            assert_eq!(run.status.code(), Some(1), "{}: the run went through", case.name);
            assert!(
                stderr(&run).contains("the audit evidence does not check out, so nothing is appended")
                    && (!case.name.starts_with("tree state")
                        || stderr(&run).contains("the audit tree state cannot be read")),
                "{}: {}",
                case.name,
                stderr(&run)
            );
        } else {
            assert!(run.status.success(), "{}: {}", case.name, stderr(&run));
        }
        let (ok, local, against, text) = verify(&env, &checkpoint, &key);
        assert!(!ok, "{}: verify passed after the tampering: {text}", case.name);
        assert_eq!(against, case.checkpoint, "{}: {text}", case.name);
        if case.name.starts_with("the whole state") {
            // Locally a fresh log is intact: only the checkpoint kept elsewhere can tell.
            assert_eq!(local, "intact", "{text}");
            assert!(text.contains("the log was replaced"), "{text}");
        } else {
            assert_eq!(local, "broken", "{}: {text}", case.name);
        }
    }
}

#[test]
fn checkpoints_and_proofs_check_without_the_database() {
    let (env, agent, checkpoint, key) = setup(2);
    let note = std::fs::read_to_string(&checkpoint).unwrap();
    // A C2SP checkpoint: origin, size, base64 root, blank line, signature line.
    let lines: Vec<&str> = note.lines().collect();
    assert!(lines[0].starts_with("agentd.local/"), "{note}");
    assert_eq!(lines[1], "4");
    assert_eq!(lines[3], "");
    assert!(lines[4].starts_with(&format!("\u{2014} {} ", lines[0])), "{note}");
    assert!(key.starts_with(&format!("{}+", lines[0])), "{key}");
    for n in 0..3 {
        let output = env.run_json("pii-redact", json!({ "text": format!("later {n}") }), &agent);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let (ok, local, against, text) = verify(&env, &checkpoint, &key);
    assert!(ok && local == "intact" && against == "extends", "{text}");

    // Inclusion of entry 3 in the current tree of 10.
    let proof = env.agentd(&["audit", "prove", "--entry", "3"], None);
    assert!(proof.status.success(), "{}", stderr(&proof));
    let proof_file = env.file("inclusion.json", &stdout(&proof));
    let checked = env.agentd(
        &["audit", "check-proof", proof_file.to_str().unwrap(), "--key", &key],
        None,
    );
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(
        stdout(&checked).contains("entry 3 (verdict) is in the log"),
        "{}",
        stdout(&checked)
    );
    // The same proof with its entry edited, or under another key, is refused.
    let mut forged: serde_json::Value = serde_json::from_str(&stdout(&proof)).unwrap();
    forged["entry"]["principal"] = json!("mallory@acme");
    let forged_file = env.file("forged.json", &forged.to_string());
    let refused = env.agentd(
        &["audit", "check-proof", forged_file.to_str().unwrap(), "--key", &key],
        None,
    );
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    let (_other_state, _, _, other) = setup(1);
    let refused = env.agentd(
        &["audit", "check-proof", proof_file.to_str().unwrap(), "--key", &other],
        None,
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("no valid signature"), "{}", stderr(&refused));

    // Consistency of the kept checkpoint (4 entries) with the current tree (10).
    let proof = env.agentd(&["audit", "prove", "--from", checkpoint.to_str().unwrap()], None);
    assert!(proof.status.success(), "{}", stderr(&proof));
    let proof_file = env.file("consistency.json", &stdout(&proof));
    let checked = env.agentd(
        &["audit", "check-proof", proof_file.to_str().unwrap(), "--key", &key],
        None,
    );
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(
        stdout(&checked).contains("of 10 entries extends its checkpoint of 4 entries unchanged"),
        "{}",
        stdout(&checked)
    );
    // A consistency proof whose hashes were altered is refused.
    let mut forged: serde_json::Value = serde_json::from_str(&stdout(&proof)).unwrap();
    forged["proof"][0] = json!("00".repeat(32));
    let forged_file = env.file("forged-consistency.json", &forged.to_string());
    let refused = env.agentd(
        &["audit", "check-proof", forged_file.to_str().unwrap(), "--key", &key],
        None,
    );
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
}

#[test]
fn verify_reads_a_read_only_copy_and_writes_nothing() {
    let (env, _agent, checkpoint, key) = setup(2);
    let copy = env.dir.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(env.state_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    // Fold the WAL into the copy so it is one self-contained file, then make it read-only.
    with_sqlite(&copy.join("state.db"), async |pool| {
        sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(pool)
            .await
            .unwrap();
    });
    for name in ["state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(copy.join(name));
    }
    let listing = |dir: &Path| -> Vec<(String, u64, std::time::SystemTime)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let metadata = entry.metadata().unwrap();
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    metadata.len(),
                    metadata.modified().unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(&copy).unwrap() {
        // Read-only and still private: key files readable by others are refused.
        std::fs::set_permissions(entry.unwrap().path(), std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o500)).unwrap();
    let before = listing(&copy);
    let digest_before = std::fs::read(copy.join("state.db")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_agentd"))
        .args(["--state-dir", copy.to_str().unwrap()])
        .args([
            "--policy",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../policies/default.cedar")
                .to_str()
                .unwrap(),
        ])
        .args([
            "audit",
            "verify",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--key",
            &key,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    assert!(
        stdout(&output).contains("audit log intact: 4 entries"),
        "{}",
        stdout(&output)
    );
    assert!(
        stdout(&output).contains("extends the checkpoint of 4 entries"),
        "{}",
        stdout(&output)
    );
    assert_eq!(listing(&copy), before, "verify created or changed a file");
    assert!(std::fs::read(copy.join("state.db")).unwrap() == digest_before);
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
}
