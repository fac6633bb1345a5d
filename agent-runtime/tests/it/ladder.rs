//! The escalation ladder through the control plane: retries (with the policy's `@max_attempts`
//! overriding the manifest), then a fallback plugin governed on its own, then a human.

use std::collections::BTreeSet;

use agent_runtime::{Outcome, Runtime, StepOutcome, run_step};
use control_plane::{ControlPlane, PolicyEngine, Principal, Role, Store, TokenAuthority, TokenConfig};
use plugin_abi::InvokeRequest;

use crate::{empty_runtime, package_copy, packages_dir};

const SCHEMA_HEADER: &str = r#"
@id("spin-forever-gets-one-attempt")
@max_attempts("1")
permit(principal, action == Agentd::Action::"invoke", resource)
when { principal.roles.contains("agent") && resource.id == "spin-forever" };
"#;

async fn setup(policy: &str) -> (tempfile::TempDir, Runtime, ControlPlane) {
    let dir = tempfile::tempdir().unwrap();
    // spin-forever with a short deadline and `noop` as its fallback plugin.
    let package = package_copy(dir.path(), "spin-forever", |manifest| {
        format!(
            "fallbacks = [\"noop\"]\n{}",
            manifest.replace("deadline_ms = 500", "deadline_ms = 20")
        )
    });
    let runtime = empty_runtime();
    runtime.load_package(&package).await.unwrap();
    runtime.load_package(&packages_dir().join("noop")).await.unwrap();
    let control_plane = ControlPlane::new(
        TokenAuthority::from_secret(&[9; 32], TokenConfig::default()).unwrap(),
        PolicyEngine::from_text(&format!("{SCHEMA_HEADER}{policy}"), "test policy").unwrap(),
        Store::open(&dir.path().join("state.db")).await.unwrap(),
    );
    (dir, runtime, control_plane)
}

fn agent() -> Principal {
    Principal {
        subject: "alice".into(),
        tenant: "acme".into(),
        roles: [Role::Agent].into_iter().collect::<BTreeSet<_>>(),
    }
}

fn empty_request() -> InvokeRequest {
    InvokeRequest::parse(r#"{"schema_version":"agentd.invoke.v1","input":{}}"#).unwrap()
}

/// The `rung` and `attempt` of every dispatch entry in the audit log, in order.
async fn dispatch_rungs(control_plane: &ControlPlane) -> Vec<(String, String, u64)> {
    control_plane
        .audit_entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|entry| entry.kind == "dispatch")
        .map(|entry| {
            let payload: serde_json::Value = serde_json::from_str(&entry.payload).unwrap();
            let record = &payload["outcome"];
            (
                record["rung"].as_str().unwrap_or_default().to_owned(),
                record["outcome"].as_str().unwrap_or_default().to_owned(),
                record["attempt"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_fall_back_to_a_plugin_with_its_own_verdict() {
    let (_dir, runtime, control_plane) = setup(
        r#"
        @id("agents-run-pure-skills")
        permit(principal, action == Agentd::Action::"invoke", resource)
        when { principal.roles.contains("agent") && resource.side_effect == "pure" };
        "#,
    )
    .await;
    let outcome = run_step(&runtime, &control_plane, &agent(), "spin-forever", &empty_request())
        .await
        .unwrap();
    let StepOutcome::Dispatched { report, decision, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    // The fallback ran under its own verdict, which carries no @max_attempts.
    assert_eq!(report.skill_id, "noop");
    assert!(
        matches!(report.outcome, Outcome::Completed { .. }),
        "{:?}",
        report.outcome
    );
    assert_eq!(decision.max_attempts, None);
    // One attempt of spin-forever (the policy overrode the manifest's 3), then the fallback.
    let rungs = dispatch_rungs(&control_plane).await;
    assert_eq!(
        rungs,
        [
            ("primary".to_owned(), "timeout".to_owned(), 1),
            ("fallback noop@0.1.0".to_owned(), "completed".to_owned(), 1),
        ],
        "{rungs:?}"
    );
    assert!(matches!(
        control_plane.verify_audit().await.unwrap(),
        control_plane::ChainVerification::Intact { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_the_policy_does_not_allow_is_skipped_and_a_human_is_asked() {
    let (_dir, runtime, control_plane) = setup(
        r#"
        @id("agents-run-pure-skills")
        permit(principal, action == Agentd::Action::"invoke", resource)
        when { principal.roles.contains("agent") && resource.side_effect == "pure" };

        @id("no-noop")
        forbid(principal, action == Agentd::Action::"invoke", resource)
        when { resource.id == "noop" };
        "#,
    )
    .await;
    let outcome = run_step(&runtime, &control_plane, &agent(), "spin-forever", &empty_request())
        .await
        .unwrap();
    let StepOutcome::Escalated { history, approval, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        history,
        &[
            "spin-forever@0.1.0 attempt 1: timeout".to_owned(),
            "fallback noop@0.1.0 skipped: governance said deny".to_owned(),
        ]
    );
    assert_eq!(approval.skill.id, "spin-forever");
    assert_eq!(
        dispatch_rungs(&control_plane).await.len(),
        1,
        "the denied fallback never ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_whose_capability_is_withheld_is_not_dispatched() {
    let (_dir, runtime, control_plane) = setup(
        r#"
        @id("agents-run-read-only-skills")
        permit(principal, action == Agentd::Action::"invoke", resource)
        when { principal.roles.contains("agent") && resource.side_effect == "read-only" };
        "#,
    )
    .await;
    runtime.load_package(&packages_dir().join("http-get")).await.unwrap();
    // Autonomy high enough that a read-only skill with a capability needs no reviewer.
    let admin = Principal {
        roles: [Role::Admin].into_iter().collect(),
        subject: "root".into(),
        ..agent()
    };
    control_plane
        .grant_autonomy(&admin, "alice", "http-get", control_plane::AutonomyLevel::L5, 3_600)
        .await
        .unwrap();
    let request =
        InvokeRequest::parse(r#"{"schema_version":"agentd.invoke.v1","input":{"url":"http://127.0.0.1:8080/"}}"#)
            .unwrap();
    let outcome = run_step(&runtime, &control_plane, &agent(), "http-get", &request)
        .await
        .unwrap();
    let StepOutcome::Dispatched { report, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    // No policy grants net.http: the selector's rule refuses the candidate before any instance.
    assert!(
        matches!(&report.outcome, Outcome::Failed { failure: agent_runtime::RuntimeFailure::CapabilityDenied { capability, message } }
            if *capability == "net.http:http://127.0.0.1:8080".parse::<plugin_abi::Capability>().unwrap() && message.starts_with("not dispatched")),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.metrics, agent_runtime::Metrics::default());
    let rungs = dispatch_rungs(&control_plane).await;
    assert_eq!(rungs, [(String::new(), "capability-denied".to_owned(), 0)], "{rungs:?}");
}

/// Issue 16: input a skill's own schema refuses never reaches the skill. The step ends
/// `invalid-input` (not retryable, no retry, no fallback), its dispatch entry says it was not
/// dispatched (no instance, no fuel) and names the offending pointer; input that matches runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_its_schema_refuses_is_invalid_input_and_never_dispatched() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = empty_runtime();
    runtime
        .load_package(&packages_dir().join("invalid-output"))
        .await
        .unwrap();
    let control_plane = ControlPlane::new(
        TokenAuthority::from_secret(&[9; 32], TokenConfig::default()).unwrap(),
        PolicyEngine::from_text(
            r#"permit(principal, action == Agentd::Action::"invoke", resource)
               when { principal.roles.contains("agent") };"#,
            "test policy",
        )
        .unwrap(),
        Store::open(&dir.path().join("state.db")).await.unwrap(),
    );
    let request = |input: &str| {
        InvokeRequest::parse(&format!(r#"{{"schema_version":"agentd.invoke.v1","input":{input}}}"#)).unwrap()
    };
    let outcome = run_step(
        &runtime,
        &control_plane,
        &agent(),
        "invalid-output",
        &request(r#"{"mode": 7}"#),
    )
    .await
    .unwrap();
    let StepOutcome::Dispatched { report, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    let Outcome::SkillFailed {
        error: agent_runtime::SkillFailure::InvalidInput(message),
    } = &report.outcome
    else {
        panic!("{:?}", report.outcome)
    };
    assert!(
        message.starts_with("the input does not match the skill's input schema: at /mode:"),
        "{message}"
    );
    assert_eq!(
        report.metrics,
        agent_runtime::Metrics::default(),
        "nothing was instantiated"
    );
    assert_eq!(
        dispatch_rungs(&control_plane).await,
        vec![("primary".to_owned(), "invalid-input".to_owned(), 1)]
    );
    let valid = run_step(
        &runtime,
        &control_plane,
        &agent(),
        "invalid-output",
        &request(r#"{"mode": "valid"}"#),
    )
    .await
    .unwrap();
    let StepOutcome::Dispatched { report, .. } = &valid else {
        panic!("{valid:?}")
    };
    assert_eq!(report.outcome.name(), "completed", "{:?}", report.outcome);
}
