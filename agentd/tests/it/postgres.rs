//! Two `agentd serve` nodes on one PostgreSQL database (`--database`), when
//! `AGENTD_TEST_DATABASE_URL` names one: a run started on one node is seen on the other, an
//! approval asked on one is answered on the other and the run completes there, and the shared
//! audit log verifies on both.

use serde_json::json;

use crate::Env;
use crate::serve::{Api, tokens};

/// A fresh schema on the test database and the URL scoped to it; `None` without a database.
async fn fresh_database() -> Option<String> {
    let url = std::env::var("AGENTD_TEST_DATABASE_URL").ok()?;
    let schema = format!(
        "agentd_serve_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        !url.contains('?'),
        "AGENTD_TEST_DATABASE_URL takes no query parameters here: {url}"
    );
    Some(format!("{url}?options[search_path]={schema}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_share_runs_approvals_and_one_audit_log() {
    let Some(database) = fresh_database().await else {
        return; // No database to share: `.ci/run` always sets one.
    };
    let first = Env::new();
    let (alice, bob, _eve) = tokens(&first);
    let node_a = first.serve(&["--database", &database]);
    // The second node gets copies of the first's keys: token verification, the audit anchor
    // and the checkpoint signer (ADR 0016: a secret mount in a real deployment).
    let second = Env::new();
    std::fs::create_dir_all(second.state_dir()).unwrap();
    for key in ["jwt-hs256.key", "postgres.audit-key", "postgres.checkpoint-key"] {
        std::fs::copy(first.state_dir().join(key), second.state_dir().join(key))
            .unwrap_or_else(|error| panic!("{key}: {error}"));
    }
    let node_b = second.serve(&["--database", &database]);
    let (a, b) = (Api::of(&node_a), Api::of(&node_b));

    let redacted = a
        .post(
            "/v1/runs",
            &alice,
            &json!({ "skill": "pii-redact", "input": { "text": "mail jane@example.org" } }),
        )
        .await;
    assert_eq!(redacted.0, 201, "{}", redacted.2);
    let run_id = redacted.2["run_id"].as_str().unwrap().to_owned();
    let seen = b.get(&format!("/v1/runs/{run_id}"), &alice).await;
    assert_eq!(seen.0, 200, "node B does not see node A's run: {}", seen.2);
    assert_eq!(seen.2["run"]["state"], "succeeded");

    let waiting = a
        .post(
            "/v1/runs",
            &alice,
            &json!({ "skill": "publish-report", "input": { "title": "Q3", "body": "B", "path": "reports/q3.md" } }),
        )
        .await;
    assert_eq!(waiting.0, 202, "{}", waiting.2);
    let approval = waiting.2["step"]["approval_id"].as_i64().unwrap();
    let waiting_run = waiting.2["run_id"].as_str().unwrap();
    // Watched on node A, answered on node B: A's stream hears B's commits (LISTEN/NOTIFY).
    let stream = reqwest::Client::new()
        .get(node_a.url(&format!("/v1/runs/{waiting_run}/events")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let watcher = tokio::spawn(crate::serve::read_events(stream, std::time::Duration::from_secs(20)));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let voted = b
        .post(
            &format!("/v1/approvals/{approval}/votes"),
            &bob,
            &json!({ "decision": "approve" }),
        )
        .await;
    assert_eq!(voted.0, 200, "{}", voted.2);
    assert_eq!(voted.2["step"]["status"], "completed", "{}", voted.2);
    let events = watcher.await.unwrap();
    let names: Vec<&str> = events.iter().map(|(_, event, _)| event.as_str()).collect();
    assert_eq!(names.last(), Some(&"step-succeeded"), "node A's stream: {names:?}");
    let done = a.get(&format!("/v1/runs/{waiting_run}"), &alice).await;
    assert_eq!(done.2["run"]["state"], "succeeded", "{}", done.2);

    for api in [&a, &b] {
        let verified = api.get("/v1/audit/verify", &bob).await;
        assert_eq!(verified.0, 200, "{}", verified.2);
        assert_eq!(verified.2["status"], "intact", "{}", verified.2);
    }
    let on_a = a.get("/v1/audit/verify", &bob).await;
    let on_b = b.get("/v1/audit/verify", &bob).await;
    assert_eq!(on_a.2["entries"], on_b.2["entries"]);
    assert_eq!(on_a.2["head"], on_b.2["head"], "the nodes disagree on the log's head");

    drop((node_a, node_b));
    let (url, schema) = database.split_once("?options[search_path]=").unwrap();
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}
