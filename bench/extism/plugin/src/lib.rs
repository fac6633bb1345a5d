//! The same skill logic as the agentd components `noop` and `pii-redact`, exported through
//! `extism-pdk` so the comparison benchmark measures runtimes, not skill code.
//!
//! Input and output are the same JSON texts agentd's envelopes carry.

#![allow(missing_docs, reason = "extism-pdk's #[plugin_fn] generates the exported wrappers")]

use extism_pdk::{FnResult, plugin_fn};

/// Returns `{}` for any input, like agentd's `noop` skill.
#[plugin_fn]
pub fn noop(_input: String) -> FnResult<String> {
    Ok("{}".to_owned())
}

/// Parses `{"text": ...}` and returns the redaction, like agentd's `pii-redact` skill.
#[plugin_fn]
pub fn redact(input: String) -> FnResult<String> {
    let input: pii_redact::Input = serde_json::from_str(&input)?;
    Ok(serde_json::to_string(&pii_redact::redact_input(&input))?)
}
