//! The JSON Schemas of every recorded payload are generated from the Rust types and checked in
//! under `control-plane/schemas/`; this test fails when they drift. Regenerate with
//! `AGENTD_UPDATE_SCHEMAS=1 cargo test -p control-plane --test it schemas`.

use std::path::Path;

use control_plane::{AuditEvent, ConnectorCall, Decision, LlmCall, RunEvent};

fn check(name: &str, schema: schemars::Schema) -> Option<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas").join(name);
    let generated = format!("{}\n", serde_json::to_string_pretty(&schema).unwrap());
    if std::env::var_os("AGENTD_UPDATE_SCHEMAS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
        return None;
    }
    match std::fs::read_to_string(&path) {
        Ok(stored) if stored == generated => None,
        Ok(_) => Some(format!("{name} differs from the Rust types")),
        Err(error) => Some(format!("{name}: {error}")),
    }
}

#[test]
fn checked_in_schemas_match_the_rust_types() {
    let drift: Vec<String> = [
        check("run-event.v1.json", schemars::schema_for!(RunEvent)),
        check("decision.v1.json", schemars::schema_for!(Decision)),
        check("llm-call.v1.json", schemars::schema_for!(LlmCall)),
        check("connector-call.v1.json", schemars::schema_for!(ConnectorCall)),
        check("audit-event.v1.json", schemars::schema_for!(AuditEvent)),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        drift.is_empty(),
        "{}; regenerate with AGENTD_UPDATE_SCHEMAS=1 cargo test -p control-plane --test it schemas",
        drift.join("; ")
    );
}
