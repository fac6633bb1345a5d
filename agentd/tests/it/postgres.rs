//! `agentd serve` nodes on one PostgreSQL database (`--database`), when
//! `AGENTD_TEST_DATABASE_URL` names one:
//!
//! - two nodes: a run started on one node is seen on the other, an approval asked on one is
//!   answered on the other and the run completes there, and the shared audit log verifies on
//!   both;
//! - three nodes under SIGKILL: thousands of runs spread over them, each approved on a node
//!   other than the one that took it, while a node is killed and restarted again and again.
//!   Afterwards every run is terminal exactly once, every effect happened once, no event was
//!   written under a superseded lease, the log verifies and checkpoints taken on different
//!   nodes are consistent.
//!
//! The chaos test's seed is printed; `AGENTD_NODES_RUNS` and `AGENTD_NODES_KILLS` change its
//! size (3,000 runs and 20 kills by default).

#![allow(
    clippy::print_stderr,
    reason = "the chaos test reports its seed (to replay it) and what it counted"
)]

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::Env;
use crate::chaos::{Effects, Rng, Webhook, delivery, from_env, seed, webhook_policy};
use crate::serve::{Api, Served, tokens};

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
    let watcher = tokio::spawn(crate::serve::read_events(stream, Duration::from_secs(20)));
    tokio::time::sleep(Duration::from_millis(300)).await;
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

#[test]
fn agentd_migrate_moves_a_used_sqlite_state_to_postgres_and_refuses_a_second_time() {
    let env = Env::new();
    // Refused before anything is opened: a source that is not `sqlite:PATH`.
    let refused = env.agentd(
        &["migrate", "--from", "state.db", "--to", "postgres://x@127.0.0.1/y"],
        None,
    );
    assert_eq!(refused.status.code(), Some(1), "{}", crate::stderr(&refused));
    assert!(
        crate::stderr(&refused).contains("is not `sqlite:PATH`"),
        "{}",
        crate::stderr(&refused)
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(database) = runtime.block_on(fresh_database()) else {
        return;
    };
    // A used SQLite state: a completed run and one waiting for approval.
    let alice = env.token("alice", "agent");
    let done = env.run_json("pii-redact", json!({ "text": "mail jane@example.org" }), &alice);
    assert!(done.status.success(), "{}", crate::stderr(&done));
    // A skill that wrote to its key-value namespace (`flaky` counts its attempts there):
    // approved, failed once on purpose, succeeded on the retry.
    let reviewer = env.token("bob", "reviewer");
    let flaky = env.run_json("flaky", json!({ "fail_first": 1 }), &alice);
    assert_eq!(flaky.status.code(), Some(4), "{}", crate::stderr(&flaky));
    let flaky: serde_json::Value = serde_json::from_str(&crate::stdout(&flaky)).unwrap();
    let approval = flaky["approval_id"].as_i64().unwrap().to_string();
    let approved = env.agentd(&["--json", "hitl", "approve", &approval, "--token", &reviewer], None);
    assert!(approved.status.success(), "{}", crate::stderr(&approved));
    let (kv_rows, effect_rows) = crate::with_sqlite(&env.state_dir().join("kv.db"), async |pool| {
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT key, value FROM kv WHERE skill = 'flaky'")
            .fetch_all(pool)
            .await
            .unwrap();
        let effects: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT idempotency_key, seq, request_digest FROM effects WHERE idempotency_key NOT LIKE 'acme/bulk-%' ORDER BY idempotency_key, seq")
                .fetch_all(pool)
                .await
                .unwrap();
        (rows, effects)
    });
    assert_eq!(kv_rows.len(), 1, "{kv_rows:?}");
    assert_eq!(kv_rows[0].1, 2u32.to_le_bytes(), "two attempts counted");
    assert_eq!(effect_rows.len(), 1, "{effect_rows:?}");
    // More rows than one page of the copy (500), in tables without a rowid, so that paging in
    // primary-key order is what moves them.
    runtime.block_on(async {
        let skill_store = agent_runtime::kv::KvStore::open_lazy(&env.state_dir().join("kv.db")).unwrap();
        for n in 0..1_234u32 {
            let key = format!("acme/bulk-{n}/step-1");
            let effect = agent_runtime::kv::EffectId {
                idempotency_key: &key,
                seq: 0,
                kind: "kv-set",
                request_digest: format!("sha256:{n}"),
            };
            skill_store
                .set_journaled("acme", "bulk", &format!("k/{n:05}"), &n.to_le_bytes(), Some(&effect))
                .await
                .unwrap();
        }
    });
    env.submit_report(&alice);
    let entries = env.audit_entries();
    let source = format!("sqlite:{}", env.state_dir().join("state.db").display());
    let keys = tempfile::tempdir().unwrap();
    let keys_dir = keys.path().to_str().unwrap();

    let migrated = env.agentd(
        &[
            "--state-dir",
            keys_dir,
            "--json",
            "migrate",
            "--from",
            &source,
            "--to",
            &database,
        ],
        None,
    );
    assert!(migrated.status.success(), "{}", crate::stderr(&migrated));
    let report: serde_json::Value = serde_json::from_str(&crate::stdout(&migrated)).unwrap();
    assert_eq!(report["audit_entries"], entries);
    // The skill store came along, row for row, into the shared database's tables.
    let tables: Vec<(String, u64)> = serde_json::from_value(report["tables"].clone()).unwrap();
    assert!(tables.contains(&("kv".to_owned(), 1_235)), "{tables:?}");
    assert!(tables.contains(&("effects".to_owned(), 1_235)), "{tables:?}");
    let (kv_moved, effects_moved) = runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&database).await.unwrap();
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT key, value FROM kv WHERE skill = 'flaky'")
            .fetch_all(&pool)
            .await
            .unwrap();
        let effects: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT idempotency_key, seq, request_digest FROM effects WHERE idempotency_key NOT LIKE 'acme/bulk-%' ORDER BY idempotency_key, seq")
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        (rows, effects)
    });
    assert_eq!((kv_moved, effects_moved), (kv_rows, effect_rows));
    let bulk: Vec<(String, Vec<u8>)> = runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&database).await.unwrap();
        let rows = sqlx::query_as("SELECT key, value FROM kv WHERE skill = 'bulk' ORDER BY key")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows
    });
    let expected: Vec<(String, Vec<u8>)> = (0..1_234u32)
        .map(|n| (format!("k/{n:05}"), n.to_le_bytes().to_vec()))
        .collect();
    assert!(
        bulk == expected,
        "the bulk rows differ after the copy ({} rows)",
        bulk.len()
    );
    // The copy serves: the same log verifies on PostgreSQL, the waiting request is listed.
    let verified = env.agentd(
        &[
            "--state-dir",
            keys_dir,
            "--database",
            &database,
            "--json",
            "audit",
            "verify",
        ],
        None,
    );
    assert!(verified.status.success(), "{}", crate::stderr(&verified));
    let verified: serde_json::Value = serde_json::from_str(&crate::stdout(&verified)).unwrap();
    assert_eq!(
        (verified["status"].as_str(), verified["entries"].as_u64()),
        (Some("intact"), Some(entries))
    );
    assert_eq!(verified["head"], report["audit_head"]);
    std::fs::copy(env.state_dir().join("jwt-hs256.key"), keys.path().join("jwt-hs256.key")).unwrap();
    let listed = env.agentd(
        &[
            "--state-dir",
            keys_dir,
            "--database",
            &database,
            "--json",
            "hitl",
            "list",
            "--status",
            "pending",
            "--token",
            &reviewer,
        ],
        None,
    );
    assert!(listed.status.success(), "{}", crate::stderr(&listed));
    let listed: Vec<serde_json::Value> = serde_json::from_str(&crate::stdout(&listed)).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["status"], "pending");
    // A skill run on the PostgreSQL state keeps its keys there: a new run of `flaky`, approved,
    // counts its attempts in the database's `kv` table beside the copied row, and no `kv.db`
    // appears in the state directory.
    let on_postgres = |args: &[&str]| {
        let mut all = vec!["--state-dir", keys_dir, "--database", database.as_str(), "--json"];
        all.extend_from_slice(args);
        env.agentd(&all, None)
    };
    let input = env.file("flaky-again.json", &crate::envelope(json!({ "fail_first": 1 })));
    let waiting = on_postgres(&["run", "flaky", "--input", input.to_str().unwrap(), "--token", &alice]);
    assert_eq!(waiting.status.code(), Some(4), "{}", crate::stderr(&waiting));
    let waiting: serde_json::Value = serde_json::from_str(&crate::stdout(&waiting)).unwrap();
    let approval = waiting["approval_id"].as_i64().unwrap().to_string();
    let approved = on_postgres(&["hitl", "approve", &approval, "--token", &reviewer]);
    assert!(approved.status.success(), "{}", crate::stderr(&approved));
    let counted: Vec<Vec<u8>> = runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&database).await.unwrap();
        let values = sqlx::query_scalar("SELECT value FROM kv WHERE skill = 'flaky' ORDER BY updated_at_ms")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        values
    });
    assert_eq!(counted, [2u32.to_le_bytes().to_vec(), 2u32.to_le_bytes().to_vec()]);
    assert!(!keys.path().join("kv.db").exists(), "the PostgreSQL node wrote a kv.db");

    let again = env.agentd(
        &["--state-dir", keys_dir, "migrate", "--from", &source, "--to", &database],
        None,
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(
        crate::stderr(&again).contains("is not empty"),
        "{}",
        crate::stderr(&again)
    );
    drop_database(&runtime, &database);
}

/// Drops the schema of `database` (a URL from [`fresh_database`]).
fn drop_database(runtime: &tokio::runtime::Runtime, database: &str) {
    let (url, schema) = database.split_once("?options[search_path]=").unwrap();
    runtime.block_on(async {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&pool)
            .await
            .unwrap();
    });
}

/// The lease TTL of the three-node test (ms): long enough that a live owner on a loaded
/// 2-core machine mostly keeps its runs, short enough that a killed node's runs move on fast.
const NODE_LEASE_TTL_MS: &str = "1000";

/// How a client reached the end of one run: the run, and the nodes that took it and voted.
struct Driven {
    run_id: String,
    took: usize,
    voted: BTreeSet<usize>,
}

#[test]
fn three_nodes_under_sigkill_run_each_run_once_and_keep_one_log() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(database) = runtime.block_on(fresh_database()) else {
        return; // No database to share: `.ci/run` always sets one.
    };
    let (runs, kills): (usize, usize) = (from_env("AGENTD_NODES_RUNS", 3_000), from_env("AGENTD_NODES_KILLS", 20));
    // The kill schedule replays with `AGENTD_NODES_SEED`; the interleaving of requests does not.
    let seed = seed("AGENTD_NODES_SEED");
    eprintln!("three-node chaos seed {seed}: {runs} runs, {kills} kills");
    let webhook = Webhook::start();
    // The nodes share one state directory, as nodes on one host share a volume: the workspace
    // the deliveries write and the keys. The key-value store and the effects journal are in the
    // database (ADR 0016), where nodes on different hosts would find them too.
    let env = Env::new();
    let policy = webhook_policy(&env);
    let agent = env.token("alice", "agent");
    let reviewer = env.token("bob", "reviewer");
    let extra = ["--database", database.as_str(), "--recovery-secs", "1"];
    let vars = [("AGENTD_LEASE_TTL_MS", NODE_LEASE_TTL_MS)];
    let start = || env.serve_with(&policy, &extra, &vars);
    // The first node creates the keys and anchors the log before the others start.
    let mut nodes: Vec<Served> = vec![start()];
    nodes.push(start());
    nodes.push(start());
    let bases = Arc::new(RwLock::new(
        nodes.iter().map(|node| node.base.clone()).collect::<Vec<_>>(),
    ));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    // Clients: each run is taken by node `i % 3` (the next one when that node is down) and
    // approved on another node.
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let drivers = {
        let (bases, client, agent, reviewer, finished) = (
            Arc::clone(&bases),
            client.clone(),
            agent.clone(),
            reviewer.clone(),
            Arc::clone(&finished),
        );
        runtime.spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(24));
            let tasks: Vec<_> = (0..runs)
                .map(|index| {
                    let (bases, client, agent, reviewer, finished, limit) = (
                        Arc::clone(&bases),
                        client.clone(),
                        agent.clone(),
                        reviewer.clone(),
                        Arc::clone(&finished),
                        Arc::clone(&limit),
                    );
                    tokio::spawn(async move {
                        let _slot = limit.acquire_owned().await.unwrap();
                        let driven = drive(&client, &bases, &agent, &reviewer, index).await;
                        finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        driven
                    })
                })
                .collect();
            let mut driven = Vec::with_capacity(tasks.len());
            for task in tasks {
                driven.push(task.await.unwrap());
            }
            driven
        })
    };

    // The killer: a random node, at a random moment, SIGKILLed and restarted, `kills` times;
    // now and then a checkpoint from a random live node, for the consistency proofs.
    let mut rng = Rng(seed);
    let mut checkpoints: Vec<(usize, String)> = Vec::new();
    let checkpoint = |base: &str| {
        runtime.block_on(async {
            let response = client.get(format!("{base}/v1/audit/checkpoint")).send().await.ok()?;
            response.status().is_success().then_some(())?;
            response.text().await.ok()
        })
    };
    let mut killed_with_work_left = 0;
    for kill in 0..kills {
        std::thread::sleep(Duration::from_millis(300 + rng.below(1_200)));
        let victim = rng.below(3) as usize;
        if finished.load(std::sync::atomic::Ordering::Relaxed) < runs {
            killed_with_work_left += 1;
        }
        nodes[victim].kill();
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        nodes[victim] = start();
        bases.write().unwrap()[victim] = nodes[victim].base.clone();
        if kill % 5 == 4 {
            let from = (victim + 1) % 3;
            if let Some(note) = checkpoint(&nodes[from].base) {
                checkpoints.push((from, note));
            }
        }
    }
    eprintln!("{kills} kills, {killed_with_work_left} of them while runs were still being driven");
    assert!(
        killed_with_work_left * 2 >= kills,
        "only {killed_with_work_left} of {kills} kills landed while runs were being driven"
    );
    let driven = runtime.block_on(drivers).unwrap();

    // Every run terminal exactly once, one run per key, each approved on another node.
    let names: BTreeSet<String> = (0..runs).map(|index| format!("n{index}")).collect();
    let run_ids: BTreeSet<&str> = driven.iter().map(|driven| driven.run_id.as_str()).collect();
    assert_eq!(run_ids.len(), runs, "two keys answered with one run");
    for driven in &driven {
        assert!(
            !driven.voted.is_empty() && !driven.voted.contains(&driven.took),
            "run {} was taken by node {} and voted on {:?}",
            driven.run_id,
            driven.took,
            driven.voted
        );
    }
    let facts = runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&database).await.unwrap();
        // Each run has one step: its end is the step's success (and nothing else ends it).
        let stored: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT run_id,
                    COUNT(*) FILTER (WHERE event_type = 'step-succeeded'),
                    COUNT(*) FILTER (WHERE event_type IN ('step-failed', 'run-cancelled', 'run-timed-out'))
             FROM run_events GROUP BY run_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        // An event written under a lower fencing token than an earlier event of its run: a
        // write from a superseded owner.
        let stale: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT run_id, lamport, fencing_token FROM (
                 SELECT run_id, lamport, fencing_token,
                        MAX(fencing_token) OVER (PARTITION BY run_id ORDER BY lamport
                                                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
                 FROM run_events) AS ordered
             WHERE fencing_token < before",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        // Takeovers, each with its token and time; an event of that run recorded after it
        // under a lower token would be a superseded owner's write accepted.
        let late: Vec<(String, i64)> = sqlx::query_as(
            "SELECT e.run_id, e.lamport
             FROM audit a
             JOIN run_events e
               ON e.run_id = CAST(a.payload AS JSONB)->>'run_id'
              AND e.fencing_token < CAST(CAST(a.payload AS JSONB)->>'fencing_token' AS BIGINT)
              AND e.recorded_at_ms > a.recorded_at_ms
             WHERE a.kind = 'run-control' AND CAST(a.payload AS JSONB)->>'action' = 'taken-over'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let takeovers: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit WHERE kind = 'run-control' AND CAST(payload AS JSONB)->>'action' = 'taken-over'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let recovered: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM run_events WHERE event_type = 'step-recovered'")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        (stored, stale, late, takeovers, recovered)
    });
    let (stored, stale, late, takeovers, recovered) = facts;
    assert_eq!(
        stored.len(),
        runs,
        "the database holds {} runs for {runs} keys",
        stored.len()
    );
    let not_once: Vec<_> = stored
        .iter()
        .filter(|(_, succeeded, other)| (*succeeded, *other) != (1, 0))
        .collect();
    assert!(not_once.is_empty(), "runs not terminal exactly once: {not_once:?}");
    assert!(stale.is_empty(), "events written under a superseded lease: {stale:?}");
    assert!(
        late.is_empty(),
        "events accepted from an owner after its run was taken over: {late:?}"
    );
    eprintln!("{takeovers} takeovers, {recovered} steps recovered");

    // Every effect once, on every channel; the key-value writes and their journal are in the
    // shared database (no node wrote a `kv.db`).
    assert!(
        !env.state_dir().join("kv.db").exists(),
        "a node kept its key-value store in a file"
    );
    let kv_keys = runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&database).await.unwrap();
        let keys: Vec<(String,)> = sqlx::query_as(crate::chaos::DELIVERY_KEYS)
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        keys
    });
    let effects = Effects::with_kv_keys(&env, &webhook, kv_keys);
    eprintln!(
        "webhook saw {} requests for {} runs",
        effects.requests,
        effects.keys_by_run.len()
    );
    effects.assert_once();
    assert_eq!(effects.names_sent, names, "not every delivery happened");

    // One log, verified on every node; each checkpoint taken mid-run on one node is proved
    // consistent with the final tree by the CLI on the database, checked offline.
    let mut heads = BTreeSet::new();
    for node in &nodes {
        let verified = runtime.block_on(Api::of(node).get("/v1/audit/verify", &reviewer));
        assert_eq!(verified.0, 200, "{}", verified.2);
        assert_eq!(verified.2["status"], "intact", "{}", verified.2);
        heads.insert(verified.2["head"].to_string());
    }
    assert_eq!(heads.len(), 1, "the nodes disagree on the head: {heads:?}");
    assert!(!checkpoints.is_empty(), "no checkpoint was taken during the run");
    let last = (nodes.len() - 1, checkpoint(&nodes[2].base).expect("a final checkpoint"));
    let key = env.agentd(&["--database", &database, "audit", "verifier-key"], None);
    assert!(key.status.success(), "{}", crate::stderr(&key));
    let key = crate::stdout(&key).trim().to_owned();
    for (node, note) in checkpoints.iter().chain(std::iter::once(&last)) {
        let old = env.file("old.checkpoint", note);
        let proof = env.agentd(
            &[
                "--database",
                &database,
                "audit",
                "prove",
                "--from",
                old.to_str().unwrap(),
            ],
            None,
        );
        assert!(
            proof.status.success(),
            "prove from node {node}'s checkpoint: {}",
            crate::stderr(&proof)
        );
        let checked = env.agentd(
            &["audit", "check-proof", "-", "--key", &key],
            Some(&crate::stdout(&proof)),
        );
        assert!(
            checked.status.success(),
            "node {node}'s checkpoint is not consistent with the log: {}{}",
            crate::stdout(&checked),
            crate::stderr(&checked)
        );
    }
    eprintln!(
        "{} checkpoints from several nodes proved consistent",
        checkpoints.len() + 1
    );

    drop(nodes);
    drop_database(&runtime, &database);
}

/// Drives run `n<index>` to its end as a client would through nodes that die: takes it on
/// node `index % 3` (the next node when that one does not answer, with the same key), then
/// approves it on another node until the run has succeeded.
async fn drive(
    client: &reqwest::Client,
    bases: &RwLock<Vec<String>>,
    agent: &str,
    reviewer: &str,
    index: usize,
) -> Driven {
    let name = format!("n{index}");
    let base = |node: usize| bases.read().unwrap()[node % 3].clone();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut took = index % 3;
    let run_id = loop {
        assert!(Instant::now() < deadline, "{name} was never taken");
        let sent = client
            .post(format!("{}/v1/runs", base(took)))
            .bearer_auth(agent)
            .header("Idempotency-Key", &name)
            .header("content-type", "application/json")
            .body(json!({ "skill": "deliver-report", "input": delivery(&name) }).to_string())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                let body: serde_json::Value =
                    serde_json::from_slice(&response.bytes().await.unwrap_or_default()).unwrap_or_default();
                if let Some(run_id) = body["run_id"].as_str() {
                    break run_id.to_owned();
                }
            }
            // Still running on a node (409), or the node is going down: ask again.
            Ok(response) if matches!(response.status().as_u16(), 409 | 502 | 503) => {}
            Ok(response) => {
                let status = response.status();
                panic!("{name}: {status} {}", response.text().await.unwrap_or_default())
            }
            Err(_) => took = (took + 1) % 3, // the node died under the request
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut voted = BTreeSet::new();
    let mut voter = took + 1;
    loop {
        assert!(Instant::now() < deadline, "{name} ({run_id}) did not finish");
        let Ok(response) = client
            .get(format!("{}/v1/runs/{run_id}", base(voter)))
            .bearer_auth(agent)
            .send()
            .await
        else {
            voter = next_other(voter, took);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap_or_default()).unwrap_or_default();
        let run = &body["run"];
        match run["state"].as_str() {
            Some("succeeded") => break,
            Some("awaiting-approval") => {
                let approval = run["steps"]
                    .as_array()
                    .and_then(|steps| steps.iter().find_map(|step| step["approval_id"].as_i64()));
                if let Some(approval) = approval {
                    voted.insert(voter % 3);
                    let answered = client
                        .post(format!("{}/v1/approvals/{approval}/votes", base(voter)))
                        .bearer_auth(reviewer)
                        .header("content-type", "application/json")
                        .body(r#"{"decision": "approve"}"#)
                        .send()
                        .await;
                    match answered {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            // 409: decided already, by a vote whose answer a kill cut off.
                            assert!(
                                matches!(status, 200 | 409 | 502 | 503),
                                "{name}: vote answered {status}"
                            );
                        }
                        Err(_) => voter = next_other(voter, took),
                    }
                }
            }
            Some(state @ ("failed" | "cancelled" | "timed-out" | "escalated")) => {
                panic!("{name} ({run_id}) ended {state}: {body}")
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driven { run_id, took, voted }
}

/// The node after `node` that is not `took`.
fn next_other(node: usize, took: usize) -> usize {
    let next = (node + 1) % 3;
    if next == took % 3 { (next + 1) % 3 } else { next }
}
