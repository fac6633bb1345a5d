//! SIGKILL chaos: `run`, `run-plan`, `hitl approve`, `hitl modify` and `hitl resume` are killed
//! at random points (at least 200 kills), then `agentd runs recover` drives every interrupted
//! run on. Afterwards every acknowledged item is present, no run is left non-terminal without an
//! owner or a pending approval, and each delivery's three effects (a file, a key-value write and
//! a request to a loopback webhook) happened exactly once.
//!
//! The seed is printed; `AGENTD_CHAOS_SEED=<n>` replays a run, `AGENTD_CHAOS_KILLS=<n>` changes
//! the number of kills.

#![allow(
    clippy::print_stderr,
    reason = "the test reports its seed (to replay it) and what it counted"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{Env, envelope, packages_dir, stderr, stdout};

/// The delivery webhook's port: `deliver-report`'s manifest names this origin.
const PORT: u16 = 18931;
/// The lease TTL the chaos runs under: short, so recovery may take runs over soon after a kill.
const LEASE_TTL_MS: u64 = 400;

/// A loopback HTTP/1.1 server recording each request's `Idempotency-Key` and delivery name.
struct Webhook {
    requests: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Webhook {
    fn start() -> Self {
        let listener = TcpListener::bind(("127.0.0.1", PORT))
            .unwrap_or_else(|error| panic!("the chaos test needs 127.0.0.1:{PORT}: {error}"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (Arc::clone(&requests), Arc::clone(&stop));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let requests = Arc::clone(&requests);
                    std::thread::spawn(move || serve(stream, &requests));
                }
            })
        };
        Webhook {
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", PORT));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves keep-alive requests on one connection until it closes.
fn serve(stream: TcpStream, requests: &Mutex<Vec<(String, String)>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (mut length, mut key) = (0usize, String::new());
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "idempotency-key" => key = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let name = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| value["name"].as_str().map(str::to_owned))
            .unwrap_or_default();
        requests.lock().unwrap().push((key, name));
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// xorshift64*: a reproducible stream of pseudo-random numbers from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The chaos environment: the CLI with a policy granting the webhook and short leases.
struct Chaos {
    env: Env,
    policy: std::path::PathBuf,
    agent: String,
    reviewer: String,
}

impl Chaos {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentd"));
        command
            .args(["--state-dir", self.env.state_dir().to_str().unwrap()])
            .args(["--plugins", packages_dir().to_str().unwrap()])
            .args(["--policy", self.policy.to_str().unwrap()])
            .args(args)
            .env("AGENTD_LEASE_TTL_MS", LEASE_TTL_MS.to_string())
            .env_remove("AGENTD_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Starts `args` and SIGKILLs it after `delay` unless it finished first; returns its output
    /// when it finished on its own.
    fn run_killed_after(&self, args: &[&str], delay: Duration) -> Option<Output> {
        let mut child = self.command(args).spawn().unwrap();
        let started = Instant::now();
        while started.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                return Some(child.wait_with_output().unwrap());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        None
    }

    /// Approval requests as the reviewer sees them: (id, status, run id).
    fn approvals(&self) -> Vec<(i64, String, String)> {
        let output = self.run(&["--json", "hitl", "list", "--token", &self.reviewer]);
        assert!(output.status.success(), "{}", stderr(&output));
        let list: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
        list.iter()
            .map(|request| {
                (
                    request["id"].as_i64().unwrap(),
                    request["status"].as_str().unwrap().to_owned(),
                    request["run_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    fn runs(&self) -> Vec<serde_json::Value> {
        let output = self.run(&["--json", "runs", "list", "--token", &self.agent]);
        assert!(output.status.success(), "{}", stderr(&output));
        serde_json::from_str(&stdout(&output)).unwrap()
    }

    fn recover(&self) -> Vec<serde_json::Value> {
        std::thread::sleep(Duration::from_millis(LEASE_TTL_MS + 100));
        let output = self.run(&["--json", "runs", "recover"]);
        assert!(
            matches!(output.status.code(), Some(0 | 5)),
            "recover: {}{}",
            stdout(&output),
            stderr(&output)
        );
        serde_json::from_str(&stdout(&output)).unwrap_or_default()
    }
}

fn delivery(name: &str) -> serde_json::Value {
    json!({ "title": format!("Delivery {name}"), "body": "Quarterly numbers.", "name": name })
}

#[test]
fn sigkill_anywhere_then_recovery_leaves_every_effect_exactly_once() {
    let webhook = Webhook::start();
    let env = Env::new();
    let policy = env.file(
        "policy.cedar",
        &format!(
            "{}\n@id(\"deliveries-webhook\")\npermit(principal, action == Agentd::Action::\"use-capability\", resource)\nwhen {{ resource.kind == \"net.http\" && resource.scope == \"http://127.0.0.1:{PORT}\" }};\n",
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default.cedar"))
                .unwrap()
        ),
    );
    let agent = env.token("alice", "agent");
    let reviewer = env.token("bob", "reviewer");
    let chaos = Chaos {
        env,
        policy,
        agent,
        reviewer,
    };
    let seed = std::env::var("AGENTD_CHAOS_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let kills_wanted: u32 = std::env::var("AGENTD_CHAOS_KILLS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(200);
    eprintln!("chaos seed {seed} (AGENTD_CHAOS_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    // Calibrate: how long one delivery run and one approval take when nobody kills them (the
    // second run: the first one fills the compiled-code cache).
    let input = chaos.env.file("calibrate.json", &envelope(delivery("calibrate")));
    let warm_up_input = chaos.env.file("warm-up.json", &envelope(delivery("warm-up")));
    let warm_up = chaos.run(&[
        "run",
        "deliver-report",
        "--input",
        warm_up_input.to_str().unwrap(),
        "--token",
        &chaos.agent,
    ]);
    assert_eq!(
        warm_up.status.code(),
        Some(4),
        "{}{}",
        stdout(&warm_up),
        stderr(&warm_up)
    );
    let started = Instant::now();
    let output = chaos.run(&[
        "--json",
        "run",
        "deliver-report",
        "--input",
        input.to_str().unwrap(),
        "--token",
        &chaos.agent,
    ]);
    assert_eq!(output.status.code(), Some(4), "{}{}", stdout(&output), stderr(&output));
    let run_time = started.elapsed();
    let id = serde_json::from_str::<serde_json::Value>(&stdout(&output)).unwrap()["approval_id"]
        .as_i64()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let output = chaos.run(&["--json", "hitl", "approve", &id, "--token", &chaos.reviewer]);
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    let approve_time = started.elapsed();
    let window = run_time.max(approve_time).mul_f64(1.2);
    eprintln!("calibration: run {run_time:?}, approve {approve_time:?}; kills land within {window:?}");

    // What finished on its own and said so: (run id, expected at least) must survive.
    let mut acknowledged_runs: BTreeSet<String> = BTreeSet::new();
    let mut acknowledged_approvals: BTreeSet<i64> = BTreeSet::new();
    let mut kills = 0u32;
    let mut by_command: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let mut iteration = 0u32;
    while kills < kills_wanted && iteration < kills_wanted * 4 {
        iteration += 1;
        let approvals = if iteration.is_multiple_of(3) || iteration < 3 {
            chaos.approvals()
        } else {
            Vec::new()
        };
        let pending: Vec<i64> = approvals
            .iter()
            .filter(|(_, status, _)| status == "pending")
            .map(|(id, _, _)| *id)
            .collect();
        let released: Vec<i64> = approvals
            .iter()
            .filter(|(_, status, _)| status == "approved" || status == "modified")
            .map(|(id, _, _)| *id)
            .collect();
        let name = format!("d{iteration}");
        let choice = rng.below(10);
        let (command, args): (&str, Vec<String>) = match choice {
            0..=2 => {
                let file = chaos.env.file(&format!("{name}.json"), &envelope(delivery(&name)));
                (
                    "run",
                    vec![
                        "--json".into(),
                        "run".into(),
                        "deliver-report".into(),
                        "--input".into(),
                        file.display().to_string(),
                    ],
                )
            }
            3..=4 => {
                let plan = json!({ "steps": [
                    { "step_id": "redact", "skill": "pii-redact", "input": { "text": format!("mail {name}@example.org") } },
                    { "step_id": "deliver", "skill": "deliver-report", "input": {
                        "title": format!("Plan {name}"),
                        "body": { "$from": "redact", "pointer": "/redacted" },
                        "name": name,
                    } },
                ] });
                let file = chaos.env.file(&format!("{name}-plan.json"), &plan.to_string());
                (
                    "run-plan",
                    vec![
                        "--json".into(),
                        "run-plan".into(),
                        "--plan".into(),
                        file.display().to_string(),
                    ],
                )
            }
            5..=6 if !pending.is_empty() => {
                let id = pending[rng.below(pending.len() as u64) as usize];
                (
                    "approve",
                    vec!["--json".into(), "hitl".into(), "approve".into(), id.to_string()],
                )
            }
            7 if !pending.is_empty() => {
                let id = pending[rng.below(pending.len() as u64) as usize];
                let file = chaos.env.file(
                    &format!("{name}-edit.json"),
                    &envelope(delivery(&format!("{name}-edited"))),
                );
                (
                    "modify",
                    vec![
                        "--json".into(),
                        "hitl".into(),
                        "modify".into(),
                        id.to_string(),
                        "--input".into(),
                        file.display().to_string(),
                    ],
                )
            }
            8..=9 if !released.is_empty() => {
                let id = released[rng.below(released.len() as u64) as usize];
                (
                    "resume",
                    vec!["--json".into(), "hitl".into(), "resume".into(), id.to_string()],
                )
            }
            _ => continue,
        };
        let token = if matches!(command, "run" | "run-plan") {
            &chaos.agent
        } else {
            &chaos.reviewer
        };
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--token", token]);
        let delay = window.mul_f64(rng.below(1000) as f64 / 1000.0);
        let entry = by_command.entry(command).or_default();
        entry.0 += 1;
        match chaos.run_killed_after(&args, delay) {
            None => {
                kills += 1;
                entry.1 += 1;
            }
            Some(output) => {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&stdout(&output)) {
                    if let Some(run_id) = value["run_id"].as_str() {
                        acknowledged_runs.insert(run_id.to_owned());
                    }
                    if let Some(id) = value["approval_id"].as_i64() {
                        acknowledged_approvals.insert(id);
                    }
                }
            }
        }
        // Now and then a recovery pass runs while the chaos goes on, as a server's would.
        if iteration.is_multiple_of(25) {
            chaos.recover();
        }
    }
    eprintln!("{kills} kills in {iteration} commands; per command (started, killed): {by_command:?}");
    assert!(kills >= kills_wanted, "only {kills} kills landed");

    // Recovery, then reviewers answer whatever still waits, until nothing does.
    for _ in 0..8 {
        chaos.recover();
        let waiting: Vec<i64> = chaos
            .approvals()
            .into_iter()
            .filter(|(_, status, _)| status == "pending")
            .map(|(id, _, _)| id)
            .collect();
        if waiting.is_empty() {
            break;
        }
        for id in waiting {
            let output = chaos.run(&["--json", "hitl", "approve", &id.to_string(), "--token", &chaos.reviewer]);
            assert!(
                output.status.success() || stderr(&output).contains("already decided"),
                "approve #{id}: {}{}",
                stdout(&output),
                stderr(&output)
            );
        }
    }
    let report = chaos.recover();
    assert!(
        report.iter().all(|recovered| recovered["result"] == "done"),
        "a final recovery failed: {report:?}"
    );

    // Every acknowledged run and approval request is there.
    let runs = chaos.runs();
    let run_ids: BTreeSet<String> = runs
        .iter()
        .map(|run| run["run_id"].as_str().unwrap().to_owned())
        .collect();
    for run_id in &acknowledged_runs {
        assert!(run_ids.contains(run_id), "acknowledged run {run_id} is missing");
    }
    let approvals = chaos.approvals();
    let approval_ids: BTreeSet<i64> = approvals.iter().map(|(id, _, _)| *id).collect();
    for id in &acknowledged_approvals {
        assert!(approval_ids.contains(id), "acknowledged approval #{id} is missing");
    }
    // No run is left non-terminal without an owner or a pending approval.
    let pending: BTreeSet<i64> = approvals
        .iter()
        .filter(|(_, status, _)| status == "pending")
        .map(|(id, _, _)| *id)
        .collect();
    let mut states: BTreeMap<String, u32> = BTreeMap::new();
    for run in &runs {
        let state = run["state"].as_str().unwrap();
        *states.entry(state.to_owned()).or_default() += 1;
        let finished = matches!(state, "succeeded" | "failed" | "cancelled" | "timed-out");
        let waits = run["approval_id"].as_i64().is_some_and(|id| pending.contains(&id))
            && matches!(state, "awaiting-approval" | "escalated");
        assert!(
            finished || waits || !run["owner"].is_null(),
            "run {} is {state} with no owner and no pending approval: {run}",
            run["run_id"]
        );
        assert!(
            finished || waits,
            "run {} is still {state} after recovery: {run}",
            run["run_id"]
        );
    }
    eprintln!("runs by state: {states:?}");

    // Effects: each succeeded delivery's file, key-value write and webhook request, once.
    let succeeded: BTreeSet<String> = runs
        .iter()
        .filter(|run| run["state"] == "succeeded")
        .map(|run| run["run_id"].as_str().unwrap().to_owned())
        .collect();
    let requests = webhook.requests();
    let mut keys_by_run: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut names_sent: BTreeSet<String> = BTreeSet::new();
    for (key, name) in &requests {
        assert!(!key.is_empty(), "a webhook request without an Idempotency-Key");
        // `<tenant>/<run>/<step>/<seq>`
        let run_id = key.split('/').nth(1).unwrap().to_owned();
        keys_by_run.entry(run_id).or_default().insert(key.clone());
        names_sent.insert(name.clone());
    }
    for (run_id, keys) in &keys_by_run {
        assert_eq!(
            keys.len(),
            1,
            "run {run_id} made {} distinct deliveries: {keys:?}",
            keys.len()
        );
        assert!(succeeded.contains(run_id), "run {run_id} delivered but did not succeed");
    }
    let deliveries_dir = chaos.env.state_dir().join("workspace/acme/reports/deliveries");
    let files: BTreeSet<String> = std::fs::read_dir(&deliveries_dir)
        .map(|entries| {
            entries
                .map(|entry| {
                    entry
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .trim_end_matches(".md")
                        .to_owned()
                })
                .filter(|name| !name.starts_with(".agentd-partial-"))
                .collect()
        })
        .unwrap_or_default();
    let kv_keys: BTreeSet<String> = crate::with_sqlite(&chaos.env.state_dir().join("kv.db"), async |pool| {
        let keys: Vec<(String,)> =
            sqlx::query_as("SELECT key FROM kv WHERE skill = 'deliver-report' AND key LIKE 'deliveries/%'")
                .fetch_all(pool)
                .await
                .unwrap();
        keys.into_iter()
            .map(|(key,)| key.trim_start_matches("deliveries/").to_owned())
            .collect()
    });
    let delivered_runs = keys_by_run.len();
    eprintln!(
        "{} succeeded runs, {delivered_runs} delivered once each; webhook saw {} requests ({} distinct keys); {} files; {} kv entries",
        succeeded.len(),
        requests.len(),
        keys_by_run.values().map(BTreeSet::len).sum::<usize>(),
        files.len(),
        kv_keys.len()
    );
    assert_eq!(files, names_sent, "files written and deliveries sent differ");
    assert_eq!(kv_keys, names_sent, "key-value writes and deliveries sent differ");
    assert_eq!(names_sent.len(), delivered_runs, "a run delivered under two names");
    // Every run ends in a delivery, so every succeeded run delivered, and only those did.
    assert_eq!(
        succeeded,
        keys_by_run.keys().cloned().collect::<BTreeSet<_>>(),
        "succeeded runs and runs that delivered differ"
    );
    assert!(delivered_runs > 0, "no delivery succeeded: the chaos proved nothing");

    // The audit log, its anchor and its tree verify.
    let output = chaos.run(&["--json", "audit", "verify"]);
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
}
