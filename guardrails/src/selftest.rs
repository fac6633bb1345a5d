//! `guardrails selftest`: mutation testing of the configured rules.
//!
//! The workspace is copied to a temporary directory (without `target/` and `.git/`). For every
//! rule, each supported reference form is injected into the copy, one at a time; a mutant is
//! *caught* when a new finding (one the unmutated copy does not have) appears with the expected
//! code and rule, in the expected file and, for source forms, on the expected line. Manifest
//! mutants reload `cargo metadata --offline`; source mutants reuse the loaded graph.

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use crate::check::{Options, rule_targets, run as run_check};
use crate::config::{CONFIG_FILE, Config, SearchIn};
use crate::report::Code;
use crate::workspace::{EdgeKind, Workspace};
use crate::{Error, Report};

/// One injected violation and whether it was caught.
#[derive(Debug, Clone)]
pub struct MutantResult {
    /// The rule it targets.
    pub rule: String,
    /// The reference form (`use-rename`, `manifest-dev`, `call-through-alias`, ...).
    pub form: String,
    /// The code expected.
    pub expected: Code,
    /// Where it was injected (relative to the workspace root).
    pub file: String,
    /// The line expected, for source forms.
    pub line: Option<u32>,
    /// Caught?
    pub caught: bool,
    /// When not caught: what the check reported instead.
    pub detail: String,
}

/// A property of the check itself, proved on the copy.
#[derive(Debug, Clone)]
pub struct Invariant {
    /// Its name (`prefilter-sound`, `checkout-rename`).
    pub name: &'static str,
    /// Whether it held.
    pub held: bool,
    /// What was compared, or what differed.
    pub detail: String,
}

/// Every mutant's result, and the invariants.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// In injection order.
    pub mutants: Vec<MutantResult>,
    /// `prefilter-sound`: on the copy and on every source mutant, the findings with the token
    /// pre-filter equal the findings with every file parsed. `checkout-rename`: a second copy
    /// in a directory named after a forbidden crate reports the same findings.
    pub invariants: Vec<Invariant>,
}

impl Outcome {
    /// Whether every mutant was caught (and there was at least one) and every invariant held.
    pub fn all_caught(&self) -> bool {
        !self.mutants.is_empty() && self.mutants.iter().all(|m| m.caught) && self.invariants.iter().all(|i| i.held)
    }

    /// A table of escapes (or of every mutant with `verbose`) and the total.
    pub fn render(&self, verbose: bool) -> String {
        let mut out = String::new();
        for mutant in &self.mutants {
            if verbose || !mutant.caught {
                let _ = writeln!(
                    out,
                    "{:7} {:<34} {:<24} {:<20} {}{}",
                    if mutant.caught { "caught" } else { "ESCAPED" },
                    mutant.rule,
                    mutant.form,
                    mutant.expected,
                    mutant.file,
                    mutant.line.map(|line| format!(":{line}")).unwrap_or_default(),
                );
                if !mutant.caught {
                    let _ = writeln!(out, "        {}", mutant.detail);
                }
            }
        }
        for invariant in &self.invariants {
            let _ = writeln!(
                out,
                "{:7} {:<34} {}",
                if invariant.held { "held" } else { "BROKEN" },
                invariant.name,
                invariant.detail
            );
        }
        let caught = self.mutants.iter().filter(|m| m.caught).count();
        let rules: BTreeSet<&str> = self.mutants.iter().map(|m| m.rule.as_str()).collect();
        let _ = writeln!(
            out,
            "guardrails selftest: {caught}/{} mutants caught ({:.1}%) across {} rules",
            self.mutants.len(),
            if self.mutants.is_empty() {
                0.0
            } else {
                100.0 * caught as f64 / self.mutants.len() as f64
            },
            rules.len()
        );
        out
    }
}

/// An edit to the copy.
enum Edit {
    /// Append `lines` to a file (created when missing).
    Append { file: PathBuf, lines: Vec<String> },
    /// Replace a manifest with this TOML.
    Manifest { file: PathBuf, table: toml::Table },
    /// Create a new crate directory with a manifest and `src/lib.rs`.
    Crate { dir: PathBuf, manifest: String },
}

struct Mutant {
    rule: String,
    form: String,
    expected: Code,
    /// File expected to carry the finding.
    file: PathBuf,
    /// Which appended line (0-based within the first `Append` edit) carries it.
    line_offset: Option<usize>,
    edits: Vec<Edit>,
    needs_metadata: bool,
}

/// Runs the selftest on the workspace at `root`.
///
/// # Errors
///
/// [`Error`] when the config or workspace cannot be loaded, or the copy cannot be made.
pub fn run(root: &Path) -> Result<Outcome, Error> {
    let root = std::fs::canonicalize(root).map_err(|source| Error::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let temp = tempfile::tempdir().map_err(|error| Error::Selftest(format!("cannot create a temp dir: {error}")))?;
    let copy = temp.path().join("workspace");
    copy_tree(&root, &copy).map_err(|error| Error::Selftest(format!("cannot copy the workspace: {error}")))?;
    let config = Config::load(&copy.join(CONFIG_FILE))?;
    let options = Options {
        offline: true,
        memo: true,
        ..Default::default()
    };
    let every_file = Options {
        no_prefilter: true,
        ..options.clone()
    };
    let workspace = Workspace::load(&copy, true)?;
    let baseline = run_check(&workspace, &config, &options)?;
    let known: BTreeSet<String> = baseline.findings.iter().map(|f| f.fingerprint.clone()).collect();
    let mut outcome = Outcome::default();

    // The same workspace in a directory named after a forbidden crate (the name a text
    // pre-filter would trip over) must report the same findings.
    let renamed_name = rule_targets(&workspace, &config)?
        .iter()
        .flat_map(|targets| targets.forbidden.iter().flatten())
        .map(|&index| workspace.packages[index].name.clone())
        .next()
        .unwrap_or_else(|| "guardrails-renamed".to_owned());
    let renamed = temp.path().join(&renamed_name);
    copy_tree(&root, &renamed).map_err(|error| Error::Selftest(format!("cannot copy the workspace: {error}")))?;
    let renamed_report = Workspace::load(&renamed, true).and_then(|loaded| run_check(&loaded, &config, &options))?;
    let renamed_known: BTreeSet<String> = renamed_report.findings.iter().map(|f| f.fingerprint.clone()).collect();
    outcome.invariants.push(Invariant {
        name: "checkout-rename",
        held: renamed_known == known,
        detail: format!(
            "{} findings in `workspace/`, {} in `{renamed_name}/`",
            known.len(),
            renamed_known.len()
        ),
    });

    let mutants = plan(&workspace, &config)?;
    let mut sound = 0;
    let mut unsound = Vec::new();
    let full_baseline = run_check(&workspace, &config, &every_file)?;
    if full_baseline
        .findings
        .iter()
        .map(|f| &f.fingerprint)
        .collect::<BTreeSet<_>>()
        == baseline
            .findings
            .iter()
            .map(|f| &f.fingerprint)
            .collect::<BTreeSet<_>>()
    {
        sound += 1;
    } else {
        unsound.push("the unmutated copy".to_owned());
    }
    for mutant in mutants {
        let backup = Backup::take(&copy, &mutant.edits)?;
        let (file, line) = apply(&mutant)?;
        let result = if mutant.needs_metadata {
            Workspace::load(&copy, true).and_then(|reloaded| run_check(&reloaded, &config, &options))
        } else {
            let filtered = run_check(&workspace, &config, &options);
            // Soundness of the pre-filter, on this mutant: parsing the changed file whatever the
            // pre-filter says finds the same (the unmutated copy was proved with every file).
            let forced = Options {
                parse_anyway: mutant
                    .edits
                    .iter()
                    .filter_map(|edit| match edit {
                        Edit::Append { file, .. } => Some(file.clone()),
                        _ => None,
                    })
                    .collect(),
                ..options.clone()
            };
            if let (Ok(filtered), Ok(full)) = (&filtered, run_check(&workspace, &config, &forced)) {
                let a: BTreeSet<&str> = filtered.findings.iter().map(|f| f.fingerprint.as_str()).collect();
                let b: BTreeSet<&str> = full.findings.iter().map(|f| f.fingerprint.as_str()).collect();
                if a == b {
                    sound += 1;
                } else {
                    unsound.push(mutant.form.clone());
                }
            }
            filtered
        };
        backup.restore()?;
        let rel = relative(&copy, &file);
        let (caught, detail) = match result {
            Ok(report) => judge(&report, &known, &mutant, &rel, line),
            Err(error) => (false, format!("the check failed: {error}")),
        };
        outcome.mutants.push(MutantResult {
            rule: mutant.rule,
            form: mutant.form,
            expected: mutant.expected,
            file: rel,
            line,
            caught,
            detail,
        });
    }
    outcome.invariants.push(Invariant {
        name: "prefilter-sound",
        held: unsound.is_empty(),
        detail: if unsound.is_empty() {
            format!(
                "the copy with every file parsed, and {} source mutants with their file parsed: the same findings",
                sound - 1
            )
        } else {
            format!("the pre-filter hid findings of: {}", unsound.join(", "))
        },
    });
    Ok(outcome)
}

fn judge(report: &Report, known: &BTreeSet<String>, mutant: &Mutant, file: &str, line: Option<u32>) -> (bool, String) {
    let new: Vec<_> = report
        .findings
        .iter()
        .filter(|f| !known.contains(&f.fingerprint))
        .collect();
    let caught = new.iter().any(|finding| {
        finding.code == mutant.expected
            && finding.rule == mutant.rule
            && finding.file == file
            && line.is_none_or(|line| finding.span.line == line)
    });
    let detail = if new.is_empty() {
        "no new finding".to_owned()
    } else {
        new.iter()
            .map(|f| format!("{} {} {}:{}", f.code, f.rule, f.file, f.span.line))
            .collect::<Vec<_>>()
            .join("; ")
    };
    (caught, detail)
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Copies `from` to `to`, skipping `target/`, `.git/` and other hidden directories.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let name_text = name.to_string_lossy();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            if name_text == "target" || name_text.starts_with('.') {
                continue;
            }
            copy_tree(&entry.path(), &to.join(&name))?;
        } else if file_type.is_file() {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// Saved file contents (and created paths) to undo a mutant.
struct Backup {
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
    dirs: Vec<PathBuf>,
}

impl Backup {
    fn take(root: &Path, edits: &[Edit]) -> Result<Self, Error> {
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        let mut save = |path: PathBuf| {
            let content = std::fs::read(&path).ok();
            files.push((path, content));
        };
        save(root.join("Cargo.toml"));
        save(root.join("Cargo.lock"));
        for edit in edits {
            match edit {
                Edit::Append { file, .. } | Edit::Manifest { file, .. } => save(file.clone()),
                Edit::Crate { dir, .. } => dirs.push(dir.clone()),
            }
        }
        Ok(Backup { files, dirs })
    }

    fn restore(self) -> Result<(), Error> {
        let io = |path: &Path, error: std::io::Error| Error::Io {
            path: path.to_path_buf(),
            source: error,
        };
        for (path, content) in self.files {
            match content {
                Some(bytes) => std::fs::write(&path, bytes).map_err(|e| io(&path, e))?,
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        for dir in self.dirs {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(())
    }
}

/// Applies a mutant; returns the file and (for source forms) the line the finding must be on.
fn apply(mutant: &Mutant) -> Result<(PathBuf, Option<u32>), Error> {
    let io = |path: &Path, error: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source: error,
    };
    let mut line = None;
    let mut first_append = true;
    for edit in &mutant.edits {
        match edit {
            Edit::Append { file, lines } => {
                let mut text = std::fs::read_to_string(file).unwrap_or_default();
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                let base = text.lines().count();
                if first_append {
                    line = mutant
                        .line_offset
                        .map(|offset| u32::try_from(base + offset + 1).unwrap_or(0));
                    first_append = false;
                }
                for added in lines {
                    text.push_str(added);
                    text.push('\n');
                }
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
                }
                std::fs::write(file, text).map_err(|e| io(file, e))?;
            }
            Edit::Manifest { file, table } => {
                let text = toml::to_string(table).map_err(|e| Error::Selftest(format!("cannot write TOML: {e}")))?;
                std::fs::write(file, text).map_err(|e| io(file, e))?;
            }
            Edit::Crate { dir, manifest } => {
                std::fs::create_dir_all(dir.join("src")).map_err(|e| io(dir, e))?;
                std::fs::write(dir.join("Cargo.toml"), manifest).map_err(|e| io(dir, e))?;
                std::fs::write(dir.join("src/lib.rs"), "//! selftest hop\n").map_err(|e| io(dir, e))?;
            }
        }
    }
    if mutant.line_offset.is_none() {
        line = None;
    }
    Ok((mutant.file.clone(), line))
}

/// `to` relative to directory `from`, with `..` where needed.
fn path_from(from: &Path, to: &Path) -> String {
    let from: Vec<Component<'_>> = from.components().collect();
    let to: Vec<Component<'_>> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = std::iter::repeat_n("..".to_owned(), from.len() - common).collect();
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

/// Whether `start` reaches `goal` through normal or build edges (a dependency from `goal` to
/// `start` would then be a cycle that cargo refuses).
fn reaches(workspace: &Workspace, start: usize, goal: usize) -> bool {
    let mut seen = BTreeSet::from([start]);
    let mut queue = VecDeque::from([start]);
    while let Some(current) = queue.pop_front() {
        if current == goal {
            return true;
        }
        for dep in &workspace.packages[current].deps {
            if dep.infos.iter().any(|info| info.kind != EdgeKind::Dev) && seen.insert(dep.to) {
                queue.push_back(dep.to);
            }
        }
    }
    false
}

fn manifest_table(path: &Path) -> Result<toml::Table, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| Error::Selftest(format!("{}: {e}", path.display())))
}

fn table_at<'t>(table: &'t mut toml::Table, keys: &[&str]) -> &'t mut toml::Table {
    let mut current = table;
    for key in keys {
        let entry = current
            .entry((*key).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = match entry {
            toml::Value::Table(table) => table,
            _ => unreachable!("just made a table"),
        };
    }
    current
}

/// The new module file mutants go into, next to a library's root, and its module path.
fn mutant_module(target: &crate::workspace::Target) -> (PathBuf, String) {
    let dir = target.src_path.parent().map(Path::to_path_buf).unwrap_or_default();
    (
        dir.join("guardrails_mutant.rs"),
        format!("{}::guardrails_mutant", target.crate_name),
    )
}

/// Plans every mutant for every rule.
fn plan(workspace: &Workspace, config: &Config) -> Result<Vec<Mutant>, Error> {
    let mut mutants = Vec::new();
    let targets = rule_targets(workspace, config)?;
    for (rule, targets) in config.dependency_rules.iter().zip(&targets) {
        let source = targets.from[0];
        let forbidden = &targets.forbidden[0];
        let package = &workspace.packages[source];
        let Some(root_file) = package
            .targets
            .iter()
            .find(|t| t.kind == crate::workspace::TargetKind::Lib)
            .or_else(|| package.targets.first())
            .map(|t| t.src_path.clone())
        else {
            continue;
        };
        // Source forms name any forbidden crate, preferably a workspace member (it has a
        // directory in the tree for #[path] and include!).
        let named = forbidden
            .iter()
            .copied()
            .find(|&i| workspace.packages[i].is_member)
            .or_else(|| forbidden.iter().copied().next());
        let Some(named) = named else { continue };
        let c = workspace.packages[named].code_name();
        let name = &rule.name;
        let source_dir = root_file.parent().map(Path::to_path_buf).unwrap_or_default();
        // A new module file: nothing already in the crate can shadow or excuse the reference.
        let root_file = source_dir.join("guardrails_mutant.rs");
        let into = workspace.packages[named].dir.join("src/lib.rs");
        let rel_into = path_from(&source_dir, &into);
        let rel_from_manifest = path_from(&package.dir, &into);
        let mut add = |form: &str, expected: Code, file: PathBuf, lines: Vec<String>, at: usize| {
            mutants.push(Mutant {
                rule: name.clone(),
                form: form.to_owned(),
                expected,
                file: file.clone(),
                line_offset: Some(at),
                edits: vec![Edit::Append { file, lines }],
                needs_metadata: false,
            });
        };
        let r = Code::ForbiddenReference;
        let one = |line: String| vec![line];
        add(
            "use",
            r,
            root_file.clone(),
            one(format!("use {c}::GuardrailsMutant;")),
            0,
        );
        add(
            "use-rename",
            r,
            root_file.clone(),
            one(format!("use {c} as guardrails_mutant;")),
            0,
        );
        add("use-glob", r, root_file.clone(), one(format!("use {c}::*;")), 0);
        add(
            "use-group",
            r,
            root_file.clone(),
            one(format!("use {{std::fmt::Debug as _, {c}::GuardrailsMutant}};")),
            0,
        );
        add(
            "path-leading-colons",
            r,
            root_file.clone(),
            one(format!(
                "pub fn guardrails_mutant() {{ let _ = ::{c}::guardrails_mutant(); }}"
            )),
            0,
        );
        add(
            "path-in-type",
            r,
            root_file.clone(),
            one(format!("pub fn guardrails_mutant(_: {c}::GuardrailsMutant) {{}}")),
            0,
        );
        add(
            "extern-crate",
            r,
            root_file.clone(),
            one(format!("extern crate {c} as guardrails_mutant;")),
            0,
        );
        add(
            "macro-body",
            r,
            root_file.clone(),
            one(format!(
                "pub fn guardrails_mutant() {{ println!(\"{{:?}}\", {c}::guardrails_mutant()); }}"
            )),
            0,
        );
        // A doc-test is test code built with dev-dependencies: only rules that count both.
        if rule.include_tests && rule.edges.contains(&EdgeKind::Dev) {
            add(
                "doc-test",
                r,
                root_file.clone(),
                vec![
                    "/// ```".to_owned(),
                    format!("/// let _ = {c}::guardrails_mutant();"),
                    "/// ```".to_owned(),
                    "pub fn guardrails_mutant() {}".to_owned(),
                ],
                1,
            );
        }
        add(
            "macro-body-not-rust",
            r,
            root_file.clone(),
            one(format!("guardrails_mutant! {{ @@ {c}::x => ?? }}")),
            0,
        );
        add(
            "attribute-string",
            r,
            root_file.clone(),
            one(format!(
                "#[derive(Debug)] #[serde(with = \"{c}::guardrails_mutant\")] pub struct GuardrailsMutant;"
            )),
            0,
        );
        add(
            "examples-dir",
            r,
            package.dir.join("examples/guardrails_mutant.rs"),
            one(format!("use {c}::GuardrailsMutant;")),
            0,
        );
        add(
            "build-script",
            r,
            package.dir.join("build.rs"),
            one(format!("use {c}::GuardrailsMutant;")),
            0,
        );
        if rule.include_tests {
            add(
                "cfg-test-module",
                r,
                root_file.clone(),
                vec![
                    "#[cfg(test)]".to_owned(),
                    "mod guardrails_mutant {".to_owned(),
                    format!("    use {c}::GuardrailsMutant;"),
                    "}".to_owned(),
                ],
                2,
            );
            add(
                "tests-dir",
                r,
                package.dir.join("tests/guardrails_mutant.rs"),
                one(format!("use {c}::GuardrailsMutant;")),
                0,
            );
            add(
                "benches-dir",
                r,
                package.dir.join("benches/guardrails_mutant.rs"),
                one(format!("use {c}::GuardrailsMutant;")),
                0,
            );
        }
        let i = Code::ForbiddenInclude;
        add(
            "path-attribute",
            i,
            root_file.clone(),
            one(format!("#[path = \"{rel_into}\"] mod guardrails_mutant;")),
            0,
        );
        add(
            "include",
            i,
            root_file.clone(),
            one(format!("include!(\"{rel_into}\");")),
            0,
        );
        add(
            "include-str",
            i,
            root_file.clone(),
            one(format!(
                "pub const GUARDRAILS_MUTANT: &str = include_str!(\"{rel_into}\");"
            )),
            0,
        );
        add(
            "include-manifest-dir",
            i,
            root_file.clone(),
            one(format!(
                "pub const GUARDRAILS_MUTANT: &[u8] = include_bytes!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/{rel_from_manifest}\"));"
            )),
            0,
        );

        // Manifest forms need a forbidden crate that does not depend on the source (cargo
        // refuses cycles through normal and build edges).
        let acyclic = forbidden
            .iter()
            .copied()
            .filter(|&i| !reaches(workspace, i, source))
            .min_by_key(|&i| (!workspace.packages[i].is_member, workspace.packages[i].name.clone()));
        let Some(target) = acyclic else { continue };
        let target_package = &workspace.packages[target];
        let spec = |rename: bool, optional: bool| {
            let mut table = toml::Table::new();
            if target_package.is_member {
                table.insert(
                    "path".to_owned(),
                    toml::Value::String(path_from(&package.dir, &target_package.dir)),
                );
            } else {
                // Pinned to the locked version without default features, so that the offline
                // resolution needs nothing the lock file does not already hold.
                table.insert(
                    "version".to_owned(),
                    toml::Value::String(format!("={}", target_package.version)),
                );
                table.insert("default-features".to_owned(), toml::Value::Boolean(false));
            }
            if rename {
                table.insert("package".to_owned(), toml::Value::String(target_package.name.clone()));
            }
            if optional {
                table.insert("optional".to_owned(), toml::Value::Boolean(true));
            }
            toml::Value::Table(table)
        };
        let base = manifest_table(&package.manifest_path)?;
        let d = Code::ForbiddenDependency;
        let mut manifest = |form: &str, keys: &[&str], key: &str, value: toml::Value, feature: bool| {
            let mut table = base.clone();
            table_at(&mut table, keys).insert(key.to_owned(), value);
            if feature {
                table_at(&mut table, &["features"]).insert(
                    "guardrails-mutant".to_owned(),
                    toml::Value::Array(vec![toml::Value::String(format!("dep:{key}"))]),
                );
            }
            mutants.push(Mutant {
                rule: name.clone(),
                form: form.to_owned(),
                expected: d,
                file: package.manifest_path.clone(),
                line_offset: None,
                edits: vec![Edit::Manifest {
                    file: package.manifest_path.clone(),
                    table,
                }],
                needs_metadata: true,
            });
        };
        let tname = target_package.name.as_str();
        if rule.edges.contains(&EdgeKind::Normal) {
            manifest("manifest-normal", &["dependencies"], tname, spec(false, false), false);
            manifest(
                "manifest-target-specific",
                &["target", "cfg(unix)", "dependencies"],
                tname,
                spec(false, false),
                false,
            );
            manifest("manifest-optional", &["dependencies"], tname, spec(false, true), true);
            manifest(
                "manifest-renamed",
                &["dependencies"],
                "guardrails-mutant-rt",
                spec(true, false),
                false,
            );
        }
        if rule.edges.contains(&EdgeKind::Dev) && rule.include_tests {
            manifest("manifest-dev", &["dev-dependencies"], tname, spec(false, false), false);
        }
        if rule.edges.contains(&EdgeKind::Build) {
            manifest(
                "manifest-build",
                &["build-dependencies"],
                tname,
                spec(false, false),
                false,
            );
        }
        if rule.edges.contains(&EdgeKind::Normal) {
            // A renamed dependency used from source: the rename is what the code writes.
            let mut table = base.clone();
            table_at(&mut table, &["dependencies"]).insert("guardrails-mutant-rt".to_owned(), spec(true, false));
            mutants.push(Mutant {
                rule: name.clone(),
                form: "use-renamed-dependency".to_owned(),
                expected: r,
                file: root_file.clone(),
                line_offset: Some(0),
                edits: vec![
                    Edit::Append {
                        file: root_file.clone(),
                        lines: vec!["use guardrails_mutant_rt::GuardrailsMutant;".to_owned()],
                    },
                    Edit::Manifest {
                        file: package.manifest_path.clone(),
                        table,
                    },
                ],
                needs_metadata: true,
            });

            // Three hops: source -> hop-a -> hop-b -> forbidden.
            let root = &workspace.root;
            let mut root_table = manifest_table(&root.join("Cargo.toml"))?;
            let members = table_at(&mut root_table, &["workspace"])
                .entry("members".to_owned())
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            if let toml::Value::Array(list) = members {
                list.push(toml::Value::String("guardrails-mutant-hop-a".to_owned()));
                list.push(toml::Value::String("guardrails-mutant-hop-b".to_owned()));
            }
            let hop_b_dep = if target_package.is_member {
                format!(
                    "{{ path = \"{}\" }}",
                    path_from(&root.join("guardrails-mutant-hop-b"), &target_package.dir)
                )
            } else {
                format!(
                    "{{ version = \"={}\", default-features = false }}",
                    target_package.version
                )
            };
            let mut source_table = base.clone();
            let mut hop = toml::Table::new();
            hop.insert(
                "path".to_owned(),
                toml::Value::String(path_from(&package.dir, &root.join("guardrails-mutant-hop-a"))),
            );
            table_at(&mut source_table, &["dependencies"])
                .insert("guardrails-mutant-hop-a".to_owned(), toml::Value::Table(hop));
            mutants.push(Mutant {
                rule: name.clone(),
                form: "manifest-transitive-3-hops".to_owned(),
                expected: d,
                file: package.manifest_path.clone(),
                line_offset: None,
                edits: vec![
                    Edit::Manifest {
                        file: root.join("Cargo.toml"),
                        table: root_table,
                    },
                    Edit::Crate {
                        dir: root.join("guardrails-mutant-hop-a"),
                        manifest: "[package]\nname = \"guardrails-mutant-hop-a\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n[dependencies]\nguardrails-mutant-hop-b = { path = \"../guardrails-mutant-hop-b\" }\n".to_owned(),
                    },
                    Edit::Crate {
                        dir: root.join("guardrails-mutant-hop-b"),
                        manifest: format!(
                            "[package]\nname = \"guardrails-mutant-hop-b\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n[dependencies]\n{tname} = {hop_b_dep}\n"
                        ),
                    },
                    Edit::Manifest {
                        file: package.manifest_path.clone(),
                        table: source_table,
                    },
                ],
                needs_metadata: true,
            });
        }
    }

    for list in &config.caller_allowlists {
        let path: Vec<&str> = list.function.split("::").collect();
        let full = list.function.clone();
        let function_name = path[path.len() - 1];
        let parent = path[..path.len() - 1].join("::");
        let krate = path[0];
        let rest = path[1..].join("::");
        let defining = workspace.member_by_crate(krate);
        // The host: a member's library root outside the allowlist, other than the defining crate.
        let host = workspace
            .members
            .iter()
            .copied()
            .filter(|&i| Some(i) != defining)
            .filter_map(|i| {
                let package = &workspace.packages[i];
                let target = package
                    .targets
                    .iter()
                    .find(|t| t.kind == crate::workspace::TargetKind::Lib)?;
                let (file, module) = mutant_module(target);
                let allowed = list
                    .allowed
                    .iter()
                    .any(|scope| scope.contains(&workspace.relative(&file), Some(&module)));
                (!allowed).then_some(file)
            })
            .next();
        let Some(host) = host else { continue };
        let name = &list.name;
        let mut add = |form: &str, file: &Path, lines: Vec<String>, at: usize| {
            mutants.push(Mutant {
                rule: name.clone(),
                form: form.to_owned(),
                expected: Code::DisallowedCaller,
                file: file.to_path_buf(),
                line_offset: Some(at),
                edits: vec![Edit::Append {
                    file: file.to_path_buf(),
                    lines,
                }],
                needs_metadata: false,
            });
        };
        let call = |callee: &str| format!("pub fn guardrails_mutant() {{ let _ = {callee}(); }}");
        add("call-qualified", &host, vec![call(&full)], 0);
        add("call-leading-colons", &host, vec![call(&format!("::{full}"))], 0);
        add(
            "call-after-use",
            &host,
            vec![format!("use {full};"), call(function_name)],
            1,
        );
        add(
            "call-through-use-alias",
            &host,
            vec![
                format!("use {full} as guardrails_mutant_alias;"),
                call("guardrails_mutant_alias"),
            ],
            1,
        );
        add(
            "call-through-module-alias",
            &host,
            vec![
                format!("use {parent} as guardrails_mutant_module;"),
                call(&format!("guardrails_mutant_module::{function_name}")),
            ],
            1,
        );
        add(
            "call-through-crate-alias",
            &host,
            vec![
                format!("use {krate} as guardrails_mutant_crate;"),
                call(&format!("guardrails_mutant_crate::{rest}")),
            ],
            1,
        );
        add(
            "call-through-extern-crate-alias",
            &host,
            vec![
                format!("extern crate {krate} as guardrails_mutant_extern;"),
                call(&format!("guardrails_mutant_extern::{rest}")),
            ],
            1,
        );
        if path.len() >= 3 {
            let module_parent = path[..path.len() - 2].join("::");
            let last_module = path[path.len() - 2];
            add(
                "call-through-module-import",
                &host,
                vec![
                    format!("use {module_parent}::{last_module};"),
                    call(&format!("{last_module}::{function_name}")),
                ],
                1,
            );
        }
        add(
            "call-through-glob",
            &host,
            vec![format!("use {parent}::*;"), call(function_name)],
            1,
        );
        add(
            "function-pointer",
            &host,
            vec![format!(
                "pub fn guardrails_mutant() {{ let pointer = {full}; let _ = pointer; }}"
            )],
            0,
        );
        add(
            "ufcs",
            &host,
            vec![format!(
                "pub fn guardrails_mutant() {{ let _ = <{parent}>::{function_name}(); }}"
            )],
            0,
        );
        add(
            "macro-body",
            &host,
            vec![format!(
                "pub fn guardrails_mutant() {{ println!(\"{{:?}}\", {full}()); }}"
            )],
            0,
        );
        add(
            "macro-body-through-alias",
            &host,
            vec![
                format!("use {full} as guardrails_mutant_alias;"),
                "pub fn guardrails_mutant() { let _ = vec![guardrails_mutant_alias()]; }".to_owned(),
            ],
            1,
        );
        add(
            "re-export",
            &host,
            vec![format!("pub use {full} as guardrails_mutant_reexport;")],
            0,
        );
        add(
            "cfg-test-call",
            &host,
            vec![
                "#[cfg(test)]".to_owned(),
                "mod guardrails_mutant {".to_owned(),
                format!("    fn probe() {{ let _ = {full}(); }}"),
                "}".to_owned(),
            ],
            2,
        );
        // Inside the defining crate, through `crate::` from a module the allowlist does not name.
        if let Some(defining) = defining {
            let package = &workspace.packages[defining];
            if let Some(target) = package
                .targets
                .iter()
                .find(|t| t.kind == crate::workspace::TargetKind::Lib)
            {
                let (file, module) = mutant_module(target);
                let rel = workspace.relative(&file);
                if !list.allowed.iter().any(|scope| scope.contains(&rel, Some(&module))) {
                    add("call-crate-relative", &file, vec![call(&format!("crate::{rest}"))], 0);
                    add("call-super-relative", &file, vec![call(&format!("super::{rest}"))], 0);
                }
            }
        }
    }

    plan_module_rules(workspace, config, &mut mutants);
    plan_acyclic_modules(workspace, config, &mut mutants);

    for pattern in &config.patterns {
        let host = workspace.members.iter().copied().find_map(|i| {
            let package = &workspace.packages[i];
            let target = package
                .targets
                .iter()
                .find(|t| t.kind == crate::workspace::TargetKind::Lib)?;
            let (file, module) = mutant_module(target);
            let allowed = pattern
                .allowed
                .iter()
                .any(|scope| scope.contains(&workspace.relative(&file), Some(&module)));
            (!allowed).then_some(file)
        });
        let Some(host) = host else { continue };
        let example = &pattern.example;
        let mut forms = vec![
            (
                "string-literal",
                format!("pub const GUARDRAILS_MUTANT: &str = {example:?};"),
            ),
            (
                "string-in-macro",
                format!("pub fn guardrails_mutant() {{ let _ = format!({example:?}); }}"),
            ),
            (
                "raw-string",
                format!("pub const GUARDRAILS_MUTANT: &str = r#\"{example}\"#;"),
            ),
        ];
        if pattern.search == SearchIn::Text {
            forms.push(("comment", format!("// {example}")));
        }
        for (form, line) in forms {
            mutants.push(Mutant {
                rule: pattern.name.clone(),
                form: form.to_owned(),
                expected: Code::ForbiddenPattern,
                file: host.clone(),
                line_offset: Some(0),
                edits: vec![Edit::Append {
                    file: host.clone(),
                    lines: vec![line],
                }],
                needs_metadata: false,
            });
        }
    }
    Ok(mutants)
}

/// The library target of member `krate`.
fn library<'w>(workspace: &'w Workspace, krate: &str) -> Option<&'w crate::workspace::Target> {
    let index = workspace.member(krate)?;
    workspace.packages[index]
        .targets
        .iter()
        .find(|target| target.kind == crate::workspace::TargetKind::Lib)
}

/// A new file in module `module` (`krate::a::b`) of the library rooted at `src_path`:
/// `<src dir>/a/b/guardrails_mutant.rs`, module `krate::a::b::guardrails_mutant`.
fn mutant_file_in(src_path: &Path, module: &str) -> PathBuf {
    let mut dir = src_path.parent().map(Path::to_path_buf).unwrap_or_default();
    for segment in module.split("::").skip(1) {
        dir.push(segment);
    }
    dir.join("guardrails_mutant.rs")
}

/// The reference forms a mutant in module `from` can use to reach `target` (both full module
/// paths of crate `crate_name`): `(form, lines, line carrying the finding)`.
fn module_forms(from: &str, target: &str, include_tests: bool) -> Vec<(&'static str, Vec<String>, usize)> {
    let relative = target.split_once("::").map_or("", |(_, rest)| rest).to_owned();
    // The mutant module is one level below `from`: one `super` per segment of it.
    let supers = "super::".repeat(from.split("::").count());
    let call = |path: String| format!("pub fn guardrails_mutant() {{ let _ = {path}::guardrails_mutant(); }}");
    let mut forms = vec![
        ("use", vec![format!("use crate::{relative}::GuardrailsMutant;")], 0),
        (
            "use-group",
            vec![format!("use crate::{{{relative}::GuardrailsMutant}};")],
            0,
        ),
        ("path", vec![call(format!("crate::{relative}"))], 0),
        ("super-path", vec![call(format!("{supers}{relative}"))], 0),
        (
            "macro-body",
            vec![format!(
                "pub fn guardrails_mutant() {{ println!(\"{{:?}}\", crate::{relative}::guardrails_mutant()); }}"
            )],
            0,
        ),
        (
            "path-through-alias",
            vec![
                format!("use crate::{relative} as guardrails_mutant_alias;"),
                "pub fn guardrails_mutant() { let _ = guardrails_mutant_alias::guardrails_mutant(); }".to_owned(),
            ],
            1,
        ),
    ];
    if include_tests {
        forms.push((
            "cfg-test",
            vec![
                "#[cfg(test)]".to_owned(),
                "mod guardrails_mutant_tests {".to_owned(),
                format!("    fn probe() {{ let _ = crate::{relative}::guardrails_mutant(); }}"),
                "}".to_owned(),
            ],
            2,
        ));
    }
    forms
}

/// Mutants of `[[module-rule]]`s: a new module under the first `from` module reaching the first
/// `forbidden` module in each reference form, and through a re-export at the crate root.
fn plan_module_rules(workspace: &Workspace, config: &Config, mutants: &mut Vec<Mutant>) {
    for rule in &config.module_rules {
        let Some(lib) = library(workspace, &rule.krate) else {
            continue;
        };
        let (from, forbidden) = (&rule.from[0], &rule.forbidden[0]);
        let file = mutant_file_in(&lib.src_path, from);
        let mut add = |form: &str, edits: Vec<Edit>, at: usize| {
            mutants.push(Mutant {
                rule: rule.name.clone(),
                form: form.to_owned(),
                expected: Code::ForbiddenModuleReference,
                file: file.clone(),
                line_offset: Some(at),
                edits,
                needs_metadata: false,
            });
        };
        for (form, lines, at) in module_forms(from, forbidden, rule.include_tests) {
            add(
                form,
                vec![Edit::Append {
                    file: file.clone(),
                    lines,
                }],
                at,
            );
        }
        let relative = forbidden.split_once("::").map_or("", |(_, rest)| rest);
        add(
            "path-through-root-re-export",
            vec![
                Edit::Append {
                    file: file.clone(),
                    lines: vec!["pub fn guardrails_mutant() { let _ = crate::GuardrailsMutantReexport; }".to_owned()],
                },
                Edit::Append {
                    file: lib.src_path.clone(),
                    lines: vec![format!("pub use {relative}::GuardrailsMutantReexport;")],
                },
            ],
            0,
        );
    }
}

/// Mutants of `[[acyclic-modules]]`: for the first reference between two top-level modules of
/// a crate (`a` to `b`), a new module in `b` reaching back to `a`, in each reference form.
fn plan_acyclic_modules(workspace: &Workspace, config: &Config, mutants: &mut Vec<Mutant>) {
    let files = crate::source::discover(workspace);
    for rule in &config.acyclic_modules {
        for krate in &rule.crates {
            let Some(lib) = library(workspace, krate) else { continue };
            let crate_files: Vec<&crate::source::SourceFile> = files
                .iter()
                .filter(|file| {
                    workspace.packages[file.package].name == *krate
                        && file.target == crate::workspace::TargetKind::Lib
                        && file.crate_name.as_deref() == Some(lib.crate_name.as_str())
                })
                .collect();
            let graph = crate::modules::graph(&lib.crate_name, &crate_files);
            let top = |module: &str| module.split("::").take(2).collect::<Vec<_>>().join("::");
            let edge = graph.references.iter().find(|reference| {
                !reference.in_test
                    && reference.from.split("::").count() >= 2
                    && reference.to.split("::").count() >= 2
                    && top(&reference.from) != top(&reference.to)
            });
            let Some(edge) = edge else { continue };
            let (a, b) = (top(&edge.from), top(&edge.to));
            let file = mutant_file_in(&lib.src_path, &b);
            for (form, lines, at) in module_forms(&b, &a, rule.include_tests) {
                // The edge's finding sits at its first reference in the new module.
                let at = if form == "cfg-test" { at } else { 0 };
                mutants.push(Mutant {
                    rule: rule.name.clone(),
                    form: format!("{krate} {form}"),
                    expected: Code::ModuleCycle,
                    file: file.clone(),
                    line_offset: Some(at),
                    edits: vec![Edit::Append {
                        file: file.clone(),
                        lines,
                    }],
                    needs_metadata: false,
                });
            }
        }
    }
}
