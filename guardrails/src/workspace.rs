//! The workspace as data: packages, targets and the resolved dependency graph from
//! `cargo metadata --all-features` (every platform, every optional dependency).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use cargo_metadata::{CargoOpt, DependencyKind, MetadataCommand};
use serde::Serialize;

use crate::Error;

/// The kind of a dependency edge, as Cargo's `[dependencies]`, `[dev-dependencies]` and
/// `[build-dependencies]` tables name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeKind {
    /// `[dependencies]`.
    Normal,
    /// `[dev-dependencies]`: tests, benches and examples only.
    Dev,
    /// `[build-dependencies]`: the build script.
    Build,
}

impl EdgeKind {
    /// All three kinds.
    pub const ALL: [EdgeKind; 3] = [EdgeKind::Normal, EdgeKind::Dev, EdgeKind::Build];

    /// `normal`, `dev` or `build`.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeKind::Normal => "normal",
            EdgeKind::Dev => "dev",
            EdgeKind::Build => "build",
        }
    }

    /// The manifest table that declares edges of this kind.
    pub fn table(self) -> &'static str {
        match self {
            EdgeKind::Normal => "dependencies",
            EdgeKind::Dev => "dev-dependencies",
            EdgeKind::Build => "build-dependencies",
        }
    }

    fn from_cargo(kind: DependencyKind) -> Self {
        match kind {
            DependencyKind::Development => EdgeKind::Dev,
            DependencyKind::Build => EdgeKind::Build,
            _ => EdgeKind::Normal,
        }
    }
}

impl fmt::Display for EdgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The kind of code a source file (or a finding) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// A library (lib, rlib, dylib, cdylib, staticlib, proc-macro).
    Lib,
    /// A binary.
    Bin,
    /// Test code: a `tests/` target, `#[cfg(test)]` or `#[test]` code, or a dev-dependency edge.
    Test,
    /// A `benches/` target.
    Bench,
    /// An `examples/` target.
    Example,
    /// The build script, or a build-dependency edge.
    Build,
}

impl TargetKind {
    /// `lib`, `bin`, `test`, `bench`, `example` or `build`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Lib => "lib",
            TargetKind::Bin => "bin",
            TargetKind::Test => "test",
            TargetKind::Bench => "bench",
            TargetKind::Example => "example",
            TargetKind::Build => "build",
        }
    }

    /// Whether code of this kind is test code (tests and benches).
    pub fn is_test(self) -> bool {
        matches!(self, TargetKind::Test | TargetKind::Bench)
    }

    fn from_cargo(kinds: &[cargo_metadata::TargetKind]) -> Self {
        use cargo_metadata::TargetKind as K;
        match kinds.first() {
            Some(K::Bin) => TargetKind::Bin,
            Some(K::Test) => TargetKind::Test,
            Some(K::Bench) => TargetKind::Bench,
            Some(K::Example) => TargetKind::Example,
            Some(K::CustomBuild) => TargetKind::Build,
            _ => TargetKind::Lib,
        }
    }

    /// The target kind a dependency edge of this kind feeds.
    pub fn of_edge(kind: EdgeKind) -> Self {
        match kind {
            EdgeKind::Normal => TargetKind::Lib,
            EdgeKind::Dev => TargetKind::Test,
            EdgeKind::Build => TargetKind::Build,
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One compilation target of a package.
#[derive(Debug, Clone)]
pub struct Target {
    /// The crate name as code sees it (`-` replaced by `_`).
    pub crate_name: String,
    /// Its kind.
    pub kind: TargetKind,
    /// Its root source file.
    pub src_path: PathBuf,
    /// Whether `cargo test` compiles its doc-tests (`[lib] doctest = false` turns them off).
    pub doctest: bool,
}

/// One resolved edge kind of a dependency: the kind plus, for `[target.'cfg(..)'.dependencies]`,
/// the platform, and whether it is optional (feature-enabled).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdgeInfo {
    /// Normal, dev or build.
    pub kind: EdgeKind,
    /// `cfg(..)` or a target triple, when the dependency is platform-specific.
    pub platform: Option<String>,
    /// Declared `optional = true` (counted because the graph is resolved with all features).
    pub optional: bool,
}

/// A resolved dependency edge.
#[derive(Debug, Clone)]
pub struct Dep {
    /// Index of the dependency in [`Workspace::packages`].
    pub to: usize,
    /// The name the dependent's code uses for it (the rename, if any, with `-` as `_`).
    pub extern_name: String,
    /// Every way the dependent declares it.
    pub infos: Vec<EdgeInfo>,
}

/// A package of the resolved graph (a workspace member or a registry/git/path dependency).
#[derive(Debug, Clone)]
pub struct Package {
    /// Package name (`agent-runtime`).
    pub name: String,
    /// Version.
    pub version: String,
    /// The library crate name (`agent_runtime`), if it has a library.
    pub lib_name: Option<String>,
    /// Its `Cargo.toml`.
    pub manifest_path: PathBuf,
    /// The directory of its `Cargo.toml`.
    pub dir: PathBuf,
    /// Whether it is a member of the checked workspace.
    pub is_member: bool,
    /// Its targets.
    pub targets: Vec<Target>,
    /// Resolved dependencies, sorted by dependency name.
    pub deps: Vec<Dep>,
}

impl Package {
    /// The name code uses for this package's library: the lib target's name, else the package
    /// name with `-` as `_`.
    pub fn code_name(&self) -> String {
        self.lib_name.clone().unwrap_or_else(|| self.name.replace('-', "_"))
    }
}

/// The workspace under check.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The workspace root directory (where the root `Cargo.toml` is).
    pub root: PathBuf,
    /// Every package in the resolved graph, sorted by name then version.
    pub packages: Vec<Package>,
    /// Indices of the workspace members, sorted by name.
    pub members: Vec<usize>,
    /// Directories the root manifest's `[workspace] exclude` lists (never scanned).
    pub excluded: Vec<PathBuf>,
}

impl Workspace {
    /// Loads the workspace whose root is `root` with `cargo metadata --all-features`.
    ///
    /// `offline` adds `--offline` (used by `selftest`, which must not touch the network).
    ///
    /// # Errors
    ///
    /// [`Error::Metadata`] when `cargo metadata` fails, [`Error::NoResolve`] without a graph.
    pub fn load(root: &Path, offline: bool) -> Result<Self, Error> {
        let mut command = MetadataCommand::new();
        command
            .manifest_path(root.join("Cargo.toml"))
            .features(CargoOpt::AllFeatures);
        if offline {
            command.other_options(vec!["--offline".to_owned()]);
        }
        let metadata = command.exec().map_err(|source| Error::Metadata {
            root: root.to_path_buf(),
            source: Box::new(source),
        })?;
        let resolve = metadata.resolve.as_ref().ok_or(Error::NoResolve)?;

        let mut order: Vec<&cargo_metadata::Package> = metadata.packages.iter().collect();
        order.sort_by(|a, b| (&a.name[..], &a.version, &a.id.repr).cmp(&(&b.name[..], &b.version, &b.id.repr)));
        let index: BTreeMap<&cargo_metadata::PackageId, usize> =
            order.iter().enumerate().map(|(i, p)| (&p.id, i)).collect();
        let member_ids: std::collections::BTreeSet<&cargo_metadata::PackageId> =
            metadata.workspace_members.iter().collect();
        let nodes: BTreeMap<&cargo_metadata::PackageId, &cargo_metadata::Node> =
            resolve.nodes.iter().map(|node| (&node.id, node)).collect();

        let mut packages = Vec::with_capacity(order.len());
        for package in &order {
            let manifest_path = PathBuf::from(package.manifest_path.as_std_path());
            let dir = manifest_path.parent().map(Path::to_path_buf).unwrap_or_default();
            let mut targets: Vec<Target> = package
                .targets
                .iter()
                .map(|target| Target {
                    crate_name: target.name.replace('-', "_"),
                    kind: TargetKind::from_cargo(&target.kind),
                    src_path: PathBuf::from(target.src_path.as_std_path()),
                    doctest: target.doctest,
                })
                .collect();
            targets.sort_by(|a, b| a.src_path.cmp(&b.src_path));
            let lib_name = package
                .targets
                .iter()
                .find(|target| TargetKind::from_cargo(&target.kind) == TargetKind::Lib)
                .map(|target| target.name.replace('-', "_"));
            let mut deps = Vec::new();
            if let Some(node) = nodes.get(&package.id) {
                for node_dep in &node.deps {
                    let Some(&to) = index.get(&node_dep.pkg) else { continue };
                    let to_name = &order[to].name;
                    let mut infos: Vec<EdgeInfo> = node_dep
                        .dep_kinds
                        .iter()
                        .map(|info| {
                            let kind = EdgeKind::from_cargo(info.kind);
                            let platform = info.target.as_ref().map(ToString::to_string);
                            let optional = package.dependencies.iter().any(|declared| {
                                declared.name == to_name[..]
                                    && EdgeKind::from_cargo(declared.kind) == kind
                                    && declared.target.as_ref().map(ToString::to_string) == platform
                                    && declared.optional
                            });
                            EdgeInfo {
                                kind,
                                platform,
                                optional,
                            }
                        })
                        .collect();
                    infos.sort();
                    infos.dedup();
                    deps.push(Dep {
                        to,
                        extern_name: node_dep.name.clone(),
                        infos,
                    });
                }
            }
            deps.sort_by(|a, b| (&a.extern_name, a.to).cmp(&(&b.extern_name, b.to)));
            packages.push(Package {
                name: package.name.to_string(),
                version: package.version.to_string(),
                lib_name,
                manifest_path,
                dir,
                is_member: member_ids.contains(&package.id),
                targets,
                deps,
            });
        }
        let mut members: Vec<usize> = (0..packages.len()).filter(|&i| packages[i].is_member).collect();
        members.sort_by(|&a, &b| packages[a].name.cmp(&packages[b].name));
        let root = PathBuf::from(metadata.workspace_root.as_std_path());
        let excluded = std::fs::read_to_string(root.join("Cargo.toml"))
            .ok()
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
            .and_then(|table| {
                let list = table.get("workspace")?.get("exclude")?.as_array()?.clone();
                Some(
                    list.iter()
                        .filter_map(|v| v.as_str().map(|dir| root.join(dir)))
                        .collect(),
                )
            })
            .unwrap_or_default();
        Ok(Workspace {
            root,
            packages,
            members,
            excluded,
        })
    }

    /// The member called `name`.
    pub fn member(&self, name: &str) -> Option<usize> {
        self.members.iter().copied().find(|&i| self.packages[i].name == name)
    }

    /// Every package (member or not) called `name`.
    pub fn packages_named(&self, name: &str) -> Vec<usize> {
        (0..self.packages.len())
            .filter(|&i| self.packages[i].name == name)
            .collect()
    }

    /// The member whose library crate is called `crate_name` (`agent_runtime`).
    pub fn member_by_crate(&self, crate_name: &str) -> Option<usize> {
        self.members
            .iter()
            .copied()
            .find(|&i| self.packages[i].lib_name.as_deref() == Some(crate_name))
    }

    /// `path` relative to the workspace root, with `/` separators (paths outside the root stay
    /// absolute).
    pub fn relative(&self, path: &Path) -> String {
        // A path given relative to the current directory (`--config ./guardrails.toml`) is
        // named as any other file of the workspace is, whatever the flag's spelling.
        let absolute;
        let path = if path.is_relative() {
            absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            absolute.as_path()
        } else {
            path
        };
        let Ok(relative) = path.strip_prefix(&self.root) else {
            return path.display().to_string();
        };
        relative
            .components()
            .map(|component| component.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }
}
