//! Runs both layers and the exemptions over a loaded workspace.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::Error;
use crate::config::{Config, Date, DependencyRule, Exemption, module_has_prefix};
use crate::report::{ChainEdge, Code, Exempted, Finding, Report, SpanJson};
use crate::source::{self, FactKind, FileScan, Query, SourceFile, Watch, WatchedFn};
use crate::workspace::{EdgeKind, TargetKind, Workspace};

/// How to run a check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Pass `--offline` to `cargo metadata`.
    pub offline: bool,
    /// Parse every file even when the pre-filter rules it out (benchmarks, and the selftest's
    /// proof that the pre-filter hides nothing).
    pub no_prefilter: bool,
    /// Files (absolute) parsed even when the pre-filter rules them out: the selftest's proof
    /// on the one file a mutant changed.
    pub parse_anyway: Vec<PathBuf>,
    /// Reuse scans of files already scanned in this process with the same text and query
    /// (`selftest`, which checks hundreds of times with one file changed; never a one-off
    /// check or a benchmark).
    pub memo: bool,
    /// The date exemptions expire against (default: today, UTC).
    pub today: Option<Date>,
}

/// The help line of a rule finding: the rule author's hint when there is one, what usually
/// fixes this kind of finding (`fix`), and how to accept it on purpose.
fn advice(author: Option<&str>, fix: &str, adr_dir: &str) -> String {
    let mut out = String::new();
    if let Some(hint) = author {
        out.push_str(hint.trim_end_matches(['.', ' ']));
        out.push_str("; otherwise ");
    }
    out.push_str(fix);
    out.push_str("; if it is intended, write an ADR in ");
    out.push_str(adr_dir);
    out.push_str("/, get it Accepted, and add an [[exemption]] citing it to guardrails.toml (narrow: one file or module, one target)");
    out
}

/// `a`, `a` or `b`, `a`, `b` or `c`: scopes as a list for a sentence.
fn either(scopes: &[crate::config::Scope]) -> String {
    let names: Vec<String> = scopes.iter().map(|scope| format!("`{scope}`")).collect();
    match names.as_slice() {
        [] => "nowhere".to_owned(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// A dependency rule resolved against the workspace.
struct Resolved<'c> {
    rule: &'c DependencyRule,
    from: Vec<usize>,
    /// Forbidden packages, for each source (with `@workspace` the source itself is excluded).
    forbidden: Vec<BTreeSet<usize>>,
}

/// A dependency rule's packages, as indices into [`Workspace::packages`].
#[derive(Debug, Clone)]
pub struct RuleTargets {
    /// Its source packages.
    pub from: Vec<usize>,
    /// Per source (same order), the forbidden packages.
    pub forbidden: Vec<BTreeSet<usize>>,
}

/// For each dependency rule, in config order, the packages it relates.
///
/// # Errors
///
/// [`Error::UnknownCrate`] when a rule names a crate that does not exist.
pub fn rule_targets(workspace: &Workspace, config: &Config) -> Result<Vec<RuleTargets>, Error> {
    Ok(resolve_rules(workspace, config)?
        .0
        .into_iter()
        .map(|resolved| RuleTargets {
            from: resolved.from,
            forbidden: resolved.forbidden,
        })
        .collect())
}

/// `entry` of `rule` as a glob.
///
/// # Errors
///
/// [`Error::Config`] naming the rule's line when it is not a valid glob.
fn rule_glob(config: &Config, rule: &DependencyRule, entry: &str) -> Result<globset::GlobMatcher, Error> {
    Ok(globset::Glob::new(entry)
        .map_err(|error| Error::Config {
            path: config.path.clone(),
            line: rule.line,
            message: format!("rule `{}`: `{entry}` is not a valid glob: {error}", rule.name),
        })?
        .compile_matcher())
}

/// The rules with their packages, and notes on forbidden names that match nothing yet.
fn resolve_rules<'c>(workspace: &Workspace, config: &'c Config) -> Result<(Vec<Resolved<'c>>, Vec<String>), Error> {
    let mut resolved = Vec::new();
    let mut notes = Vec::new();
    for rule in &config.dependency_rules {
        let mut from = BTreeSet::new();
        for entry in &rule.from {
            let matched: Vec<usize> = if entry.contains('/') || entry.contains('*') {
                let glob = rule_glob(config, rule, entry)?;
                workspace
                    .members
                    .iter()
                    .copied()
                    .filter(|&i| glob.is_match(workspace.relative(&workspace.packages[i].dir)))
                    .collect()
            } else {
                workspace.member(entry).into_iter().collect()
            };
            if matched.is_empty() {
                return Err(Error::UnknownCrate {
                    rule: rule.name.clone(),
                    name: entry.clone(),
                    what: "is not a workspace member (or matches no member directory)",
                });
            }
            from.extend(matched);
        }
        let mut forbidden_names = BTreeSet::new();
        let mut all_members = false;
        for entry in &rule.forbidden {
            if entry == "@workspace" {
                all_members = true;
                continue;
            }
            // A glob (`hir-*`) forbids every package whose name it matches, so a new one is
            // covered the day it appears.
            let matched: Vec<usize> = if entry.contains(['*', '?', '[']) {
                let glob = rule_glob(config, rule, entry)?;
                (0..workspace.packages.len())
                    .filter(|&i| glob.is_match(&workspace.packages[i].name))
                    .collect()
            } else {
                workspace.packages_named(entry)
            };
            if matched.is_empty() {
                // Forbidding a crate before anyone adds it is a rule worth having; a typo would
                // look the same, so it is said.
                notes.push(format!(
                    "rule `{}` forbids `{entry}`, which matches no package of the resolved dependency graph yet \
                     (it applies once one is added; check the spelling)",
                    rule.name
                ));
            }
            forbidden_names.extend(matched);
        }
        let from: Vec<usize> = from.into_iter().collect();
        let forbidden = from
            .iter()
            .map(|&source| {
                let mut set = forbidden_names.clone();
                if all_members {
                    set.extend(workspace.members.iter().copied());
                }
                set.remove(&source);
                set
            })
            .collect();
        resolved.push(Resolved { rule, from, forbidden });
    }
    Ok((resolved, notes))
}

/// Line, column and end column of a dependency's declaration in a manifest.
fn find_declaration(text: &str, kind: EdgeKind, platform: Option<&str>, keys: &[String]) -> Option<(u32, u32, u32)> {
    let squash = |s: &str| {
        s.chars()
            .filter(|c| !c.is_whitespace() && *c != '\'' && *c != '"')
            .collect::<String>()
    };
    let wanted_platform = platform.map(squash);
    let tables: &[&str] = match kind {
        EdgeKind::Normal => &["dependencies"],
        EdgeKind::Dev => &["dev-dependencies", "dev_dependencies"],
        EdgeKind::Build => &["build-dependencies", "build_dependencies"],
    };
    let mut in_section = false;
    for (index, line) in text.lines().enumerate() {
        let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let trimmed = line.trim_start();
        let indent = u32::try_from(line.len() - trimmed.len()).unwrap_or(0);
        if trimmed.starts_with('[') {
            let header = trimmed.trim_start_matches('[');
            let header = header.split(']').next().unwrap_or("").trim();
            let parts = split_header(header);
            let (section_platform, rest): (Option<String>, &[String]) =
                if parts.first().is_some_and(|p| p == "target") && parts.len() >= 3 {
                    (Some(squash(&parts[1])), &parts[2..])
                } else {
                    (None, &parts[..])
                };
            let table_matches = rest.first().is_some_and(|t| tables.contains(&t.as_str()));
            let platform_matches = section_platform == wanted_platform;
            in_section = table_matches && platform_matches && rest.len() == 1;
            if table_matches && platform_matches && rest.len() == 2 && keys.contains(&rest[1]) {
                let column = line.find(&rest[1][..]).unwrap_or(0);
                let column = u32::try_from(column + 1).unwrap_or(1);
                return Some((number, column, column + u32::try_from(rest[1].len()).unwrap_or(0)));
            }
            continue;
        }
        if !in_section {
            continue;
        }
        let key_end = trimmed
            .find(|c: char| c == '=' || c == '.' || c.is_whitespace())
            .unwrap_or(trimmed.len());
        let key = trimmed[..key_end].trim_matches(|c| c == '"' || c == '\'');
        if keys.iter().any(|k| k == key) {
            return Some((number, indent + 1, indent + 1 + u32::try_from(key_end).unwrap_or(0)));
        }
    }
    None
}

/// Splits a TOML table header on dots outside quotes.
fn split_header(header: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in header.chars() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '.') => parts.push(std::mem::take(&mut current).trim().to_owned()),
            _ => current.push(c),
        }
    }
    parts.push(current.trim().to_owned());
    parts
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn manifest_findings(workspace: &Workspace, resolved: &[Resolved<'_>], adr_dir: &str, findings: &mut Vec<Finding>) {
    for entry in resolved {
        let rule = entry.rule;
        for (position, &source) in entry.from.iter().enumerate() {
            let forbidden = &entry.forbidden[position];
            let reachable = can_reach(workspace, forbidden, rule);
            let package = &workspace.packages[source];
            let manifest_text = std::fs::read_to_string(&package.manifest_path).unwrap_or_default();
            let lines: Vec<&str> = manifest_text.lines().collect();
            for dep in &package.deps {
                for info in &dep.infos {
                    if !rule.edges.contains(&info.kind) || (!rule.include_tests && info.kind == EdgeKind::Dev) {
                        continue;
                    }
                    let first = ChainEdge {
                        from: package.name.clone(),
                        to: workspace.packages[dep.to].name.clone(),
                        kind: info.kind,
                        optional: info.optional,
                        platform: info.platform.clone(),
                    };
                    for (reached, chain) in reach(workspace, source, dep.to, first, forbidden, &reachable, rule) {
                        let to_name = &workspace.packages[dep.to].name;
                        let keys = vec![
                            to_name.clone(),
                            dep.extern_name.clone(),
                            dep.extern_name.replace('_', "-"),
                        ];
                        let (line, column, end_column) =
                            find_declaration(&manifest_text, info.kind, info.platform.as_deref(), &keys)
                                .unwrap_or((1, 1, 1));
                        let reached_name = &workspace.packages[reached].name;
                        let fix = if chain.len() == 1 {
                            let table = info.kind.table();
                            format!(
                                "remove `{reached_name}` from `{}`'s [{table}], and move the code that needs it into a crate the rule allows",
                                package.name
                            )
                        } else {
                            format!(
                                "`{to_name}` leads to `{reached_name}` (chain above): drop the dependency on `{to_name}`, turn off the feature that adds the path, or cut the path inside the chain"
                            )
                        };
                        let message = if chain.len() == 1 {
                            format!(
                                "`{}` depends on `{reached_name}` ({}), which rule `{}` forbids",
                                package.name,
                                chain[0].label(),
                                rule.name
                            )
                        } else {
                            format!(
                                "`{}` reaches `{reached_name}` through `{to_name}` ({} hops), which rule `{}` forbids",
                                package.name,
                                chain.len(),
                                rule.name
                            )
                        };
                        findings.push(
                            Finding {
                                code: Code::ForbiddenDependency,
                                rule: rule.name.clone(),
                                message,
                                file: workspace.relative(&package.manifest_path),
                                span: SpanJson {
                                    line,
                                    column,
                                    end_line: line,
                                    end_column,
                                },
                                target: TargetKind::of_edge(info.kind),
                                module: None,
                                form: "manifest".to_owned(),
                                chain,
                                reason: rule.reason.clone(),
                                hint: advice(rule.hint.as_deref(), &fix, adr_dir),
                                line_text: lines
                                    .get(line as usize - 1)
                                    .map(|l| (*l).to_owned())
                                    .unwrap_or_default(),
                                fingerprint: String::new(),
                            }
                            .seal(),
                        );
                    }
                }
            }
        }
    }
}

/// Whether a later hop (not the first) follows `info`: normal edges always, build edges when the
/// rule counts them; dev edges of dependencies are never built.
fn follows(info: &crate::workspace::EdgeInfo, rule: &DependencyRule) -> bool {
    info.kind == EdgeKind::Normal || (info.kind == EdgeKind::Build && rule.edges.contains(&EdgeKind::Build))
}

/// Packages from which a forbidden package is reachable through later-hop edges (forbidden
/// packages included): one reverse breadth-first search, so that first edges leading nowhere
/// forbidden cost nothing.
fn can_reach(workspace: &Workspace, forbidden: &BTreeSet<usize>, rule: &DependencyRule) -> Vec<bool> {
    let mut reverse: Vec<Vec<usize>> = vec![Vec::new(); workspace.packages.len()];
    for (from, package) in workspace.packages.iter().enumerate() {
        for dep in &package.deps {
            if dep.infos.iter().any(|info| follows(info, rule)) {
                reverse[dep.to].push(from);
            }
        }
    }
    let mut reached = vec![false; workspace.packages.len()];
    let mut queue: VecDeque<usize> = forbidden.iter().copied().collect();
    for &index in forbidden {
        reached[index] = true;
    }
    while let Some(current) = queue.pop_front() {
        for &from in &reverse[current] {
            if !reached[from] {
                reached[from] = true;
                queue.push_back(from);
            }
        }
    }
    reached
}

/// Forbidden packages reachable through the first edge `source -> first_to`, each with its
/// shortest chain. The search stops at a forbidden package (what lies behind it is that
/// package's business), never passes through the source again, and only enters packages from
/// which something forbidden is reachable.
fn reach(
    workspace: &Workspace,
    source: usize,
    first_to: usize,
    first: ChainEdge,
    forbidden: &BTreeSet<usize>,
    reachable: &[bool],
    rule: &DependencyRule,
) -> Vec<(usize, Vec<ChainEdge>)> {
    if forbidden.contains(&first_to) {
        return vec![(first_to, vec![first])];
    }
    if !reachable[first_to] {
        return Vec::new();
    }
    // Parent pointers: package -> (previous package, edge info index in previous's dep list).
    let mut parent: BTreeMap<usize, (usize, usize, usize)> = BTreeMap::new();
    let mut queue = VecDeque::from([first_to]);
    let mut found = Vec::new();
    while let Some(current) = queue.pop_front() {
        for (dep_index, dep) in workspace.packages[current].deps.iter().enumerate() {
            if dep.to == source || dep.to == first_to || parent.contains_key(&dep.to) || !reachable[dep.to] {
                continue;
            }
            let Some(info_index) = dep.infos.iter().position(|info| follows(info, rule)) else {
                continue;
            };
            parent.insert(dep.to, (current, dep_index, info_index));
            if forbidden.contains(&dep.to) {
                found.push(dep.to);
            } else {
                queue.push_back(dep.to);
            }
        }
    }
    found
        .into_iter()
        .map(|reached| {
            let mut chain = Vec::new();
            let mut cursor = reached;
            while let Some(&(previous, dep_index, info_index)) = parent.get(&cursor) {
                let info = &workspace.packages[previous].deps[dep_index].infos[info_index];
                chain.push(ChainEdge {
                    from: workspace.packages[previous].name.clone(),
                    to: workspace.packages[cursor].name.clone(),
                    kind: info.kind,
                    optional: info.optional,
                    platform: info.platform.clone(),
                });
                cursor = previous;
            }
            chain.push(first.clone());
            chain.reverse();
            (reached, chain)
        })
        .collect()
}

/// Which rules watch which names and directories, per source package.
struct Watches {
    per_package: BTreeMap<usize, Watch>,
    /// (package, crate name as written) → rules.
    names: BTreeMap<(usize, String), BTreeSet<usize>>,
    /// (package, rule) → forbidden directories.
    dirs: BTreeMap<(usize, usize), Vec<PathBuf>>,
}

fn build_watches(workspace: &Workspace, resolved: &[Resolved<'_>]) -> Watches {
    let mut per_package: BTreeMap<usize, Watch> = BTreeMap::new();
    let mut names: BTreeMap<(usize, String), BTreeSet<usize>> = BTreeMap::new();
    let mut dirs: BTreeMap<(usize, usize), Vec<PathBuf>> = BTreeMap::new();
    for &member in &workspace.members {
        let package = &workspace.packages[member];
        let watch = per_package.entry(member).or_default();
        for dep in &package.deps {
            let real = workspace.packages[dep.to].code_name();
            if dep.extern_name != real {
                watch.renames.insert(dep.extern_name.clone(), real);
            }
        }
    }
    for (rule_index, entry) in resolved.iter().enumerate() {
        for (position, &source) in entry.from.iter().enumerate() {
            let package = &workspace.packages[source];
            let watch = per_package.entry(source).or_default();
            for &forbidden in &entry.forbidden[position] {
                let target = &workspace.packages[forbidden];
                // Code names a crate by the extern name of a dependency: when this package's
                // dependency of that name is another package (wasmtime-c-api's library is also
                // called `wasmtime`), the name means that package, never the forbidden one.
                let code_name = target.code_name();
                let taken_by_another = package
                    .deps
                    .iter()
                    .any(|dep| dep.extern_name == code_name && dep.to != forbidden);
                let mut written = if taken_by_another { Vec::new() } else { vec![code_name] };
                written.extend(
                    package
                        .deps
                        .iter()
                        .filter(|dep| dep.to == forbidden)
                        .map(|dep| dep.extern_name.clone()),
                );
                for name in written {
                    watch.crate_names.insert(name.clone());
                    names.entry((source, name)).or_default().insert(rule_index);
                }
                let dir = source::normalize(&target.dir);
                watch.dirs.push(dir.clone());
                dirs.entry((source, rule_index)).or_default().push(dir);
            }
        }
    }
    for watch in per_package.values_mut() {
        watch.dirs.sort();
        watch.dirs.dedup();
    }
    Watches {
        per_package,
        names,
        dirs,
    }
}

/// The directory of the package that owns `path`: of all packages whose directory holds it,
/// the deepest (normalized as the watches' directories are).
fn owner_dir(workspace: &Workspace, path: &Path) -> Option<PathBuf> {
    workspace
        .packages
        .iter()
        .map(|package| source::normalize(&package.dir))
        .filter(|dir| path.starts_with(dir))
        .max_by_key(|dir| dir.components().count())
}

/// A function of a caller allowlist, located.
fn watched_functions(workspace: &Workspace, config: &Config) -> Result<Vec<WatchedFn>, Error> {
    let mut functions = Vec::new();
    for list in &config.caller_allowlists {
        let path: Vec<String> = list.function.split("::").map(str::to_owned).collect();
        if workspace.member_by_crate(&path[0]).is_none() {
            return Err(Error::UnknownCrate {
                rule: list.name.clone(),
                name: path[0].clone(),
                what: "is not the library of a workspace member",
            });
        }
        functions.push(WatchedFn { path, method: false });
    }
    Ok(functions)
}

/// Function definitions (`krate::module::f`, `krate::module::Type::f` with whether it takes
/// `self`) in one file, for the watched names only.
fn definitions(file: &SourceFile, names: &BTreeSet<String>) -> Vec<(Vec<String>, bool)> {
    struct Defs<'n> {
        names: &'n BTreeSet<String>,
        module: Vec<String>,
        self_type: Option<String>,
        out: Vec<(Vec<String>, bool)>,
    }
    impl<'ast> syn::visit::Visit<'ast> for Defs<'_> {
        fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
            self.module.push(item.ident.to_string());
            syn::visit::visit_item_mod(self, item);
            self.module.pop();
        }
        fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
            let name = item.sig.ident.to_string();
            if self.names.contains(&name) {
                let mut path = self.module.clone();
                path.push(name);
                self.out.push((path, false));
            }
        }
        fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
            if let syn::Type::Path(path) = &*item.self_ty
                && let Some(last) = path.path.segments.last()
            {
                self.self_type = Some(last.ident.to_string());
                syn::visit::visit_item_impl(self, item);
                self.self_type = None;
            }
        }
        fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
            let name = item.sig.ident.to_string();
            if self.names.contains(&name)
                && let Some(self_type) = &self.self_type
            {
                let mut path = self.module.clone();
                path.push(self_type.clone());
                path.push(name);
                self.out.push((path, item.sig.receiver().is_some()));
            }
        }
    }
    let Some(module) = &file.module else { return Vec::new() };
    let Ok(text) = std::fs::read_to_string(&file.path) else {
        return Vec::new();
    };
    if !names.iter().any(|name| text.contains(name.as_str())) {
        return Vec::new();
    }
    let Ok(ast) = syn::parse_file(&text) else {
        return Vec::new();
    };
    let mut defs = Defs {
        names,
        module: module.split("::").map(str::to_owned).collect(),
        self_type: None,
        out: Vec::new(),
    };
    syn::visit::Visit::visit_file(&mut defs, &ast);
    defs.out
}

/// Runs every layer over `workspace` with `config`.
///
/// # Errors
///
/// [`Error`] when a rule, allowlist or exemption names something the workspace does not have
/// (a crate, a function, a module, a file), so that the rule would check nothing.
pub fn run(workspace: &Workspace, config: &Config, options: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    let (resolved, notes) = resolve_rules(workspace, config)?;
    let mut findings = Vec::new();
    manifest_findings(workspace, &resolved, &config.adr_dir, &mut findings);

    let manifest_time = started.elapsed();

    // Source layer.
    let source_started = Instant::now();
    let mut functions = watched_functions(workspace, config)?;
    let watches = build_watches(workspace, &resolved);
    let files = source::discover(workspace);
    let mut stats_outside = 0;
    let function_names: BTreeSet<String> = functions.iter().filter_map(|f| f.path.last().cloned()).collect();
    let defined: Vec<(Vec<String>, bool)> = files
        .par_iter()
        .filter(|file| {
            functions
                .iter()
                .any(|function| workspace.packages[file.package].lib_name.as_deref() == Some(&function.path[0]))
                && file.target == TargetKind::Lib
        })
        .flat_map_iter(|file| definitions(file, &function_names))
        .collect();
    for (list, function) in config.caller_allowlists.iter().zip(functions.iter_mut()) {
        match defined.iter().find(|(path, _)| *path == function.path) {
            Some((_, method)) => function.method = *method,
            None => {
                return Err(Error::UnknownFunction {
                    rule: list.name.clone(),
                    function: list.function.clone(),
                });
            }
        }
    }
    let filters: BTreeMap<usize, crate::tokens::Prefilter> = watches
        .per_package
        .iter()
        .map(|(&package, watch)| (package, source::prefilter(watch, &functions)))
        .collect();
    let query = Query {
        functions: &functions,
        patterns: &config.patterns,
        no_prefilter: options.no_prefilter,
        parse_anyway: &options.parse_anyway,
        memo: options.memo,
    };
    let empty = Watch::default();
    let no_filter = source::prefilter(&empty, &functions);
    let scan = |file: &SourceFile| {
        let watch = watches.per_package.get(&file.package).unwrap_or(&empty);
        let filter = filters.get(&file.package).unwrap_or(&no_filter);
        source::scan_file(file, &workspace.packages[file.package].dir, watch, filter, &query)
    };
    let mut files = files;
    let mut scans: Vec<FileScan> = files.par_iter().map(scan).collect();
    // `#[path]` modules and `include!`d `.rs` files outside the declaring package's directory
    // (another member's, an excluded directory, outside the workspace): compiled into the
    // declaring crate, so scanned as part of it, transitively.
    let mut known: BTreeSet<(PathBuf, usize)> = files
        .iter()
        .map(|file| (source::normalize(&file.path), file.package))
        .collect();
    let mut frontier = 0..files.len();
    loop {
        let mut extra = Vec::new();
        for index in frontier.clone() {
            let parent = &files[index];
            let own_dir = source::normalize(&workspace.packages[parent.package].dir);
            for (target, module, in_test) in &scans[index].path_modules {
                if target.starts_with(&own_dir)
                    || known.contains(&(target.clone(), parent.package))
                    || !target.is_file()
                {
                    continue;
                }
                known.insert((target.clone(), parent.package));
                extra.push(SourceFile {
                    path: target.clone(),
                    rel: workspace.relative(target),
                    package: parent.package,
                    target: if *in_test && !parent.target.is_test() {
                        TargetKind::Test
                    } else {
                        parent.target
                    },
                    crate_name: parent.crate_name.clone(),
                    module: Some(module.clone()),
                    doc_tests: parent.doc_tests,
                });
            }
        }
        if extra.is_empty() {
            break;
        }
        let extra_scans: Vec<FileScan> = extra.par_iter().map(scan).collect();
        frontier = files.len()..files.len() + extra.len();
        stats_outside += extra.len();
        files.extend(extra);
        scans.extend(extra_scans);
    }

    let source_time = source_started.elapsed();
    let mut stats = crate::report::Stats {
        rules: config.rule_count(),
        exemptions: config.exemptions.len(),
        members: workspace.members.len(),
        packages: workspace.packages.len(),
        files: files.len(),
        files_outside: stats_outside,
        manifest_time,
        source_time,
        notes,
        ..Default::default()
    };
    let test_modules: Vec<String> = scans
        .iter()
        .flat_map(|scan| scan.test_modules.iter().cloned())
        .collect();
    let mut modules_seen: BTreeSet<String> = BTreeSet::new();
    let mut line_cache: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (file_index, (file, scan)) in files.iter().zip(&scans).enumerate() {
        stats.bytes += scan.bytes;
        stats.files_parsed += usize::from(scan.parsed);
        if scan.parsed {
            stats.bytes_parsed += scan.bytes;
        }
        stats.doc_tests += scan.doc_tests;
        stats.files_unparsed += usize::from(scan.parse_failed);
        stats.macros += scan.macros;
        stats.macros_unparsed += scan.macros_unparsed;
        if scan.unscannable || scan.read_error.is_some() {
            stats.files_unscannable += 1;
            stats.unscannable.push(file.rel.clone());
        }
        if let Some(module) = &file.module {
            modules_seen.insert(module.clone());
        }
        modules_seen.extend(scan.inline_modules.iter().cloned());
        for fact in &scan.facts {
            if let Some(module) = &fact.module {
                modules_seen.insert(module.clone());
            }
            let in_test = fact.in_test
                || file.target.is_test()
                || fact
                    .module
                    .as_deref()
                    .is_some_and(|module| test_modules.iter().any(|t| module_has_prefix(module, t)));
            let target = if in_test && !file.target.is_test() {
                TargetKind::Test
            } else {
                file.target
            };
            let lines = line_cache.entry(file_index).or_insert_with(|| read_lines(&file.path));
            let line_text = lines.get(fact.span.line as usize - 1).cloned().unwrap_or_default();
            let mut emit = |code: Code, rule: String, message: String, reason: &str, hint: String| {
                findings.push(
                    Finding {
                        code,
                        rule,
                        message,
                        file: file.rel.clone(),
                        span: fact.span.into(),
                        target,
                        module: fact.module.clone(),
                        form: fact.form.to_owned(),
                        chain: Vec::new(),
                        reason: reason.to_owned(),
                        hint,
                        line_text: line_text.clone(),
                        fingerprint: String::new(),
                    }
                    .seal(),
                );
            };
            match &fact.kind {
                FactKind::CrateRef { name } => {
                    // A renamed dependency is named as the rule names it, and as written.
                    let shown = match watches
                        .per_package
                        .get(&file.package)
                        .and_then(|watch| watch.renames.get(name))
                    {
                        Some(real) => format!("`{real}` (as `{name}`)"),
                        None => format!("`{name}`"),
                    };
                    for &rule_index in watches.names.get(&(file.package, name.clone())).into_iter().flatten() {
                        let rule = resolved[rule_index].rule;
                        if !rule.include_tests && in_test {
                            continue;
                        }
                        // Test code and examples build with dev-dependencies: when the rule
                        // leaves dev edges out, their references are not its business (a normal
                        // edge to the crate is still a manifest finding).
                        if !rule.edges.contains(&EdgeKind::Dev) && (in_test || file.target == TargetKind::Example) {
                            continue;
                        }
                        emit(
                            Code::ForbiddenReference,
                            rule.name.clone(),
                            format!(
                                "`{}` refers to {shown} in a {} form, which rule `{}` forbids",
                                workspace.packages[file.package].name, fact.form, rule.name
                            ),
                            &rule.reason,
                            advice(
                                rule.hint.as_deref(),
                                &format!(
                                    "remove this reference to {shown}: reach what it does through a crate `{}` may depend on, or move this code into a crate the rule allows",
                                    workspace.packages[file.package].name
                                ),
                                &config.adr_dir,
                            ),
                        );
                    }
                }
                FactKind::Include { target: included } => {
                    // The file belongs to the package with the deepest directory holding it: a
                    // root package's directory holds every member, but not their files.
                    let Some(owner) = owner_dir(workspace, included) else {
                        continue;
                    };
                    for (rule_index, entry) in resolved.iter().enumerate() {
                        let Some(dirs) = watches.dirs.get(&(file.package, rule_index)) else {
                            continue;
                        };
                        if !dirs.contains(&owner) || (!entry.rule.include_tests && in_test) {
                            continue;
                        }
                        emit(
                            Code::ForbiddenInclude,
                            entry.rule.name.clone(),
                            format!(
                                "`{}` pulls in `{}` ({}), inside a crate rule `{}` forbids",
                                workspace.packages[file.package].name,
                                workspace.relative(included),
                                fact.form,
                                entry.rule.name
                            ),
                            &entry.rule.reason,
                            advice(
                                entry.rule.hint.as_deref(),
                                &format!(
                                    "do not compile another crate's files into `{}`: depend on an allowed crate that provides this, or give `{}` its own copy",
                                    workspace.packages[file.package].name, workspace.packages[file.package].name
                                ),
                                &config.adr_dir,
                            ),
                        );
                    }
                }
                FactKind::FnRef { function } => {
                    let list = &config.caller_allowlists[*function];
                    if fact.form == "method-call" && !functions[*function].method {
                        continue;
                    }
                    if list
                        .allowed
                        .iter()
                        .any(|scope| scope.contains(&file.rel, fact.module.as_deref()))
                    {
                        continue;
                    }
                    emit(
                        Code::DisallowedCaller,
                        list.name.clone(),
                        format!(
                            "`{}` is referenced here ({}), outside the modules allowed by `{}`",
                            list.function, fact.form, list.name
                        ),
                        &list.reason,
                        advice(
                            list.hint.as_deref(),
                            &format!(
                                "call `{}` only from {}; from here, go through an API those modules offer",
                                list.function,
                                either(&list.allowed)
                            ),
                            &config.adr_dir,
                        ),
                    );
                }
                FactKind::Pattern { pattern } => {
                    let pattern = &config.patterns[*pattern];
                    if pattern
                        .allowed
                        .iter()
                        .any(|scope| scope.contains(&file.rel, fact.module.as_deref()))
                    {
                        continue;
                    }
                    emit(
                        Code::ForbiddenPattern,
                        pattern.name.clone(),
                        format!(
                            "text matching `{}` ({}), outside the places allowed by `{}`",
                            pattern.regex, fact.form, pattern.name
                        ),
                        &pattern.reason,
                        advice(
                            pattern.hint.as_deref(),
                            &format!(
                                "keep such text in {}, and call into it from here",
                                either(&pattern.allowed)
                            ),
                            &config.adr_dir,
                        ),
                    );
                }
            }
        }
    }

    module_findings(workspace, config, &files, &mut findings)?;

    // Vacuity of allowlist scopes: each must name a module or match a file that exists.
    let scopes = config
        .caller_allowlists
        .iter()
        .map(|list| (&list.name, &list.allowed))
        .chain(config.patterns.iter().map(|pattern| (&pattern.name, &pattern.allowed)));
    for (rule, allowed) in scopes {
        for scope in allowed {
            let exists = match scope {
                crate::config::Scope::Module(prefix) => {
                    modules_seen.iter().any(|module| module_has_prefix(module, prefix))
                        // An inline module in a file the pre-filter skipped: parse its parents.
                        || files
                            .iter()
                            .zip(&scans)
                            .filter(|(file, scan)| {
                                !scan.parsed
                                    && file
                                        .module
                                        .as_deref()
                                        .is_some_and(|module| module_has_prefix(prefix, module))
                            })
                            .any(|(file, _)| {
                                source::inline_modules(file)
                                    .iter()
                                    .any(|module| module_has_prefix(module, prefix))
                            })
                }
                crate::config::Scope::Files(_, matcher) => files.iter().any(|file| matcher.is_match(&file.rel)),
            };
            if !exists {
                return Err(Error::UnknownScope {
                    rule: rule.clone(),
                    scope: scope.to_string(),
                });
            }
        }
    }

    let today = options.today.unwrap_or_else(Date::today);
    let mut report = Report {
        findings: Vec::new(),
        exempted: Vec::new(),
        stats,
    };
    apply_exemptions(workspace, config, today, findings, &mut report);
    report.sort();
    Ok(report)
}

/// What an ADR file says about its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdrStatus {
    /// No file matches.
    Missing,
    /// The file exists; this is its status word (`Accepted`, `Proposed`, ...), or empty.
    Found(PathBuf, String),
}

/// Resolves an exemption's `adr` (a number such as `0006`, or a file name in `adr_dir`) and
/// reads its status in the formats in use: a `Status:` line, bold or not, or a bullet
/// (`* Status: accepted`, MADR 2), a `status:` front-matter key (MADR 3), or the first line
/// under a `## Status` heading (Nygard, adr-tools).
pub fn adr_status(root: &Path, adr_dir: &str, adr: &str) -> AdrStatus {
    let dir = root.join(adr_dir);
    let path = if adr.chars().all(|c| c.is_ascii_digit()) {
        let number = format!("{:04}-", adr.parse::<u32>().unwrap_or(u32::MAX));
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with(&number))
            })
            .collect();
        entries.sort();
        match entries.into_iter().next() {
            Some(path) => path,
            None => return AdrStatus::Missing,
        }
    } else {
        let name = adr
            .strip_prefix(adr_dir)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or(adr);
        if name.contains("..") || name.contains('/') {
            return AdrStatus::Missing;
        }
        dir.join(name)
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return AdrStatus::Missing;
    };
    let mut lines = text.lines();
    let mut status = String::new();
    while let Some(line) = lines.next() {
        let plain: String = line.chars().filter(|&c| c != '*' && c != '_').collect();
        let plain = plain.trim();
        let lower = plain.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("status:") {
            status = plain[plain.len() - rest.len()..].trim().to_owned();
            break;
        }
        if lower.trim_start_matches('#').trim() == "status" && lower.starts_with('#') {
            status = lines
                .by_ref()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_owned();
            break;
        }
    }
    let word = status
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .to_owned();
    AdrStatus::Found(path, word)
}

fn exemption_matches(exemption: &Exemption, finding: &Finding) -> bool {
    if exemption.rule != finding.rule || finding.code.is_about_exemption() {
        return false;
    }
    let scope = match (&exemption.file, &exemption.module) {
        (Some(file), _) => match &exemption.file_glob {
            Some(glob) => glob.is_match(&finding.file),
            None => &finding.file == file,
        },
        (None, Some(module)) => finding.module.as_deref().is_some_and(|m| module_has_prefix(m, module)),
        (None, None) => false,
    };
    scope && exemption.target.is_none_or(|target| target == finding.target)
}

fn apply_exemptions(workspace: &Workspace, config: &Config, today: Date, findings: Vec<Finding>, report: &mut Report) {
    let config_file = workspace.relative(&config.path);
    let config_lines: Vec<&str> = config.text.lines().collect();
    let mut usable = Vec::new();
    for (index, exemption) in config.exemptions.iter().enumerate() {
        let meta = |code: Code, message: String| {
            Finding {
                code,
                rule: exemption.rule.clone(),
                message,
                file: config_file.clone(),
                span: SpanJson {
                    line: exemption.line,
                    column: 1,
                    end_line: exemption.line,
                    end_column: 1 + u32::try_from(
                        config_lines
                            .get(exemption.line as usize - 1)
                            .map_or(0, |l| l.chars().count()),
                    )
                    .unwrap_or(0),
                },
                target: exemption.target.unwrap_or(TargetKind::Lib),
                module: None,
                form: "exemption".to_owned(),
                chain: Vec::new(),
                reason: exemption.reason.clone(),
                hint: format!(
                    "an exemption needs an ADR in {}/ with status Accepted, a date that has not passed, and a \
                     finding to exempt; fix or remove it",
                    config.adr_dir
                ),
                line_text: config_lines
                    .get(exemption.line as usize - 1)
                    .map(|l| (*l).to_owned())
                    .unwrap_or_default(),
                fingerprint: String::new(),
            }
            .seal()
        };
        match adr_status(&workspace.root, &config.adr_dir, &exemption.adr) {
            AdrStatus::Missing => {
                report.findings.push(meta(
                    Code::ExemptionAdrMissing,
                    format!(
                        "exemption from `{}` cites ADR `{}`, which is not in {}/",
                        exemption.rule, exemption.adr, config.adr_dir
                    ),
                ));
                continue;
            }
            AdrStatus::Found(path, status) if !status.eq_ignore_ascii_case("accepted") => {
                report.findings.push(meta(
                    Code::ExemptionAdrNotAccepted,
                    format!(
                        "exemption from `{}` cites {}, whose status is `{}`, not Accepted",
                        exemption.rule,
                        workspace.relative(&path),
                        if status.is_empty() { "missing" } else { &status }
                    ),
                ));
                continue;
            }
            AdrStatus::Found(..) => {}
        }
        if let Some(expires) = exemption.expires
            && expires < today
        {
            report.findings.push(meta(
                Code::ExemptionExpired,
                format!(
                    "exemption from `{}` expired on {expires} (today is {today})",
                    exemption.rule
                ),
            ));
            continue;
        }
        usable.push((index, meta(Code::ExemptionUnused, String::new())));
    }
    let mut used = vec![false; config.exemptions.len()];
    for finding in findings {
        let exemption = usable
            .iter()
            .map(|(index, _)| *index)
            .find(|&index| exemption_matches(&config.exemptions[index], &finding));
        match exemption {
            Some(index) => {
                used[index] = true;
                let exemption = &config.exemptions[index];
                report.exempted.push(Exempted {
                    finding,
                    adr: exemption.adr.clone(),
                    reason: exemption.reason.clone(),
                    exemption_line: exemption.line,
                });
            }
            None => report.findings.push(finding),
        }
    }
    for (index, mut unused) in usable {
        if !used[index] {
            let exemption = &config.exemptions[index];
            let scope = exemption
                .file
                .clone()
                .or_else(|| exemption.module.clone())
                .unwrap_or_default();
            unused.message = format!(
                "exemption from `{}` for `{scope}` matches no finding; remove it so it cannot hide a future one",
                exemption.rule
            );
            report.findings.push(unused.seal());
        }
    }
}

/// Findings of the module rules (`[[module-rule]]`, `[[acyclic-modules]]`): each named crate's
/// module graph ([`crate::modules`]), checked.
///
/// # Errors
///
/// [`Error::UnknownCrate`] for a crate that is not a member with a library,
/// [`Error::UnknownScope`] for a `from` or `forbidden` module that does not exist.
fn module_findings(
    workspace: &Workspace,
    config: &Config,
    files: &[SourceFile],
    findings: &mut Vec<Finding>,
) -> Result<(), Error> {
    let mut graphs: BTreeMap<String, crate::modules::ModuleGraph> = BTreeMap::new();
    let wanted = config
        .module_rules
        .iter()
        .map(|rule| (rule.name.as_str(), rule.krate.as_str()))
        .chain(
            config
                .acyclic_modules
                .iter()
                .flat_map(|rule| rule.crates.iter().map(|krate| (rule.name.as_str(), krate.as_str()))),
        );
    for (rule, krate) in wanted {
        if graphs.contains_key(krate) {
            continue;
        }
        let Some(index) = workspace.member(krate) else {
            return Err(Error::UnknownCrate {
                rule: rule.to_owned(),
                name: krate.to_owned(),
                what: "is not a workspace member",
            });
        };
        let Some(lib) = workspace.packages[index]
            .targets
            .iter()
            .find(|target| target.kind == TargetKind::Lib)
        else {
            return Err(Error::UnknownCrate {
                rule: rule.to_owned(),
                name: krate.to_owned(),
                what: "has no library target",
            });
        };
        let crate_files: Vec<&SourceFile> = files
            .iter()
            .filter(|file| {
                file.package == index
                    && file.target == TargetKind::Lib
                    && file.crate_name.as_deref() == Some(lib.crate_name.as_str())
            })
            .collect();
        graphs.insert(krate.to_owned(), crate::modules::graph(&lib.crate_name, &crate_files));
    }
    let mut lines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut line_text = |file: &str, line: u32| -> String {
        lines
            .entry(file.to_owned())
            .or_insert_with(|| read_lines(&workspace.root.join(file)))
            .get(line as usize - 1)
            .cloned()
            .unwrap_or_default()
    };
    let mut finding = |code: Code,
                       rule: &str,
                       message: String,
                       reference: &crate::modules::ModuleReference,
                       reason: &str,
                       hint: String| {
        Finding {
            code,
            rule: rule.to_owned(),
            message,
            file: reference.file.clone(),
            span: reference.span.into(),
            target: if reference.in_test {
                TargetKind::Test
            } else {
                TargetKind::Lib
            },
            module: Some(reference.from.clone()),
            form: reference.form.to_owned(),
            chain: Vec::new(),
            reason: reason.to_owned(),
            hint,
            line_text: line_text(&reference.file, reference.span.line),
            fingerprint: String::new(),
        }
        .seal()
    };
    for rule in &config.module_rules {
        let graph = &graphs[&rule.krate];
        for module in rule.from.iter().chain(&rule.forbidden) {
            if !graph.modules.iter().any(|known| module_has_prefix(known, module)) {
                return Err(Error::UnknownScope {
                    rule: rule.name.clone(),
                    scope: module.clone(),
                });
            }
        }
        for reference in crate::modules::forbidden(graph, &rule.from, &rule.forbidden, rule.include_tests) {
            findings.push(finding(
                Code::ForbiddenModuleReference,
                &rule.name,
                format!(
                    "`{}` refers to `{}` ({}), in module `{}`, which rule `{}` forbids",
                    reference.from, reference.path, reference.form, reference.to, rule.name
                ),
                reference,
                &rule.reason,
                advice(
                    rule.hint.as_deref(),
                    &format!(
                        "move what `{}` needs out of `{}` into a module both may use, or pass it in from above",
                        reference.from, reference.to
                    ),
                    &config.adr_dir,
                ),
            ));
        }
    }
    for rule in &config.acyclic_modules {
        for krate in &rule.crates {
            for cycle in crate::modules::cycles(&graphs[krate], rule.include_tests) {
                let circle = format!("{} -> {}", cycle.modules.join(" -> "), cycle.modules[0]);
                for (from, to, reference) in &cycle.edges {
                    findings.push(finding(
                        Code::ModuleCycle,
                        &rule.name,
                        format!(
                            "`{from}` refers to `{to}` here ({}, `{}`), and `{to}` leads back to `{from}`: these modules form a circle ({circle})",
                            reference.form, reference.path
                        ),
                        reference,
                        &rule.reason,
                        advice(
                            rule.hint.as_deref(),
                            "move what both modules need into a module below them, or pass it down as a value",
                            &config.adr_dir,
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_found_in_every_table_shape() {
        let manifest = "[package]\nname = \"x\"\n\n[dependencies]\nserde = \"1\"\nrt = { package = \"agent-runtime\" }\n\n[dev-dependencies]\n  agent-runtime.workspace = true\n\n[target.'cfg(unix)'.dependencies]\nlibc = \"0.2\"\n\n[build-dependencies.cc]\nversion = \"1\"\n";
        let keys = |k: &str| vec![k.to_owned()];
        assert_eq!(
            find_declaration(manifest, EdgeKind::Normal, None, &keys("rt")),
            Some((6, 1, 3))
        );
        assert_eq!(
            find_declaration(manifest, EdgeKind::Dev, None, &keys("agent-runtime")),
            Some((9, 3, 16))
        );
        assert_eq!(
            find_declaration(manifest, EdgeKind::Normal, Some("cfg(unix)"), &keys("libc")),
            Some((12, 1, 5))
        );
        assert_eq!(find_declaration(manifest, EdgeKind::Normal, None, &keys("libc")), None);
        assert_eq!(
            find_declaration(manifest, EdgeKind::Build, None, &keys("cc")),
            Some((14, 21, 23))
        );
    }
}
