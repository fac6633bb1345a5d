//! The source layer: finds the workspace's `.rs` files, maps each to its target and module,
//! and parses it with `syn` for references to watched crates and functions, `#[path]` and
//! `include!` that reach into watched directories, and watched string literals.
//!
//! A file is only parsed when the token pre-filter ([`crate::tokens`]) finds a token that could
//! make a fact (a watched crate name in path position, a watched function's name, a string
//! naming one, `#[path]` or `include!` when directories are watched); every other file is read,
//! lexed and counted but not parsed. Doc-tests that name something watched are scanned too, as
//! test code. Parsing runs on all cores (rayon).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use proc_macro2::{Delimiter, LineColumn, Spacing, TokenStream, TokenTree};
use regex::Regex;
use syn::ext::IdentExt as _;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::visit::{self, Visit};

use crate::config::{ForbiddenPattern, SearchIn, line_of};
use crate::tokens::{DocTest, Prefilter};
use crate::workspace::{TargetKind, Workspace};

/// A `.rs` file of a workspace member.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Absolute path.
    pub path: PathBuf,
    /// Relative to the workspace root, `/`-separated.
    pub rel: String,
    /// Index of its package in [`Workspace::packages`].
    pub package: usize,
    /// The kind of target it belongs to (by location).
    pub target: TargetKind,
    /// Its crate name (`control_plane`, or a test crate's name), when it belongs to a target.
    pub crate_name: Option<String>,
    /// Its module path (`control_plane::store`), when it belongs to a target.
    pub module: Option<String>,
    /// Whether its doc comments are compiled as doc-tests: library code of a library whose
    /// doc-tests are on.
    pub doc_tests: bool,
}

/// Finds every `.rs` file of every workspace member, skipping `target/`, hidden directories,
/// directories the workspace excludes (`[workspace] exclude`) and nested packages (any directory
/// below the member with its own `Cargo.toml`).
/// Sorted by relative path.
pub fn discover(workspace: &Workspace) -> Vec<SourceFile> {
    let mut files = Vec::new();
    for &index in &workspace.members {
        let package = &workspace.packages[index];
        let mut stack = vec![package.dir.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|entry| entry.path()).collect();
            entries.sort();
            for path in entries {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if path.is_dir() {
                    if name.starts_with('.')
                        || name == "target"
                        || path.join("Cargo.toml").exists()
                        || workspace.excluded.iter().any(|excluded| excluded == &path)
                    {
                        continue;
                    }
                    stack.push(path);
                } else if name.ends_with(".rs") {
                    let (target, crate_name, module) = locate(workspace, index, &path);
                    let doc_tests = target == TargetKind::Lib
                        && package.targets.iter().any(|t| {
                            t.kind == TargetKind::Lib && t.doctest && Some(&t.crate_name) == crate_name.as_ref()
                        });
                    files.push(SourceFile {
                        doc_tests,
                        rel: workspace.relative(&path),
                        path,
                        package: index,
                        target,
                        crate_name,
                        module,
                    });
                }
            }
        }
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    files
}

/// The target, crate name and module path of `file` in package `index`.
fn locate(workspace: &Workspace, index: usize, file: &Path) -> (TargetKind, Option<String>, Option<String>) {
    let package = &workspace.packages[index];
    let mut best: Option<(usize, TargetKind, String, String)> = None;
    for target in &package.targets {
        if target.src_path == file {
            return (
                target.kind,
                Some(target.crate_name.clone()),
                Some(target.crate_name.clone()),
            );
        }
        let Some(parent) = target.src_path.parent() else {
            continue;
        };
        let stem = target
            .src_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let module_dir = if matches!(stem.as_str(), "lib" | "main" | "mod") {
            parent.to_path_buf()
        } else {
            parent.join(&stem)
        };
        let Ok(relative) = file.strip_prefix(&module_dir) else {
            continue;
        };
        let mut segments: Vec<String> = relative
            .components()
            .map(|component| component.as_os_str().to_string_lossy().into_owned())
            .collect();
        if let Some(last) = segments.last_mut() {
            *last = last.trim_end_matches(".rs").to_owned();
        }
        if segments.last().is_some_and(|last| last == "mod") {
            segments.pop();
        }
        let depth = module_dir.components().count();
        if best.as_ref().is_none_or(|(best_depth, ..)| depth > *best_depth) {
            let mut module = target.crate_name.clone();
            for segment in &segments {
                module.push_str("::");
                module.push_str(segment);
            }
            best = Some((depth, target.kind, target.crate_name.clone(), module));
        }
    }
    if let Some((_, kind, crate_name, module)) = best {
        return (kind, Some(crate_name), Some(module));
    }
    let first = file
        .strip_prefix(&package.dir)
        .ok()
        .and_then(|relative| relative.components().next())
        .map(|component| component.as_os_str().to_string_lossy().into_owned());
    let kind = match first.as_deref() {
        Some("tests") => TargetKind::Test,
        Some("benches") => TargetKind::Bench,
        Some("examples") => TargetKind::Example,
        Some("build.rs") => TargetKind::Build,
        _ => TargetKind::Lib,
    };
    (kind, None, None)
}

/// A watched function for caller allowlists.
#[derive(Debug, Clone)]
pub struct WatchedFn {
    /// Full path segments, crate first.
    pub path: Vec<String>,
    /// Whether it takes `self` (then `.name(..)` method calls count too, by name).
    pub method: bool,
}

/// What to look for in one package's files.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Crate names (as code writes them) whose use is a reference.
    pub crate_names: BTreeSet<String>,
    /// Directories that `#[path]` and `include!` must not reach.
    pub dirs: Vec<PathBuf>,
    /// Extern-name renames of this package (`rt` → `agent_runtime`).
    pub renames: BTreeMap<String, String>,
}

/// Where in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// 1-based end line.
    pub end_line: u32,
    /// 1-based column just past the end, in characters.
    pub end_column: u32,
}

impl Span {
    fn of(start: LineColumn, end: LineColumn) -> Self {
        let clamp = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
        Span {
            line: clamp(start.line),
            column: clamp(start.column + 1),
            end_line: clamp(end.line),
            end_column: clamp(end.column + 1),
        }
    }

    /// The span of a `proc_macro2` token (`span-locations` on).
    pub(crate) fn of_span(span: proc_macro2::Span) -> Self {
        Span::of(span.start(), span.end())
    }
}

/// What was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum FactKind {
    /// A path, `use` or `extern crate` naming a watched crate.
    CrateRef {
        /// The name as written.
        name: String,
    },
    /// A `#[path]` module or `include!` resolving into a watched directory.
    Include {
        /// The resolved file.
        target: PathBuf,
    },
    /// A reference to a watched function.
    FnRef {
        /// Index into the watched functions.
        function: usize,
    },
    /// A watched pattern matched.
    Pattern {
        /// Index into the patterns.
        pattern: usize,
    },
}

/// One fact from one file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fact {
    /// Where.
    pub span: Span,
    /// What.
    pub kind: FactKind,
    /// The syntactic form: `use`, `path`, `extern-crate`, `macro`, `attribute-string`,
    /// `path-attribute`, `include`, `import`, `expression`, `method-call`, `string-literal`, `text`.
    pub form: &'static str,
    /// Inside `#[cfg(test)]`/`#[test]` code.
    pub in_test: bool,
    /// Module path at that point (inline `mod` blocks included).
    pub module: Option<String>,
}

/// The outcome of scanning one file.
#[derive(Debug, Default, Clone)]
pub struct FileScan {
    /// Facts, sorted.
    pub facts: Vec<Fact>,
    /// Bytes read.
    pub bytes: u64,
    /// Whether the pre-filter let it through to the parser.
    pub parsed: bool,
    /// Doc-tests scanned (those whose text names something watched).
    pub doc_tests: u64,
    /// `syn` could not parse it (it was scanned as tokens instead, when that worked).
    pub parse_failed: bool,
    /// It could not even be tokenized; nothing in it was checked.
    pub unscannable: bool,
    /// Macro invocations seen.
    pub macros: u64,
    /// Macro bodies that parse as neither expressions, statements nor items (scanned as tokens).
    pub macros_unparsed: u64,
    /// Module paths declared `#[cfg(test)] mod x;` here (their files are test code).
    pub test_modules: Vec<String>,
    /// Inline modules (`mod x { .. }`) declared here, as full module paths.
    pub inline_modules: Vec<String>,
    /// `#[path]` modules declared and `.rs` files `include!`d here: (file, module path, in test
    /// code), so that a file outside this package's directory is scanned with this crate too.
    pub path_modules: Vec<(PathBuf, String, bool)>,
    /// The file could not be read.
    pub read_error: Option<String>,
}

/// Everything a scan looks for, shared by all files.
pub struct Query<'a> {
    /// Watched functions.
    pub functions: &'a [WatchedFn],
    /// Forbidden patterns.
    pub patterns: &'a [ForbiddenPattern],
    /// Parse every file, even when the pre-filter says it cannot match (for benchmarking).
    pub no_prefilter: bool,
    /// Files parsed even when the pre-filter says they cannot match (the selftest's proof).
    pub parse_anyway: &'a [PathBuf],
    /// Reuse scans memoised in this process (see [`crate::Options::memo`]).
    pub memo: bool,
}

/// `#[cfg(test)]` (or a `#[test]`-like attribute) followed by an out-of-line `mod name;`: a
/// superset of what the parser would find, so the pre-filter never hides one.
static OUT_OF_LINE_TEST_MODULE: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
    Regex::new(r"cfg\s*\(\s*test\s*\)\s*\]\s*(?:#\s*\[[^\]]*\]\s*)*(?:pub(?:\s*\([^)]*\))?\s+)?mod\s+(?:r#)?[A-Za-z_][A-Za-z0-9_]*\s*;")
        .expect("the test-module pattern is valid")
});

/// Builds the token pre-filter for one package ([`crate::tokens`]): its watched crate names,
/// the watched functions' names, and `#[path]`/`include!` when it watches directories.
pub fn prefilter(watch: &Watch, functions: &[WatchedFn]) -> Prefilter {
    Prefilter::new(
        watch.crate_names.iter().cloned(),
        functions.iter().filter_map(|function| function.path.last().cloned()),
        // `#[path]` and `include!` matter to every package a rule watches: into a watched
        // directory they are findings, and a `#[path]` file outside the members' directories
        // is scanned as part of the crate.
        !(watch.dirs.is_empty() && watch.crate_names.is_empty() && functions.is_empty()),
    )
}

/// Scans one file.
pub fn scan_file(
    file: &SourceFile,
    package_dir: &Path,
    watch: &Watch,
    filter: &Prefilter,
    query: &Query<'_>,
) -> FileScan {
    let mut scan = FileScan::default();
    let text = match std::fs::read_to_string(&file.path) {
        Ok(text) => text,
        Err(error) => {
            scan.read_error = Some(error.to_string());
            return scan;
        }
    };
    scan.bytes = text.len() as u64;
    // The same text scanned for the same things gives the same scan: `selftest` runs the check
    // hundreds of times on a copy where one file changed at a time.
    if !query.memo {
        return scan_text(file, package_dir, watch, filter, query, &text, scan);
    }
    let key = memo_key(file, package_dir, watch, query, &text);
    if let Some(memo) = SCAN_MEMO
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
    {
        return memo.clone();
    }
    let scan = scan_text(file, package_dir, watch, filter, query, &text, scan);
    SCAN_MEMO
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key, scan.clone());
    scan
}

/// Scans of files already seen in this process: (everything a scan depends on) → its result.
static SCAN_MEMO: std::sync::Mutex<BTreeMap<[u8; 32], FileScan>> = std::sync::Mutex::new(BTreeMap::new());

/// A SHA-256 of everything [`scan_text`] reads: the file's place and text, the package's
/// directory, what is watched and the query.
fn memo_key(file: &SourceFile, package_dir: &Path, watch: &Watch, query: &Query<'_>, text: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(file.path.as_os_str().as_encoded_bytes());
    field(file.rel.as_bytes());
    field(
        format!(
            "{:?} {:?} {:?} {}",
            file.target, file.crate_name, file.module, file.package
        )
        .as_bytes(),
    );
    field(package_dir.as_os_str().as_encoded_bytes());
    field(format!("{:?} {:?} {:?}", watch.crate_names, watch.dirs, watch.renames).as_bytes());
    for function in query.functions {
        field(format!("{:?} {}", function.path, function.method).as_bytes());
    }
    for pattern in query.patterns {
        field(format!("{} {:?}", pattern.regex.as_str(), pattern.search).as_bytes());
    }
    let forced = query.no_prefilter || query.parse_anyway.contains(&file.path);
    field(&[u8::from(forced)]);
    field(text.as_bytes());
    hasher.finalize().into()
}

/// Scans one file's `text` (see [`scan_file`]).
fn scan_text(
    file: &SourceFile,
    package_dir: &Path,
    watch: &Watch,
    filter: &Prefilter,
    query: &Query<'_>,
    text: &str,
    mut scan: FileScan,
) -> FileScan {
    let file_test = file.target.is_test();

    // Text patterns are matched on the text itself; they never make a file parsed, so what
    // the parser finds does not depend on which other rules exist.
    for (index, pattern) in query.patterns.iter().enumerate() {
        if pattern.search == SearchIn::Text {
            for found in pattern.regex.find_iter(text) {
                scan.facts.push(Fact {
                    span: text_span(text, found.start(), found.end()),
                    kind: FactKind::Pattern { pattern: index },
                    form: "text",
                    in_test: file_test,
                    module: file.module.clone(),
                });
            }
        }
    }

    let literal_patterns: Vec<&Regex> = query
        .patterns
        .iter()
        .filter(|pattern| pattern.search == SearchIn::StringLiterals)
        .map(|pattern| &pattern.regex)
        .collect();
    // Doc-tests are compiled for library targets only, unless `doctest = false`.
    let doc_tests = file.doc_tests;
    let forced = query.no_prefilter || query.parse_anyway.contains(&file.path);
    let lexed = filter.lex(text, &literal_patterns, doc_tests, forced);
    // A file declaring an out-of-line test module (`#[cfg(test)] mod tests;`) is parsed even
    // when nothing watched appears in it: its child file is test code only if this is known.
    let declares_test_module = text.contains("cfg") && OUT_OF_LINE_TEST_MODULE.is_match(text);
    let parse = forced || lexed.parse || declares_test_module;

    let mut scanner = Scanner::new(file, package_dir, watch, query, file_test);
    if parse {
        scan.parsed = true;
        match syn::parse_file(text) {
            Ok(ast) => scanner.scan_ast(&ast),
            Err(_) => {
                scan.parse_failed = true;
                match TokenStream::from_str(text) {
                    Ok(tokens) => scanner.scan_tokens(tokens),
                    Err(_) => scan.unscannable = true,
                }
            }
        }
    }
    scan.facts.append(&mut scanner.facts);
    scan.macros = scanner.macros;
    scan.macros_unparsed = scanner.macros_unparsed;
    scan.test_modules = scanner.test_modules;
    scan.inline_modules = scanner.inline_modules;
    scan.path_modules = scanner.path_modules;
    for test in &lexed.doc_tests {
        scan.doc_tests += 1;
        scan.facts
            .extend(scan_doc_test(text, test, file, package_dir, watch, query));
    }
    scan.facts.sort();
    scan.facts.dedup();
    scan
}

/// Scans one doc-test as rustdoc compiles it: as a file, or wrapped in `fn main() { .. }` when
/// it is a list of statements. Its facts are test code (a doc-test is a test crate that may use
/// dev-dependencies), with the form `doc-test` and spans in the file's own lines.
fn scan_doc_test(
    text: &str,
    test: &DocTest,
    file: &SourceFile,
    package_dir: &Path,
    watch: &Watch,
    query: &Query<'_>,
) -> Vec<Fact> {
    let mut scanner = Scanner::new(file, package_dir, watch, query, true);
    let mut line_shift = 0;
    let ast = syn::parse_file(&test.code).ok().or_else(|| {
        line_shift = 1;
        syn::parse_file(&format!("fn main() {{\n{}\n}}", test.code)).ok()
    });
    match ast {
        Some(ast) => scanner.scan_ast(&ast),
        None => {
            line_shift = 0;
            let Ok(tokens) = TokenStream::from_str(&test.code) else {
                return Vec::new();
            };
            scanner.scan_tokens(tokens);
        }
    }
    let place = |line: u32, column: u32| -> Option<(u32, u32)> {
        let index = usize::try_from(line.checked_sub(1 + line_shift)?).ok()?;
        let start = *test.line_starts.get(index)?;
        let file_line = line_of(text, start);
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let file_column = u32::try_from(text[line_start..start].chars().count()).unwrap_or(u32::MAX) + column;
        Some((file_line, file_column))
    };
    scanner
        .facts
        .into_iter()
        .filter_map(|mut fact| {
            let (line, column) = place(fact.span.line, fact.span.column)?;
            let (end_line, end_column) = place(fact.span.end_line, fact.span.end_column).unwrap_or((line, column));
            fact.span = Span {
                line,
                column,
                end_line,
                end_column,
            };
            fact.form = "doc-test";
            fact.in_test = true;
            Some(fact)
        })
        .collect()
}

fn text_span(text: &str, start: usize, end: usize) -> Span {
    let column = |offset: usize| {
        let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
        u32::try_from(text[line_start..offset].chars().count() + 1).unwrap_or(u32::MAX)
    };
    Span {
        line: line_of(text, start),
        column: column(start),
        end_line: line_of(text, end),
        end_column: column(end),
    }
}

struct Scanner<'a> {
    file: &'a SourceFile,
    package_dir: &'a Path,
    watch: &'a Watch,
    query: &'a Query<'a>,
    /// `use` aliases in this file: visible name → full path (crate first).
    imports: BTreeMap<String, Vec<Vec<String>>>,
    /// Modules glob-imported in this file (full paths).
    globs: Vec<Vec<String>>,
    /// Names of modules declared in this file (they shadow crate names in relative paths).
    local_mods: BTreeSet<String>,
    /// Names this file imports from its own crate (`use crate::x`, `use super::x as y`): they
    /// shadow crate names in relative paths too.
    local_imports: BTreeSet<String>,
    module: String,
    in_test: bool,
    facts: Vec<Fact>,
    macros: u64,
    macros_unparsed: u64,
    test_modules: Vec<String>,
    inline_modules: Vec<String>,
    /// `#[path]` modules declared here: (file, module path, in test code).
    path_modules: Vec<(PathBuf, String, bool)>,
}

/// Whether `attr` marks test code: `#[test]`, `#[tokio::test]`, `#[cfg(test)]`.
pub(crate) fn is_test_attr(attr: &syn::Attribute) -> bool {
    let path = attr.path();
    if path.segments.last().is_some_and(|segment| segment.ident == "test") {
        return true; // #[test], #[tokio::test]
    }
    if path.is_ident("cfg")
        && let syn::Meta::List(list) = &attr.meta
    {
        let tokens = list.tokens.to_string();
        let has = |word: &str| {
            tokens
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .any(|w| w == word)
        };
        return has("test") && !has("not");
    }
    false
}

impl<'a> Scanner<'a> {
    fn new(file: &'a SourceFile, package_dir: &'a Path, watch: &'a Watch, query: &'a Query<'a>, in_test: bool) -> Self {
        Scanner {
            file,
            package_dir,
            watch,
            query,
            imports: BTreeMap::new(),
            globs: Vec::new(),
            local_mods: BTreeSet::new(),
            local_imports: BTreeSet::new(),
            module: file.module.clone().unwrap_or_default(),
            in_test,
            facts: Vec::new(),
            macros: 0,
            macros_unparsed: 0,
            test_modules: Vec::new(),
            inline_modules: Vec::new(),
            path_modules: Vec::new(),
        }
    }

    /// Collects the file's imports and local modules (file-wide), then scans it.
    fn scan_ast(&mut self, ast: &syn::File) {
        Collector { scanner: self }.visit_file(ast);
        self.visit_file(ast);
    }

    fn push(&mut self, span: Span, kind: FactKind, form: &'static str) {
        self.facts.push(Fact {
            span,
            kind,
            form,
            in_test: self.in_test,
            module: self.file.module.as_ref().map(|_| self.module.clone()),
        });
    }

    fn crate_root(&self) -> String {
        self.file.crate_name.clone().unwrap_or_default()
    }

    /// Canonical full paths `segments` may denote, for function matching.
    fn resolve(&self, leading_colon: bool, segments: &[String]) -> Vec<Vec<String>> {
        let Some(first) = segments.first() else {
            return Vec::new();
        };
        let rest = &segments[1..];
        let join = |base: &[String], rest: &[String]| base.iter().chain(rest).cloned().collect::<Vec<_>>();
        let module: Vec<String> = self
            .module
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if leading_colon {
            let mut path = segments.to_vec();
            if let Some(real) = self.watch.renames.get(first) {
                path[0] = real.clone();
            }
            return vec![path];
        }
        match first.as_str() {
            "crate" => return vec![join(&[self.crate_root()], rest)],
            "self" => return vec![join(&module, rest)],
            "super" => {
                let mut base = module.clone();
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                return vec![join(&base, rest)];
            }
            "Self" => return Vec::new(),
            _ => {}
        }
        let mut out = Vec::new();
        if let Some(targets) = self.imports.get(first) {
            for target in targets {
                out.push(join(target, rest));
            }
        }
        let mut external = segments.to_vec();
        if let Some(real) = self.watch.renames.get(first) {
            external[0] = real.clone();
        }
        out.push(external);
        out.push(join(&module, segments));
        for glob in &self.globs {
            out.push(join(glob, segments));
        }
        out
    }

    /// Canonical full path of a `use` prefix written in the current module.
    fn canonical_use(&self, leading_colon: bool, segments: &[String]) -> Vec<String> {
        let mut path = segments.to_vec();
        let Some(first) = segments.first() else { return path };
        if !leading_colon {
            if matches!(first.as_str(), "crate" | "self" | "super") {
                return self.resolve(false, segments).into_iter().next().unwrap_or_default();
            }
            if self.local_mods.contains(first) {
                let mut local: Vec<String> = self
                    .module
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                local.extend(path);
                return local;
            }
        }
        if let Some(real) = self.watch.renames.get(first) {
            path[0] = real.clone();
        }
        path
    }

    fn function_matches(&self, candidates: &[Vec<String>]) -> Option<usize> {
        self.query
            .functions
            .iter()
            .position(|function| candidates.iter().any(|candidate| candidate == &function.path))
    }

    fn is_crate_ref(&self, leading_colon: bool, first: &str) -> bool {
        self.watch.crate_names.contains(first)
            && (leading_colon || !(self.local_mods.contains(first) || self.local_imports.contains(first)))
    }

    /// A `use` tree: crate references (first segment) and function imports (leaves).
    fn use_tree(&mut self, tree: &syn::UseTree, prefix: &mut Vec<String>, leading_colon: bool) {
        let top = prefix.is_empty();
        match tree {
            syn::UseTree::Path(path) => {
                let name = path.ident.unraw().to_string();
                if top && self.is_crate_ref(leading_colon, &name) {
                    self.push(
                        Span::of_span(path.ident.span()),
                        FactKind::CrateRef { name: name.clone() },
                        "use",
                    );
                }
                prefix.push(name);
                self.use_tree(&path.tree, prefix, leading_colon);
                prefix.pop();
            }
            syn::UseTree::Name(leaf) => {
                let name = leaf.ident.unraw().to_string();
                if top && self.is_crate_ref(leading_colon, &name) {
                    self.push(
                        Span::of_span(leaf.ident.span()),
                        FactKind::CrateRef { name: name.clone() },
                        "use",
                    );
                }
                self.use_leaf(prefix, &name, leaf.ident.span(), leading_colon);
            }
            syn::UseTree::Rename(rename) => {
                let name = rename.ident.unraw().to_string();
                if top && self.is_crate_ref(leading_colon, &name) {
                    self.push(
                        Span::of_span(rename.ident.span()),
                        FactKind::CrateRef { name: name.clone() },
                        "use",
                    );
                }
                self.use_leaf(prefix, &name, rename.ident.span(), leading_colon);
            }
            syn::UseTree::Glob(_) => {}
            syn::UseTree::Group(group) => {
                for item in &group.items {
                    self.use_tree(item, prefix, leading_colon);
                }
            }
        }
    }

    fn use_leaf(&mut self, prefix: &[String], name: &str, span: proc_macro2::Span, leading_colon: bool) {
        let mut segments = prefix.to_vec();
        if name != "self" {
            segments.push(name.to_owned());
        }
        let full = self.canonical_use(leading_colon, &segments);
        if let Some(function) = self.function_matches(&[full]) {
            self.push(Span::of_span(span), FactKind::FnRef { function }, "import");
        }
    }

    fn check_path(&mut self, path: &syn::Path, form_for_fn: &'static str) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.unraw().to_string()).collect();
        let leading = path.leading_colon.is_some();
        if let Some(first) = path.segments.first()
            && (segments.len() >= 2 || leading)
            && self.is_crate_ref(leading, &segments[0])
        {
            self.push(
                Span::of_span(first.ident.span()),
                FactKind::CrateRef {
                    name: segments[0].clone(),
                },
                "path",
            );
        }
        if !self.query.functions.is_empty() {
            let candidates = self.resolve(leading, &segments);
            if let Some(function) = self.function_matches(&candidates) {
                let span = path.segments.last().map_or_else(|| path.span(), |s| s.ident.span());
                self.push(Span::of_span(span), FactKind::FnRef { function }, form_for_fn);
            }
        }
    }

    fn check_literal(&mut self, value: &str, span: Span, form: &'static str) {
        for (index, pattern) in self.query.patterns.iter().enumerate() {
            if pattern.search == SearchIn::StringLiterals && pattern.regex.is_match(value) {
                self.push(span, FactKind::Pattern { pattern: index }, form);
            }
        }
    }

    fn check_target_path(&mut self, target: PathBuf, span: Span, form: &'static str) {
        let normalized = normalize(&target);
        if self.watch.dirs.iter().any(|dir| normalized.starts_with(dir)) {
            self.push(span, FactKind::Include { target: normalized }, form);
        }
    }

    /// Remembers an out-of-line `#[path]` module's file, for files no member directory holds.
    fn note_path_module(&mut self, target: &Path, item: &syn::ItemMod, test: bool) {
        if item.content.is_none() {
            let module = format!("{}::{}", self.module, item.ident.unraw());
            self.path_modules
                .push((normalize(target), module, self.in_test || test));
        }
    }

    fn file_dir(&self) -> PathBuf {
        self.file.path.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    /// The file an `include!`-like argument names: a string literal, or
    /// `concat!(env!("CARGO_MANIFEST_DIR"), "...")`.
    fn include_target(&self, tokens: &TokenStream) -> Option<PathBuf> {
        let expr: syn::Expr = syn::parse2(tokens.clone()).ok()?;
        match expr {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(lit),
                ..
            }) => Some(self.file_dir().join(lit.value())),
            syn::Expr::Macro(mac) if mac.mac.path.is_ident("concat") => {
                let parts: Punctuated<syn::Expr, syn::Token![,]> =
                    mac.mac.parse_body_with(Punctuated::parse_terminated).ok()?;
                let mut text = String::new();
                for part in parts {
                    match part {
                        syn::Expr::Lit(syn::ExprLit {
                            lit: syn::Lit::Str(lit),
                            ..
                        }) => text.push_str(&lit.value()),
                        syn::Expr::Macro(inner) if inner.mac.path.is_ident("env") => {
                            let name: syn::LitStr = inner.mac.parse_body().ok()?;
                            if name.value() != "CARGO_MANIFEST_DIR" {
                                return None;
                            }
                            text.push_str(&self.package_dir.to_string_lossy());
                        }
                        _ => return None,
                    }
                }
                let path = PathBuf::from(&text);
                Some(if path.is_absolute() {
                    path
                } else {
                    self.file_dir().join(path)
                })
            }
            _ => None,
        }
    }

    /// Scans a token stream that was not (or could not be) parsed as Rust: paths are runs of
    /// `[::] ident (:: ident)*`; string literals are checked against patterns and, when they
    /// parse as paths, as crate references.
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut index = 0;
        while index < trees.len() {
            match &trees[index] {
                TokenTree::Group(group) => {
                    self.scan_tokens(group.stream());
                    index += 1;
                }
                TokenTree::Literal(literal) => {
                    if let Ok(syn::Lit::Str(lit)) = syn::parse2::<syn::Lit>(TokenTree::Literal(literal.clone()).into())
                    {
                        let span = Span::of_span(literal.span());
                        self.check_literal(&lit.value(), span, "string-literal");
                    }
                    index += 1;
                }
                TokenTree::Ident(ident) => {
                    let leading = index >= 2 && is_path_sep(&trees, index - 2) && !prev_is_path_part(&trees, index - 2);
                    let preceded_by_sep = index >= 2 && is_path_sep(&trees, index - 2);
                    if preceded_by_sep && !leading {
                        index += 1;
                        continue;
                    }
                    // Collect the run ident (:: ident)*.
                    let mut segments = vec![ident.unraw().to_string()];
                    let mut spans = vec![ident.span()];
                    let mut cursor = index + 1;
                    while is_path_sep(&trees, cursor) {
                        if let Some(TokenTree::Ident(next)) = trees.get(cursor + 2) {
                            segments.push(next.unraw().to_string());
                            spans.push(next.span());
                            cursor += 3;
                        } else {
                            break;
                        }
                    }
                    let keyword_before = index >= 1
                        && matches!(&trees[index - 1], TokenTree::Ident(word) if word == "use" || word == "crate");
                    let method_call = index >= 1
                        && matches!(&trees[index - 1], TokenTree::Punct(p) if p.as_char() == '.')
                        && matches!(trees.get(index + 1), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis);
                    if method_call {
                        self.method_call(&segments[0], spans[0]);
                    } else {
                        if (segments.len() >= 2 || leading || keyword_before)
                            && self.is_crate_ref(leading, &segments[0])
                        {
                            self.push(
                                Span::of_span(spans[0]),
                                FactKind::CrateRef {
                                    name: segments[0].clone(),
                                },
                                "macro",
                            );
                        }
                        if !self.query.functions.is_empty() {
                            let candidates = self.resolve(leading, &segments);
                            if let Some(function) = self.function_matches(&candidates) {
                                let span = spans.last().copied().unwrap_or_else(|| ident.span());
                                self.push(Span::of_span(span), FactKind::FnRef { function }, "macro");
                            }
                        }
                    }
                    index = cursor.max(index + 1);
                }
                TokenTree::Punct(_) => index += 1,
            }
        }
    }

    fn method_call(&mut self, name: &str, span: proc_macro2::Span) {
        if let Some(function) = self
            .query
            .functions
            .iter()
            .position(|function| function.method && function.path.last().is_some_and(|last| last == name))
        {
            self.push(Span::of_span(span), FactKind::FnRef { function }, "method-call");
        }
    }

    fn scan_macro(&mut self, mac: &syn::Macro) {
        self.macros += 1;
        let name = mac
            .path
            .segments
            .last()
            .map(|s| s.ident.unraw().to_string())
            .unwrap_or_default();
        // `quote!` and its kin build tokens for another crate (a proc macro's output, generated
        // source): the paths in them are that crate's references, not this one's.
        if QUOTE_MACROS.contains(&name.as_str()) {
            return;
        }
        if matches!(name.as_str(), "include" | "include_str" | "include_bytes") {
            if let Some(target) = self.include_target(&mac.tokens) {
                // `include!` pastes Rust into this module: scanned with this crate when the
                // file is not its own.
                if name == "include" && target.extension().is_some_and(|e| e == "rs") {
                    self.path_modules
                        .push((normalize(&target), self.module.clone(), self.in_test));
                }
                self.check_target_path(target, Span::of_span(mac.path.span()), "include");
            }
            return;
        }
        let parses = syn::parse2::<syn::File>(mac.tokens.clone()).is_ok()
            || mac.parse_body_with(Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated).is_ok()
            || mac.parse_body_with(syn::Block::parse_within).is_ok()
            // `vec![x; n]`: the body of an array or repeat expression.
            || syn::parse2::<syn::Expr>(TokenTree::Group(proc_macro2::Group::new(Delimiter::Bracket, mac.tokens.clone())).into()).is_ok()
            // `matches!(expr, pattern if guard)`.
            || mac.parse_body_with(parse_matches_body).is_ok();
        if !parses {
            self.macros_unparsed += 1;
        }
        self.scan_tokens(mac.tokens.clone());
    }

    fn check_attribute_strings(&mut self, tokens: TokenStream) {
        for tree in tokens {
            match tree {
                TokenTree::Group(group) => self.check_attribute_strings(group.stream()),
                TokenTree::Literal(literal) => {
                    let Ok(syn::Lit::Str(lit)) = syn::parse2::<syn::Lit>(TokenTree::Literal(literal.clone()).into())
                    else {
                        continue;
                    };
                    let span = Span::of_span(literal.span());
                    self.check_literal(&lit.value(), span, "string-literal");
                    if let Ok(path) = syn::parse_str::<syn::Path>(lit.value().trim())
                        && let Some(first) = path.segments.first()
                        && self.is_crate_ref(path.leading_colon.is_some(), &first.ident.unraw().to_string())
                    {
                        self.push(
                            span,
                            FactKind::CrateRef {
                                name: first.ident.unraw().to_string(),
                            },
                            "attribute-string",
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// The string literals of a prose attribute, for pattern rules only.
    fn check_prose_strings(&mut self, tokens: TokenStream) {
        for tree in tokens {
            match tree {
                TokenTree::Group(group) => self.check_prose_strings(group.stream()),
                TokenTree::Literal(literal) => {
                    if let Ok(syn::Lit::Str(lit)) = syn::parse2::<syn::Lit>(TokenTree::Literal(literal.clone()).into())
                    {
                        self.check_literal(&lit.value(), Span::of_span(literal.span()), "string-literal");
                    }
                }
                _ => {}
            }
        }
    }

    fn with_attrs<F: FnOnce(&mut Self)>(&mut self, attrs: &[syn::Attribute], body: F) {
        let was = self.in_test;
        if attrs.iter().any(is_test_attr) {
            self.in_test = true;
        }
        body(self);
        self.in_test = was;
    }
}

fn attrs_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(is_test_attr)
}

/// `tokens` with every literal left out (groups kept, with their delimiters and spans).
fn without_literals(tokens: TokenStream) -> TokenStream {
    tokens
        .into_iter()
        .filter_map(|tree| match tree {
            TokenTree::Literal(_) => None,
            TokenTree::Group(group) => {
                let mut inner = proc_macro2::Group::new(group.delimiter(), without_literals(group.stream()));
                inner.set_span(group.span());
                Some(TokenTree::Group(inner))
            }
            other => Some(other),
        })
        .collect()
}

fn parse_matches_body(input: syn::parse::ParseStream<'_>) -> syn::Result<()> {
    input.parse::<syn::Expr>()?;
    input.parse::<syn::Token![,]>()?;
    syn::Pat::parse_multi_with_leading_vert(input)?;
    if input.peek(syn::Token![if]) {
        input.parse::<syn::Token![if]>()?;
        input.parse::<syn::Expr>()?;
    }
    if input.peek(syn::Token![,]) {
        input.parse::<syn::Token![,]>()?;
    }
    Ok(())
}

fn is_path_sep(trees: &[TokenTree], index: usize) -> bool {
    matches!(
        (trees.get(index), trees.get(index + 1)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
            if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':'
    )
}

/// Whether the `::` at `sep` continues a path (an identifier or `>` before it).
fn prev_is_path_part(trees: &[TokenTree], sep: usize) -> bool {
    sep >= 1
        && match &trees[sep - 1] {
            TokenTree::Ident(_) => true,
            TokenTree::Punct(p) => p.as_char() == '>',
            _ => false,
        }
}

/// Inline modules declared in `file` (full module paths), parsing it on demand.
pub fn inline_modules(file: &SourceFile) -> Vec<String> {
    struct Mods {
        path: Vec<String>,
        out: Vec<String>,
    }
    impl<'ast> Visit<'ast> for Mods {
        fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
            if item.content.is_some() {
                self.path.push(item.ident.unraw().to_string());
                self.out.push(self.path.join("::"));
                visit::visit_item_mod(self, item);
                self.path.pop();
            }
        }
    }
    let Some(module) = &file.module else { return Vec::new() };
    let Some(ast) = std::fs::read_to_string(&file.path)
        .ok()
        .and_then(|text| syn::parse_file(&text).ok())
    else {
        return Vec::new();
    };
    let mut mods = Mods {
        path: module.split("::").map(str::to_owned).collect(),
        out: Vec::new(),
    };
    mods.visit_file(&ast);
    mods.out
}

/// Resolves `.` and `..` without touching the file system.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// First pass: `use` imports, globs and local module names, file-wide (an over-approximation of
/// Rust's block scoping that can only add matches).
struct Collector<'s, 'a> {
    scanner: &'s mut Scanner<'a>,
}

impl Collector<'_, '_> {
    /// `visible`, imported by a `use` of `segments`, names an item of this crate when the path
    /// starts at `crate`, `self` or `super` (a module sharing a dependency's name, say).
    fn note_local_import(&mut self, leading: bool, segments: &[String], visible: &str) {
        if !leading
            && segments
                .first()
                .is_some_and(|first| matches!(first.as_str(), "crate" | "self" | "super"))
        {
            self.scanner.local_imports.insert(visible.to_owned());
        }
    }

    fn collect_use(&mut self, tree: &syn::UseTree, prefix: &mut Vec<String>, leading: bool) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.unraw().to_string());
                self.collect_use(&path.tree, prefix, leading);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                let mut segments = prefix.clone();
                let visible = if name.ident == "self" {
                    prefix.last().cloned().unwrap_or_default()
                } else {
                    segments.push(name.ident.unraw().to_string());
                    name.ident.unraw().to_string()
                };
                let full = self.scanner.canonical_use(leading, &segments);
                self.note_local_import(leading, &segments, &visible);
                self.scanner.imports.entry(visible).or_default().push(full);
            }
            syn::UseTree::Rename(rename) => {
                let mut segments = prefix.clone();
                if rename.ident != "self" {
                    segments.push(rename.ident.unraw().to_string());
                }
                let full = self.scanner.canonical_use(leading, &segments);
                self.note_local_import(leading, &segments, &rename.rename.to_string());
                // `use other::error as wasmtime;`: a rename onto a crate's name binds that name
                // to something else in this file (a re-export kept under its own name, `use
                // hop::engine;`, still counts as the crate).
                let renamed = rename.rename.unraw().to_string();
                if segments.last().is_none_or(|last| *last != renamed)
                    && segments.first().is_none_or(|first| *first != renamed)
                {
                    self.scanner.local_imports.insert(renamed);
                }
                self.scanner
                    .imports
                    .entry(rename.rename.to_string())
                    .or_default()
                    .push(full);
            }
            syn::UseTree::Glob(_) => {
                let full = self.scanner.canonical_use(leading, prefix);
                self.scanner.globs.push(full);
            }
            syn::UseTree::Group(group) => {
                for item in &group.items {
                    self.collect_use(item, prefix, leading);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_, '_> {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.scanner.local_mods.insert(item.ident.unraw().to_string());
        visit::visit_item_mod(self, item);
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.collect_use(&item.tree, &mut Vec::new(), item.leading_colon.is_some());
    }

    fn visit_item_extern_crate(&mut self, item: &'ast syn::ItemExternCrate) {
        if let Some((_, rename)) = &item.rename {
            let real = item.ident.unraw().to_string();
            let real = self.scanner.watch.renames.get(&real).cloned().unwrap_or(real);
            self.scanner
                .imports
                .entry(rename.to_string())
                .or_default()
                .push(vec![real]);
        }
    }
}

/// Macros whose bodies are tokens emitted for another crate (`quote`'s and `syn`'s).
const QUOTE_MACROS: &[&str] = &["quote", "quote_spanned", "parse_quote", "parse_quote_spanned"];

/// The tool namespaces rustc resolves attributes in before any crate (`#[rustfmt::skip]`,
/// `#[clippy::msrv]`, `#[diagnostic::on_unimplemented]`, `#[rust_analyzer::rust_fixture]`):
/// an attribute path starting with one of them names a tool, never a crate of that name.
const TOOL_ATTRIBUTE_NAMESPACES: &[&str] = &["rustfmt", "clippy", "diagnostic", "rust_analyzer", "miri", "rustdoc"];

/// Attributes whose strings are never paths the compiler resolves: prose for people (a
/// deprecation note, a lint's reason, a `must_use` message), configuration predicates
/// (`#[cfg(feature = "cranelift")]`) and linker names (`#[link(wasm_import_module = "..")]`).
const PROSE_ATTRIBUTES: &[&str] = &[
    "deprecated",
    "must_use",
    "allow",
    "expect",
    "warn",
    "deny",
    "forbid",
    "cfg",
    "link",
    "link_name",
    "export_name",
    "link_section",
    "target_feature",
    "crate_name",
    "crate_type",
];

impl<'ast> Visit<'ast> for Scanner<'_> {
    fn visit_attribute(&mut self, attr: &'ast syn::Attribute) {
        if attr.path().is_ident("doc") {
            return;
        }
        let tool = attr.path().segments.len() > 1
            && attr
                .path()
                .segments
                .first()
                .is_some_and(|first| TOOL_ATTRIBUTE_NAMESPACES.contains(&first.ident.unraw().to_string().as_str()));
        let prose = tool || PROSE_ATTRIBUTES.iter().any(|name| attr.path().is_ident(name));
        match &attr.meta {
            // Pattern rules still see the strings of prose attributes; crate references are
            // not looked for in them.
            syn::Meta::List(list) if prose => self.check_prose_strings(list.tokens.clone()),
            // `#[cfg_attr(predicate, attrs..)]`: the predicate's strings are feature names and
            // target values (`feature = "serde"`), the attributes after it are scanned.
            syn::Meta::List(list) if attr.path().is_ident("cfg_attr") => {
                let mut trees = list.tokens.clone().into_iter();
                let predicate: TokenStream = trees
                    .by_ref()
                    .take_while(|tree| !matches!(tree, TokenTree::Punct(p) if p.as_char() == ','))
                    .collect();
                self.check_prose_strings(predicate);
                let rest: TokenStream = trees.collect();
                self.check_attribute_strings(rest.clone());
                self.scan_tokens(without_literals(rest));
            }
            syn::Meta::List(list) => {
                self.check_attribute_strings(list.tokens.clone());
                // Paths among the arguments: `#[derive(krate::X)]`, `#[attr(krate::f)]` (the
                // strings were checked just above, so the token scan does not see them again).
                self.scan_tokens(without_literals(list.tokens.clone()));
            }
            syn::Meta::NameValue(value) => {
                if let syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(lit),
                    ..
                }) = &value.value
                {
                    self.check_literal(&lit.value(), Span::of_span(lit.span()), "string-literal");
                }
            }
            syn::Meta::Path(_) => {}
        }
        if !tool {
            self.check_path(attr.path(), "path");
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        for attr in &item.attrs {
            if attr.path().is_ident("path")
                && let syn::Meta::NameValue(value) = &attr.meta
                && let syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(lit),
                    ..
                }) = &value.value
            {
                let target = self.file_dir().join(lit.value());
                self.note_path_module(&target, item, attrs_test(&item.attrs));
                self.check_target_path(target, Span::of_span(lit.span()), "path-attribute");
            }
            // `#[cfg_attr(unix, path = "...")]`: every `path = "..."` among its attributes, on
            // whichever platform it applies.
            if attr.path().is_ident("cfg_attr")
                && let syn::Meta::List(list) = &attr.meta
            {
                let trees: Vec<TokenTree> = list.tokens.clone().into_iter().collect();
                for window in trees.windows(3) {
                    if let [
                        TokenTree::Ident(name),
                        TokenTree::Punct(equals),
                        TokenTree::Literal(literal),
                    ] = window
                        && name == "path"
                        && equals.as_char() == '='
                        && let Ok(syn::Lit::Str(lit)) =
                            syn::parse2::<syn::Lit>(TokenTree::Literal(literal.clone()).into())
                    {
                        let target = self.file_dir().join(lit.value());
                        self.note_path_module(&target, item, attrs_test(&item.attrs));
                        self.check_target_path(target, Span::of_span(literal.span()), "path-attribute");
                    }
                }
            }
        }
        let test = item.attrs.iter().any(is_test_attr);
        let child = format!("{}::{}", self.module, item.ident);
        if test && item.content.is_none() {
            self.test_modules.push(child.clone());
        }
        if item.content.is_some() {
            self.inline_modules.push(child.clone());
        }
        self.with_attrs(&item.attrs, |this| {
            let outer = std::mem::replace(&mut this.module, child);
            visit::visit_item_mod(this, item);
            this.module = outer;
        });
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        self.with_attrs(&item.attrs, |this| visit::visit_item_fn(this, item));
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        self.with_attrs(&item.attrs, |this| visit::visit_item_impl(this, item));
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        self.with_attrs(&item.attrs, |this| visit::visit_impl_item_fn(this, item));
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.with_attrs(&item.attrs, |this| {
            for attr in &item.attrs {
                this.visit_attribute(attr);
            }
            this.use_tree(&item.tree, &mut Vec::new(), item.leading_colon.is_some());
        });
    }

    fn visit_item_extern_crate(&mut self, item: &'ast syn::ItemExternCrate) {
        let name = item.ident.unraw().to_string();
        if self.watch.crate_names.contains(&name) {
            self.push(
                Span::of_span(item.ident.span()),
                FactKind::CrateRef { name },
                "extern-crate",
            );
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.check_path(path, "path");
        visit::visit_path(self, path);
    }

    fn visit_expr_path(&mut self, expr: &'ast syn::ExprPath) {
        for attr in &expr.attrs {
            self.visit_attribute(attr);
        }
        if let Some(qself) = &expr.qself {
            // UFCS: `<Type>::f` and `<Type as Trait>::f` name `Type::f` (and `Trait::f`).
            self.visit_type(&qself.ty);
            let rest: Vec<String> = expr
                .path
                .segments
                .iter()
                .skip(qself.position)
                .map(|s| s.ident.unraw().to_string())
                .collect();
            let mut candidates = Vec::new();
            if let syn::Type::Path(type_path) = &*qself.ty {
                let segments: Vec<String> = type_path
                    .path
                    .segments
                    .iter()
                    .map(|s| s.ident.unraw().to_string())
                    .collect();
                for base in self.resolve(type_path.path.leading_colon.is_some(), &segments) {
                    candidates.push(base.into_iter().chain(rest.iter().cloned()).collect::<Vec<_>>());
                }
            }
            let trait_segments: Vec<String> = expr.path.segments.iter().map(|s| s.ident.unraw().to_string()).collect();
            candidates.extend(self.resolve(expr.path.leading_colon.is_some(), &trait_segments));
            if let Some(function) = self.function_matches(&candidates) {
                let span = expr
                    .path
                    .segments
                    .last()
                    .map_or_else(|| expr.span(), |s| s.ident.span());
                self.push(Span::of_span(span), FactKind::FnRef { function }, "expression");
            }
            for segment in &expr.path.segments {
                self.visit_path_arguments(&segment.arguments);
            }
            return;
        }
        self.check_path(&expr.path, "expression");
        for segment in &expr.path.segments {
            self.visit_path_arguments(&segment.arguments);
        }
    }

    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        self.method_call(&call.method.to_string(), call.method.span());
        visit::visit_expr_method_call(self, call);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.check_path(&mac.path, "path");
        self.scan_macro(mac);
    }

    fn visit_lit_str(&mut self, lit: &'ast syn::LitStr) {
        self.check_literal(&lit.value(), Span::of_span(lit.span()), "string-literal");
    }
}
