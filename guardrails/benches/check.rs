//! Benchmark (not a test): a full `guardrails check` on a generated workspace of 200 crates and
//! 10,000 source files.
//!
//! Run: `cargo bench -p guardrails --bench check` (release profile). Prints, for the median of
//! several runs: the full check's wall time, the `cargo metadata` call alone, the manifest
//! layer, and the source layer's wall time and throughput (MB/s) both as shipped (token
//! pre-filter, then `syn` on the files that can match) and with every file parsed by `syn`.
//! Options: `--crates N`, `--files-per-crate N`, `--runs N`.

#![allow(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{arg, median};
use guardrails::{Options, Report};

mod common;

/// One module file of roughly 4 KB of ordinary Rust: imports from the crate it depends on,
/// types, impls, matches, closures, macros and doc comments.
fn module_source(krate: usize, module: usize, out: &mut String) {
    out.clear();
    let dep = krate.saturating_sub(1);
    let _ = writeln!(
        out,
        "//! Module {module} of crate {krate}: generated for the guardrails benchmark.\n"
    );
    let _ = writeln!(out, "use std::collections::BTreeMap;\nuse std::fmt;\n");
    if krate > 0 {
        let _ = writeln!(out, "use crate_{dep:03}::m00::Record as Upstream;\n");
    }
    for item in 0..4 {
        let _ = write!(
            out,
            r#"/// A record with a few fields (item {item}).
#[derive(Debug, Clone, PartialEq)]
pub struct Record{item} {{
    /// Identifier.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Scores by key.
    pub scores: BTreeMap<String, f64>,
}}

impl Record{item} {{
    /// Builds one.
    pub fn new(id: u64, name: &str) -> Self {{
        let mut scores = BTreeMap::new();
        for (index, key) in ["alpha", "beta", "gamma"].iter().enumerate() {{
            scores.insert((*key).to_owned(), index as f64 * 1.5 + id as f64);
        }}
        Self {{ id, name: name.to_owned(), scores }}
    }}

    /// The best score, if any.
    pub fn best(&self) -> Option<(&str, f64)> {{
        self.scores
            .iter()
            .map(|(key, value)| (key.as_str(), *value))
            .max_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal))
    }}

    /// Classifies the record.
    pub fn classify(&self) -> &'static str {{
        match self.id % 4 {{
            0 => "zero",
            1 if self.name.is_empty() => "anonymous",
            1 => "one",
            2 | 3 => "many",
            _ => unreachable!("id % 4 < 4"),
        }}
    }}
}}

impl fmt::Display for Record{item} {{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {{
        write!(f, "{{}}#{{}} ({{}} scores)", self.name, self.id, self.scores.len())
    }}
}}

"#
        );
    }
    let _ = writeln!(
        out,
        "/// Sums the ids.\npub fn total(records: &[Record0]) -> u64 {{\n    let ids: Vec<u64> = records.iter().map(|r| r.id).collect();\n    assert!(ids.len() < 1_000_000, \"too many: {{}}\", ids.len());\n    ids.iter().sum()\n}}"
    );
    if krate > 0 {
        let _ = writeln!(
            out,
            "\n/// Reads upstream.\npub fn upstream(record: &Upstream) -> u64 {{\n    record.id\n}}"
        );
    }
    if module == 0 {
        let _ = writeln!(out, "\n/// The shared record.\npub type Record = Record0;");
    }
}

/// Writes the workspace: `crates/crate-NNN` each depending on the previous two, an `engine`
/// crate no one may reach, and a few planted violations so the check has findings to report.
fn generate(root: &Path, crates: usize, files_per_crate: usize) -> (usize, u64) {
    let mut members = String::new();
    let mut bytes = 0_u64;
    let mut files = 0;
    let mut text = String::new();
    for krate in 0..crates {
        let dir = root.join(format!("crates/crate-{krate:03}"));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        let _ = write!(members, "\"crates/crate-{krate:03}\", ");
        let mut deps = String::new();
        for back in 1..=2 {
            if krate >= back {
                let _ = writeln!(
                    deps,
                    "crate-{:03} = {{ path = \"../crate-{:03}\" }}",
                    krate - back,
                    krate - back
                );
            }
        }
        std::fs::write(
            dir.join("Cargo.toml"),
            format!("[package]\nname = \"crate-{krate:03}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\n{deps}"),
        )
        .unwrap();
        let modules = files_per_crate - 1;
        let mut lib = String::from("//! Generated crate.\n\n");
        for module in 0..modules {
            let _ = writeln!(lib, "pub mod m{module:02};");
        }
        if krate == 0 {
            lib.push_str("\npub mod auth {\n    /// Under a caller allowlist.\n    pub fn system_login() {}\n}\n");
        }
        std::fs::write(dir.join("src/lib.rs"), &lib).unwrap();
        bytes += lib.len() as u64;
        files += 1;
        for module in 0..modules {
            module_source(krate, module, &mut text);
            if (krate * files_per_crate + module).is_multiple_of(10) {
                // A look-alike in a comment: the old text pre-filter parsed these files (one in
                // ten); the token pre-filter knows a comment cannot refer to anything.
                text.push_str("\n// The system path is crate_000::auth::system_login, reserved for auth.\n");
            }
            match (krate, module) {
                (50, 3) => text.push_str("\npub fn planted() { let _ = engine::start(); }\n"),
                (120, 7) => text.push_str("\npub fn planted() { crate_000::auth::system_login(); }\n"),
                (199, 9) => text.push_str("\npub const PLANTED: &str = \"INSERT INTO audit VALUES (1)\";\n"),
                _ => {}
            }
            std::fs::write(dir.join(format!("src/m{module:02}.rs")), &text).unwrap();
            bytes += text.len() as u64;
            files += 1;
        }
    }
    std::fs::create_dir_all(root.join("engine/src")).unwrap();
    std::fs::write(
        root.join("engine/Cargo.toml"),
        "[package]\nname = \"engine\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
    )
    .unwrap();
    std::fs::write(root.join("engine/src/lib.rs"), "//! Forbidden.\npub fn start() {}\n").unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        format!("[workspace]\nresolver = \"3\"\nmembers = [{members}\"engine\"]\n"),
    )
    .unwrap();
    std::fs::write(
        root.join("guardrails.toml"),
        r#"version = 1

[[dependency-rule]]
name = "nothing-reaches-the-engine"
from = ["crates/*"]
forbidden = ["engine"]
reason = "benchmark"

[[dependency-rule]]
name = "low-crates-never-reach-high-ones"
from = ["crates/crate-0[0-4]?"]
forbidden = ["crate-150", "crate-199"]
reason = "benchmark"

[[caller-allowlist]]
name = "system-login"
function = "crate_000::auth::system_login"
allowed = ["crate_000::auth"]
reason = "benchmark"

[[forbidden-pattern]]
name = "audit-writes"
regex = '(?i)\binsert\s+into\s+audit\b'
example = "INSERT INTO audit VALUES (1)"
allowed = ["crate_000::auth"]
reason = "benchmark"
"#,
    )
    .unwrap();
    (files, bytes)
}

fn run(root: &Path, options: &Options, runs: usize) -> (Vec<Report>, Duration, Duration, Duration, Duration) {
    let mut reports = Vec::new();
    let (mut total, mut metadata, mut manifest, mut source) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let started = Instant::now();
        let report = guardrails::check_workspace(root, None, options).expect("the generated workspace checks");
        total.push(started.elapsed());
        metadata.push(report.stats.metadata_time);
        manifest.push(report.stats.manifest_time);
        source.push(report.stats.source_time);
        reports.push(report);
    }
    (
        reports,
        median(total),
        median(metadata),
        median(manifest),
        median(source),
    )
}

fn main() {
    let crates = arg("--crates", 200);
    let files_per_crate = arg("--files-per-crate", 50);
    let runs = arg("--runs", 5);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let generated = Instant::now();
    let (files, bytes) = generate(root, crates, files_per_crate);
    println!(
        "generated {crates} crates, {files} files, {:.1} MB in {:.2} s; {} threads; median of {runs} runs",
        bytes as f64 / 1e6,
        generated.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    // Warm-up: the first `cargo metadata` writes Cargo.lock; the page cache gets the sources.
    let options = Options {
        offline: true,
        ..Options::default()
    };
    let _ = guardrails::check_workspace(root, None, &options).expect("warm-up");

    for (label, no_prefilter) in [
        ("as shipped (pre-filter, then syn)", false),
        ("every file parsed by syn", true),
    ] {
        let options = Options {
            offline: true,
            no_prefilter,
            ..Options::default()
        };
        let (reports, total, metadata, manifest, source) = run(root, &options, runs);
        let report = &reports[0];
        let mb = report.stats.bytes as f64 / 1e6;
        println!("\n{label}:");
        println!(
            "  findings {} (codes: {}), files {} ({} parsed), {:.1} MB",
            report.findings.len(),
            report
                .findings
                .iter()
                .map(|f| f.code.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            report.stats.files,
            report.stats.files_parsed,
            mb
        );
        println!("  full check      {:>8.3} s", total.as_secs_f64());
        println!("  cargo metadata  {:>8.3} s", metadata.as_secs_f64());
        println!("  manifest layer  {:>8.3} s", manifest.as_secs_f64());
        println!(
            "  source layer    {:>8.3} s  = {:.0} MB/s",
            source.as_secs_f64(),
            mb / source.as_secs_f64()
        );
    }
}
