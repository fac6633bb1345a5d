//! The kernel emitter: replays are stored once, conflicts are errors, concurrency is safe.

use control_plane::{ConnectorCall, Cost, CostStatus, EmitError, LlmCall, TraceContext};

use crate::plane;

fn call(tokens: u64) -> LlmCall {
    LlmCall {
        run_id: "run-1".into(),
        provider: "local".into(),
        model: "tiny".into(),
        input_tokens: tokens,
        output_tokens: 10,
        cost: Cost {
            micro_eur: Some(1_250),
            status: CostStatus::Calculated,
            pricing_version: "local-2026-11".into(),
        },
    }
}

#[tokio::test]
async fn a_thousand_replays_store_one_record_and_different_content_conflicts() {
    let plane = plane().await;
    let emitter = plane.control.emitter();
    let trace = TraceContext::new_root();
    let first = emitter.record_llm_call("acme", &trace, &call(100)).await.unwrap();
    assert!(!first.replayed);
    for _ in 0..1_000 {
        let again = emitter.record_llm_call("acme", &trace, &call(100)).await.unwrap();
        assert_eq!(again.id, first.id);
        assert!(again.replayed);
    }
    assert_eq!(emitter.record_count("acme").await.unwrap(), 1);
    let error = emitter.record_llm_call("acme", &trace, &call(101)).await.unwrap_err();
    assert!(matches!(error, EmitError::IdempotencyConflict(_)), "{error}");
    assert!(!error.is_retryable());
    assert_eq!(emitter.record_count("acme").await.unwrap(), 1);
    // Another span is another logical identity.
    emitter
        .record_llm_call("acme", &trace.child(), &call(101))
        .await
        .unwrap();
    assert_eq!(emitter.spent_micro_eur("acme", Some("run-1")).await.unwrap(), 2_500);
    assert_eq!(emitter.spent_micro_eur("acme", Some("run-2")).await.unwrap(), 0);
}

#[tokio::test]
async fn a_hundred_concurrent_identical_emits_store_one_record() {
    let plane = plane().await;
    let emitter = plane.control.emitter();
    let trace = TraceContext::new_root();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let emitter = emitter.clone();
        tasks.push(tokio::spawn(async move {
            emitter
                .emit_telemetry(
                    "acme",
                    &trace,
                    "skill.invoked",
                    serde_json::json!({ "skill": "pii-redact", "fuel": 42 }),
                )
                .await
        }));
    }
    let mut fresh = 0;
    for task in tasks {
        if !task.await.unwrap().unwrap().replayed {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(emitter.record_count("acme").await.unwrap(), 1);
}

#[tokio::test]
async fn inconsistent_costs_are_refused() {
    let plane = plane().await;
    let emitter = plane.control.emitter();
    let trace = TraceContext::new_root();
    let mut connector = ConnectorCall {
        run_id: "run-1".into(),
        connector: "http".into(),
        operation: "GET /v1/x".into(),
        outcome: "ok".into(),
        duration_us: 1_200,
        cost: Cost {
            micro_eur: Some(10),
            status: CostStatus::Pending,
            pricing_version: "p1".into(),
        },
    };
    assert!(matches!(
        emitter.record_connector_call("acme", &trace, &connector).await,
        Err(EmitError::Invalid { .. })
    ));
    connector.cost = Cost {
        micro_eur: None,
        status: CostStatus::Unavailable,
        pricing_version: String::new(),
    };
    assert!(matches!(
        emitter.record_connector_call("acme", &trace, &connector).await,
        Err(EmitError::Invalid { .. })
    ));
    connector.cost.pricing_version = "p1".into();
    emitter.record_connector_call("acme", &trace, &connector).await.unwrap();
}
