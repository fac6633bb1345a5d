//! The compiled-code cache: components compiled once, then loaded from disk.
//!
//! An entry is keyed by the component's SHA-256 and the engine's precompile-compatibility hash
//! (wasmtime version, compiler, target and every setting that changes the code). Loading
//! native code from disk is `unsafe` in wasmtime for a reason: the bytes become executable. So
//! an entry is never trusted blindly:
//!
//! 1. the entry's bytes must carry a valid HMAC-SHA256 (RFC 2104) under a key kept beside the
//!    cache (mode 0600), computed over the entry's identity (component digest and engine
//!    compatibility hash) and its bytes: a corrupt, truncated or substituted entry, or another
//!    component's valid entry copied over this one's path, fails here;
//! 2. wasmtime then checks the header (version, configuration, target) itself.
//!
//! Any failure recompiles from the verified component and rewrites the entry (atomically:
//! written to a temporary file, then renamed). The trust boundary is the cache directory and its
//! key together: whoever can write both can run code, exactly as whoever can write the agentd
//! binary can.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use hmac::{Mac, digest::KeyInit};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "cache", rename_all = "kebab-case")]
pub enum CacheOutcome {
    /// No cache configured: compiled.
    Disabled,
    /// Not in the cache: compiled, then stored.
    Miss,
    /// Loaded from a verified entry.
    Hit,
    /// The entry failed verification (reason given); compiled and stored again.
    Rejected {
        /// Why the entry was not used.
        reason: String,
    },
}

/// A component and how long getting it took.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadStats {
    /// Cache outcome.
    #[serde(flatten)]
    pub outcome: CacheOutcome,
    /// Time to compile or deserialize, µs.
    pub load_us: u64,
}

/// A directory of compiled components.
#[derive(Clone)]
pub struct CodeCache {
    dir: PathBuf,
    key: [u8; 32],
    max_bytes: u64,
}

/// Default [`CodeCache::with_max_bytes`]: 1 GiB, room for about 25 compiled Python or
/// JavaScript components (about 40 MB each) and hundreds of Rust ones.
pub const DEFAULT_MAX_CACHE_BYTES: u64 = 1024 * 1024 * 1024;

/// Temporary files older than this are a dead writer's and are removed, seconds.
const STALE_TEMPORARY_SECS: u64 = 600;

impl std::fmt::Debug for CodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A `Hasher` that feeds SHA-256, so the engine's compatibility hash becomes a stable digest.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

impl CodeCache {
    /// Opens (creating) the cache at `dir`, with its key at `dir/cache.key` (created, 0600).
    ///
    /// # Errors
    ///
    /// The I/O error when the directory or key cannot be created or read.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
        let key = control_plane::keys::load_or_create_exact::<32>(&dir.join("cache.key")).map_err(|error| {
            let kind = match &error {
                control_plane::keys::KeyFileError::Io { source, .. } => source.kind(),
                _ => std::io::ErrorKind::InvalidData,
            };
            std::io::Error::new(kind, error.to_string())
        })?;
        Ok(CodeCache {
            dir: dir.to_path_buf(),
            key,
            max_bytes: DEFAULT_MAX_CACHE_BYTES,
        })
    }

    /// The same cache keeping at most `max_bytes` of entries: after each write the least
    /// recently written entries beyond it are removed (default [`DEFAULT_MAX_CACHE_BYTES`]).
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Removes the oldest entries until the cache holds at most `max_bytes` (never `keep`, the
    /// entry just written), and temporary files a dead writer left behind. Best effort: a file
    /// that cannot be listed or removed is skipped.
    fn evict(&self, keep: &Path) {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries = Vec::new();
        for entry in listing.flatten() {
            let path = entry.path();
            let Ok(metadata) = entry.metadata() else { continue };
            let modified = metadata.modified().unwrap_or(std::time::UNIX_EPOCH);
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(".tmp-") {
                let age = modified.elapsed().map(|age| age.as_secs()).unwrap_or(0);
                if age > STALE_TEMPORARY_SECS {
                    let _ = std::fs::remove_file(&path);
                }
            } else if name.ends_with(".cwasm") {
                entries.push((modified, metadata.len(), path));
            }
        }
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }

    /// The entry's identity: hex SHA-256 over the engine's compatibility hash and the
    /// component's digest. It names the entry's file and is bound into its MAC.
    fn entry_id(engine: &Engine, component_digest: &str) -> String {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.0.update(component_digest.as_bytes());
        hex::encode(hasher.0.finalize())
    }

    /// HMAC-SHA256 over a version tag, the entry's identity ([`Self::entry_id`]: component
    /// digest and engine compatibility) and the serialized bytes together, so a valid entry
    /// copied over another component's path does not verify there.
    fn mac(&self, entry_id: &str, bytes: &[u8]) -> [u8; 32] {
        let mut mac =
            <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(b"agentd.code-cache.v2\0");
        mac.update(entry_id.as_bytes());
        mac.update(b"\0");
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }

    /// The compiled form of the component whose verified bytes are `wasm` (digest
    /// `component_digest`): from the cache when a verified entry exists, else compiled by
    /// `compile` and stored.
    ///
    /// # Errors
    ///
    /// The error of `compile` when the component has to be compiled and does not compile. Cache
    /// I/O failures are not errors: the component is compiled instead.
    pub fn load<E>(
        &self,
        engine: &Engine,
        component_digest: &str,
        compile: impl FnOnce() -> Result<Component, E>,
    ) -> Result<(Component, LoadStats), E> {
        let entry_id = Self::entry_id(engine, component_digest);
        let path = self.dir.join(format!("{entry_id}.cwasm"));
        let started = Instant::now();
        let rejected = match std::fs::read(&path) {
            Ok(entry) => match self.verified(engine, &entry_id, &entry) {
                Ok(component) => {
                    return Ok((
                        component,
                        LoadStats {
                            outcome: CacheOutcome::Hit,
                            load_us: micros(started),
                        },
                    ));
                }
                Err(reason) => Some(reason),
            },
            Err(_) => None,
        };
        let started = Instant::now();
        let component = compile()?;
        let load_us = micros(started);
        if let Ok(bytes) = component.serialize() {
            let mut entry = self.mac(&entry_id, &bytes).to_vec();
            entry.extend_from_slice(&bytes);
            if let Err(error) = write_atomically(&path, &entry) {
                tracing::warn!(%error, path = %path.display(), "the compiled component was not cached");
            }
            self.evict(&path);
        }
        let outcome = match rejected {
            Some(reason) => CacheOutcome::Rejected { reason },
            None => CacheOutcome::Miss,
        };
        Ok((component, LoadStats { outcome, load_us }))
    }

    fn verified(&self, engine: &Engine, entry_id: &str, entry: &[u8]) -> Result<Component, String> {
        if entry.len() < 32 {
            return Err("the entry is truncated".into());
        }
        let (tag, bytes) = entry.split_at(32);
        let expected = self.mac(entry_id, bytes);
        // Constant-time comparison is not needed against a local file, but costs nothing.
        let mismatch = tag.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if mismatch != 0 {
            return Err("the entry's MAC does not verify (corrupt, substituted or another component's)".into());
        }
        #[allow(
            unsafe_code,
            reason = "deserializing native code is unsafe; the bytes are MAC-verified first"
        )]
        // SAFETY: `Component::deserialize` requires bytes produced by `Component::serialize`
        // of a compatible engine. The bytes were written by `load` above from
        // `Component::serialize` and carry a MAC under a key only this cache holds, so they are
        // exactly what was serialized; wasmtime then checks version and configuration
        // compatibility itself and returns an error on any mismatch.
        let component = unsafe { Component::deserialize(engine, bytes) };
        component.map_err(|error| format!("wasmtime refused the entry: {error}"))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Unique per process and per write, so concurrent loads of one component never share a
    // temporary file; the rename makes the last complete write win.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = path.with_extension(format!("tmp-{}-{write}", std::process::id()));
    let written = std::fs::write(&temporary, bytes).and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        // A full disk must not leave partial entries behind.
        let _ = std::fs::remove_file(&temporary);
    }
    written
}
