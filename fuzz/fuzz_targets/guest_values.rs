//! What a guest returns to the host: its `output` record (schema version and JSON text) and its
//! `skill-error` (four kinds, any message). The output is refused with a typed error or is a
//! JSON object; an error becomes a failure whose message is bounded (4 KiB and the note of
//! what was cut) whatever the guest sent.
#![no_main]

use agent_runtime::SkillFailure;
use agent_runtime::bindings::agentd::skill::types::SkillError;
use agent_runtime::outcome::MAX_ERROR_MESSAGE_BYTES;
use libfuzzer_sys::fuzz_target;
use plugin_abi::OutputEnvelope;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    let (version, output) = text.split_once('\0').unwrap_or(("agentd.output.v1", &text));
    if let Ok(object) = OutputEnvelope::parse(version, output) {
        assert_eq!(version, "agentd.output.v1");
        let _ = serde_json::Value::Object(object).to_string();
    }
    // Long messages are made by repetition, so a short input reaches the bound.
    let message = text.repeat(usize::from(*mode >> 2) * 64 + 1);
    let error = match mode % 4 {
        0 => SkillError::InvalidInput(message),
        1 => SkillError::Transient(message),
        2 => SkillError::Permanent(message),
        _ => SkillError::NeedsHuman(message),
    };
    let failure = SkillFailure::from(error);
    assert!(
        failure.message().len() <= MAX_ERROR_MESSAGE_BYTES + 64,
        "{}",
        failure.message().len()
    );
});
