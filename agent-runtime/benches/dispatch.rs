//! Benchmark (not a test): per-invocation latency of raw wasmtime (`InstancePre` + pooling, the
//! same component, a do-nothing host) against agentd's dispatch (select, admission, fresh store
//! with memory limiter, fuel and epoch deadline, host capabilities, output envelope, telemetry
//! span), without and with governance (the in-memory Cedar verdict; the durable audit and run
//! records are measured by the control-plane bench), on the `noop` skill and on `pii-redact`;
//! a benign skill's latency before and after 1,000 hostile runs; throughput with 1, 2 and 16
//! concurrent callers; and the time from deadline to a stopped `spin-forever`.
//!
//! Run `cargo xtask build-plugins` first, then `cargo bench -p agent-runtime --bench dispatch`
//! (`AGENTD_PLUGINS` or `target/plugins` locate the packages). Every figure comes from one run.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_runtime::bindings::agentd::skill::host::{CapabilityError, HttpRequest, HttpResponse, LogLevel};
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

    async fn workspace_read(&mut self, _path: String, _max_bytes: u64) -> Result<Vec<u8>, CapabilityError> {
        Err(CapabilityError::Denied("raw baseline".into()))
    }

    async fn kv_get(&mut self, _key: String) -> Result<Option<Vec<u8>>, CapabilityError> {
        Err(CapabilityError::Denied("raw baseline".into()))
    }

    async fn kv_set(&mut self, _key: String, _value: Vec<u8>) -> Result<(), CapabilityError> {
        Err(CapabilityError::Denied("raw baseline".into()))
    }

    async fn kv_delete(&mut self, _key: String) -> Result<bool, CapabilityError> {
        Err(CapabilityError::Denied("raw baseline".into()))
    }

    async fn http_fetch(&mut self, _request: HttpRequest) -> Result<HttpResponse, CapabilityError> {
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
        let raw_call = |pre: SkillPre<Raw>, input: String| {
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
        let raw_pre = |name: &str| {
            let wasm = std::fs::read(dir.join(name).join("skill.wasm")).expect("run `cargo xtask build-plugins` first");
            let component = Component::new(&engine, &wasm).unwrap();
            SkillPre::new(linker.instantiate_pre(&component).unwrap()).unwrap()
        };
        let (raw_noop, raw_redact) = (raw_pre("noop"), raw_pre("pii-redact"));

        let agentd = Runtime::new(RuntimeConfig {
            max_instances: 64,
            ..RuntimeConfig::default()
        })
        .unwrap();
        for name in ["noop", "pii-redact", "spin-forever", "memory-bomb", "deep-recursion", "invalid-output"] {
            agentd.load_package(&dir.join(name)).await.unwrap();
        }
        let agentd = Arc::new(agentd);
        let skill = agentd.lookup("pii-redact").unwrap();
        let policy = control_plane::PolicyEngine::from_file(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/default.cedar"))
            .unwrap();
        let agent = control_plane::Principal {
            subject: "alice".into(),
            tenant: "acme".into(),
            roles: [control_plane::Role::Agent].into_iter().collect(),
        };
        // agentd's path for one call: select a version, then (with governance) decide, then dispatch.
        let agentd_call = |id: &'static str, input: String, governed: bool| {
            let (agentd, policy, agent) = (Arc::clone(&agentd), &policy, &agent);
            async move {
                let selection = agent_runtime::selector::select(
                    &agentd,
                    id,
                    &semver::VersionReq::STAR,
                    None,
                    agentd.breakers(),
                    "acme",
                );
                let skill = selection.candidates.first().unwrap();
                let mut request = request(&input);
                if governed {
                    let decision = policy.decide(agent, id, Some(&skill.summary), 0);
                    assert_eq!(decision.verdict.name(), "allow");
                    request.grants = decision.grants().to_vec();
                }
                let report = agentd.dispatch(skill, &request).await;
                assert_eq!(report.outcome.name(), "completed");
            }
        };

        let small = serde_json::json!({ "text": "hello" }).to_string();
        let text_64k: String = "Contact jane.doe@example.org or 10.1.2.3 about the release notes. "
            .repeat(1024)
            .chars()
            .take(64 * 1024)
            .collect();
        let large = serde_json::json!({ "text": text_64k }).to_string();

        println!("per-invocation latency, fresh instance per call, interleaved (µs):");
        for (label, id, pre, input, n) in [
            ("noop", "noop", &raw_noop, "{}".to_owned(), 5_000),
            ("pii-redact, 64 KiB input", "pii-redact", &raw_redact, large.clone(), 300),
        ] {
            for _ in 0..n / 10 {
                raw_call(pre.clone(), input.clone()).await;
                agentd_call(id, input.clone(), true).await;
            }
            let (mut raw, mut ours, mut governed) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
            for _ in 0..n {
                // Interleaved, so all three see the same machine state.
                let started = Instant::now();
                raw_call(pre.clone(), input.clone()).await;
                raw.push(started.elapsed());
                let started = Instant::now();
                agentd_call(id, input.clone(), false).await;
                ours.push(started.elapsed());
                let started = Instant::now();
                agentd_call(id, input.clone(), true).await;
                governed.push(started.elapsed());
            }
            let (raw50, raw99) = (us(percentile(&mut raw, 0.5)), us(percentile(&mut raw, 0.99)));
            let (our50, our99) = (us(percentile(&mut ours, 0.5)), us(percentile(&mut ours, 0.99)));
            let (gov50, gov99) = (us(percentile(&mut governed, 0.5)), us(percentile(&mut governed, 0.99)));
            println!("  {label} ({n} calls each):");
            println!("    raw wasmtime               p50 {raw50:>9.1}  p99 {raw99:>9.1}");
            println!(
                "    agentd dispatch            p50 {our50:>9.1}  p99 {our99:>9.1}   overhead p50 {:+.1}%, p99 {:+.1}%",
                (our50 / raw50 - 1.0) * 100.0,
                (our99 / raw99 - 1.0) * 100.0
            );
            println!(
                "    agentd verdict + dispatch  p50 {gov50:>9.1}  p99 {gov99:>9.1}   overhead p50 {:+.1}%, p99 {:+.1}%",
                (gov50 / raw50 - 1.0) * 100.0,
                (gov99 / raw99 - 1.0) * 100.0
            );
        }

        // Fuel's share (ADR 0017): the same pii-redact package, fuel-metered (the default)
        // against `limits.cpu = "epoch"` (bounded by the epoch deadline alone), interleaved.
        let epoch_dir = std::env::temp_dir().join(format!("agentd-bench-epoch-{}", std::process::id()));
        std::fs::create_dir_all(&epoch_dir).unwrap();
        for file in ["skill.toml", "skill.wasm"] {
            std::fs::copy(dir.join("pii-redact").join(file), epoch_dir.join(file)).unwrap();
        }
        let manifest = std::fs::read_to_string(epoch_dir.join("skill.toml")).unwrap();
        std::fs::write(epoch_dir.join("skill.toml"), manifest.replace("[limits]\n", "[limits]\ncpu = \"epoch\"\n")).unwrap();
        let epoch_only = Runtime::new(RuntimeConfig {
            max_instances: 16,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let epoch_skill = epoch_only.load_package(&epoch_dir).await.unwrap();
        assert_eq!(epoch_skill.cpu_metering, plugin_abi::CpuMetering::Epoch);
        std::fs::remove_dir_all(&epoch_dir).unwrap();
        let epoch_skill = epoch_only.lookup("pii-redact").unwrap();
        let (mut fueled, mut unfueled) = (Vec::with_capacity(300), Vec::with_capacity(300));
        for round in 0..330 {
            let started = Instant::now();
            let report = agentd.dispatch(&skill, &request(&large)).await;
            let fuel_time = started.elapsed();
            assert_eq!(report.outcome.name(), "completed");
            let started = Instant::now();
            let report = epoch_only.dispatch(&epoch_skill, &request(&large)).await;
            let epoch_time = started.elapsed();
            assert_eq!(report.outcome.name(), "completed");
            assert_eq!(report.metrics.fuel_consumed, 0);
            if round >= 30 {
                fueled.push(fuel_time);
                unfueled.push(epoch_time);
            }
        }
        let (fuel50, epoch50) = (us(percentile(&mut fueled, 0.5)), us(percentile(&mut unfueled, 0.5)));
        println!(
            "  fuel's share, pii-redact 64 KiB (300 calls each): fuel-metered p50 {fuel50:.1} µs, p99 {:.1}; \
             epoch-only p50 {epoch50:.1} µs, p99 {:.1}; fuel costs {:+.1}% p50 ({:.0}% of the metered call)",
            us(percentile(&mut fueled, 0.99)),
            us(percentile(&mut unfueled, 0.99)),
            (fuel50 / epoch50 - 1.0) * 100.0,
            (1.0 - epoch50 / fuel50) * 100.0
        );

        let noop_summary = agentd.lookup("noop").unwrap().summary.clone();
        let (mut cached, mut evaluated) = (Vec::with_capacity(5_000), Vec::with_capacity(5_000));
        for _ in 0..5_000 {
            let started = Instant::now();
            std::hint::black_box(policy.decide(&agent, "noop", Some(&noop_summary), 0));
            cached.push(started.elapsed());
            let started = Instant::now();
            std::hint::black_box(policy.decide_uncached(&agent, "noop", Some(&noop_summary), 0));
            evaluated.push(started.elapsed());
        }
        println!(
            "  the verdict alone (policies/default.cedar): cached (PolicyEngine::decide) p50 {:.1} µs, p99 {:.1} µs; \
             evaluated (decide_uncached) p50 {:.1} µs, p99 {:.1} µs",
            us(percentile(&mut cached, 0.5)),
            us(percentile(&mut cached, 0.99)),
            us(percentile(&mut evaluated, 0.5)),
            us(percentile(&mut evaluated, 0.99))
        );

        println!("\nbenign latency (pii-redact, tiny input) before and after 1,000 hostile runs:");
        let benign = |n: usize| {
            let (agentd, skill, small) = (Arc::clone(&agentd), Arc::clone(&skill), small.clone());
            async move {
                let mut samples = Vec::with_capacity(n);
                for _ in 0..n {
                    let started = Instant::now();
                    let report = agentd.dispatch(&skill, &request(&small)).await;
                    samples.push(started.elapsed());
                    assert_eq!(report.outcome.name(), "completed");
                }
                samples
            }
        };
        let mut before = benign(500).await;
        let hostile = [
            ("memory-bomb", "{}", "memory-limit"),
            ("deep-recursion", r#"{"depth": 100000000}"#, "trap"),
            ("invalid-output", "{}", "invalid-output"),
        ];
        let started = Instant::now();
        for round in 0..1_000 {
            let (id, input, expected) = hostile[round % hostile.len()];
            let report = agentd.dispatch(&agentd.lookup(id).unwrap(), &request(input)).await;
            assert_eq!(report.outcome.name(), expected);
        }
        let hostile_elapsed = started.elapsed();
        let mut after = benign(500).await;
        let (b50, b99) = (us(percentile(&mut before, 0.5)), us(percentile(&mut before, 0.99)));
        let (a50, a99) = (us(percentile(&mut after, 0.5)), us(percentile(&mut after, 0.99)));
        println!(
            "  before p50 {b50:>9.1}  p99 {b99:>9.1}\n  after  p50 {a50:>9.1}  p99 {a99:>9.1}   after/before p50 {:.2}x, p99 {:.2}x ({:.1} s for the 1,000 hostile runs)",
            a50 / b50,
            a99 / b99,
            hostile_elapsed.as_secs_f64()
        );

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
