//! Admission: bounded input, a concurrency limit per skill version and a bounded queue
//! (backpressure), all as typed outcomes.

use std::sync::Arc;

use agent_runtime::{Outcome, Runtime, RuntimeConfig, RuntimeFailure, SkillFailure};

use crate::{assert_pool_slots_returned, package_copy, packages_dir, request};

/// spin-forever, packaged with `extra_limits` appended to its `[limits]` table.
async fn spin_forever_with(extra_limits: &str) -> (tempfile::TempDir, Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let package = package_copy(dir.path(), "spin-forever", |manifest| {
        format!("{manifest}{extra_limits}\n")
    });
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 4,
        ..RuntimeConfig::default()
    })
    .unwrap();
    runtime.load_package(&package).await.unwrap();
    (dir, runtime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_the_slot_holder_runs() {
    let (_dir, runtime) = spin_forever_with("max_concurrency = 1\nmax_queue = 0").await;
    let runtime = Arc::new(runtime);
    let skill = runtime.lookup("spin-forever").unwrap();
    let first = {
        let (runtime, skill) = (Arc::clone(&runtime), Arc::clone(&skill));
        tokio::spawn(async move { runtime.dispatch(&skill, &request(serde_json::json!({}), &[])).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let second = runtime.dispatch(&skill, &request(serde_json::json!({}), &[])).await;
    assert!(
        matches!(
            second.outcome,
            Outcome::Failed {
                failure: RuntimeFailure::Overloaded {
                    in_flight: 1,
                    queued: 0
                }
            }
        ),
        "{:?}",
        second.outcome
    );
    assert!(second.outcome.is_retryable());
    assert!(
        started.elapsed() < std::time::Duration::from_millis(100),
        "backpressure must not wait"
    );
    let first = first.await.unwrap();
    assert_eq!(first.outcome.name(), "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_waits_for_the_slot() {
    let (_dir, runtime) = spin_forever_with("max_concurrency = 1\nmax_queue = 1").await;
    let runtime = Arc::new(runtime);
    let skill = runtime.lookup("spin-forever").unwrap();
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let (runtime, skill) = (Arc::clone(&runtime), Arc::clone(&skill));
            tokio::spawn(async move { runtime.dispatch(&skill, &request(serde_json::json!({}), &[])).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().outcome.name(), "timeout");
    }
    // One after the other: two 500 ms deadlines.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn oversized_input_is_invalid_input_before_any_instance_exists() {
    let runtime = crate::runtime_with_packages(None).await;
    let skill = crate::skill(&runtime, "pii-redact");
    let huge = "x".repeat(agent_runtime::MAX_INPUT_BYTES);
    let report = runtime
        .dispatch(&skill, &request(serde_json::json!({ "text": huge }), &[]))
        .await;
    assert!(
        matches!(&report.outcome, Outcome::SkillFailed { error: SkillFailure::InvalidInput(message) } if message.contains("the limit is")),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.metrics.instantiate_us, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_runaway_runs_leave_a_benign_skill_unchanged() {
    // spin-forever with a 5 ms deadline, so a thousand runs take seconds, not minutes.
    let dir = tempfile::tempdir().unwrap();
    let hostile = package_copy(dir.path(), "spin-forever", |manifest| {
        manifest.replace("deadline_ms = 500", "deadline_ms = 5")
    });
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 4,
        ..RuntimeConfig::default()
    })
    .unwrap();
    runtime.load_package(&hostile).await.unwrap();
    runtime.load_package(&packages_dir().join("pii-redact")).await.unwrap();
    let benign = runtime.lookup("pii-redact").unwrap();
    let hostile = runtime.lookup("spin-forever").unwrap();
    let input = serde_json::json!({ "text": "mail ops@example.org from 10.0.0.1" });
    let before = runtime.dispatch(&benign, &request(input.clone(), &[])).await;
    for _ in 0..1_000 {
        let report = runtime.dispatch(&hostile, &request(serde_json::json!({}), &[])).await;
        assert_eq!(report.outcome.name(), "timeout");
    }
    let after = runtime.dispatch(&benign, &request(input, &[])).await;
    assert_eq!(before.outcome.name(), "completed");
    assert_eq!(
        serde_json::to_string(&before.outcome).unwrap(),
        serde_json::to_string(&after.outcome).unwrap(),
        "the benign skill's result changed after 1,000 hostile runs"
    );
    // Every pooled slot was returned: as many concurrent instances as the pool holds still fit.
    assert_pool_slots_returned(Arc::new(runtime), benign, 4).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_spinning_guest_yields_its_thread_at_every_epoch_tick() {
    // One executor thread: if the guest held it, nothing else could run until its deadline.
    let (_dir, runtime) = spin_forever_with("").await;
    let runtime = Arc::new(runtime);
    let skill = runtime.lookup("spin-forever").unwrap();
    let spinner = {
        let (runtime, skill) = (Arc::clone(&runtime), Arc::clone(&skill));
        tokio::spawn(async move { runtime.dispatch(&skill, &request(serde_json::json!({}), &[])).await })
    };
    // This timer fires while the 500 ms guest still spins, on the same thread.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(
        !spinner.is_finished(),
        "the timer only fired after the guest gave its thread back"
    );
    let report = spinner.await.unwrap();
    assert_eq!(
        report.outcome,
        Outcome::Failed {
            failure: RuntimeFailure::Timeout {
                deadline_ms: 500,
                in_guest: true
            }
        }
    );
}
