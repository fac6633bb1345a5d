//! The workspace's layers: `guardrails init` (rules proposed from the current graph) and
//! `guardrails graph` (the layers drawn as Mermaid or Graphviz DOT, violating edges marked).
//!
//! A member's **layer** is the length of the longest path of normal and build edges from it
//! down to a member with no workspace dependency (layer 0). An edge only ever goes down, so
//! "a layer never depends on the layers above it" holds of today's graph by construction and
//! is what `init` proposes to keep, as one dependency rule per layer (the layers contract of
//! import-linter, for crates). Dev edges do not define layers (tests may reach up); a layer's
//! rule counts them only when none reaches up today.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::report::{Code, Report};
use crate::workspace::{EdgeKind, Workspace};

/// Members by layer: `layers[0]` has no workspace dependency. Members on a cycle of normal or
/// build edges (which cargo refuses anyway) share the lowest layer of the cycle.
pub fn layers(workspace: &Workspace) -> Vec<Vec<usize>> {
    let members: BTreeSet<usize> = workspace.members.iter().copied().collect();
    let mut layer: BTreeMap<usize, usize> = BTreeMap::new();
    fn depth(
        workspace: &Workspace,
        members: &BTreeSet<usize>,
        index: usize,
        layer: &mut BTreeMap<usize, usize>,
        visiting: &mut BTreeSet<usize>,
    ) -> usize {
        if let Some(&known) = layer.get(&index) {
            return known;
        }
        if !visiting.insert(index) {
            return 0;
        }
        let mut own = 0;
        for dep in &workspace.packages[index].deps {
            let counts = dep.infos.iter().any(|info| info.kind != EdgeKind::Dev);
            if counts && members.contains(&dep.to) && dep.to != index {
                own = own.max(depth(workspace, members, dep.to, layer, visiting) + 1);
            }
        }
        visiting.remove(&index);
        layer.insert(index, own);
        own
    }
    for &member in &members {
        depth(workspace, &members, member, &mut layer, &mut BTreeSet::new());
    }
    let top = layer.values().copied().max().unwrap_or(0);
    let mut out = vec![Vec::new(); if members.is_empty() { 0 } else { top + 1 }];
    for (index, level) in layer {
        out[level].push(index);
    }
    out
}

/// Member-to-member edges: (from, to, kinds).
fn member_edges(workspace: &Workspace) -> Vec<(usize, usize, BTreeSet<EdgeKind>)> {
    let members: BTreeSet<usize> = workspace.members.iter().copied().collect();
    let mut edges = Vec::new();
    for &from in &workspace.members {
        for dep in &workspace.packages[from].deps {
            if members.contains(&dep.to) && dep.to != from {
                edges.push((from, dep.to, dep.infos.iter().map(|info| info.kind).collect()));
            }
        }
    }
    edges
}

fn toml_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("\"{name}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A `guardrails.toml` proposing one dependency rule per layer: the members of a layer never
/// depend on, or reference, a member of a layer above. Every rule holds today; each `reason` is
/// left for a person to write.
pub fn init(workspace: &Workspace) -> String {
    let layers = layers(workspace);
    let name = |index: usize| workspace.packages[index].name.as_str();
    let edges = member_edges(workspace);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Proposed by `guardrails init` from today's dependency graph: {} members in {} layers.",
        workspace.members.len(),
        layers.len()
    );
    let _ = writeln!(
        out,
        "# A member's layer is the longest chain of normal and build dependencies below it."
    );
    for (level, members) in layers.iter().enumerate().rev() {
        let names: Vec<&str> = members.iter().map(|&i| name(i)).collect();
        let _ = writeln!(out, "#   layer {level}: {}", names.join(", "));
    }
    let _ = writeln!(
        out,
        "# Every rule below holds today. Write each `reason` (why the layer must stay below the\n\
         # others), delete the rules you do not mean, then run `guardrails check`.\n\nversion = 1"
    );
    for (level, members) in layers.iter().enumerate() {
        let above: Vec<usize> = layers[level + 1..].iter().flatten().copied().collect();
        if members.is_empty() || above.is_empty() {
            continue;
        }
        let above_set: BTreeSet<usize> = above.iter().copied().collect();
        let dev_up: Vec<String> = edges
            .iter()
            .filter(|(from, to, kinds)| {
                members.contains(from) && above_set.contains(to) && kinds.contains(&EdgeKind::Dev)
            })
            .map(|(from, to, _)| format!("{} -> {}", name(*from), name(*to)))
            .collect();
        let from: Vec<&str> = members.iter().map(|&i| name(i)).collect();
        let forbidden: Vec<&str> = above.iter().map(|&i| name(i)).collect();
        let _ = writeln!(out, "\n[[dependency-rule]]");
        let _ = writeln!(out, "name = \"layer-{level}-stays-below-layer-{}\"", level + 1);
        let _ = writeln!(out, "from = {}", toml_list(&from));
        let _ = writeln!(out, "forbidden = {}", toml_list(&forbidden));
        if dev_up.is_empty() {
            let _ = writeln!(out, "edges = [\"normal\", \"build\", \"dev\"]");
        } else {
            let _ = writeln!(
                out,
                "# Tests reach up today ({}): dev edges and test code are left out.",
                dev_up.join(", ")
            );
            let _ = writeln!(out, "edges = [\"normal\", \"build\"]");
            let _ = writeln!(out, "include-tests = false");
        }
        let _ = writeln!(
            out,
            "reason = \"TODO: why layer {level} must never depend on the layers above it\""
        );
    }
    out
}

/// How `graph` draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    /// Mermaid `flowchart` (renders in GitHub Markdown).
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// The members by layer, top layer first, with their workspace edges (normal solid, build
/// dotted, dev dashed). The first edge of every `forbidden-dependency` finding of `report` is
/// drawn red and labelled with its rule.
pub fn render(workspace: &Workspace, report: Option<&Report>, format: GraphFormat) -> String {
    let layers = layers(workspace);
    let edges = member_edges(workspace);
    let name = |index: usize| workspace.packages[index].name.as_str();
    let id = |index: usize| sanitize(&workspace.packages[index].name);
    // (from, to) of a violating first edge → rules.
    let mut violating: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for finding in report.map(|r| r.findings.as_slice()).unwrap_or_default() {
        if finding.code == Code::ForbiddenDependency
            && let Some(first) = finding.chain.first()
        {
            violating
                .entry((first.from.clone(), first.to.clone()))
                .or_default()
                .insert(finding.rule.clone());
        }
    }
    let mut out = String::new();
    match format {
        GraphFormat::Mermaid => {
            out.push_str("flowchart TB\n");
            for (level, members) in layers.iter().enumerate().rev() {
                let _ = writeln!(out, "  subgraph layer{level}[\"layer {level}\"]");
                for &member in members {
                    let _ = writeln!(out, "    {}[\"{}\"]", id(member), name(member));
                }
                out.push_str("  end\n");
            }
            let mut red = Vec::new();
            for (number, (from, to, kinds)) in edges.iter().enumerate() {
                let arrow = if kinds.contains(&EdgeKind::Normal) {
                    "-->"
                } else if kinds.contains(&EdgeKind::Build) {
                    "-.->"
                } else {
                    "-.-o"
                };
                let label: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                let rules = violating.get(&(name(*from).to_owned(), name(*to).to_owned()));
                let text = match rules {
                    Some(rules) => {
                        red.push(number);
                        format!(
                            "{} VIOLATES {}",
                            label.join("+"),
                            rules.iter().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                    None => label.join("+"),
                };
                let _ = writeln!(out, "  {} {arrow}|{text}| {}", id(*from), id(*to));
            }
            for (number, ((from, to), rules)) in (edges.len()..).zip(outside(&violating, &edges, workspace)) {
                let _ = writeln!(
                    out,
                    "  {} -->|VIOLATES {rules}| {}[\"{to} (not a member)\"]",
                    sanitize(&from),
                    sanitize(&to)
                );
                red.push(number);
            }
            for number in red {
                let _ = writeln!(out, "  linkStyle {number} stroke:#d00,stroke-width:3px,color:#d00");
            }
        }
        GraphFormat::Dot => {
            out.push_str("digraph workspace {\n  rankdir=TB;\n  node [shape=box];\n");
            for (level, members) in layers.iter().enumerate().rev() {
                let _ = writeln!(
                    out,
                    "  subgraph cluster_layer{level} {{\n    label=\"layer {level}\";\n    rank=same;"
                );
                for &member in members {
                    let _ = writeln!(out, "    {} [label=\"{}\"];", id(member), name(member));
                }
                out.push_str("  }\n");
            }
            for (from, to, kinds) in &edges {
                let style = if kinds.contains(&EdgeKind::Normal) {
                    "solid"
                } else if kinds.contains(&EdgeKind::Build) {
                    "dotted"
                } else {
                    "dashed"
                };
                let label: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                match violating.get(&(name(*from).to_owned(), name(*to).to_owned())) {
                    Some(rules) => {
                        let _ = writeln!(
                            out,
                            "  {} -> {} [style={style}, color=red, penwidth=3, label=\"{} VIOLATES {}\"];",
                            id(*from),
                            id(*to),
                            label.join("+"),
                            rules.iter().cloned().collect::<Vec<_>>().join(", ")
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "  {} -> {} [style={style}, label=\"{}\"];",
                            id(*from),
                            id(*to),
                            label.join("+")
                        );
                    }
                }
            }
            for ((from, to), rules) in outside(&violating, &edges, workspace) {
                let _ = writeln!(
                    out,
                    "  {} [label=\"{to} (not a member)\", style=dashed];\n  {} -> {} [color=red, penwidth=3, label=\"VIOLATES {rules}\"];",
                    sanitize(&to),
                    sanitize(&from),
                    sanitize(&to)
                );
            }
            out.push_str("}\n");
        }
    }
    out
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Violating first edges that leave the workspace (to a registry crate): ((from, to), rules).
fn outside(
    violating: &BTreeMap<(String, String), BTreeSet<String>>,
    edges: &[(usize, usize, BTreeSet<EdgeKind>)],
    workspace: &Workspace,
) -> Vec<((String, String), String)> {
    let drawn: BTreeSet<(&str, &str)> = edges
        .iter()
        .map(|(from, to, _)| {
            (
                workspace.packages[*from].name.as_str(),
                workspace.packages[*to].name.as_str(),
            )
        })
        .collect();
    violating
        .iter()
        .filter(|((from, to), _)| !drawn.contains(&(from.as_str(), to.as_str())))
        .map(|(edge, rules)| (edge.clone(), rules.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect()
}
