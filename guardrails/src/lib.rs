//! guardrails: mechanically enforces agentd's one-way crate dependency rules.
//!
//! This first layer reads the resolved dependency graph through `cargo metadata` and, for each
//! [`Rule`], searches every path (normal, dev and build edges, direct and transitive) from the
//! rule's source crate to a forbidden crate. A finding is a value ([`Finding`]) with a stable
//! code and the whole chain; an `Err` means the check could not run.
//!
//! **Architecture invariant:** guardrails depends on no workspace crate: it reads the workspace
//! as data.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::Path;

use cargo_metadata::{DependencyKind, MetadataCommand, PackageId};

/// A forbidden-dependency rule: `from` must not reach any crate in `forbidden`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Stable kebab-case rule name.
    pub name: &'static str,
    /// Package names the rule applies to.
    pub from: Vec<&'static str>,
    /// Package names they must never reach.
    pub forbidden: Vec<&'static str>,
    /// Why, shown with every finding.
    pub reason: &'static str,
}

/// agentd's rules, as ARCHITECTURE.md states them.
pub fn agentd_rules() -> Vec<Rule> {
    let plugins = vec!["pii-redact", "publish-report", "spin-forever"];
    vec![
        Rule {
            name: "plugin-abi-is-the-bottom",
            from: vec!["plugin-abi"],
            forbidden: vec![
                "control-plane",
                "agent-runtime",
                "agentd",
                "guardrails",
                "xtask",
                "wasmtime",
            ],
            reason: "plugin-abi is the contract; it depends on no workspace crate and never on wasmtime",
        },
        Rule {
            name: "control-plane-never-runs-wasm",
            from: vec!["control-plane"],
            forbidden: vec!["agent-runtime", "agentd", "wasmtime", "wasmtime-wasi"],
            reason: "the control plane decides what is allowed; it never depends on the runtime or wasmtime",
        },
        Rule {
            name: "runtime-below-binary",
            from: vec!["agent-runtime"],
            forbidden: vec!["agentd"],
            reason: "agent-runtime is a library the binary wires up, never the other way round",
        },
        Rule {
            name: "plugins-see-only-the-abi",
            from: plugins,
            forbidden: vec!["control-plane", "agent-runtime", "agentd", "wasmtime"],
            reason: "plugins are guests: they depend on plugin-abi only",
        },
    ]
}

/// One edge of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The dependent package.
    pub from: String,
    /// The dependency package.
    pub to: String,
    /// `normal`, `dev` or `build` (several when the same edge has several kinds).
    pub kinds: Vec<&'static str>,
}

/// A rule violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Stable code: `forbidden-dependency`.
    pub code: &'static str,
    /// The rule broken.
    pub rule: &'static str,
    /// The chain from the rule's crate to the forbidden one.
    pub chain: Vec<Edge>,
    /// The rule's reason.
    pub reason: &'static str,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error[{}] rule `{}`: ", self.code, self.rule)?;
        for (index, edge) in self.chain.iter().enumerate() {
            if index == 0 {
                write!(f, "{}", edge.from)?;
            }
            write!(f, " -({})-> {}", edge.kinds.join("+"), edge.to)?;
        }
        write!(
            f,
            "\n  = why: {}\n  = to change this rule, write an ADR in adr/ and have it accepted",
            self.reason
        )
    }
}

/// Why the check could not run.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// `cargo metadata` failed.
    #[error("cargo metadata failed: {0}")]
    Metadata(#[from] cargo_metadata::Error),
    /// The graph was not resolved.
    #[error("cargo metadata returned no resolved dependency graph")]
    NoResolve,
    /// A rule names a crate the workspace does not have (so it would silently check nothing).
    #[error("rule `{rule}` names `{krate}`, which is not a workspace member")]
    UnknownCrate {
        /// The rule.
        rule: &'static str,
        /// The missing crate.
        krate: &'static str,
    },
}

fn kind_name(kind: DependencyKind) -> &'static str {
    match kind {
        DependencyKind::Development => "dev",
        DependencyKind::Build => "build",
        _ => "normal",
    }
}

/// Checks the workspace whose root manifest is `manifest_path` against `rules`.
///
/// Findings come sorted by rule, then chain, so two runs print the same bytes.
///
/// # Errors
///
/// [`CheckError`] when the graph cannot be read or a rule's source crate does not exist.
pub fn check(manifest_path: &Path, rules: &[Rule]) -> Result<Vec<Finding>, CheckError> {
    let metadata = MetadataCommand::new().manifest_path(manifest_path).exec()?;
    let resolve = metadata.resolve.as_ref().ok_or(CheckError::NoResolve)?;
    let names: BTreeMap<&PackageId, String> = metadata.packages.iter().map(|p| (&p.id, p.name.to_string())).collect();
    let nodes: BTreeMap<&PackageId, &cargo_metadata::Node> =
        resolve.nodes.iter().map(|node| (&node.id, node)).collect();
    let members: BTreeMap<String, &PackageId> = metadata
        .workspace_members
        .iter()
        .map(|id| (names[id].clone(), id))
        .collect();

    let mut findings = Vec::new();
    for rule in rules {
        for source in &rule.from {
            let Some(start) = members.get(*source) else {
                return Err(CheckError::UnknownCrate {
                    rule: rule.name,
                    krate: source,
                });
            };
            // Breadth-first: the first chain found to each package is a shortest one.
            let mut parent: BTreeMap<&PackageId, (&PackageId, Vec<&'static str>)> = BTreeMap::new();
            let mut queue = VecDeque::from([*start]);
            while let Some(current) = queue.pop_front() {
                let Some(node) = nodes.get(current) else { continue };
                for dep in &node.deps {
                    if &dep.pkg == *start || parent.contains_key(&dep.pkg) {
                        continue;
                    }
                    let mut kinds: Vec<&'static str> = dep.dep_kinds.iter().map(|info| kind_name(info.kind)).collect();
                    kinds.sort_unstable();
                    kinds.dedup();
                    parent.insert(&dep.pkg, (current, kinds));
                    queue.push_back(&dep.pkg);
                }
            }
            for (reached, _) in parent.iter() {
                if !rule.forbidden.contains(&names[reached].as_str()) {
                    continue;
                }
                let mut chain = Vec::new();
                let mut cursor = *reached;
                while let Some((previous, kinds)) = parent.get(cursor) {
                    chain.push(Edge {
                        from: names[previous].clone(),
                        to: names[cursor].clone(),
                        kinds: kinds.clone(),
                    });
                    cursor = previous;
                }
                chain.reverse();
                findings.push(Finding {
                    code: "forbidden-dependency",
                    rule: rule.name,
                    chain,
                    reason: rule.reason,
                });
            }
        }
    }
    findings.sort_by(|a, b| {
        (a.rule, &a.chain.iter().map(|e| (&e.from, &e.to)).collect::<Vec<_>>())
            .cmp(&(b.rule, &b.chain.iter().map(|e| (&e.from, &e.to)).collect::<Vec<_>>()))
    });
    Ok(findings)
}
