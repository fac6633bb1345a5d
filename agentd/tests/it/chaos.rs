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
pub(crate) const PORT: u16 = 18931;
/// The lease TTL the chaos runs under: short, so recovery may take runs over soon after a kill.
pub(crate) const LEASE_TTL_MS: u64 = 400;

/// Held by the [`Webhook`] on [`PORT`], so tests needing it take turns.
static PORT_TAKEN: Mutex<()> = Mutex::new(());

/// A loopback HTTP/1.1 server recording each request's `Idempotency-Key` and delivery name.
pub(crate) struct Webhook {
    _port: std::sync::MutexGuard<'static, ()>,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Webhook {
    pub(crate) fn start() -> Self {
        let port = PORT_TAKEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
            _port: port,
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

/// The number in environment variable `name`, else `default`.
pub(crate) fn from_env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

/// A seed for [`Rng`]: environment variable `name` (to replay a printed seed), else the clock.
pub(crate) fn seed(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// xorshift64*: a reproducible stream of pseudo-random numbers from a printed seed.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
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

/// The default policy plus a grant of the webhook's origin to `deliver-report`.
pub(crate) fn webhook_policy(env: &Env) -> std::path::PathBuf {
    env.file(
        "policy.cedar",
        &format!(
            "{}\n@id(\"deliveries-webhook\")\npermit(principal, action == Agentd::Action::\"use-capability\", resource)\nwhen {{ resource.kind == \"net.http\" && resource.scope == \"http://127.0.0.1:{PORT}\" }};\n",
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default.cedar"))
                .unwrap()
        ),
    )
}

/// What the deliveries left behind: the webhook's distinct keys by run, the names it was sent,
/// the files in the tenant's workspace and the key-value entries.
/// The key-value rows `deliver-report` writes, one per delivery (same SQL on both backends).
pub(crate) const DELIVERY_KEYS: &str = "SELECT key FROM kv WHERE skill = 'deliver-report' AND key LIKE 'deliveries/%'";

pub(crate) struct Effects {
    pub(crate) keys_by_run: BTreeMap<String, BTreeSet<String>>,
    pub(crate) names_sent: BTreeSet<String>,
    files: BTreeSet<String>,
    kv_keys: BTreeSet<String>,
    pub(crate) requests: usize,
}

impl Effects {
    /// The effects of a state on SQLite: the key-value writes are in its `kv.db`.
    pub(crate) fn of(env: &Env, webhook: &Webhook) -> Self {
        let kv_keys = crate::with_sqlite(&env.state_dir().join("kv.db"), async |pool| {
            let keys: Vec<(String,)> = sqlx::query_as(DELIVERY_KEYS).fetch_all(pool).await.unwrap();
            keys
        });
        Self::with_kv_keys(env, webhook, kv_keys)
    }

    /// The effects seen at the webhook and in the workspace, with `kv_keys` the rows
    /// [`DELIVERY_KEYS`] found in the key-value store.
    pub(crate) fn with_kv_keys(env: &Env, webhook: &Webhook, kv_keys: Vec<(String,)>) -> Self {
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
        let files: BTreeSet<String> = std::fs::read_dir(env.state_dir().join("workspace/acme/reports/deliveries"))
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
        let kv_keys: BTreeSet<String> = kv_keys
            .into_iter()
            .map(|(key,)| key.trim_start_matches("deliveries/").to_owned())
            .collect();
        Effects {
            keys_by_run,
            names_sent,
            files,
            kv_keys,
            requests: requests.len(),
        }
    }

    /// Each run that delivered did so under one key, and every channel saw the same names.
    pub(crate) fn assert_once(&self) {
        for (run_id, keys) in &self.keys_by_run {
            assert_eq!(
                keys.len(),
                1,
                "run {run_id} made {} distinct deliveries: {keys:?}",
                keys.len()
            );
        }
        assert_eq!(self.files, self.names_sent, "files written and deliveries sent differ");
        assert_eq!(
            self.kv_keys, self.names_sent,
            "key-value writes and deliveries sent differ"
        );
        assert_eq!(
            self.names_sent.len(),
            self.keys_by_run.len(),
            "a run delivered under two names"
        );
    }
}

pub(crate) fn delivery(name: &str) -> serde_json::Value {
    json!({ "title": format!("Delivery {name}"), "body": "Quarterly numbers.", "name": name })
}

#[test]
fn sigkill_anywhere_then_recovery_leaves_every_effect_exactly_once() {
    let webhook = Webhook::start();
    let env = Env::new();
    let policy = webhook_policy(&env);
    let agent = env.token("alice", "agent");
    let reviewer = env.token("bob", "reviewer");
    let chaos = Chaos {
        env,
        policy,
        agent,
        reviewer,
    };
    let seed = seed("AGENTD_CHAOS_SEED");
    let kills_wanted: u32 = from_env("AGENTD_CHAOS_KILLS", 200);
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
    // `run` and `hitl approve` compile only the packages their run needs: fill the compiled-code
    // cache with all of them before timing anyway, so that no command's first call pays for a
    // compile inside the calibrated kill window (a compile stretched it tenfold once: 9.9 s, and
    // 4 kills in 1,600 commands).
    let listed = chaos.run(&["plugins", "list"]);
    assert!(listed.status.success(), "{}{}", stdout(&listed), stderr(&listed));
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
    // Each command's kill lands within its own calibrated time: `run` loads only its own
    // packages and is much faster than an approval, which loads them all.
    let window = |command: &str| match command {
        "run" => run_time.mul_f64(1.2),
        "run-plan" => run_time.mul_f64(2.4),
        _ => approve_time.mul_f64(1.2),
    };
    eprintln!(
        "calibration: run {run_time:?}, approve {approve_time:?}; kills land within {:?} (run), {:?} (approvals)",
        window("run"),
        window("approve")
    );

    // What finished on its own and said so: (run id, expected at least) must survive.
    let mut acknowledged_runs: BTreeSet<String> = BTreeSet::new();
    let mut acknowledged_approvals: BTreeSet<i64> = BTreeSet::new();
    let mut kills = 0u32;
    let mut by_command: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let mut iteration = 0u32;
    // A kill lands when its delay beats the command; commands that finish faster than the
    // calibration run land fewer (about one in four here), so allow up to eight commands a kill.
    while kills < kills_wanted && iteration < kills_wanted * 8 {
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
        let delay = window(command).mul_f64(rng.below(1000) as f64 / 1000.0);
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
    let effects = Effects::of(&chaos.env, &webhook);
    eprintln!(
        "{} succeeded runs, {} delivered once each; webhook saw {} requests; {} files; {} kv entries",
        succeeded.len(),
        effects.keys_by_run.len(),
        effects.requests,
        effects.files.len(),
        effects.kv_keys.len()
    );
    effects.assert_once();
    // Every run ends in a delivery, so every succeeded run delivered, and only those did.
    assert_eq!(
        succeeded,
        effects.keys_by_run.keys().cloned().collect::<BTreeSet<_>>(),
        "succeeded runs and runs that delivered differ"
    );
    assert!(!succeeded.is_empty(), "no delivery succeeded: the chaos proved nothing");

    // The audit log, its anchor and its tree verify.
    let output = chaos.run(&["--json", "audit", "verify"]);
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
}

/// `agentd serve` itself SIGKILLed while requests run, then restarted, again and again. Clients
/// do what the Idempotency-Key draft tells them to: send again, with the same key, every request
/// that got no answer (or a 409: still in progress). The restarted server's recovery finishes
/// what a kill cut off. In the end each key has exactly one run, every run succeeded, each
/// delivery happened once on every channel, and the audit log verifies.
#[test]
fn sigkill_of_the_server_mid_request_then_restart_leaves_every_effect_exactly_once() {
    let webhook = Webhook::start();
    let env = Env::new();
    let policy = webhook_policy(&env);
    let agent = env.token("alice", "agent");
    let reviewer = env.token("bob", "reviewer");
    let kills: u32 = from_env("AGENTD_SERVE_KILLS", 8);
    let seed = seed("AGENTD_SERVE_SEED");
    eprintln!("serve chaos seed {seed}");
    let mut rng = Rng(seed);
    let ttl = LEASE_TTL_MS.to_string();
    let vars = [("AGENTD_LEASE_TTL_MS", ttl.as_str())];
    let extra = ["--recovery-secs", "1"];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Sends every request not yet answered, with its key; returns the answered ones' run ids.
    let send_all = |base: &str, names: Vec<String>| {
        names
            .into_iter()
            .map(|name| {
                let request = client
                    .post(format!("{base}/v1/runs"))
                    .bearer_auth(&agent)
                    .header("Idempotency-Key", &name)
                    .header("content-type", "application/json")
                    .body(json!({ "skill": "deliver-report", "input": delivery(&name) }).to_string())
                    .send();
                tokio::spawn(async move {
                    let answer = match request.await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let body = response.bytes().await.unwrap_or_default();
                            let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                            Some((status, body))
                        }
                        Err(_) => None, // the server died under it
                    };
                    (name, answer)
                })
            })
            .collect::<Vec<_>>()
    };
    // A reviewer approves every pending request, each vote in its own request; returns how
    // many votes were sent and the statuses answered (a vote cut off by a kill answers nothing).
    let vote_all = |base: &str| {
        let (client, reviewer, base) = (client.clone(), reviewer.clone(), base.to_owned());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let Ok(response) = client
                .get(format!("{base}/v1/approvals?status=pending"))
                .bearer_auth(&reviewer)
                .send()
                .await
            else {
                return (0, statuses);
            };
            let pending: Vec<serde_json::Value> =
                serde_json::from_slice(&response.bytes().await.unwrap_or_default()).unwrap_or_default();
            let votes: Vec<_> = pending
                .iter()
                .filter_map(|request| request["id"].as_i64())
                .map(|id| {
                    let vote = client
                        .post(format!("{base}/v1/approvals/{id}/votes"))
                        .bearer_auth(&reviewer)
                        .header("content-type", "application/json")
                        .body(r#"{"decision": "approve"}"#)
                        .send();
                    tokio::spawn(async move {
                        let response = vote.await.ok()?;
                        let status = response.status().as_u16();
                        if status == 503 {
                            // Which retryable store error it was (stop 26 saw one, unexplained).
                            let problem = response.text().await.unwrap_or_default();
                            eprintln!("vote on request {id}: 503 {problem}");
                        }
                        Some(status)
                    })
                })
                .collect();
            let sent = votes.len();
            for vote in votes {
                statuses.extend(vote.await.unwrap());
            }
            (sent, statuses)
        })
    };
    // Returns how many votes got no answer. 503 (`store-unavailable`, with Retry-After) is the
    // API's documented answer to a retryable store error: the vote is asked again, like one
    // whose answer a kill cut off. It was seen once in CI, on the last server under load; the
    // exactly-once checks below hold either way.
    let check_votes = |(sent, statuses): (usize, Vec<u16>)| {
        let unavailable = statuses.iter().filter(|status| **status == 503).count();
        if unavailable > 0 {
            eprintln!("{unavailable} votes answered 503 store-unavailable; asked again");
        }
        for &status in &statuses {
            // 409: decided already (by a vote whose answer a kill cut off).
            assert!(matches!(status, 200 | 409 | 503), "a vote answered {status}");
        }
        sent - statuses.len()
    };
    let mut names: Vec<String> = Vec::new();
    let mut answered: BTreeMap<String, String> = BTreeMap::new();
    // Keeps the run ids of answered keys; returns how many requests got no answer.
    let record = |answered: &mut BTreeMap<String, String>, answers: Vec<(String, Option<(u16, serde_json::Value)>)>| {
        let mut cut = 0;
        for (name, answer) in answers {
            match answer {
                Some((200..=202, body)) => {
                    let run_id = body["run_id"].as_str().unwrap().to_owned();
                    if let Some(earlier) = answered.insert(name.clone(), run_id.clone()) {
                        assert_eq!(earlier, run_id, "key {name} answered with two runs");
                    }
                }
                // 409: still in progress; 503: a retryable store error (Retry-After). Ask again.
                Some((409, _)) => {}
                Some((503, problem)) => eprintln!("{name}: 503 {problem}"),
                Some((status, body)) => panic!("{name}: {status} {body}"),
                None => cut += 1,
            }
        }
        cut
    };

    let mut interrupted = 0u32;
    for round in 0..kills {
        let mut served = env.serve_with(&policy, &extra, &vars);
        names.extend((0..6).map(|n| format!("k{round}-{n}")));
        let open: Vec<String> = names
            .iter()
            .filter(|name| !answered.contains_key(*name))
            .cloned()
            .collect();
        let delay = Duration::from_millis(rng.below(60));
        let answers = runtime.block_on(async {
            let tasks = send_all(&served.base, open);
            let voter = vote_all(&served.base);
            tokio::time::sleep(delay).await;
            served.kill();
            let mut answers = Vec::new();
            for task in tasks {
                answers.push(task.await.unwrap());
            }
            let votes_cut = check_votes(voter.await.unwrap());
            (answers, votes_cut)
        });
        let (answers, votes_cut) = answers;
        if record(&mut answered, answers) + votes_cut > 0 {
            interrupted += 1;
        }
    }
    eprintln!("{kills} kills, {interrupted} of them with requests in flight");
    assert!(
        interrupted * 2 >= kills,
        "only {interrupted} of {kills} kills landed while a request ran"
    );

    // One last server, not killed: clients retry until every key has its answer, and the
    // reviewer approves until no run waits.
    let served = env.serve_with(&policy, &extra, &vars);
    let api = crate::serve::Api::of(&served);
    let deadline = Instant::now() + Duration::from_secs(120);
    let runs = loop {
        let open: Vec<String> = names
            .iter()
            .filter(|name| !answered.contains_key(*name))
            .cloned()
            .collect();
        let (answers, votes, runs) = runtime.block_on(async {
            let mut answers = Vec::new();
            for task in send_all(&served.base, open) {
                answers.push(task.await.unwrap());
            }
            let votes = vote_all(&served.base).await.unwrap();
            (answers, votes, api.get("/v1/runs", &agent).await)
        });
        assert_eq!(record(&mut answered, answers), 0, "the last server dropped a request");
        assert_eq!(check_votes(votes), 0, "the last server dropped a vote");
        let runs = runs.2.as_array().unwrap().clone();
        let done = answered.len() == names.len() && runs.iter().all(|run| run["state"] == "succeeded");
        if done {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "not done after 120 s: {} of {} keys answered; runs: {runs:?}",
            answered.len(),
            names.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let verified = runtime.block_on(api.get("/v1/audit/verify", &reviewer));
    // One run per key: a retried request never started a second run.
    assert_eq!(runs.len(), names.len(), "{} runs for {} keys", runs.len(), names.len());
    let listed: BTreeSet<String> = runs
        .iter()
        .map(|run| run["run_id"].as_str().unwrap().to_owned())
        .collect();
    let answered_runs: BTreeSet<String> = answered.values().cloned().collect();
    assert_eq!(
        listed, answered_runs,
        "the answers name other runs than the store holds"
    );
    let effects = Effects::of(&env, &webhook);
    eprintln!(
        "{} keys, {} runs; webhook saw {} requests for {} runs",
        names.len(),
        runs.len(),
        effects.requests,
        effects.keys_by_run.len()
    );
    effects.assert_once();
    assert_eq!(
        effects.names_sent,
        names.iter().cloned().collect::<BTreeSet<_>>(),
        "not every key's delivery happened"
    );
    assert_eq!(verified.0, 200, "{}", verified.2);
    assert_eq!(verified.2["status"], "intact", "{}", verified.2);
}
