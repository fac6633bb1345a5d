//! `slow-host-call`: a hostile skill that blocks in a host call (WASI `monotonic-clock`
//! subscribe and `poll`, which is what `std::thread::sleep` becomes on wasm32-wasip2) for
//! `sleep_ms`. The epoch deadline cannot interrupt host code, so the runtime's wall-clock
//! backstop must stop it: a `timeout` with `in_guest = false`.

use plugin_abi::guest::{Context, SkillError};

/// How long to block.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Time to spend inside the host call, ms.
    pub sleep_ms: u64,
}

/// What it did.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Output {
    /// The time slept, ms.
    pub slept_ms: u64,
}

/// Sleeps in the host.
///
/// # Errors
///
/// Never.
pub fn block(_context: &Context, input: Input) -> Result<Output, SkillError> {
    std::thread::sleep(std::time::Duration::from_millis(input.sleep_ms));
    Ok(Output {
        slept_ms: input.sleep_ms,
    })
}

plugin_abi::skill!(id: "slow-host-call", side_effect: Pure, capabilities: [], handler: block);
