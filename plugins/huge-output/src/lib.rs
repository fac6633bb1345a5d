//! `huge-output`: a hostile skill that answers with `bytes` bytes of output text. Above the
//! host's output bound (8 MiB) the runtime must refuse it as `invalid-output`.

use plugin_abi::guest::{Context, SkillError};

/// How much to send back.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Length of the `padding` string, bytes.
    pub bytes: u64,
}

/// The padding.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Output {
    /// `bytes` times `x`.
    pub padding: String,
}

/// Builds the padding.
///
/// # Errors
///
/// `invalid-input` above 64 MiB (the skill's own sanity bound).
pub fn pad(_context: &Context, input: Input) -> Result<Output, SkillError> {
    let bytes = usize::try_from(input.bytes)
        .ok()
        .filter(|bytes| *bytes <= 64 << 20)
        .ok_or_else(|| SkillError::InvalidInput("`bytes` must be at most 64 MiB".into()))?;
    Ok(Output {
        padding: "x".repeat(bytes),
    })
}

plugin_abi::skill!(id: "huge-output", side_effect: Pure, capabilities: [], handler: pad);
