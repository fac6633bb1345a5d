//! Benchmark (not a test): per-invocation latency of raw wasmtime (`InstancePre` + pooling, the
//! same component, a do-nothing host) against agentd's dispatch (admission, fresh store with
//! memory limiter, fuel and epoch deadline, host capabilities, output envelope, telemetry span),
//! throughput with 1, 2 and 16 concurrent callers, and the time from deadline to a stopped
//! `spin-forever`.
//!
//! Run `cargo xtask build-plugins` first, then `cargo bench -p agent-runtime --bench dispatch`
//! (`AGENTD_PLUGINS` or `target/plugins` locate the packages). Every figure comes from one run.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_runtime::bindings::agentd::skill::host::{CapabilityError, LogLevel};
use agent_runtime::bindings::agentd::skill::types::Invocation;
use agent_runtime::bindings::{Skill, SkillPre};
use agent_runtime::{DispatchRequest, Runtime, RuntimeConfig};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The raw baseline's host: WASI with nothing granted and host functions that do nothing.
struct Raw {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Raw {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl agent_runtime::bindings::agentd::skill::types::Host for Raw {}

impl agent_runtime::bindings::agentd::skill::host::Host for Raw {
    async fn log(&mut self, _level: LogLevel, _message: String) {}

    async fn emit(&mut self, _name: String, _attributes: String) {}

    async fn workspace_write(&mut self, _path: String, _contents: Vec<u8>) -> Result<(), CapabilityError> {
        Err(CapabilityError::Denied("raw baseline".into()))
    }
}

fn packages() -> PathBuf {
    std::env::var_os("AGENTD_PLUGINS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"),
        PathBuf::from,
    )
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn us(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn invocation(input: &str) -> Invocation {
    Invocation {
        schema_version: plugin_abi::INVOKE_SCHEMA_V1.to_owned(),
        run_id: "run-bench".into(),
        step_id: "step-1".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        idempotency_key: "bench".into(),
        input: input.to_owned(),
    }
}

fn request(input: &str) -> DispatchRequest {
    DispatchRequest {
        run_id: "run-bench".into(),
        step_id: "step-1".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        idempotency_key: "bench".into(),
        input_json: input.to_owned(),
        tenant: "acme".into(),
        grants: Vec::new(),
    }
}

fn main() {
    let runtime_tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime_tokio.block_on(async {
        let dir = packages();
        let wasm = std::fs::read(dir.join("pii-redact/skill.wasm")).expect("run `cargo xtask build-plugins` first");

        // Raw wasmtime: pooling allocator, InstancePre, fresh store per call, nothing else.
        let mut pooling = PoolingAllocationConfig::new();
        pooling.total_component_instances(64).total_core_instances(512).total_memories(128).total_tables(256);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config).unwrap();
        let mut linker: Linker<Raw> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        Skill::add_to_linker::<Raw, HasSelf<Raw>>(&mut linker, |state| state).unwrap();
        let component = Component::new(&engine, &wasm).unwrap();
        let pre = SkillPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        let raw_call = |input: String| {
            let pre = pre.clone();
            let engine = engine.clone();
            async move {
                let mut store = Store::new(
                    &engine,
                    Raw {
                        wasi: WasiCtx::builder().build(),
                        table: ResourceTable::new(),
                    },
                );
                let skill = pre.instantiate_async(&mut store).await.unwrap();
                let output = skill.call_invoke(&mut store, &invocation(&input)).await.unwrap();
                assert!(output.is_ok());
            }
        };

        let mut agentd = Runtime::new(RuntimeConfig {
            max_instances: 64,
            ..RuntimeConfig::default()
        })
        .unwrap();
        agentd.load_package(&dir.join("pii-redact")).await.unwrap();
        agentd.load_package(&dir.join("spin-forever")).await.unwrap();
        let agentd = Arc::new(agentd);
        let skill = agentd.lookup("pii-redact").unwrap();

        let small = serde_json::json!({ "text": "hello" }).to_string();
        let text_64k: String = "Contact jane.doe@example.org or 10.1.2.3 about the release notes. "
            .repeat(1024)
            .chars()
            .take(64 * 1024)
            .collect();
        let large = serde_json::json!({ "text": text_64k }).to_string();

        println!("per-invocation latency, fresh instance per call (pii-redact):");
        for (label, input, n) in [("tiny input (no-op proxy)", &small, 3_000), ("64 KiB input", &large, 300)] {
            for _ in 0..n / 10 {
                raw_call(input.clone()).await;
                std::hint::black_box(agentd.dispatch(&skill, &request(input)).await);
            }
            let (mut raw, mut ours) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for _ in 0..n {
                // Interleaved, so both see the same machine state.
                let started = Instant::now();
                raw_call(input.clone()).await;
                raw.push(started.elapsed());
                let started = Instant::now();
                let report = agentd.dispatch(&skill, &request(input)).await;
                ours.push(started.elapsed());
                assert_eq!(report.outcome.name(), "completed");
            }
            let (raw50, raw99) = (percentile(&mut raw, 0.5), percentile(&mut raw, 0.99));
            let (our50, our99) = (percentile(&mut ours, 0.5), percentile(&mut ours, 0.99));
            println!(
                "  {label:<26} raw wasmtime p50 {:>8.1} µs p99 {:>8.1} µs | agentd dispatch p50 {:>8.1} µs p99 {:>8.1} µs | overhead p50 {:+.1}%",
                us(raw50),
                us(raw99),
                us(our50),
                us(our99),
                (us(our50) / us(raw50) - 1.0) * 100.0
            );
        }

        println!("\nthroughput, agentd dispatch of pii-redact (tiny input), 2 s per level:");
        let mut single = 0.0;
        for callers in [1usize, 2, 16] {
            let deadline = Instant::now() + Duration::from_secs(2);
            let tasks: Vec<_> = (0..callers)
                .map(|_| {
                    let (agentd, skill, input) = (Arc::clone(&agentd), Arc::clone(&skill), small.clone());
                    tokio::spawn(async move {
                        let mut calls = 0u64;
                        while Instant::now() < deadline {
                            let report = agentd.dispatch(&skill, &request(&input)).await;
                            assert_eq!(report.outcome.name(), "completed");
                            calls += 1;
                        }
                        calls
                    })
                })
                .collect();
            let mut total = 0;
            for task in tasks {
                total += task.await.unwrap();
            }
            let rate = total as f64 / 2.0;
            if callers == 1 {
                single = rate;
            }
            println!("  {callers:>2} callers: {rate:>8.0} calls/s ({:.2}x one caller)", rate / single);
        }

        println!("\ndeadline to stopped spin-forever (deadline from its manifest), 20 runs:");
        let spinner = agentd.lookup("spin-forever").unwrap();
        let deadline_ms = spinner.manifest.limits.deadline_ms;
        let mut over = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            let report = agentd.dispatch(&spinner, &request("{}")).await;
            assert_eq!(report.outcome.name(), "timeout");
            over.push(started.elapsed().saturating_sub(Duration::from_millis(deadline_ms)));
        }
        println!(
            "  deadline {deadline_ms} ms: stopped p50 +{:.1} ms, p99 +{:.1} ms after it (target: p99 < +20 ms)",
            percentile(&mut over, 0.5).as_secs_f64() * 1e3,
            percentile(&mut over, 0.99).as_secs_f64() * 1e3
        );
    });
}
