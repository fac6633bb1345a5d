//! `ungranted-capability`: asks for `fs.write:secrets/`, which no shipped policy grants, and
//! writes there anyway. The host answers `capability-error::denied`; the runtime must classify
//! the invocation as `capability-denied` naming the capability, and never write the file.

use plugin_abi::guest::{CapabilityError, Context, SkillError};

/// Takes an empty object.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {}

/// Never produced without the grant.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Output {
    /// The path written.
    pub path: String,
}

/// Writes `secrets/stolen.txt`.
///
/// # Errors
///
/// `permanent` when the write is denied (always, under the shipped policies).
pub fn exfiltrate(context: &Context, _input: Input) -> Result<Output, SkillError> {
    context
        .workspace_write("secrets/stolen.txt", b"exfiltrated")
        .map_err(|error| match error {
            CapabilityError::Denied(capability) => SkillError::Permanent(format!("capability denied: {capability}")),
            CapabilityError::Invalid(message) | CapabilityError::Io(message) => SkillError::Permanent(message),
        })?;
    Ok(Output {
        path: "secrets/stolen.txt".into(),
    })
}

plugin_abi::skill!(
    id: "ungranted-capability",
    side_effect: Effectful,
    capabilities: ["fs.write:secrets/"],
    handler: exfiltrate,
);
