//! `agentd serve` against the same work in process, in one run on one machine:
//!
//! 1. governed, durable no-op runs (`noop`, JWT-authenticated, policy-decided, three SQLite
//!    transactions each) with 1, 2, 16 and 64 concurrent clients: over HTTP on loopback to an
//!    `agentd serve` process, and in process through `agent_runtime::run_step` on the same
//!    kind of store; p50, p99 and runs/s, and HTTP's share of in-process throughput;
//! 2. with `AGENTD_BENCH_DATABASE_URL` (or `AGENTD_TEST_DATABASE_URL`): the same HTTP load at 16
//!    clients on 1, 2 and 3 nodes sharing one PostgreSQL database, against the SQLite node, with
//!    each node's CPU;
//! 3. 1,000 concurrent SSE subscribers to one run: the delay from an event's recording to its
//!    arrival at every subscriber (p50, p99, max), and the server's memory per idle stream.
//!
//! `cargo bench -p agentd --bench serve` (needs the packages of `cargo xtask build-plugins`);
//! `AGENTD_BENCH_BIN=path/to/agentd` runs that build's server instead of this one's.

#![allow(missing_docs, clippy::print_stdout, reason = "a benchmark binary prints its figures")]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use control_plane::{ControlPlane, PolicyEngine, Role, Store, TokenAuthority, TokenConfig};

const WARM_UP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(4);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn packages() -> PathBuf {
    std::env::var_os("AGENTD_PLUGINS").map_or_else(|| repo().join("target/plugins"), PathBuf::from)
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1e3
}

struct Level {
    runs_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `clients` loops of `call` for [`MEASURE`] after [`WARM_UP`].
async fn load<F, Fut>(clients: usize, call: F) -> Level
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let call = Arc::clone(&call);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while started.elapsed() < WARM_UP + MEASURE {
                    let at = Instant::now();
                    call().await;
                    if at.duration_since(started) >= WARM_UP {
                        samples.push(at.elapsed());
                    }
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    Level {
        runs_per_second: samples.len() as f64 / MEASURE.as_secs_f64(),
        p50_ms: percentile(&mut samples, 0.5),
        p99_ms: percentile(&mut samples, 0.99),
    }
}

struct Server(Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

fn serve(state: &std::path::Path) -> Server {
    serve_on(state, None)
}

/// `agentd serve` on `state`, its control plane in `database` (PostgreSQL) when given.
fn serve_on(state: &std::path::Path, database: Option<&str>) -> Server {
    use std::io::BufRead;
    // `AGENTD_BENCH_BIN` runs another build's server (the same bench against two builds).
    let binary = std::env::var_os("AGENTD_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_agentd").into());
    let mut command = Command::new(binary);
    if let Some(database) = database {
        command.args(["--database", database]);
    }
    let mut child = command
        .args(["--state-dir", state.to_str().unwrap()])
        .args(["--plugins", packages().to_str().unwrap()])
        .args(["--policy", repo().join("policies/default.cedar").to_str().unwrap()])
        .args(["serve", "--listen", "127.0.0.1:0", "--rate-limit", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().strip_prefix("agentd listening on ").unwrap().to_owned();
    Server(child, base)
}

/// User plus system CPU time of process `pid`, in clock ticks (100 per second).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// CPU ticks (user + system) of every PostgreSQL server process now, by pid: the server forks
/// one process per connection.
fn postgres_ticks() -> std::collections::HashMap<u32, u64> {
    let mut ticks = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if stat.contains("(postgres)") {
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            ticks.insert(
                pid,
                fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap(),
            );
        }
    }
    ticks
}

/// `(busy, all)` ticks of the whole machine since boot (`/proc/stat`; idle and I/O wait are
/// not busy).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|field| field.parse().unwrap())
        .collect();
    let all: u64 = fields.iter().sum();
    (all - fields[3] - fields[4], all)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What the SSE benchmark reads of a run event.
#[derive(serde::Deserialize)]
struct Stamp {
    lamport: Option<u64>,
    recorded_at_ms: Option<f64>,
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1e3
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (http_state, local_state) = (dir.path().join("http"), dir.path().join("local"));
        std::fs::create_dir_all(&http_state).unwrap();
        std::fs::create_dir_all(&local_state).unwrap();
        let authority = TokenAuthority::load_or_create(&http_state.join("jwt-hs256.key"), TokenConfig::default()).unwrap();
        let token = |subject: &str, role: Role| authority.issue(subject, "acme", &[role], Duration::from_secs(3600)).unwrap();
        let (agent, reviewer) = (token("alice", Role::Agent), token("bob", Role::Reviewer));

        // In process: the same library calls the server makes, on a store of its own.
        let policy = PolicyEngine::from_file(&repo().join("policies/default.cedar")).unwrap();
        let local_authority =
            TokenAuthority::load_or_create(&local_state.join("jwt-hs256.key"), TokenConfig::default()).unwrap();
        let local_token = local_authority.issue("alice", "acme", &[Role::Agent], Duration::from_secs(3600)).unwrap();
        let store = Store::open(&local_state.join("state.db")).await.unwrap();
        let control_plane = Arc::new(ControlPlane::new(local_authority, policy, store));
        // The same, each COMMIT fsyncing by itself (the store before group commit).
        let each_state = dir.path().join("each");
        std::fs::create_dir_all(&each_state).unwrap();
        let each_authority =
            TokenAuthority::load_or_create(&each_state.join("jwt-hs256.key"), TokenConfig::default()).unwrap();
        let each_token = each_authority.issue("alice", "acme", &[Role::Agent], Duration::from_secs(3600)).unwrap();
        let each_store = Store::open_with(&each_state.join("state.db"), control_plane::Durability::FsyncEachCommit)
            .await
            .unwrap();
        let each_plane = Arc::new(ControlPlane::new(
            each_authority,
            PolicyEngine::from_file(&repo().join("policies/default.cedar")).unwrap(),
            each_store,
        ));
        let runtime = agent_runtime::Runtime::new(agent_runtime::RuntimeConfig {
            workspace_root: Some(local_state.join("workspace")),
            kv_path: Some(local_state.join("kv.db")),
            ..agent_runtime::RuntimeConfig::default()
        })
        .unwrap();
        runtime.load_package(&packages().join("noop")).await.unwrap();
        let runtime = Arc::new(runtime);
        let request = plugin_abi::InvokeRequest::new(serde_json::Map::new());

        let server = serve(&http_state);
        let client = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
        let body = serde_json::json!({ "skill": "noop", "input": {} }).to_string();

        let in_process = |control_plane: &Arc<ControlPlane>, token: &str, clients: usize| {
            let (runtime, control_plane, token, request) =
                (Arc::clone(&runtime), Arc::clone(control_plane), token.to_owned(), request.clone());
            load(clients, move || {
                let (runtime, control_plane, token, request) =
                    (Arc::clone(&runtime), Arc::clone(&control_plane), token.clone(), request.clone());
                async move {
                    let principal = control_plane.authenticate(&token).unwrap();
                    let outcome = agent_runtime::run_step(&runtime, &control_plane, &principal, "noop", &request)
                        .await
                        .unwrap();
                    assert!(matches!(outcome, agent_runtime::StepOutcome::Dispatched { .. }));
                }
            })
        };

        // `clients` loops of POST /v1/runs, spread round-robin over the servers at `bases`.
        let http_load = |bases: Vec<String>, clients: usize| {
            let (client, token, body) = (client.clone(), agent.clone(), body.clone());
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            load(clients, move || {
                let base = &bases[next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % bases.len()];
                let request = client
                    .post(format!("{base}/v1/runs"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.clone());
                async move {
                    let response = request.send().await.unwrap();
                    assert_eq!(response.status().as_u16(), 201);
                    response.bytes().await.unwrap();
                }
            })
        };

        println!("governed, durable noop runs: in process vs over HTTP on loopback ({} s per level)", MEASURE.as_secs());
        println!(
            "  clients | in process, fsync per txn    | in process, group commit      | HTTP, group commit            | HTTP/in-process"
        );
        println!(
            "          |   runs/s  p50 ms  p99 ms     |   runs/s  p50 ms  p99 ms commits/fsync |   runs/s  p50 ms  p99 ms |"
        );
        for clients in [1, 2, 16, 64] {
            let each = in_process(&each_plane, &each_token, clients).await;
            let before = control_plane.commit_stats();
            let local = in_process(&control_plane, &local_token, clients).await;
            let after = control_plane.commit_stats();
            let shared = (after.commits - before.commits) as f64 / (after.fsyncs - before.fsyncs).max(1) as f64;
            let http = http_load(vec![server.1.clone()], clients).await;
            println!(
                "  {clients:>7} | {:>8.0} {:>7.2} {:>7.2}     | {:>8.0} {:>7.2} {:>7.2} {:>13.1} | {:>8.0} {:>7.2} {:>7.2} | {:>5.2}",
                each.runs_per_second,
                each.p50_ms,
                each.p99_ms,
                local.runs_per_second,
                local.p50_ms,
                local.p99_ms,
                shared,
                http.runs_per_second,
                http.p50_ms,
                http.p99_ms,
                http.runs_per_second / local.runs_per_second
            );
        }

        // Nodes: the same HTTP load (16 clients) on 1, 2 and 3 `agentd serve` nodes sharing one
        // PostgreSQL database, against the SQLite node above, when a database is given.
        if let Ok(url) = std::env::var("AGENTD_BENCH_DATABASE_URL").or_else(|_| std::env::var("AGENTD_TEST_DATABASE_URL")) {
            const CLIENTS: usize = 16;
            let sqlite = http_load(vec![server.1.clone()], CLIENTS).await;
            println!("\nnodes: governed noop runs over HTTP, {CLIENTS} clients spread over the nodes (4 s)");
            println!(
                "  store          | runs/s  p50 ms  p99 ms | x SQLite | machine busy | PostgreSQL | CPU per node (of 2 cores)"
            );
            println!(
                "  SQLite, 1 node | {:>6.0} {:>7.2} {:>7.2} |     1.00 |              |            |",
                sqlite.runs_per_second, sqlite.p50_ms, sqlite.p99_ms
            );
            let schema = format!("agentd_bench_{}", std::process::id());
            let admin = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::raw_sql(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.unwrap();
            let database = format!("{url}?options[search_path]={schema}");
            let mut nodes: Vec<Server> = Vec::new();
            for count in 1..=3 {
                let state = dir.path().join(format!("node-{count}"));
                std::fs::create_dir_all(&state).unwrap();
                std::fs::copy(http_state.join("jwt-hs256.key"), state.join("jwt-hs256.key")).unwrap();
                if count > 1 {
                    for key in ["postgres.audit-key", "postgres.checkpoint-key"] {
                        std::fs::copy(dir.path().join("node-1").join(key), state.join(key)).unwrap();
                    }
                }
                nodes.push(serve_on(&state, Some(&database)));
                let ticks = |nodes: &[Server]| nodes.iter().map(|node| cpu_ticks(node.0.id())).collect::<Vec<_>>();
                let before = ticks(&nodes);
                let (server_before, machine_before) = (postgres_ticks(), machine_ticks());
                let level = http_load(nodes.iter().map(|node| node.1.clone()).collect(), CLIENTS).await;
                let after = ticks(&nodes);
                let (server_after, machine_after) = (postgres_ticks(), machine_ticks());
                let seconds = (WARM_UP + MEASURE).as_secs_f64();
                let server: u64 = server_after
                    .iter()
                    .map(|(pid, after)| after - server_before.get(pid).copied().unwrap_or(0).min(*after))
                    .sum();
                // Busy share of all cores, as a share of one core (200% = both cores busy).
                let machine = (machine_after.0 - machine_before.0) as f64 / (machine_after.1 - machine_before.1) as f64
                    * std::thread::available_parallelism().map_or(1.0, |cores| cores.get() as f64)
                    * 100.0;
                let cpu: Vec<String> = before
                    .iter()
                    .zip(&after)
                    .map(|(before, after)| {
                        format!("{:.0}%", (after - before) as f64 / 100.0 / (WARM_UP + MEASURE).as_secs_f64() * 100.0)
                    })
                    .collect();
                println!(
                    "  PostgreSQL, {count} | {:>6.0} {:>7.2} {:>7.2} | {:>8.2} | {:>11.0}% | {:>9.0}% | {}",
                    level.runs_per_second,
                    level.p50_ms,
                    level.p99_ms,
                    level.runs_per_second / sqlite.runs_per_second,
                    machine,
                    server as f64 / 100.0 / seconds * 100.0,
                    cpu.join(" ")
                );
            }
            drop(nodes);
            sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await.unwrap();
        }

        // SSE: 1,000 subscribers to one run that waits for approval; then approve it.
        const SUBSCRIBERS: usize = 1_000;
        let waiting = client
            .post(format!("{}/v1/runs", server.1))
            .bearer_auth(&agent)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "skill": "publish-report", "input": { "title": "T", "body": "B", "path": "reports/t.md" } }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(waiting.status().as_u16(), 202);
        let waiting: serde_json::Value = serde_json::from_slice(&waiting.bytes().await.unwrap()).unwrap();
        let run_id = waiting["run_id"].as_str().unwrap().to_owned();
        let approval = waiting["step"]["approval_id"].as_i64().unwrap();
        let known = waiting["run"]["lamport"].as_u64().unwrap();
        let before = rss_kib(server.0.id());
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(SUBSCRIBERS);
        // Subscribers read the raw socket (no HTTP client library): the load generator shares
        // the machine's two cores with the server and must cost as little as it can.
        let address = server.1.trim_start_matches("http://").to_owned();
        let subscribers: Vec<_> = (0..SUBSCRIBERS)
            .map(|_| {
                let (address, token, ready) = (address.clone(), agent.clone(), ready_tx.clone());
                let request = format!(
                    "GET /v1/runs/{run_id}/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
                );
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
                    socket.write_all(request.as_bytes()).await.unwrap();
                    let (mut buffer, mut delays, mut seen) = (Vec::<u8>::new(), Vec::new(), 0u64);
                    let mut chunk = vec![0u8; 16 * 1024];
                    loop {
                        let read = socket.read(&mut chunk).await.unwrap();
                        if read == 0 {
                            break;
                        }
                        let arrived = now_ms();
                        buffer.extend_from_slice(&chunk[..read]);
                        // Events end with a blank line; chunked framing lines fall between them.
                        while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
                            let block: Vec<u8> = buffer.drain(..end + 2).collect();
                            let block = String::from_utf8_lossy(&block);
                            let Some(data) = block.lines().find_map(|line| line.strip_prefix("data:")) else { continue };
                            // Only the two fields measured are decoded, as a lean client would.
                            let stamp: Stamp = serde_json::from_str(data.trim()).unwrap();
                            let (Some(lamport), Some(recorded_at_ms)) = (stamp.lamport, stamp.recorded_at_ms) else {
                                continue;
                            };
                            seen = lamport;
                            if lamport == known {
                                ready.send(()).await.unwrap();
                            } else if lamport > known {
                                delays.push(arrived - recorded_at_ms);
                            }
                        }
                        if buffer.ends_with(b"0\r\n\r\n") {
                            break;
                        }
                    }
                    (delays, seen)
                })
            })
            .collect();
        for _ in 0..SUBSCRIBERS {
            ready_rx.recv().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(server.0.id());
        let voted = client
            .post(format!("{}/v1/approvals/{approval}/votes", server.1))
            .bearer_auth(&reviewer)
            .header("content-type", "application/json")
            .body(r#"{"decision": "approve"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(voted.status().as_u16(), 200);
        let mut delays = Vec::new();
        for subscriber in subscribers {
            let (mine, _) = subscriber.await.unwrap();
            assert!(!mine.is_empty(), "a subscriber got no event after the approval");
            delays.extend(mine);
        }
        delays.sort_by(f64::total_cmp);
        let at = |p: f64| delays[((delays.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "\nSSE, {SUBSCRIBERS} subscribers to one run, {} events delivered after the approval:",
            delays.len()
        );
        println!(
            "  recorded -> received: min {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (ms clock; includes the commit)",
            at(0.0),
            at(0.5),
            at(0.99),
            at(1.0)
        );
        println!(
            "  server memory: {before} KiB before the streams, {after} KiB with {SUBSCRIBERS} idle streams: {:.1} KiB per stream",
            (after.saturating_sub(before)) as f64 / SUBSCRIBERS as f64
        );
    });
}
