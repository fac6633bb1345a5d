//! The `{{id}}` skill: counts the words of a text (runs of ASCII letters and digits, lower-cased)
//! and returns the most frequent ones.
//!
//! The host validates the input against the input schema before `invoke` is called, and the
//! output against the output schema after it returns: `invoke` can rely on `text` being a string.

wit_bindgen::generate!({ world: "skill", path: "wit" });

use std::collections::HashMap;

use agentd::skill::host::{self, LogLevel};
// `Descriptor`, `Invocation`, `Output` and `SkillError` are generated at the crate root (the
// world `use`s them); `SideEffect` lives in the `types` interface.
use agentd::skill::types::SideEffect;

const INPUT_SCHEMA: &str = r#"{{input_schema}}"#;
const OUTPUT_SCHEMA: &str = r#"{{output_schema}}"#;

struct Component;

impl Guest for Component {
    fn describe() -> Descriptor {
        Descriptor {
            id: "{{id}}".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            side_effect: SideEffect::Pure,
            capabilities: Vec::new(),
            input_schema: INPUT_SCHEMA.to_owned(),
            output_schema: OUTPUT_SCHEMA.to_owned(),
        }
    }

    fn invoke(invocation: Invocation) -> Result<Output, SkillError> {
        let input: serde_json::Value = serde_json::from_str(&invocation.input)
            .map_err(|error| SkillError::InvalidInput(format!("the input is not JSON: {error}")))?;
        let text = input["text"].as_str().unwrap_or_default();
        let top = input["top"].as_u64().unwrap_or(10) as usize;
        let mut counts: HashMap<String, u64> = HashMap::new();
        for word in text.split(|c: char| !c.is_ascii_alphanumeric()).filter(|word| !word.is_empty()) {
            *counts.entry(word.to_ascii_lowercase()).or_default() += 1;
        }
        let total: u64 = counts.values().sum();
        let mut ranked: Vec<(&String, &u64)> = counts.iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        ranked.truncate(top);
        // Shown by the host at debug level (AGENTD_LOG=debug).
        host::log(LogLevel::Debug, &format!("{} distinct words", counts.len()));
        let output = serde_json::json!({
            "total": total,
            "distinct": counts.len(),
            "top": ranked.iter().map(|(word, count)| serde_json::json!({ "word": word, "count": count })).collect::<Vec<_>>(),
        });
        Ok(Output {
            schema_version: "agentd.output.v1".to_owned(),
            output: output.to_string(),
        })
    }
}

export!(Component);
