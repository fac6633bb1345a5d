//! The registry of loaded skills: every verified version of every skill, behind an
//! [`ArcSwap`] snapshot. The call path reads it without a lock; installing or rolling back a
//! version publishes a new snapshot atomically, and an invocation already running keeps the
//! `Arc<LoadedSkill>` it started with.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use plugin_abi::SkillSummary;
use wasmtime::Store;

use crate::bindings::{Skill, SkillPre};
use crate::cache::LoadStats;
use crate::host::HostState;
use crate::package::{Manifest, PackageError};
use crate::schema::{SchemaViolation, SkillSchema};

/// Most instances one skill version keeps parked in warm mode; each holds a pooling-allocator
/// slot while parked.
pub const WARM_PARKED_PER_SKILL: usize = 4;

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
    /// The two schemas, compiled (draft 2020-12): input checked before dispatch, output after.
    schemas: (SkillSchema, SkillSchema),
    /// How the compiled code was obtained and how long it took.
    pub load: LoadStats,
    /// Exponentially weighted mean of recent invocation wall times, µs (0 before the first).
    recent_latency_us: AtomicU64,
    /// Concurrency slots (`limits.max_concurrency`).
    pub(crate) slots: tokio::sync::Semaphore,
    /// Invocations waiting for a slot.
    pub(crate) queued: AtomicU32,
    /// Parked instances of a pure skill in warm mode (`limits.max_reuse > 0`), at most
    /// [`WARM_PARKED_PER_SKILL`]. A per-skill lock, held only to push or pop.
    warm: Mutex<Vec<WarmInstance>>,
    pub(crate) pre: SkillPre<HostState>,
}

/// An instance kept for reuse, with the store it lives in.
pub(crate) struct WarmInstance {
    pub(crate) store: Store<HostState>,
    pub(crate) instance: Skill,
    /// Only calls of this tenant may reuse it: a pure skill's globals must not carry one
    /// tenant's data into another tenant's call.
    pub(crate) tenant: String,
    /// Calls it has served.
    pub(crate) calls: u32,
}

impl std::fmt::Debug for LoadedSkill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedSkill")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl LoadedSkill {
    /// Concurrency slots free now, of `limits.max_concurrency` (for metrics).
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// A skill ready to run: its verified manifest and summary, its `describe` schemas, how its
    /// code was loaded, and its pre-linked instance.
    pub(crate) fn new(
        manifest: Manifest,
        summary: SkillSummary,
        package_dir: PathBuf,
        schemas: (String, String),
        compiled: (SkillSchema, SkillSchema),
        load: LoadStats,
        pre: SkillPre<HostState>,
    ) -> Self {
        let slots = manifest.limits.max_concurrency.max(1) as usize;
        LoadedSkill {
            manifest,
            summary,
            package_dir,
            input_schema: schemas.0,
            output_schema: schemas.1,
            schemas: compiled,
            load,
            recent_latency_us: AtomicU64::new(0),
            slots: tokio::sync::Semaphore::new(slots),
            queued: AtomicU32::new(0),
            warm: Mutex::new(Vec::new()),
            pre,
        }
    }

    /// The compiled input schema (its JSON: [`SkillSchema::value`]).
    pub fn input_schema(&self) -> &SkillSchema {
        &self.schemas.0
    }

    /// The compiled output schema.
    pub fn output_schema(&self) -> &SkillSchema {
        &self.schemas.1
    }

    /// Checks an input object against the skill's input schema; the step pipeline calls it
    /// before every dispatch, so a skill never sees input its schema refuses.
    ///
    /// # Errors
    ///
    /// A [`SchemaViolation`] naming the first violations (JSON Pointers into `input`).
    pub fn check_input(&self, input: &serde_json::Value) -> Result<(), SchemaViolation> {
        self.schemas.0.check(input)
    }

    /// Exponentially weighted mean (weight 1/8 for the newest) of recent invocation times, µs.
    pub fn recent_latency_us(&self) -> u64 {
        self.recent_latency_us.load(Ordering::Relaxed)
    }

    pub(crate) fn take_warm(&self, tenant: &str) -> Option<WarmInstance> {
        let mut parked = self.warm.lock().unwrap_or_else(PoisonError::into_inner);
        let position = parked.iter().rposition(|warm| warm.tenant == tenant)?;
        Some(parked.swap_remove(position))
    }

    pub(crate) fn park_warm(&self, instance: WarmInstance) {
        let mut parked = self.warm.lock().unwrap_or_else(PoisonError::into_inner);
        if parked.len() < WARM_PARKED_PER_SKILL {
            parked.push(instance);
        }
    }

    /// Instances parked for reuse (warm mode), for tests and metrics.
    pub fn parked_instances(&self) -> usize {
        self.warm.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub(crate) fn observe_latency(&self, micros: u64) {
        let _ = self
            .recent_latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 { micros } else { old - old / 8 + micros / 8 })
            });
    }
}

/// The loaded versions of one skill id.
#[derive(Debug, Default, Clone)]
struct SkillVersions {
    /// Every loaded version, lowest first (withdrawn ones included: approvals bound to their
    /// digest can still name them).
    loaded: Vec<Arc<LoadedSkill>>,
    /// Versions taken out of selection by [`Registry::rollback`].
    withdrawn: BTreeSet<semver::Version>,
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

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rollback {
    /// The skill id.
    pub id: String,
    /// The version taken out of selection.
    pub withdrawn: semver::Version,
    /// The version new invocations now get.
    pub active: semver::Version,
}

/// Why a rollback was refused.
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

impl RollbackError {
    /// Whether retrying can help: never, the registry is as it is.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Every loaded skill, as an atomically replaced snapshot.
#[derive(Default)]
pub(crate) struct Registry {
    snapshot: ArcSwap<BTreeMap<String, SkillVersions>>,
    /// Serialises installs and rollbacks (never taken on the call path).
    install_lock: tokio::sync::Mutex<()>,
}

impl Registry {
    /// Publishes `loaded`: a new version, or a rolled-back one installed again byte for byte
    /// (which rolls it forward).
    pub(crate) async fn install(&self, loaded: Arc<LoadedSkill>) -> Result<SkillSummary, PackageError> {
        let summary = loaded.summary.clone();
        let _guard = self.install_lock.lock().await;
        let mut registry = BTreeMap::clone(&self.snapshot.load());
        let versions = registry.entry(summary.id.clone()).or_default();
        match versions
            .loaded
            .iter()
            .find(|existing| existing.manifest.version == summary.version)
        {
            // Installing a rolled-back version again, byte for byte, rolls it forward.
            Some(existing)
                if existing.summary.digest == summary.digest && versions.withdrawn.contains(&summary.version) =>
            {
                versions.withdrawn.remove(&summary.version);
            }
            // A version is immutable: the same number with other bytes (or twice) is refused.
            Some(existing) => {
                return Err(PackageError::Duplicate {
                    id: summary.id.clone(),
                    version: summary.version.clone(),
                    loaded_from: existing.package_dir.clone(),
                    path: loaded.package_dir.clone(),
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
        self.snapshot.store(Arc::new(registry));
        tracing::info!(skill = %summary.id, version = %summary.version, digest = %summary.digest, "skill package installed");
        Ok(summary)
    }

    /// Withdraws the version of `id` installed most recently among the active ones.
    pub(crate) async fn rollback(&self, id: &str) -> Result<Rollback, RollbackError> {
        let _guard = self.install_lock.lock().await;
        let mut registry = BTreeMap::clone(&self.snapshot.load());
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
        self.snapshot.store(Arc::new(registry));
        tracing::info!(skill = %id, withdrawn = %latest, active = %now_active, "skill version rolled back");
        Ok(Rollback {
            id: id.to_owned(),
            withdrawn: latest,
            active: now_active,
        })
    }

    /// The highest active version of `id`.
    pub(crate) fn lookup(&self, id: &str) -> Option<Arc<LoadedSkill>> {
        self.snapshot
            .load()
            .get(id)
            .and_then(|versions| versions.active().next_back())
            .cloned()
    }

    /// The loaded version of `id` whose component has `digest`, withdrawn versions included.
    pub(crate) fn lookup_digest(&self, id: &str, digest: &str) -> Option<Arc<LoadedSkill>> {
        self.snapshot
            .load()
            .get(id)?
            .loaded
            .iter()
            .find(|loaded| loaded.summary.digest == digest)
            .cloned()
    }

    /// Every active version of `id`, lowest first.
    pub(crate) fn versions(&self, id: &str) -> Vec<Arc<LoadedSkill>> {
        self.snapshot
            .load()
            .get(id)
            .map(|versions| versions.active().cloned().collect())
            .unwrap_or_default()
    }

    /// Every active skill version, by id then version.
    pub(crate) fn skills(&self) -> Vec<Arc<LoadedSkill>> {
        self.snapshot
            .load()
            .values()
            .flat_map(|versions| versions.active().cloned())
            .collect()
    }

    /// The ids of every loaded skill.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.snapshot.load().keys().cloned().collect()
    }
}
