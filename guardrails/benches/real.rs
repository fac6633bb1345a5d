//! Benchmark (not a test): a full `guardrails check` on a workspace assembled from **real crate
//! sources** nobody here wrote: the registry crates of agentd's own `Cargo.lock`, as cargo
//! unpacked them under `$CARGO_HOME/registry/src`, copied into generated member directories.
//!
//! Run: `cargo bench -p guardrails --bench real` (release profile; the crates must be unpacked,
//! which any build of the workspace does). Crates are taken in `Cargo.lock` order (by name),
//! the newest version of each name, until the workspace holds at least `--files` (2,000) `.rs`
//! files and `--mb` (28) MB, the size of wasmtime's own workspace. Each member keeps its
//! sources, `build.rs`, tests, benches and examples and its `[lib]`/`[[bin]]` sections; its
//! manifest loses dependencies and features (the source layer does not need them, and no
//! registry is reached).
//!
//! Rules, in the shape of real ones: four widely used crates of the set (`serde`, `tokio`, `syn`
//! and `regex` when present) are forbidden to every other member, a string-literal pattern looks
//! for SQL, and a text pattern for `todo!()`. Real code references those crates for real, so
//! there are real findings; their number is printed, not asserted.
//!
//! Prints, for the median of `--runs` (5) runs after a warm-up: the full check's wall time,
//! `cargo metadata`, the source layer and its throughput, both as shipped (token pre-filter,
//! then `syn`) and with every file parsed. Target (issue 15): at most 2 s for the full check of
//! a 2,000-file, 28 MB real-code workspace on a 2-core machine.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{arg, median};
use guardrails::{Options, Report};

mod common;

/// `$CARGO_HOME/registry/src/<index>/`: every index directory.
fn registry_dirs() -> Vec<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let Ok(entries) = std::fs::read_dir(home.join("registry/src")) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    dirs.sort();
    dirs
}

/// Registry packages of the lock file: name → newest version.
fn locked_packages(lock: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(lock).expect("Cargo.lock");
    let table: toml::Table = toml::from_str(&text).expect("Cargo.lock is TOML");
    let mut out: BTreeMap<String, (Vec<u64>, String)> = BTreeMap::new();
    for package in table["package"].as_array().expect("[[package]]") {
        let Some(source) = package.get("source").and_then(|s| s.as_str()) else {
            continue;
        };
        if !source.starts_with("registry+") {
            continue;
        }
        let name = package["name"].as_str().unwrap().to_owned();
        let version = package["version"].as_str().unwrap().to_owned();
        let key: Vec<u64> = version
            .split(['.', '-', '+'])
            .map(|part| part.parse().unwrap_or(0))
            .collect();
        let newer = out.get(&name).is_none_or(|(old, _)| key > *old);
        if newer {
            out.insert(name, (key, version));
        }
    }
    out.into_iter().map(|(name, (_, version))| (name, version)).collect()
}

fn rs_files(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            let name = entry.file_name();
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                rs_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((path.clone(), entry.metadata().map(|m| m.len()).unwrap_or(0)));
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().filter_map(Result::ok) {
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            if entry.file_name() != "target" {
                copy_dir(&entry.path(), &target);
            }
        } else if kind.is_file() {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The crate's manifest without what would need a registry: dependencies, features,
/// `links`, `required-features`, workspace and lint inheritance.
fn member_manifest(original: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(original).unwrap_or_default();
    let table: toml::Table = toml::from_str(&text).unwrap_or_default();
    let mut out = toml::Table::new();
    let mut package = toml::Table::new();
    package.insert("name".into(), name.into());
    package.insert("version".into(), "0.1.0".into());
    let edition = table
        .get("package")
        .and_then(|p| p.get("edition"))
        .and_then(|e| e.as_str())
        .unwrap_or("2015");
    package.insert("edition".into(), edition.into());
    for key in [
        "autobins",
        "autoexamples",
        "autotests",
        "autobenches",
        "autolib",
        "build",
    ] {
        if let Some(value) = table.get("package").and_then(|p| p.get(key)) {
            package.insert(key.into(), value.clone());
        }
    }
    out.insert("package".into(), toml::Value::Table(package));
    if let Some(lib) = table.get("lib").and_then(|l| l.as_table()) {
        let mut lib = lib.clone();
        lib.remove("required-features");
        out.insert("lib".into(), toml::Value::Table(lib));
    }
    for section in ["bin", "test", "bench", "example"] {
        if let Some(targets) = table.get(section).and_then(|t| t.as_array()) {
            let cleaned: Vec<toml::Value> = targets
                .iter()
                .filter_map(|t| t.as_table())
                .map(|t| {
                    let mut t = t.clone();
                    t.remove("required-features");
                    toml::Value::Table(t)
                })
                .collect();
            out.insert(section.into(), toml::Value::Array(cleaned));
        }
    }
    toml::to_string(&out).unwrap()
}

/// Widely used crates, forbidden to every other member of the assembled workspace.
const FORBIDDEN: [&str; 4] = ["serde", "tokio", "syn", "regex"];

struct Assembled {
    crates: Vec<String>,
    files: usize,
    bytes: u64,
    forbidden: Vec<String>,
}

fn assemble(root: &Path, want_files: usize, want_bytes: u64) -> Assembled {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let registries = registry_dirs();
    let mut crates = Vec::new();
    let (mut files, mut bytes) = (0, 0);
    let mut members = String::new();
    let locked = locked_packages(&lock);
    // The crates the rule forbids come first, so they are members; then the rest by name.
    let order = FORBIDDEN
        .iter()
        .filter_map(|name| locked.get_key_value(*name))
        .chain(locked.iter().filter(|(name, _)| !FORBIDDEN.contains(&name.as_str())));
    for (name, version) in order {
        if files >= want_files && bytes >= want_bytes {
            break;
        }
        let Some(source) = registries
            .iter()
            .map(|dir| dir.join(format!("{name}-{version}")))
            .find(|dir| dir.join("Cargo.toml").is_file())
        else {
            continue;
        };
        let mut found = Vec::new();
        rs_files(&source, &mut found);
        if found.is_empty() {
            continue;
        }
        let dir = root.join("members").join(name);
        copy_dir(&source, &dir);
        // Registry crates carry their original manifest beside the normalized one.
        let _ = std::fs::remove_file(dir.join("Cargo.toml.orig"));
        std::fs::write(
            dir.join("Cargo.toml"),
            member_manifest(&source.join("Cargo.toml"), name),
        )
        .unwrap();
        // Nested packages (a crate's own fuzz/ or example workspaces) are not members.
        files += found.len();
        bytes += found.iter().map(|(_, size)| size).sum::<u64>();
        let _ = write!(members, "\"members/{name}\", ");
        crates.push(name.clone());
    }
    std::fs::write(
        root.join("Cargo.toml"),
        format!("[workspace]\nresolver = \"2\"\nmembers = [{members}]\n"),
    )
    .unwrap();
    let forbidden: Vec<String> = FORBIDDEN
        .iter()
        .filter(|name| crates.iter().any(|c| c == *name))
        .map(|name| (*name).to_owned())
        .collect();
    let from: Vec<String> = crates
        .iter()
        .filter(|c| !forbidden.contains(c))
        .map(|c| format!("\"{c}\""))
        .collect();
    let forbidden_list: Vec<String> = forbidden.iter().map(|c| format!("\"{c}\"")).collect();
    std::fs::write(
        root.join("guardrails.toml"),
        format!(
            r#"version = 1

[[dependency-rule]]
name = "leaf-crates-stay-small"
from = [{}]
forbidden = [{}]
reason = "benchmark: widely used crates are forbidden to every other member"

[[forbidden-pattern]]
name = "no-sql-in-strings"
regex = '(?i)\bselect\s+\*\s+from\b'
example = "SELECT * FROM t"
search = "string-literals"
allowed = ["members/regex/**"]
reason = "benchmark"

[[forbidden-pattern]]
name = "no-todo"
regex = 'todo!\(\)'
example = "todo!()"
search = "text"
allowed = ["members/tokio/**"]
reason = "benchmark"
"#,
            from.join(", "),
            forbidden_list.join(", ")
        ),
    )
    .unwrap();
    Assembled {
        crates,
        files,
        bytes,
        forbidden,
    }
}

fn run(root: &Path, options: &Options, runs: usize) -> (Report, Duration, Duration, Duration) {
    let mut report = None;
    let (mut total, mut metadata, mut source) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let started = Instant::now();
        let checked = guardrails::check_workspace(root, None, options).expect("the assembled workspace checks");
        total.push(started.elapsed());
        metadata.push(checked.stats.metadata_time);
        source.push(checked.stats.source_time);
        report = Some(checked);
    }
    (
        report.expect("at least one run"),
        median(total),
        median(metadata),
        median(source),
    )
}

fn main() {
    let want_files = arg("--files", 2_000);
    let want_mb = arg("--mb", 28);
    let runs = arg("--runs", 5);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let started = Instant::now();
    let assembled = assemble(root, want_files, want_mb as u64 * 1_000_000);
    if assembled.files < want_files {
        println!(
            "only {} files of real crates are unpacked under $CARGO_HOME/registry/src; build the workspace first",
            assembled.files
        );
        return;
    }
    println!(
        "assembled {} real crates ({} .. {}), {} files, {:.1} MB in {:.2} s; forbidden to the others: {}; {} threads; median of {runs} runs",
        assembled.crates.len(),
        assembled.crates.first().map_or("", String::as_str),
        assembled.crates.last().map_or("", String::as_str),
        assembled.files,
        assembled.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        assembled.forbidden.join(", "),
        rayon::current_num_threads()
    );
    let options = Options {
        offline: true,
        ..Options::default()
    };
    // Warm-up: writes Cargo.lock, fills the page cache.
    let _ = guardrails::check_workspace(root, None, &options).expect("warm-up");
    let mut fingerprints = Vec::new();
    for (label, no_prefilter) in [
        ("as shipped (token pre-filter, then syn)", false),
        ("every file parsed by syn", true),
    ] {
        let options = Options {
            offline: true,
            no_prefilter,
            ..Options::default()
        };
        let (report, total, metadata, source) = run(root, &options, runs);
        let mb = report.stats.bytes as f64 / 1e6;
        let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
        for finding in &report.findings {
            *codes.entry(finding.code.as_str()).or_default() += 1;
        }
        println!("\n{label}:");
        println!(
            "  files {} ({} parsed = {:.1} MB, {} did not parse), {:.1} MB; doc-tests scanned {}; findings {} {:?}",
            report.stats.files,
            report.stats.files_parsed,
            report.stats.bytes_parsed as f64 / 1e6,
            report.stats.files_unparsed,
            mb,
            report.stats.doc_tests,
            report.findings.len(),
            codes
        );
        println!("  full check      {:>8.3} s", total.as_secs_f64());
        println!("  cargo metadata  {:>8.3} s", metadata.as_secs_f64());
        println!(
            "  source layer    {:>8.3} s  = {:.0} MB/s",
            source.as_secs_f64(),
            mb / source.as_secs_f64()
        );
        fingerprints.push(
            report
                .findings
                .iter()
                .map(|finding| finding.fingerprint.clone())
                .collect::<std::collections::BTreeSet<_>>(),
        );
    }
    println!(
        "\nthe pre-filter hid nothing (same findings, by fingerprint, as every file parsed): {}",
        if fingerprints[0] == fingerprints[1] {
            "yes"
        } else {
            "NO"
        }
    );
}
