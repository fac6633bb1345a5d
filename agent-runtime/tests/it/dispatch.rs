//! Dispatching the real plugins: each way an invocation ends maps to exactly one outcome.

use agent_runtime::{Outcome, RuntimeFailure, SkillFailure};
use serde_json::json;

use crate::{request, runtime_with_packages, skill};

#[tokio::test]
async fn pii_redact_completes_with_counts_and_metrics() {
    let runtime = runtime_with_packages(None).await;
    let text = "Jane <jane@example.org>, card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, host 10.0.0.1, call +49 30 1234567";
    let report = runtime
        .dispatch(&skill(&runtime, "pii-redact"), &request(json!({ "text": text }), &[]))
        .await;
    let Outcome::Completed { output } = &report.outcome else {
        panic!("{report:?}")
    };
    assert_eq!(
        output["redacted"],
        "Jane <[EMAIL]>, card [CARD], IBAN [IBAN], host [IPV4], call [PHONE]"
    );
    assert_eq!(
        output["counts"],
        json!({ "email": 1, "iban": 1, "card": 1, "ipv4": 1, "phone": 1 })
    );
    assert!(report.metrics.fuel_consumed > 0);
    assert!(report.metrics.peak_memory_bytes > 0);
    assert_eq!(report.skill_version, "0.1.0");
    assert!(report.digest.starts_with("sha256:"));
}

#[tokio::test]
async fn input_that_does_not_match_the_schema_is_invalid_input() {
    let runtime = runtime_with_packages(None).await;
    let report = runtime
        .dispatch(&skill(&runtime, "pii-redact"), &request(json!({ "txt": "x" }), &[]))
        .await;
    let Outcome::SkillFailed {
        error: SkillFailure::InvalidInput(message),
    } = &report.outcome
    else {
        panic!("{report:?}")
    };
    assert!(message.contains("unknown field `txt`"), "{message}");
    assert!(!report.outcome.is_retryable());
}

#[tokio::test]
async fn spin_forever_is_stopped_at_its_deadline_and_the_host_survives() {
    let runtime = runtime_with_packages(None).await;
    let report = runtime
        .dispatch(&skill(&runtime, "spin-forever"), &request(json!({}), &[]))
        .await;
    // The epoch deadline interrupted guest code; the wall-clock backstop did not have to fire.
    assert_eq!(
        report.outcome,
        Outcome::Failed {
            failure: RuntimeFailure::Timeout {
                deadline_ms: 500,
                in_guest: true
            }
        }
    );
    assert!(report.outcome.is_retryable());

    let after = runtime
        .dispatch(
            &skill(&runtime, "pii-redact"),
            &request(json!({ "text": "a@b.org" }), &[]),
        )
        .await;
    assert!(matches!(after.outcome, Outcome::Completed { .. }), "{after:?}");
}

#[tokio::test]
async fn publish_report_without_the_grant_is_capability_denied() {
    let workspace = tempfile::tempdir().unwrap();
    let runtime = runtime_with_packages(Some(workspace.path())).await;
    let input = json!({ "title": "T", "body": "B", "path": "reports/r.md" });
    let report = runtime
        .dispatch(&skill(&runtime, "publish-report"), &request(input, &[]))
        .await;
    let Outcome::Failed {
        failure: RuntimeFailure::CapabilityDenied { capability, message },
    } = &report.outcome
    else {
        panic!("{report:?}")
    };
    assert_eq!(
        *capability,
        "fs.write:reports/r.md".parse::<plugin_abi::Capability>().unwrap()
    );
    assert_eq!(capability.to_string(), "fs.write:reports/r.md/");
    assert!(
        message.contains("capability denied: fs.write:reports/r.md (granted: none)"),
        "{message}"
    );
    assert_eq!(report.metrics.denials, 1);
    assert!(!workspace.path().join("acme/reports/r.md").exists());
}

#[tokio::test]
async fn publish_report_writes_only_inside_its_grant() {
    let workspace = tempfile::tempdir().unwrap();
    let runtime = runtime_with_packages(Some(workspace.path())).await;
    let publish = skill(&runtime, "publish-report");

    let granted = json!({ "title": "Weekly", "body": "All quiet.", "path": "reports/weekly.md" });
    let report = runtime
        .dispatch(&publish, &request(granted, &["fs.write:reports/"]))
        .await;
    assert!(matches!(report.outcome, Outcome::Completed { .. }), "{report:?}");
    let written = std::fs::read_to_string(workspace.path().join("acme/reports/weekly.md")).unwrap();
    assert!(written.starts_with("# Weekly\n\nAll quiet.\n"), "{written}");
    assert!(written.contains("idempotency key `acme/run-test/step-1`"));

    // A look-alike prefix and a traversal are both refused.
    for path in ["reports-secret/x.md", "reports/../x.md"] {
        let input = json!({ "title": "T", "body": "B", "path": path });
        let report = runtime
            .dispatch(&publish, &request(input, &["fs.write:reports/"]))
            .await;
        assert!(
            !matches!(report.outcome, Outcome::Completed { .. }),
            "{path}: {report:?}"
        );
    }
    assert!(!workspace.path().join("acme/reports-secret").exists());
    assert!(!workspace.path().join("acme/x.md").exists());
}
