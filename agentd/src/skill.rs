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
    /// The input's JSON Schema, as `describe` returned it (valid draft 2020-12).
    pub input_schema: serde_json::Value,
    /// The output's JSON Schema, as `describe` returned it.
    pub output_schema: serde_json::Value,
    /// Compile time, µs.
    pub compile_us: u64,
}

/// Runs every check the runtime runs at load on the package in `dir` (manifest, digest,
/// component header, world and imports, compile, link, `describe` against the manifest, both
/// schemas compiled as JSON Schema draft 2020-12), on a runtime
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
    // The loader compiled both schemas (draft 2020-12) or refused the package.
    Ok(Checked {
        input_schema: loaded.input_schema().value().clone(),
        output_schema: loaded.output_schema().value().clone(),
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

/// A language `skill new` writes a skill in, with the toolchain its build script uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lang {
    /// Rust, built for wasm32-wasip2 with cargo and wit-bindgen 0.61.1.
    Rust,
    /// Python, built with componentize-py 0.25.1.
    Python,
    /// JavaScript, built with componentize-js 0.22.0 (the engine of `jco componentize`).
    Js,
}

impl Lang {
    /// The template's files: (path in the skill directory, text with `{{...}}` placeholders).
    fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Lang::Rust => &[
                ("Cargo.toml", include_str!("../templates/rust/Cargo.toml.in")),
                ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
                ("build.sh", include_str!("../templates/rust/build.sh")),
            ],
            Lang::Python => &[
                ("app.py", include_str!("../templates/python/app.py")),
                ("build.sh", include_str!("../templates/python/build.sh")),
            ],
            Lang::Js => &[
                ("app.js", include_str!("../templates/js/app.js")),
                ("package.json", include_str!("../templates/js/package.json")),
                ("build.sh", include_str!("../templates/js/build.sh")),
            ],
        }
    }

    /// Default limits for the template's word-frequency task, from the per-language figures in
    /// BENCHMARKS.md ("Skills in three languages"): at least twice the peak memory and the fuel
    /// measured on a 1 MiB input, and a deadline well above its time:
    /// `(memory bytes, fuel, deadline ms)`.
    pub fn default_limits(self) -> (u64, u64, u64) {
        match self {
            // Measured on 1 MiB: 5.1 MiB peak, 232 fuel per byte, 22 ms.
            Lang::Rust => (32 * 1024 * 1024, 1_000_000_000, 5_000),
            // 17.4 MiB peak (CPython alone starts at 12.4 MiB), 983 fuel per byte, 126 ms.
            Lang::Python => (64 * 1024 * 1024, 4_000_000_000, 10_000),
            // 17.1 MiB peak, 5,493 fuel per byte, 600 ms.
            Lang::Js => (64 * 1024 * 1024, 12_000_000_000, 10_000),
        }
    }

    fn toolchain(self) -> &'static str {
        match self {
            Lang::Rust => "cargo and wit-bindgen 0.61.1 for wasm32-wasip2",
            Lang::Python => "componentize-py 0.25.1 (pip install componentize-py==0.25.1)",
            Lang::Js => "componentize-js 0.22.0 (npm install, from package.json)",
        }
    }
}

/// The schemas every template declares: one source, substituted into each language's code.
const TEMPLATE_SCHEMAS: &str = include_str!("../templates/schemas.json");

/// What `new` wrote.
#[derive(Debug, serde::Serialize)]
pub struct Created {
    /// The skill's directory.
    pub dir: PathBuf,
    /// The language.
    pub lang: Lang,
    /// Files written, relative to `dir`.
    pub files: Vec<PathBuf>,
}

/// Writes a new skill `id` in `lang` into `parent/id`: its source (a word-frequency skill to
/// start from), the WIT contract in `wit/skill.wit`, a source `skill.toml` with the language's
/// default limits, and `build.sh`, which builds the component with pinned tool versions and
/// packages it with `agentd skill pack`.
///
/// # Errors
///
/// When `id` is not a valid skill id (kebab-case, as the manifest requires), when `parent/id`
/// exists and is not empty (nothing is overwritten), or when a file cannot be written.
pub fn new(parent: &Path, id: &str, lang: Lang) -> Result<Created> {
    let (memory_bytes, fuel, deadline_ms) = lang.default_limits();
    let manifest = format!(
        "# The {id} skill's source manifest. `./build.sh` builds the component and `agentd skill pack`\n\
         # writes the package (this file plus the component's name and SHA-256) to ./package.\n\
         # Limits: the defaults for {lang:?} skills (BENCHMARKS.md, \"Skills in three languages\");\n\
         # measure yours (`agentd run` prints fuel and peak memory) and tighten them.\n\
         abi = 1\n\
         id = \"{id}\"\n\
         version = \"0.1.0\"\n\
         side_effect = \"pure\"\n\
         capabilities = []\n\
         \n\
         [limits]\n\
         memory_bytes = {memory_bytes}\n\
         fuel = {fuel}\n\
         deadline_ms = {deadline_ms}\n"
    );
    // The id is checked exactly as the loader will check it, before anything is written.
    Manifest::parse(&manifest, Path::new(MANIFEST_FILE), &LimitCeilings::default())
        .with_context(|| format!("`{id}` cannot be a skill id"))?;
    let dir = parent.join(id);
    if dir.exists() && std::fs::read_dir(&dir).map_or(true, |mut entries| entries.next().is_some()) {
        bail!("{} already exists and is not empty; nothing was written", dir.display());
    }
    let schemas: serde_json::Value =
        serde_json::from_str(TEMPLATE_SCHEMAS).context("the built-in template schemas are not JSON")?;
    let substitute = |text: &str| {
        text.replace("{{id}}", id)
            .replace("{{crate}}", &id.replace('-', "_"))
            .replace("{{input_schema}}", &schemas["input"].to_string())
            .replace("{{output_schema}}", &schemas["output"].to_string())
    };
    let readme = format!(
        "# {id}\n\n\
         An agentd skill in {lang:?}, built with {toolchain}.\n\n\
         ```sh\n\
         ./build.sh                        # builds the component and packages it into ./package\n\
         agentd skill check package        # every load check; prints describe and the schemas\n\
         # the governance policy: agentd's built-in default, or your own with --policy FILE\n\
         TOKEN=$(agentd token issue --sub me --role agent --tenant acme)\n\
         echo '{{\"schema_version\": \"agentd.invoke.v1\", \"input\": {{\"text\": \"to be or not to be\"}}}}' |\n  \
         agentd --plugins . run {id} --input - --token \"$TOKEN\"\n\
         ```\n\n\
         The contract is `wit/skill.wit` (`agentd wit` prints it). The guide for {lang:?} skills,\n\
         with logging, errors, capabilities and limits, is docs/skills-{guide}.md in the agentd\n\
         repository.\n",
        toolchain = lang.toolchain(),
        guide = match lang {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "javascript",
        }
    );
    let mut files: Vec<(String, String)> = lang
        .files()
        .iter()
        .map(|(path, text)| ((*path).to_owned(), substitute(text)))
        .collect();
    files.push(("wit/skill.wit".to_owned(), plugin_abi::WIT.to_owned()));
    files.push((MANIFEST_FILE.to_owned(), manifest));
    files.push(("README.md".to_owned(), readme));
    let mut written = Vec::new();
    for (path, text) in files {
        let target = dir.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, text).with_context(|| format!("cannot write {}", target.display()))?;
        #[cfg(unix)]
        if path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot make {} executable", target.display()))?;
        }
        written.push(PathBuf::from(path));
    }
    Ok(Created {
        dir,
        lang,
        files: written,
    })
}
