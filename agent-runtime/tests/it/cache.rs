//! The compiled-code cache: a second load comes from the cache; a corrupt or substituted entry
//! is detected and recompiled, never trusted.

use agent_runtime::cache::CacheOutcome;
use agent_runtime::{Runtime, RuntimeConfig};

use crate::packages_dir;

async fn load(cache: &std::path::Path) -> (CacheOutcome, u64) {
    load_skill(cache, "pii-redact").await
}

async fn load_skill(cache: &std::path::Path, skill: &str) -> (CacheOutcome, u64) {
    let runtime = Runtime::new(RuntimeConfig {
        code_cache: Some(cache.to_path_buf()),
        max_instances: 4,
        ..RuntimeConfig::default()
    })
    .unwrap();
    runtime.load_package(&packages_dir().join(skill)).await.unwrap();
    let skill = runtime.lookup(skill).unwrap();
    (skill.load.outcome.clone(), skill.load.load_us)
}

fn entries(cache: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .collect()
}

#[tokio::test]
async fn a_cached_component_loads_and_a_bad_entry_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("code-cache");
    let (cold, cold_us) = load(&cache).await;
    assert_eq!(cold, CacheOutcome::Miss);
    let (warm, warm_us) = load(&cache).await;
    assert_eq!(warm, CacheOutcome::Hit);
    assert!(warm_us < cold_us, "cached {warm_us} µs, compiled {cold_us} µs");

    // Flip one byte of native code: the MAC catches it, and the entry is rebuilt.
    let entry = entries(&cache).pop().unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&entry, &bytes).unwrap();
    let (outcome, _) = load(&cache).await;
    assert!(
        matches!(&outcome, CacheOutcome::Rejected { reason } if reason.contains("MAC does not verify")),
        "{outcome:?}"
    );
    assert_eq!(load(&cache).await.0, CacheOutcome::Hit);

    // An entry written with another key (another cache's) is refused the same way.
    std::fs::write(cache.join("cache.key"), [7u8; 32]).unwrap();
    let (outcome, _) = load(&cache).await;
    assert!(matches!(outcome, CacheOutcome::Rejected { .. }), "{outcome:?}");

    // A truncated entry too.
    let entry = entries(&cache).pop().unwrap();
    std::fs::write(&entry, b"short").unwrap();
    let (outcome, _) = load(&cache).await;
    assert!(matches!(outcome, CacheOutcome::Rejected { .. }), "{outcome:?}");
}

#[tokio::test]
async fn a_valid_entry_copied_over_another_components_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("code-cache");
    assert_eq!(load_skill(&cache, "noop").await.0, CacheOutcome::Miss);
    let noop_entry = entries(&cache).pop().unwrap();
    assert_eq!(load_skill(&cache, "pii-redact").await.0, CacheOutcome::Miss);
    let redact_entry = entries(&cache).into_iter().find(|path| *path != noop_entry).unwrap();
    // Same cache, same key, a valid MAC: but it is noop's code under pii-redact's name.
    std::fs::copy(&noop_entry, &redact_entry).unwrap();
    let (outcome, _) = load_skill(&cache, "pii-redact").await;
    assert!(
        matches!(&outcome, CacheOutcome::Rejected { reason } if reason.contains("MAC does not verify")),
        "{outcome:?}"
    );
    assert_eq!(load_skill(&cache, "pii-redact").await.0, CacheOutcome::Hit);
    assert_eq!(load_skill(&cache, "noop").await.0, CacheOutcome::Hit);
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
