//! Skill packages: a directory holding `skill.toml` (the manifest) and the component it names,
//! verified by SHA-256 before a single byte is compiled.

use std::path::{Path, PathBuf};

use plugin_abi::{ABI_VERSION, Capability, CpuMetering, SideEffect};
use sha2::{Digest, Sha256};

/// The manifest file name inside a package directory.
pub const MANIFEST_FILE: &str = "skill.toml";

/// Hard ceilings a manifest may not exceed, whatever it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitCeilings {
    /// Largest linear memory, bytes.
    pub memory_bytes: u64,
    /// Largest fuel budget.
    pub fuel: u64,
    /// Longest deadline, ms.
    pub deadline_ms: u64,
}

impl Default for LimitCeilings {
    fn default() -> Self {
        LimitCeilings {
            memory_bytes: 512 * 1024 * 1024,
            fuel: 10_000_000_000_000,
            deadline_ms: 600_000,
        }
    }
}

/// Per-invocation limits from the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory ceiling per memory, bytes.
    pub memory_bytes: u64,
    /// Fuel budget (about one unit per wasm instruction).
    pub fuel: u64,
    /// Wall-clock deadline, ms, enforced as an epoch deadline.
    pub deadline_ms: u64,
    /// Invocations of this skill version running at once; more wait in the queue.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Invocations that may wait for a slot; beyond it, calls are refused as overloaded
    /// (backpressure, retryable).
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
    /// Bounded warm-instance mode: one instance serves at most this many calls of the same
    /// tenant before it is dropped. `0` (the default) gives every call a fresh instance. Allowed
    /// for `pure` skills only, and at most [`MAX_REUSE`]. An instance is never reused after a
    /// trap, a limit hit, a timeout or an invalid output.
    #[serde(default)]
    pub max_reuse: u32,
    /// How CPU use is bounded: `"fuel"` (the default: `fuel` is enforced and every budget is
    /// deterministic) or `"epoch"` (the `deadline_ms` epoch deadline only, without fuel's
    /// per-instruction cost; governed by the policy's `cpu_metering` attribute, ADR 0017).
    #[serde(default, skip_serializing_if = "CpuMetering::is_fuel")]
    pub cpu: CpuMetering,
}

/// The largest `limits.max_reuse` a manifest may ask for.
pub const MAX_REUSE: u32 = 10_000;

fn default_max_concurrency() -> u32 {
    16
}

fn default_max_queue() -> u32 {
    64
}

/// A parsed `skill.toml`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// ABI version; must equal [`plugin_abi::ABI_VERSION`].
    pub abi: u32,
    /// Skill id.
    pub id: String,
    /// Semantic version.
    pub version: semver::Version,
    /// Side-effect class.
    pub side_effect: SideEffect,
    /// Requested capabilities.
    pub capabilities: Vec<Capability>,
    /// Component file name inside the package; `skill.wasm` when absent.
    #[serde(default = "default_component")]
    pub component: String,
    /// `sha256:<hex>` of the component, written by the packager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Limits per invocation.
    pub limits: Limits,
    /// How failed invocations are retried (`[retry]`; defaults when absent).
    #[serde(default)]
    pub retry: crate::retry::RetryPolicy,
    /// Skill ids to fall back to, in order, when this skill's retries are exhausted or its
    /// circuit is open (after its own other versions). Each fallback is governed on its own and
    /// skipped if it is more effectful than this skill.
    #[serde(default)]
    pub fallbacks: Vec<String>,
}

fn default_component() -> String {
    "skill.wasm".to_owned()
}

/// Why a package was refused. None of these is retryable except a read error.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid TOML, has the wrong shape, or breaks rules: every problem
    /// found, listed at once.
    #[error("invalid manifest {path}: {}", problems.join("; "))]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// A package file is not a regular file (a FIFO, a device, a directory), so it is not read.
    #[error("{path} is not a regular file; a package holds regular files only")]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// A package file is larger than its ceiling, so it is not read.
    #[error("{path} is {size} bytes; the ceiling for this file is {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size, bytes (at least this much when it grew while being read).
        size: u64,
        /// The ceiling, bytes.
        max: u64,
    },
    /// The manifest's `abi` is not this build's.
    #[error("{path} declares abi = {found}; this agentd runs abi = {ABI_VERSION}")]
    UnsupportedAbi {
        /// The manifest file.
        path: PathBuf,
        /// The declared ABI.
        found: u32,
    },
    /// The manifest has no `sha256`: it is a source manifest, not a package.
    #[error(
        "{path} has no `sha256`: it is a source manifest; package it with `agentd skill pack` (in this repository, `cargo xtask build-plugins`)"
    )]
    MissingDigest {
        /// The manifest file.
        path: PathBuf,
    },
    /// The component's digest differs from the manifest's.
    #[error("digest mismatch for {path}: the manifest says {expected}, the file is {actual}")]
    DigestMismatch {
        /// The component file.
        path: PathBuf,
        /// Digest in the manifest.
        expected: String,
        /// Digest of the bytes.
        actual: String,
    },
    /// The file is not WebAssembly at all.
    #[error("{path} is not a WebAssembly file (no `\\0asm` header)")]
    NotWasm {
        /// The component file.
        path: PathBuf,
    },
    /// The file is a core module, not a component.
    #[error(
        "{path} is a core WebAssembly module, not a component: build a component of the `skill` world \
         (Rust: `--target wasm32-wasip2`; Python: componentize-py; JavaScript: componentize-js or \
         `jco componentize`; a WASI preview 1 module from elsewhere: `wasm-tools component new` \
         with the wasi_snapshot_preview1 adapter)"
    )]
    CoreModule {
        /// The component file.
        path: PathBuf,
    },
    /// The component does not compile (corrupt or unsupported).
    #[error("{path} does not compile: {message}")]
    Compile {
        /// The component file.
        path: PathBuf,
        /// wasmtime's diagnosis.
        message: String,
    },
    /// The component imports something the host does not provide.
    #[error("{path} cannot be linked: {message}")]
    Link {
        /// The component file.
        path: PathBuf,
        /// wasmtime's diagnosis.
        message: String,
    },
    /// The component imports an interface the host does not provide: refused before the
    /// compile, with what to change in the build.
    #[error("{path} imports `{import}`, which this host does not provide: {advice}")]
    UnsupportedImport {
        /// The component file.
        path: PathBuf,
        /// The import, e.g. `wasi:http/outgoing-handler@0.2.3`.
        import: String,
        /// What to change, per toolchain.
        advice: String,
    },
    /// The component does not export the `agentd:skill/skill` world.
    #[error("{path} does not implement the `agentd:skill` world: {message}")]
    WrongWorld {
        /// The component file.
        path: PathBuf,
        /// wasmtime's diagnosis.
        message: String,
    },
    /// The component was built against another version of the `agentd:skill` WIT package.
    #[error(
        "{path} was built against `{name}`; this agentd speaks agentd:skill@{expected}: \
         rebuild it with a plugin-abi of that version"
    )]
    WitVersion {
        /// The component file.
        path: PathBuf,
        /// The import or export naming the other version, e.g. `agentd:skill/types@1.0.0`.
        name: String,
        /// The version this build speaks ([`plugin_abi::WIT_PACKAGE_VERSION`]).
        expected: &'static str,
    },
    /// `describe` failed.
    #[error("{path}: `describe` failed: {message}")]
    Describe {
        /// The component file.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// A schema `describe` returned is not JSON or not a valid JSON Schema (draft 2020-12).
    #[error("{path}: `describe` returned an unusable schema: {error}")]
    Schema {
        /// The component file.
        path: PathBuf,
        /// What is wrong, naming the schema.
        error: crate::schema::SchemaError,
    },
    /// `describe` disagrees with the manifest.
    #[error("{path}: the component describes {field} `{component}` but the manifest says `{manifest}`")]
    DescriptorMismatch {
        /// The component file.
        path: PathBuf,
        /// The field that differs.
        field: &'static str,
        /// The manifest's value.
        manifest: String,
        /// The component's value.
        component: String,
    },
    /// The same id and version is already loaded, from another package (or with other bytes):
    /// a version is immutable.
    #[error(
        "{id} {version} is provided by both {} and {}: a version is immutable; give one of them another \
         version, or remove it",
        loaded_from.display(),
        path.display()
    )]
    Duplicate {
        /// Skill id.
        id: String,
        /// Version.
        version: semver::Version,
        /// The package directory it is loaded from.
        loaded_from: PathBuf,
        /// The package directory refused.
        path: PathBuf,
    },
}

impl PackageError {
    /// Whether retrying can help: only a read error might clear.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PackageError::Read { .. })
    }
}

/// Largest `skill.toml` read, bytes.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Largest component read, bytes: 128 MiB, several times the largest real component seen
/// (an 18.5 MB componentize-py build).
pub const MAX_COMPONENT_BYTES: u64 = 128 * 1024 * 1024;

/// Reads the package file at `path`: opened without blocking (a FIFO never hangs a command),
/// only when the opened handle is a regular file (a link to `/dev/zero` is not), and at most
/// `max` bytes (reading at most `max + 1`, whatever the size claims).
///
/// # Errors
///
/// [`PackageError::Read`], [`PackageError::NotAFile`] or [`PackageError::TooLarge`].
pub fn read_package_file(path: &Path, max: u64) -> Result<Vec<u8>, PackageError> {
    use std::io::Read as _;
    let read_error = |source| PackageError::Read {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, rustix::fs::OFlags::NONBLOCK.bits() as i32);
    let file = options.open(path).map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(PackageError::NotAFile { path: path.to_owned() });
    }
    let too_large = |size| PackageError::TooLarge {
        path: path.to_owned(),
        size,
        max,
    };
    if metadata.len() > max {
        return Err(too_large(metadata.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(max + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// A hand-written `sha256` in the form agentd stores, `sha256:<64 lower-case hex>`, from the
/// forms authors write: that form with upper-case hex, the bare hex, or a line of `sha256sum`
/// (`<hex>  <file>` or `<hex> *<file>`) naming the manifest's `component`. `None` when `text`
/// is none of these (the manifest check then names the format), or when the `sha256sum` line
/// names another file.
fn normalize_digest(text: &str, component: &str) -> Option<String> {
    let text = text.trim();
    let is_hex = |hex: &str| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    let hex = if let Some(hex) = text.strip_prefix("sha256:") {
        hex
    } else {
        let mut words = text.split_whitespace();
        let hex = words.next()?;
        match (words.next(), words.next()) {
            (None, _) => hex,
            (Some(file), None) => {
                let file = file.strip_prefix('*').unwrap_or(file);
                let name = file.rsplit(['/', '\\']).next().unwrap_or(file);
                (name == component).then_some(hex)?
            }
            _ => return None,
        }
    };
    is_hex(hex).then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// `sha256:<hex>` of `bytes`: the digest format of components, inputs and outputs.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Manifest {
    /// Parses and validates manifest text; `path` names it in errors.
    ///
    /// # Errors
    ///
    /// [`PackageError::Manifest`] for bad TOML, unknown fields, an id that is not kebab-case,
    /// limits of zero or above `ceilings`; [`PackageError::UnsupportedAbi`].
    pub fn parse(text: &str, path: &Path, ceilings: &LimitCeilings) -> Result<Self, PackageError> {
        let mut manifest: Manifest = toml::from_str(text).map_err(|error| PackageError::Manifest {
            path: path.to_owned(),
            problems: vec![error.to_string().trim_end().to_owned()],
        })?;
        if let Some(digest) = manifest
            .sha256
            .as_deref()
            .and_then(|d| normalize_digest(d, &manifest.component))
        {
            manifest.sha256 = Some(digest);
        }
        if manifest.abi != ABI_VERSION {
            return Err(PackageError::UnsupportedAbi {
                path: path.to_owned(),
                found: manifest.abi,
            });
        }
        let problems = manifest.problems(ceilings);
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(PackageError::Manifest {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Every rule the parsed manifest breaks.
    fn problems(&self, ceilings: &LimitCeilings) -> Vec<String> {
        let mut problems = Vec::new();
        let kebab = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.id.starts_with('-');
        if !kebab {
            problems.push(format!(
                "id `{}` must be 1 to 64 characters of a-z, 0-9 and `-`",
                self.id
            ));
        }
        if self.component.contains(['/', '\\']) || self.component.starts_with('.') {
            problems.push(format!(
                "component `{}` must be a plain file name in the package",
                self.component
            ));
        }
        for (name, value, ceiling) in [
            ("limits.memory_bytes", self.limits.memory_bytes, ceilings.memory_bytes),
            ("limits.fuel", self.limits.fuel, ceilings.fuel),
            ("limits.deadline_ms", self.limits.deadline_ms, ceilings.deadline_ms),
        ] {
            if value == 0 || value > ceiling {
                problems.push(format!("{name} = {value} must be between 1 and {ceiling}"));
            }
        }
        if self.limits.max_reuse > 0 && self.side_effect != SideEffect::Pure {
            problems.push(format!(
                "limits.max_reuse = {} is only allowed for pure skills; `{}` is {}: an instance that \
                 touched the world must not carry state into another call",
                self.limits.max_reuse, self.id, self.side_effect
            ));
        }
        if let Some(digest) = &self.sha256 {
            let hex = digest.strip_prefix("sha256:");
            let well_formed = hex.is_some_and(|hex| {
                hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
            if !well_formed {
                let bare = digest.split_whitespace().next().unwrap_or_default();
                let hint = if bare.len() == 64 && bare.bytes().all(|b| b.is_ascii_hexdigit()) {
                    format!(
                        " (this looks like `sha256sum` output: write \"sha256:{}\")",
                        bare.to_ascii_lowercase()
                    )
                } else if hex.is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())) {
                    format!(" (write the hex in lower case: \"{}\")", digest.to_ascii_lowercase())
                } else {
                    String::new()
                };
                problems.push(format!(
                    "sha256 = \"{}\" must be `sha256:` followed by 64 lower-case hex digits{hint}",
                    digest.escape_debug()
                ));
            }
        }
        if self.limits.max_reuse > MAX_REUSE {
            problems.push(format!(
                "limits.max_reuse = {} must be at most {MAX_REUSE}",
                self.limits.max_reuse
            ));
        }
        problems
    }
}

/// Checks the WebAssembly header: a component has layer 1 (`0d 00 01 00`), a core module
/// version 1 (`01 00 00 00`).
///
/// # Errors
///
/// [`PackageError::NotWasm`] or [`PackageError::CoreModule`].
pub fn check_component_header(bytes: &[u8], path: &Path) -> Result<(), PackageError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PackageError::NotWasm { path: path.to_owned() });
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(PackageError::CoreModule { path: path.to_owned() });
    }
    Ok(())
}

/// The functions the `skill` world exports at the component's root.
const WORLD_EXPORTS: [&str; 2] = ["describe", "invoke"];

/// The WASI packages the host links, all at version 0.2 (wasmtime-wasi's p2 linker, with
/// nothing granted: no preopened directory, no network, no environment). Anything else a
/// component imports, beside `agentd:skill`, refuses it before the compile.
pub const HOST_WASI_PACKAGES: [&str; 6] = [
    "wasi:cli",
    "wasi:clocks",
    "wasi:filesystem",
    "wasi:io",
    "wasi:random",
    "wasi:sockets",
];

/// Whether the host provides `import` (a `namespace:package/interface@version` name), and if
/// not, what to change in the build, for each toolchain a skill is built with.
fn unsupported_import_advice(import: &str) -> Option<String> {
    let (package, version) = match import.split_once('/') {
        Some((package, rest)) => (package, rest.split_once('@').map(|(_, version)| version)),
        None => return None, // a plain name: the link that follows names it
    };
    if package == "agentd:skill" {
        return None; // versions are checked by `check_name`
    }
    let provided = HOST_WASI_PACKAGES.contains(&package);
    if provided && version.is_none_or(|version| version.starts_with("0.2.")) {
        return None;
    }
    let offered = format!(
        "the host provides {} at 0.2, and agentd:skill/host for logging, files, key-value and HTTP \
         (docs/wasi.md)",
        HOST_WASI_PACKAGES.join(", ")
    );
    Some(if package == "wasi:http" {
        format!(
            "outgoing HTTP goes through agentd:skill/host's `http-fetch` under an `http.get:` \
             capability. With jco, build with `jco componentize --disable http --disable fetch-event` \
             (`-d http -d fetch-event`); with componentize-py, use a world that does not include \
             `wasi:http/proxy`; in Rust, drop the crate that pulls in wasi:http. {offered}"
        )
    } else if provided {
        format!(
            "this host speaks WASI 0.2 (wasmtime 48); rebuild against the WASI 0.2 interfaces \
             (wasm32-wasip2 for Rust; componentize-py and jco target 0.2 by default). {offered}"
        )
    } else {
        format!(
            "remove the dependency that imports it, or stub the interface with \
             `wasm-tools compose` before packaging. {offered}"
        )
    })
}

/// Checks the component's own import and export names before anything is compiled (a compile
/// of a large component takes seconds; this only walks the section headers: 0.45 ms for the
/// 1.2 MB pii-redact component, whose compile takes 1.4 s, measured 2026-12-06):
/// every `agentd:skill/...` name must carry [`plugin_abi::WIT_PACKAGE_VERSION`], at least one
/// must be there (the world's `types` interface is always imported), and the root must export
/// the world's functions `describe` and `invoke`. Their types are checked by the link that
/// follows the compile; nested components and modules are not looked into.
///
/// # Errors
///
/// [`PackageError::WitVersion`] for another version of the package, [`PackageError::WrongWorld`]
/// for a missing `agentd:skill` import or world function, [`PackageError::Compile`] when the
/// sections cannot be read at all.
pub fn check_component_world(bytes: &[u8], path: &Path) -> Result<(), PackageError> {
    use wasmparser::{ComponentExternalKind, Parser, Payload};

    let malformed = |error: wasmparser::BinaryReaderError| PackageError::Compile {
        path: path.to_owned(),
        message: format!("malformed component: {error}"),
    };
    let wrong_world = |message: String| PackageError::WrongWorld {
        path: path.to_owned(),
        message,
    };
    let check_name = |name: &str| -> Result<bool, PackageError> {
        let Some(rest) = name.strip_prefix("agentd:skill/") else {
            return Ok(false);
        };
        match rest.split_once('@') {
            Some((_, version)) if version == plugin_abi::WIT_PACKAGE_VERSION => Ok(true),
            _ => Err(PackageError::WitVersion {
                path: path.to_owned(),
                name: name.to_owned(),
                expected: plugin_abi::WIT_PACKAGE_VERSION,
            }),
        }
    };
    let mut depth = 0usize;
    let mut speaks_skill = false;
    let mut functions: Vec<String> = Vec::new();
    let mut exports: Vec<String> = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(malformed)? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let name = import.map_err(malformed)?.name.name;
                    speaks_skill |= check_name(name)?;
                    if let Some(advice) = unsupported_import_advice(name) {
                        return Err(PackageError::UnsupportedImport {
                            path: path.to_owned(),
                            import: name.to_owned(),
                            advice,
                        });
                    }
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(malformed)?;
                    speaks_skill |= check_name(export.name.name)?;
                    if export.kind == ComponentExternalKind::Func {
                        functions.push(export.name.name.to_owned());
                    }
                    exports.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    if !speaks_skill {
        return Err(wrong_world(format!(
            "it imports no `agentd:skill/...@{}` interface",
            plugin_abi::WIT_PACKAGE_VERSION
        )));
    }
    let missing: Vec<&str> = WORLD_EXPORTS
        .into_iter()
        .filter(|name| !functions.iter().any(|f| f == name))
        .collect();
    if !missing.is_empty() {
        return Err(wrong_world(format!(
            "it does not export the function(s) `{}` (its exports: {})",
            missing.join("`, `"),
            if exports.is_empty() {
                "none".to_owned()
            } else {
                exports.join(", ")
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
abi = 1
id = "pii-redact"
version = "0.1.0"
side_effect = "pure"
capabilities = ["fs.write:reports/"]
sha256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
[limits]
memory_bytes = 1048576
fuel = 1000
deadline_ms = 100
"#;

    #[test]
    fn imports_the_host_does_not_provide_are_named_with_advice() {
        for provided in [
            "wasi:cli/stdout@0.2.0",
            "wasi:io/streams@0.2.6",
            "wasi:sockets/tcp@0.2.3",
            "wasi:random/insecure-seed@0.2.0",
            "agentd:skill/host@1.0.0",
            "plain-name",
        ] {
            assert_eq!(unsupported_import_advice(provided), None, "{provided}");
        }
        let http = unsupported_import_advice("wasi:http/outgoing-handler@0.2.3").unwrap();
        assert!(
            http.contains("--disable http") && http.contains("componentize-py"),
            "{http}"
        );
        let newer = unsupported_import_advice("wasi:cli/stdout@0.3.0-rc-2025-09-16").unwrap();
        assert!(newer.contains("WASI 0.2"), "{newer}");
        let other = unsupported_import_advice("wasi:keyvalue/store@0.2.0-draft").unwrap();
        assert!(other.contains("wasm-tools compose"), "{other}");
    }

    #[track_caller]
    fn check_error(text: &str, expected: &str) {
        let error = Manifest::parse(text, Path::new("skill.toml"), &LimitCeilings::default()).unwrap_err();
        assert!(error.to_string().contains(expected), "`{error}` lacks `{expected}`");
    }

    #[test]
    fn manifests_parse_and_validate() {
        let manifest = Manifest::parse(GOOD, Path::new("skill.toml"), &LimitCeilings::default()).unwrap();
        assert_eq!(manifest.component, "skill.wasm");
        assert_eq!(manifest.capabilities[0].to_string(), "fs.write:reports/");

        check_error(
            &GOOD.replace("abi = 1", "abi = 7"),
            "declares abi = 7; this agentd runs abi = 1",
        );
        check_error(&GOOD.replace("id = \"pii-redact\"", "id = \"PII\""), "id `PII` must be");
        check_error(
            &GOOD.replace("fuel = 1000", "fuel = 0"),
            "limits.fuel = 0 must be between 1 and",
        );
        check_error(
            &GOOD.replace("version = \"0.1.0\"", "version = \"one\""),
            "invalid manifest skill.toml",
        );
        check_error(&format!("{GOOD}\nextra = 1"), "unknown field `extra`");
        check_error(
            &GOOD.replace("fs.write:reports/", "net.any:x"),
            "unknown kind `net.any`",
        );
    }

    /// Issue 16: `sha256sum`'s output was refused as a mismatch. It is accepted, as are
    /// upper-case and bare hex, and stored as `sha256:<lower-case hex>`; a `sha256sum` line
    /// naming another file still names the format.
    #[test]
    fn digests_in_sha256sum_bare_or_upper_case_form_are_accepted() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let good = format!("sha256 = \"sha256:{hex}\"");
        for written in [
            format!("{hex}  skill.wasm"),
            format!("{hex} *skill.wasm"),
            format!("{hex}  target/wasm32-wasip2/release/skill.wasm\n"),
            hex.to_owned(),
            hex.to_ascii_uppercase(),
            format!("sha256:{}", hex.to_ascii_uppercase()),
        ] {
            let text = GOOD.replace(&good, &format!("sha256 = {:?}", written));
            let manifest = Manifest::parse(&text, Path::new("skill.toml"), &LimitCeilings::default())
                .unwrap_or_else(|error| panic!("{written:?}: {error}"));
            assert_eq!(
                manifest.sha256.as_deref(),
                Some(format!("sha256:{hex}").as_str()),
                "{written:?}"
            );
        }
        check_error(
            &GOOD.replace(&good, &format!("sha256 = \"{hex}  other.wasm\"")),
            &format!("looks like `sha256sum` output: write \"sha256:{hex}\""),
        );
        check_error(
            &GOOD.replace(&good, "sha256 = \"sha256:00\""),
            "must be `sha256:` followed by 64 lower-case hex digits",
        );
    }

    #[cfg(unix)]
    #[test]
    fn package_files_must_be_regular_and_below_their_ceiling() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("skill.wasm");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(
            read_package_file(&zero, MAX_COMPONENT_BYTES),
            Err(PackageError::NotAFile { .. })
        ));
        let fifo = dir.path().join("skill.toml");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        // Would block forever without O_NONBLOCK.
        assert!(matches!(
            read_package_file(&fifo, MAX_MANIFEST_BYTES),
            Err(PackageError::NotAFile { .. })
        ));
        let big = dir.path().join("big.wasm");
        std::fs::write(&big, vec![0u8; 4097]).unwrap();
        let error = read_package_file(&big, 4096).unwrap_err();
        assert!(
            matches!(
                error,
                PackageError::TooLarge {
                    size: 4097,
                    max: 4096,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(read_package_file(&big, 4097).unwrap().len(), 4097);
    }

    #[test]
    fn every_manifest_problem_is_reported_at_once() {
        let text = GOOD
            .replace("id = \"pii-redact\"", "id = \"PII\"")
            .replace("fuel = 1000", "fuel = 0")
            .replace("deadline_ms = 100", "deadline_ms = 100\nmax_reuse = 20000");
        let PackageError::Manifest { problems, .. } =
            Manifest::parse(&text, Path::new("skill.toml"), &LimitCeilings::default()).unwrap_err()
        else {
            panic!("expected manifest problems");
        };
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].starts_with("id `PII` must be"), "{problems:#?}");
        assert!(
            problems[1].starts_with("limits.fuel = 0 must be between 1 and"),
            "{problems:#?}"
        );
        assert!(
            problems[2].starts_with("limits.max_reuse = 20000 must be at most"),
            "{problems:#?}"
        );
    }

    #[test]
    fn header_tells_modules_from_components() {
        let path = Path::new("x.wasm");
        assert!(matches!(
            check_component_header(b"garbage!", path),
            Err(PackageError::NotWasm { .. })
        ));
        assert!(matches!(
            check_component_header(b"\0asm\x01\0\0\0", path),
            Err(PackageError::CoreModule { .. })
        ));
        assert!(check_component_header(b"\0asm\x0d\0\x01\0", path).is_ok());
    }
}
