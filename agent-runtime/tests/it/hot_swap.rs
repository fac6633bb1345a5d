//! Hot swap and rollback: installing a version switches new invocations atomically, in-flight
//! invocations finish on the version they started on, and rollback is one call.

use std::sync::Arc;

use agent_runtime::{Outcome, PackageError, RollbackError};
use serde_json::json;

use crate::{empty_runtime, packages_dir, request};

fn version_of(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Completed { output } => output["version"].as_str().unwrap().to_owned(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_switches_new_calls_while_in_flight_calls_finish_on_their_version() {
    let runtime = Arc::new(empty_runtime());
    runtime.load_package(&packages_dir().join("noop")).await.unwrap();
    let v1 = runtime.lookup("noop").unwrap();
    assert_eq!(v1.summary.version.to_string(), "0.1.0");

    // A call that starts on 0.1.0 and is still running when 0.2.0 is installed.
    let in_flight = {
        let (runtime, v1) = (Arc::clone(&runtime), Arc::clone(&v1));
        tokio::spawn(async move { runtime.dispatch(&v1, &request(json!({ "sleep_ms": 400 }), &[])).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let installed = runtime.load_package(&packages_dir().join("noop-v2")).await.unwrap();
    assert_eq!(installed.version.to_string(), "0.2.0");

    // New calls get 0.2.0 at once; the in-flight call completes on 0.1.0.
    let v2 = runtime.lookup("noop").unwrap();
    assert_eq!(
        version_of(&runtime.dispatch(&v2, &request(json!({}), &[])).await.outcome),
        "0.2.0"
    );
    let finished = in_flight.await.unwrap();
    assert_eq!(version_of(&finished.outcome), "0.1.0");
    assert_eq!(finished.skill_version, "0.1.0");

    // Rollback is one call: new calls get 0.1.0 again; 0.2.0 stays loaded for what holds it.
    let rollback = runtime.rollback("noop").await.unwrap();
    assert_eq!(
        (rollback.withdrawn.to_string(), rollback.active.to_string()),
        ("0.2.0".into(), "0.1.0".into())
    );
    let active = runtime.lookup("noop").unwrap();
    assert_eq!(
        version_of(&runtime.dispatch(&active, &request(json!({}), &[])).await.outcome),
        "0.1.0"
    );
    assert_eq!(
        runtime.versions("noop").len(),
        1,
        "a withdrawn version is not a candidate"
    );
    assert_eq!(
        version_of(&runtime.dispatch(&v2, &request(json!({}), &[])).await.outcome),
        "0.2.0"
    );
    assert!(runtime.lookup_digest("noop", &v2.summary.digest).is_some());

    // Nothing left to roll back to: a typed refusal, and the active version is kept.
    assert_eq!(
        runtime.rollback("noop").await.unwrap_err(),
        RollbackError::NothingToRollBackTo {
            id: "noop".into(),
            active: "0.1.0".parse().unwrap()
        }
    );
    assert_eq!(
        runtime.rollback("nope").await.unwrap_err(),
        RollbackError::UnknownSkill("nope".into())
    );

    // Installing the same bytes again rolls forward; the same version with other bytes is refused.
    runtime.load_package(&packages_dir().join("noop-v2")).await.unwrap();
    assert_eq!(runtime.lookup("noop").unwrap().summary.version.to_string(), "0.2.0");
    let error = runtime.load_package(&packages_dir().join("noop-v2")).await.unwrap_err();
    assert!(matches!(error, PackageError::Duplicate { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_never_see_a_half_installed_registry() {
    let runtime = Arc::new(empty_runtime());
    runtime.load_package(&packages_dir().join("noop")).await.unwrap();
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let runtime = Arc::clone(&runtime);
            tokio::spawn(async move {
                let mut seen = std::collections::BTreeSet::new();
                for _ in 0..200 {
                    let skill = runtime.lookup("noop").expect("a version is always active");
                    let report = runtime.dispatch(&skill, &request(json!({}), &[])).await;
                    // The version that answered is the version that was selected.
                    assert_eq!(version_of(&report.outcome), skill.summary.version.to_string());
                    seen.insert(report.skill_version);
                    tokio::task::yield_now().await;
                }
                seen
            })
        })
        .collect();
    for _ in 0..5 {
        runtime.load_package(&packages_dir().join("noop-v2")).await.unwrap();
        runtime.rollback("noop").await.unwrap();
    }
    for caller in callers {
        assert!(!caller.await.unwrap().is_empty());
    }
}
