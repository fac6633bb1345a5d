//! `word-count`: a read-only skill that reads a text file from the tenant's workspace
//! (`workspace-read`, needs `fs.read:inbox/`) and counts its lines, words and bytes.

use plugin_abi::guest::{CapabilityError, Context, SkillError};

/// Largest file the skill asks the host for, bytes.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Which file.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Workspace path, e.g. `inbox/notes.txt`.
    pub path: String,
}

/// The counts.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Output {
    /// Newline-terminated lines (plus a last unterminated one).
    pub lines: u64,
    /// Whitespace-separated words.
    pub words: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Reads and counts.
///
/// # Errors
///
/// `permanent` when the read is not granted, `invalid-input` for a bad path, a file over
/// [`MAX_FILE_BYTES`] or one that is not UTF-8, `transient` when the host could not read it.
pub fn count(context: &Context, input: Input) -> Result<Output, SkillError> {
    let bytes = context
        .workspace_read(&input.path, MAX_FILE_BYTES)
        .map_err(|error| match error {
            CapabilityError::Denied(capability) => SkillError::Permanent(format!("capability denied: {capability}")),
            CapabilityError::Invalid(message) => SkillError::InvalidInput(message),
            CapabilityError::Io(message) => SkillError::Transient(message),
        })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|error| SkillError::InvalidInput(format!("`{}` is not UTF-8: {error}", input.path)))?;
    Ok(Output {
        lines: text.lines().count() as u64,
        words: text.split_whitespace().count() as u64,
        bytes: bytes.len() as u64,
    })
}

plugin_abi::skill!(
    id: "word-count",
    side_effect: ReadOnly,
    capabilities: ["fs.read:inbox/"],
    handler: count,
);
