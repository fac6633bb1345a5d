//! guardrails against fixture workspaces (one per reference form, edge kind, exemption failure
//! and configuration error), against this workspace, and through its CLI.
//!
//! Each case in `tests/fixtures/cases/<name>/` is laid over `tests/fixtures/base/` in a temporary
//! directory; its `expect.txt` lists exactly what the check must report:
//! `<code> <file>:<line>:<column>` per finding, `chain <a -(kind)-> b ...>` per dependency chain,
//! `exempted <n>`, or `error <Variant>` when the check must refuse to run.

use std::path::{Path, PathBuf};
use std::process::Command;

use guardrails::config::Date;
use guardrails::{Error, Options, check_workspace};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn copy_into(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_into(&entry.path(), &target);
        } else if entry.file_name() != "expect.txt" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The base fixture with `case` laid over it, in a fresh temporary directory.
fn materialize(case: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_into(&fixtures().join("base"), dir.path());
    if let Some(case) = case {
        copy_into(&fixtures().join("cases").join(case), dir.path());
    }
    dir
}

fn options() -> Options {
    Options {
        offline: true,
        today: Date::parse("2026-11-22"),
        ..Options::default()
    }
}

fn error_name(error: &Error) -> &'static str {
    match error {
        Error::Io { .. } => "Io",
        Error::Config { .. } => "Config",
        Error::Metadata { .. } => "Metadata",
        Error::NoResolve => "NoResolve",
        Error::UnknownCrate { .. } => "UnknownCrate",
        Error::UnknownFunction { .. } => "UnknownFunction",
        Error::UnknownScope { .. } => "UnknownScope",
        Error::Selftest(_) => "Selftest",
    }
}

/// What the check reports for `root`, in `expect.txt` form, sorted.
fn observe(root: &Path) -> Vec<String> {
    observe_with(root, &options())
}

fn observe_with(root: &Path, options: &Options) -> Vec<String> {
    let mut lines = match check_workspace(root, None, options) {
        Ok(report) => {
            let mut lines = Vec::new();
            for finding in &report.findings {
                lines.push(format!(
                    "{} {}:{}:{}",
                    finding.code, finding.file, finding.span.line, finding.span.column
                ));
                if !finding.chain.is_empty() {
                    lines.push(format!("chain {}", guardrails::report::chain_text(&finding.chain)));
                }
            }
            if !report.exempted.is_empty() {
                lines.push(format!("exempted {}", report.exempted.len()));
            }
            lines
        }
        Err(error) => vec![format!("error {}", error_name(&error))],
    };
    lines.sort();
    lines
}

#[test]
fn every_case_reports_exactly_what_it_expects() {
    let mut cases: Vec<String> = std::fs::read_dir(fixtures().join("cases"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    assert!(cases.len() >= 50, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let expect_path = fixtures().join("cases").join(case).join("expect.txt");
        let mut expected: Vec<String> = std::fs::read_to_string(&expect_path)
            .unwrap()
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_owned)
            .collect();
        expected.sort();
        let dir = materialize(Some(case));
        let observed = observe(dir.path());
        if observed != expected {
            failures.push(format!("{case}:\n  expected {expected:?}\n  observed {observed:?}"));
        }
        // The pre-filter is sound: parsing every file finds nothing more.
        let every_file = observe_with(
            dir.path(),
            &Options {
                no_prefilter: true,
                ..options()
            },
        );
        if every_file != observed {
            failures.push(format!(
                "{case}: the pre-filter hid something:\n  filtered   {observed:?}\n  every file {every_file:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_clean_fixture_with_look_alike_names_stays_clean() {
    let dir = materialize(None);
    let report = check_workspace(dir.path(), None, &options()).unwrap();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    // The look-alikes were parsed, not skipped by the pre-filter.
    assert!(report.stats.files_parsed >= 3, "{:?}", report.stats);
}

#[test]
fn this_workspace_keeps_its_rules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let report = check_workspace(&root, None, &Options::default()).unwrap();
    assert!(
        report.findings.is_empty(),
        "{}",
        guardrails::output::render(
            &report,
            &guardrails::Config::load(&root.join("guardrails.toml")).unwrap(),
            guardrails::output::Format::Human,
            false
        )
    );
    // The tamper tests are exempt through ADR 0006 (SQLite) and ADR 0016 (PostgreSQL's
    // triggers), and nothing else.
    assert!(
        report
            .exempted
            .iter()
            .all(|e| matches!(e.adr.as_str(), "0006" | "0016") && e.finding.target.is_test()),
        "{:?}",
        report
            .exempted
            .iter()
            .map(|e| (&e.adr, &e.finding.target))
            .collect::<Vec<_>>()
    );
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_guardrails"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn exit_codes_are_0_clean_1_findings_2_errors() {
    let clean = materialize(None);
    let dirty = materialize(Some("transitive-3-hops"));
    let broken = materialize(Some("error-unknown-crate"));
    let path = |dir: &tempfile::TempDir| dir.path().to_str().unwrap().to_owned();

    let (code, stdout, _) = cli(&["check", "--offline", "--workspace", &path(&clean)]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("no findings"), "{stdout}");

    let (code, stdout, _) = cli(&["check", "--offline", "--workspace", &path(&dirty)]);
    assert_eq!(code, 1);
    assert!(stdout.contains("error[forbidden-dependency]"), "{stdout}");
    assert!(stdout.contains("--> app/Cargo.toml:8:1"), "{stdout}");
    assert!(
        stdout.contains("chain: app -(normal)-> hop1 -(normal)-> hop2 -(normal)-> engine"),
        "{stdout}"
    );
    assert!(stdout.contains("^^^^"), "a labelled snippet: {stdout}");

    let (code, _, stderr) = cli(&["check", "--offline", "--workspace", &path(&broken)]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("rule `app-never-reaches-engine` names `app-renamed`"),
        "{stderr}"
    );

    let (code, _, _) = cli(&["check", "--format", "yaml"]);
    assert_eq!(code, 2);
    let (code, _, _) = cli(&["frobnicate"]);
    assert_eq!(code, 2);
}

#[test]
fn json_is_versioned_and_byte_identical_across_runs() {
    let dir = materialize(Some("call-in-macro-through-alias"));
    let args = [
        "check",
        "--offline",
        "--format",
        "json",
        "--workspace",
        dir.path().to_str().unwrap(),
    ];
    let (code, first, _) = cli(&args);
    let (_, second, _) = cli(&args);
    assert_eq!(code, 1);
    assert_eq!(first, second);
    let value: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(value["schema"], "guardrails.findings/v1");
    assert_eq!(value["summary"]["findings"], 2);
    let finding = &value["findings"][0];
    for key in [
        "code",
        "rule",
        "message",
        "file",
        "line",
        "column",
        "target",
        "form",
        "hint",
        "fingerprint",
    ] {
        assert!(!finding[key].is_null(), "missing {key} in {finding}");
    }
    assert_eq!(finding["code"], "disallowed-caller");
}

#[test]
fn sarif_is_2_1_0_with_rules_and_partial_fingerprints() {
    let dir = materialize(Some("exemption-expired"));
    let (code, stdout, _) = cli(&[
        "check",
        "--offline",
        "--format",
        "sarif",
        "--workspace",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(value["version"], "2.1.0");
    let run = &value["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for result in results {
        let index = result["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[index]["id"], result["ruleId"]);
        assert!(
            result["partialFingerprints"]["guardrailsFinding/v1"]
                .as_str()
                .unwrap()
                .len()
                == 32
        );
        let region = &result["locations"][0]["physicalLocation"]["region"];
        assert!(region["startLine"].as_u64().unwrap() >= 1);
        assert!(region["startColumn"].as_u64().unwrap() >= 1);
    }
    assert!(results.iter().any(|r| r["ruleId"] == "exemption-expired"));
    assert!(results.iter().any(|r| r["ruleId"] == "app-never-reaches-engine"));
}

#[test]
fn github_annotations_escape_their_data() {
    let dir = materialize(Some("edge-target-specific"));
    let (code, stdout, _) = cli(&[
        "check",
        "--offline",
        "--format",
        "github",
        "--workspace",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].starts_with("::error file=app/Cargo.toml,line=10,col=1,"),
        "{}",
        lines[0]
    );
    // Newlines in the message are escaped; the title's comma-free property survives.
    assert!(lines[0].contains("%0Awhy: "), "{}", lines[0]);
    assert!(lines[0].contains("title=guardrails forbidden-dependency (app-never-reaches-engine)::"));
}

#[test]
fn fingerprints_survive_lines_moving() {
    let dir = materialize(Some("use-path"));
    let before = check_workspace(dir.path(), None, &options()).unwrap();
    let lib = dir.path().join("app/src/lib.rs");
    let text = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, format!("//! moved down\n\n{text}")).unwrap();
    let after = check_workspace(dir.path(), None, &options()).unwrap();
    assert_eq!(before.findings[0].span.line + 2, after.findings[0].span.line);
    assert_eq!(before.findings[0].fingerprint, after.findings[0].fingerprint);
}

#[test]
fn selftest_catches_every_mutant_on_the_fixture() {
    let dir = materialize(None);
    let outcome = guardrails::selftest::run(dir.path()).unwrap();
    assert!(outcome.all_caught(), "{}", outcome.render(false));
    // Every source form, every edge kind and the 3-hop chain for the dependency rule, every
    // call form for both allowlists, every literal form for the pattern.
    assert!(outcome.mutants.len() >= 60, "{}", outcome.render(true));
    let forms: std::collections::BTreeSet<&str> = outcome.mutants.iter().map(|m| m.form.as_str()).collect();
    for form in [
        "manifest-dev",
        "manifest-transitive-3-hops",
        "ufcs",
        "macro-body-not-rust",
        "include-manifest-dir",
    ] {
        assert!(forms.contains(form), "no {form} mutant");
    }
}

#[test]
fn a_forbidden_crate_not_in_the_graph_is_a_note_not_an_error() {
    // Issue 15: forbidding a crate before anyone adds it is allowed; the report says it matches
    // nothing yet, since a typo would look the same.
    let dir = materialize(Some("forbidden-crate-not-in-the-graph-is-a-note"));
    let report = check_workspace(dir.path(), None, &options()).unwrap();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(report.stats.notes.len(), 1, "{:?}", report.stats.notes);
    assert!(
        report.stats.notes[0].contains("forbids `engine-old`, which matches no package"),
        "{}",
        report.stats.notes[0]
    );
    let (code, stdout, _) = cli(&["check", "--offline", "--workspace", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("note: rule `app-never-reaches-engine` forbids `engine-old`"),
        "{stdout}"
    );
}

#[test]
fn a_renamed_dependency_is_named_as_the_rule_names_it_and_as_written() {
    // Issue 15: the source finding named only the alias (`eng`), not the crate the rule forbids.
    let dir = materialize(Some("edge-renamed"));
    let report = check_workspace(dir.path(), None, &options()).unwrap();
    let reference = report
        .findings
        .iter()
        .find(|finding| finding.code.to_string() == "forbidden-reference")
        .expect("the source finding");
    assert_eq!(
        reference.message,
        "`app` refers to `engine` (as `eng`) in a use form, which rule `app-never-reaches-engine` forbids"
    );
}

#[test]
fn a_config_finding_names_the_file_the_same_way_whatever_the_flag_says() {
    // Issue 15: `--config ./guardrails.toml` printed `./guardrails.toml`, no flag `guardrails.toml`.
    let dir = materialize(Some("exemption-unused"));
    let run = |config: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_guardrails"));
        command
            .current_dir(dir.path())
            .args(["check", "--offline", "--format", "json", "--workspace", "."]);
        if let Some(config) = config {
            command.args(["--config", config]);
        }
        let output = command.output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|finding| finding["file"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let plain = run(None);
    assert!(plain.contains(&"guardrails.toml".to_owned()), "{plain:?}");
    assert_eq!(run(Some("./guardrails.toml")), plain);
    assert_eq!(run(Some("guardrails.toml")), plain);
}

#[test]
fn the_prefilter_does_not_depend_on_the_checkout_directory_name() {
    // Issue 15: the same code gave 1, 7 or 17 findings depending on the checkout directory's
    // name. Here the checkout is named after the forbidden crate, and after nothing.
    for case in [
        "doc-test",
        "path-attribute",
        "use-path",
        "crate-name-passed-to-a-macro-is-left-to-the-manifest-layer",
        "pattern-in-literal",
    ] {
        let mut seen = Vec::new();
        for name in ["engine", "elsewhere", "app"] {
            let parent = tempfile::tempdir().unwrap();
            let root = parent.path().join(name);
            std::fs::create_dir_all(&root).unwrap();
            copy_into(&fixtures().join("base"), &root);
            copy_into(&fixtures().join("cases").join(case), &root);
            seen.push(observe(&root));
        }
        assert!(!seen[0].is_empty(), "{case}: {seen:?}");
        assert!(seen.windows(2).all(|pair| pair[0] == pair[1]), "{case}: {seen:?}");
    }
}

#[test]
fn a_path_module_outside_the_workspace_is_scanned_with_its_crate() {
    // Issue 15: a `#[path]` file outside the workspace was never read, so what it referenced
    // went unseen.
    let dir = materialize(None);
    let outside = tempfile::tempdir().unwrap();
    let shared = outside.path().join("shared.rs");
    std::fs::write(&shared, "pub fn helper() { let _ = engine::start(); }\n").unwrap();
    std::fs::write(
        dir.path().join("app/src/lib.rs"),
        format!("#[path = {:?}]\nmod shared;\n", shared.to_str().unwrap()),
    )
    .unwrap();
    let report = check_workspace(dir.path(), None, &options()).unwrap();
    let found: Vec<_> = report
        .findings
        .iter()
        .map(|f| (f.code.to_string(), f.file.clone(), f.span.line, f.module.clone()))
        .collect();
    let canonical = std::fs::canonicalize(&shared).unwrap();
    assert!(
        found.contains(&(
            "forbidden-reference".to_owned(),
            canonical.display().to_string(),
            1,
            Some("app::shared".to_owned())
        )) || found.contains(&(
            "forbidden-reference".to_owned(),
            shared.display().to_string(),
            1,
            Some("app::shared".to_owned())
        )),
        "{found:?}"
    );
    assert_eq!(report.stats.files_outside, 1);
}

#[test]
fn every_headline_balances_its_parentheses_and_backticks() {
    // Issue 15: one headline had an unbalanced parenthesis.
    let mut cases: Vec<String> = std::fs::read_dir(fixtures().join("cases"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    let mut checked = 0;
    for case in &cases {
        let dir = materialize(Some(case));
        let Ok(report) = check_workspace(dir.path(), None, &options()) else {
            continue;
        };
        for finding in report.findings.iter().chain(report.exempted.iter().map(|e| &e.finding)) {
            for text in [&finding.message, &finding.hint] {
                let open = text.matches('(').count();
                let close = text.matches(')').count();
                let ticks = text.matches('`').count();
                assert!(open == close && ticks % 2 == 0, "{case}: {text}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} findings");
}

#[test]
fn every_finding_carries_fixing_advice_even_without_a_hint() {
    // Issue 15: advice appeared only when the rule's author wrote a `hint`. The fixture's rules
    // have none; each finding must still say what fixes it, then how to accept it on purpose.
    let mut codes = std::collections::BTreeSet::new();
    for case in [
        "use-path",
        "transitive-3-hops",
        "path-attribute",
        "call-qualified",
        "pattern-in-literal",
        "module-rule-use",
        "module-cycle",
    ] {
        let dir = materialize(Some(case));
        let report = check_workspace(dir.path(), None, &options()).unwrap();
        assert!(!report.findings.is_empty(), "{case}");
        for finding in &report.findings {
            let (fix, accept) = finding
                .hint
                .split_once("; if it is intended, write an ADR in adr/")
                .unwrap_or_else(|| panic!("{case}: {}", finding.hint));
            assert!(fix.len() > 30, "{case}: {}", finding.hint);
            assert!(accept.contains("[[exemption]]"), "{case}: {}", finding.hint);
            codes.insert(finding.code.to_string());
        }
    }
    assert_eq!(codes.len(), 7, "{codes:?}");
}

#[test]
fn init_proposes_layer_rules_that_hold_today_and_never_overwrites() {
    // Issue 15: `guardrails init` proposes rules from the current graph, reasons to fill in.
    let dir = materialize(Some("transitive-3-hops"));
    std::fs::remove_file(dir.path().join("guardrails.toml")).unwrap();
    let root = dir.path().to_str().unwrap();
    let (code, proposal, stderr) = cli(&["init", "--offline", "--workspace", root]);
    assert_eq!(code, 0, "{stderr}");
    // engine <- hop2 <- hop1 <- app: four layers; gate sits in layer 0 with engine.
    assert!(
        proposal.contains("#   layer 3: app\n#   layer 2: hop1\n#   layer 1: hop2\n#   layer 0: engine, gate\n"),
        "{proposal}"
    );
    assert!(proposal.contains("reason = \"TODO:"), "{proposal}");
    let (code, _, stderr) = cli(&["init", "--offline", "--write", "--workspace", root]);
    assert_eq!(code, 0, "{stderr}");
    let written = std::fs::read_to_string(dir.path().join("guardrails.toml")).unwrap();
    assert_eq!(written, proposal);
    // Every proposed rule holds today.
    let report = check_workspace(dir.path(), None, &options()).unwrap();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert!(report.stats.rules >= 2, "{:?}", report.stats.rules);
    // A second --write refuses and leaves the file alone.
    std::fs::write(dir.path().join("guardrails.toml"), "# mine\n").unwrap();
    let (code, _, stderr) = cli(&["init", "--offline", "--write", "--workspace", root]);
    assert_eq!(code, 2);
    assert!(stderr.contains("exists; nothing written"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("guardrails.toml")).unwrap(),
        "# mine\n"
    );
}

#[test]
fn graph_draws_layers_and_marks_the_violating_edge_in_mermaid_and_dot() {
    // Issue 15: `guardrails graph --format mermaid|dot`.
    let dir = materialize(Some("edge-normal"));
    let root = dir.path().to_str().unwrap();
    let (code, mermaid, stderr) = cli(&["graph", "--offline", "--workspace", root]);
    assert_eq!(code, 0, "{stderr}");
    assert!(mermaid.starts_with("flowchart TB\n"), "{mermaid}");
    assert!(mermaid.contains("subgraph layer1[\"layer 1\"]"), "{mermaid}");
    assert!(
        mermaid.contains("app -->|normal VIOLATES app-never-reaches-engine| engine"),
        "{mermaid}"
    );
    assert!(mermaid.contains("app -->|normal| gate"), "{mermaid}");
    assert!(mermaid.contains("stroke:#d00"), "{mermaid}");
    let (code, dot, stderr) = cli(&["graph", "--offline", "--format", "dot", "--workspace", root]);
    assert_eq!(code, 0, "{stderr}");
    assert!(dot.starts_with("digraph workspace {"), "{dot}");
    assert!(
        dot.contains(
            "app -> engine [style=solid, color=red, penwidth=3, label=\"normal VIOLATES app-never-reaches-engine\"];"
        ),
        "{dot}"
    );
    assert!(dot.contains("app -> gate [style=solid, label=\"normal\"];"), "{dot}");
    assert_eq!(dot.matches('{').count(), dot.matches('}').count(), "{dot}");
}
