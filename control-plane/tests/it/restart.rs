//! Crash safety: a writer process is killed with SIGKILL while runs wait for approval and while
//! records and audit entries are being written. After a restart, everything the writer
//! acknowledged (printed after its commit returned) is there, the audit chain and its anchor
//! verify, and a waiting run resumes after its decision.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use control_plane::{
    ChainVerification, ControlPlane, Lease, PolicyEngine, ReviewDecisionKind, Role, RunEventDraft, RunEventPayload,
    RunState, StepContext, StepSpec, Store, TraceContext,
};

use crate::{DEFAULT_POLICY, authority, new_approval, principal};

const STATE_ENV: &str = "AGENTD_CRASH_TEST_STATE";
const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The control plane over the state file at `path`, on the system clock.
async fn open(path: &std::path::Path) -> ControlPlane {
    let store = Store::open(path).await.unwrap();
    ControlPlane::new(
        authority(),
        PolicyEngine::from_text(DEFAULT_POLICY, "default").unwrap(),
        store,
    )
}

fn draft(lease: &Lease, payload: RunEventPayload) -> RunEventDraft {
    RunEventDraft {
        run_id: lease.run_id.clone(),
        node_id: lease.owner.clone(),
        fencing_token: lease.token,
        traceparent: TP.into(),
        payload,
    }
}

/// The writer. Ignored in normal runs; the test below starts it in a child process.
#[test]
#[ignore = "run as a child process by a_killed_writer_loses_nothing_it_acknowledged"]
fn crash_writer() {
    let Some(path) = std::env::var_os(STATE_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let control = open(std::path::Path::new(&path)).await;
        let out = std::io::stdout();
        let ack = |line: String| {
            let mut out = out.lock();
            writeln!(out, "ack {line}").unwrap();
            out.flush().unwrap();
        };
        for n in 0..3 {
            let run_id = format!("run-{n}");
            let alice = principal("alice", &[Role::Agent]);
            let steps = vec![StepSpec {
                step_id: "step-1".into(),
                skill: "publish-report".into(),
                input: serde_json::json!({}),
            }];
            let lease = control.create_run(&run_id, &alice, steps, TP, "writer").await.unwrap();
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
            let mut asked = new_approval();
            asked.run_id = run_id.clone();
            asked.expires_at_ms = i64::MAX / 2;
            let approval = control.request_approval(&asked).await.unwrap();
            control
                .append_run_event(draft(
                    &lease,
                    RunEventPayload::StepAwaitingApproval {
                        step_id: "step-1".into(),
                        approval_id: approval.id,
                    },
                ))
                .await
                .unwrap();
            ack(format!("waiting {run_id} {}", approval.id));
        }
        let emitter = control.emitter();
        let alice = principal("alice", &[Role::Agent]);
        let skill = plugin_abi::SkillSummary {
            id: "pii-redact".into(),
            version: semver::Version::new(0, 1, 0),
            side_effect: plugin_abi::SideEffect::Pure,
            capabilities: vec![],
            digest: "sha256:cafe".into(),
            cpu_metering: plugin_abi::CpuMetering::Fuel,
        };
        for n in 1u64.. {
            let trace = TraceContext::new_root();
            let recorded = emitter
                .emit_telemetry("acme", &trace, "crash.test", serde_json::json!({ "n": n }))
                .await
                .unwrap();
            ack(format!("record {}", recorded.id));
            let step = StepContext {
                run_id: format!("verdicts-{n}"),
                step_id: "step-1".into(),
                traceparent: TP.into(),
            };
            control
                .govern(&alice, &step, "pii-redact", Some(&skill), "sha256:input")
                .await
                .unwrap();
            ack(format!("audit {n}"));
        }
    });
}

#[tokio::test]
async fn a_killed_writer_loses_nothing_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "restart::crash_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(STATE_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut waiting = Vec::new();
    let mut records = Vec::new();
    let mut audits = Vec::new();
    let started = Instant::now();
    for line in stdout.lines() {
        let line = line.unwrap();
        // The harness may print "test ... " before the first line on the same line.
        let Some(start) = line.find("ack ") else { continue };
        let ack = &line[start + 4..];
        let parts: Vec<&str> = ack.split(' ').collect();
        match parts[0] {
            "waiting" => waiting.push((parts[1].to_owned(), parts[2].parse::<i64>().unwrap())),
            "record" => records.push(parts[1].parse::<i64>().unwrap()),
            "audit" => audits.push(parts[1].parse::<i64>().unwrap()),
            _ => {}
        }
        // Kill mid-stream, at a moment the writer does not choose.
        if audits.len() >= 150 || started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert_eq!(waiting.len(), 3);
    assert!(
        audits.len() >= 100,
        "the writer acknowledged only {} audit entries",
        audits.len()
    );

    let control = open(&path).await;
    // Nothing acknowledged is lost: every acknowledged verdict is in the log.
    let entries = control.audit_entries().await.unwrap();
    let last_acked = *audits.last().unwrap();
    let verdicts = entries.iter().filter(|entry| entry.kind == "verdict").count() as i64;
    assert!(verdicts >= last_acked, "{verdicts} verdicts, {last_acked} acknowledged");
    assert!(control.emitter().record_count("acme").await.unwrap() >= records.len() as i64);
    // The chain and its anchor verify.
    let verification = control.verify_audit().await.unwrap();
    assert!(
        matches!(verification, ChainVerification::Intact { .. }),
        "{verification:?}"
    );
    // Waiting runs survived, and one resumes after its decision.
    for (run_id, _) in &waiting {
        assert_eq!(
            control.run("acme", run_id).await.unwrap().state,
            RunState::AwaitingApproval
        );
    }
    let (run_id, approval_id) = &waiting[0];
    control
        .review(
            *approval_id,
            &principal("bob", &[Role::Reviewer]),
            ReviewDecisionKind::Approve,
            None,
            None,
        )
        .await
        .unwrap();
    let mut offered = crate::binding();
    offered.run_id = run_id.clone();
    control.consume_approval(*approval_id, &offered).await.unwrap();
    let lease = control.claim_run(run_id, "restarted").await.unwrap().unwrap();
    control
        .append_run_event(draft(
            &lease,
            RunEventPayload::StepStarted {
                step_id: "step-1".into(),
                approval_id: Some(*approval_id),
            },
        ))
        .await
        .unwrap();
    assert_eq!(control.run("acme", run_id).await.unwrap().state, RunState::Running);
}
