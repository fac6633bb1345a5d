//! `memory-bomb`: a hostile skill that grows its linear memory one 64 KiB page at a time
//! (`memory.grow`) until the host refuses, then traps.
//!
//! The runtime must classify this as `memory-limit` (the store's limiter refused a growth), not
//! as a generic trap, and stay healthy.

use plugin_abi::guest::{Context, SkillError};

/// Takes an empty object.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {}

/// Never produced.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Output {
    /// Pages obtained (never reported).
    pub pages: u64,
}

/// Grows memory until refused, then panics (a trap).
///
/// # Errors
///
/// Never returns normally.
#[cfg(target_arch = "wasm32")]
pub fn bomb(_context: &Context, _input: Input) -> Result<Output, SkillError> {
    let mut pages: u64 = 0;
    loop {
        // `memory.grow` answers usize::MAX when the host refuses the growth.
        if core::arch::wasm32::memory_grow(0, 1) == usize::MAX {
            panic!("memory.grow refused after {pages} pages");
        }
        pages += 1;
    }
}

/// Native builds (tests of this crate) have no wasm memory to grow.
///
/// # Errors
///
/// Always `permanent`.
#[cfg(not(target_arch = "wasm32"))]
pub fn bomb(_context: &Context, _input: Input) -> Result<Output, SkillError> {
    Err(SkillError::Permanent("memory-bomb only runs as wasm".into()))
}

plugin_abi::skill!(id: "memory-bomb", side_effect: Pure, capabilities: [], handler: bomb);
