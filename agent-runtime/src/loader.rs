//! Loading a skill package, one check after another; the first that fails refuses the package
//! and nothing is installed:
//!
//! 1. the manifest parses and validates ([`Manifest::parse`], every problem listed);
//! 2. the component's SHA-256 equals the manifest's, before a byte is compiled;
//! 3. it is a component, not a core module, built against this `agentd:skill` WIT version and
//!    exporting the world's functions (names read before the compile);
//! 4. it compiles (or comes from the verified code cache) and links against the host;
//! 5. it implements the `agentd:skill` world;
//! 6. its `describe` agrees with the manifest (id, version, side effect, capabilities).
//!
//! A package that passes is installed into the registry: this is also the hot swap.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use plugin_abi::{Capability, SideEffect, SkillSummary};
use wasmtime::component::Component;

use crate::bindings::SkillPre;
use crate::bindings::agentd::skill::types::{Descriptor, SideEffect as WitSideEffect};
use crate::cache::{CacheOutcome, LoadStats};
use crate::host::Effects;
use crate::package::{
    MANIFEST_FILE, Manifest, PackageError, check_component_header, check_component_world, sha256_digest,
};
use crate::registry::LoadedSkill;
use crate::runtime::Runtime;
use crate::schema::{SchemaRole, SkillSchema};

/// What [`Runtime::load_dir`] found in a plugin directory.
#[derive(Debug, Default)]
pub struct DirLoad {
    /// The packages loaded, in directory name order.
    pub loaded: Vec<SkillSummary>,
    /// The packages refused, each with why (a duplicate id and version names both directories).
    pub refused: Vec<PackageError>,
    /// What looks like a mistake but refuses nothing.
    pub warnings: Vec<DirWarning>,
    /// Package directories not loaded because no skill asked for needs them
    /// ([`Runtime::load_dir_for`]), in name order.
    pub skipped: Vec<PathBuf>,
}

/// Something in a plugin directory that is probably not what its author meant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirWarning {
    /// The directory holds no package at all.
    #[error("{} holds no skill package (a package is a directory with a `skill.toml`)", dir.display())]
    Empty {
        /// The plugin directory.
        dir: PathBuf,
    },
    /// A subdirectory without a manifest holds packages one level further down.
    #[error(
        "{} is not a package (no `skill.toml`) but holds {found} one directory down, such as {}: pass \
         `--plugins {}` or move them up",
        dir.display(),
        example.display(),
        dir.display()
    )]
    TooDeep {
        /// The subdirectory.
        dir: PathBuf,
        /// How many packages it holds.
        found: usize,
        /// One of them.
        example: PathBuf,
    },
}

impl Runtime {
    /// Loads every package directory directly under `dir` (those holding a `skill.toml`), in
    /// name order. Returns what loaded and, separately, what was refused and why, so one bad
    /// package does not hide the good ones, and what looks misplaced.
    ///
    /// # Errors
    ///
    /// [`PackageError::Read`] when `dir` itself cannot be listed.
    pub async fn load_dir(&self, dir: &Path) -> Result<DirLoad, PackageError> {
        self.load_dir_filtered(dir, None).await
    }

    /// [`load_dir`](Self::load_dir), but only the packages a step of `skills` can run: those
    /// whose manifest names one of `skills`, or a fallback of such a package (transitively).
    /// The others are not compiled, only their manifests read (a compile of an 18 MB Python
    /// component takes seconds); they are listed in [`DirLoad::skipped`]. A package whose
    /// manifest cannot be read is loaded, so its refusal is reported.
    ///
    /// # Errors
    ///
    /// [`PackageError::Read`] when `dir` itself cannot be listed.
    pub async fn load_dir_for(&self, dir: &Path, skills: &[&str]) -> Result<DirLoad, PackageError> {
        let wanted: std::collections::BTreeSet<String> = skills.iter().map(|id| (*id).to_owned()).collect();
        self.load_dir_filtered(dir, Some(wanted)).await
    }

    async fn load_dir_filtered(
        &self,
        dir: &Path,
        mut wanted: Option<std::collections::BTreeSet<String>>,
    ) -> Result<DirLoad, PackageError> {
        let read_error = |source| PackageError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_error)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.is_dir())
            .collect();
        subdirs.sort();
        // Manifests are small: read them all, then close the wanted set over fallbacks.
        let manifests: Vec<Option<Manifest>> = subdirs
            .iter()
            .map(|subdir| {
                subdir
                    .join(MANIFEST_FILE)
                    .is_file()
                    .then(|| self.read_manifest(subdir).ok())
                    .flatten()
            })
            .collect();
        if let Some(wanted) = &mut wanted {
            loop {
                let before = wanted.len();
                for manifest in manifests.iter().flatten() {
                    if wanted.contains(&manifest.id) {
                        wanted.extend(manifest.fallbacks.iter().cloned());
                    }
                }
                if wanted.len() == before {
                    break;
                }
            }
        }
        let mut report = DirLoad::default();
        let mut packages = 0;
        for (subdir, manifest) in subdirs.into_iter().zip(manifests) {
            if !subdir.join(MANIFEST_FILE).is_file() {
                let mut nested: Vec<PathBuf> = std::fs::read_dir(&subdir)
                    .into_iter()
                    .flatten()
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .filter(|path| path.join(MANIFEST_FILE).is_file())
                    .collect();
                nested.sort();
                if let Some(example) = nested.first() {
                    report.warnings.push(DirWarning::TooDeep {
                        dir: subdir.clone(),
                        found: nested.len(),
                        example: example.clone(),
                    });
                }
                continue;
            }
            packages += 1;
            if let (Some(wanted), Some(manifest)) = (&wanted, &manifest)
                && !wanted.contains(&manifest.id)
            {
                report.skipped.push(subdir);
                continue;
            }
            match self.load_package(&subdir).await {
                Ok(summary) => report.loaded.push(summary),
                Err(error) => report.refused.push(error),
            }
        }
        if packages == 0 {
            report.warnings.push(DirWarning::Empty { dir: dir.to_owned() });
        }
        Ok(report)
    }

    /// Loads one package (the checks of this module, in order) and installs it.
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
        let manifest = self.read_manifest(package_dir)?;
        let component_path = package_dir.join(&manifest.component);
        let (bytes, digest) = read_verified_component(&manifest, &component_path)?;
        let flavour = self
            .engine
            .flavour(manifest.limits.cpu)
            .map_err(|error| PackageError::Compile {
                path: component_path.clone(),
                message: error.to_string(),
            })?;
        let (component, load) = self.compile(flavour, &bytes, &digest, &component_path)?;
        let pre = link(flavour, &component, &component_path)?;
        let descriptor = self.describe(&manifest, &pre, &component_path).await?;
        check_descriptor(&manifest, &descriptor, &component_path)?;
        let schema = |role, text: &str| {
            SkillSchema::compile(role, text).map_err(|error| PackageError::Schema {
                path: component_path.clone(),
                error,
            })
        };
        let schemas = (
            schema(SchemaRole::Input, &descriptor.input_schema)?,
            schema(SchemaRole::Output, &descriptor.output_schema)?,
        );
        let summary = SkillSummary {
            id: manifest.id.clone(),
            version: manifest.version.clone(),
            side_effect: manifest.side_effect,
            capabilities: manifest.capabilities.clone(),
            digest,
            cpu_metering: manifest.limits.cpu,
        };
        let loaded = LoadedSkill::new(
            manifest,
            summary,
            package_dir.to_owned(),
            (descriptor.input_schema, descriptor.output_schema),
            schemas,
            load,
            pre,
        );
        self.registry.install(Arc::new(loaded)).await
    }

    fn read_manifest(&self, package_dir: &Path) -> Result<Manifest, PackageError> {
        let manifest_path = package_dir.join(MANIFEST_FILE);
        let bytes = crate::package::read_package_file(&manifest_path, crate::package::MAX_MANIFEST_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|_| PackageError::Manifest {
            path: manifest_path.clone(),
            problems: vec!["the file is not UTF-8 text".to_owned()],
        })?;
        Manifest::parse(&text, &manifest_path, &self.config.ceilings)
    }

    /// Compiles the verified bytes, or loads them from the code cache.
    fn compile(
        &self,
        flavour: &crate::engine::Flavour,
        bytes: &[u8],
        digest: &str,
        component_path: &Path,
    ) -> Result<(Component, LoadStats), PackageError> {
        let compile = || {
            Component::new(&flavour.engine, bytes).map_err(|error| PackageError::Compile {
                path: component_path.to_owned(),
                message: format!("{error:#}"),
            })
        };
        match &self.cache {
            Some(cache) => cache.load(&flavour.engine, digest, compile),
            None => {
                let started = Instant::now();
                let component = compile()?;
                let load_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                Ok((
                    component,
                    LoadStats {
                        outcome: CacheOutcome::Disabled,
                        load_us,
                    },
                ))
            }
        }
    }

    /// Instantiates the skill once, with no capability, and asks it to `describe` itself, under
    /// [`DESCRIBE_DEADLINE_MS`] (or the manifest's deadline when shorter): a describe returns
    /// constants, and a package whose describe spins must not hold a load for the manifest's
    /// deadline (up to 600 s).
    async fn describe(
        &self,
        manifest: &Manifest,
        pre: &SkillPre<crate::host::HostState>,
        component_path: &Path,
    ) -> Result<Descriptor, PackageError> {
        let deadline_ms = manifest.limits.deadline_ms.min(DESCRIBE_DEADLINE_MS);
        let limits = crate::package::Limits {
            deadline_ms,
            ..manifest.limits
        };
        let mut store = self
            .engine
            .new_store(&manifest.id, &limits, "describe", Vec::new(), Effects::default());
        let describe_error = |error: wasmtime::Error, memory_limit_hit: bool| PackageError::Describe {
            path: component_path.to_owned(),
            message: match error.downcast_ref::<wasmtime::Trap>() {
                _ if memory_limit_hit => format!(
                    "it needs more memory than `limits.memory_bytes` = {} bytes ({} MiB) allows: \
                     raise it in skill.toml (a componentize-py or jco component needs at least 16 MiB \
                     before it runs a line; wasmtime said: {error:#})",
                    limits.memory_bytes,
                    limits.memory_bytes / (1024 * 1024)
                ),
                Some(wasmtime::Trap::Interrupt) => format!(
                    "it did not return within {deadline_ms} ms, the deadline of `describe` \
                     (which only returns constants)"
                ),
                Some(wasmtime::Trap::OutOfFuel) => {
                    format!("it ran out of fuel ({} units, the manifest's budget)", limits.fuel)
                }
                _ => format!("{error:#}"),
            },
        };
        let call = async {
            let skill = pre.instantiate_async(&mut store).await?;
            skill.call_describe(&mut store).await
        };
        // The epoch deadline interrupts guest code; the wall-clock limit is the backstop for
        // time spent outside it (the host never blocks in describe: it has no capability).
        let result = tokio::time::timeout(crate::engine::wall_clock_limit(deadline_ms), call).await;
        match result {
            Ok(result) => result.map_err(|error| describe_error(error, store.data().limiter.limit_hit)),
            Err(_elapsed) => Err(PackageError::Describe {
                path: component_path.to_owned(),
                message: format!("it did not return within {deadline_ms} ms, the deadline of `describe`"),
            }),
        }
    }
}

/// Longest a package's `describe` may run at load, ms (shorter when the manifest's deadline
/// is). Review finding: a spinning `describe` held every command for its manifest deadline.
pub const DESCRIBE_DEADLINE_MS: u64 = 1_000;

/// The component's bytes, once its SHA-256 matches the manifest's and its header says it is a
/// component; with the digest.
fn read_verified_component(manifest: &Manifest, component_path: &Path) -> Result<(Vec<u8>, String), PackageError> {
    let Some(expected) = manifest.sha256.clone() else {
        return Err(PackageError::MissingDigest {
            path: component_path.with_file_name(MANIFEST_FILE),
        });
    };
    let bytes = crate::package::read_package_file(component_path, crate::package::MAX_COMPONENT_BYTES)?;
    let actual = sha256_digest(&bytes);
    if actual != expected {
        return Err(PackageError::DigestMismatch {
            path: component_path.to_owned(),
            expected,
            actual,
        });
    }
    check_component_header(&bytes, component_path)?;
    check_component_world(&bytes, component_path)?;
    Ok((bytes, actual))
}

fn wit_side_effect(class: WitSideEffect) -> SideEffect {
    match class {
        WitSideEffect::Pure => SideEffect::Pure,
        WitSideEffect::ReadOnly => SideEffect::ReadOnly,
        WitSideEffect::Effectful => SideEffect::Effectful,
    }
}

/// `describe` must agree with the manifest: id, version, side effect and capabilities.
fn check_descriptor(manifest: &Manifest, descriptor: &Descriptor, component_path: &Path) -> Result<(), PackageError> {
    let component_capabilities = descriptor
        .capabilities
        .iter()
        .map(|text| text.parse::<Capability>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| PackageError::Describe {
            path: component_path.to_owned(),
            message: error.to_string(),
        })?;
    let mismatch = |field, manifest: String, component: String| PackageError::DescriptorMismatch {
        path: component_path.to_owned(),
        field,
        manifest,
        component,
    };
    if descriptor.id != manifest.id {
        return Err(mismatch("id", manifest.id.clone(), descriptor.id.clone()));
    }
    if descriptor.version != manifest.version.to_string() {
        return Err(mismatch(
            "version",
            manifest.version.to_string(),
            descriptor.version.clone(),
        ));
    }
    if wit_side_effect(descriptor.side_effect) != manifest.side_effect {
        return Err(mismatch(
            "side-effect",
            manifest.side_effect.to_string(),
            wit_side_effect(descriptor.side_effect).to_string(),
        ));
    }
    let mut sorted_component = component_capabilities;
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
    Ok(())
}

/// Links the component against the host and checks it implements the world.
fn link(
    flavour: &crate::engine::Flavour,
    component: &Component,
    component_path: &Path,
) -> Result<SkillPre<crate::host::HostState>, PackageError> {
    let instance_pre = flavour
        .linker
        .instantiate_pre(component)
        .map_err(|error| PackageError::Link {
            path: component_path.to_owned(),
            message: format!("{error:#}"),
        })?;
    SkillPre::new(instance_pre).map_err(|error| PackageError::WrongWorld {
        path: component_path.to_owned(),
        message: format!("{error:#}"),
    })
}
