//! `guardrails.toml`: the rules, caller allowlists, forbidden patterns and exemptions.
//!
//! The file is parsed strictly (unknown keys are errors) and checked for shape here; whether
//! the crates, functions and modules it names exist is checked against the workspace in
//! [`crate::check`], so that a rename can never turn a rule off silently.

use std::fmt;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use crate::Error;
use crate::workspace::{EdgeKind, TargetKind};

/// The only config schema version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// The file name looked up at the workspace root.
pub const CONFIG_FILE: &str = "guardrails.toml";

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its text (findings about exemptions point into it).
    pub text: String,
    /// `[[dependency-rule]]` entries.
    pub dependency_rules: Vec<DependencyRule>,
    /// `[[caller-allowlist]]` entries.
    pub caller_allowlists: Vec<CallerAllowlist>,
    /// `[[forbidden-pattern]]` entries.
    pub patterns: Vec<ForbiddenPattern>,
    /// `[[module-rule]]` entries.
    pub module_rules: Vec<ModuleRule>,
    /// `[[acyclic-modules]]` entries.
    pub acyclic_modules: Vec<AcyclicModules>,
    /// `[[exemption]]` entries.
    pub exemptions: Vec<Exemption>,
    /// Where exemptions' ADRs live, relative to the workspace root (`adr-dir`, default `adr`).
    pub adr_dir: String,
}

/// "Inside crate `krate`, modules under `from` never reference modules under `forbidden`."
#[derive(Debug, Clone)]
pub struct ModuleRule {
    /// Stable kebab-case name.
    pub name: String,
    /// The package whose library the rule is about.
    pub krate: String,
    /// Module path prefixes the rule applies to (`control_plane::storage`).
    pub from: Vec<String>,
    /// Module path prefixes they must not reference.
    pub forbidden: Vec<String>,
    /// Whether references in test code count.
    pub include_tests: bool,
    /// Why.
    pub reason: String,
    /// What to do instead.
    pub hint: Option<String>,
    /// 1-based line of the entry in the config.
    pub line: u32,
}

/// "Inside each crate of `crates`, sibling modules reference each other without a circle."
#[derive(Debug, Clone)]
pub struct AcyclicModules {
    /// Stable kebab-case name.
    pub name: String,
    /// The packages whose libraries the rule is about.
    pub crates: Vec<String>,
    /// Whether references in test code count.
    pub include_tests: bool,
    /// Why.
    pub reason: String,
    /// What to do instead.
    pub hint: Option<String>,
    /// 1-based line of the entry in the config.
    pub line: u32,
}

/// "Crates in `from` must never reach a crate in `forbidden`", in the manifest graph and in source.
#[derive(Debug, Clone)]
pub struct DependencyRule {
    /// Stable kebab-case name.
    pub name: String,
    /// Source packages: package names, or a directory glob such as `plugins/*` matching member
    /// directories relative to the workspace root.
    pub from: Vec<String>,
    /// Forbidden packages (members or registry crates); `@workspace` means every workspace
    /// member other than the source itself.
    pub forbidden: Vec<String>,
    /// Edge kinds that count for the first hop (later hops follow normal edges, and build edges
    /// when `build` is listed). Default: all three.
    pub edges: Vec<EdgeKind>,
    /// Whether test code counts: dev-dependency edges, `tests/`, `benches/`, `#[cfg(test)]`.
    pub include_tests: bool,
    /// Why the rule exists.
    pub reason: String,
    /// What to do instead.
    pub hint: Option<String>,
    /// 1-based line of the entry in the config.
    pub line: u32,
}

/// "Only these modules or files may reference `function`."
#[derive(Debug, Clone)]
pub struct CallerAllowlist {
    /// Stable kebab-case name.
    pub name: String,
    /// The function's full path: `control_plane::identity::with_system_identity`, or an
    /// associated function `krate::module::Type::function`.
    pub function: String,
    /// Where references are allowed.
    pub allowed: Vec<Scope>,
    /// Why.
    pub reason: String,
    /// What to do instead.
    pub hint: Option<String>,
    /// 1-based line of the entry in the config.
    pub line: u32,
}

/// Where a [`ForbiddenPattern`] looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SearchIn {
    /// String literals only (also inside macro invocations): what SQL and the like live in.
    StringLiterals,
    /// The whole text, comments included.
    Text,
}

/// "Text matching `regex` may appear only in the allowed modules or files."
#[derive(Debug, Clone)]
pub struct ForbiddenPattern {
    /// Stable kebab-case name.
    pub name: String,
    /// The pattern.
    pub regex: Regex,
    /// A text the pattern must match (checked at load; `selftest` injects it).
    pub example: String,
    /// Literals only, or the whole text.
    pub search: SearchIn,
    /// Where it may appear.
    pub allowed: Vec<Scope>,
    /// Why.
    pub reason: String,
    /// What to do instead.
    pub hint: Option<String>,
    /// 1-based line of the entry in the config.
    pub line: u32,
}

/// A place in the workspace: a module path prefix or a file glob.
#[derive(Debug, Clone)]
pub enum Scope {
    /// `control_plane::store`: that module and its submodules (per path segment).
    Module(String),
    /// `control-plane/tests/**`: files relative to the workspace root.
    Files(String, GlobMatcher),
}

impl Scope {
    fn parse(text: &str) -> Result<Self, String> {
        if text.contains('/') || text.ends_with(".rs") || text.contains('*') {
            let matcher = Glob::new(text)
                .map_err(|error| format!("`{text}` is not a valid glob: {error}"))?
                .compile_matcher();
            Ok(Scope::Files(text.to_owned(), matcher))
        } else if !text.is_empty()
            && text
                .split("::")
                .all(|segment| !segment.is_empty() && segment.chars().all(|c| c.is_alphanumeric() || c == '_'))
        {
            Ok(Scope::Module(text.to_owned()))
        } else {
            Err(format!(
                "`{text}` is neither a module path (`krate::module`) nor a file glob (`dir/**/*.rs`)"
            ))
        }
    }

    /// Whether a place (relative file, module path) lies in this scope.
    pub fn contains(&self, file: &str, module: Option<&str>) -> bool {
        match self {
            Scope::Files(_, matcher) => matcher.is_match(file),
            Scope::Module(prefix) => module.is_some_and(|module| module_has_prefix(module, prefix)),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Module(module) => f.pad(module),
            Scope::Files(glob, _) => f.pad(glob),
        }
    }
}

/// `a::b::c` has prefix `a::b` (per segment, so `a::bc` does not).
pub fn module_has_prefix(module: &str, prefix: &str) -> bool {
    module == prefix || module.strip_prefix(prefix).is_some_and(|rest| rest.starts_with("::"))
}

/// A calendar date (`YYYY-MM-DD`, proleptic Gregorian), enough for exemption expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    /// Year.
    pub year: i32,
    /// Month, 1–12.
    pub month: u32,
    /// Day, 1–31.
    pub day: u32,
}

impl Date {
    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('-');
        let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || year.len() != 4 || month.len() != 2 || day.len() != 2 {
            return None;
        }
        let date = Date {
            year: year.parse().ok()?,
            month: month.parse().ok()?,
            day: day.parse().ok()?,
        };
        let leap = (date.year % 4 == 0 && date.year % 100 != 0) || date.year % 400 == 0;
        let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        ((1..=12).contains(&date.month) && date.day >= 1 && date.day <= days[date.month as usize - 1]).then_some(date)
    }

    /// Today in UTC, from the system clock.
    pub fn today() -> Self {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        Self::from_days_since_epoch(i64::try_from(seconds / 86_400).unwrap_or(0))
    }

    /// The civil date `days` after 1970-01-01: Howard Hinnant's `civil_from_days`
    /// (<https://howardhinnant.github.io/date_algorithms.html>).
    pub fn from_days_since_epoch(days: i64) -> Self {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Date {
            year: i32::try_from(year).unwrap_or(i32::MAX),
            month: u32::try_from(month).unwrap_or(1),
            day: u32::try_from(day).unwrap_or(1),
        }
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{:04}-{:02}-{:02}", self.year, self.month, self.day))
    }
}

/// A permission to break one rule in one narrow place, backed by an accepted ADR.
#[derive(Debug, Clone)]
pub struct Exemption {
    /// The rule (dependency rule, caller allowlist or pattern) it exempts from.
    pub rule: String,
    /// One file (relative to the workspace root), e.g. `control-plane/Cargo.toml`, or a glob of
    /// files, e.g. `control-plane/tests/**` (`*` stays within one directory, `**` crosses them).
    pub file: Option<String>,
    /// `file` compiled, when it is a glob.
    pub file_glob: Option<GlobMatcher>,
    /// Or one module (and its submodules), e.g. `control_plane::legacy`.
    pub module: Option<String>,
    /// Optionally only this kind of code (`test`, `build`, ...). For manifest findings the
    /// first edge's kind maps to `lib` (normal), `test` (dev) or `build` (build).
    pub target: Option<TargetKind>,
    /// Why.
    pub reason: String,
    /// The ADR as written: a number (`0006`) or a file name in `adr/`.
    pub adr: String,
    /// The last day it applies, if any.
    pub expires: Option<Date>,
    /// 1-based line of the entry in the config.
    pub line: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    version: u32,
    adr_dir: Option<String>,
    #[serde(default)]
    dependency_rule: Vec<Spanned<RawDependencyRule>>,
    #[serde(default)]
    caller_allowlist: Vec<Spanned<RawCallerAllowlist>>,
    #[serde(default)]
    forbidden_pattern: Vec<Spanned<RawPattern>>,
    #[serde(default)]
    module_rule: Vec<Spanned<RawModuleRule>>,
    #[serde(default)]
    acyclic_modules: Vec<Spanned<RawAcyclicModules>>,
    #[serde(default)]
    exemption: Vec<Spanned<RawExemption>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawModuleRule {
    name: String,
    #[serde(rename = "crate")]
    krate: String,
    from: Vec<String>,
    forbidden: Vec<String>,
    include_tests: Option<bool>,
    reason: String,
    hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAcyclicModules {
    name: String,
    crates: Vec<String>,
    include_tests: Option<bool>,
    reason: String,
    hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDependencyRule {
    name: String,
    from: Vec<String>,
    forbidden: Vec<String>,
    edges: Option<Vec<EdgeKind>>,
    include_tests: Option<bool>,
    reason: String,
    hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCallerAllowlist {
    name: String,
    function: String,
    allowed: Vec<String>,
    reason: String,
    hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPattern {
    name: String,
    regex: String,
    example: String,
    search: Option<SearchIn>,
    allowed: Vec<String>,
    reason: String,
    hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawExemption {
    rule: String,
    file: Option<String>,
    module: Option<String>,
    target: Option<TargetKind>,
    reason: String,
    adr: String,
    expires: Option<String>,
}

/// 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> u32 {
    let offset = offset.min(text.len());
    u32::try_from(text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1).unwrap_or(u32::MAX)
}

fn is_kebab(name: &str) -> bool {
    !name.is_empty()
        && name
            .split('-')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
}

impl Config {
    /// Reads and shape-checks `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when it cannot be read, [`Error::Config`] naming the line and the problem
    /// for anything malformed: TOML syntax, an unknown key, a wrong version, a rule name that
    /// is not kebab-case or is used twice, an empty list, a bad regex or glob, an example the
    /// regex does not match, an exemption without exactly one scope or naming no known rule,
    /// an empty reason, a bad date.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, text)
    }

    /// Shape-checks `text` as if read from `path`.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn parse(path: &Path, text: String) -> Result<Self, Error> {
        let raw: RawConfig = toml::from_str(&text).map_err(|error| {
            let line = error.span().map_or(1, |span| line_of(&text, span.start));
            Error::Config {
                path: path.to_path_buf(),
                line,
                message: error.message().to_owned(),
            }
        })?;
        // Every problem is collected (cargo-deny style): the author fixes them in one pass.
        let mut problems: Vec<(u32, String)> = Vec::new();
        if raw.version != CONFIG_VERSION {
            problems.push((
                1,
                format!(
                    "version {} is not supported (this guardrails reads version {CONFIG_VERSION})",
                    raw.version
                ),
            ));
        }
        if let Some(dir) = &raw.adr_dir {
            let path = Path::new(dir);
            if dir.trim().is_empty()
                || path.is_absolute()
                || path
                    .components()
                    .any(|part| matches!(part, std::path::Component::ParentDir))
            {
                problems.push((
                    line_of(&text, text.find("adr-dir").unwrap_or(0)),
                    format!("adr-dir `{dir}` must be a directory inside the workspace, relative to its root"),
                ));
            }
        }
        let mut names: Vec<String> = Vec::new();
        let mut claim = |name: &str, line: u32, problems: &mut Vec<(u32, String)>| {
            if !is_kebab(name) {
                problems.push((line, format!("rule name `{name}` must be kebab-case")));
            } else if names.iter().any(|known| known == name) {
                problems.push((line, format!("rule name `{name}` is used twice")));
            } else {
                names.push(name.to_owned());
            }
        };
        let scopes = |list: &[String], line: u32, what: &str, problems: &mut Vec<(u32, String)>| -> Vec<Scope> {
            if list.is_empty() {
                problems.push((line, format!("`{what}` must not be empty")));
            }
            list.iter()
                .filter_map(|entry| {
                    Scope::parse(entry)
                        .map_err(|message| problems.push((line, message)))
                        .ok()
                })
                .collect()
        };
        let require = |value: &str, line: u32, what: &str, problems: &mut Vec<(u32, String)>| {
            if value.trim().is_empty() {
                problems.push((line, format!("`{what}` must not be empty")));
            }
        };

        let mut dependency_rules = Vec::new();
        for entry in raw.dependency_rule {
            let line = line_of(&text, entry.span().start);
            let rule = entry.into_inner();
            claim(&rule.name, line, &mut problems);
            require(&rule.reason, line, "reason", &mut problems);
            if rule.from.is_empty() || rule.forbidden.is_empty() {
                problems.push((
                    line,
                    format!("rule `{}`: `from` and `forbidden` must not be empty", rule.name),
                ));
            }
            let mut edges = rule.edges.unwrap_or_else(|| EdgeKind::ALL.to_vec());
            if edges.is_empty() {
                problems.push((line, format!("rule `{}`: `edges` must not be empty", rule.name)));
            }
            edges.sort();
            edges.dedup();
            dependency_rules.push(DependencyRule {
                name: rule.name,
                from: rule.from,
                forbidden: rule.forbidden,
                edges,
                include_tests: rule.include_tests.unwrap_or(true),
                reason: rule.reason,
                hint: rule.hint,
                line,
            });
        }

        let mut caller_allowlists = Vec::new();
        for entry in raw.caller_allowlist {
            let line = line_of(&text, entry.span().start);
            let list = entry.into_inner();
            claim(&list.name, line, &mut problems);
            require(&list.reason, line, "reason", &mut problems);
            let segments: Vec<&str> = list.function.split("::").collect();
            if segments.len() < 2
                || segments
                    .iter()
                    .any(|s| s.is_empty() || !s.chars().all(|c| c.is_alphanumeric() || c == '_'))
            {
                problems.push((
                    line,
                    format!(
                        "function `{}` must be a full path such as `krate::module::function`",
                        list.function
                    ),
                ));
            }
            caller_allowlists.push(CallerAllowlist {
                allowed: scopes(&list.allowed, line, "allowed", &mut problems),
                name: list.name,
                function: list.function,
                reason: list.reason,
                hint: list.hint,
                line,
            });
        }

        let mut patterns = Vec::new();
        for entry in raw.forbidden_pattern {
            let line = line_of(&text, entry.span().start);
            let pattern = entry.into_inner();
            claim(&pattern.name, line, &mut problems);
            require(&pattern.reason, line, "reason", &mut problems);
            let allowed = scopes(&pattern.allowed, line, "allowed", &mut problems);
            let regex = match Regex::new(&pattern.regex) {
                Ok(regex) => regex,
                Err(error) => {
                    problems.push((line, format!("pattern `{}`: bad regex: {error}", pattern.name)));
                    continue;
                }
            };
            if !regex.is_match(&pattern.example) {
                problems.push((
                    line,
                    format!(
                        "pattern `{}`: its example {:?} does not match its regex, so the rule may match nothing",
                        pattern.name, pattern.example
                    ),
                ));
            }
            patterns.push(ForbiddenPattern {
                allowed,
                name: pattern.name,
                regex,
                example: pattern.example,
                search: pattern.search.unwrap_or(SearchIn::StringLiterals),
                reason: pattern.reason,
                hint: pattern.hint,
                line,
            });
        }

        let module_path = |text: &str| {
            !text.is_empty()
                && text
                    .split("::")
                    .all(|segment| !segment.is_empty() && segment.chars().all(|c| c.is_alphanumeric() || c == '_'))
        };
        let mut module_rules = Vec::new();
        for entry in raw.module_rule {
            let line = line_of(&text, entry.span().start);
            let rule = entry.into_inner();
            claim(&rule.name, line, &mut problems);
            require(&rule.reason, line, "reason", &mut problems);
            require(&rule.krate, line, "crate", &mut problems);
            if rule.from.is_empty() || rule.forbidden.is_empty() {
                problems.push((
                    line,
                    format!("module rule `{}`: `from` and `forbidden` must not be empty", rule.name),
                ));
            }
            for wrong in rule
                .from
                .iter()
                .chain(&rule.forbidden)
                .filter(|module| !module_path(module))
            {
                problems.push((
                    line,
                    format!(
                        "module rule `{}`: `{wrong}` is not a module path such as `krate::module`",
                        rule.name
                    ),
                ));
            }
            module_rules.push(ModuleRule {
                name: rule.name,
                krate: rule.krate,
                from: rule.from,
                forbidden: rule.forbidden,
                include_tests: rule.include_tests.unwrap_or(true),
                reason: rule.reason,
                hint: rule.hint,
                line,
            });
        }
        let mut acyclic_modules = Vec::new();
        for entry in raw.acyclic_modules {
            let line = line_of(&text, entry.span().start);
            let rule = entry.into_inner();
            claim(&rule.name, line, &mut problems);
            require(&rule.reason, line, "reason", &mut problems);
            if rule.crates.is_empty() {
                problems.push((line, format!("rule `{}`: `crates` must not be empty", rule.name)));
            }
            acyclic_modules.push(AcyclicModules {
                name: rule.name,
                crates: rule.crates,
                include_tests: rule.include_tests.unwrap_or(false),
                reason: rule.reason,
                hint: rule.hint,
                line,
            });
        }

        let mut exemptions = Vec::new();
        for entry in raw.exemption {
            let line = line_of(&text, entry.span().start);
            let exemption = entry.into_inner();
            if !names.iter().any(|name| name == &exemption.rule) {
                problems.push((
                    line,
                    format!("exemption names rule `{}`, which does not exist", exemption.rule),
                ));
            }
            require(&exemption.reason, line, "reason", &mut problems);
            require(&exemption.adr, line, "adr", &mut problems);
            if exemption.file.is_some() == exemption.module.is_some() {
                problems.push((
                    line,
                    format!(
                        "exemption from `{}` must name exactly one of `file` or `module`",
                        exemption.rule
                    ),
                ));
            }
            let mut file_glob = None;
            if let Some(file) = &exemption.file
                && file.contains(['*', '?', '[', '{'])
            {
                match globset::GlobBuilder::new(file).literal_separator(true).build() {
                    Ok(glob) => file_glob = Some(glob.compile_matcher()),
                    Err(error) => {
                        problems.push((line, format!("exemption `file` is not a valid glob: `{file}`: {error}")))
                    }
                }
            }
            let expires = match &exemption.expires {
                None => None,
                Some(text) => {
                    let date = Date::parse(text);
                    if date.is_none() {
                        problems.push((line, format!("`expires` must be a date YYYY-MM-DD, not `{text}`")));
                    }
                    date
                }
            };
            exemptions.push(Exemption {
                rule: exemption.rule,
                file: exemption.file,
                file_glob,
                module: exemption.module,
                target: exemption.target,
                reason: exemption.reason,
                adr: exemption.adr,
                expires,
                line,
            });
        }

        if !problems.is_empty() {
            problems.sort();
            let (line, _) = problems[0];
            let message = problems
                .iter()
                .map(|(line, message)| {
                    if problems.len() == 1 {
                        message.clone()
                    } else {
                        format!("\n  line {line}: {message}")
                    }
                })
                .collect::<String>();
            let message = if problems.len() == 1 {
                message
            } else {
                format!("{} problems:{message}", problems.len())
            };
            return Err(Error::Config {
                path: path.to_path_buf(),
                line,
                message,
            });
        }
        let adr_dir = raw.adr_dir.clone().unwrap_or_else(|| "adr".to_owned());
        Ok(Config {
            adr_dir,
            path: path.to_path_buf(),
            text,
            dependency_rules,
            caller_allowlists,
            patterns,
            module_rules,
            acyclic_modules,
            exemptions,
        })
    }

    /// Number of rules of all kinds.
    pub fn rule_count(&self) -> usize {
        self.dependency_rules.len()
            + self.caller_allowlists.len()
            + self.patterns.len()
            + self.module_rules.len()
            + self.acyclic_modules.len()
    }

    /// The reason and hint of the rule called `name`.
    pub fn rule_text(&self, name: &str) -> Option<(&str, Option<&str>)> {
        self.dependency_rules
            .iter()
            .map(|r| (&r.name, &r.reason, &r.hint))
            .chain(self.caller_allowlists.iter().map(|r| (&r.name, &r.reason, &r.hint)))
            .chain(self.patterns.iter().map(|r| (&r.name, &r.reason, &r.hint)))
            .chain(self.module_rules.iter().map(|r| (&r.name, &r.reason, &r.hint)))
            .chain(self.acyclic_modules.iter().map(|r| (&r.name, &r.reason, &r.hint)))
            .find(|(rule, _, _)| *rule == name)
            .map(|(_, reason, hint)| (reason.as_str(), hint.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_days() {
        assert_eq!(Date::from_days_since_epoch(0).to_string(), "1970-01-01");
        assert_eq!(Date::from_days_since_epoch(20_779).to_string(), "2026-11-22");
        assert_eq!(Date::from_days_since_epoch(11_016).to_string(), "2000-02-29");
        assert!(Date::parse("2026-02-29").is_none());
        assert!(Date::parse("2024-02-29").is_some());
        assert!(Date::parse("2026-1-01").is_none());
        assert!(Date::parse("2026-13-01").is_none());
    }

    #[test]
    fn every_config_problem_is_reported_at_once() {
        let text = r#"
version = 1

[[dependency-rule]]
name = "Bad Name"
from = []
forbidden = ["x"]
reason = ""

[[forbidden-pattern]]
name = "p"
regex = "abc"
example = "xyz"
allowed = ["not a scope!"]
reason = "r"

[[exemption]]
rule = "nowhere"
file = "a/[*.rs"
reason = "r"
adr = "0001"
"#;
        let Err(Error::Config { line, message, .. }) = Config::parse(Path::new("guardrails.toml"), text.to_owned())
        else {
            panic!("expected a config error");
        };
        assert_eq!(line, 4, "{message}");
        for expected in [
            "7 problems:",
            "line 4: rule name `Bad Name` must be kebab-case",
            "line 4: `reason` must not be empty",
            "line 4: rule `Bad Name`: `from` and `forbidden` must not be empty",
            "line 10: `not a scope!` is neither a module path",
            "does not match its regex",
            "line 17: exemption names rule `nowhere`, which does not exist",
            "line 17: exemption `file` is not a valid glob: `a/[*.rs`",
        ] {
            assert!(message.contains(expected), "`{expected}` missing from:\n{message}");
        }
    }

    #[test]
    fn the_adr_directory_is_configurable_and_stays_inside_the_workspace() {
        let parse = |dir: &str| {
            Config::parse(
                Path::new("guardrails.toml"),
                format!("adr-dir = \"{dir}\"\nversion = 1\n"),
            )
        };
        assert_eq!(parse("docs/decisions").unwrap().adr_dir, "docs/decisions");
        assert_eq!(
            Config::parse(Path::new("guardrails.toml"), "version = 1\n".to_owned())
                .unwrap()
                .adr_dir,
            "adr"
        );
        for outside in ["../elsewhere", "/etc", ""] {
            let Err(Error::Config { line, message, .. }) = parse(outside) else {
                panic!("adr-dir `{outside}` was accepted")
            };
            assert_eq!(line, 1);
            assert!(
                message.contains("must be a directory inside the workspace"),
                "{message}"
            );
        }
    }

    #[test]
    fn module_prefixes_are_per_segment() {
        assert!(module_has_prefix("a::b::c", "a::b"));
        assert!(module_has_prefix("a::b", "a::b"));
        assert!(!module_has_prefix("a::bc", "a::b"));
    }
}
