//! agent-runtime integration tests against the real plugin packages built by
//! `cargo xtask build-plugins` (which `cargo xtask test` runs first).

#![allow(missing_docs, reason = "test helpers are not public API")]

mod admission;
mod cache;
mod dispatch;
mod host_calls;
mod hostile;
mod hot_swap;
mod ladder;
mod packages;
mod warm;

use std::path::{Path, PathBuf};

use agent_runtime::{DispatchRequest, LoadedSkill, Runtime, RuntimeConfig};
use plugin_abi::Capability;

/// Where `cargo xtask build-plugins` put the packages: `$AGENTD_PLUGINS` (set by
/// `cargo xtask test`), else `target/plugins`.
pub fn packages_dir() -> PathBuf {
    let dir = std::env::var_os("AGENTD_PLUGINS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"),
        PathBuf::from,
    );
    assert!(
        dir.join("pii-redact/skill.toml").is_file(),
        "plugin packages are missing at {}: run the tests with `cargo xtask test` (it builds them)",
        dir.display()
    );
    dir
}

/// Every package `cargo xtask build-plugins` makes (two of them are versions of `noop`).
pub const PACKAGES: usize = 15;

/// A compiled-code cache shared by the tests of this run, so each component is compiled once
/// rather than once per test.
pub fn test_code_cache() -> PathBuf {
    packages_dir().with_file_name("agent-runtime-test-code-cache")
}

/// A runtime with every real package loaded and a workspace under `workspace`.
pub async fn runtime_with_packages(workspace: Option<&Path>) -> Runtime {
    let runtime = Runtime::new(RuntimeConfig {
        workspace_root: workspace.map(Path::to_owned),
        max_instances: 16,
        code_cache: Some(test_code_cache()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let report = runtime.load_dir(&packages_dir()).await.unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(report.loaded.len(), PACKAGES);
    runtime
}

/// A dispatch request for tenant `acme` with `input` and `grants`.
pub fn request(input: serde_json::Value, grants: &[&str]) -> DispatchRequest {
    DispatchRequest {
        run_id: "run-test".into(),
        step_id: "step-1".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        idempotency_key: "acme/run-test/step-1".into(),
        input_json: input.to_string(),
        tenant: "acme".into(),
        grants: grants.iter().map(|g| g.parse::<Capability>().unwrap()).collect(),
    }
}

/// The loaded skill `id`.
pub fn skill(runtime: &Runtime, id: &str) -> std::sync::Arc<LoadedSkill> {
    runtime.lookup(id).unwrap_or_else(|| panic!("{id} is not loaded"))
}

/// A runtime with no package loaded, sharing the tests' code cache.
pub fn empty_runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        code_cache: Some(test_code_cache()),
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// A copy of package `name` in `dir` with its manifest edited by `edit` (the digest covers the
/// component only, so the copy still verifies).
pub fn package_copy(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let package = dir.join(name);
    std::fs::create_dir_all(&package).unwrap();
    let source = packages_dir().join(name);
    std::fs::copy(source.join("skill.wasm"), package.join("skill.wasm")).unwrap();
    let manifest = std::fs::read_to_string(source.join("skill.toml")).unwrap();
    std::fs::write(package.join("skill.toml"), edit(manifest)).unwrap();
    package
}

/// Every pooled slot came back: `slots` concurrent calls of `benign` all complete.
pub async fn assert_pool_slots_returned(
    runtime: std::sync::Arc<Runtime>,
    benign: std::sync::Arc<LoadedSkill>,
    slots: usize,
) {
    let calls: Vec<_> = (0..slots)
        .map(|_| {
            let (runtime, benign) = (std::sync::Arc::clone(&runtime), std::sync::Arc::clone(&benign));
            tokio::spawn(async move {
                runtime
                    .dispatch(&benign, &request(serde_json::json!({ "text": "x" }), &[]))
                    .await
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().outcome.name(), "completed");
    }
}
