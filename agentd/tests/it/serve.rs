//! `agentd serve` end to end: the binary listening on loopback, driven over HTTP the way a
//! platform team's application would, including everything a hostile or broken client sends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control_plane::{Role, TokenConfig};
use serde_json::{Value, json};

use crate::{Env, packages_dir, repo_root};

/// An `agentd serve` process on a free loopback port; SIGTERM and reaped when dropped.
pub struct Served {
    child: Child,
    pub base: String,
    pub log: std::path::PathBuf,
}

impl Env {
    /// `agentd serve` under the default policy with `extra` arguments.
    pub fn serve(&self, extra: &[&str]) -> Served {
        self.serve_with(&repo_root().join("policies/default.cedar"), extra, &[])
    }

    /// `agentd serve` under `policy`, with `extra` arguments and environment `vars`; its log
    /// is appended to `serve.log` in the test directory.
    pub fn serve_with(&self, policy: &std::path::Path, extra: &[&str], vars: &[(&str, &str)]) -> Served {
        let log = self.dir.path().join("serve.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentd"))
            .args(["--state-dir", self.state_dir().to_str().unwrap()])
            .args(["--plugins", packages_dir().to_str().unwrap()])
            .args(["--policy", policy.to_str().unwrap()])
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .envs(vars.iter().copied())
            .env("AGENTD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("agentd listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "no address printed: {line:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_owned();
        Served { child, base, log }
    }
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn address(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    /// SIGKILL: the process ends at whatever instruction it was at.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (at most `within`) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A status, a media type and a body as JSON (or a string).
pub type Answer = (u16, String, Value);

/// A client of one served agentd.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    pub fn of(served: &Served) -> Self {
        Api {
            client: reqwest::Client::new(),
            base: served.base.clone(),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.send(reqwest::Method::GET, path, Some(token), None, &[]).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(token), Some(body), &[])
            .await
    }

    /// `/metrics`, as text.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.base);
        self.client.get(url).send().await.unwrap().text().await.unwrap()
    }

    /// One request to `path`, with a bearer token, a JSON body and headers if given.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let media_type = response
            .headers()
            .get("content-type")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, media_type, body)
    }
}

/// `POST /v1/runs` of `body` as `token` with `Idempotency-Key: "order-1"`.
async fn post_keyed(api: &Api, token: &str, body: &Value) -> Answer {
    let key = [("Idempotency-Key", "\"order-1\"")];
    api.send(reqwest::Method::POST, "/v1/runs", Some(token), Some(body), &key)
        .await
}

/// Asserts a problem+json answer of `status` and type `urn:agentd:problem:<slug>`.
fn assert_problem(answer: &Answer, status: u16, slug: &str) {
    let (got, media_type, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(media_type, "application/problem+json", "{body}");
    assert_eq!(body["type"], format!("urn:agentd:problem:{slug}"), "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|detail| !detail.is_empty()),
        "{body}"
    );
}

/// An SSE stream read one event at a time: `(id, event, data)`.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped), or `None` when the stream ends or `deadline` passes.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Option<(Option<String>, String, Value)> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, "message".to_owned(), String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("event:") {
                        event = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if !data.is_empty() {
                    return Some((id, event, serde_json::from_str(&data).unwrap_or(Value::String(data))));
                }
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                _ => return None,
            }
        }
    }
}

/// Reads an SSE stream until it ends (or `limit` passes): `(id, event, data)` per event.
pub async fn read_events(response: reqwest::Response, limit: Duration) -> Vec<(Option<String>, String, Value)> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut reader = SseReader::new(response);
    let mut events = Vec::new();
    while let Some(event) = reader.next(deadline).await {
        events.push(event);
    }
    events
}

/// Ten-minute tokens: `alice@acme` (agent), `bob@acme` (reviewer), `eve@globex` (agent).
pub fn tokens(env: &Env) -> (String, String, String) {
    let identity = env.identity(TokenConfig::default());
    let issue = |subject: &str, tenant: &str, role: Role| {
        identity
            .issue(subject, tenant, &[role], Duration::from_secs(600))
            .unwrap()
    };
    (
        issue("alice", "acme", Role::Agent),
        issue("bob", "acme", Role::Reviewer),
        issue("eve", "globex", Role::Agent),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_runs_over_http_once_per_idempotency_key_and_is_scoped_to_its_tenant() {
    let env = Env::new();
    let (alice, _bob, eve) = tokens(&env);
    let served = env.serve(&[]);
    let api = Api::of(&served);
    let client = reqwest::Client::new();
    let body = json!({ "skill": "pii-redact", "input": { "text": "mail jane@example.org" } });

    let first = post_keyed(&api, &alice, &body).await;
    assert_eq!(first.0, 201, "{}", first.2);
    assert_eq!(first.2["step"]["status"], "completed", "{}", first.2);
    assert_eq!(first.2["run"]["state"], "succeeded");
    let run_id = first.2["run_id"].as_str().unwrap().to_owned();
    let output = &first.2["step"]["report"]["outcome"]["output"];
    assert!(!output.to_string().contains("jane@example.org"), "{output}");

    // The same key and body: the same run, not a second one.
    let again = post_keyed(&api, &alice, &body).await;
    assert_eq!(again.0, 200, "{}", again.2);
    assert_eq!(again.2["run_id"], run_id.as_str());
    assert_eq!(again.2["replayed"], true);
    // The same key, another body: refused, nothing created.
    let other = json!({ "skill": "pii-redact", "input": { "text": "another" } });
    let reused = post_keyed(&api, &alice, &other).await;
    assert_problem(&reused, 422, "idempotency-key-reused");
    // The same key in another tenant is another key.
    let elsewhere = post_keyed(&api, &eve, &body).await;
    assert_eq!(elsewhere.0, 201, "{}", elsewhere.2);
    assert_ne!(elsewhere.2["run_id"], run_id.as_str());

    let runs = api.get("/v1/runs", &alice).await;
    assert_eq!(runs.2.as_array().unwrap().len(), 1, "{}", runs.2);

    let shown = api.get(&format!("/v1/runs/{run_id}"), &alice).await;
    assert_eq!(shown.0, 200);
    assert_eq!(shown.2["run"]["state"], "succeeded");
    // Another tenant's run id answers as a missing one does.
    let hidden = api.get(&format!("/v1/runs/{run_id}"), &eve).await;
    assert_problem(&hidden, 404, "not-found");
    let hidden = api.get(&format!("/v1/runs/{run_id}/events"), &eve).await;
    assert_problem(&hidden, 404, "not-found");
    let hidden = api.get(&format!("/v1/runs/{run_id}/provenance"), &eve).await;
    assert_problem(&hidden, 404, "not-found");

    let provenance = api.get(&format!("/v1/runs/{run_id}/provenance"), &alice).await;
    assert_eq!(provenance.0, 200);
    assert_eq!(provenance.1, "application/ld+json");
    assert!(provenance.2.to_string().contains(&run_id));

    // A finished run's events: all of them, then the stream ends; resumable after an id.
    let stream = client
        .get(served.url(&format!("/v1/runs/{run_id}/events")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let events = read_events(stream, Duration::from_secs(10)).await;
    let names: Vec<&str> = events.iter().map(|(_, event, _)| event.as_str()).collect();
    assert_eq!(names.first(), Some(&"run-created"), "{names:?}");
    assert_eq!(names.last(), Some(&"step-succeeded"), "{names:?}");
    let ids: Vec<String> = events.iter().map(|(id, _, _)| id.clone().unwrap()).collect();
    let expected: Vec<String> = (1..=events.len()).map(|n| n.to_string()).collect();
    assert_eq!(ids, expected);
    let resumed = client
        .get(served.url(&format!("/v1/runs/{run_id}/events")))
        .bearer_auth(&alice)
        .header("Last-Event-ID", "2")
        .send()
        .await
        .unwrap();
    let rest = read_events(resumed, Duration::from_secs(10)).await;
    assert_eq!(rest.len(), events.len() - 2);
    assert_eq!(rest[0].0.as_deref(), Some("3"));

    let metrics = api.metrics().await;
    assert!(
        metrics.contains("agentd_run_outcomes_total{outcome=\"completed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("agentd_http_requests_total{method=\"POST\",route=\"/v1/runs\",status=\"201\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approval_is_voted_over_http_and_the_run_streams_live_to_completion() {
    let env = Env::new();
    let (alice, bob, eve) = tokens(&env);
    let served = env.serve(&[]);
    let api = Api::of(&served);
    let client = reqwest::Client::new();
    let body = json!({ "skill": "publish-report", "input": { "title": "Q3", "body": "<img src=x onerror=alert(1)>", "path": "reports/q3.md" } });
    // Pending approvals are pushed to each tenant's stream: first the list as it is.
    let approvals_of = |token: &str| client.get(served.url("/v1/approvals/events")).bearer_auth(token).send();
    let mut acme_feed = SseReader::new(approvals_of(&bob).await.unwrap());
    let mut globex_feed = SseReader::new(approvals_of(&eve).await.unwrap());
    let soon = || tokio::time::Instant::now() + Duration::from_secs(10);
    for feed in [&mut acme_feed, &mut globex_feed] {
        let (_, event, data) = feed.next(soon()).await.expect("the pending list comes first");
        assert_eq!((event.as_str(), data), ("approvals", json!([])));
    }

    let waiting = api.post("/v1/runs", &alice, &body).await;
    assert_eq!(waiting.0, 202, "{}", waiting.2);
    assert_eq!(waiting.2["step"]["status"], "awaiting-approval");
    let run_id = waiting.2["run_id"].as_str().unwrap().to_owned();
    let approval = waiting.2["step"]["approval_id"].as_i64().unwrap();
    let (_, event, pushed) = acme_feed.next(soon()).await.expect("the new request is pushed");
    assert_eq!(event, "approvals");
    assert_eq!(pushed[0]["id"], approval, "{pushed}");
    // Another tenant's request never reaches this stream (its list did not change).
    let quiet = globex_feed
        .next(tokio::time::Instant::now() + Duration::from_millis(1500))
        .await;
    assert!(quiet.is_none(), "globex was sent {quiet:?}");

    let pending = api.get("/v1/approvals?status=pending", &bob).await;
    assert_eq!(pending.2.as_array().unwrap().len(), 1, "{}", pending.2);
    let none = api.get("/v1/approvals?status=pending", &eve).await;
    assert_eq!(none.2, json!([]));
    let bad = api.get("/v1/approvals?status=maybe", &bob).await;
    assert_problem(&bad, 400, "bad-query");
    let detail = api.get(&format!("/v1/approvals/{approval}"), &bob).await;
    assert_eq!(detail.0, 200, "{}", detail.2);
    assert_eq!(
        detail.2["verdict"]["decision"]["verdict"]["verdict"], "require-approval",
        "{}",
        detail.2
    );
    assert!(detail.2["verdict"]["decision"]["risk_tier"].is_string(), "{}", detail.2);
    assert_eq!(detail.2["run"]["steps"][0]["state"], "awaiting-approval");
    let hidden = api.get(&format!("/v1/approvals/{approval}"), &eve).await;
    assert_problem(&hidden, 404, "not-found");

    // Watch the run live, then approve: the stream carries the step's start, the guest's
    // progress and its success, then ends.
    let stream = client
        .get(served.url(&format!("/v1/runs/{run_id}/events")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let watcher = tokio::spawn(read_events(stream, Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let votes = format!("/v1/approvals/{approval}/votes");
    let self_vote = api.post(&votes, &alice, &json!({ "decision": "approve" })).await;
    assert_problem(&self_vote, 403, "review-not-permitted");
    let vote = api
        .post(&votes, &bob, &json!({ "decision": "approve", "comment": "fine" }))
        .await;
    assert_eq!(vote.0, 200, "{}", vote.2);
    assert_eq!(vote.2["approval"]["status"], "approved", "{}", vote.2);
    assert_eq!(vote.2["step"]["status"], "completed", "{}", vote.2);
    let twice = api.post(&votes, &bob, &json!({ "decision": "approve" })).await;
    assert_problem(&twice, 409, "already-decided");
    let (_, _, emptied) = acme_feed.next(soon()).await.expect("the decision is pushed");
    assert_eq!(emptied, json!([]), "the approved request left the pending list");

    let events = watcher.await.unwrap();
    let names: Vec<&str> = events.iter().map(|(_, event, _)| event.as_str()).collect();
    assert!(names.contains(&"progress"), "{names:?}");
    assert_eq!(names.last(), Some(&"step-succeeded"), "{names:?}");
    let progress = events.iter().find(|(_, event, _)| event == "progress").unwrap();
    assert_eq!(progress.0, None, "progress events carry no id");
    assert_eq!(progress.2["name"], "report-written");
    assert_eq!(progress.2["run_id"], run_id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_problems_and_store_nothing() {
    let env = Env::new();
    let (alice, bob, _eve) = tokens(&env);
    let served = env.serve(&[]);
    let api = Api::of(&served);
    let client = reqwest::Client::new();
    let runs = "/v1/runs";
    let body = json!({ "skill": "pii-redact", "input": { "text": "x" } });
    let post = reqwest::Method::POST;

    assert_problem(
        &api.send(post.clone(), runs, None, Some(&body), &[]).await,
        401,
        "missing-token",
    );
    let forged = format!("{}x", &alice[..alice.len() - 1]);
    assert_problem(&api.post(runs, &forged, &body).await, 401, "invalid-token");
    assert_problem(
        &api.send(post.clone(), runs, Some(&env.expired_token()), Some(&body), &[])
            .await,
        401,
        "invalid-token",
    );
    let unsigned = api
        .send(
            post.clone(),
            runs,
            Some(&alice),
            None,
            &[("content-type", "text/plain")],
        )
        .await;
    assert_problem(&unsigned, 415, "unsupported-media-type");
    let malformed = client
        .post(served.url(runs))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{\"skill\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status().as_u16(), 400);
    let unknown = json!({ "skill": "pii-redact", "input": {}, "priority": "high" });
    assert_problem(&api.post(runs, &alice, &unknown).await, 422, "invalid-body");
    let both = json!({ "skill": "pii-redact", "steps": [] });
    assert_problem(&api.post(runs, &alice, &both).await, 422, "invalid-body");
    let key = "k".repeat(300);
    assert_problem(
        &api.send(
            post.clone(),
            runs,
            Some(&alice),
            Some(&body),
            &[("Idempotency-Key", &key)],
        )
        .await,
        400,
        "bad-idempotency-key",
    );
    assert_problem(
        &api.send(reqwest::Method::DELETE, runs, Some(&alice), None, &[]).await,
        405,
        "http-405",
    );
    assert_problem(&api.get("/v2/nothing", &alice).await, 404, "not-found");
    assert_problem(&api.get("/v1/approvals/abc", &bob).await, 400, "bad-id");
    assert_problem(
        &api.send(post.clone(), "/v1/skills/pii-redact/rollback", Some(&bob), None, &[])
            .await,
        403,
        "role-required",
    );

    // A 100 MB body is refused from its Content-Length, before it is read.
    let mut stream = TcpStream::connect(served.address()).unwrap();
    write!(
        stream,
        "POST /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{{\"skill\":"
    )
    .unwrap();
    let mut answer = String::new();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("urn:agentd:problem:body-too-large"), "{answer}");
    // A chunked body with no length, larger than the bound: refused while it is read.
    let mut stream = TcpStream::connect(served.address()).unwrap();
    write!(
        stream,
        "POST /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 64 * 1024];
    // 12 MiB, over the 8 MiB + 64 KiB bound.
    for _ in 0..192 {
        // The server may stop reading once it has refused the body.
        if write!(stream, "{:x}\r\n", chunk.len()).is_err()
            || stream.write_all(&chunk).is_err()
            || stream.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut answer = String::new();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Nothing of the above was stored: no run, no audit entry.
    let listed = api.get(runs, &alice).await;
    assert_eq!(listed.2, json!([]), "{}", listed.2);
    let verified = api.get("/v1/audit/verify", &bob).await;
    assert_eq!(verified.2["status"], "intact", "{}", verified.2);
    assert_eq!(verified.2["entries"], 0, "{}", verified.2);

    let metrics = api.metrics().await;
    let failed: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("agentd_failed_authentications_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(failed >= 3, "{metrics}");
}

#[test]
fn slow_clients_are_cut_off_and_tenants_are_rate_limited() {
    let env = Env::new();
    let (alice, _bob, eve) = tokens(&env);
    let served = env.serve(&["--header-timeout-secs", "1", "--rate-limit", "3"]);
    let api = Api::of(&served);

    // A head that never ends: the connection is closed after the header read timeout.
    let mut slow = TcpStream::connect(served.address()).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "held for {waited:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Four requests at once from one tenant: the fourth is over a 3/s quota; another tenant
    // is not affected.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let url = "/v1/approvals";
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(api.get(url, &alice).await);
        }
        let limited = statuses
            .iter()
            .find(|answer| answer.0 == 429)
            .expect("no 429 among 4 requests at 3/s");
        assert_problem(limited, 429, "rate-limited");
        assert_eq!(limited.2["retryable"], true);
        let other = api.get(url, &eve).await;
        assert_eq!(other.0, 200, "{}", other.2);
    });
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let env = Env::new();
    let mut served = env.serve(&[]);
    let health = blocking_get(&served.url("/healthz"));
    assert_eq!(health.as_deref(), Some("ok\n"));
    let status = served
        .terminate(Duration::from_secs(15))
        .expect("agentd serve did not stop on SIGTERM");
    assert!(
        status.success(),
        "{status:?}: {}",
        std::fs::read_to_string(&served.log).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&served.log).unwrap();
    assert!(log.contains("shutting down"), "{log}");
}

#[test]
fn the_checked_in_openapi_document_is_the_one_the_server_serves() {
    let env = Env::new();
    let printed = env.agentd(&["openapi"], None);
    assert!(printed.status.success());
    let generated = String::from_utf8(printed.stdout).unwrap();
    let path = repo_root().join("agentd/openapi.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        generated == checked_in,
        "{} is stale: regenerate it with `cargo run -p agentd -- openapi > agentd/openapi.json`",
        path.display()
    );
    let document: Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    for path in [
        "/v1/runs",
        "/v1/runs/{id}/events",
        "/v1/approvals/{id}/votes",
        "/v1/audit/checkpoint",
        "/metrics",
    ] {
        assert!(document["paths"][path].is_object(), "{path} is not documented");
    }
    let served = env.serve(&[]);
    assert_eq!(
        blocking_get(&served.url("/v1/openapi.json")).as_deref(),
        Some(generated.as_str())
    );
}

/// A GET on a runtime of its own; the body, or `None` on any failure.
fn blocking_get(url: &str) -> Option<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async { reqwest::get(url).await.ok()?.text().await.ok() })
}

#[test]
fn the_hitl_and_runs_commands_talk_to_a_server() {
    let env = Env::new();
    let (alice, bob, eve) = tokens(&env);
    let served = env.serve(&[]);
    let api = Api::of(&served);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let body = json!({ "skill": "publish-report", "input": { "title": "T", "body": "B", "path": "reports/t.md" } });
    let waiting = runtime.block_on(api.post("/v1/runs", &alice, &body));
    assert_eq!(waiting.0, 202, "{}", waiting.2);
    let (run_id, approval) = (
        waiting.2["run_id"].as_str().unwrap().to_owned(),
        waiting.2["step"]["approval_id"].as_i64().unwrap().to_string(),
    );
    // The state directory is not touched by these commands: point them at an empty one.
    let elsewhere = Env::new();
    let remote = |args: &[&str], token: &str| {
        let mut all = vec!["--server", served.base.as_str()];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--token", token]);
        elsewhere.agentd(&all, None)
    };
    let listed = remote(&["--json", "hitl", "list", "--status", "pending"], &bob);
    assert!(listed.status.success(), "{}", crate::stderr(&listed));
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["run_id"], run_id.as_str());
    let refused = remote(&["hitl", "approve", &approval], &eve);
    assert_eq!(refused.status.code(), Some(1));
    assert!(crate::stderr(&refused).contains("404"), "{}", crate::stderr(&refused));
    let approved = remote(&["hitl", "approve", &approval, "--reason", "ok"], &bob);
    assert!(approved.status.success(), "{}", crate::stderr(&approved));
    assert!(
        crate::stdout(&approved).contains("the step completed"),
        "{}",
        crate::stdout(&approved)
    );
    let shown = remote(&["runs", "show", &run_id], &alice);
    assert!(crate::stdout(&shown).contains("succeeded"), "{}", crate::stdout(&shown));
    let listed = remote(&["--json", "runs", "list"], &alice);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let unsupported = elsewhere.agentd(&["--server", served.base.as_str(), "plugins", "list"], None);
    assert_eq!(unsupported.status.code(), Some(1));
    assert!(
        crate::stderr(&unsupported).contains("--server works with"),
        "{}",
        crate::stderr(&unsupported)
    );
    assert!(!elsewhere.state_dir().join("state.db").exists());
}
