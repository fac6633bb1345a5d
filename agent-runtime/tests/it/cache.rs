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

#[test]
fn the_cache_is_evicted_by_size_oldest_first() {
    use agent_runtime::cache::CodeCache;
    let dir = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    let component = |name: &str| {
        let bytes = std::fs::read(packages_dir().join(name).join("skill.wasm")).unwrap();
        let digest = agent_runtime::package::sha256_digest(&bytes);
        (bytes, digest)
    };
    let (noop, noop_digest) = component("noop");
    let (redact, redact_digest) = component("pii-redact");
    let compile = |bytes: &[u8]| wasmtime::component::Component::from_binary(&engine, bytes);
    // Measure one entry, then allow a little more than the larger of the two.
    let probe = CodeCache::open(&dir.path().join("probe")).unwrap();
    probe.load(&engine, &redact_digest, || compile(&redact)).unwrap();
    let redact_size = entries(&dir.path().join("probe"))[0].metadata().unwrap().len();

    let cache_dir = dir.path().join("cache");
    let cache = CodeCache::open(&cache_dir).unwrap().with_max_bytes(redact_size + 1024);
    // A temporary file left by a dead writer long ago is removed at the next write.
    let stale = cache_dir.join("dead.tmp-1-0");
    std::fs::write(&stale, b"partial").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    assert_eq!(
        cache.load(&engine, &noop_digest, || compile(&noop)).unwrap().1.outcome,
        CacheOutcome::Miss
    );
    assert!(!stale.exists(), "the stale temporary file was kept");
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(
        cache
            .load(&engine, &redact_digest, || compile(&redact))
            .unwrap()
            .1
            .outcome,
        CacheOutcome::Miss
    );
    // Both do not fit: the older (noop) went, the newer stays.
    assert_eq!(entries(&cache_dir).len(), 1);
    assert_eq!(
        cache
            .load(&engine, &redact_digest, || compile(&redact))
            .unwrap()
            .1
            .outcome,
        CacheOutcome::Hit
    );
    assert_eq!(
        cache.load(&engine, &noop_digest, || compile(&noop)).unwrap().1.outcome,
        CacheOutcome::Miss
    );
}
