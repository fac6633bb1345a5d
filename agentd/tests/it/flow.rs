//! The demo's flow, command by command, and the demo itself on a given file.

use serde_json::json;

use crate::{Env, envelope, stderr, stdout};

#[test]
fn run_approve_and_audit_through_the_cli() {
    let env = Env::new();
    let agent = env.token("alice", "agent");
    let reviewer = env.token("bob", "reviewer");

    // A pure skill runs at once.
    let output = env.run_json("pii-redact", json!({ "text": "write to jane@example.org" }), &agent);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["status"], "completed");
    assert_eq!(report["report"]["outcome"]["output"]["redacted"], "write to [EMAIL]");

    // Input from standard input works too.
    let output = env.agentd(
        &["run", "pii-redact", "--input", "-", "--token", &agent],
        Some(&envelope(json!({ "text": "10.1.2.3" }))),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("\"redacted\": \"[IPV4]\""),
        "{}",
        stdout(&output)
    );

    // An effectful skill waits for a reviewer (exit code 4).
    let id = env.submit_report(&agent);

    let output = env.agentd(&["hitl", "list", "--status", "pending", "--token", &reviewer], None);
    assert!(
        stdout(&output).contains(&format!("#{id:<4} pending   publish-report 0.1.0 requested by alice")),
        "{}",
        stdout(&output)
    );

    // The waiting run is durable: another process reads it back from its events.
    let run_state = |env: &Env| -> String {
        let requests = env.agentd(&["--json", "hitl", "list", "--token", &reviewer], None);
        let requests: serde_json::Value = serde_json::from_str(&stdout(&requests)).unwrap();
        let run_id = requests[0]["run_id"].as_str().unwrap().to_owned();
        let shown = env.agentd(&["--json", "runs", "show", &run_id, "--token", &agent], None);
        assert!(shown.status.success(), "{}", stderr(&shown));
        let shown: serde_json::Value = serde_json::from_str(&stdout(&shown)).unwrap();
        shown["run"]["state"].as_str().unwrap().to_owned()
    };
    assert_eq!(run_state(&env), "awaiting-approval");

    let output = env.agentd(&["hitl", "approve", &id, "--token", &reviewer], None);
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    assert_eq!(run_state(&env), "succeeded");
    assert!(
        stdout(&output).contains("publish-report 0.1.0 completed"),
        "{}",
        stdout(&output)
    );
    let written = std::fs::read_to_string(env.state_dir().join("workspace/acme/reports/t.md")).unwrap();
    assert!(written.starts_with("# T\n\nB\n"));

    // Resuming again is refused: the approval was consumed by the step that ran.
    let output = env.agentd(&["hitl", "resume", &id, "--token", &reviewer], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!(
            "cannot resume approval #{id}: approval request {id} is consumed, not approved"
        )),
        "{}",
        stderr(&output)
    );

    // Approving again is refused; the approval was consumed.
    let output = env.agentd(&["hitl", "approve", &id, "--token", &reviewer], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("was already decided (consumed by `bob`)"),
        "{}",
        stderr(&output)
    );

    // A runaway skill is stopped at each attempt, retried with backoff (timeouts are retryable),
    // then escalated to a human (exit code 4), every attempt recorded.
    let empty = env.file("empty.json", &envelope(json!({})));
    let output = env.agentd(
        &[
            "run",
            "spin-forever",
            "--input",
            empty.to_str().unwrap(),
            "--token",
            &agent,
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("kept failing (run run-"),
        "{}",
        stdout(&output)
    );
    assert!(
        stdout(&output).contains(
            "spin-forever@0.1.0 attempt 1: timeout; spin-forever@0.1.0 attempt 2: timeout; spin-forever@0.1.0 attempt 3: timeout; escalated to a human"
        ),
        "{}",
        stdout(&output)
    );

    // An unknown skill is denied, failing closed (audited), with its own exit code: 6.
    let output = env.agentd(
        &["run", "ghost", "--input", empty.to_str().unwrap(), "--token", &agent],
        None,
    );
    assert_eq!(output.status.code(), Some(6));
    assert!(
        stderr(&output).contains("no loaded package provides skill `ghost`"),
        "{}",
        stderr(&output)
    );
    assert!(stdout(&output).contains("unknown skill `ghost`"), "{}", stdout(&output));

    // 2 x (verdict, dispatch); verdict, approval-requested; approval-decision, verdict,
    // approval-consumed, dispatch (the resumed step); spin-forever: 3 x (verdict, dispatch) and
    // the escalation request; verdict (ghost).
    assert_eq!(env.audit_entries(), 18);

    let output = env.agentd(&["plugins", "list"], None);
    assert!(
        stdout(&output).contains("publish-report   0.1.0    effectful  caps [fs.write:reports/]"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn demo_runs_end_to_end_on_a_given_file() {
    let env = Env::new();
    let text = env.file(
        "mail.txt",
        "From: Jane <jane@example.org>\nCall +44 20 7946 0958, IBAN GB82 WEST 1234 5698 7654 32\n",
    );
    let output = env.agentd(&["demo", "--input", text.to_str().unwrap()], None);
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    let transcript = stdout(&output);
    for expected in [
        "files processed   1 (0 failed)",
        "matches           email 1, iban 1, card 0, ipv4 0, phone 1",
        "waiting for approval, request #1",
        "demo-agent tries to approve it: refused",
        "approved by demo-reviewer; report written:",
        "stopped: timeout after",
        "host unharmed: pii-redact right after -> \"host still fine: [EMAIL]\"",
        "audit chain intact:",
    ] {
        assert!(transcript.contains(expected), "missing `{expected}` in:\n{transcript}");
    }
}

#[test]
fn a_plan_feeds_one_step_into_the_next_and_resumes_after_approval() {
    let env = Env::new();
    let agent = env.token("alice", "agent");
    let reviewer = env.token("bob", "reviewer");
    let plan = json!({ "steps": [
        { "step_id": "redact", "skill": "pii-redact", "input": { "text": "contact jane@example.org today" } },
        { "step_id": "publish", "skill": "publish-report", "input": {
            "title": "Redacted",
            "body": { "$from": "redact", "pointer": "/redacted" },
            "path": "reports/redacted.md"
        } }
    ] });
    let file = env.file("plan.json", &plan.to_string());
    let output = env.agentd(
        &[
            "--json",
            "run-plan",
            "--plan",
            file.to_str().unwrap(),
            "--token",
            &agent,
        ],
        None,
    );
    // The first step ran; the second (effectful) waits for a reviewer.
    assert_eq!(output.status.code(), Some(4), "{}{}", stdout(&output), stderr(&output));
    let waiting: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let id = waiting["approval_id"].as_i64().unwrap().to_string();

    let output = env.agentd(&["hitl", "approve", &id, "--token", &reviewer], None);
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    let written = std::fs::read_to_string(env.state_dir().join("workspace/acme/reports/redacted.md")).unwrap();
    assert!(written.contains("contact [EMAIL] today"), "{written}");
    assert!(!written.contains("jane@"), "{written}");

    // A plan whose reference points at a later step is refused before anything runs.
    let bad = json!({ "steps": [
        { "step_id": "a", "skill": "pii-redact", "input": { "text": { "$from": "b", "pointer": "/redacted" } } },
        { "step_id": "b", "skill": "pii-redact", "input": { "text": "x" } }
    ] });
    let file = env.file("bad-plan.json", &bad.to_string());
    let output = env.agentd(&["run-plan", "--plan", file.to_str().unwrap(), "--token", &agent], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("references step `b`, which does not come before it"),
        "{}",
        stderr(&output)
    );
}
