//! Bounded warm-instance mode for pure skills (`limits.max_reuse`): an instance serves at most
//! `max_reuse` calls of one tenant and is never reused after a trap or a limit hit; fresh
//! instances stay the default.

use agent_runtime::PackageError;
use serde_json::json;

use crate::{empty_runtime, package_copy, request};

/// A copy of package `name` with `extra_limits` appended to its `[limits]` table.
fn package_with(dir: &std::path::Path, name: &str, extra_limits: &str) -> std::path::PathBuf {
    package_copy(dir, name, |manifest| {
        format!(
            "{manifest}{extra_limits}
"
        )
    })
}

#[tokio::test]
async fn an_instance_serves_at_most_max_reuse_calls_of_one_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = empty_runtime();
    runtime
        .load_package(&package_with(dir.path(), "noop", "max_reuse = 3"))
        .await
        .unwrap();
    let noop = runtime.lookup("noop").unwrap();
    let mut fresh = Vec::new();
    for _ in 0..5 {
        let report = runtime.dispatch(&noop, &request(json!({}), &[])).await;
        assert_eq!(report.outcome.name(), "completed");
        fresh.push(report.metrics.instantiate_us > 0);
    }
    // Calls 1 and 4 instantiate; 2 and 3 reuse the first instance; 5 reuses the second.
    assert_eq!(fresh, [true, false, false, true, false]);

    // Another tenant never gets an instance that served this one.
    let mut other = request(json!({}), &[]);
    other.tenant = "globex".into();
    let report = runtime.dispatch(&noop, &other).await;
    assert!(report.metrics.instantiate_us > 0, "an instance crossed tenants");
}

#[tokio::test]
async fn an_instance_that_trapped_is_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = empty_runtime();
    runtime
        .load_package(&package_with(dir.path(), "deep-recursion", "max_reuse = 100"))
        .await
        .unwrap();
    let skill = runtime.lookup("deep-recursion").unwrap();
    let shallow = runtime.dispatch(&skill, &request(json!({ "depth": 10 }), &[])).await;
    assert_eq!(shallow.outcome.name(), "completed");
    assert_eq!(skill.parked_instances(), 1);
    let trapped = runtime
        .dispatch(&skill, &request(json!({ "depth": 100_000_000u64 }), &[]))
        .await;
    assert_eq!(trapped.outcome.name(), "trap");
    assert_eq!(
        trapped.metrics.instantiate_us, 0,
        "the trap happened in the reused instance"
    );
    assert_eq!(skill.parked_instances(), 0, "a trapped instance was parked again");
    let next = runtime.dispatch(&skill, &request(json!({ "depth": 10 }), &[])).await;
    assert_eq!(next.outcome.name(), "completed");
    assert!(next.metrics.instantiate_us > 0);
}

#[tokio::test]
async fn warm_mode_is_refused_for_skills_that_are_not_pure() {
    let dir = tempfile::tempdir().unwrap();
    let error = empty_runtime()
        .load_package(&package_with(dir.path(), "publish-report", "max_reuse = 10"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PackageError::Manifest { problems, .. } if problems.iter().any(|problem| problem.contains("only allowed for pure skills"))),
        "{error}"
    );
}
