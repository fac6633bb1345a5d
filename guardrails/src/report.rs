//! Findings and the report that carries them.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::source::Span;
use crate::workspace::{EdgeKind, TargetKind};

/// What kind of problem a finding is. The kebab-case names are stable: CI configurations,
/// SARIF consumers and exemptions refer to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// A manifest edge (direct or transitive) reaches a forbidden crate.
    ForbiddenDependency,
    /// Source names a forbidden crate (`use`, a path, `extern crate`, a macro body, an
    /// attribute string).
    ForbiddenReference,
    /// A `#[path]` module or `include!`-like macro reaches into a forbidden crate's directory.
    ForbiddenInclude,
    /// A function under a caller allowlist is referenced from outside the allowlist.
    DisallowedCaller,
    /// Text matching a forbidden pattern outside its allowlist.
    ForbiddenPattern,
    /// A module references a module of the same crate that a module rule forbids.
    ForbiddenModuleReference,
    /// Sibling modules of one crate reference each other in a circle.
    ModuleCycle,
    /// An exemption cites an ADR that does not exist.
    ExemptionAdrMissing,
    /// An exemption cites an ADR whose status is not Accepted.
    ExemptionAdrNotAccepted,
    /// An exemption is past its `expires` date.
    ExemptionExpired,
    /// An exemption matches no finding (it would hide a future one silently).
    ExemptionUnused,
}

impl Code {
    /// Every code, in order.
    pub const ALL: [Code; 11] = [
        Code::ForbiddenDependency,
        Code::ForbiddenReference,
        Code::ForbiddenInclude,
        Code::DisallowedCaller,
        Code::ForbiddenPattern,
        Code::ForbiddenModuleReference,
        Code::ModuleCycle,
        Code::ExemptionAdrMissing,
        Code::ExemptionAdrNotAccepted,
        Code::ExemptionExpired,
        Code::ExemptionUnused,
    ];

    /// The stable kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::ForbiddenDependency => "forbidden-dependency",
            Code::ForbiddenReference => "forbidden-reference",
            Code::ForbiddenInclude => "forbidden-include",
            Code::DisallowedCaller => "disallowed-caller",
            Code::ForbiddenPattern => "forbidden-pattern",
            Code::ForbiddenModuleReference => "forbidden-module-reference",
            Code::ModuleCycle => "module-cycle",
            Code::ExemptionAdrMissing => "exemption-adr-missing",
            Code::ExemptionAdrNotAccepted => "exemption-adr-not-accepted",
            Code::ExemptionExpired => "exemption-expired",
            Code::ExemptionUnused => "exemption-unused",
        }
    }

    /// One line on what the code means.
    pub fn description(self) -> &'static str {
        match self {
            Code::ForbiddenDependency => "A manifest dependency edge, direct or transitive, reaches a forbidden crate.",
            Code::ForbiddenReference => "Source code names a forbidden crate.",
            Code::ForbiddenInclude => "A #[path] module or include! reaches into a forbidden crate's directory.",
            Code::DisallowedCaller => "A function under a caller allowlist is referenced outside the allowlist.",
            Code::ForbiddenPattern => "Text matching a forbidden pattern appears outside its allowlist.",
            Code::ForbiddenModuleReference => "A module references a module of its crate that a module rule forbids.",
            Code::ModuleCycle => "Sibling modules of one crate reference each other in a circle.",
            Code::ExemptionAdrMissing => "An exemption cites an ADR that does not exist in adr/.",
            Code::ExemptionAdrNotAccepted => "An exemption cites an ADR whose status is not Accepted.",
            Code::ExemptionExpired => "An exemption is past its expiry date.",
            Code::ExemptionUnused => "An exemption matches no finding.",
        }
    }

    /// Whether the finding is about `guardrails.toml` itself.
    pub fn is_about_exemption(self) -> bool {
        matches!(
            self,
            Code::ExemptionAdrMissing | Code::ExemptionAdrNotAccepted | Code::ExemptionExpired | Code::ExemptionUnused
        )
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One edge of a dependency chain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ChainEdge {
    /// The dependent package.
    pub from: String,
    /// The dependency.
    pub to: String,
    /// The edge kind.
    pub kind: EdgeKind,
    /// Declared optional (feature-enabled).
    pub optional: bool,
    /// `cfg(..)` for a platform-specific dependency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl ChainEdge {
    /// The edge's kind, `optional` and platform: `normal, optional, cfg(unix)`.
    pub fn label(&self) -> String {
        let mut label = self.kind.as_str().to_owned();
        if self.optional {
            label.push_str(", optional");
        }
        if let Some(platform) = &self.platform {
            label.push_str(", ");
            label.push_str(platform);
        }
        label
    }
}

impl fmt::Display for ChainEdge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, " -({})-> {}", self.label(), self.to)
    }
}

/// Renders a chain as `a -(normal)-> b -(dev)-> c`.
pub fn chain_text(chain: &[ChainEdge]) -> String {
    let mut text = chain.first().map(|edge| edge.from.clone()).unwrap_or_default();
    for edge in chain {
        text.push_str(&edge.to_string());
    }
    text
}

/// A rule violation, located in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind of problem.
    pub code: Code,
    /// The rule broken (for exemption problems: the rule the exemption names).
    pub rule: String,
    /// One sentence.
    pub message: String,
    /// File relative to the workspace root (`Cargo.toml` for manifest findings,
    /// `guardrails.toml` for exemption problems).
    pub file: String,
    /// Where in the file.
    #[serde(flatten)]
    pub span: SpanJson,
    /// The kind of code it is in.
    pub target: TargetKind,
    /// The module, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// The syntactic form (`use`, `path`, `macro`, `manifest`, ...).
    pub form: String,
    /// For dependency findings: the chain from the rule's crate to the forbidden one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<ChainEdge>,
    /// Why the rule exists.
    pub reason: String,
    /// What to do about it.
    pub hint: String,
    /// The source line, trimmed (used for the snippet and the fingerprint).
    #[serde(skip)]
    pub line_text: String,
    /// A stable hash of what the finding is, independent of line numbers.
    pub fingerprint: String,
}

/// [`Span`] as the JSON output writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SpanJson {
    /// 1-based line.
    pub line: u32,
    /// 1-based column (Unicode scalar values).
    pub column: u32,
    /// 1-based end line.
    pub end_line: u32,
    /// 1-based end column, exclusive.
    pub end_column: u32,
}

impl From<Span> for SpanJson {
    fn from(span: Span) -> Self {
        SpanJson {
            line: span.line,
            column: span.column,
            end_line: span.end_line,
            end_column: span.end_column,
        }
    }
}

impl Finding {
    /// Computes [`Finding::fingerprint`] from code, rule, file, module, form, chain and the
    /// trimmed source line, so that it survives unrelated edits that move lines.
    pub fn seal(mut self) -> Self {
        let mut hasher = Sha256::new();
        for part in [
            self.code.as_str(),
            &self.rule,
            &self.file,
            self.module.as_deref().unwrap_or(""),
            &self.form,
            &chain_text(&self.chain),
            self.line_text.trim(),
        ] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        self.fingerprint = hex::encode(&hasher.finalize()[..16]);
        self
    }

    fn sort_key(&self) -> (&str, SpanJson, Code, &str, &str, &str) {
        (
            &self.file,
            self.span,
            self.code,
            &self.rule,
            &self.message,
            &self.fingerprint,
        )
    }
}

/// A finding an exemption allowed, with the exemption.
#[derive(Debug, Clone, Serialize)]
pub struct Exempted {
    /// The finding.
    pub finding: Finding,
    /// The ADR the exemption cites.
    pub adr: String,
    /// The exemption's reason.
    pub reason: String,
    /// Line of the exemption in `guardrails.toml`.
    pub exemption_line: u32,
}

/// Counts from one check. Everything but the durations is deterministic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Rules of all kinds.
    pub rules: usize,
    /// Exemptions in the config.
    pub exemptions: usize,
    /// Workspace members.
    pub members: usize,
    /// Packages in the resolved graph.
    pub packages: usize,
    /// `.rs` files read.
    pub files: usize,
    /// Of those, `#[path]` modules and `include!`d files outside their package, scanned with the
    /// crate that compiles them.
    pub files_outside: usize,
    /// Bytes of the files the pre-filter let through to `syn`.
    pub bytes_parsed: u64,
    /// Doc-tests scanned (those naming something watched).
    pub doc_tests: u64,
    /// Files the pre-filter passed to the parser.
    pub files_parsed: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Files `syn` could not parse (they were scanned as tokens).
    pub files_unparsed: usize,
    /// Files that could not be tokenized either (not checked; listed in `unscannable`).
    pub files_unscannable: usize,
    /// Macro invocations seen in parsed files.
    pub macros: u64,
    /// Macro bodies that are not Rust expressions, statements or items (scanned as tokens).
    pub macros_unparsed: u64,
    /// Files that could not be read or tokenized.
    pub unscannable: Vec<String>,
    /// Things worth knowing that are not findings (a forbidden name matching no package yet).
    pub notes: Vec<String>,
    /// Wall time of `cargo metadata`.
    #[serde(skip)]
    pub metadata_time: Duration,
    /// Wall time of the manifest layer (graph search, after `cargo metadata`).
    #[serde(skip)]
    pub manifest_time: Duration,
    /// Wall time of the source layer: discovery, reading, pre-filter and parallel parsing.
    #[serde(skip)]
    pub source_time: Duration,
    /// Wall time of the whole check.
    #[serde(skip)]
    pub total_time: Duration,
}

/// The outcome of a check.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Findings, sorted by file, position, code and rule.
    pub findings: Vec<Finding>,
    /// Findings exempted by an accepted, unexpired ADR-backed exemption.
    pub exempted: Vec<Exempted>,
    /// Counts.
    pub stats: Stats,
}

impl Report {
    /// Sorts findings so two runs print the same bytes.
    pub fn sort(&mut self) {
        self.findings.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        self.findings.dedup_by(|a, b| a.sort_key() == b.sort_key());
        self.exempted
            .sort_by(|a, b| a.finding.sort_key().cmp(&b.finding.sort_key()));
    }
}
