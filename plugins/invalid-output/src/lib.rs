//! `invalid-output`: a hostile skill that implements the `skill` world by hand (bypassing the
//! SDK's serialiser) and answers badly, as `{"mode": ...}` asks:
//!
//! - `not-json` (the default): an output envelope whose text is not JSON; the runtime must
//!   refuse it as `invalid-output` naming the position of the error;
//! - `off-schema`: JSON that its own output schema refuses (`redacted` is a number); the runtime
//!   must refuse it as `invalid-output` naming `/redacted`;
//! - `panic`: it prints to stdout and stderr, then panics; the trap's outcome must carry the
//!   end of both streams (the panic message included);
//! - `valid`: output that matches its schema, to show the schema itself is not the problem.
//!
//! Its input schema allows only these modes, so `{"mode": 7}` must never reach it.

use plugin_abi::guest::{Descriptor, Invocation, OutputRecord, SkillError, WitSideEffect};

/// The hand-written export of the `skill` world.
pub struct InvalidOutput;

const INPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": { "mode": { "enum": ["not-json", "off-schema", "panic", "valid"] } }
}"#;

const OUTPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": { "redacted": { "type": "string" } },
  "required": ["redacted"]
}"#;

impl plugin_abi::guest::bindings::Guest for InvalidOutput {
    fn wizer_initialize() {}

    fn describe() -> Descriptor {
        Descriptor {
            id: "invalid-output".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            side_effect: WitSideEffect::Pure,
            capabilities: Vec::new(),
            input_schema: INPUT_SCHEMA.to_owned(),
            output_schema: OUTPUT_SCHEMA.to_owned(),
        }
    }

    #[allow(
        clippy::print_stdout,
        clippy::print_stderr,
        reason = "the panic mode writes to both streams"
    )]
    fn invoke(invocation: Invocation) -> Result<OutputRecord, SkillError> {
        let input: serde_json::Value = serde_json::from_str(&invocation.input).unwrap_or_default();
        let output = match input["mode"].as_str().unwrap_or("not-json") {
            "off-schema" => r#"{"redacted": 42}"#,
            "valid" => r#"{"redacted": "nothing to hide"}"#,
            "panic" => {
                println!("invalid-output: about to fail on purpose");
                eprintln!("invalid-output: stderr before the panic");
                panic!("invalid-output was asked to panic")
            }
            _ => r#"{"redacted": "unterminated"#,
        };
        Ok(OutputRecord {
            schema_version: plugin_abi::OUTPUT_SCHEMA_V1.to_owned(),
            output: output.to_owned(),
        })
    }
}

plugin_abi::guest::bindings::export_skill_world!(InvalidOutput with_types_in plugin_abi::guest::bindings);
