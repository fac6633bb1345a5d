//! Benchmark (not a test): the same word-frequency skill written in Rust, Python
//! (componentize-py) and JavaScript (componentize-js), as `agentd skill new` writes it, through
//! agentd's dispatch: component size, cold compile, load from the code cache, instantiate, the
//! time of one call on 1 KiB, 100 KiB and 1 MiB of real text (the licence texts under
//! /usr/share/common-licenses, concatenated and repeated to length), peak linear memory and fuel
//! per input byte.
//!
//! Run `cargo xtask skill-templates --bench`: it builds the three packages and points
//! `AGENTD_LANGUAGE_PACKAGES` at them (subdirectories `rust`, `python`, `js`). Every figure
//! comes from one run; times are medians.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::path::{Path, PathBuf};
use std::time::Instant;

use agent_runtime::{DispatchRequest, Outcome, Runtime, RuntimeConfig};

const SIZES: [(usize, &str, usize); 3] = [
    (1024, "1 KiB", 21),
    (100 * 1024, "100 KiB", 11),
    (1024 * 1024, "1 MiB", 5),
];

fn text_of(len: usize) -> String {
    let mut corpus = String::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir("/usr/share/common-licenses")
        .map(|dir| dir.filter_map(Result::ok).map(|entry| entry.path()).collect())
        .unwrap_or_default();
    files.sort();
    for file in files {
        if let Ok(text) = std::fs::read_to_string(&file) {
            corpus.push_str(&text);
        }
    }
    assert!(!corpus.is_empty(), "no text under /usr/share/common-licenses");
    let mut text = String::with_capacity(len + corpus.len());
    while text.len() < len {
        text.push_str(&corpus);
    }
    let mut cut = len;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn runtime(cache: Option<&Path>) -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 4,
        code_cache: cache.map(Path::to_owned),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let packages = PathBuf::from(
        std::env::var_os("AGENTD_LANGUAGE_PACKAGES").expect("run through `cargo xtask skill-templates --bench`"),
    );
    let cache = tempfile::tempdir().expect("cache dir");
    println!("word-frequency skill, one fresh instance per call, medians; host: this build's profile");
    println!(
        "| language | component | cold compile | cached load | instantiate | 1 KiB call | 100 KiB call | 1 MiB call | peak memory (1 MiB) | fuel per byte (1 MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for lang in ["rust", "python", "js"] {
        let dir = packages.join(lang);
        let size = std::fs::metadata(dir.join("skill.wasm")).expect("package").len();
        // Cold: compiled now, and written to the (empty) cache.
        let cold = runtime(Some(cache.path()));
        let started = Instant::now();
        let summary = cold.load_package(&dir).await.expect("load");
        let cold_ms = started.elapsed().as_millis();
        drop(cold);
        // Cached: a new runtime, as a new process would, reading the verified compiled code.
        let warm = runtime(Some(cache.path()));
        let started = Instant::now();
        warm.load_package(&dir).await.expect("load from cache");
        let cached_ms = started.elapsed().as_millis();
        let skill = warm.lookup(&summary.id).expect("loaded");
        let mut row = vec![
            lang.to_owned(),
            format!("{:.1} MB", size as f64 / 1e6),
            format!("{:.1} s", cold_ms as f64 / 1e3),
            format!("{cached_ms} ms"),
        ];
        let mut instantiate = Vec::new();
        let mut calls = Vec::new();
        let mut last = None;
        for (bytes, _, runs) in SIZES {
            let text = text_of(bytes);
            let request = DispatchRequest {
                run_id: "bench".into(),
                step_id: "step-1".into(),
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                idempotency_key: "bench".into(),
                input_json: serde_json::json!({ "text": text, "top": 10 }).to_string(),
                tenant: "acme".into(),
                grants: Vec::new(),
            };
            let mut times = Vec::new();
            for _ in 0..runs {
                let report = warm.dispatch(&skill, &request).await;
                assert!(
                    matches!(report.outcome, Outcome::Completed { .. }),
                    "{lang} on {bytes} bytes: {:?}",
                    report.outcome
                );
                instantiate.push(report.metrics.instantiate_us);
                times.push(report.metrics.instantiate_us + report.metrics.execute_us);
                last = Some((bytes, report.metrics));
            }
            calls.push(median(times));
        }
        row.push(format!("{} µs", median(instantiate)));
        for micros in calls {
            row.push(if micros >= 10_000 {
                format!("{:.1} ms", micros as f64 / 1e3)
            } else {
                format!("{micros} µs")
            });
        }
        let (bytes, metrics) = last.expect("ran");
        row.push(format!(
            "{:.1} MiB",
            metrics.peak_memory_bytes as f64 / (1024.0 * 1024.0)
        ));
        row.push(format!("{:.0}", metrics.fuel_consumed as f64 / bytes as f64));
        println!("| {} |", row.join(" | "));
    }
}
