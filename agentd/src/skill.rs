//! `agentd skill ...`: tools for skill authors.
//!
//! `check` runs every load check on a package and shows what `describe` says. `pack` turns a
//! built component and its source `skill.toml` into a package directory: the
//! component pre-initialised when it offers `wizer-initialize` (agent_runtime::preinit), the
//! manifest with the component's file name and SHA-256 filled in. `cargo xtask build-plugins`
//! packages this repository's plugins with it.

use std::path::{Path, PathBuf};

use agent_runtime::package::{self, LimitCeilings, MANIFEST_FILE, Manifest};
use anyhow::{Context, Result, bail};

/// The component's file name inside a package written by `pack`.
const PACKAGED_COMPONENT: &str = "skill.wasm";

/// What `pack` wrote.
#[derive(Debug, serde::Serialize)]
pub struct Packed {
    /// The package directory.
    pub package: PathBuf,
    /// `sha256:<hex>` of the packaged component.
    pub sha256: String,
    /// Size of the component given, bytes.
    pub input_bytes: u64,
    /// Size of the packaged component, bytes.
    pub packaged_bytes: u64,
    /// Whether `wizer-initialize` ran and its result was snapshotted.
    pub preinitialized: bool,
    /// Fuel the initialisation burnt (0 when it did not run).
    pub init_fuel: u64,
    /// Wall time of the pre-initialisation, ms (0 when it did not run).
    pub init_ms: u64,
}

/// Packages the skill in `dir` (its `skill.toml`) with the component at `component` (default:
/// the manifest's `component`, relative to `dir`) into `out` (default `dir/package`).
///
/// The source manifest is validated as the loader would (id, limits, ceilings); a `sha256` in
/// it is replaced by the packaged component's. The written manifest keeps every other field of
/// the source as written.
pub async fn pack(dir: &Path, component: Option<&Path>, out: Option<&Path>, preinit: bool) -> Result<Packed> {
    let source_path = dir.join(MANIFEST_FILE);
    let source = std::fs::read_to_string(&source_path)
        .with_context(|| format!("cannot read the skill's manifest {}", source_path.display()))?;
    let manifest = Manifest::parse(&source, &source_path, &LimitCeilings::default())?;
    let mut table: toml::Table =
        toml::from_str(&source).with_context(|| format!("{} is not TOML", source_path.display()))?;

    let component = component.map_or_else(|| dir.join(&manifest.component), Path::to_path_buf);
    let bytes =
        std::fs::read(&component).with_context(|| format!("cannot read the component {}", component.display()))?;
    package::check_component_header(&bytes, &component)?;
    package::check_component_world(&bytes, &component)?;

    let preinitialized = if preinit {
        agent_runtime::preinit::preinitialize(&bytes, &manifest.limits)
            .await
            .with_context(|| {
                format!(
                    "pre-initialising {} (pass --no-preinit to package it as it is)",
                    component.display()
                )
            })?
    } else {
        None
    };
    let (packaged, init_fuel, init_ms) = match &preinitialized {
        Some(done) => (&done.component, done.fuel, done.elapsed.as_millis() as u64),
        None => (&bytes, 0, 0),
    };
    if preinitialized.is_some() {
        // The snapshot must still be a component of the world the host loads.
        package::check_component_world(packaged, &component)
            .context("the pre-initialised component no longer implements the `skill` world")?;
    }

    let sha256 = package::sha256_digest(packaged);
    table.insert("component".into(), PACKAGED_COMPONENT.into());
    table.insert("sha256".into(), sha256.clone().into());
    let written = toml::to_string(&table).context("cannot write the package manifest")?;
    // What the loader will read must be what was validated above.
    Manifest::parse(&written, &source_path, &LimitCeilings::default())?;

    let package = out.map_or_else(|| dir.join("package"), Path::to_path_buf);
    if package.join(MANIFEST_FILE) == source_path {
        bail!(
            "the package directory {} is the skill's own directory: its skill.toml would be overwritten; pass --out",
            package.display()
        );
    }
    std::fs::create_dir_all(&package).with_context(|| format!("cannot create {}", package.display()))?;
    write_replacing(&package.join(PACKAGED_COMPONENT), packaged)?;
    let header = format!(
        "# Packaged by `agentd skill pack` from {}/{MANIFEST_FILE}{}.\n",
        dir.file_name()
            .map_or_else(|| dir.display().to_string(), |name| name.to_string_lossy().into_owned()),
        if preinitialized.is_some() {
            " (pre-initialised: `wizer-initialize` ran at packaging time)"
        } else {
            ""
        }
    );
    write_replacing(&package.join(MANIFEST_FILE), format!("{header}{written}").as_bytes())?;
    Ok(Packed {
        package,
        sha256,
        input_bytes: bytes.len() as u64,
        packaged_bytes: packaged.len() as u64,
        preinitialized: preinitialized.is_some(),
        init_fuel,
        init_ms,
    })
}

/// What `check` found in a package that passed every load check.
#[derive(Debug, serde::Serialize)]
pub struct Checked {
    /// The skill as governance sees it (id, version, side effect, capabilities, digest).
    pub summary: plugin_abi::SkillSummary,
    /// The manifest's limits.
    pub limits: agent_runtime::Limits,
    /// The input's JSON Schema, as `describe` returned it.
    pub input_schema: serde_json::Value,
    /// The output's JSON Schema, as `describe` returned it.
    pub output_schema: serde_json::Value,
    /// Compile time, µs.
    pub compile_us: u64,
}

/// Runs every check the runtime runs at load on the package in `dir` (manifest, digest,
/// component header and world, compile, link, `describe` against the manifest), on a runtime
/// of its own without a code cache.
///
/// # Errors
///
/// The first check that failed, as the loader reports it.
pub async fn check(dir: &Path) -> Result<Checked> {
    let runtime = agent_runtime::Runtime::new(agent_runtime::RuntimeConfig {
        max_instances: 2,
        ..agent_runtime::RuntimeConfig::default()
    })?;
    let summary = runtime.load_package(dir).await?;
    let loaded = runtime
        .lookup(&summary.id)
        .context("the package loaded but is not registered")?;
    let schema = |text: &str, which: &str| {
        serde_json::from_str(text).with_context(|| format!("`describe` returned a {which} schema that is not JSON"))
    };
    Ok(Checked {
        input_schema: schema(&loaded.input_schema, "input")?,
        output_schema: schema(&loaded.output_schema, "output")?,
        limits: loaded.manifest.limits,
        compile_us: loaded.load.load_us,
        summary,
    })
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`, so that a
/// reader never sees half a component or a manifest that names a digest not yet written.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes).with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
