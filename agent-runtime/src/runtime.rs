//! The wasmtime host: one [`Engine`] per process (pooling allocator, fuel, epoch interruption),
//! one [`SkillPre`] per loaded component, one fresh [`Store`] per invocation.
//!
//! Loaded skills live in a registry snapshot behind an [`ArcSwap`]: the call path reads it
//! without a lock; installing or rolling back a version publishes a new snapshot atomically, and
//! an invocation already running keeps the `Arc<LoadedSkill>` it started with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use plugin_abi::{Capability, OutputEnvelope, SideEffect, SkillSummary, WorkspacePath};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline};

use crate::bindings::agentd::skill::types::{Invocation, SideEffect as WitSideEffect, SkillError};
use crate::bindings::{Skill, SkillPre};
use crate::host::{Effects, HostState};
use crate::package::{LimitCeilings, MANIFEST_FILE, Manifest, PackageError, check_component_header, digest};

/// How often the epoch advances, ms. At every tick a running guest yields to the executor and
/// checks its deadline, so it is stopped at most one tick (plus scheduling) after it.
pub const EPOCH_TICK_MS: u64 = 2;

/// The largest input JSON a guest is given, bytes; larger input is refused as invalid input.
pub const MAX_INPUT_BYTES: usize = 8 * 1024 * 1024;

/// The largest output JSON accepted from a guest, bytes; larger output is an invalid output.
pub const MAX_OUTPUT_BYTES: usize = 8 * 1024 * 1024;

/// Limits and paths of a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Ceilings no manifest may exceed.
    pub ceilings: LimitCeilings,
    /// Root of the tenants' workspaces (`<root>/<tenant>/...`); `None` disables `workspace-write`.
    pub workspace_root: Option<PathBuf>,
    /// Concurrent instances the pooling allocator reserves slots for.
    pub max_instances: u32,
    /// Directory of the compiled-code cache; `None` compiles every package at every load.
    pub code_cache: Option<PathBuf>,
    /// SQLite file of the durable key-value store behind `kv-get`/`kv-set`; `None` makes those
    /// calls fail with `capability-error::io`.
    pub kv_path: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            ceilings: LimitCeilings::default(),
            workspace_root: None,
            max_instances: 64,
            code_cache: None,
            kv_path: None,
        }
    }
}

/// Why the runtime itself could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the wasmtime engine: {0}")]
pub struct EngineError(String);

/// A verified, compiled, linked skill package.
pub struct LoadedSkill {
    /// The package manifest.
    pub manifest: Manifest,
    /// What governance sees.
    pub summary: SkillSummary,
    /// The package directory.
    pub package_dir: PathBuf,
    /// JSON Schema of the input object, from `describe`.
    pub input_schema: String,
    /// JSON Schema of the output object, from `describe`.
    pub output_schema: String,
    /// How the compiled code was obtained and how long it took.
    pub load: crate::cache::LoadStats,
    /// Exponentially weighted mean of recent invocation wall times, µs (0 before the first).
    recent_latency_us: std::sync::atomic::AtomicU64,
    /// Concurrency slots (`limits.max_concurrency`).
    slots: tokio::sync::Semaphore,
    /// Invocations waiting for a slot.
    queued: std::sync::atomic::AtomicU32,
    /// Parked instances of a pure skill in warm mode (`limits.max_reuse > 0`), at most
    /// [`WARM_PARKED_PER_SKILL`]. A per-skill lock, held only to push or pop.
    warm: std::sync::Mutex<Vec<WarmInstance>>,
    pre: SkillPre<HostState>,
}

/// Most instances one skill version keeps parked in warm mode; each holds a pooling-allocator
/// slot while parked.
pub const WARM_PARKED_PER_SKILL: usize = 4;

/// An instance kept for reuse, with the store it lives in.
struct WarmInstance {
    store: Store<HostState>,
    instance: Skill,
    /// Only calls of this tenant may reuse it: a pure skill's globals must not carry one
    /// tenant's data into another tenant's call.
    tenant: String,
    /// Calls it has served.
    calls: u32,
}

impl std::fmt::Debug for LoadedSkill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSkill")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// The invocation to dispatch.
#[derive(Debug, Clone)]
pub struct DispatchRequest {
    /// Run id.
    pub run_id: String,
    /// Step id.
    pub step_id: String,
    /// W3C `traceparent`.
    pub traceparent: String,
    /// Idempotency key, stable across retries of this step.
    pub idempotency_key: String,
    /// The input object as JSON text.
    pub input_json: String,
    /// Tenant whose workspace the skill may touch.
    pub tenant: String,
    /// Capabilities the control plane granted.
    pub grants: Vec<Capability>,
}

/// A runtime failure: the skill did not produce a result of its own.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "failure", rename_all = "kebab-case")]
pub enum RuntimeFailure {
    /// The deadline passed. Retryable.
    Timeout {
        /// The deadline, ms.
        deadline_ms: u64,
        /// `true` when the epoch deadline interrupted guest code; `false` when the wall-clock
        /// backstop fired (the guest was waiting on the host).
        in_guest: bool,
    },
    /// The fuel budget ran out. Not retryable: the same input burns the same fuel.
    FuelExhausted {
        /// The budget.
        fuel: u64,
    },
    /// Linear memory would have grown past the limit. Not retryable.
    MemoryLimit {
        /// The limit, bytes.
        limit_bytes: u64,
    },
    /// The guest trapped. Not retryable.
    Trap {
        /// The trap and its backtrace.
        message: String,
    },
    /// The guest needed a capability that was not granted. Not retryable.
    CapabilityDenied {
        /// The capability that was missing.
        capability: String,
        /// What the skill reported.
        message: String,
    },
    /// The guest's output is not a valid envelope. Not retryable.
    InvalidOutput {
        /// What is wrong.
        message: String,
    },
    /// The host failed around the guest (instantiation, I/O). Retryable.
    Host {
        /// What failed.
        message: String,
    },
    /// Every slot of this skill version is busy and its queue is full (backpressure). Retryable.
    Overloaded {
        /// Invocations running.
        in_flight: u32,
        /// Invocations waiting.
        queued: u32,
    },
}

impl RuntimeFailure {
    /// Whether a retry can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RuntimeFailure::Timeout { .. } | RuntimeFailure::Host { .. } | RuntimeFailure::Overloaded { .. }
        )
    }
}

/// A skill's own error, as classified by the skill.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "kebab-case")]
pub enum SkillFailure {
    /// Bad input; not retryable.
    InvalidInput(String),
    /// Passing fault; retryable.
    Transient(String),
    /// Will fail again; not retryable.
    Permanent(String),
    /// A human must decide; not retryable.
    NeedsHuman(String),
}

impl SkillFailure {
    /// Whether a retry can help: only `transient`.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SkillFailure::Transient(_))
    }
}

impl From<SkillError> for SkillFailure {
    fn from(error: SkillError) -> Self {
        match error {
            SkillError::InvalidInput(message) => SkillFailure::InvalidInput(message),
            SkillError::Transient(message) => SkillFailure::Transient(message),
            SkillError::Permanent(message) => SkillFailure::Permanent(message),
            SkillError::NeedsHuman(message) => SkillFailure::NeedsHuman(message),
        }
    }
}

/// How an invocation ended. A value, never an error.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The skill returned an output object.
    Completed {
        /// The output object.
        output: serde_json::Map<String, serde_json::Value>,
    },
    /// The skill returned its own error.
    SkillFailed {
        /// The classified error.
        error: SkillFailure,
    },
    /// The runtime stopped or rejected the invocation.
    Failed {
        /// The classified failure.
        failure: RuntimeFailure,
    },
}

impl Outcome {
    /// Whether a retry of the same invocation can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Outcome::Completed { .. } => false,
            Outcome::SkillFailed { error } => error.is_retryable(),
            Outcome::Failed { failure } => failure.is_retryable(),
        }
    }

    /// A short kebab-case name: `completed`, `invalid-input`, `timeout`, ...
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Completed { .. } => "completed",
            Outcome::SkillFailed { error } => match error {
                SkillFailure::InvalidInput(_) => "invalid-input",
                SkillFailure::Transient(_) => "transient",
                SkillFailure::Permanent(_) => "permanent",
                SkillFailure::NeedsHuman(_) => "needs-human",
            },
            Outcome::Failed { failure } => match failure {
                RuntimeFailure::Timeout { .. } => "timeout",
                RuntimeFailure::FuelExhausted { .. } => "fuel-exhausted",
                RuntimeFailure::MemoryLimit { .. } => "memory-limit",
                RuntimeFailure::Trap { .. } => "trap",
                RuntimeFailure::CapabilityDenied { .. } => "capability-denied",
                RuntimeFailure::InvalidOutput { .. } => "invalid-output",
                RuntimeFailure::Host { .. } => "host-error",
                RuntimeFailure::Overloaded { .. } => "overloaded",
            },
        }
    }
}

/// Measurements of one invocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Metrics {
    /// Time to instantiate from the `InstancePre`, µs.
    pub instantiate_us: u64,
    /// Time inside `invoke`, µs.
    pub execute_us: u64,
    /// Fuel consumed. When an epoch deadline interrupts the guest this is a lower bound:
    /// compiled code keeps its fuel counter in a register and flushes it to the store at calls
    /// and returns, not at the interruption. Equal inputs burn equal fuel only in a guest that
    /// reads no randomness: Rust's `HashMap` seeds itself from WASI `random`, which varies the
    /// work by a few hundred units in a million.
    pub fuel_consumed: u64,
    /// Largest linear memory reached, bytes.
    pub peak_memory_bytes: u64,
    /// Host function calls made by the guest.
    pub host_calls: u64,
    /// Capability denials.
    pub denials: u64,
}

/// The result of [`Runtime::dispatch`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DispatchReport {
    /// Skill id.
    pub skill_id: String,
    /// Skill version.
    pub skill_version: String,
    /// Component digest.
    pub digest: String,
    /// How it ended.
    pub outcome: Outcome,
    /// What it cost.
    pub metrics: Metrics,
}

impl DispatchReport {
    /// The report of an invocation refused before any instance existed: `outcome` says why, and
    /// the metrics are all zero.
    pub fn not_dispatched(skill: &LoadedSkill, outcome: Outcome) -> Self {
        DispatchReport {
            skill_id: skill.summary.id.clone(),
            skill_version: skill.summary.version.to_string(),
            digest: skill.summary.digest.clone(),
            outcome,
            metrics: Metrics::default(),
        }
    }
}

/// Stops the epoch ticker thread when the runtime is dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The loaded versions of one skill id.
#[derive(Debug, Default, Clone)]
struct SkillVersions {
    /// Every loaded version, lowest first (withdrawn ones included: approvals bound to their
    /// digest can still name them).
    loaded: Vec<Arc<LoadedSkill>>,
    /// Versions taken out of selection by [`Runtime::rollback`].
    withdrawn: std::collections::BTreeSet<semver::Version>,
    /// Versions in the order they were installed, for rollback.
    installed: Vec<semver::Version>,
}

impl SkillVersions {
    fn active(&self) -> impl DoubleEndedIterator<Item = &Arc<LoadedSkill>> {
        self.loaded
            .iter()
            .filter(|loaded| !self.withdrawn.contains(&loaded.manifest.version))
    }
}

/// What [`Runtime::rollback`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rollback {
    /// The skill id.
    pub id: String,
    /// The version taken out of selection.
    pub withdrawn: semver::Version,
    /// The version new invocations now get.
    pub active: semver::Version,
}

/// Why [`Runtime::rollback`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    /// No version of the skill is loaded.
    #[error("skill `{0}` is not loaded")]
    UnknownSkill(String),
    /// Only one version is active: rolling back would leave the skill with none.
    #[error("skill `{id}` has no version to roll back to: {active} is the only active version")]
    NothingToRollBackTo {
        /// The skill id.
        id: String,
        /// Its only active version.
        active: semver::Version,
    },
}

/// The skill host. `Send + Sync`; share it behind an `Arc`.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    config: RuntimeConfig,
    registry: ArcSwap<BTreeMap<String, SkillVersions>>,
    /// Serialises installs and rollbacks (never taken on the call path).
    install_lock: tokio::sync::Mutex<()>,
    cache: Option<crate::cache::CodeCache>,
    kv: Option<crate::kv::KvStore>,
    http: reqwest::Client,
    breakers: crate::resilience::CircuitBreakers,
    _ticker: Ticker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .field("skills", &self.registry.load().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn wit_side_effect(class: WitSideEffect) -> SideEffect {
    match class {
        WitSideEffect::Pure => SideEffect::Pure,
        WitSideEffect::ReadOnly => SideEffect::ReadOnly,
        WitSideEffect::Effectful => SideEffect::Effectful,
    }
}

impl Runtime {
    /// Creates the engine (pooling allocator sized by `config`, fuel, epoch interruption), links
    /// WASI p2 and the `agentd:skill/host` interface, and starts the epoch ticker.
    ///
    /// # Errors
    ///
    /// [`EngineError`] when wasmtime refuses the configuration (e.g. the pool cannot be reserved).
    pub fn new(config: RuntimeConfig) -> Result<Self, EngineError> {
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 8)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .max_memory_size(usize::try_from(config.ceilings.memory_bytes).unwrap_or(usize::MAX));
        let mut wasm_config = Config::new();
        wasm_config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&wasm_config).map_err(|error| EngineError(format!("{error:#}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|error| EngineError(format!("{error:#}")))?;
        Skill::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(|error| EngineError(format!("{error:#}")))?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let ticker_stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("agentd-epoch".into())
            .spawn(move || {
                // The epoch follows the wall clock (ticks since start), not the number of
                // wake-ups: sleeping oversleeps a little each time, and counting wake-ups would
                // let deadlines drift late by that much per tick.
                let started = Instant::now();
                let mut epoch: u128 = 0;
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                    let due = started.elapsed().as_millis() / u128::from(EPOCH_TICK_MS);
                    while epoch < due {
                        ticker_engine.increment_epoch();
                        epoch += 1;
                    }
                }
            })
            .map_err(|error| EngineError(format!("cannot start the epoch thread: {error}")))?;

        let cache =
            match &config.code_cache {
                Some(dir) => Some(crate::cache::CodeCache::open(dir).map_err(|error| {
                    EngineError(format!("cannot open the code cache at {}: {error}", dir.display()))
                })?),
                None => None,
            };
        let kv = match &config.kv_path {
            Some(path) => Some(crate::kv::KvStore::open_lazy(path).map_err(|error| EngineError(error.to_string()))?),
            None => None,
        };
        // Redirects are not followed: a redirect could lead to an origin that was not granted.
        // No proxy from the environment either: the grant names the origin actually contacted.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("agentd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| EngineError(format!("cannot build the HTTP client: {error}")))?;
        Ok(Runtime {
            engine,
            linker,
            config,
            registry: ArcSwap::from_pointee(BTreeMap::new()),
            install_lock: tokio::sync::Mutex::new(()),
            cache,
            kv,
            http,
            breakers: crate::resilience::CircuitBreakers::new(5, Duration::from_secs(30)),
            _ticker: Ticker { stop },
        })
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Loads every package directory directly under `dir` (those holding a `skill.toml`), in
    /// name order. Returns what loaded and, separately, what was refused and why, so one bad
    /// package does not hide the good ones.
    ///
    /// # Errors
    ///
    /// [`PackageError::Read`] when `dir` itself cannot be listed.
    pub async fn load_dir(&self, dir: &Path) -> Result<(Vec<SkillSummary>, Vec<PackageError>), PackageError> {
        let read_error = |source| PackageError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut package_dirs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_error)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.join(MANIFEST_FILE).is_file())
            .collect();
        package_dirs.sort();
        let mut loaded = Vec::new();
        let mut refused = Vec::new();
        for package_dir in package_dirs {
            match self.load_package(&package_dir).await {
                Ok(summary) => loaded.push(summary),
                Err(error) => refused.push(error),
            }
        }
        Ok((loaded, refused))
    }

    /// Loads one package: parses the manifest, verifies the component's SHA-256, checks it is
    /// a component, compiles and links it, and checks its `describe` against the manifest.
    ///
    /// This is also the hot-swap install: the new version is published atomically, so the next
    /// [`lookup`](Self::lookup) or selection sees it and none sees half of it, while invocations
    /// already running finish on the version they hold. [`rollback`](Self::rollback) undoes it.
    ///
    /// # Errors
    ///
    /// A [`PackageError`] naming the first check that failed; nothing is loaded then, and what
    /// was loaded before stays as it was.
    pub async fn load_package(&self, package_dir: &Path) -> Result<SkillSummary, PackageError> {
        let manifest_path = package_dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path).map_err(|source| PackageError::Read {
            path: manifest_path.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text, &manifest_path, &self.config.ceilings)?;
        let Some(expected) = manifest.sha256.clone() else {
            return Err(PackageError::MissingDigest { path: manifest_path });
        };
        let component_path = package_dir.join(&manifest.component);
        let bytes = std::fs::read(&component_path).map_err(|source| PackageError::Read {
            path: component_path.clone(),
            source,
        })?;
        let actual = digest(&bytes);
        if actual != expected {
            return Err(PackageError::DigestMismatch {
                path: component_path,
                expected,
                actual,
            });
        }
        check_component_header(&bytes, &component_path)?;
        let compile = || {
            Component::new(&self.engine, &bytes).map_err(|error| PackageError::Compile {
                path: component_path.clone(),
                message: format!("{error:#}"),
            })
        };
        let (component, load) = match &self.cache {
            Some(cache) => cache.load(&self.engine, &actual, compile)?,
            None => {
                let started = Instant::now();
                let component = compile()?;
                let load_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                (
                    component,
                    crate::cache::LoadStats {
                        outcome: crate::cache::CacheOutcome::Disabled,
                        load_us,
                    },
                )
            }
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|error| PackageError::Link {
                path: component_path.clone(),
                message: format!("{error:#}"),
            })?;
        let pre = SkillPre::new(instance_pre).map_err(|error| PackageError::WrongWorld {
            path: component_path.clone(),
            message: format!("{error:#}"),
        })?;

        let descriptor = {
            let mut store = self.new_store(&manifest, "describe", Vec::new(), Effects::default());
            let describe_error = |error: wasmtime::Error| PackageError::Describe {
                path: component_path.clone(),
                message: format!("{error:#}"),
            };
            let skill = pre.instantiate_async(&mut store).await.map_err(describe_error)?;
            skill.call_describe(&mut store).await.map_err(describe_error)?
        };
        let component_capabilities = descriptor
            .capabilities
            .iter()
            .map(|text| text.parse::<Capability>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| PackageError::Describe {
                path: component_path.clone(),
                message: error.to_string(),
            })?;
        let mismatch = |field, manifest: String, component: String| PackageError::DescriptorMismatch {
            path: component_path.clone(),
            field,
            manifest,
            component,
        };
        if descriptor.id != manifest.id {
            return Err(mismatch("id", manifest.id.clone(), descriptor.id));
        }
        if descriptor.version != manifest.version.to_string() {
            return Err(mismatch("version", manifest.version.to_string(), descriptor.version));
        }
        if wit_side_effect(descriptor.side_effect) != manifest.side_effect {
            return Err(mismatch(
                "side-effect",
                manifest.side_effect.to_string(),
                wit_side_effect(descriptor.side_effect).to_string(),
            ));
        }
        let mut sorted_component = component_capabilities.clone();
        sorted_component.sort();
        let mut sorted_manifest = manifest.capabilities.clone();
        sorted_manifest.sort();
        if sorted_component != sorted_manifest {
            let render = |list: &[Capability]| list.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            return Err(mismatch(
                "capabilities",
                render(&sorted_manifest),
                render(&sorted_component),
            ));
        }

        let summary = SkillSummary {
            id: manifest.id.clone(),
            version: manifest.version.clone(),
            side_effect: manifest.side_effect,
            capabilities: manifest.capabilities.clone(),
            digest: actual,
        };
        let manifest_limits_concurrency = manifest.limits.max_concurrency.max(1) as usize;
        let loaded = Arc::new(LoadedSkill {
            manifest,
            summary: summary.clone(),
            package_dir: package_dir.to_owned(),
            input_schema: descriptor.input_schema,
            output_schema: descriptor.output_schema,
            load,
            recent_latency_us: std::sync::atomic::AtomicU64::new(0),
            slots: tokio::sync::Semaphore::new(manifest_limits_concurrency),
            queued: std::sync::atomic::AtomicU32::new(0),
            warm: std::sync::Mutex::new(Vec::new()),
            pre,
        });
        let _guard = self.install_lock.lock().await;
        let mut registry = BTreeMap::clone(&self.registry.load());
        let versions = registry.entry(summary.id.clone()).or_default();
        match versions
            .loaded
            .iter()
            .find(|loaded| loaded.manifest.version == summary.version)
        {
            // Installing a rolled-back version again, byte for byte, rolls it forward.
            Some(existing)
                if existing.summary.digest == summary.digest && versions.withdrawn.contains(&summary.version) =>
            {
                versions.withdrawn.remove(&summary.version);
            }
            // A version is immutable: the same number with other bytes (or twice) is refused.
            Some(_) => {
                return Err(PackageError::Duplicate {
                    id: summary.id.clone(),
                    version: summary.version.clone(),
                });
            }
            None => {
                versions.loaded.push(loaded);
                versions
                    .loaded
                    .sort_by(|a, b| a.manifest.version.cmp(&b.manifest.version));
            }
        }
        versions.installed.retain(|version| *version != summary.version);
        versions.installed.push(summary.version.clone());
        self.registry.store(Arc::new(registry));
        tracing::info!(skill = %summary.id, version = %summary.version, digest = %summary.digest, "skill package installed");
        Ok(summary)
    }

    /// Rolls skill `id` back: the version installed most recently among the active ones is
    /// withdrawn from selection, so new invocations get the highest remaining one. In-flight
    /// invocations of the withdrawn version finish on it. One call, atomic like an install.
    ///
    /// # Errors
    ///
    /// [`RollbackError`] when the skill is unknown or has no other active version.
    pub async fn rollback(&self, id: &str) -> Result<Rollback, RollbackError> {
        let _guard = self.install_lock.lock().await;
        let mut registry = BTreeMap::clone(&self.registry.load());
        let versions = registry
            .get_mut(id)
            .ok_or_else(|| RollbackError::UnknownSkill(id.to_owned()))?;
        let active: Vec<semver::Version> = versions
            .active()
            .map(|loaded| loaded.manifest.version.clone())
            .collect();
        let Some(latest) = versions
            .installed
            .iter()
            .rev()
            .find(|version| active.contains(version))
            .cloned()
        else {
            return Err(RollbackError::UnknownSkill(id.to_owned()));
        };
        if active.len() < 2 {
            return Err(RollbackError::NothingToRollBackTo {
                id: id.to_owned(),
                active: latest,
            });
        }
        versions.withdrawn.insert(latest.clone());
        let now_active = versions
            .active()
            .next_back()
            .map(|loaded| loaded.manifest.version.clone())
            .unwrap_or_else(|| latest.clone());
        self.registry.store(Arc::new(registry));
        tracing::info!(skill = %id, withdrawn = %latest, active = %now_active, "skill version rolled back");
        Ok(Rollback {
            id: id.to_owned(),
            withdrawn: latest,
            active: now_active,
        })
    }

    /// The highest active (loaded and not rolled back) version of skill `id`.
    pub fn lookup(&self, id: &str) -> Option<Arc<LoadedSkill>> {
        self.registry
            .load()
            .get(id)
            .and_then(|versions| versions.active().next_back())
            .cloned()
    }

    /// The loaded skill `id` whose component has `digest`, withdrawn versions included.
    pub fn lookup_digest(&self, id: &str, digest: &str) -> Option<Arc<LoadedSkill>> {
        self.registry
            .load()
            .get(id)?
            .loaded
            .iter()
            .find(|loaded| loaded.summary.digest == digest)
            .cloned()
    }

    /// The circuit breakers, one per (skill version, tenant): open after 5 consecutive failures,
    /// one probe after 30 s.
    pub fn breakers(&self) -> &crate::resilience::CircuitBreakers {
        &self.breakers
    }

    /// Every active version of `id` (loaded and not rolled back), lowest first.
    pub fn versions(&self, id: &str) -> Vec<Arc<LoadedSkill>> {
        self.registry
            .load()
            .get(id)
            .map(|versions| versions.active().cloned().collect())
            .unwrap_or_default()
    }

    /// Every active skill version, by id then version.
    pub fn skills(&self) -> Vec<Arc<LoadedSkill>> {
        self.registry
            .load()
            .values()
            .flat_map(|versions| versions.active().cloned())
            .collect()
    }

    fn new_store(
        &self,
        manifest: &Manifest,
        traceparent: &str,
        grants: Vec<Capability>,
        effects: Effects,
    ) -> Store<HostState> {
        let now = Instant::now();
        let state = HostState::new(
            &manifest.id,
            traceparent,
            manifest.limits.memory_bytes,
            grants,
            effects,
            now + Duration::from_millis(manifest.limits.deadline_ms),
            now + wall_clock_limit(manifest.limits.deadline_ms),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // Cannot fail: fuel consumption is enabled on this engine.
        let _ = store.set_fuel(manifest.limits.fuel);
        // At every epoch tick the guest yields to the tokio executor (a spinning guest does not
        // hold a worker thread for its whole deadline) and is interrupted once its deadline has
        // passed: a `Trap::Interrupt`, classified as a timeout in the guest.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|context| {
            if Instant::now() >= context.data().guest_deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Runs one invocation of `skill` in a fresh store under the manifest's limits, with
    /// `request.grants` as the only capabilities.
    ///
    /// Never fails: every way an invocation can end is an [`Outcome`].
    pub async fn dispatch(&self, skill: &LoadedSkill, request: &DispatchRequest) -> DispatchReport {
        let span = tracing::info_span!(
            "skill.invoke",
            skill = %skill.summary.id,
            version = %skill.summary.version,
            digest = %skill.summary.digest,
            traceparent = %request.traceparent,
            instantiate_us = tracing::field::Empty,
            execute_us = tracing::field::Empty,
            fuel = tracing::field::Empty,
            peak_memory_bytes = tracing::field::Empty,
            host_calls = tracing::field::Empty,
            denials = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let report = tracing::Instrument::instrument(self.dispatch_admitted(skill, request), span.clone()).await;
        let metrics = &report.metrics;
        span.record("instantiate_us", metrics.instantiate_us);
        span.record("execute_us", metrics.execute_us);
        span.record("fuel", metrics.fuel_consumed);
        span.record("peak_memory_bytes", metrics.peak_memory_bytes);
        span.record("host_calls", metrics.host_calls);
        span.record("denials", metrics.denials);
        span.record("outcome", report.outcome.name());
        report
    }

    /// Admission: bounded input, then a concurrency slot of this skill version, waiting in a
    /// bounded queue (backpressure: a full queue refuses at once, retryably).
    async fn dispatch_admitted(&self, skill: &LoadedSkill, request: &DispatchRequest) -> DispatchReport {
        let refuse = |outcome: Outcome| DispatchReport::not_dispatched(skill, outcome);
        if request.input_json.len() > MAX_INPUT_BYTES {
            return refuse(Outcome::SkillFailed {
                error: SkillFailure::InvalidInput(format!(
                    "the input is {} bytes; the limit is {MAX_INPUT_BYTES}",
                    request.input_json.len()
                )),
            });
        }
        let permit = match skill.slots.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let queued = skill.queued.fetch_add(1, Ordering::AcqRel);
                if queued >= skill.manifest.limits.max_queue {
                    skill.queued.fetch_sub(1, Ordering::AcqRel);
                    return refuse(Outcome::Failed {
                        failure: RuntimeFailure::Overloaded {
                            in_flight: skill.manifest.limits.max_concurrency,
                            queued,
                        },
                    });
                }
                let permit = skill.slots.acquire().await;
                skill.queued.fetch_sub(1, Ordering::AcqRel);
                match permit {
                    Ok(permit) => permit,
                    Err(_) => {
                        return refuse(Outcome::Failed {
                            failure: RuntimeFailure::Host {
                                message: "the skill's slots were closed".into(),
                            },
                        });
                    }
                }
            }
        };
        let report = self.dispatch_now(skill, request).await;
        drop(permit);
        report
    }

    async fn dispatch_now(&self, skill: &LoadedSkill, request: &DispatchRequest) -> DispatchReport {
        let limits = skill.manifest.limits;
        let workspace = match (&self.config.workspace_root, WorkspacePath::parse(&request.tenant)) {
            (Some(root), Ok(tenant)) if tenant.segments().count() == 1 => Some(root.join(tenant.as_str())),
            _ => None,
        };
        let effects = Effects {
            workspace,
            tenant: request.tenant.clone(),
            kv: self.kv.clone(),
            http: Some(self.http.clone()),
        };
        let invocation = Invocation {
            schema_version: plugin_abi::INVOKE_SCHEMA_V1.to_owned(),
            run_id: request.run_id.clone(),
            step_id: request.step_id.clone(),
            traceparent: request.traceparent.clone(),
            idempotency_key: request.idempotency_key.clone(),
            input: request.input_json.clone(),
        };
        let mut metrics = Metrics::default();
        let parked = if limits.max_reuse > 0 {
            skill.take_warm(&request.tenant)
        } else {
            None
        };
        let (mut store, warm_instance, calls) = match parked {
            Some(parked) => {
                let mut store = parked.store;
                let now = Instant::now();
                store.data_mut().rearm(
                    &request.traceparent,
                    request.grants.clone(),
                    effects,
                    now + Duration::from_millis(limits.deadline_ms),
                    now + wall_clock_limit(limits.deadline_ms),
                );
                // Cannot fail: fuel consumption is enabled on this engine.
                let _ = store.set_fuel(limits.fuel);
                store.set_epoch_deadline(1);
                (store, Some(parked.instance), parked.calls)
            }
            None => (
                self.new_store(&skill.manifest, &request.traceparent, request.grants.clone(), effects),
                None,
                0,
            ),
        };

        // The epoch deadline stops guest code; this wall-clock backstop, a little later, also
        // covers time spent in host calls.
        let wall_clock = wall_clock_limit(limits.deadline_ms);
        let started = Instant::now();
        let result = tokio::time::timeout(wall_clock, async {
            let instance = match warm_instance {
                Some(instance) => instance,
                None => {
                    let instance = skill.pre.instantiate_async(&mut store).await;
                    metrics.instantiate_us = micros(started.elapsed());
                    instance.map_err(|error| (error, true))?
                }
            };
            let executing = Instant::now();
            let result = instance.call_invoke(&mut store, &invocation).await;
            metrics.execute_us = micros(executing.elapsed());
            result.map(|result| (instance, result)).map_err(|error| (error, false))
        })
        .await;
        let (result, instance) = match result {
            Ok(Ok((instance, result))) => (Ok(Ok(result)), Some(instance)),
            Ok(Err(error)) => (Ok(Err(error)), None),
            Err(elapsed) => (Err(elapsed), None),
        };

        metrics.fuel_consumed = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let state = store.data();
        metrics.peak_memory_bytes = state.limiter.peak_bytes;
        metrics.host_calls = state.host_calls;
        metrics.denials = state.denials.len() as u64;

        let outcome = match result {
            Err(_elapsed) => Outcome::Failed {
                failure: RuntimeFailure::Timeout {
                    deadline_ms: limits.deadline_ms,
                    in_guest: false,
                },
            },
            Ok(Err((error, during_instantiation))) => Outcome::Failed {
                failure: classify_trap(&error, state, &limits, during_instantiation),
            },
            Ok(Ok(Ok(output))) if output.output.len() > MAX_OUTPUT_BYTES => Outcome::Failed {
                failure: RuntimeFailure::InvalidOutput {
                    message: format!(
                        "the output is {} bytes; the limit is {MAX_OUTPUT_BYTES}",
                        output.output.len()
                    ),
                },
            },
            Ok(Ok(Ok(output))) => match OutputEnvelope::parse(&output.schema_version, &output.output) {
                Ok(output) => Outcome::Completed { output },
                Err(error) => Outcome::Failed {
                    failure: RuntimeFailure::InvalidOutput {
                        message: error.to_string(),
                    },
                },
            },
            Ok(Ok(Err(skill_error))) => match state.denials.first() {
                Some(capability) => Outcome::Failed {
                    failure: RuntimeFailure::CapabilityDenied {
                        capability: capability.clone(),
                        message: SkillFailure::from(skill_error.clone()).message().to_owned(),
                    },
                },
                None => Outcome::SkillFailed {
                    error: skill_error.into(),
                },
            },
        };
        tracing::info!(outcome = outcome.name(), "skill invocation");
        skill.observe_latency(metrics.instantiate_us + metrics.execute_us);
        // Warm mode: park the instance again only after a call that returned normally, within
        // its limits and its reuse bound.
        if let Some(instance) = instance
            && limits.max_reuse > 0
            && calls + 1 < limits.max_reuse
            && matches!(outcome, Outcome::Completed { .. } | Outcome::SkillFailed { .. })
            && !store.data().limiter.limit_hit
        {
            skill.park_warm(WarmInstance {
                store,
                instance,
                tenant: request.tenant.clone(),
                calls: calls + 1,
            });
        }
        DispatchReport {
            skill_id: skill.summary.id.clone(),
            skill_version: skill.summary.version.to_string(),
            digest: skill.summary.digest.clone(),
            outcome,
            metrics,
        }
    }
}

impl LoadedSkill {
    /// Exponentially weighted mean (weight 1/8 for the newest) of recent invocation times, µs.
    pub fn recent_latency_us(&self) -> u64 {
        self.recent_latency_us.load(Ordering::Relaxed)
    }

    fn take_warm(&self, tenant: &str) -> Option<WarmInstance> {
        let mut parked = self.warm.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let position = parked.iter().rposition(|warm| warm.tenant == tenant)?;
        Some(parked.swap_remove(position))
    }

    fn park_warm(&self, instance: WarmInstance) {
        let mut parked = self.warm.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if parked.len() < WARM_PARKED_PER_SKILL {
            parked.push(instance);
        }
    }

    /// Instances parked for reuse (warm mode), for tests and metrics.
    pub fn parked_instances(&self) -> usize {
        self.warm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    fn observe_latency(&self, micros: u64) {
        let _ = self
            .recent_latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 { micros } else { old - old / 8 + micros / 8 })
            });
    }
}

impl SkillFailure {
    /// The skill's message.
    pub fn message(&self) -> &str {
        match self {
            SkillFailure::InvalidInput(message)
            | SkillFailure::Transient(message)
            | SkillFailure::Permanent(message)
            | SkillFailure::NeedsHuman(message) => message,
        }
    }
}

/// The wall-clock backstop of an invocation with an epoch deadline of `deadline_ms`: 10% later,
/// at least 100 ms later.
fn wall_clock_limit(deadline_ms: u64) -> Duration {
    Duration::from_millis(deadline_ms + (deadline_ms / 10).max(100))
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

fn classify_trap(
    error: &wasmtime::Error,
    state: &HostState,
    limits: &crate::package::Limits,
    during_instantiation: bool,
) -> RuntimeFailure {
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => RuntimeFailure::FuelExhausted { fuel: limits.fuel },
        Some(Trap::Interrupt) => RuntimeFailure::Timeout {
            deadline_ms: limits.deadline_ms,
            in_guest: true,
        },
        _ if state.limiter.limit_hit => RuntimeFailure::MemoryLimit {
            limit_bytes: limits.memory_bytes,
        },
        Some(_) => RuntimeFailure::Trap {
            message: format!("{error:#}"),
        },
        None if during_instantiation => RuntimeFailure::Host {
            message: format!("instantiation failed: {error:#}"),
        },
        None => RuntimeFailure::Trap {
            message: format!("{error:#}"),
        },
    }
}
