//! Module rules inside one crate: which module references which.
//!
//! Every `.rs` file of a crate's library target is parsed with `syn`; each path that reaches
//! into the crate (`crate::..`, `self::..`, `super::..`, a child module's name, or a name a
//! `use` brought in) is resolved to an absolute module path, through the crate's own `pub use`
//! re-exports (so `crate::Name` re-exported from `crate::m` counts as a reference to `m`).
//! Paths inside macro bodies are read from their tokens. The result is the crate's module
//! graph: every reference with its source module, target module, place and whether it is in
//! test code. Two rule kinds are checked on it:
//!
//! - `[[module-rule]]`: modules under `from` never reference modules under `forbidden`
//!   (finding `forbidden-module-reference` at the reference);
//! - `[[acyclic-modules]]`: at every level of the module tree, sibling modules reference each
//!   other without a circle (finding `module-cycle` at one reference of each edge on a circle).
//!   A module and its own ancestors or descendants are one unit: a child using its parent's
//!   items is not a circle.
//!
//! Limits, stated: names are resolved syntactically; a glob re-export (`pub use m::*`) is not
//! followed through to the names it exports; macros are not expanded.

use std::collections::{BTreeMap, BTreeSet};

use proc_macro2::{TokenStream, TokenTree};
use rayon::prelude::*;
use syn::ext::IdentExt as _;
use syn::spanned::Spanned as _;
use syn::visit::{self, Visit};

use crate::source::{SourceFile, Span, is_test_attr};

/// One reference from a module to a module of the same crate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ModuleReference {
    /// The file it is in, relative to the workspace root.
    pub file: String,
    /// Where.
    pub span: Span,
    /// The module it is written in (inline modules included).
    pub from: String,
    /// The module it reaches: the longest module prefix of the resolved path.
    pub to: String,
    /// The resolved path as written after resolution (`krate::m::Item`).
    pub path: String,
    /// `use`, `path` or `macro`.
    pub form: &'static str,
    /// Inside `#[cfg(test)]`/`#[test]` code.
    pub in_test: bool,
}

/// A crate's modules and the references between them.
#[derive(Debug, Clone, Default)]
pub struct ModuleGraph {
    /// The crate's name as code writes it (`control_plane`).
    pub crate_name: String,
    /// Every module path, the root included.
    pub modules: BTreeSet<String>,
    /// Every reference from one of its modules into the crate.
    pub references: Vec<ModuleReference>,
}

/// A path as written, before resolution.
struct RawPath {
    module: Vec<String>,
    leading_colon: bool,
    segments: Vec<String>,
    span: Span,
    form: &'static str,
    in_test: bool,
}

/// A `use` as written: the module it is in, a leading `::`, and its path.
#[derive(Debug, Clone)]
struct Written {
    module: Vec<String>,
    leading_colon: bool,
    segments: Vec<String>,
}

/// (module, visible name) → what a `use` there names.
type UseMap = BTreeMap<(String, String), Written>;

/// What one file contributes.
#[derive(Default)]
struct FileFacts {
    file: String,
    paths: Vec<RawPath>,
    /// `use` imports, with the names they make visible.
    imports: Vec<(String, Written)>,
    /// `pub use` re-exports, with the names they export.
    reexports: Vec<(String, Written)>,
    inline_modules: Vec<String>,
}

struct Visitor {
    module: Vec<String>,
    in_test: bool,
    facts: FileFacts,
}

impl Visitor {
    fn push_path(&mut self, leading_colon: bool, segments: Vec<String>, span: Span, form: &'static str) {
        if segments.is_empty() {
            return;
        }
        self.facts.paths.push(RawPath {
            module: self.module.clone(),
            leading_colon,
            segments,
            span,
            form,
            in_test: self.in_test,
        });
    }

    /// Walks a `use` tree; `start` is where its path begins (findings point there).
    fn use_tree(
        &mut self,
        tree: &syn::UseTree,
        prefix: &mut Vec<String>,
        leading: bool,
        public: bool,
        start: Option<Span>,
    ) {
        match tree {
            syn::UseTree::Path(path) => {
                let start = start.or_else(|| Some(Span::of_span(path.ident.span())));
                prefix.push(path.ident.unraw().to_string());
                self.use_tree(&path.tree, prefix, leading, public, start);
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
                let span = start.unwrap_or_else(|| Span::of_span(name.ident.span()));
                self.record_use(segments, visible, leading, public, span);
            }
            syn::UseTree::Rename(rename) => {
                let mut segments = prefix.clone();
                if rename.ident != "self" {
                    segments.push(rename.ident.unraw().to_string());
                }
                let span = start.unwrap_or_else(|| Span::of_span(rename.ident.span()));
                self.record_use(segments, rename.rename.to_string(), leading, public, span);
            }
            syn::UseTree::Glob(glob) => {
                let span = start.unwrap_or_else(|| Span::of_span(glob.star_token.span()));
                self.push_path(leading, prefix.clone(), span, "use");
            }
            syn::UseTree::Group(group) => {
                for item in &group.items {
                    self.use_tree(item, prefix, leading, public, start);
                }
            }
        }
    }

    fn record_use(&mut self, segments: Vec<String>, visible: String, leading: bool, public: bool, span: Span) {
        let written = Written {
            module: self.module.clone(),
            leading_colon: leading,
            segments: segments.clone(),
        };
        if public {
            self.facts.reexports.push((visible.clone(), written.clone()));
        }
        self.facts.imports.push((visible, written));
        self.push_path(leading, segments, span, "use");
    }

    /// Paths inside a macro body: `ident (:: ident)*` sequences starting at `crate`, `self`,
    /// `super` or any identifier (resolution decides whether they reach into the crate).
    fn macro_tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut index = 0;
        while index < trees.len() {
            match &trees[index] {
                TokenTree::Group(group) => {
                    self.macro_tokens(group.stream());
                    index += 1;
                }
                TokenTree::Ident(ident) => {
                    let preceded_by_separator = index >= 2 && is_separator(&trees, index - 2);
                    if preceded_by_separator {
                        index += 1;
                        continue;
                    }
                    let start = ident.span();
                    let mut segments = vec![ident.unraw().to_string()];
                    let mut next = index + 1;
                    while is_separator(&trees, next) {
                        match trees.get(next + 2) {
                            Some(TokenTree::Ident(part)) => {
                                segments.push(part.to_string());
                                next += 3;
                            }
                            _ => break,
                        }
                    }
                    if segments.len() > 1 {
                        self.push_path(false, segments, Span::of_span(start), "macro");
                    }
                    index = next.max(index + 1);
                }
                _ => index += 1,
            }
        }
    }
}

/// Whether `trees[index..index + 2]` is a `::` separator.
fn is_separator(trees: &[TokenTree], index: usize) -> bool {
    matches!(
        (trees.get(index), trees.get(index + 1)),
        (Some(TokenTree::Punct(first)), Some(TokenTree::Punct(second)))
            if first.as_char() == ':' && second.as_char() == ':' && first.spacing() == proc_macro2::Spacing::Joint
    )
}

fn path_segments(path: &syn::Path) -> Vec<String> {
    path.segments
        .iter()
        .map(|segment| segment.ident.unraw().to_string())
        .collect()
}

impl<'ast> Visit<'ast> for Visitor {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        let was_test = self.in_test;
        self.in_test |= item.attrs.iter().any(is_test_attr);
        if item.content.is_some() {
            self.module.push(item.ident.unraw().to_string());
            self.facts.inline_modules.push(self.module.join("::"));
            visit::visit_item_mod(self, item);
            self.module.pop();
        }
        self.in_test = was_test;
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        let was_test = self.in_test;
        self.in_test |= item.attrs.iter().any(is_test_attr);
        visit::visit_item_fn(self, item);
        self.in_test = was_test;
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        let was_test = self.in_test;
        self.in_test |= item.attrs.iter().any(is_test_attr);
        visit::visit_item_impl(self, item);
        self.in_test = was_test;
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let was_test = self.in_test;
        self.in_test |= item.attrs.iter().any(is_test_attr);
        let public = !matches!(item.vis, syn::Visibility::Inherited);
        self.use_tree(&item.tree, &mut Vec::new(), item.leading_colon.is_some(), public, None);
        self.in_test = was_test;
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.push_path(
            path.leading_colon.is_some(),
            path_segments(path),
            Span::of_span(path.span()),
            "path",
        );
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.macro_tokens(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }
}

/// Parses one file of the crate. `None` when it cannot be read or parsed.
fn scan(file: &SourceFile) -> Option<FileFacts> {
    let module = file.module.as_ref()?;
    let text = std::fs::read_to_string(&file.path).ok()?;
    let ast = syn::parse_file(&text).ok()?;
    let mut visitor = Visitor {
        module: module.split("::").map(str::to_owned).collect(),
        in_test: file.target.is_test(),
        facts: FileFacts {
            file: file.rel.clone(),
            ..FileFacts::default()
        },
    };
    visitor.visit_file(&ast);
    Some(visitor.facts)
}

/// Resolution context for one crate.
struct Resolver<'a> {
    crate_name: &'a str,
    modules: &'a BTreeSet<String>,
    /// What the `use` items of each module make visible.
    imports: UseMap,
    /// What the `pub use` items of each module export.
    reexports: UseMap,
}

impl Resolver<'_> {
    /// The absolute path (crate name first) `segments`, written in `module`, denote inside the
    /// crate, with the crate's own `pub use` re-exports followed; `None` for a path outside it
    /// (std, another crate, a local name).
    fn resolve(&self, module: &[String], leading_colon: bool, segments: &[String]) -> Option<Vec<String>> {
        let mut path = self.base(module, leading_colon, segments, 0)?;
        // Follow re-exports: `krate::m::Name` exported by `m` from elsewhere. Each (module,
        // name) is followed once, so a circle of re-exports ends.
        let mut followed: BTreeSet<(String, String)> = BTreeSet::new();
        'walk: loop {
            for split in 1..path.len() {
                let key = (path[..split].join("::"), path[split].clone());
                let Some(written) = self.reexports.get(&key) else {
                    continue;
                };
                if !followed.insert(key) {
                    continue;
                }
                if let Some(target) = self.base(&written.module, written.leading_colon, &written.segments, 0)
                    && target != path[..=split]
                {
                    let rest = path[split + 1..].to_vec();
                    path = target.into_iter().chain(rest).collect();
                    continue 'walk;
                }
            }
            break;
        }
        Some(path)
    }

    /// The absolute path before re-exports are followed: `crate::`, `self::`, `super::`, a child
    /// module's name, or a name a `use` of the same module brought in.
    fn base(&self, module: &[String], leading_colon: bool, segments: &[String], depth: usize) -> Option<Vec<String>> {
        if leading_colon || depth > 8 {
            return None;
        }
        let first = segments.first()?;
        let path: Vec<String> = match first.as_str() {
            "crate" => std::iter::once(self.crate_name.to_owned())
                .chain(segments[1..].iter().cloned())
                .collect(),
            "self" => module.iter().chain(&segments[1..]).cloned().collect(),
            "super" => {
                let mut base = module.to_vec();
                let mut rest = segments;
                while rest.first().is_some_and(|segment| segment == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                if base.is_empty() {
                    return None;
                }
                base.into_iter().chain(rest.iter().cloned()).collect()
            }
            name if name == self.crate_name && module.len() == 1 => segments.to_vec(),
            name => {
                let child = format!("{}::{name}", module.join("::"));
                if self.modules.contains(&child) {
                    module.iter().chain(segments).cloned().collect()
                } else if let Some(written) = self.imports.get(&(module.join("::"), name.to_owned())) {
                    let mut full = self.base(&written.module, written.leading_colon, &written.segments, depth + 1)?;
                    full.extend(segments[1..].iter().cloned());
                    full
                } else {
                    return None;
                }
            }
        };
        Some(path)
    }

    /// The longest prefix of `path` that is a module of the crate.
    fn module_of(&self, path: &[String]) -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|length| path[..length].join("::"))
            .find(|candidate| self.modules.contains(candidate))
    }
}

/// The module graph of the library whose files are `files` (all of one crate, `crate_name`),
/// memoised by the files' paths and contents (`selftest` checks the same crates hundreds of
/// times with one file changed).
pub fn graph(crate_name: &str, files: &[&SourceFile]) -> ModuleGraph {
    use std::hash::{Hash, Hasher};
    static MEMO: std::sync::Mutex<BTreeMap<(String, u64), ModuleGraph>> = std::sync::Mutex::new(BTreeMap::new());
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        file.rel.hash(&mut hasher);
        file.module.hash(&mut hasher);
        std::fs::read(&file.path).unwrap_or_default().hash(&mut hasher);
    }
    let key = (crate_name.to_owned(), hasher.finish());
    if let Some(graph) = MEMO.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key) {
        return graph.clone();
    }
    let graph = build_graph(crate_name, files);
    let mut memo = MEMO.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if memo.len() > 64 {
        memo.clear();
    }
    memo.insert(key, graph.clone());
    graph
}

fn build_graph(crate_name: &str, files: &[&SourceFile]) -> ModuleGraph {
    let facts: Vec<FileFacts> = files.par_iter().filter_map(|file| scan(file)).collect();
    let mut modules: BTreeSet<String> = files.iter().filter_map(|file| file.module.clone()).collect();
    modules.insert(crate_name.to_owned());
    for fact in &facts {
        modules.extend(fact.inline_modules.iter().cloned());
    }
    let mut resolver = Resolver {
        crate_name,
        modules: &modules,
        imports: BTreeMap::new(),
        reexports: BTreeMap::new(),
    };
    for fact in &facts {
        for (visible, written) in &fact.imports {
            resolver
                .imports
                .entry((written.module.join("::"), visible.clone()))
                .or_insert_with(|| written.clone());
        }
        for (visible, written) in &fact.reexports {
            resolver
                .reexports
                .entry((written.module.join("::"), visible.clone()))
                .or_insert_with(|| written.clone());
        }
    }
    let mut references = Vec::new();
    for fact in &facts {
        for raw in &fact.paths {
            let Some(path) = resolver.resolve(&raw.module, raw.leading_colon, &raw.segments) else {
                continue;
            };
            let Some(to) = resolver.module_of(&path) else {
                continue;
            };
            references.push(ModuleReference {
                file: fact.file.clone(),
                span: raw.span,
                from: raw.module.join("::"),
                to,
                path: path.join("::"),
                form: raw.form,
                in_test: raw.in_test,
            });
        }
    }
    references.sort();
    references.dedup_by(|a, b| a.file == b.file && a.span == b.span && a.to == b.to);
    ModuleGraph {
        crate_name: crate_name.to_owned(),
        modules,
        references,
    }
}

/// `a::b::c` has prefix `a::b` (per segment).
fn has_prefix(module: &str, prefix: &str) -> bool {
    crate::config::module_has_prefix(module, prefix)
}

/// References from a module under one of `from` to a module under one of `forbidden`.
pub fn forbidden<'g>(
    graph: &'g ModuleGraph,
    from: &[String],
    forbidden: &[String],
    include_tests: bool,
) -> Vec<&'g ModuleReference> {
    graph
        .references
        .iter()
        .filter(|reference| include_tests || !reference.in_test)
        .filter(|reference| from.iter().any(|prefix| has_prefix(&reference.from, prefix)))
        .filter(|reference| forbidden.iter().any(|prefix| has_prefix(&reference.to, prefix)))
        .collect()
}

/// The sibling edge a reference makes: below the deepest common ancestor of its two modules,
/// the child on each side (`None` when one module contains the other).
fn sibling_edge(from: &str, to: &str) -> Option<(String, String)> {
    let from: Vec<&str> = from.split("::").collect();
    let to: Vec<&str> = to.split("::").collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    if common == 0 || common >= from.len() || common >= to.len() {
        return None;
    }
    Some((from[..=common].join("::"), to[..=common].join("::")))
}

/// One circle among sibling modules: its modules in order, and for each edge on it the
/// reference that makes it (the first in file order).
#[derive(Debug, Clone)]
pub struct Cycle<'g> {
    /// The modules, in circle order (the first is repeated at the end when rendered).
    pub modules: Vec<String>,
    /// `(from, to, witness)` for every edge between modules of the circle.
    pub edges: Vec<(String, String, &'g ModuleReference)>,
}

/// Every strongly connected set of sibling modules (Tarjan's algorithm, 1972) with more than
/// one module, as a [`Cycle`].
pub fn cycles(graph: &ModuleGraph, include_tests: bool) -> Vec<Cycle<'_>> {
    let mut edges: BTreeMap<(String, String), &ModuleReference> = BTreeMap::new();
    for reference in &graph.references {
        if !include_tests && reference.in_test {
            continue;
        }
        if let Some(edge) = sibling_edge(&reference.from, &reference.to) {
            edges.entry(edge).or_insert(reference);
        }
    }
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let index_of: BTreeMap<&String, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let names: Vec<&String> = nodes.iter().copied().collect();
    let mut adjacency = vec![Vec::new(); names.len()];
    for (from, to) in edges.keys() {
        adjacency[index_of[from]].push(index_of[to]);
    }
    let components = tarjan(&adjacency);
    let mut cycles = Vec::new();
    for component in components.into_iter().filter(|component| component.len() > 1) {
        let members: BTreeSet<usize> = component.iter().copied().collect();
        let modules: Vec<String> = component.iter().map(|&i| names[i].clone()).collect();
        let cycle_edges = edges
            .iter()
            .filter(|((from, to), _)| members.contains(&index_of[from]) && members.contains(&index_of[to]))
            .map(|((from, to), witness)| (from.clone(), to.clone(), *witness))
            .collect();
        cycles.push(Cycle {
            modules,
            edges: cycle_edges,
        });
    }
    cycles
}

/// Strongly connected components, each in discovery order.
fn tarjan(adjacency: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        adjacency: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn connect(state: &mut State<'_>, node: usize) {
        state.index[node] = Some(state.next);
        state.low[node] = state.next;
        state.next += 1;
        state.stack.push(node);
        state.on_stack[node] = true;
        for &next in &state.adjacency[node] {
            match state.index[next] {
                None => {
                    connect(state, next);
                    state.low[node] = state.low[node].min(state.low[next]);
                }
                Some(index) if state.on_stack[next] => state.low[node] = state.low[node].min(index),
                Some(_) => {}
            }
        }
        if Some(state.low[node]) == state.index[node] {
            let mut component = Vec::new();
            while let Some(top) = state.stack.pop() {
                state.on_stack[top] = false;
                component.push(top);
                if top == node {
                    break;
                }
            }
            component.reverse();
            state.out.push(component);
        }
    }
    let mut state = State {
        adjacency,
        index: vec![None; adjacency.len()],
        low: vec![0; adjacency.len()],
        on_stack: vec![false; adjacency.len()],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for node in 0..adjacency.len() {
        if state.index[node].is_none() {
            connect(&mut state, node);
        }
    }
    state.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_are_compared_below_their_deepest_common_ancestor() {
        assert_eq!(
            sibling_edge("k::storage::sqlite::audit", "k::hitl::rules"),
            Some(("k::storage".into(), "k::hitl".into()))
        );
        assert_eq!(
            sibling_edge("k::storage::sqlite::audit", "k::storage::sqlite::runs"),
            Some(("k::storage::sqlite::audit".into(), "k::storage::sqlite::runs".into()))
        );
        assert_eq!(
            sibling_edge("k::hitl::rules", "k::hitl"),
            None,
            "a child may use its parent"
        );
        assert_eq!(sibling_edge("k::hitl", "k::hitl::rules"), None);
        assert_eq!(sibling_edge("k", "k::hitl"), None);
    }

    #[test]
    fn tarjan_finds_circles_and_leaves_chains() {
        // 0 -> 1 -> 2 -> 0 is a circle; 3 -> 0 is not part of it.
        let components = tarjan(&[vec![1], vec![2], vec![0], vec![0]]);
        let circles: Vec<_> = components.into_iter().filter(|c| c.len() > 1).collect();
        assert_eq!(circles.len(), 1);
        assert_eq!(
            circles[0].iter().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([0, 1, 2])
        );
    }
}
