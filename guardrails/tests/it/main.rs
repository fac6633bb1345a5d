//! guardrails against this workspace (must be clean) and a fixture that breaks a rule.

use std::path::Path;

use guardrails::{Rule, agentd_rules, check};

#[test]
fn this_workspace_keeps_its_dependency_rules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let findings = check(&root, &agentd_rules()).unwrap();
    assert!(
        findings.is_empty(),
        "{}",
        findings.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn a_renamed_dev_dependency_on_the_runtime_is_caught() {
    let fixture = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/violating");
    for file in [
        "Cargo.toml",
        "control-plane/Cargo.toml",
        "control-plane/src/lib.rs",
        "agent-runtime/Cargo.toml",
        "agent-runtime/src/lib.rs",
    ] {
        let target = fixture.path().join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(source.join(file), target).unwrap();
    }
    let rules = vec![Rule {
        name: "control-plane-never-runs-wasm",
        from: vec!["control-plane"],
        forbidden: vec!["agent-runtime"],
        reason: "test",
    }];
    let findings = check(&fixture.path().join("Cargo.toml"), &rules).unwrap();
    assert_eq!(findings.len(), 1);
    assert_eq!(
        findings[0].to_string().lines().next().unwrap(),
        "error[forbidden-dependency] rule `control-plane-never-runs-wasm`: control-plane -(dev)-> agent-runtime"
    );

    // A rule naming a crate that does not exist is an error, not a silent pass.
    let stale = vec![Rule {
        name: "stale",
        from: vec!["no-such-crate"],
        forbidden: vec![],
        reason: "test",
    }];
    assert!(matches!(
        check(&fixture.path().join("Cargo.toml"), &stale),
        Err(guardrails::CheckError::UnknownCrate { .. })
    ));
}
