//! `deep-recursion`: a hostile skill that recurses `depth` times. Its frames live on the wasm
//! call stack (no address-taken locals, so nothing goes to the shadow stack in linear memory),
//! so a large depth exhausts wasmtime's `max_wasm_stack` and traps with a stack overflow.

use plugin_abi::guest::{Context, SkillError};

/// How deep to go.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Recursion depth; 100,000,000 overflows any stack the host allows.
    pub depth: u64,
}

/// A value computed from every frame, so the recursion cannot be folded away.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Output {
    /// The folded value.
    pub value: u64,
}

/// Not tail-recursive: each frame mixes the callee's result, so LLVM cannot turn it into a loop.
#[inline(never)]
fn descend(depth: u64) -> u64 {
    if depth == 0 {
        return 1;
    }
    let below = descend(depth - 1);
    below ^ (below >> 3) ^ depth
}

/// Recurses `depth` times.
///
/// # Errors
///
/// Never returns an error; a deep enough input traps.
pub fn recurse(_context: &Context, input: Input) -> Result<Output, SkillError> {
    Ok(Output {
        value: descend(input.depth),
    })
}

plugin_abi::skill!(id: "deep-recursion", side_effect: Pure, capabilities: [], handler: recurse);
