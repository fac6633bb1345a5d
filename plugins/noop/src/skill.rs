use plugin_abi::guest::{Context, SkillError};

/// Usually an empty object.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Waits this long (through WASI's monotonic clock) before answering, ms; tests use it to
    /// keep an invocation in flight.
    #[serde(default)]
    pub sleep_ms: u64,
}

/// Which build answered.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Output {
    /// The skill version that ran.
    pub version: String,
}

/// Answers with the crate version, after `sleep_ms` if asked.
///
/// # Errors
///
/// Never.
pub fn noop(_context: &Context, input: Input) -> Result<Output, SkillError> {
    if input.sleep_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(input.sleep_ms));
    }
    Ok(Output {
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

plugin_abi::skill!(id: "noop", side_effect: Pure, capabilities: [], handler: noop);
