//! Output formats: human (labelled snippets), JSON (versioned), SARIF 2.1.0 and GitHub
//! workflow annotations. Every format is a pure function of the [`Report`], so two runs over
//! the same tree print the same bytes (the human summary line alone carries timings).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use serde::Serialize;
use serde_json::json;

use crate::config::Config;
use crate::report::{Code, Finding, Report, Stats, chain_text};

/// The JSON output's schema name; it changes only with a new major version.
pub const JSON_SCHEMA: &str = "guardrails.findings/v1";

/// Where the SARIF 2.1.0 schema lives (OASIS).
pub const SARIF_SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Labelled source snippets, for people.
    Human,
    /// Versioned JSON (`guardrails.findings/v1`).
    Json,
    /// SARIF 2.1.0, as GitHub code scanning accepts it.
    Sarif,
    /// GitHub Actions workflow commands (`::error file=..`).
    Github,
}

/// Renders `report` in `format`. `color` applies to `human` only.
pub fn render(report: &Report, config: &Config, format: Format, color: bool) -> String {
    match format {
        Format::Human => human(report, color),
        Format::Json => json_output(report),
        Format::Sarif => sarif(report, config),
        Format::Github => github(report),
    }
}

fn human(report: &Report, color: bool) -> String {
    let renderer = if color { Renderer::styled() } else { Renderer::plain() };
    let mut out = String::new();
    for finding in &report.findings {
        let source = finding.line_text.clone();
        let line_chars = source.chars().count();
        let to_byte = |column: u32| {
            let index = (column as usize).saturating_sub(1).min(line_chars);
            source.char_indices().nth(index).map_or(source.len(), |(byte, _)| byte)
        };
        let start = to_byte(finding.span.column);
        let end = if finding.span.end_line == finding.span.line {
            to_byte(finding.span.end_column).max(start)
        } else {
            source.len()
        };
        let label = match finding.code {
            Code::ForbiddenDependency => "declared here".to_owned(),
            Code::ForbiddenReference => format!("{} names a forbidden crate", finding.form),
            Code::ForbiddenInclude => "reaches into a forbidden crate".to_owned(),
            Code::DisallowedCaller => "not in the allowlist".to_owned(),
            Code::ForbiddenPattern => "forbidden here".to_owned(),
            Code::ForbiddenModuleReference => format!("{} reaches a forbidden module", finding.form),
            Code::ModuleCycle => "closes a circle of modules".to_owned(),
            _ => "this exemption".to_owned(),
        };
        let title = finding.message.clone();
        let mut group: Group<'_> = Level::ERROR.primary_title(title).id(finding.code.as_str()).element(
            Snippet::source(source.clone())
                .line_start(finding.span.line as usize)
                .path(finding.file.clone())
                .annotation(AnnotationKind::Primary.span(start..end).label(label)),
        );
        if !finding.chain.is_empty() {
            group = group.element(Level::NOTE.message(format!("chain: {}", chain_text(&finding.chain))));
        }
        group = group
            .element(Level::NOTE.message(format!("why: {}", finding.reason)))
            .element(Level::HELP.message(finding.hint.clone()));
        let _ = writeln!(out, "{}\n", renderer.render(&[group]));
    }
    let stats = &report.stats;
    let _ = writeln!(
        out,
        "guardrails: {} rules, {} exemptions ({} findings exempted); {} members, {} files ({:.1} MB, {} parsed); \
         {} in {:.2} s (cargo metadata {:.2} s)",
        stats.rules,
        stats.exemptions,
        report.exempted.len(),
        stats.members,
        stats.files,
        stats.bytes as f64 / 1e6,
        stats.files_parsed,
        match report.findings.len() {
            0 => "no findings".to_owned(),
            1 => "1 finding".to_owned(),
            n => format!("{n} findings"),
        },
        stats.total_time.as_secs_f64(),
        stats.metadata_time.as_secs_f64(),
    );
    if stats.files_unparsed > 0 || stats.macros_unparsed > 0 {
        let _ = writeln!(
            out,
            "note: {} files did not parse as Rust and {} of {} macro bodies are not Rust syntax; both were scanned as tokens",
            stats.files_unparsed, stats.macros_unparsed, stats.macros
        );
    }
    for note in &stats.notes {
        let _ = writeln!(out, "note: {note}");
    }
    for file in &stats.unscannable {
        let _ = writeln!(
            out,
            "warning: {file} could not be read or tokenized; it was not checked"
        );
    }
    out
}

#[derive(Serialize)]
struct JsonReport<'a> {
    schema: &'static str,
    tool: JsonTool,
    summary: JsonSummary<'a>,
    findings: &'a [Finding],
    exempted: &'a [crate::report::Exempted],
}

#[derive(Serialize)]
struct JsonTool {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct JsonSummary<'a> {
    findings: usize,
    exempted: usize,
    #[serde(flatten)]
    stats: &'a Stats,
}

fn json_output(report: &Report) -> String {
    let value = JsonReport {
        schema: JSON_SCHEMA,
        tool: JsonTool {
            name: "guardrails",
            version: env!("CARGO_PKG_VERSION"),
        },
        summary: JsonSummary {
            findings: report.findings.len(),
            exempted: report.exempted.len(),
            stats: &report.stats,
        },
        findings: &report.findings,
        exempted: &report.exempted,
    };
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

fn sarif(report: &Report, config: &Config) -> String {
    // One SARIF rule per configured rule, in config order; exemption problems get a rule per code.
    let mut rules: Vec<serde_json::Value> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut add_rule = |id: String, short: String, full: String, help: String| {
        if !index.contains_key(&id) {
            index.insert(id.clone(), rules.len());
            rules.push(json!({
                "id": id,
                "name": id,
                "shortDescription": { "text": short },
                "fullDescription": { "text": full },
                "help": { "text": help },
                "defaultConfiguration": { "level": "error" },
            }));
        }
    };
    for rule in &config.dependency_rules {
        add_rule(
            rule.name.clone(),
            format!("{} must not reach {}", rule.from.join(", "), rule.forbidden.join(", ")),
            rule.reason.clone(),
            rule.hint.clone().unwrap_or_default(),
        );
    }
    for list in &config.caller_allowlists {
        add_rule(
            list.name.clone(),
            format!("only the allowlist may call {}", list.function),
            list.reason.clone(),
            list.hint.clone().unwrap_or_default(),
        );
    }
    for pattern in &config.patterns {
        add_rule(
            pattern.name.clone(),
            format!("text matching {} only where allowed", pattern.regex),
            pattern.reason.clone(),
            pattern.hint.clone().unwrap_or_default(),
        );
    }
    for rule in &config.module_rules {
        add_rule(
            rule.name.clone(),
            format!(
                "in {}, {} never refers to {}",
                rule.krate,
                rule.from.join(", "),
                rule.forbidden.join(", ")
            ),
            rule.reason.clone(),
            rule.hint.clone().unwrap_or_default(),
        );
    }
    for rule in &config.acyclic_modules {
        add_rule(
            rule.name.clone(),
            format!("sibling modules of {} form no circle", rule.crates.join(", ")),
            rule.reason.clone(),
            rule.hint.clone().unwrap_or_default(),
        );
    }
    for code in Code::ALL.iter().filter(|code| code.is_about_exemption()) {
        add_rule(
            code.as_str().to_owned(),
            code.description().to_owned(),
            code.description().to_owned(),
            "Exemptions need an Accepted ADR, an unexpired date and a finding to exempt.".to_owned(),
        );
    }
    let results: Vec<serde_json::Value> = report
        .findings
        .iter()
        .map(|finding| {
            let rule_id = if finding.code.is_about_exemption() {
                finding.code.as_str().to_owned()
            } else {
                finding.rule.clone()
            };
            let mut text = finding.message.clone();
            if !finding.chain.is_empty() {
                text.push_str(&format!(". Chain: {}", chain_text(&finding.chain)));
            }
            text.push_str(&format!(". Hint: {}", finding.hint));
            json!({
                "ruleId": rule_id,
                "ruleIndex": index.get(&rule_id).copied().unwrap_or(0),
                "level": "error",
                "kind": "fail",
                "message": { "text": text },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": finding.file, "uriBaseId": "%SRCROOT%" },
                        "region": {
                            "startLine": finding.span.line,
                            "startColumn": finding.span.column,
                            "endLine": finding.span.end_line,
                            "endColumn": finding.span.end_column.max(finding.span.column),
                        }
                    }
                }],
                "partialFingerprints": { "guardrailsFinding/v1": finding.fingerprint },
                "properties": { "code": finding.code.as_str(), "form": finding.form, "target": finding.target.as_str() },
            })
        })
        .collect();
    let value = json!({
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "guardrails",
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": rules,
                }
            },
            "columnKind": "unicodeCodePoints",
            "originalUriBaseIds": { "%SRCROOT%": { "description": { "text": "The workspace root." } } },
            "results": results,
        }]
    });
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// Escapes a workflow command's data (`%`, CR, LF) per GitHub's toolkit.
fn escape_data(text: &str) -> String {
    text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a workflow command property (data escapes plus `:` and `,`).
fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

fn github(report: &Report) -> String {
    let mut out = String::new();
    for finding in &report.findings {
        let mut message = finding.message.clone();
        if !finding.chain.is_empty() {
            message.push_str(&format!("\nchain: {}", chain_text(&finding.chain)));
        }
        message.push_str(&format!("\nwhy: {}\nhelp: {}", finding.reason, finding.hint));
        let _ = writeln!(
            out,
            "::error file={},line={},col={},endLine={},endColumn={},title={}::{}",
            escape_property(&finding.file),
            finding.span.line,
            finding.span.column,
            finding.span.end_line,
            finding.span.end_column,
            escape_property(&format!("guardrails {} ({})", finding.code, finding.rule)),
            escape_data(&message),
        );
    }
    out
}
