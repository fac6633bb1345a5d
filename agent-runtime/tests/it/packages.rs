//! Loading packages: every bad package is refused with its own typed error, and the good ones
//! beside it still load.

use std::path::{Path, PathBuf};

use agent_runtime::{Outcome, PackageError, Runtime, RuntimeConfig, RuntimeFailure};
use serde_json::json;

use crate::{packages_dir, request};

/// Copies the real `id` package into `into/<name>`, letting `edit` change manifest and bytes.
fn copy_package(
    id: &str,
    into: &Path,
    name: &str,
    edit: impl FnOnce(&mut String, &mut Vec<u8>),
    fix_digest: bool,
) -> PathBuf {
    let source = packages_dir().join(id);
    let mut manifest = std::fs::read_to_string(source.join("skill.toml")).unwrap();
    let mut bytes = std::fs::read(source.join("skill.wasm")).unwrap();
    edit(&mut manifest, &mut bytes);
    if fix_digest {
        let digest = agent_runtime::package::sha256_digest(&bytes);
        manifest = manifest
            .lines()
            .map(|line| {
                if line.starts_with("sha256") {
                    format!("sha256 = \"{digest}\"")
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    let dir = into.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("skill.toml"), manifest).unwrap();
    std::fs::write(dir.join("skill.wasm"), bytes).unwrap();
    dir
}

async fn load(dir: &Path) -> Result<plugin_abi::SkillSummary, PackageError> {
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 4,
        ..RuntimeConfig::default()
    })
    .unwrap();
    runtime.load_package(dir).await
}

#[tokio::test]
async fn each_bad_package_gets_its_own_error() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();

    let corrupt = copy_package(
        "pii-redact",
        root,
        "corrupt",
        |_, bytes| bytes.truncate(bytes.len() / 2),
        true,
    );
    assert!(
        matches!(load(&corrupt).await, Err(PackageError::Compile { .. })),
        "{:?}",
        load(&corrupt).await
    );

    let tampered = copy_package(
        "pii-redact",
        root,
        "tampered",
        |_, bytes| *bytes.last_mut().unwrap() ^= 1,
        false,
    );
    let Err(PackageError::DigestMismatch { expected, actual, .. }) = load(&tampered).await else {
        panic!()
    };
    assert_ne!(expected, actual);

    let module = copy_package(
        "pii-redact",
        root,
        "module",
        |_, bytes| *bytes = wat::parse_str("(module)").unwrap(),
        true,
    );
    let error = load(&module).await.unwrap_err();
    assert!(matches!(error, PackageError::CoreModule { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("is a core WebAssembly module, not a component: build a component of the `skill` world (Rust: `--target wasm32-wasip2`; Python: componentize-py; JavaScript: componentize-js")
    );

    let wrong_world = copy_package(
        "pii-redact",
        root,
        "wrong-world",
        |_, bytes| *bytes = wat::parse_str("(component)").unwrap(),
        true,
    );
    let error = load(&wrong_world).await.unwrap_err();
    assert!(matches!(error, PackageError::WrongWorld { .. }), "{error}");

    let not_wasm = copy_package(
        "pii-redact",
        root,
        "not-wasm",
        |_, bytes| *bytes = b"#!/bin/sh\necho hi\n".to_vec(),
        true,
    );
    assert!(matches!(load(&not_wasm).await, Err(PackageError::NotWasm { .. })));

    let unsigned = copy_package(
        "pii-redact",
        root,
        "unsigned",
        |manifest, _| {
            *manifest = manifest
                .lines()
                .filter(|line| !line.starts_with("sha256"))
                .collect::<Vec<_>>()
                .join("\n");
        },
        false,
    );
    assert!(matches!(load(&unsigned).await, Err(PackageError::MissingDigest { .. })));

    let lying = copy_package(
        "pii-redact",
        root,
        "lying",
        |manifest, _| *manifest = manifest.replace("side_effect = \"pure\"", "side_effect = \"read-only\""),
        true,
    );
    let error = load(&lying).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: the component describes side-effect `pure` but the manifest says `read-only`",
            lying.join("skill.wasm").display()
        )
    );

    // The directory as a whole: the good package loads, every bad one is reported.
    copy_package("publish-report", root, "good", |_, _| {}, false);
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 4,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let report = runtime.load_dir(root).await.unwrap();
    assert_eq!(
        report.loaded.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["publish-report"]
    );
    assert_eq!(report.refused.len(), 7);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[tokio::test]
async fn a_duplicate_a_package_too_deep_and_an_empty_directory_are_each_named() {
    use agent_runtime::DirWarning;
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    let runtime = || {
        Runtime::new(RuntimeConfig {
            max_instances: 4,
            ..RuntimeConfig::default()
        })
        .unwrap()
    };
    // An empty plugin directory loads nothing and says so.
    let report = runtime().load_dir(root).await.unwrap();
    assert_eq!(report.warnings, [DirWarning::Empty { dir: root.to_owned() }]);

    // The same id and version in two directories: the second is refused naming both.
    let first = copy_package("noop", root, "a-noop", |_, _| {}, false);
    let second = copy_package("noop", root, "b-noop", |_, _| {}, false);
    // A package one directory too deep, and a stray directory with nothing in it.
    std::fs::create_dir_all(root.join("nested")).unwrap();
    let deep = copy_package("pii-redact", &root.join("nested"), "pii-redact", |_, _| {}, false);
    std::fs::create_dir_all(root.join("stray")).unwrap();
    let report = runtime().load_dir(root).await.unwrap();
    assert_eq!(
        report.loaded.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["noop"]
    );
    let [PackageError::Duplicate { loaded_from, path, .. }] = report.refused.as_slice() else {
        panic!("{:?}", report.refused)
    };
    assert_eq!((loaded_from, path), (&first, &second));
    let message = report.refused[0].to_string();
    assert!(
        message.contains(&first.display().to_string()) && message.contains(&second.display().to_string()),
        "{message}"
    );
    assert_eq!(
        report.warnings,
        [DirWarning::TooDeep {
            dir: root.join("nested"),
            found: 1,
            example: deep
        }]
    );
}

#[tokio::test]
async fn memory_and_fuel_limits_map_to_their_outcomes() {
    let temp = tempfile::tempdir().unwrap();
    let small_memory = copy_package(
        "pii-redact",
        temp.path(),
        "small-memory",
        |manifest, _| {
            *manifest = manifest.replace("memory_bytes = 67108864", "memory_bytes = 2097152");
        },
        false,
    );
    let small_fuel = copy_package(
        "pii-redact",
        temp.path(),
        "small-fuel",
        |manifest, _| {
            *manifest = manifest.replace("fuel = 20000000000", "fuel = 200000");
        },
        false,
    );
    let big_text = "mail someone@example.org now. ".repeat(200_000);

    for (dir, expected) in [
        (small_memory, RuntimeFailure::MemoryLimit { limit_bytes: 2_097_152 }),
        (small_fuel, RuntimeFailure::FuelExhausted { fuel: 200_000 }),
    ] {
        let runtime = Runtime::new(RuntimeConfig {
            max_instances: 4,
            ..RuntimeConfig::default()
        })
        .unwrap();
        runtime.load_package(&dir).await.unwrap();
        let skill = runtime.lookup("pii-redact").unwrap();
        let report = runtime
            .dispatch(&skill, &request(json!({ "text": big_text }), &[]))
            .await;
        assert_eq!(
            report.outcome,
            Outcome::Failed {
                failure: expected.clone()
            }
        );
        assert!(!report.outcome.is_retryable());
        // The same runtime still serves a small input.
        let small = runtime.dispatch(&skill, &request(json!({ "text": "x" }), &[])).await;
        if matches!(expected, RuntimeFailure::MemoryLimit { .. }) {
            assert!(matches!(small.outcome, Outcome::Completed { .. }), "{small:?}");
        }
    }
}

/// Replaces every `from` in `bytes` by `to` (same length, so the binary stays well formed).
fn replace_bytes(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut count = 0;
    let mut at = 0;
    while let Some(offset) = bytes[at..].windows(from.len()).position(|window| window == from) {
        bytes[at + offset..at + offset + to.len()].copy_from_slice(to);
        at += offset + to.len();
        count += 1;
    }
    count
}

/// Review finding: a component built against `agentd:skill@1.0.0` loaded and ran. The names
/// are now read before the compile, so nothing of a refused component reaches the code cache.
#[tokio::test]
async fn wit_package_version_and_world_exports_are_checked_before_the_compile() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    let cache = root.join("code-cache");
    let load_cached = |dir: PathBuf| {
        let cache = cache.clone();
        async move {
            let runtime = Runtime::new(RuntimeConfig {
                max_instances: 4,
                code_cache: Some(cache),
                ..RuntimeConfig::default()
            })
            .unwrap();
            runtime.load_package(&dir).await
        }
    };
    let cached_entries = || {
        std::fs::read_dir(&cache)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_name() != "cache.key")
                    .count()
            })
            .unwrap_or(0)
    };

    let other_version = copy_package(
        "pii-redact",
        root,
        "other-version",
        |_, bytes| {
            let swapped = replace_bytes(bytes, b"agentd:skill/types@0.1.0", b"agentd:skill/types@1.0.0");
            assert!(swapped > 0, "pii-redact imports agentd:skill/types@0.1.0");
        },
        true,
    );
    let error = load_cached(other_version.clone()).await.unwrap_err();
    let PackageError::WitVersion { name, expected, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!((name.as_str(), *expected), ("agentd:skill/types@1.0.0", "0.1.0"));
    assert!(
        error
            .to_string()
            .ends_with("was built against `agentd:skill/types@1.0.0`; this agentd speaks agentd:skill@0.1.0: rebuild it with a plugin-abi of that version"),
        "{error}"
    );
    assert_eq!(cached_entries(), 0, "a refused component is never compiled");

    // The right version but not the world's functions, then no agentd:skill name at all.
    for (name, wat, message) in [
        (
            "no-exports",
            r#"(component (import "agentd:skill/types@0.1.0" (instance)))"#,
            "does not export the function(s) `describe`, `invoke` (its exports: none)",
        ),
        (
            "foreign",
            r#"(component (import "wasi:cli/environment@0.2.0" (instance)))"#,
            "imports no `agentd:skill/...@0.1.0` interface",
        ),
    ] {
        let package = copy_package(
            "pii-redact",
            root,
            name,
            |_, bytes| *bytes = wat::parse_str(wat).unwrap(),
            true,
        );
        let error = load_cached(package).await.unwrap_err();
        assert!(matches!(error, PackageError::WrongWorld { .. }), "{error}");
        assert!(error.to_string().ends_with(message), "{error}");
    }
    assert_eq!(cached_entries(), 0);

    // Issue 16: jco's default build imports wasi:http, which the host does not provide; this
    // was said only after a 31 s compile, with Rust-only advice. It is refused before the
    // compile, naming the import and each toolchain's fix.
    let http = copy_package(
        "pii-redact",
        root,
        "imports-wasi-http",
        |_, bytes| {
            *bytes = wat::parse_str(
                r#"(component
                    (import "agentd:skill/types@0.1.0" (instance))
                    (import "wasi:http/types@0.2.3" (instance)))"#,
            )
            .unwrap()
        },
        true,
    );
    let error = load_cached(http).await.unwrap_err();
    let PackageError::UnsupportedImport { import, advice, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(import, "wasi:http/types@0.2.3");
    for toolchain in ["jco componentize --disable http", "componentize-py", "Rust"] {
        assert!(advice.contains(toolchain), "{advice}");
    }
    assert_eq!(cached_entries(), 0, "a refused component is never compiled");

    // The real package passes the same check and is compiled into the cache.
    let good = copy_package("pii-redact", root, "good", |_, _| {}, false);
    load_cached(good).await.unwrap();
    assert_eq!(cached_entries(), 1);
}

/// Issue 16: every command compiled every package (an 18 MB Python component costs seconds).
/// `load_dir_for` loads the packages that provide the skills asked for and, transitively,
/// their fallbacks; the rest are only named as skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_dir_for_loads_the_skills_asked_for_and_their_fallbacks_only() {
    let dir = tempfile::tempdir().unwrap();
    crate::package_copy(dir.path(), "spin-forever", |manifest| {
        format!("fallbacks = [\"noop\"]\n{manifest}")
    });
    crate::package_copy(dir.path(), "noop", |manifest| manifest);
    crate::package_copy(dir.path(), "pii-redact", |manifest| manifest);
    let runtime = crate::empty_runtime();
    let report = runtime.load_dir_for(dir.path(), &["spin-forever"]).await.unwrap();
    let loaded: Vec<&str> = report.loaded.iter().map(|summary| summary.id.as_str()).collect();
    assert_eq!(loaded, ["noop", "spin-forever"]);
    assert_eq!(report.skipped, [dir.path().join("pii-redact")]);
    assert!(report.refused.is_empty() && report.warnings.is_empty());
    assert!(runtime.lookup("pii-redact").is_none());
    // Asking for nothing that exists loads nothing, and is not an empty directory.
    let none = crate::empty_runtime()
        .load_dir_for(dir.path(), &["no-such-skill"])
        .await
        .unwrap();
    assert!(none.loaded.is_empty() && none.warnings.is_empty(), "{none:?}");
    assert_eq!(none.skipped.len(), 3);
}
