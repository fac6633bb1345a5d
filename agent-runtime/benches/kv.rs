//! Benchmark (not a test): the skills' key-value store with its effects journal on SQLite
//! (`kv.db`, one node) against PostgreSQL (the database several nodes share, ADR 0016).
//!
//! Each operation is a journaled `kv-set` as a guest's `kv-set` makes it: the journal check,
//! the namespace's quota count, the upsert and the journal row, committed before it returns
//! (SQLite: `BEGIN IMMEDIATE`, WAL, `synchronous=FULL`; PostgreSQL: the namespace's advisory
//! lock, `synchronous_commit` as the server is configured). Three shapes: one writer; 16
//! concurrent writers in 16 namespaces (16 skills or tenants); 16 concurrent writers in one
//! namespace. Every figure comes from one run, rounds alternated between the backends, medians
//! of 3 rounds; ratios are against SQLite in the same shape.
//!
//! Needs `AGENTD_TEST_DATABASE_URL` (`postgres://...`; a schema of its own is created and
//! dropped). `cargo bench -p agent-runtime --bench kv`; `AGENTD_KV_BENCH_OPS` sets the
//! operations per shape (default 2,000).

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_runtime::kv::{EffectId, KvStore};

/// The shapes: (name, concurrent writers, namespaces).
const SHAPES: [(&str, usize, usize); 3] = [
    ("1 writer", 1, 1),
    ("16 writers, 16 namespaces", 16, 16),
    ("16 writers, 1 namespace", 16, 1),
];

const ROUNDS: usize = 3;

/// Runs `ops` journaled sets with `writers` tasks over `namespaces` skills; returns
/// (operations per second, p50 µs, p99 µs).
async fn shape(kv: &KvStore, round: usize, writers: usize, namespaces: usize, ops: usize) -> (f64, f64, f64) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let (kv, next) = (kv.clone(), Arc::clone(&next));
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= ops {
                    return latencies;
                }
                let skill = format!("skill-{}", n % namespaces);
                let key = format!("acme/run-{round}-{n}/step-1");
                let effect = EffectId {
                    idempotency_key: &key,
                    seq: 0,
                    kind: "kv-set",
                    request_digest: format!("sha256:{n}"),
                };
                let value = [b'v'; 64];
                let one = Instant::now();
                let wrote = kv
                    .set_journaled("acme", &skill, &format!("k/{}", n % 500), &value, Some(&effect))
                    .await
                    .expect("a journaled set");
                assert!(wrote, "a fresh effect is written");
                latencies.push(one.elapsed());
            }
        });
    }
    let mut latencies: Vec<Duration> = tasks.join_all().await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (ops as f64 / elapsed.as_secs_f64(), at(0.5), at(0.99))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(url) = std::env::var("AGENTD_TEST_DATABASE_URL") else {
        println!("kv bench: set AGENTD_TEST_DATABASE_URL to a PostgreSQL database to compare; skipped");
        return;
    };
    let ops: usize = std::env::var("AGENTD_KV_BENCH_OPS")
        .ok()
        .and_then(|ops| ops.parse().ok())
        .unwrap_or(2_000);
    let schema = format!("agentd_kv_bench_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&url).await.expect("the PostgreSQL database");
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let scoped = format!("{url}?options[search_path]={schema}");
    let keys = tempfile::tempdir().unwrap();
    control_plane::Store::open_postgres(&scoped, keys.path())
        .await
        .expect("the control plane migrates the schema")
        .close()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let backends = [
        ("SQLite", KvStore::open_lazy(&dir.path().join("kv.db")).unwrap()),
        ("PostgreSQL", KvStore::connect_postgres(&scoped).unwrap()),
    ];
    // Warm both: tables, connections, caches.
    for (_, kv) in &backends {
        shape(kv, 99, 4, 4, 200).await;
    }
    println!("journaled kv-set, {ops} operations per shape, median of {ROUNDS} rounds (alternated)");
    println!(
        "{:<27} {:<11} {:>10} {:>9} {:>9} {:>13}",
        "shape", "backend", "ops/s", "p50 µs", "p99 µs", "vs SQLite"
    );
    for (name, writers, namespaces) in SHAPES {
        let mut figures = vec![(Vec::new(), Vec::new(), Vec::new()); backends.len()];
        for round in 0..ROUNDS {
            for (index, (_, kv)) in backends.iter().enumerate() {
                let (rate, p50, p99) = shape(kv, round * 10 + writers + namespaces, writers, namespaces, ops).await;
                figures[index].0.push(rate);
                figures[index].1.push(p50);
                figures[index].2.push(p99);
            }
        }
        let baseline = median(figures[0].0.clone());
        for ((backend, _), (rates, p50s, p99s)) in backends.iter().zip(figures) {
            let rate = median(rates);
            println!(
                "{name:<27} {backend:<11} {rate:>10.0} {:>9.0} {:>9.0} {:>12.2}x",
                median(p50s),
                median(p99s),
                rate / baseline
            );
        }
    }
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}
