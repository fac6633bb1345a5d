//! guardrails: mechanically enforces one-way crate rules in a Cargo workspace.
//!
//! Rules live in `guardrails.toml` at the workspace root ([`Config`]). A check has two layers:
//!
//! 1. **Manifest graph** (`cargo metadata --all-features`, every platform): every path from a
//!    rule's source crate to a forbidden crate, through workspace and registry crates, for the
//!    rule's edge kinds, including target-specific, optional and renamed dependencies. A finding
//!    points at the `Cargo.toml` line of the first edge and carries the whole chain.
//! 2. **Source** (`syn`, in parallel): `use` trees (renames, globs, groups), qualified paths,
//!    `extern crate`, paths inside macro bodies (scanned as tokens, so bodies that are not Rust
//!    still count), strings in attributes (`#[serde(with = "..")]`), `#[path]` modules and
//!    `include!`-like macros that reach into a forbidden crate's directory; references to
//!    functions under a caller allowlist (through `use .. as` aliases, module aliases, globs,
//!    function pointers, UFCS and macro bodies); and forbidden text patterns.
//!
//! Exemptions must cite an Accepted ADR in `adr/`; a missing or unaccepted ADR, an expired
//! exemption and an exemption that matches nothing are findings themselves. A rule that names a
//! crate, function, module or file that does not exist is an [`Error`]: a rename can never turn
//! a rule off silently.
//!
//! Findings are values ([`Report`]); an `Err` means the check could not run. Output formats
//! (human, JSON, SARIF 2.1.0, GitHub annotations) are in [`output`]; `selftest` (mutation
//! testing of the rules against a copy of the workspace) is in [`selftest`].
//!
//! **Architecture invariant:** guardrails depends on no workspace crate: it reads the workspace
//! as data.

use std::path::{Path, PathBuf};
use std::time::Instant;

pub mod check;
pub mod config;
pub mod graph;
pub mod modules;
pub mod output;
pub mod report;
pub mod selftest;
pub mod source;
pub mod tokens;
pub mod workspace;

pub use check::Options;
pub use config::Config;
pub use report::{Code, Finding, Report};
pub use workspace::Workspace;

/// Why a check could not run. Each is a configuration or environment problem (exit code 2),
/// never a finding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `guardrails.toml` is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// 1-based line.
        line: u32,
        /// What is wrong.
        message: String,
    },
    /// `cargo metadata` failed.
    #[error("cargo metadata failed for {}: {source}", root.display())]
    Metadata {
        /// The workspace root.
        root: PathBuf,
        /// The cause.
        source: Box<cargo_metadata::Error>,
    },
    /// `cargo metadata` returned no resolved graph.
    #[error("cargo metadata returned no resolved dependency graph")]
    NoResolve,
    /// A rule names a crate that does not exist (it would silently check nothing).
    #[error("rule `{rule}` names `{name}`, which {what}")]
    UnknownCrate {
        /// The rule.
        rule: String,
        /// The name as written.
        name: String,
        /// What was looked for.
        what: &'static str,
    },
    /// A caller allowlist names a function that is not defined where it says.
    #[error(
        "caller allowlist `{rule}` names `{function}`, which is not defined (a free function or an associated function of an inherent impl)"
    )]
    UnknownFunction {
        /// The allowlist.
        rule: String,
        /// The function path.
        function: String,
    },
    /// An `allowed` entry names a module that does not exist or a glob that matches no file.
    #[error("rule `{rule}` allows `{scope}`, which matches no module or file in the workspace")]
    UnknownScope {
        /// The rule.
        rule: String,
        /// The entry as written.
        scope: String,
    },
    /// `selftest` could not set up its copy of the workspace.
    #[error("selftest: {0}")]
    Selftest(String),
}

/// Loads `<root>/guardrails.toml` (or `config`), reads the workspace and runs every layer.
///
/// # Errors
///
/// [`Error`] when the config is malformed or names something that does not exist, or when
/// `cargo metadata` fails.
pub fn check_workspace(root: &Path, config: Option<&Path>, options: &Options) -> Result<Report, Error> {
    let config_path = config.map_or_else(|| root.join(config::CONFIG_FILE), Path::to_path_buf);
    check_with(root, &Config::load(&config_path)?, options)
}

/// Reads the workspace at `root` and runs every layer with an already loaded `config`.
///
/// # Errors
///
/// As [`check_workspace`], minus reading the config.
pub fn check_with(root: &Path, config: &Config, options: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    let workspace = Workspace::load(root, options.offline)?;
    let metadata_time = started.elapsed();
    let mut report = check::run(&workspace, config, options)?;
    report.stats.metadata_time = metadata_time;
    report.stats.total_time = started.elapsed();
    Ok(report)
}
