//! `invalid-output`: a hostile skill that implements the `skill` world by hand (bypassing the
//! SDK's serialiser) and answers with an output envelope whose text is not JSON. The runtime
//! must refuse it as `invalid-output` naming the position of the error.

use plugin_abi::guest::{Descriptor, Invocation, OutputRecord, SkillError, WitSideEffect};

/// The hand-written export of the `skill` world.
pub struct InvalidOutput;

impl plugin_abi::guest::bindings::Guest for InvalidOutput {
    fn wizer_initialize() {}

    fn describe() -> Descriptor {
        Descriptor {
            id: "invalid-output".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            side_effect: WitSideEffect::Pure,
            capabilities: Vec::new(),
            input_schema: r#"{"type":"object"}"#.to_owned(),
            output_schema: r#"{"type":"object"}"#.to_owned(),
        }
    }

    fn invoke(_invocation: Invocation) -> Result<OutputRecord, SkillError> {
        Ok(OutputRecord {
            schema_version: plugin_abi::OUTPUT_SCHEMA_V1.to_owned(),
            output: r#"{"redacted": "unterminated"#.to_owned(),
        })
    }
}

plugin_abi::guest::bindings::export_skill_world!(InvalidOutput with_types_in plugin_abi::guest::bindings);
