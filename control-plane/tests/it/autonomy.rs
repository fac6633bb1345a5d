//! Autonomy levels: certificates cap, policy can only lower, demotion on a spent error budget,
//! budgets escalate. Gates only ever add approvals.

use control_plane::{
    AutonomyLevel, AutonomyLimits, Budgets, ControlPlane, Cost, CostStatus, DenyKind, ErrorBudget, LlmCall, Role,
    StepContext, StepResult, TokenAuthority, TokenConfig, TraceContext, Verdict,
};
use plugin_abi::{SideEffect, SkillSummary};

use crate::{DEFAULT_POLICY, Plane, plane_at, principal};

async fn control(policy: &str) -> (Plane, std::sync::Arc<ControlPlane>) {
    let plane = plane_at(policy, control_plane::now_ms()).await;
    let control = std::sync::Arc::clone(&plane.control);
    (plane, control)
}

fn skill(side_effect: SideEffect, capabilities: &[&str]) -> SkillSummary {
    SkillSummary {
        id: "demo".into(),
        version: semver::Version::new(1, 0, 0),
        side_effect,
        capabilities: capabilities.iter().map(|c| c.parse().unwrap()).collect(),
        digest: "sha256:dd".into(),
        cpu_metering: plugin_abi::CpuMetering::Fuel,
    }
}

fn step(run: &str) -> StepContext {
    StepContext {
        run_id: run.into(),
        step_id: "step-1".into(),
        traceparent: TraceContext::new_root().to_string(),
    }
}

async fn verdict(control: &ControlPlane, skill: &SkillSummary, run: &str) -> control_plane::Decision {
    control
        .govern(
            &principal("alice", &[Role::Agent]),
            &step(run),
            "demo",
            Some(skill),
            "sha256:ii",
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn certificates_cap_the_level_and_only_admins_issue_them() {
    let (_plane, control) = control(DEFAULT_POLICY).await;
    let pure = skill(SideEffect::Pure, &[]);
    // Default L2: a pure, capability-free skill runs without approval.
    let decision = verdict(&control, &pure, "run-1").await;
    assert!(matches!(decision.verdict, Verdict::Allow { .. }), "{decision:?}");
    assert_eq!(decision.autonomy.as_ref().unwrap().level, AutonomyLevel::L2);

    let agent = principal("alice", &[Role::Agent]);
    assert!(
        control
            .grant_autonomy(&agent, "alice", "*", AutonomyLevel::L5, 3_600)
            .await
            .is_err()
    );
    let admin = principal("root", &[Role::Admin]);
    control
        .grant_autonomy(&admin, "alice", "demo", AutonomyLevel::L1, 3_600)
        .await
        .unwrap();
    let decision = verdict(&control, &pure, "run-2").await;
    assert!(
        matches!(decision.verdict, Verdict::RequireApproval { .. }),
        "{decision:?}"
    );
    let assessment = decision.autonomy.unwrap();
    assert_eq!(assessment.level, AutonomyLevel::L1);
    assert_eq!(
        assessment.gates,
        vec!["autonomy L1 requires approval for low-risk pure skills".to_owned()]
    );

    // L5 removes autonomy gates, never policy's: effectful skills still need a reviewer.
    control
        .grant_autonomy(&admin, "alice", "demo", AutonomyLevel::L5, 3_600)
        .await
        .unwrap();
    let effectful = skill(SideEffect::Effectful, &["fs.write:reports/"]);
    let decision = verdict(&control, &effectful, "run-3").await;
    assert!(
        matches!(decision.verdict, Verdict::RequireApproval { .. }),
        "{decision:?}"
    );
    assert!(decision.autonomy.unwrap().gates.is_empty());
    // And a denial stays a denial.
    let decision = control
        .govern(
            &principal("bob", &[Role::Reviewer]),
            &step("run-4"),
            "demo",
            Some(&pure),
            "sha256:ii",
        )
        .await
        .unwrap();
    assert!(matches!(
        decision.verdict,
        Verdict::Deny {
            kind: DenyKind::NotPermitted,
            ..
        }
    ));
    // Issuing is audited as an enforcement change.
    let entries = control.audit_entries().await.unwrap();
    assert_eq!(entries.iter().filter(|e| e.kind == "enforcement-change").count(), 2);
}

#[tokio::test]
async fn a_certificate_signed_with_another_key_is_ignored() {
    // It tampers with the SQLite file.
    let plane = crate::plane_on(&crate::Backend::Sqlite, DEFAULT_POLICY, control_plane::now_ms()).await;
    let control = std::sync::Arc::clone(&plane.control);
    let forger = TokenAuthority::from_secret(&[1; 32], TokenConfig::default()).unwrap();
    let token = forger
        .sign_certificate(&control_plane::AutonomyCertificate {
            agent: "alice".into(),
            skill: "*".into(),
            tenant: "acme".into(),
            level: AutonomyLevel::L5,
            issued_by: "mallory".into(),
            issued_at: 0,
            expires_at: u64::MAX / 2,
        })
        .unwrap();
    let admin = principal("root", &[Role::Admin]);
    let certificate = control.authority().verify_certificate(&token);
    assert!(certificate.is_err(), "a forged certificate must not verify");
    // Even stored (by someone with write access to the state file), it does not count.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", plane.state_file().display()))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO autonomy_certificates (tenant, agent, skill, token, issued_at_ms) VALUES ('acme', 'alice', '*', ?, 0)",
    )
    .bind(&token)
    .execute(&pool)
    .await
    .unwrap();
    let (level, source) = control
        .autonomy_level(&principal("alice", &[Role::Agent]), "demo")
        .await
        .unwrap();
    assert_eq!(level, AutonomyLevel::L2);
    assert!(
        source
            .iter()
            .any(|s| s.contains("invalid or expired certificate was skipped")),
        "{source:?}"
    );
    // Access tokens are not certificates and certificates are not access tokens.
    let real = control
        .grant_autonomy(&admin, "alice", "*", AutonomyLevel::L4, 60)
        .await
        .unwrap();
    assert!(control.authority().verify(&real).is_err());
    let access = control
        .authority()
        .issue("alice", "acme", &[Role::Agent], std::time::Duration::from_secs(60))
        .unwrap();
    assert!(control.authority().verify_certificate(&access).is_err());
}

#[tokio::test]
async fn an_exhausted_error_budget_demotes_one_level_and_policy_caps_autonomy() {
    let (_plane, control) = control(DEFAULT_POLICY).await;
    let admin = principal("root", &[Role::Admin]);
    control
        .set_limits(
            &admin,
            AutonomyLimits {
                error_budget: ErrorBudget {
                    allowed: 2,
                    window_ms: 60_000,
                },
                budgets: Budgets::default(),
            },
        )
        .await
        .unwrap();
    control
        .grant_autonomy(&admin, "alice", "demo", AutonomyLevel::L4, 3_600)
        .await
        .unwrap();
    let alice = principal("alice", &[Role::Agent]);
    assert!(
        !control
            .record_outcome(&alice, "demo", StepResult::Failure)
            .await
            .unwrap()
    );
    assert!(
        !control
            .record_outcome(&alice, "demo", StepResult::Escalation)
            .await
            .unwrap()
    );
    assert!(
        !control
            .record_outcome(&alice, "demo", StepResult::Success)
            .await
            .unwrap()
    );
    assert!(
        control
            .record_outcome(&alice, "demo", StepResult::Failure)
            .await
            .unwrap()
    );
    let (level, source) = control.autonomy_level(&alice, "demo").await.unwrap();
    assert_eq!(level, AutonomyLevel::L3, "{source:?}");
    // The budget restarts after a demotion.
    assert!(
        !control
            .record_outcome(&alice, "demo", StepResult::Failure)
            .await
            .unwrap()
    );
    let entries = control.audit_entries().await.unwrap();
    let demotion = entries.iter().find(|e| e.kind == "autonomy-demotion").unwrap();
    assert_eq!(demotion.principal, "system:autonomy-demotion@acme");

    // A policy can lower the level, never raise it.
    let capped = DEFAULT_POLICY.replace(
        "@id(\"agents-run-pure-skills\")",
        "@id(\"agents-run-pure-skills\")\n@max_autonomy(\"L1\")",
    );
    control.replace_policy(&admin, &capped, "capped").await.unwrap();
    let decision = verdict(&control, &skill(SideEffect::Pure, &[]), "run-9").await;
    assert!(
        matches!(decision.verdict, Verdict::RequireApproval { .. }),
        "{decision:?}"
    );
    assert_eq!(decision.autonomy.unwrap().level, AutonomyLevel::L1);
}

#[tokio::test]
async fn an_exceeded_budget_escalates_to_a_human() {
    let (_plane, control) = control(DEFAULT_POLICY).await;
    let admin = principal("root", &[Role::Admin]);
    control
        .set_limits(
            &admin,
            AutonomyLimits {
                error_budget: ErrorBudget::default(),
                budgets: Budgets {
                    per_run_micro_eur: Some(1_000),
                    per_tenant_micro_eur: None,
                },
            },
        )
        .await
        .unwrap();
    let pure = skill(SideEffect::Pure, &[]);
    assert!(matches!(
        verdict(&control, &pure, "run-1").await.verdict,
        Verdict::Allow { .. }
    ));
    control
        .emitter()
        .record_llm_call(
            "acme",
            &TraceContext::new_root(),
            &LlmCall {
                run_id: "run-1".into(),
                provider: "local".into(),
                model: "m".into(),
                input_tokens: 1,
                output_tokens: 1,
                cost: Cost {
                    micro_eur: Some(1_500),
                    status: CostStatus::Calculated,
                    pricing_version: "p".into(),
                },
            },
        )
        .await
        .unwrap();
    let decision = verdict(&control, &pure, "run-1").await;
    assert!(
        matches!(decision.verdict, Verdict::RequireApproval { .. }),
        "{decision:?}"
    );
    assert_eq!(
        decision.autonomy.unwrap().gates,
        vec!["run budget exceeded: spent 1500 of 1000 micro-EUR".to_owned()]
    );
    // Another run of the tenant is within its own budget.
    assert!(matches!(
        verdict(&control, &pure, "run-2").await.verdict,
        Verdict::Allow { .. }
    ));
}
