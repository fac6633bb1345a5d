//! `flaky`: fails the first `fail_first` attempts of each step with a `transient` error, then
//! succeeds. Every invocation runs in a fresh instance, so it counts attempts in its durable
//! key-value namespace (`attempts/<hash of the idempotency key>`), which also proves that
//! `kv-set` survives from one invocation to the next.

use plugin_abi::guest::{CapabilityError, Context, SkillError};

/// How flaky to be.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Attempts that fail before one succeeds.
    pub fail_first: u32,
}

/// The attempt that succeeded.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Output {
    /// 1-based attempt number.
    pub attempt: u32,
}

fn host_error(error: CapabilityError) -> SkillError {
    match error {
        CapabilityError::Denied(capability) => SkillError::Permanent(format!("capability denied: {capability}")),
        CapabilityError::Invalid(message) => SkillError::Permanent(message),
        CapabilityError::Io(message) => SkillError::Transient(message),
    }
}

/// A key segment from the idempotency key (which may hold `/`): FNV-1a, hex.
fn key_for(idempotency_key: &str) -> String {
    let hash = idempotency_key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("attempts/{hash:016x}")
}

/// Counts this attempt, fails while it is within `fail_first`.
///
/// # Errors
///
/// `transient` for the first `fail_first` attempts; `permanent` when the key-value grants are
/// missing.
pub fn flake(context: &Context, input: Input) -> Result<Output, SkillError> {
    let key = key_for(&context.idempotency_key);
    let previous = context
        .kv_get(&key)
        .map_err(host_error)?
        .and_then(|bytes| <[u8; 4]>::try_from(bytes.as_slice()).ok())
        .map_or(0, u32::from_le_bytes);
    let attempt = previous + 1;
    context.kv_set(&key, &attempt.to_le_bytes()).map_err(host_error)?;
    if attempt <= input.fail_first {
        return Err(SkillError::Transient(format!(
            "attempt {attempt} of the first {} fails on purpose",
            input.fail_first
        )));
    }
    Ok(Output { attempt })
}

plugin_abi::skill!(
    id: "flaky",
    side_effect: Effectful,
    capabilities: ["kv.read:attempts/", "kv.write:attempts/"],
    handler: flake,
);
