//! `spin-forever`: a hostile skill that never returns.
//!
//! It proves the host's epoch deadline: the runtime must stop it at the manifest's `deadline_ms`
//! with a `Timeout` outcome and stay healthy for the next invocation.

use plugin_abi::guest::{Context, SkillError};

/// Takes an empty object.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {}

/// Never produced.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Output {
    /// Iterations counted before returning (never).
    pub iterations: u64,
}

/// Loops forever.
///
/// # Errors
///
/// Never returns at all.
pub fn spin(_context: &Context, _input: Input) -> Result<Output, SkillError> {
    let mut iterations: u64 = 0;
    loop {
        iterations = std::hint::black_box(iterations.wrapping_add(1));
    }
}

plugin_abi::skill!(id: "spin-forever", side_effect: Pure, capabilities: [], handler: spin);
