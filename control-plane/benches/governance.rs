//! Benchmark (not a test) of the control plane: verdict latency against policy-set size,
//! recording throughput with durable SQLite, and the latency from an approval decision to the
//! resumed run.
//!
//! Run: `cargo bench -p control-plane --bench governance`. Prints p50/p99 per configuration;
//! every figure comes from one run of the binary, on the same machine.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use control_plane::{
    ApprovalBinding, ControlPlane, NewApproval, PolicyEngine, Principal, Quorum, Record, ReviewDecisionKind, Role,
    RunEventDraft, RunEventPayload, StepContext, StepSpec, StepStart, Store, TokenAuthority, TokenConfig, TraceContext,
};
use plugin_abi::{SideEffect, SkillSummary};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// The default policy plus `n` policies: a permit per skill (one of which applies to the
/// benchmarked request) and every tenth a forbid. `scoped`: the skill is named in the policy
/// scope (`resource == Agentd::Skill::"skill-N"`), the usual way to write per-skill rules;
/// otherwise in a `when` condition on `resource.id`, which no scope slicing can narrow (the
/// worst case: every policy is evaluated).
fn policy_set(n: usize, scoped: bool) -> String {
    let mut text = String::from(include_str!("../../policies/default.cedar"));
    for i in 0..n {
        if i % 10 == 9 {
            text.push_str(&format!(
                "@id(\"forbid-{i}\")\nforbid(principal, action == Agentd::Action::\"invoke\", resource == Agentd::Skill::\"blocked-{i}\");\n"
            ));
        } else if scoped {
            text.push_str(&format!(
                "@id(\"permit-{i}\")\npermit(principal, action == Agentd::Action::\"invoke\", resource == Agentd::Skill::\"skill-{i}\")\n  when {{ principal.roles.contains(\"agent\") && resource.risk_tier != \"high\" }};\n"
            ));
        } else {
            text.push_str(&format!(
                "@id(\"permit-{i}\")\npermit(principal, action == Agentd::Action::\"invoke\", resource)\n  when {{ resource.id == \"skill-{i}\" && principal.roles.contains(\"agent\") && resource.risk_tier != \"high\" }};\n"
            ));
        }
    }
    text
}

fn principal(subject: &str, roles: &[Role]) -> Principal {
    Principal {
        subject: subject.into(),
        tenant: "acme".into(),
        roles: roles.iter().copied().collect::<BTreeSet<_>>(),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let agent = principal("alice", &[Role::Agent]);
    let skill = SkillSummary {
        id: "skill-3".into(),
        version: semver::Version::new(1, 0, 0),
        side_effect: SideEffect::ReadOnly,
        capabilities: vec![],
        digest: "sha256:00".into(),
        cpu_metering: plugin_abi::CpuMetering::Fuel,
    };

    println!(
        "verdict latency (PolicyEngine::decide: entities, scope slice, Cedar evaluation, annotations), 20,000 calls each:"
    );
    for (n, scoped) in [
        (10, true),
        (100, true),
        (1_000, true),
        (10, false),
        (100, false),
        (1_000, false),
    ] {
        let engine = PolicyEngine::from_text(&policy_set(n, scoped), "bench").unwrap();
        for _ in 0..1_000 {
            std::hint::black_box(engine.decide(&agent, "skill-3", Some(&skill), 0));
        }
        let mut samples = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let started = Instant::now();
            std::hint::black_box(engine.decide(&agent, "skill-3", Some(&skill), 0));
            samples.push(started.elapsed());
        }
        let p50 = percentile(&mut samples, 0.5);
        let p99 = percentile(&mut samples, 0.99);
        println!(
            "  {:>5} policies, skill named {}: p50 {:>7.1} µs  p99 {:>7.1} µs",
            engine.len(),
            if scoped { "in the scope   " } else { "in a condition" },
            micros(p50),
            micros(p99)
        );
    }

    let dir = tempfile::tempdir().unwrap();
    runtime.block_on(async {
        let store = Store::open(&dir.path().join("state.db")).await.unwrap();
        let control = ControlPlane::new(
            TokenAuthority::from_secret(&[9; 32], TokenConfig::default()).unwrap(),
            PolicyEngine::from_text(include_str!("../../policies/default.cedar"), "default").unwrap(),
            store,
        );
        let emitter = control.emitter();
        println!("\nrecording throughput (SQLite WAL, synchronous=FULL: one fsync per commit):");
        let n = 2_000;
        let started = Instant::now();
        for i in 0..n {
            emitter
                .emit_telemetry(
                    "acme",
                    &TraceContext::new_root(),
                    "bench",
                    serde_json::json!({ "i": i }),
                )
                .await
                .unwrap();
        }
        let single = started.elapsed();
        println!(
            "  one record per transaction:   {:>8.0} records/s ({n} records)",
            f64::from(n) / single.as_secs_f64()
        );
        let batch = 100;
        let records: Vec<Record> = (0..n)
            .map(|i| {
                let trace = TraceContext::new_root();
                Record {
                    tenant: "acme".into(),
                    trace_id: trace.trace_id_hex(),
                    span_id: trace.span_id_hex(),
                    event_type: "telemetry:bench".into(),
                    run_id: None,
                    content: serde_json::json!({ "i": i }),
                    cost: None,
                }
            })
            .collect();
        let started = Instant::now();
        for chunk in records.chunks(batch) {
            emitter.record_batch(chunk).await.unwrap();
        }
        let batched = started.elapsed();
        println!(
            "  {batch} records per transaction: {:>8.0} records/s ({n} records), {:.1}x the single-record rate",
            f64::from(n) / batched.as_secs_f64(),
            single.as_secs_f64() / batched.as_secs_f64()
        );

        println!(
            "\naudit appends (ControlPlane::govern: one verdict appended to the audit log with its governance record, one durable transaction each), 1,000 verdicts:"
        );
        let n_verdicts = 1_000;
        let started = Instant::now();
        for i in 0..n_verdicts {
            let step = StepContext {
                run_id: format!("append-{i}"),
                step_id: "step-1".into(),
                traceparent: TraceContext::new_root().to_string(),
            };
            control
                .govern(&agent, &step, &skill.id, Some(&skill), "sha256:input")
                .await
                .unwrap();
        }
        let appends = started.elapsed();
        println!(
            "  {:>8.0} appends/s ({:.2} ms each)",
            f64::from(n_verdicts) / appends.as_secs_f64(),
            appends.as_secs_f64() * 1e3 / f64::from(n_verdicts)
        );

        println!(
            "\nHITL decision to run resume (policy check and vote; claim of the run; verdict, audited consumption and step start in one transaction), 200 requests:"
        );
        let reviewer = principal("bob", &[Role::Reviewer]);
        let now = control_plane::now_ms();
        let mut samples = Vec::new();
        for i in 0..200 {
            let run_id = format!("run-{i}");
            let tp = TraceContext::new_root().to_string();
            let steps = vec![StepSpec {
                step_id: "step-1".into(),
                skill: "publish-report".into(),
                input: serde_json::json!({}),
            }];
            let lease = control.create_run(&run_id, &agent, steps, &tp, "bench").await.unwrap();
            let draft = |lease: &control_plane::Lease, payload| RunEventDraft {
                run_id: run_id.clone(),
                node_id: lease.owner.clone(),
                fencing_token: lease.token,
                traceparent: tp.clone(),
                payload,
            };
            control
                .append_run_event(draft(
                    &lease,
                    RunEventPayload::StepStarted {
                        step_id: "step-1".into(),
                        approval_id: None,
                    },
                ))
                .await
                .unwrap();
            let request = control
                .request_approval(&NewApproval {
                    requester: agent.clone(),
                    acting_agent: "alice".into(),
                    run_id: run_id.clone(),
                    step_id: "step-1".into(),
                    traceparent: tp.clone(),
                    skill: skill.clone(),
                    input_digest: "sha256:in".into(),
                    request_json: "{}".into(),
                    policy_version: control.policy().version().to_owned(),
                    reviewer_role: Role::Reviewer,
                    quorum: Quorum::default(),
                    expires_at_ms: now + 3_600_000,
                    allowed_decisions: vec![ReviewDecisionKind::Approve, ReviewDecisionKind::Deny],
                    parent_id: None,
                })
                .await
                .unwrap();
            control
                .append_run_event(draft(
                    &lease,
                    RunEventPayload::StepAwaitingApproval {
                        step_id: "step-1".into(),
                        approval_id: request.id,
                    },
                ))
                .await
                .unwrap();
            let started = Instant::now();
            control
                .review(request.id, &reviewer, ReviewDecisionKind::Approve, None, None)
                .await
                .unwrap();
            let resumer = control.claim_run(&run_id, "bench").await.unwrap().unwrap();
            let step = StepContext {
                run_id: run_id.clone(),
                step_id: "step-1".into(),
                traceparent: tp.clone(),
            };
            let binding = ApprovalBinding {
                tenant: "acme".into(),
                run_id: run_id.clone(),
                step_id: "step-1".into(),
                skill_id: skill.id.clone(),
                skill_digest: skill.digest.clone(),
                input_digest: "sha256:in".into(),
                policy_version: String::new(),
            };
            control
                .govern_step(
                    &agent,
                    &step,
                    &skill.id,
                    Some(&skill),
                    "sha256:in",
                    Some(StepStart {
                        lease: &resumer,
                        payload: RunEventPayload::StepStarted {
                            step_id: "step-1".into(),
                            approval_id: Some(request.id),
                        },
                        approval_id: Some(request.id),
                        consume: Some(&binding),
                    }),
                )
                .await
                .unwrap();
            samples.push(started.elapsed());
        }
        let p50 = percentile(&mut samples, 0.5);
        let p99 = percentile(&mut samples, 0.99);
        println!(
            "  p50 {:.2} ms  p99 {:.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    });
}
