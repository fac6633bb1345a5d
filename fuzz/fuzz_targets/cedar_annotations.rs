//! Cedar policies and agentd's annotations on them (`@require_approval`, `@quorum`,
//! `@obligations`, ...). The first byte picks the mode:
//! - even: the rest is a whole policy file;
//! - odd: the rest is `key \0 value`, set as one annotation on a valid `permit` policy, so the
//!   annotation readers are reached with any value.
//!
//! Either way the text is refused with a typed error or loaded; it never panics.
#![no_main]

use control_plane::PolicyEngine;
use libfuzzer_sys::fuzz_target;

const KEYS: [&str; 9] = [
    "require_approval",
    "quorum",
    "deny_threshold",
    "approval_ttl",
    "allowed_decisions",
    "max_autonomy",
    "max_attempts",
    "obligations",
    "risk",
];

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if mode % 2 == 0 {
        let _ = PolicyEngine::from_text(text, "fuzz.cedar");
        return;
    }
    let (key, value) = text.split_once('\0').unwrap_or((text, ""));
    let key = KEYS
        .iter()
        .find(|known| **known == key)
        .copied()
        .unwrap_or(KEYS[usize::from(*mode / 2) % KEYS.len()]);
    let value = value.replace('\\', "\\\\").replace('"', "\\\"");
    let policy =
        format!("@id(\"fuzzed\")\n@{key}(\"{value}\")\npermit(principal, action == Action::\"invoke\", resource);\n");
    let _ = PolicyEngine::from_text(&policy, "fuzz.cedar");
});
