//! Benchmark (not a test): agentd against Extism, per call, on the same skill logic, in one run.
//!
//! - agentd, fresh instance per call (the default): `Runtime::dispatch` of the `noop` and
//!   `pii-redact` components.
//! - agentd, bounded warm-instance mode (`max_reuse` in the manifest, pure skills only): the same
//!   components, one instance reused for up to `max_reuse` calls.
//! - agentd, fresh instance per call with `limits.cpu = "epoch"` (no fuel metering, ADR 0017).
//! - Extism: `Plugin::call` of the same logic built with extism-pdk (`bench/extism/plugin`);
//!   one plugin instance reused across calls, as Extism does.
//!
//! Calls are interleaved round-robin so every contender sees the same machine state. Run it with
//! `cargo xtask bench-extism`, which builds both plugin flavours first.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_runtime::{DispatchRequest, Runtime, RuntimeConfig};

fn packages() -> PathBuf {
    std::env::var_os("AGENTD_PLUGINS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins"),
        PathBuf::from,
    )
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
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

/// A copy of package `name` under `dir` with `limits` appended to its `[limits]` table.
fn package_copy(dir: &Path, name: &str, limits: &str) -> PathBuf {
    let package = dir.join(name);
    std::fs::create_dir_all(&package).unwrap();
    let source = packages().join(name);
    std::fs::copy(source.join("skill.wasm"), package.join("skill.wasm")).unwrap();
    let manifest = std::fs::read_to_string(source.join("skill.toml")).unwrap();
    std::fs::write(package.join("skill.toml"), format!("{manifest}{limits}\n")).unwrap();
    package
}

fn main() {
    let extism_wasm = std::env::var_os("EXTISM_SKILLS_WASM").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/wasm32-unknown-unknown/release/extism_skills.wasm")
        },
        PathBuf::from,
    );
    let extism_bytes = std::fs::read(&extism_wasm).expect("build the Extism plugin first: `cargo xtask bench-extism`");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let fresh = Runtime::new(RuntimeConfig::default()).unwrap();
        fresh.load_package(&packages().join("noop")).await.unwrap();
        fresh.load_package(&packages().join("pii-redact")).await.unwrap();
        let warm_dir = std::env::temp_dir().join(format!("agentd-extism-bench-{}", std::process::id()));
        let warm = Runtime::new(RuntimeConfig::default()).unwrap();
        let epoch_dir = warm_dir.join("epoch");
        let epoch = Runtime::new(RuntimeConfig::default()).unwrap();
        for name in ["noop", "pii-redact"] {
            warm.load_package(&package_copy(&warm_dir, name, "max_reuse = 1000"))
                .await
                .unwrap();
            // Fresh instances bounded by the epoch deadline alone, no fuel (ADR 0017).
            epoch
                .load_package(&package_copy(&epoch_dir, name, "cpu = \"epoch\""))
                .await
                .unwrap();
        }

        let mut extism = extism::Plugin::new(&extism_bytes, [], false).expect("the Extism plugin loads");

        let text_64k: String = "Contact jane.doe@example.org or 10.1.2.3 about the release notes. "
            .repeat(1024)
            .chars()
            .take(64 * 1024)
            .collect();
        let large = serde_json::json!({ "text": text_64k }).to_string();
        let empty = "{}".to_owned();

        println!("per call, interleaved (µs); agentd fresh = new instance per call (default), warm = max_reuse 1000");
        for (label, skill_id, export, input, n) in [
            ("no-op", "noop", "noop", &empty, 5_000usize),
            ("pii-redact 64 KiB", "pii-redact", "redact", &large, 300),
        ] {
            let fresh_skill = fresh.lookup(skill_id).unwrap();
            let warm_skill = warm.lookup(skill_id).unwrap();
            let epoch_skill = epoch.lookup(skill_id).unwrap();
            // The Extism plugin answers with the same JSON as the component.
            let reference = fresh.dispatch(&fresh_skill, &request(input)).await;
            let extism_output: String = extism.call::<&str, String>(export, input).unwrap();
            match &reference.outcome {
                agent_runtime::Outcome::Completed { output } => {
                    let extism_value: serde_json::Value = serde_json::from_str(&extism_output).unwrap();
                    if skill_id == "pii-redact" {
                        assert_eq!(
                            serde_json::Value::Object(output.clone()),
                            extism_value,
                            "same logic, same answer"
                        );
                    }
                }
                other => panic!("{other:?}"),
            }
            let (mut ours_fresh, mut ours_warm, mut ours_epoch, mut theirs) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for round in 0..n + n / 10 {
                let started = Instant::now();
                let report = fresh.dispatch(&fresh_skill, &request(input)).await;
                let fresh_elapsed = started.elapsed();
                assert_eq!(report.outcome.name(), "completed");
                let started = Instant::now();
                let report = warm.dispatch(&warm_skill, &request(input)).await;
                let warm_elapsed = started.elapsed();
                assert_eq!(report.outcome.name(), "completed");
                let started = Instant::now();
                let report = epoch.dispatch(&epoch_skill, &request(input)).await;
                let epoch_elapsed = started.elapsed();
                assert_eq!(report.outcome.name(), "completed");
                let started = Instant::now();
                let output: String = extism.call::<&str, String>(export, input).unwrap();
                let extism_elapsed = started.elapsed();
                std::hint::black_box(output);
                if round >= n / 10 {
                    ours_fresh.push(fresh_elapsed);
                    ours_warm.push(warm_elapsed);
                    ours_epoch.push(epoch_elapsed);
                    theirs.push(extism_elapsed);
                }
            }
            let (e50, e99) = (percentile(&mut theirs, 0.5), percentile(&mut theirs, 0.99));
            let (f50, f99) = (percentile(&mut ours_fresh, 0.5), percentile(&mut ours_fresh, 0.99));
            let (w50, w99) = (percentile(&mut ours_warm, 0.5), percentile(&mut ours_warm, 0.99));
            let (p50, p99) = (percentile(&mut ours_epoch, 0.5), percentile(&mut ours_epoch, 0.99));
            println!("  {label} ({n} calls each):");
            println!("    Extism             p50 {e50:>9.1}  p99 {e99:>9.1}");
            println!(
                "    agentd fresh       p50 {f50:>9.1}  p99 {f99:>9.1}   p50 ratio to Extism {:.2}x",
                f50 / e50
            );
            println!(
                "    agentd fresh, epoch-only CPU p50 {p50:>9.1}  p99 {p99:>9.1}   p50 ratio to Extism {:.2}x",
                p50 / e50
            );
            println!(
                "    agentd warm        p50 {w50:>9.1}  p99 {w99:>9.1}   p50 ratio to Extism {:.2}x",
                w50 / e50
            );
            // What agentd does on the host that Extism does not: parse and check the output
            // envelope (a JSON object) it hands to the caller and the audit log.
            let mut validation = Vec::new();
            for _ in 0..n.min(300) {
                let started = Instant::now();
                std::hint::black_box(
                    plugin_abi::OutputEnvelope::parse(plugin_abi::OUTPUT_SCHEMA_V1, &extism_output).unwrap(),
                );
                validation.push(started.elapsed());
            }
            println!(
                "    of which agentd's host-side output check (OutputEnvelope::parse) p50 {:.1}",
                percentile(&mut validation, 0.5)
            );
        }
        let _ = std::fs::remove_dir_all(&warm_dir);
    });
}
