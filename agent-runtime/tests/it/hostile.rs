//! Hostile plugins: each fault maps to exactly one typed outcome, the host stays up, and after
//! 1,000 hostile runs in a row a benign skill's result is unchanged.

use std::sync::Arc;

use agent_runtime::{Outcome, Runtime, RuntimeConfig, RuntimeFailure, SkillFailure};
use serde_json::json;

use crate::{assert_pool_slots_returned, request, runtime_with_packages, skill, test_code_cache};

/// Runs `id` on `input` with no grants and returns its outcome.
async fn outcome(runtime: &Runtime, id: &str, input: serde_json::Value) -> Outcome {
    runtime
        .dispatch(&skill(runtime, id), &request(input, &[]))
        .await
        .outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_plugin_maps_to_exactly_one_typed_outcome() {
    let workspace = tempfile::tempdir().unwrap();
    let runtime = runtime_with_packages(Some(workspace.path())).await;

    let spin = outcome(&runtime, "spin-forever", json!({})).await;
    assert_eq!(
        spin,
        Outcome::Failed {
            failure: RuntimeFailure::Timeout {
                deadline_ms: 500,
                in_guest: true
            }
        }
    );

    let bomb = outcome(&runtime, "memory-bomb", json!({})).await;
    assert_eq!(
        bomb,
        Outcome::Failed {
            failure: RuntimeFailure::MemoryLimit {
                limit_bytes: 16 * 1024 * 1024
            }
        }
    );

    let recursion = outcome(&runtime, "deep-recursion", json!({ "depth": 100_000_000u64 })).await;
    assert!(
        matches!(&recursion, Outcome::Failed { failure: RuntimeFailure::Trap { message, .. } } if message.contains("call stack exhausted")),
        "{recursion:?}"
    );
    // A shallow recursion of the same skill completes: the trap is the depth, not the skill.
    assert_eq!(
        outcome(&runtime, "deep-recursion", json!({ "depth": 1000 }))
            .await
            .name(),
        "completed"
    );

    let huge = outcome(&runtime, "huge-output", json!({ "bytes": 9 * 1024 * 1024 })).await;
    assert!(
        matches!(&huge, Outcome::Failed { failure: RuntimeFailure::InvalidOutput { message } } if message.contains("the limit is 8388608")),
        "{huge:?}"
    );

    let started = std::time::Instant::now();
    let slow = outcome(&runtime, "slow-host-call", json!({ "sleep_ms": 60_000 })).await;
    assert_eq!(
        slow,
        Outcome::Failed {
            failure: RuntimeFailure::Timeout {
                deadline_ms: 300,
                in_guest: false
            }
        }
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let invalid = outcome(&runtime, "invalid-output", json!({})).await;
    assert!(
        matches!(&invalid, Outcome::Failed { failure: RuntimeFailure::InvalidOutput { message } } if message.contains("line 1")),
        "{invalid:?}"
    );

    let ungranted = outcome(&runtime, "ungranted-capability", json!({})).await;
    assert!(
        matches!(&ungranted, Outcome::Failed { failure: RuntimeFailure::CapabilityDenied { capability, .. } } if *capability == "fs.write:secrets/stolen.txt".parse::<plugin_abi::Capability>().unwrap()),
        "{ungranted:?}"
    );
    assert!(
        !workspace.path().join("acme/secrets").exists(),
        "a denied write left a file"
    );

    // flaky without its key-value grants cannot count, and says which grant is missing.
    let flaky = outcome(&runtime, "flaky", json!({ "fail_first": 1 })).await;
    assert!(
        matches!(&flaky, Outcome::Failed { failure: RuntimeFailure::CapabilityDenied { capability, .. } } if capability.to_string().starts_with("kv.read:attempts/")),
        "{flaky:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_fails_its_first_attempts_then_succeeds_and_its_count_survives_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let kv_path = state.path().join("kv.sqlite");
    let grants = ["kv.read:attempts/", "kv.write:attempts/"];
    let open = || async {
        let runtime = Runtime::new(RuntimeConfig {
            kv_path: Some(kv_path.clone()),
            code_cache: Some(test_code_cache()),
            ..RuntimeConfig::default()
        })
        .unwrap();
        runtime
            .load_package(&crate::packages_dir().join("flaky"))
            .await
            .unwrap();
        runtime
    };
    let runtime = open().await;
    let flaky = skill(&runtime, "flaky");
    let input = json!({ "fail_first": 2 });
    for attempt in 1..=2 {
        let report = runtime.dispatch(&flaky, &request(input.clone(), &grants)).await;
        assert!(
            matches!(&report.outcome, Outcome::SkillFailed { error: SkillFailure::Transient(message) } if message.contains(&format!("attempt {attempt} "))),
            "{:?}",
            report.outcome
        );
        assert!(report.outcome.is_retryable());
    }
    drop(runtime);
    // A new runtime on the same store: the count of this idempotency key was durable.
    let runtime = open().await;
    let report = runtime
        .dispatch(&skill(&runtime, "flaky"), &request(input.clone(), &grants))
        .await;
    assert_eq!(
        report.outcome,
        Outcome::Completed {
            output: json!({ "attempt": 3 }).as_object().unwrap().clone()
        }
    );
    // Another tenant has its own namespace: its first attempt fails again.
    let mut other = request(input, &grants);
    other.tenant = "globex".into();
    let report = runtime.dispatch(&skill(&runtime, "flaky"), &other).await;
    assert_eq!(report.outcome.name(), "transient");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mixed_hostile_runs_leave_a_benign_skill_unchanged() {
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 8,
        code_cache: Some(test_code_cache()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    for name in [
        "pii-redact",
        "memory-bomb",
        "deep-recursion",
        "invalid-output",
        "ungranted-capability",
    ] {
        runtime.load_package(&crate::packages_dir().join(name)).await.unwrap();
    }
    let benign = skill(&runtime, "pii-redact");
    let input = json!({ "text": "mail ops@example.org from 10.0.0.1" });
    let before = runtime.dispatch(&benign, &request(input.clone(), &[])).await;
    assert_eq!(before.outcome.name(), "completed");
    let hostile = [
        ("memory-bomb", json!({}), "memory-limit"),
        ("deep-recursion", json!({ "depth": 100_000_000u64 }), "trap"),
        ("invalid-output", json!({}), "invalid-output"),
        ("ungranted-capability", json!({}), "capability-denied"),
    ];
    for round in 0..1_000 {
        let (id, hostile_input, expected) = &hostile[round % hostile.len()];
        let report = runtime
            .dispatch(&skill(&runtime, id), &request(hostile_input.clone(), &[]))
            .await;
        assert_eq!(report.outcome.name(), *expected, "round {round}: {:?}", report.outcome);
    }
    let after = runtime.dispatch(&benign, &request(input, &[])).await;
    assert_eq!(
        serde_json::to_string(&before.outcome).unwrap(),
        serde_json::to_string(&after.outcome).unwrap(),
        "the benign skill's result changed after 1,000 hostile runs"
    );
    // Every pooled slot was returned: as many concurrent instances as the pool holds still fit.
    assert_pool_slots_returned(Arc::new(runtime), benign, 8).await;
}

/// Review finding: a `describe` that spins held every command for the manifest's deadline (up
/// to 600 s). spin-describe declares that 600 s ceiling; loading it gives up at describe's own
/// deadline, refuses the package with a message naming it, and the runtime loads the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_describe_is_stopped_at_its_own_deadline() {
    let package = crate::packages_dir()
        .with_file_name("plugins-refused")
        .join("spin-describe");
    let manifest = std::fs::read_to_string(package.join("skill.toml")).unwrap();
    assert!(manifest.contains("deadline_ms = 600000"), "{manifest}");
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 4,
        code_cache: Some(test_code_cache()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let error = runtime.load_package(&package).await.unwrap_err();
    let agent_runtime::PackageError::Describe { message, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(
        message,
        &format!(
            "it did not return within {} ms, the deadline of `describe` (which only returns constants)",
            agent_runtime::loader::DESCRIBE_DEADLINE_MS
        )
    );
    assert!(runtime.lookup("spin-describe").is_none());
    runtime
        .load_package(&crate::packages_dir().join("noop"))
        .await
        .expect("the runtime still loads a good package");
}

/// Issue 16: a schema `describe` returns that is not JSON was accepted and never used.
/// bad-schema's input schema is `not json at all {`: the package is refused naming the schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_whose_schema_is_not_json_is_refused_naming_the_schema() {
    let package = crate::packages_dir()
        .with_file_name("plugins-refused")
        .join("bad-schema");
    let runtime = crate::empty_runtime();
    let error = runtime.load_package(&package).await.unwrap_err();
    let agent_runtime::PackageError::Schema {
        error: schema_error, ..
    } = &error
    else {
        panic!("{error}")
    };
    assert!(
        matches!(
            schema_error,
            agent_runtime::SchemaError::NotJson {
                role: agent_runtime::SchemaRole::Input,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("the input schema is not JSON"), "{error}");
    assert!(runtime.lookup("bad-schema").is_none());
}

/// Issue 16: output that parses but contradicts the skill's own output schema is refused as
/// `invalid-output` naming where, and output that matches it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_off_its_own_schema_is_invalid_output_naming_the_pointer() {
    let runtime = crate::empty_runtime();
    runtime
        .load_package(&crate::packages_dir().join("invalid-output"))
        .await
        .unwrap();
    let off = outcome(&runtime, "invalid-output", json!({ "mode": "off-schema" })).await;
    let Outcome::Failed {
        failure: RuntimeFailure::InvalidOutput { message },
    } = &off
    else {
        panic!("{off:?}")
    };
    assert!(
        message.starts_with("the output does not match the skill's output schema: at /redacted:"),
        "{message}"
    );
    assert!(!off.is_retryable());
    let valid = outcome(&runtime, "invalid-output", json!({ "mode": "valid" })).await;
    assert_eq!(valid.name(), "completed", "{valid:?}");
}

/// Issue 16: a guest's stdout and stderr were dropped, so a panic's or an exception's message
/// was lost. The trap's outcome carries the end of both streams, and a warm instance's next
/// call does not inherit them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_carries_the_tail_of_the_guests_stdout_and_stderr() {
    let runtime = crate::empty_runtime();
    runtime
        .load_package(&crate::packages_dir().join("invalid-output"))
        .await
        .unwrap();
    let trapped = outcome(&runtime, "invalid-output", json!({ "mode": "panic" })).await;
    let Outcome::Failed {
        failure: RuntimeFailure::Trap {
            output: Some(output), ..
        },
    } = &trapped
    else {
        panic!("{trapped:?}")
    };
    assert_eq!(output.stdout, "invalid-output: about to fail on purpose\n");
    assert!(
        output.stderr.starts_with("invalid-output: stderr before the panic\n"),
        "{output:?}"
    );
    assert!(
        output.stderr.contains("invalid-output was asked to panic"),
        "{output:?}"
    );
    assert_eq!(output.stderr_bytes, output.stderr.len() as u64);
    // The audit entry records the outcome as JSON: the streams are in it.
    let audited = serde_json::to_value(&trapped).unwrap();
    assert!(
        audited["failure"]["output"]["stderr"]
            .as_str()
            .is_some_and(|text| text.contains("asked to panic")),
        "{audited}"
    );
    // A skill that traps without writing anything has no `output` at all.
    runtime
        .load_package(&crate::packages_dir().join("deep-recursion"))
        .await
        .unwrap();
    let silent = outcome(&runtime, "deep-recursion", json!({ "depth": 100_000_000u64 })).await;
    assert!(
        matches!(
            &silent,
            Outcome::Failed {
                failure: RuntimeFailure::Trap { output: None, .. }
            }
        ),
        "{silent:?}"
    );
}

/// `limits.cpu = "epoch"` (ADR 0017): the skill runs on the engine without fuel, burns and
/// reports no fuel, gives the same answer, and a guest that spins is still stopped at its
/// deadline, now by the epoch alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_only_skills_run_without_fuel_and_a_spinning_one_still_stops_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let epoch_only = |manifest: String| manifest.replace("[limits]\n", "[limits]\ncpu = \"epoch\"\n");
    let runtime = crate::empty_runtime();
    let redact = runtime
        .load_package(&crate::package_copy(dir.path(), "pii-redact", epoch_only))
        .await
        .unwrap();
    assert_eq!(redact.cpu_metering, plugin_abi::CpuMetering::Epoch);
    let spin = crate::package_copy(dir.path(), "spin-forever", |manifest| {
        epoch_only(manifest).replace("deadline_ms = 500", "deadline_ms = 200")
    });
    runtime.load_package(&spin).await.unwrap();

    let metered = runtime_with_packages(None).await;
    let input = serde_json::json!({ "text": "mail jane@example.org or call +49 30 1234567" });
    let with_fuel = metered
        .dispatch(&skill(&metered, "pii-redact"), &request(input.clone(), &[]))
        .await;
    let without = runtime
        .dispatch(&skill(&runtime, "pii-redact"), &request(input, &[]))
        .await;
    match (&with_fuel.outcome, &without.outcome) {
        (Outcome::Completed { output: a }, Outcome::Completed { output: b }) => assert_eq!(a, b),
        other => panic!("{other:?}"),
    }
    assert!(with_fuel.metrics.fuel_consumed > 0);
    assert_eq!(without.metrics.fuel_consumed, 0);

    let started = std::time::Instant::now();
    let spun = runtime
        .dispatch(&skill(&runtime, "spin-forever"), &request(serde_json::json!({}), &[]))
        .await;
    assert!(
        matches!(
            spun.outcome,
            Outcome::Failed {
                failure: RuntimeFailure::Timeout {
                    deadline_ms: 200,
                    in_guest: true
                }
            }
        ),
        "{:?}",
        spun.outcome
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
