//! `bad-schema`: a hostile skill whose `describe` returns an input schema that is not JSON
//! (`not json at all {`) and an output schema that is JSON but not a schema.
//!
//! Issue 16: such schemas were accepted and never used. Loading must refuse the package,
//! naming the schema and what is wrong with it.

use plugin_abi::guest::{Descriptor, Invocation, OutputRecord, SkillError, WitSideEffect};

struct BadSchema;

impl plugin_abi::guest::bindings::Guest for BadSchema {
    fn wizer_initialize() {}

    fn describe() -> Descriptor {
        Descriptor {
            id: "bad-schema".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            side_effect: WitSideEffect::Pure,
            capabilities: Vec::new(),
            input_schema: "not json at all {".to_owned(),
            output_schema: r#"{"type": "no-such-type"}"#.to_owned(),
        }
    }

    fn invoke(_invocation: Invocation) -> Result<OutputRecord, SkillError> {
        Err(SkillError::Permanent("never loaded, so never invoked".to_owned()))
    }
}

plugin_abi::guest::bindings::export_skill_world!(BadSchema with_types_in plugin_abi::guest::bindings);
